"""The adaptive plan: JSON round trip and validation, the choice rule, and calibration on a tiny Llama.

The choice rule is checked as a property (Hypothesis) over drawn cosines and times: the chosen variant
passes (meets the threshold, or is "torch"), and no passing variant is faster by the measured times,
or, where some passing variant has no time (nothing was timed: the CPU), earlier in the static order.
Calibration is checked against what it measures: torch's own SDPA is within fp32 rounding of the fp64
truth (a wrong truth, e.g. a misaligned causal mask, fails this), the fp16 P·V path is closer to it
than fp8, and thresholds between them pick between them; with a synthetic timer, by time.
"""

from __future__ import annotations

import json
from collections import Counter

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
TIMES = st.floats(1e-3, 1e3)
# One variant's measurements: a cosine and a time (TIMED: from few values, so that ties occur), or the time
# may be missing (MEASURES: not timed)
TIMED = st.fixed_dictionaries({"cosine": COSINES, "ms": st.sampled_from([0.5, 1.0, 2.0])})
MEASURES = st.fixed_dictionaries({"cosine": COSINES}, optional={"ms": TIMES})


@st.composite
def plans(draw):
    layers = draw(st.dictionaries(NAMES, st.sampled_from(VARIANTS), max_size=5))
    metrics = draw(st.dictionaries(NAMES, st.dictionaries(st.sampled_from(VARIANTS), MEASURES), max_size=3))
    return AttentionPlan(
        layers=layers, default=draw(st.sampled_from(VARIANTS)), threshold=draw(COSINES), metrics=metrics
    )


@given(plan=plans())
def test_json_round_trip(plan, tmp_path_factory):
    path = plan.save(tmp_path_factory.mktemp("plan") / "plan.json")
    assert AttentionPlan.load(path) == plan
    assert AttentionPlan.from_json(plan.to_json()) == plan


GOOD = {"format": "sage-attention-plan", "version": 2, "threshold": 0.99, "default": "fp16", "layers": {"a": "fp8"},
            "metrics": {"a": {"fp8": {"cosine": 0.995, "ms": 0.4}, "torch": {"cosine": 1.0}}}}  # fmt: skip
BAD = [
    ({"layers": {"a": "int8"}}, ValueError, r"layers\['a'\]"),
    ({"default": "fast"}, ValueError, "default"),
    ({"threshold": 1.5}, ValueError, "threshold"),
    ({"threshold": True}, TypeError, "threshold"),
    ({"threshold": "0.9"}, TypeError, "threshold"),
    ({"layers": ["a"]}, TypeError, "layers"),
    ({"layers": {"": "fp8"}}, TypeError, "layers"),
    ({"metrics": {"a": {"fp8": {"cosine": 2.0}}}}, ValueError, r"metrics\['a'\]\['fp8'\]\['cosine'\]"),
    ({"metrics": {"a": {"fp4": {"cosine": 0.9}}}}, ValueError, "a variant of metrics"),
    ({"metrics": {"a": {"fp8": 0.9}}}, TypeError, r"metrics\['a'\]\['fp8'\] must be a dict"),
    ({"metrics": {"a": {"fp8": {"ms": 1.0}}}}, ValueError, r"metrics\['a'\]\['fp8'\] must have 'cosine'"),
    ({"metrics": {"a": {"fp8": {"cosine": 0.9, "mean_ms": 1.0}}}}, ValueError, "optionally 'ms'"),
    ({"metrics": {"a": {"fp8": {"cosine": 0.9, "ms": 0.0}}}}, ValueError, r"\['ms'\] must be a finite time > 0"),
    ({"metrics": {"a": {"fp8": {"cosine": 0.9, "ms": True}}}}, TypeError, r"\['ms'\] must be a number"),
    ({"version": 3}, ValueError, "version"),
    ({"version": True}, ValueError, "version"),
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


def test_version_1_plans_load_without_times():
    old = {**GOOD, "version": 1, "metrics": {"a": {"fp8": 0.995, "torch": 1.0}}}
    assert AttentionPlan.from_json(json.dumps(old)) == AttentionPlan(
        layers={"a": "fp8"},
        default="fp16",
        threshold=0.99,
        metrics={"a": {"fp8": {"cosine": 0.995}, "torch": {"cosine": 1.0}}},
    )
    with pytest.raises(TypeError, match="metrics"):
        AttentionPlan.from_json(json.dumps({**old, "metrics": [0.9]}))


@given(
    metrics=st.dictionaries(
        NAMES,
        st.fixed_dictionaries({v: TIMED for v in VARIANTS})
        | st.dictionaries(st.sampled_from(VARIANTS), TIMED | MEASURES),
        max_size=4,
    ),
    threshold=COSINES,
)
def test_choice_is_the_fastest_variant_that_passes(metrics, threshold):
    chosen = choose(metrics, threshold)
    assert set(chosen) == set(metrics)
    for layer, variant in chosen.items():
        by_variant = metrics[layer]
        passing = [v for v in VARIANTS if v == "torch" or (v in by_variant and by_variant[v]["cosine"] >= threshold)]
        assert variant in passing
        if all("ms" in by_variant.get(v, {}) for v in passing):
            assert all(by_variant[v]["ms"] >= by_variant[variant]["ms"] for v in passing)
        else:
            assert variant == passing[0]


def test_choice_by_time_overrides_the_static_order():
    """The H200's case at 8k: fp8 fails the threshold, fp16 passes but is slower than torch (cuDNN)."""
    layer = {
        "fp8": {"cosine": 0.998, "ms": 30.0},
        "fp16": {"cosine": 0.9999, "ms": 40.6},
        "torch": {"cosine": 1.0, "ms": 36.2},
    }
    assert choose({"a": layer}, 0.999) == {"a": "torch"}
    assert choose({"a": layer}, 0.99) == {"a": "fp8"}
    untimed = {variant: {"cosine": m["cosine"]} for variant, m in layer.items()}
    assert choose({"a": untimed}, 0.999) == {"a": "fp16"}


@pytest.fixture(scope="module")
def calls():
    ids, mask = tokens(padded=11)
    return sage_hf.capture(llama(), lambda m: m(input_ids=ids, attention_mask=mask))


def test_calibration_measures_against_a_true_truth(calls):
    plan = calibrate(calls, threshold=0.999)
    assert set(plan.metrics) == {"model.layers.0.self_attn", "model.layers.1.self_attn"}
    for by_variant in plan.metrics.values():
        assert set(by_variant) == set(VARIANTS) and not any("ms" in m for m in by_variant.values())  # CPU: untimed
        cosine = {variant: m["cosine"] for variant, m in by_variant.items()}
        assert cosine["torch"] > 1 - 1e-9  # fp32 SDPA vs fp64: rounding only
        assert cosine["fp8"] < cosine["fp16"] < cosine["torch"]
    layer, by_variant = next(iter(plan.metrics.items()))
    middle = (by_variant["fp8"]["cosine"] + by_variant["fp16"]["cosine"]) / 2
    assert calibrate(calls, threshold=middle).layers[layer] == "fp16"  # the static order
    assert set(calibrate(calls, threshold=-1.0).layers.values()) == {"fp8"}
    assert set(calibrate(calls, threshold=1.0).layers.values()) == {"torch"}


def test_calibration_chooses_by_the_timer(calls):
    """A synthetic timer (as on the H200 at 8k: fp8 < torch < fp16) decides; a layer's time sums its calls'."""
    speed = {"fp8": 1.0, "fp16": 3.0, "torch": 2.0}
    timed = []

    def timer(variant, run):
        timed.append((variant, run().shape))
        return speed[variant]

    plan = calibrate(calls, threshold=-1.0, timer=timer)
    assert sorted(timed) == sorted((v, c.query.shape) for c in calls for v in VARIANTS)
    assert set(plan.layers.values()) == {"fp8"}
    per_layer = Counter(c.layer for c in calls)
    for layer, by_variant in plan.metrics.items():
        assert {v: m["ms"] for v, m in by_variant.items()} == {v: ms * per_layer[layer] for v, ms in speed.items()}
    layer, by_variant = next(iter(plan.metrics.items()))
    middle = (by_variant["fp8"]["cosine"] + by_variant["fp16"]["cosine"]) / 2
    assert calibrate(calls, threshold=middle, timer=timer).layers[layer] == "torch"  # fp16 passes, torch is faster
    only_fp8 = calibrate(calls, threshold=1.0, variants=("fp8",), timer=timer)  # torch is measured all the same
    assert set(only_fp8.layers.values()) == {"torch"}
    assert all(set(by_variant) == {"fp8", "torch"} for by_variant in only_fp8.metrics.values())
    repeated = calibrate(calls, threshold=-1.0, variants=("fp8", "fp8", "torch"), timer=timer)  # each measured once
    assert repeated.metrics == calibrate(calls, threshold=-1.0, variants=("fp8",), timer=timer).metrics


def test_calls_with_nothing_to_attend_are_skipped(calls):
    """A call without a batch, a query or a key (sageattn answers it as torch does) says nothing about a variant."""
    call = calls[0]
    arguments = call.sdpa_arguments()
    empty = [
        AttentionCall.of(call.layer, **{**arguments, "query": arguments["query"][:, :, :0], "attn_mask": None}),
        AttentionCall.of(call.layer, **{**arguments, "key": arguments["key"][:, :, :0],
                                        "value": arguments["value"][:, :, :0], "attn_mask": None}),  # fmt: skip
    ]
    assert calibrate([*calls, *empty], threshold=0.999).metrics == calibrate(calls, threshold=0.999).metrics


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
    with pytest.raises(TypeError, match="variants must be a sequence"):
        calibrate(calls, variants="fp16")


def test_saved_plan_applies_to_a_fresh_model(calls, tmp_path):
    path = calibrate(calls, threshold=0.99).save(tmp_path / "plan.json")
    model = llama()
    name = sage_hf.apply_plan(model, AttentionPlan.load(path), name="sage_test_saved_plan")
    with torch.no_grad():
        model(input_ids=tokens()[0])
    assert sage_hf.counts(name).sage_calls + sage_hf.counts(name).variants["torch"] == 2
