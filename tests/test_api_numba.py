"""``sageattn(..., implementation="numba")``: the Numba ladder's fastest rung behind the public API.

Under Numba's CUDA simulator (tests/conftest.py), tiny sizes. The API adds layouts, validation and
the custom op; the numerics are the rung's, held to its own sage_ref variant in test_numba_rungs.py,
so here the API's output must equal the rung's exactly.
"""

import pytest
import torch

import sage_fast
from sage_fast import numba as numba_ladder


def small(shape, seed, shift=0.0):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift).half()


@pytest.mark.parametrize("layout", ["HND", "NHD"])
def test_numba_backend_equals_its_rung(layout):
    q, k, v = small((1, 2, 19, 32), 0), small((1, 1, 23, 32), 1, shift=2.0), small((1, 1, 23, 32), 2)
    expected, expected_lse = numba_ladder.forward(q, k, v, is_causal=True, return_lse=True)
    if layout == "NHD":
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    out, lse = sage_fast.sageattn(q, k, v, tensor_layout=layout, is_causal=True, return_lse=True, implementation="numba")
    if layout == "NHD":
        out = out.transpose(1, 2)
    assert torch.equal(out, expected) and torch.equal(lse, expected_lse)


def test_numba_backend_refuses_what_it_cannot_do():
    q, k, v = small((1, 1, 8, 32), 0), small((1, 1, 8, 32), 1), small((1, 1, 8, 32), 2)
    with pytest.raises(ValueError, match="^attn_mask"):
        sage_fast.sageattn(q, k, v, attn_mask=torch.ones(8, 8, dtype=torch.bool), implementation="numba")
    with pytest.raises(ValueError, match="^pv='fp8'"):
        sage_fast.sageattn(q, k, v, pv="fp8", implementation="numba")
    with pytest.raises(TypeError, match="^q has dtype"):
        sage_fast.sageattn(q.double(), k.double(), v.double(), implementation="numba")
