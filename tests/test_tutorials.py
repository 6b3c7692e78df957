"""The tutorials and the home page's example run, and the rendered tutorial pages show the current code.

Each ``tutorials/NN_*.py`` is executed as a script (its own asserts are the checks: every step against
naive attention or an fp64 truth). Kernels, if a tutorial launches any, run in Triton's interpreter
(conftest sets TRITON_INTERPRET). ``docs/build_tutorials.py`` renders the pages; the last test fails
when a tutorial's code changed without the page being rebuilt.
"""

import re
import runpy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))


def test_tutorials_exist():
    assert [p.name[:2] for p in TUTORIALS][:3] == ["01", "02", "03"]


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))  # as `python tutorials/NN_*.py` does: `from listing import show`
    with torch.random.fork_rng():  # a tutorial seeds the global generator; leave other tests' state alone
        runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out  # it printed its results


def test_home_page_example():
    """docs/index.md's model snippet runs (sage_ref emulation on CPU) and matches torch's SDPA."""
    code = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "index.md").read_text(), re.DOTALL).group(1)
    namespace = {}
    exec(code, namespace)  # noqa: S102  (the page's own example)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        model = namespace["SelfAttention"](64, 4)
        x = torch.randn(2, 77, 64)
        out = model(x)
        q, k, v = (t.transpose(1, 2) for t in model.qkv(x).unflatten(-1, (3, 4, -1)).unbind(dim=2))
        ref = model.out(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(-2))
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    assert out.shape == x.shape and cos > 0.999, cos


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_rendered_page_is_current(path):
    jupytext = pytest.importorskip("jupytext", reason="jupytext comes with the docs extra: pip install -e '.[docs]'")
    page = ROOT / "docs" / "tutorials" / (path.stem + ".md")
    assert page.exists(), f"{page.relative_to(ROOT)} missing: run python docs/build_tutorials.py"
    text = page.read_text()
    for cell in jupytext.read(path, fmt="py:percent").cells:
        source = cell.source.strip("\n")
        if cell.cell_type == "code" and source.strip() and not source.lstrip().startswith(('"""', 'r"""')):
            assert source in text, f"{page.relative_to(ROOT)} is stale: run python docs/build_tutorials.py"
