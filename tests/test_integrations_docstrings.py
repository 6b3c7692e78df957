"""Every example in the integrations' docstrings runs and prints what it shows (they are the API page's examples)."""

import doctest
import importlib

import pytest

MODULES = ("calibration", "counts", "extras", "masks", "plan", "sdpa_router", "transformers")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    if name in ("masks", "transformers"):
        pytest.importorskip("transformers", reason="needs the integrations extra: pip install -e '.[integrations]'")
    module = importlib.import_module(f"sage_fast.integrations.{name}")
    failures, attempted = doctest.testmod(module, raise_on_error=False, verbose=False)
    assert attempted > 0 and failures == 0
