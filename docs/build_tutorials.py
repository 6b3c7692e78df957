"""Render each tutorial (``tutorials/NN_*.py``, jupytext percent format) into ``docs/tutorials/NN_*.md``.

Every ``# %%`` cell is executed in order, in one namespace, the way ``python tutorials/NN_*.py`` runs
the file; the page shows each code cell followed by what it printed. The module docstring becomes
the page's title and introduction, ``# %% [markdown]`` cells become prose. Kernels run in Triton's
interpreter (``TRITON_INTERPRET=1``), so a CPU-only machine renders every page.

    python docs/build_tutorials.py            # all tutorials
    python docs/build_tutorials.py 01 03      # the ones whose names start with these prefixes
"""

from __future__ import annotations

import ast
import contextlib
import io
import linecache
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import jupytext  # after TRITON_INTERPRET: a tutorial may import Triton code

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
OUT = ROOT / "docs" / "tutorials"


def docstring_of(source: str) -> str | None:
    """The string if ``source`` is nothing but a string literal (the module docstring cell), else None."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    if len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        value = body[0].value.value
        return value if isinstance(value, str) else None
    return None


def render(path: Path) -> str:
    """Execute ``path`` cell by cell and return the markdown page."""
    notebook = jupytext.read(path, fmt="py:percent")
    namespace = {"__name__": "__main__", "__file__": str(path)}
    rel = path.relative_to(ROOT).as_posix()
    parts = []
    for index, cell in enumerate(notebook.cells):
        source = cell.source.strip("\n")
        if not source.strip():
            continue
        if cell.cell_type == "markdown":
            parts.append(source)
            continue
        doc = docstring_of(source)
        if doc is not None and index <= 1:
            title, _, rest = doc.strip().partition("\n")
            parts.append(f"# {title.strip()}\n\n{rest.strip()}")
            parts.append(
                f"!!! note \"An executed file\"\n    This page is the repository's `{rel}`, run cell by cell "
                f"(`python docs/build_tutorials.py`); run it yourself with `python {rel}`: it takes seconds on a CPU."
            )
            continue
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            # Registered with linecache so inspect.getsource (which @triton.jit needs) finds the cell's code.
            filename = f"{rel} (cell {index})"
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
            exec(compile(source, filename, "exec"), namespace)  # noqa: S102
        parts.append(f"```python\n{source}\n```")
        output = captured.getvalue().rstrip()
        if output:
            parts.append(f"```text\n{output}\n```")
    return "\n\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    import torch

    torch.set_num_threads(1)  # the printed digits do not depend on the machine's core count
    # As `python tutorials/NN_*.py` does: the tutorials import their shared helpers (`from listing import show`).
    sys.path.insert(0, str(TUTORIALS))
    OUT.mkdir(parents=True, exist_ok=True)
    for path in sorted(TUTORIALS.glob("[0-9][0-9]_*.py")):
        if argv and not any(path.name.startswith(prefix) for prefix in argv):
            continue
        page = OUT / (path.stem + ".md")
        page.write_text(render(path))
        print(f"{path.relative_to(ROOT)} -> {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
