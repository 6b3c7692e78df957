"""End-to-end evaluation: a randomly initialised transformers model with torch's SDPA and with sage.

    python -m sage_fast.evaluate --model llama --config large --seq-len 8192 --device cuda --out DIR

Builds the model from a config (``sage_fast.evaluate.models``: nothing is downloaded), runs one batch
of fixed random token ids (random weights have no text to read) with ``attn_implementation="sdpa"``
and with sage, and reports their agreement (``sage_fast.evaluate.agreement``: cosine of the last
hidden states, top-1 agreement of the logits, perplexity change, greedy decode agreement) and their
speed (``sage_fast.evaluate.timing``: median whole-forward time and median attention time per
forward, both ways). ``--calibrate T`` first makes a per-layer plan on a shorter random sample
(SageAttention v1's adaptive choice: the fastest variant with cosine >= T per layer) and runs sage
with it; ``--plan FILE`` runs a saved plan. Writes ``evaluate-<model>-<config>-<seq_len>.json``
(numbers, card, versions, date) into --out and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..bench import environment
from ..integrations import AttentionPlan, calibrate
from ..integrations import transformers as sage_hf
from ..integrations.extras import require
from ..integrations.variants import CHOICES
from . import agreement, models, timing

SAGE_NAME, SDPA_TIMED, SAGE_TIMED = "sage_evaluate", "sdpa_evaluate_timed", "sage_evaluate_timed"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m sage_fast.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(models.KINDS), required=True)
    parser.add_argument("--config", choices=("tiny", "large"), default="tiny")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--variant", choices=CHOICES, default="auto", help="sage's variant for every layer")
    parser.add_argument("--implementation", default="auto", help="passed to sageattn (auto: triton on cuda)")
    parser.add_argument("--calibrate", type=float, metavar="THRESHOLD", help="calibrate a per-layer plan first")
    parser.add_argument("--calibration-len", type=int, default=1024, help="tokens of the calibration sample")
    parser.add_argument("--plan", type=Path, help="a saved AttentionPlan (JSON) to run instead of --variant")
    parser.add_argument("--new-tokens", type=int, default=8, help="greedy decode steps compared (decoders; 0: off)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    for name in ("seq_len", "batch", "reps", "calibration_len"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.new_tokens < 0:
        parser.error("--new-tokens must be >= 0")
    if args.plan is not None and args.calibrate is not None:
        parser.error("--plan and --calibrate exclude each other")
    args.dtype = (
        DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    )
    return args


def sage_plan(args, model):
    """The plan sage runs with: loaded, calibrated (and saved into --out), or None (``--variant`` everywhere)."""
    if args.plan is not None:
        return AttentionPlan.load(args.plan)
    if args.calibrate is None:
        return None
    sample = models.random_tokens(model.config.vocab_size, args.batch, min(args.calibration_len, args.seq_len),
                                  seed=args.seed + 1, device=args.device)  # fmt: skip
    calls = sage_hf.capture(model, lambda m: m(input_ids=sample))
    plan = calibrate(calls, threshold=args.calibrate, implementation=args.implementation)
    plan.save(args.out / f"plan-{args.model}-{args.config}.json")
    return plan


def evaluate(args) -> dict:
    """Everything the command reports, as a JSON-ready dict."""
    modeling_utils = require("transformers.modeling_utils")
    masking_utils = require("transformers.masking_utils")
    decoder = models.KINDS[args.model] == "decoder"
    model = models.build(args.model, args.config, seq_len=args.seq_len, device=args.device, dtype=args.dtype,
                         seed=args.seed)  # fmt: skip
    tokens = models.random_tokens(model.config.vocab_size, args.batch, args.seq_len, seed=args.seed, device=args.device)

    plan = sage_plan(args, model)
    sage_hf.register(SAGE_NAME, variant=args.variant, implementation=args.implementation)
    if plan is not None:
        sage_hf.apply_plan(model, plan, name=SAGE_NAME, implementation=args.implementation)
    clock = timing.Clock(args.device)
    timed = {
        "sdpa": timing.TimedAttention(modeling_utils.ALL_ATTENTION_FUNCTIONS["sdpa"], clock),
        SAGE_NAME: timing.TimedAttention(sage_hf.registered(SAGE_NAME), clock),
    }
    for timed_name, implementation in ((SDPA_TIMED, "sdpa"), (SAGE_TIMED, SAGE_NAME)):
        modeling_utils.AttentionInterface.register(timed_name, timed[implementation])
        masking_utils.AttentionMaskInterface.register(timed_name, masking_utils.sdpa_mask)

    outputs, times, continuations = {}, {}, {}
    for implementation, timed_name in (("sdpa", SDPA_TIMED), (SAGE_NAME, SAGE_TIMED)):
        model.set_attn_implementation(implementation)
        outputs[implementation] = agreement.forward(model, tokens)
        if decoder and args.new_tokens:
            continuations[implementation] = agreement.greedy(model, tokens, args.new_tokens)
        with torch.no_grad():
            whole = timing.median_ms(lambda: model(input_ids=tokens), clock, reps=args.reps)
            model.set_attn_implementation(timed_name)
            attention = timed[implementation].median_ms(lambda: model(input_ids=tokens), reps=args.reps)
        times[implementation] = {"model_ms": whole, "attention_ms": attention}
    counts = sage_hf.counts(SAGE_NAME)

    result = agreement.agreement(outputs["sdpa"], outputs[SAGE_NAME], tokens, decoder=decoder)
    if continuations:
        result["greedy_agreement"] = (continuations["sdpa"] == continuations[SAGE_NAME]).double().mean().item()
    sdpa, sage = times["sdpa"], times[SAGE_NAME]
    speed = {
        "sdpa_model_ms": sdpa["model_ms"], "sage_model_ms": sage["model_ms"], "model_speedup": sdpa["model_ms"] / sage["model_ms"],
        "sdpa_attention_ms": sdpa["attention_ms"], "sage_attention_ms": sage["attention_ms"],
        "attention_speedup": sdpa["attention_ms"] / sage["attention_ms"],
        "attention_share_sdpa": sdpa["attention_ms"] / sdpa["model_ms"],
    }  # fmt: skip
    env = dict(environment(), transformers=require("transformers").__version__, device=args.device)
    return {
        "environment": env, "model": args.model, "config": args.config, "seq_len": args.seq_len, "batch": args.batch,
        "dtype": str(args.dtype).removeprefix("torch."), "variant": args.variant, "implementation": args.implementation,
        "plan": None if plan is None else json.loads(plan.to_json()), "tokens": "uniform random ids, seed "
        f"{args.seed} (random weights: no text to read)", "agreement": result, "timing": speed, "counts": counts.as_dict(),
    }  # fmt: skip


def table(report: dict) -> str:
    """A short markdown table of a report."""
    a, t = report["agreement"], report["timing"]
    rows = [
        ("1 - cosine, last hidden states", f"{1 - a['cosine_hidden']:.1e}"),
        ("top-1 agreement of logits", f"{a['top1_agreement']:.2%}"),
        ("perplexity sdpa → sage", f"{a['perplexity_sdpa']:.2f} → {a['perplexity_sage']:.2f} ({a['perplexity_change']:+.3%})"),
    ]  # fmt: skip
    if "greedy_agreement" in a:
        rows.append(("greedy decode agreement", f"{a['greedy_agreement']:.2%}"))
    rows += [
        ("attention ms / forward, sdpa → sage", f"{t['sdpa_attention_ms']:.2f} → {t['sage_attention_ms']:.2f} ({t['attention_speedup']:.2f}×)"),
        ("model ms / forward, sdpa → sage", f"{t['sdpa_model_ms']:.2f} → {t['sage_model_ms']:.2f} ({t['model_speedup']:.2f}×)"),
        ("attention share of the sdpa forward", f"{t['attention_share_sdpa']:.1%}"),
        ("sage calls / torch calls / fallbacks", f"{report['counts']['sage_calls']} / {report['counts']['torch_calls']} / {sum(report['counts']['fallbacks'].values())}"),
    ]  # fmt: skip
    env = report["environment"]
    head = (f"{report['model']}/{report['config']}, batch {report['batch']} × {report['seq_len']} tokens, {report['dtype']}, "
            f"{env['card']}, torch {env['torch']}, transformers {env['transformers']}")  # fmt: skip
    return "\n".join([head, "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = evaluate(args)
    path = args.out / f"evaluate-{args.model}-{args.config}-{args.seq_len}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    print(f"\nwritten: {path}")
    return report
