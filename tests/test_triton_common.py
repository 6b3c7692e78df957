"""The softmax helpers of ``sage_fast.triton.common`` that reorder work, against PyTorch, under the interpreter.

``row_max`` takes a row's maximum as a tree of halvings (a shorter dependency chain than ``tl.max``); max is
exact in any order, so it must equal ``torch.amax`` bit for bit, including rows of -inf (a fully masked
causal row) and +inf. On the GPU the rungs that use it are also compared bit for bit with their twins
(tests/test_gpu_rungs.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from hypothesis import given
from hypothesis import strategies as st

from sage_fast.triton.common import row_max


@triton.jit
def row_max_kernel(X, Out, ROWS: tl.constexpr, KEYS: tl.constexpr):
    offs = tl.arange(0, ROWS)[:, None] * KEYS + tl.arange(0, KEYS)[None, :]
    tl.store(Out + tl.arange(0, ROWS), row_max(tl.load(X + offs)))


@given(
    rows=st.sampled_from([16, 64]),
    keys=st.sampled_from([8, 16, 32, 64, 128, 256]),
    seed=st.integers(0, 2**31),
    specials=st.sampled_from(["none", "-inf rows", "+inf", "mixed"]),
)
def test_row_max_is_the_rows_maximum(rows, keys, seed, specials):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, keys, generator=gen) * 100
    if specials in ("-inf rows", "mixed"):
        x[::3] = float("-inf")
    if specials in ("+inf", "mixed"):
        x[1::4, torch.randint(keys, (1,), generator=gen)] = float("inf")
    if specials == "mixed":
        x[2::5, : keys // 2] = float("-inf")
    out = torch.full((rows,), float("nan"))
    row_max_kernel[(1,)](x, out, ROWS=rows, KEYS=keys)
    assert torch.equal(out, torch.amax(x, 1))
