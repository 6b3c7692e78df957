"""End-to-end evaluation: a randomly initialised transformers model with torch's SDPA and with sage.

    python -m sage_fast.evaluate --model llama --config large --seq-len 8192 --device cuda --out DIR

Builds the model from a config (``sage_fast.evaluate.models``: nothing is downloaded), runs one batch
of fixed random token ids (random weights have no text to read) with ``attn_implementation="sdpa"``
(the baseline), with sage, and with the baseline's attention computed in a wider dtype (the noise
floor, ``sage_fast.evaluate.noise_floor``), and reports how far sage and the noise floor move the
outputs from the baseline's and sage's from the wide attention's (``sage_fast.evaluate.agreement``:
cosine of the last hidden states, top-1 agreement and RMS difference of the logits, perplexity change,
greedy decode agreement) and the speed of sdpa and sage
(``sage_fast.evaluate.timing``: median whole-forward time and median attention time per forward).
``--variant`` picks sage's P·V precision for every layer ("fp8", "fp16"; "auto": fp8 on sm89+);
``--calibrate T`` first makes a per-layer plan on another random sample, as long as the run's by default
(SageAttention v1's adaptive choice: per layer the fastest variant, timed on a GPU, whose cosine is >= T)
and runs sage with it; ``--plan FILE`` runs a saved plan. Writes
``evaluate-<model>-<config>-<seq_len>-<variant or "plan">.json`` (numbers, card, versions, date) into
--out and prints two tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..api import IMPLEMENTATIONS
from ..bench import environment
from ..integrations import AttentionPlan, calibrate
from ..integrations import transformers as sage_hf
from ..integrations.extras import require
from ..integrations.masks import sdpa_key_mask
from ..integrations.variants import CHOICES, resolve
from . import agreement, models, noise_floor, timing

SAGE_NAME, SDPA_TIMED, SAGE_TIMED = "sage_evaluate", "sdpa_evaluate_timed", "sage_evaluate_timed"
WIDE_NAME = "sdpa_wide_evaluate"  # the noise floor: the baseline's attention in a wider dtype
# (report key, reference, test): sage against the baseline, the noise floor (the wide attention against the
# baseline), and sage against the wide attention (sage's own distance from less rounded attention)
COMPARISONS = (("sage", "sdpa", SAGE_NAME), ("noise_floor", "sdpa", WIDE_NAME), ("sage_vs_wide", WIDE_NAME, SAGE_NAME))
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m sage_fast.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(models.KINDS), required=True)
    parser.add_argument("--config", choices=("tiny", "large"), default="tiny")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument(
        "--variant",
        choices=CHOICES,
        default="auto",
        help="sage's variant for every layer (auto: fp8 on sm89+ GPUs, else fp16)",
    )
    parser.add_argument("--implementation", choices=IMPLEMENTATIONS, default="auto",
                        help="passed to sageattn (auto: triton on cuda)")  # fmt: skip
    parser.add_argument("--calibrate", type=float, metavar="THRESHOLD", help="calibrate a per-layer plan first")
    parser.add_argument("--calibration-len", type=int, help="tokens of the calibration sample, at most "
                        "--seq-len (the default: calibration times the variants, and which is fastest depends on the "
                        "length)")  # fmt: skip
    parser.add_argument("--plan", type=Path, help="a saved AttentionPlan (JSON) to run instead of --variant")
    parser.add_argument("--new-tokens", type=int, default=8, help="greedy decode steps compared (decoders; 0: off)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    if args.calibration_len is not None and args.calibrate is None:
        parser.error("--calibration-len is used only with --calibrate")
    if args.calibration_len is None:
        args.calibration_len = args.seq_len
    for name in ("seq_len", "batch", "reps", "calibration_len"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.calibration_len > args.seq_len:
        parser.error(f"--calibration-len must be <= --seq-len ({args.seq_len}), got {args.calibration_len}")
    if args.new_tokens < 0:
        parser.error("--new-tokens must be >= 0")
    if args.plan is not None and args.calibrate is not None:
        parser.error("--plan and --calibrate exclude each other")
    if args.variant != "auto" and (args.plan is not None or args.calibrate is not None):
        parser.error(
            f"--variant {args.variant} or a plan (--plan, --calibrate), not both: a plan sets every layer's variant"
        )
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
    sample = models.random_tokens(model.config.vocab_size, args.batch, args.calibration_len, seed=args.seed + 1,
                                  device=args.device)  # fmt: skip
    calls = sage_hf.capture(model, lambda m: m(input_ids=sample))
    plan = calibrate(calls, threshold=args.calibrate, implementation=args.implementation)
    plan.save(args.out / f"plan-{args.model}-{args.config}.json")
    return plan


def label(args) -> str:
    """What sage runs, for the report's name: the resolved variant ("fp8", "fp16", "torch") or "plan"."""
    if args.plan is not None or args.calibrate is not None:
        return "plan"
    return resolve(args.variant, torch.device(args.device), implementation=args.implementation)


def register_implementations(clock):
    """Register sage, the noise floor's attention and the timed wrappers; return the timed wrappers by name.

    Each is registered with the mask builder its untimed twin uses: "sdpa"'s own for the baseline and
    the noise floor, sage's (``sdpa_key_mask``) for sage.
    """
    modeling_utils = require("transformers.modeling_utils")
    masking_utils = require("transformers.masking_utils")
    modeling_utils.AttentionInterface.register(WIDE_NAME, noise_floor.wide_attention)
    masking_utils.AttentionMaskInterface.register(WIDE_NAME, masking_utils.sdpa_mask)
    timed = {
        "sdpa": timing.TimedAttention(modeling_utils.ALL_ATTENTION_FUNCTIONS["sdpa"], clock),
        SAGE_NAME: timing.TimedAttention(sage_hf.registered(SAGE_NAME), clock),
    }
    for timed_name, implementation, mask in ((SDPA_TIMED, "sdpa", masking_utils.sdpa_mask),
                                             (SAGE_TIMED, SAGE_NAME, sdpa_key_mask)):  # fmt: skip
        modeling_utils.AttentionInterface.register(timed_name, timed[implementation])
        masking_utils.AttentionMaskInterface.register(timed_name, mask)
    return timed


def evaluate(args) -> dict:
    """Everything the command reports, as a JSON-ready dict."""
    decoder = models.KINDS[args.model] == "decoder"
    model = models.build(args.model, args.config, seq_len=args.seq_len, device=args.device, dtype=args.dtype,
                         seed=args.seed)  # fmt: skip
    tokens = models.random_tokens(model.config.vocab_size, args.batch, args.seq_len, seed=args.seed, device=args.device)

    plan = sage_plan(args, model)
    # The variant resolved once for the whole run, so that sage runs every call, decode steps included: "auto"
    # itself would leave decode steps and short calls to torch (variants.resolve).
    variant = resolve(args.variant, torch.device(args.device), implementation=args.implementation)
    sage_hf.register(SAGE_NAME, variant=variant, implementation=args.implementation)
    if plan is not None:
        sage_hf.apply_plan(model, plan, name=SAGE_NAME, implementation=args.implementation)
    clock = timing.Clock(args.device)
    timed = register_implementations(clock)

    outputs, times, continuations = {}, {}, {}
    for implementation, timed_name in (("sdpa", SDPA_TIMED), (SAGE_NAME, SAGE_TIMED), (WIDE_NAME, None)):
        model.set_attn_implementation(implementation)
        outputs[implementation] = agreement.forward(model, tokens)
        if decoder and args.new_tokens:
            continuations[implementation] = agreement.greedy(model, tokens, args.new_tokens)
        if timed_name is None:
            continue
        with torch.no_grad():
            whole = timing.median_ms(lambda: model(input_ids=tokens), clock, reps=args.reps)
            model.set_attn_implementation(timed_name)
            attention = timed[implementation].median_ms(lambda: model(input_ids=tokens), reps=args.reps)
        times[implementation] = {"model_ms": whole, "attention_ms": attention}
    counts = sage_hf.counts(SAGE_NAME)

    compared = {}
    for key, reference, test in COMPARISONS:
        compared[key] = agreement.agreement(outputs[reference], outputs[test], tokens, decoder=decoder)
        if continuations:
            equal = continuations[reference] == continuations[test]
            compared[key]["greedy_agreement"] = equal.double().mean().item()
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
        "dtype": str(args.dtype).removeprefix("torch."), "variant": label(args), "implementation": args.implementation,
        "plan": None if plan is None else json.loads(plan.to_json()), "tokens": "uniform random ids, seed "
        f"{args.seed} (random weights: no text to read)",
        "noise_floor_dtype": str(noise_floor.WIDER[args.dtype]).removeprefix("torch."),
        "agreement": {"sdpa": agreement.baseline(outputs["sdpa"], tokens, decoder=decoder), **compared},
        "timing": speed, "counts": counts.as_dict(),
    }  # fmt: skip


def agreement_rows(report: dict) -> list:
    """(what, one cell per comparison) rows of the agreement table."""
    base = report["agreement"]["sdpa"]
    compared = [report["agreement"][key] for key, _, _ in COMPARISONS]
    rows = [
        ("1 - cosine, last hidden states", lambda a: f"{1 - a['cosine_hidden']:.1e}"),
        ("top-1 agreement of logits", lambda a: f"{a['top1_agreement']:.2%}"),
        (f"RMS logit difference (sdpa's median top-1 margin: {base['top1_margin_median']:.3g})",
         lambda a: f"{a['logit_rms_error']:.3g}"),
        (f"perplexity (sdpa: {base['perplexity']:.2f})", lambda a: f"{a['perplexity']:.2f} ({a['perplexity_change']:+.3%})"),
    ]  # fmt: skip
    if "greedy_agreement" in compared[0]:
        rows.append(("greedy decode agreement", lambda a: f"{a['greedy_agreement']:.2%}"))
    return [(what, *(cell(a) for a in compared)) for what, cell in rows]


def table(report: dict) -> str:
    """Two short markdown tables of a report: the agreements (sage, the noise floor, sage against the wide
    attention), then the speed."""
    t, counts = report["timing"], report["counts"]
    speed = [
        ("attention ms / forward", f"{t['sdpa_attention_ms']:.2f} → {t['sage_attention_ms']:.2f} ({t['attention_speedup']:.2f}×)"),
        ("model ms / forward", f"{t['sdpa_model_ms']:.2f} → {t['sage_model_ms']:.2f} ({t['model_speedup']:.2f}×)"),
        ("attention share of the sdpa forward", f"{t['attention_share_sdpa']:.1%}"),
        ("sage calls / torch calls / fallbacks", f"{counts['sage_calls']} / {counts['torch_calls']} / {sum(counts['fallbacks'].values())}"),
    ]  # fmt: skip
    env = report["environment"]
    head = (f"{report['model']}/{report['config']}, batch {report['batch']} × {report['seq_len']} tokens, {report['dtype']}, "
            f"sage {report['variant']}, {env['card']}, torch {env['torch']}, transformers {env['transformers']}")  # fmt: skip
    wide = f"{report['noise_floor_dtype']} attention"
    return "\n".join([
        head, "", f"| | sage vs sdpa | noise floor: {wide} vs sdpa | sage vs {wide} |", "|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in agreement_rows(report)),
        "", "| speed | sdpa → sage |", "|---|---|", *(f"| {k} | {v} |" for k, v in speed),
    ])  # fmt: skip


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = evaluate(args)
    path = args.out / f"evaluate-{args.model}-{args.config}-{args.seq_len}-{report['variant']}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    print(f"\nwritten: {path}")
    return report
