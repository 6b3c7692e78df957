"""The Numba-CUDA ladder: SageAttention from one thread per score to a tiled INT8 kernel.

Numba shows the GPU's execution model with nothing hidden (threads, blocks, shared memory,
barriers); it has no tensor-core API, and reaches dp4a (four int8 multiply-adds in one
instruction) only through a linked CUDA C function (rung 6), so this ladder teaches the algorithm
and the memory hierarchy on the CUDA cores, and the tensor-core story lives in `sage_fast.triton`.

``RUNGS`` lists the rungs in order; each names the ``sage_ref`` variant it must equal, and the tests
iterate over it. ``min_arch``: numba-cuda's floor, sm50 (sm53 for the fp16 conversions of rungs 4-6,
sm61 for rung 6's dp4a). Every rung runs on CUDA tensors, or on CPU tensors under Numba's simulator
(``NUMBA_ENABLE_CUDASIM=1``, set before numba is imported); rung 6 then runs dp4a in Python.
"""

import sys
from functools import partial

import sage_ref

from ..triton import Rung
from . import (
    rung1_naive,
    rung2_online_row,
    rung3_shared_tiles,
    rung4_sage_int8,
    rung5_register_tiles,
    rung6_sgemm_dp4a,
)
from .common import MAX_HEAD_DIM


def _sage_ref(module):
    """SageAttention v1's rounding with the rung's blocks as quantization blocks."""
    return partial(sage_ref.sage_attention, qk_granularity="block", pv="fp16", block_m=module.BLOCK_M, block_n=module.BLOCK_N)


# Rungs 1-3 compute exact attention in fp32: sage_ref.flash_attention (fp32 for fp16/bf16/fp32
# inputs; its tiles only reorder fp32 roundings). Rungs 4-6 round where SageAttention v1 does
# (min_arch 53: their fp16 conversions; 61 for rung 6's dp4a).
RUNGS = (
    Rung("1-naive", rung1_naive.forward, sage_ref.flash_attention, 50, False),
    Rung("2-online-row", rung2_online_row.forward, sage_ref.flash_attention, 50, False),
    Rung("3-shared-tiles", rung3_shared_tiles.forward, sage_ref.flash_attention, 50, False),
    Rung("4-sage-int8", rung4_sage_int8.forward, _sage_ref(rung4_sage_int8), 53, True),
    Rung("5-register-tiles", rung5_register_tiles.forward, _sage_ref(rung5_register_tiles), 53, True),
    Rung("6-sgemm-dp4a", rung6_sgemm_dp4a.forward, _sage_ref(rung6_sgemm_dp4a), 61, True),
)


def max_head_dim(rung: Rung) -> int:
    """The largest head_dim ``rung`` takes: 256, less where its tiles would not fit in shared memory."""
    return getattr(sys.modules[rung.forward.__module__], "MAX_HEAD_DIM", MAX_HEAD_DIM)


def fastest_rung(head_dim: int) -> Rung:
    """Rung 6 up to its head_dim limit (64), rung 5 up to 128, rung 4 above (up to 256): the order measured
    in docs/benchmarks-numba.md, where each is faster than the one after it at every size."""
    return next(rung for rung in (RUNGS[5], RUNGS[4], RUNGS[3]) if head_dim <= max_head_dim(rung))


def forward(q, k, v, *, is_causal=False, sm_scale=None, smooth_k=True, return_lse=False):
    """The fastest Numba rung for these inputs (``fastest_rung``).

    q [B, H, Nq, D], k, v [B, Hkv, Nkv, D], any strides (the rungs copy to contiguous fp32/int8/fp16
    buffers). Equals ``sage_ref.sage_attention(qk_granularity="block", pv="fp16")`` with that rung's
    blocks (``reference_for(head_dim)``). No attention masks: callers must refuse them.
    """
    rung = fastest_rung(q.shape[-1])
    return rung.forward(q, k, v, is_causal=is_causal, sm_scale=sm_scale, smooth_k=smooth_k, return_lse=return_lse)


def reference_for(head_dim: int):
    """The sage_ref emulation ``forward`` is held to at this head_dim."""
    return fastest_rung(head_dim).reference
