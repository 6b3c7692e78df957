"""The adaptive plan: JSON round trip and validation, the choice rule, and calibration on a tiny Llama.

The choice rule is checked as a property (Hypothesis): the chosen variant meets the threshold (or is
"torch"), and no faster variant does. Calibration is checked against what it measures: torch's own
SDPA is within fp32 rounding of the fp64 truth (a wrong truth, e.g. a misaligned causal mask, fails
this), the fp16 P·V path is closer to it than fp8, and thresholds between them pick between them.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import llama, tokens

from sage_fast.integrations import AttentionPlan, calibrate, calibration
from sage_fast.integrations import transformers as sage_hf
from sage_fast.integrations.calibration import AttentionCall, choose, truth
from sage_fast.integrations.variants import VARIANTS

NAMES = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20)
COSINES = st.floats(-1.0, 1.0, allow_nan=False)


@st.composite
def plans(draw):
    layers = draw(st.dictionaries(NAMES, st.sampled_from(VARIANTS), max_size=5))
    metrics = draw(st.dictionaries(NAMES, st.dictionaries(st.sampled_from(VARIANTS), COSINES), max_size=3))
    return AttentionPlan(
        layers=layers, default=draw(st.sampled_from(VARIANTS)), threshold=draw(COSINES), metrics=metrics
    )


@given(plan=plans())
def test_json_round_trip(plan, tmp_path_factory):
    path = plan.save(tmp_path_factory.mktemp("plan") / "plan.json")
    assert AttentionPlan.load(path) == plan
    assert AttentionPlan.from_json(plan.to_json()) == plan


GOOD = {"format": "sage-attention-plan", "version": 1, "threshold": 0.99, "default": "fp16", "layers": {"a": "fp8"},
            "metrics": {"a": {"fp8": 0.995}}}  # fmt: skip
BAD = [
    ({"layers": {"a": "int8"}}, ValueError, r"layers\['a'\]"),
    ({"default": "fast"}, ValueError, "default"),
    ({"threshold": 1.5}, ValueError, "threshold"),
    ({"threshold": True}, TypeError, "threshold"),
    ({"threshold": "0.9"}, TypeError, "threshold"),
    ({"layers": ["a"]}, TypeError, "layers"),
    ({"layers": {"": "fp8"}}, TypeError, "layers"),
    ({"metrics": {"a": {"fp8": 2.0}}}, ValueError, "metrics"),
    ({"metrics": {"a": {"fp4": 0.9}}}, ValueError, "metrics"),
    ({"version": 2}, ValueError, "version"),
    ({"format": "other"}, ValueError, "format"),
    ({"extra": 1}, ValueError, "unknown plan fields"),
]


@pytest.mark.parametrize("change, error, match", BAD, ids=[b[2] for b in BAD])
def test_bad_plans_are_refused_by_field(change, error, match):
    with pytest.raises(error, match=match):
        AttentionPlan.from_json(json.dumps({**GOOD, **change}))


@pytest.mark.parametrize(
    "text, match", [("{", "JSON"), ("[1]", "object"), ('{"format": "sage-attention-plan", "version": 1}', "threshold")]
)
def test_not_a_plan(text, match):
    with pytest.raises((TypeError, ValueError), match=match):
        AttentionPlan.from_json(text)


@given(
    metrics=st.dictionaries(NAMES, st.fixed_dictionaries({v: COSINES for v in VARIANTS}), max_size=4), threshold=COSINES
)
def test_choice_is_the_fastest_variant_that_meets_the_threshold(metrics, threshold):
    chosen = choose(metrics, threshold)
    assert set(chosen) == set(metrics)
    for layer, variant in chosen.items():
        faster = VARIANTS[: VARIANTS.index(variant)]
        assert all(metrics[layer][v] < threshold for v in faster)
        assert metrics[layer][variant] >= threshold or variant == "torch"


@pytest.fixture(scope="module")
def calls():
    ids, mask = tokens(padded=11)
    return sage_hf.capture(llama(), lambda m: m(input_ids=ids, attention_mask=mask))


def test_calibration_measures_against_a_true_truth(calls):
    plan = calibrate(calls, threshold=0.999)
    assert set(plan.metrics) == {"model.layers.0.self_attn", "model.layers.1.self_attn"}
    for by_variant in plan.metrics.values():
        assert by_variant["torch"] > 1 - 1e-9  # fp32 SDPA vs fp64: rounding only
        assert by_variant["fp8"] < by_variant["fp16"] < by_variant["torch"]
    layer, by_variant = next(iter(plan.metrics.items()))
    middle = (by_variant["fp8"] + by_variant["fp16"]) / 2
    assert calibrate(calls, threshold=middle).layers[layer] == "fp16"
    assert set(calibrate(calls, threshold=-1.0).layers.values()) == {"fp8"}
    assert set(calibrate(calls, threshold=1.0).layers.values()) == {"torch"}


def test_truth_in_chunks_of_heads_is_the_whole(calls, monkeypatch):
    """GQA (4 query heads over 2), a padding mask: one head at a time gives the same fp64 result."""
    call = calls[0]
    per_head_mask = AttentionCall.of(
        call.layer, **{**call.sdpa_arguments(), "attn_mask": call.attn_mask.expand(2, 4, 48, 48)}
    )
    whole = [truth(c) for c in (call, per_head_mask)]
    monkeypatch.setattr(calibration, "TRUTH_ELEMENTS", 1)
    assert all(torch.equal(truth(c), w) for c, w in zip((call, per_head_mask), whole))
    assert torch.equal(whole[0], whole[1])


def test_calibrate_refuses_bad_arguments(calls):
    with pytest.raises(ValueError, match="non-empty"):
        calibrate([])
    with pytest.raises(ValueError, match="default"):
        calibrate(calls, default="int8")
    with pytest.raises(ValueError, match="threshold"):
        calibrate(calls, threshold=2.0)
    with pytest.raises(ValueError, match="a variant"):
        calibrate(calls, variants=("fp8", "int8"))


def test_saved_plan_applies_to_a_fresh_model(calls, tmp_path):
    path = calibrate(calls, threshold=0.99).save(tmp_path / "plan.json")
    model = llama()
    name = sage_hf.apply_plan(model, AttentionPlan.load(path), name="sage_test_saved_plan")
    with torch.no_grad():
        model(input_ids=tokens()[0])
    assert sage_hf.counts(name).sage_calls + sage_hf.counts(name).variants["torch"] == 2
