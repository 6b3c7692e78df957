"""Optional dependencies of the integrations, imported on first use with an error that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRA = "integrations"


def require(module: str) -> ModuleType:
    """Import ``module`` (e.g. "transformers"), or raise ImportError saying which extra installs it.

    Examples
    --------
    >>> require("torch").__name__
    'torch'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        raise ImportError(
            f"{top} is needed for sage_fast.integrations.{top} but could not be imported ({error}); "
            f"install the optional dependencies with: pip install 'sage-attention-ref[{EXTRA}]'"
        ) from error
