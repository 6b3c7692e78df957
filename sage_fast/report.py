"""Render a benchmark JSON (``python -m sage_fast.bench``) as the markdown of docs/benchmarks.md.

    python -m sage_fast.report docs/results/bench-h200-2026-11-27.json [--png docs/results/bench.png] > docs/benchmarks.md

The page links the plot at ``--png``'s path relative to ``docs/`` (where the pages live), or at results/bench.png.

Every number on the page (and the plot, with --png) comes from the JSON; nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
import os

from .bench import plot

COLUMNS = (
    ("sdpa-cudnn", "SDPA cuDNN"),
    ("sdpa-flash", "SDPA flash"),
    ("sageattention-1.0.6", "1.0.6"),
    ("rung1-flash-fp16", "rung 1"),
    ("rung2-int8-qk", "rung 2"),
    ("rung3-fused-quant", "rung 3"),
    ("rung4-fp8-pv", "rung 4"),
    ("rung5-tma", "rung 5"),
    ("rung6-gluon", "rung 6"),
    ("rung7-gluon-fp16", "rung 7"),
    ("sageattn-fp16", "sageattn fp16"),
    ("sageattn-fp8", "sageattn fp8"),
    ("kernel-only-fp16", "kernel fp16"),
    ("kernel-only-fp8", "kernel fp8"),
)


def tops_table(rows, head_dim, causal):
    """TOPS per N for every implementation, then the headline ratios."""
    by_n = {}
    for r in rows:
        if r["head_dim"] == head_dim and r["causal"] == causal and "tops" in r:
            by_n.setdefault(r["n"], {})[r["name"]] = r["tops"]
    present = [(key, label) for key, label in COLUMNS if any(key in d for d in by_n.values())]
    head = "| N | " + " | ".join(label for _, label in present) + " | fp8 / cuDNN | fp8 / 1.0.6 |"
    lines = [head, "|" + "---|" * (len(present) + 3)]
    for n, d in sorted(by_n.items()):
        cells = [f"{d[key]:.0f}" if key in d else "–" for key, _ in present]
        fp8 = d.get("sageattn-fp8")
        ratio = lambda peer: f"{fp8 / d[peer]:.2f}×" if fp8 and peer in d else "–"  # noqa: E731
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {ratio('sdpa-cudnn')} | {ratio('sageattention-1.0.6')} |")
    return "\n".join(lines)


def accuracy_table(rows):
    """cos / rel L1 against fp32 SDPA, per implementation, at the benchmark's shapes (worst over N)."""
    worst = {}
    for r in rows:
        if "cos" in r:
            w = worst.setdefault(r["name"], {"cos": 1.0, "rel_l1": 0.0})
            w["cos"], w["rel_l1"] = min(w["cos"], r["cos"]), max(w["rel_l1"], r["rel_l1"])
    lines = ["| implementation | worst cos | worst rel L1 |", "|---|---|---|"]
    for key, label in COLUMNS:
        if key in worst:
            lines.append(f"| {label} | {worst[key]['cos']:.6f} | {worst[key]['rel_l1']:.4f} |")
    return "\n".join(lines)


def render(data, image="results/bench.png"):
    """The page for one bench.json's ``data``; ``image``: the plot's path relative to the page."""
    env, rows = data["environment"], data["rows"]
    out = [
        f"# Benchmarks: {env['card']}",
        "",
        f"Measured on **{env['card']}**, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
        f"on {env['date']}, with `python -m sage_fast.bench` (raw numbers: `docs/results/`).",
        "Inputs fp16 Gaussian, H = 32, B·N = 16k tokens; TOPS = 4·B·H·N²·D / time (halved for causal);",
        "whole calls include quantization; 1.0.6 is PyPI `sageattention` (its K clone subtracted);",
        "`kernel` columns time the attention kernel alone on pre-quantized inputs; the last two columns divide",
        "sageattn fp8 by SDPA cuDNN and by 1.0.6.",
        "Short calls are partly host-bound: a whole call spends 0.2-0.5 ms of host time (four launches), as much as",
        "its GPU time at head_dim 64 with N <= 2k, so those cells follow the host's speed and vary between runs",
        "(H200, hd64 causal N = 1k: 406 µs eager against 333 µs as a CUDA graph's replay; docs/notes.md).",
        "",
        f"![TOPS against N]({image})",
        "",
    ]
    for head_dim in sorted({r["head_dim"] for r in rows}):
        for causal in (False, True):
            out += [f"## head_dim {head_dim}, {'causal' if causal else 'non-causal'}", "", tops_table(rows, head_dim, causal), ""]
    out += ["## Accuracy against fp32 SDPA (same inputs)", "", accuracy_table(rows), ""]
    if env.get("accuracy_vs_fp64"):
        out += [
            "## Accuracy against an fp64 truth (B=2, H=16, N=2048, D=128, Gaussian)",
            "",
            "| implementation | cos | rel L1 | RMSE |",
            "|---|---|---|---|",
        ]
        out += [f"| {a['name']} | {a['cos']:.6f} | {a['rel_l1']:.5f} | {a['rmse']:.3e} |" for a in env["accuracy_vs_fp64"]]
        out.append("")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Render a benchmark JSON as markdown (and its plot).")
    parser.add_argument("json", help="a bench.json written by python -m sage_fast.bench")
    parser.add_argument("--png", help="also draw the TOPS plot into this file")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    image = "results/bench.png"
    if args.png:
        plot(data["rows"], args.png)
        image = os.path.relpath(args.png, "docs")
    print(render(data, image))


if __name__ == "__main__":
    main()
