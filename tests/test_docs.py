"""The site builds: ``mkdocs build --strict`` (broken links, missing pages or images, docstring errors fail)."""

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
