"""The site builds: ``mkdocs build --strict`` (broken links, missing pages or images, docstring errors fail)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs comes with the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings comes with the docs extra: pip install -e '.[docs]'")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("index.html", "concepts/index.html", "api/index.html", "accuracy/index.html",
                 "tutorials/01_naive_attention/index.html"):  # fmt: skip
        assert (site / page).exists(), page
    # The math renders offline: the vendored KaTeX and its fonts are in the site.
    assert (site / "javascripts/katex/katex.min.js").exists()
    assert (site / "javascripts/katex/fonts/KaTeX_Main-Regular.woff2").exists()
    assert "sageattn" in (site / "api/index.html").read_text()



def test_accuracy_page_is_current():
    """docs/accuracy.md holds what sage_ref.study computes now: two of its rows recomputed (the script writes all)."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("make_accuracy", ROOT / "docs" / "make_accuracy.py")
    pytest.importorskip("matplotlib", reason="docs/make_accuracy.py draws with matplotlib (docs extra)")
    make_accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_accuracy)
    from sage_ref.study import run_study

    variants = [dict(qk_granularity=None, smooth_k=False, pv="fp32"), dict(qk_granularity="block", smooth_k=True, pv="fp16")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the script: the same digits on every machine
    try:
        rows = run_study(datasets=("k-bias",), variant_list=variants)
    finally:
        torch.set_num_threads(threads)
    page = (ROOT / "docs" / "accuracy.md").read_text()
    for line in make_accuracy.table(rows).splitlines()[2:]:
        assert line in page, f"docs/accuracy.md is stale ({line!r} missing): run python docs/make_accuracy.py"


def test_evaluation_table_is_current():
    """docs/integrations.md's H200 evaluation table is what sage_fast.evaluate.summary renders from the committed
    reports, caption included."""
    from sage_fast.evaluate import summary

    reports = [ROOT / f"docs/results/evaluate-{model}-large-8192-{variant}-h200-2026-11-26.json"
               for model in ("llama", "bert") for variant in ("fp8", "fp16")]  # fmt: skip
    table = summary.render([json.loads(path.read_text()) for path in reports])
    page = (ROOT / "docs" / "integrations.md").read_text()
    assert table in page, f"docs/integrations.md is stale; the summary prints now:\n{table}"


def test_evaluation_summary_refuses_reports_without_a_common_caption():
    from sage_fast.evaluate import summary

    report = json.loads((ROOT / "docs/results/evaluate-bert-large-8192-fp8-h200-2026-11-26.json").read_text())
    other = {**report, "environment": {**report["environment"], "card": "NVIDIA H100"}}
    with pytest.raises(ValueError, match="'card'"):
        summary.render([report, other])
    with pytest.raises(ValueError, match="at least one"):
        summary.render([])


def test_docstrings_are_markdown():
    """mkdocstrings renders docstrings as Markdown: a Sphinx role (:func:`x`) shows up as raw text on the API page.
    Link with [`x`][sage_ref.x] (an object the API page renders) or write ``x``."""
    role = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|obj|exc|ref):`")
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for package in ("sage_ref", "sage_fast") for path in sorted((ROOT / package).rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), start=1) if role.search(line)]  # fmt: skip
    assert not found, "\n".join(found)


def test_pages_have_no_control_characters():
    """A backslash escape in a Python string (\\a, \\t) turns LaTeX such as \\approx into a control character,
    which KaTeX then refuses in the browser; mkdocs build does not notice."""
    bad = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
    files = [*sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "tutorials").glob("*.py"))]
    found = [str(path.relative_to(ROOT)) for path in files if bad.search(path.read_text())]
    assert not found, found
