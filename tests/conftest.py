"""Test setup: two modes, chosen by the environment before anything imports Triton or Numba.

Default (CI, any machine): kernels run on the CPU through Triton's interpreter and Numba's
simulator, and the GPU suite (tests marked ``gpu``) is skipped. ``SAGE_TEST_GPU=1`` on a CUDA
machine (the lent H100/H200): kernels are compiled for the GPU and only the GPU suite runs, at real
sizes. Both switches must be set before any ``@triton.jit`` / ``numba.cuda`` code is imported, so
they are set here, before the test modules are collected.

Hypothesis: the built-in ``ci`` profile when ``CI`` is set (derandomized, no database),
``thorough`` with HYPOTHESIS_PROFILE=thorough, otherwise ``dev``.
"""

import os

import pytest

GPU_RUN = os.environ.get("SAGE_TEST_GPU") == "1"
if not GPU_RUN:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile("thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("ci"), deadline=None, max_examples=25)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_collection_modifyitems(config, items):
    """Run the GPU suite only with SAGE_TEST_GPU=1, and only the GPU suite then."""
    for item in items:
        if GPU_RUN and "gpu" not in item.keywords:
            item.add_marker(pytest.mark.skip(reason="SAGE_TEST_GPU=1 runs the GPU suite only"))
        elif not GPU_RUN and "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="the GPU suite runs with SAGE_TEST_GPU=1 on a CUDA machine"))
