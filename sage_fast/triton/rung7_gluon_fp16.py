"""Rung 7: rung 6's schedule for SageAttention v1's fp16 P·V path (Gluon, sm90).

What changed from rung 3 (the fp16-P·V kernel of ``sageattn(pv="fp16")``): the attention kernel is rung 6's
(``attn_gluon``: a TMA producer warp, two consumer warpgroups that take turns on the tensor cores, each
overlapping its softmax with the previous tile's P·V) with ``PV_FP8=False``: P is rounded to fp16 and
multiplied with fp16 V into an fp16 accumulator per key tile (``m64nNk16.f16.f16.f16``), added into the fp32
total; V is read in place through a 3-d TMA descriptor [B·Hkv, N, D], so a tile's keys past N arrive as
zeros. The fp16 product runs at half the fp8 rate, so the tensor cores take a larger share of each tile
than on the fp8 path and overlapping the softmax with them matters more.

What it bought (H100, 2026-11-26; docs/results/bench-h100-2026-11-26-rung7.json, probes-rung7-h100-...): whole
call head_dim 128 N=8k 613 TOPS against rung 3's 539 (SDPA-cuDNN 572), N=32k 688 against 548, causal 8k 535
against 482, N=1k 375 against 359; kernel alone at N=8k 676-682 against 570-574. At head_dim 64 it loses
(360 against 444): its fixed 232 registers per consumer leave an SM one program where rung 3 runs several.
So ``sageattn(pv="fp16")`` runs it on sm90 at head_dim 65-128 without a mask, rung 3 elsewhere.

Without an attention mask only, head_dim up to 128 (at 256 its fp16 V and P tiles overflow shared memory: it
raises ValueError), sm90 only, no interpreter (see rung 6). Quantization is rung 3's.

Held to ``sage_ref.sage_attention(qk_granularity="block", pv="fp16", block_m=64, block_n=128)``: the
same roundings as rung 3 in the same order, so on the GPU the same output bit for bit.
"""

from dataclasses import replace

from . import rung3_fused_quant
from .rung3_fused_quant import forward_for

# Three K̂/V stages (195 KB of shared memory at head_dim 128): 676-682 TOPS kernel-only against 620-624 with two
# (H100, head_dim 128, N = 8k; docs/notes.md).
TILES = replace(rung3_fused_quant.TILES, gluon=True, num_stages=3)
BLOCK_M, BLOCK_N = TILES.block_m, TILES.block_n


forward = forward_for(TILES, v_fp8=False)
