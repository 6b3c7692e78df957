"""Render evaluation reports (``python -m sage_fast.evaluate``) as one markdown table, for docs/integrations.md.

    python -m sage_fast.evaluate.summary docs/results/evaluate-{llama,bert}-large-8192-{fp8,fp16}-h200-2026-11-26.json

One row per report, in the order given: sage's distance from the baseline beside the noise floor's
(1 − cosine of the last hidden states, top-1 agreement of the logits), the attention time per forward
and the whole model's speedup. The caption names what the reports share (card, versions, date, shape);
reports that differ in any of it are refused, since one caption could not describe them. Every number
comes from the JSON; tests/test_docs.py checks that the page holds what this prints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ENVIRONMENT, RUN = ("card", "torch", "transformers", "date"), ("batch", "seq_len", "dtype")
SHARED = ENVIRONMENT + RUN  # report["environment"][k] for the first, report[k] for the second


def shared(reports: list) -> dict:
    """What every report has in common (``SHARED``); ValueError naming the first field that differs."""
    if not reports:
        raise ValueError("reports must name at least one evaluation report")
    values = [{**{k: r["environment"][k] for k in ENVIRONMENT}, **{k: r[k] for k in RUN}} for r in reports]
    for field in SHARED:
        found = sorted({str(v[field]) for v in values})
        if len(found) > 1:
            raise ValueError(f"reports must share {field!r} to share a caption, got {found}")
    return values[0]


def row(report: dict) -> str:
    sage, floor, t = report["agreement"]["sage"], report["agreement"]["noise_floor"], report["timing"]
    cells = (
        f"{report['model']}/{report['config']}",
        report["variant"],
        f"{1 - sage['cosine_hidden']:.1e}",
        f"{1 - floor['cosine_hidden']:.1e}",
        f"{sage['top1_agreement']:.1%}",
        f"{floor['top1_agreement']:.1%}",
        f"{t['sdpa_attention_ms']:.1f} → {t['sage_attention_ms']:.1f} ({t['attention_speedup']:.2f}×)",
        f"{t['model_speedup']:.2f}×",
    )
    return "| " + " | ".join(cells) + " |"


def render(reports: list) -> str:
    """A caption line and a table with one row per report."""
    s = shared(reports)
    caption = (f"{s['card']}, torch {s['torch']}, transformers {s['transformers']}, {s['date']}; random weights, "
               f"batch {s['batch']} × {s['seq_len']} tokens, {s['dtype']}.")  # fmt: skip
    head = ("| model | variant | 1 − cos, sage | 1 − cos, noise floor | top-1, sage | top-1, noise floor "
            "| attention ms / forward, sdpa → sage | model speedup |")  # fmt: skip
    return "\n".join([caption, "", head, "|" + "---|" * 8, *(row(r) for r in reports)])


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m sage_fast.evaluate.summary", description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="evaluate-*.json files, one row each")
    args = parser.parse_args(argv)
    text = render([json.loads(path.read_text()) for path in args.reports])
    print(text)
    return text


if __name__ == "__main__":
    main()
