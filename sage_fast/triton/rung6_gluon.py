"""Rung 6: the fp8-P·V kernel in Gluon, laid out like FlashAttention-3 (sm90).

What changed from rung 5: the attention kernel (``attn_gluon``) is written in Gluon, Triton's
lower-level layer, where warps, wgmmas and barriers are placed by hand. One program holds 128 query
rows in two consumer warpgroups plus a producer warp: the producer streams K̂/V̂ᵀ tiles by TMA into
shared slots both consumers read; each consumer issues the scores of key tile j and the P·V of tile
j-1 as two asynchronous wgmmas and runs tile j's softmax while P_{j-1}·V_{j-1} is on the tensor cores;
and the consumers take turns issuing, so one's softmax runs while the other's products do. Plain
Triton 3.6 waits for every wgmma at once and cannot split a program into partitions, so in rung 5 the
softmax and the MMAs of one program never overlap (ncu: tensor pipe 43 % busy, MUFU 45 %; notes.md).
Quantization is rung 5's (Q̂'s blocks stay 64 rows: each consumer has its own q_scale).

What it bought (H200, 2026-11-26; docs/notes.md, docs/results/bench-h200-2026-11-26-rung6.json): a
tie, not yet a gain. Whole call hd128: N=8k 686 TOPS against rung 5's 687 (SDPA-cuDNN 578), N=32k 764
against 755, causal 32k 717 against 706; but causal 8k 578 against 620, N=1k 352 against 420, hd64
8k 385 against 515. One program per SM (2 x 232 + 40 registers per thread; 115 KB of shared memory
then, 99 KB since P̂ has one buffer per consumer) has nobody to hide its start and end behind, which short sequences feel most; and at hd64 the
consumers' 232 registers are mostly idle where rung 5 fits four programs per SM. The same schedule
in one partition (two programs of one warpgroup per SM) read 680 kernel-only against rung 5's 775.

Without an attention mask only, sm90 only (Gluon's wgmma and setmaxnreg), and no interpreter: on the
CPU the tests build it for sm90 and check its PTX and ptxas' verdict; ``sageattn`` runs rung 5.

Held to ``sage_ref.sage_attention(qk_granularity="block", pv="fp8", block_m=64, block_n=128)``: the
same roundings as rung 5 in the same order, so on the GPU the same output bit for bit.
"""

from dataclasses import replace

from . import rung5_tma
from .rung3_fused_quant import forward_for

# block_m: one consumer warpgroup's rows and Q̂'s quantization block (a program covers two); two K̂/V̂ stages:
# three read the same (752-756 against 757 TOPS kernel-only, hd128 N=8k) with 32 KB more shared memory.
TILES = replace(rung5_tma.TILES, gluon=True, register_caps=())
BLOCK_M, BLOCK_N = TILES.block_m, TILES.block_n


forward = forward_for(TILES, v_fp8=True)
