"""``python -m sage_fast.evaluate`` on tiny random models on the CPU: the report is complete and says sage ran.

The agreement numbers at the library's default init (std 0.02: near-uniform attention) are close to
perfect and test only that both runs saw the same model and tokens; the accuracy bound itself is
tested in tests/test_integrations_transformers.py, on weights where attention matters.
"""

from __future__ import annotations

import json

import pytest
from tiny_models import AGREEMENT

from sage_fast.evaluate.run import main

LAYERS = {"llama": 2, "bert": 2}


@pytest.mark.parametrize("model, extra", [("llama", ["--new-tokens", "2"]), ("bert", ["--calibrate", "0.999"])])
def test_report_of_a_tiny_model(model, extra, tmp_path, capsys):
    report = main(["--model", model, "--config", "tiny", "--seq-len", "40", "--device", "cpu", "--reps", "1",
                   "--out", str(tmp_path), *extra])  # fmt: skip
    assert json.loads((tmp_path / f"evaluate-{model}-tiny-40.json").read_text()) == report
    agreement, timing = report["agreement"], report["timing"]
    assert agreement["cosine_hidden"] >= AGREEMENT and agreement["top1_agreement"] >= 0.9
    assert abs(agreement["perplexity_change"]) < 0.01 and agreement["perplexity_sdpa"] > 1
    assert all(timing[k] > 0 for k in ("sdpa_model_ms", "sage_model_ms", "sdpa_attention_ms", "sage_attention_ms"))
    counts = report["counts"]
    assert counts["fallbacks"] == {} and counts["sage_calls"] + counts["torch_calls"] >= 4 * LAYERS[model]
    if model == "llama":
        assert agreement["greedy_agreement"] == 1.0 and report["plan"] is None
    else:
        assert (tmp_path / "plan-bert-tiny.json").exists() and set(report["plan"]["layers"]) == {
            f"bert.encoder.layer.{i}.attention.self" for i in range(2)
        }
    assert "top-1 agreement" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [(["--model", "gpt"], "--model"), (["--model", "llama", "--seq-len", "0"], "seq-len"),
                                         (["--model", "llama", "--plan", "p.json", "--calibrate", "0.9"], "exclude")])  # fmt: skip
def test_bad_arguments(argv, match, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert match in capsys.readouterr().err
