"""Rung 4: FP8 e4m3 P·V with per-channel V scales and two-level fp32 accumulation — SageAttention2.

What changed from rung 3: the fused quantization launch also scales V per channel into
e4m3's range (v_scale = max_n |V| / 448) and stores it transposed, keys contiguous, as
the 8-bit wgmma wants its B operand; the kernel scales P into [0, 448], multiplies
e4m3 × e4m3 on the fp8 tensor cores (twice the fp16 rate on Hopper and Ada) into a fresh
fp32 block result and adds that into the fp32 total. Needs sm89+ (fp8 tensor cores).

What it bought (H200, 2026-11-26; docs/benchmarks.md): hd128, N = 8k, whole call 670 TOPS
against rung 3's 547: 1.15× SDPA-cuDNN (583) and 1.64× sageattention 1.0.6. With it came its own
tile shape (64×128, see TILES) and, in the shared kernel, the unmasked hot loop and the
FMA-folded dequantization. It costs accuracy by the format itself: rounding P
and V to e4m3 alone gives rel L1 ≈ 0.037 on Gaussian inputs (measured: 0.038 vs fp64).

Held to ``sage_ref.sage_attention(qk_granularity="block", pv="fp8", block_m=64, block_n=128)``.
"""

from .launch import Tiles
from .rung3_fused_quant import forward_for

# Tile = quantization block. With 8-bit V a 128-key tile feeds the fp8 wgmma its full K; 64x128 with
# 4 warps was the fastest fp8-P·V shape in the H200 sweep (docs/notes.md: 654 TOPS kernel-only at
# hd128, N=8k, against 506 for the first run's 128x64 with 8 warps). At head_dim <= 64, 128 registers
# per thread (the compiler takes 167-214) fit four programs per SM instead of two or three: 525 TOPS
# kernel-only against 452 (H200, hd64, N=8k); at hd128 no cap helped (each spills or loses). At head_dim 256 four
# warps spill (rung 5: 584 B per thread), yet eight, which do not, ran 2-8 % slower (H200, rung 5): four stay.
TILES = Tiles(block_m=64, block_n=128, num_warps=4, num_stages=3, register_caps=((32, 128), (64, 128)))
BLOCK_M, BLOCK_N = TILES.block_m, TILES.block_n


forward = forward_for(TILES, v_fp8=True)
