"""Rung 6: the fp8-P·V kernel in Gluon, with FA3's intra-warpgroup overlap of softmax and P·V (sm90).

What changed from rung 5: the attention kernel (``attn_gluon``) is written in Gluon, Triton's
lower-level layer, where wgmmas are issued and waited for by hand. Each iteration issues the scores
of key tile j and the P·V of tile j-1 as two asynchronous wgmmas, waits only for the scores, and runs
the softmax of tile j while the tensor cores still multiply P_{j-1}·V_{j-1}; plain Triton 3.6 waits
for every wgmma at once, so in rung 5 the softmax and the MMAs of one program never overlap (ncu:
tensor pipe 43 % busy, MUFU 45 %, neither saturated; docs/notes.md). The K̂/V̂ᵀ stream (TMA, mbarriers,
NUM_STAGES slots) is written out by hand as well. Quantization is rung 5's.

What it bought (H200, 2026-11-26; docs/notes.md): nothing yet: it is slower than rung 5. hd128 N=8k
kernel alone 680 TOPS against rung 5's 761-775, whole call 635 against 710-715 (SDPA-cuDNN 578-583);
causal 648-650 against 720-724, hd64 490 against 547-556. The overlap works: ncu counts 4.5 cycles
between a warp's instructions against rung 5's 5.7. But S, the in-flight P·V block and acc need
254 registers per thread (rung 5: 165), so 2 programs share an SM instead of 3, and 2 warps per
scheduler issue less than 3 did (0.44 against 0.52 instructions per cycle). It is the base for the
next step: FA3's warp-specialized layout (a producer warp with few registers, two consumer
warpgroups that take turns on the tensor cores).

Without an attention mask only, sm90 only (Gluon's wgmma), and no interpreter: on the CPU the tests
build it for sm90 and check its PTX and ptxas' verdict; ``sageattn`` runs rung 5.
"""

from dataclasses import replace

from . import rung5_tma
from .rung3_fused_quant import forward_for

TILES = replace(rung5_tma.TILES, gluon=True, register_caps=())
BLOCK_M, BLOCK_N = TILES.block_m, TILES.block_n


forward = forward_for(TILES, v_fp8=True)
