"""Rung 5: K̂ and V̂ᵀ tiles copied by Hopper's TMA unit through tensor descriptors.

What changed from rung 4: the attention kernel receives K̂ [B·Hkv·Nkv, Dp] and V̂ᵀ [B·Hkv·Dp, Npad]
as ``TensorDescriptor``s and loads each [BLOCK_N, Dp] / [Dp, BLOCK_N] tile with one bulk copy issued
by one thread (``cp.async.bulk.tensor``), instead of every thread computing 8-16 addresses and
issuing its own 16-byte copies. That frees the registers the per-thread address tiles held and the
issue slots of the copy instructions, in a kernel that ncu shows latency-bound at two warps per
scheduler (docs/notes.md). Keys past kv_len in the last tile are another head's codes (or zeros):
finite, and masked like before. On sm80/sm89 the same code compiles to plain loads.

What it bought (H200, 2026-11-26; docs/notes.md): registers per thread 255 -> 165 at hd128, so with
two pipeline stages (75 KB of shared memory) three programs share an SM instead of two. Kernel alone,
N = 8k: hd128 770 TOPS against rung 4's 719-762, causal 720-734 against 667-701, hd64 548-552
against 527; whole call hd128 676-686 against 655-666 (SDPA-cuDNN 584-590) in one interleaved
run, 694 against 670 in the full benchmark (where ``sageattn``, which runs this rung, read 722:
single numbers carry ±5 %).

Held to ``sage_ref.sage_attention(qk_granularity="block", pv="fp8", block_m=64, block_n=128)``:
the same arithmetic as rung 4, so the same output bit for bit.
"""

from dataclasses import replace

from . import rung4_fp8_pv
from .rung3_fused_quant import forward_for

# Two stages, not rung 4's three: 165 registers would allow three programs per SM, shared memory
# only with two stages (3 x 75 KB); at hd64 (already capped at 128 registers) three stages were 1.5 %
# faster, within the run-to-run spread. The hd128 cap of 168 keeps three programs per SM when a length
# is not a multiple of 16: the compiler then takes 203 registers (its masks lose their 16-wide
# constancy), and the kernel ran 9-24 % slower (H200, N = 1000 / 8191, causal or not; docs/notes.md).
TILES = replace(
    rung4_fp8_pv.TILES, num_stages=2, tma=True, register_caps=rung4_fp8_pv.TILES.register_caps + ((128, 168),)
)
BLOCK_M, BLOCK_N = TILES.block_m, TILES.block_n


forward = forward_for(TILES, v_fp8=True)
