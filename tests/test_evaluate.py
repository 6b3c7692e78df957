"""``python -m sage_fast.evaluate`` on tiny random models on the CPU: the report is complete and says sage ran.

The agreement numbers at the library's default init (std 0.02: near-uniform attention) are close to
perfect and test only that both runs saw the same model and tokens; the accuracy bound itself is
tested in tests/test_integrations_transformers.py, on weights where attention matters.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tiny_models import AGREEMENT

from sage_fast.evaluate.models import build
from sage_fast.evaluate.noise_floor import wide_attention
from sage_fast.evaluate.run import main

LAYERS = {"llama": 2, "bert": 2}


@pytest.mark.parametrize(
    "model, extra, variant",
    [("llama", ["--new-tokens", "2"], "fp16"), ("llama", ["--new-tokens", "2", "--variant", "fp8"], "fp8"),
     ("bert", ["--calibrate", "0.999"], "plan")],
)  # fmt: skip
def test_report_of_a_tiny_model(model, extra, variant, tmp_path, capsys):
    report = main(["--model", model, "--config", "tiny", "--seq-len", "40", "--device", "cpu", "--reps", "1",
                   "--out", str(tmp_path), *extra])  # fmt: skip
    assert json.loads((tmp_path / f"evaluate-{model}-tiny-40-{variant}.json").read_text()) == report
    assert report["variant"] == variant
    baseline, sage, floor, sage_vs_wide = (
        report["agreement"][key] for key in ("sdpa", "sage", "noise_floor", "sage_vs_wide")
    )
    assert sage.keys() == floor.keys() == sage_vs_wide.keys()
    assert baseline["perplexity"] > 1 and baseline["top1_margin_median"] > 0
    assert sage_vs_wide["cosine_hidden"] >= AGREEMENT and sage_vs_wide["top1_agreement"] >= 0.9
    assert (
        sage["cosine_hidden"] >= AGREEMENT and sage["top1_agreement"] >= 0.9 and abs(sage["perplexity_change"]) < 0.01
    )
    assert 0 < sage["logit_rms_error"] < baseline["top1_margin_median"]
    # float32 model: the noise floor's attention runs in float64, so it moves the outputs by float32 rounding
    assert floor["cosine_hidden"] > 1 - 1e-6 and floor["top1_agreement"] == 1.0
    assert floor["logit_rms_error"] < sage["logit_rms_error"] and report["noise_floor_dtype"] == "float64"
    timing = report["timing"]
    assert all(timing[k] > 0 for k in ("sdpa_model_ms", "sage_model_ms", "sdpa_attention_ms", "sage_attention_ms"))
    counts = report["counts"]
    assert counts["fallbacks"] == {} and counts["sage_calls"] + counts["torch_calls"] >= 4 * LAYERS[model]
    if model == "llama":
        assert sage["greedy_agreement"] == floor["greedy_agreement"] == 1.0 and report["plan"] is None
        assert counts["variants"][variant] > 0
    else:
        assert (tmp_path / "plan-bert-tiny.json").exists() and set(report["plan"]["layers"]) == {
            f"bert.encoder.layer.{i}.attention.self" for i in range(2)
        }
    out = capsys.readouterr().out
    assert "top-1 agreement" in out and "noise floor" in out


def test_noise_floor_attention_is_sdpa_in_a_wider_dtype():
    """GQA, causal and a padding mask: the wide attention equals torch's SDPA in float64, rounded to float32."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(2, 4, 9, 16, generator=gen),
        torch.randn(2, 2, 9, 16, generator=gen),
        torch.randn(2, 2, 9, 16, generator=gen),
    )
    mask = torch.ones(2, 1, 9, 9, dtype=torch.bool).tril()
    mask[1, ..., :3] = False
    module = torch.nn.Module()
    out, weights = wide_attention(module, q, k, v, mask, scaling=0.3)
    expected = F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(2, 1), v.double().repeat_interleave(2, 1),
                                              attn_mask=mask, scale=0.3).float()  # fmt: skip
    assert weights is None and out.dtype == torch.float32 and torch.equal(out, expected.transpose(1, 2))
    causal, _ = wide_attention(module, q, k, v, None)
    assert torch.allclose(causal.transpose(1, 2), F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                          atol=1e-6)  # fmt: skip
    with pytest.raises(TypeError, match="query has dtype torch.float64"):
        wide_attention(module, q.double(), k.double(), v.double(), None)


@pytest.mark.parametrize("argv, match", [(["--model", "gpt"], "--model"), (["--model", "llama", "--seq-len", "0"], "seq-len"),
                                         (["--model", "llama", "--plan", "p.json", "--calibrate", "0.9"], "exclude"),
                                         (["--model", "llama", "--plan", "p.json", "--variant", "fp8"], "--variant"),
                                         (["--model", "llama", "--calibrate", "0.9", "--variant", "fp16"], "--variant"),
                                         (["--model", "llama", "--calibration-len", "16"], "--calibration-len"),
                                         (["--model", "llama", "--implementation", "cuda"], "--implementation"),
                                         (["--model", "llama", "--calibrate", "0.9", "--seq-len", "40",
                                           "--calibration-len", "41"], "--calibration-len")])  # fmt: skip
def test_bad_arguments(argv, match, capsys, tmp_path, monkeypatch):
    """Refused before anything runs, naming the argument: also those that would be ignored (a --variant beside
    a plan, a --calibration-len without --calibrate or longer than the run)."""
    monkeypatch.chdir(tmp_path)  # --out defaults to ".": a run that is not refused writes there, not into the repo
    with pytest.raises(SystemExit):
        main(argv)
    assert match in capsys.readouterr().err


def test_build_refuses_an_unknown_model_by_name():
    with pytest.raises(ValueError, match="model/size"):
        build("gpt", "tiny", seq_len=16, device="cpu", dtype=torch.float32)
