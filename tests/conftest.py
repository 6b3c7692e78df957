"""Test setup: kernels run on the CPU through Triton's interpreter and Numba's simulator.

Both switches must be set before any ``@triton.jit`` / ``numba.cuda`` code is imported,
so they are set here, before the test modules are collected, unless a GPU is present.
Hypothesis: the built-in ``ci`` profile when ``CI`` is set (derandomized, no database),
``thorough`` with HYPOTHESIS_PROFILE=thorough (GPU runs), otherwise ``dev``.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile("thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("ci"), deadline=None, max_examples=25)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
