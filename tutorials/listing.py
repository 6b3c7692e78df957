"""Printing source on a tutorial's page: lines reflowed to the page's width, so code blocks never scroll sideways.

The project's source is 120 characters wide; a rendered page shows about 84 without scrolling at 1280 px.
`show` reflows what it prints: a trailing comment moves onto its own line above its code, and a line of code
still too long breaks inside its brackets, where Python lets a statement go on.

The tutorials import it as ``from listing import show``: ``python tutorials/NN_*.py`` puts this folder on
``sys.path``, and so do ``docs/build_tutorials.py`` and ``tests/test_tutorials.py``.
"""

import textwrap

WIDTH = 84  # the characters of code a page shows without scrolling sideways


def fit(line, width=WIDTH):
    """`line` as lines of at most `width` characters, where its brackets allow."""
    if len(line) <= width:
        return [line]
    indent = line[: len(line) - len(line.lstrip())]
    if line.lstrip().startswith("# "):
        code, comment = "", line.lstrip()[2:]
    else:
        code, _, comment = line.partition("  # ")
    prefix = indent + "# "
    lines = [prefix + part for part in textwrap.wrap(comment, width - len(prefix))]
    # Code breaks after the last bracket it opens at the top level and after the
    # commas directly inside that bracket (quotes tracked: strings stay whole).
    depth, quote, cuts = 0, None, []
    for i, char in enumerate(code):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
            cuts = [i + 1] if depth == 1 else cuts
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 1:
            cuts.append(i + 1)
    if len(code) <= width or not cuts:
        return lines + ([code] if code else [])
    lines.append(code[: cuts[0]])
    for a, b in zip(cuts, [*cuts[1:], len(code)]):
        piece = code[a:b].strip()
        if a > cuts[0] and len(lines[-1]) + 1 + len(piece) <= width:
            lines[-1] += " " + piece
        else:
            lines.append(indent + "    " + piece)
    return lines


def show(source):
    """Print `source` with every line fitted to `WIDTH`."""
    print("\n".join(out for line in source.split("\n") for out in fit(line)))
