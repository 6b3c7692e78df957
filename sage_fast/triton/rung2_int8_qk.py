"""Rung 2: INT8 Q·Kᵀ with per-block scales and fp16 P·V — SageAttention v1.

What changed from rung 1: K is smoothed (its mean over tokens subtracted) and Q (with
sm_scale · log2 e folded in) and K are quantized to INT8 with one scale per kernel
tile, here with plain PyTorch operations on the host (``sage_ref``'s quantizers). The
kernel multiplies int8 tiles on the tensor cores into int32 and dequantizes with a single
multiply by q_scale · k_scale; P·V uses an fp16 accumulator inside each key tile, fp32
across tiles.

What it bought (H200, 2026-11-26; docs/benchmarks.md): the kernel alone runs at 591 TOPS
(hd128, N = 8k) against rung 1's 423, but the whole call falls to 261: PyTorch's separate
quantization passes over Q and K cost more than INT8 saves. Rung 3 removes them.

Held to ``sage_ref.sage_attention(qk_granularity="block", pv="fp16", block_m=64, block_n=128)``.
"""

import torch
import torch.nn.functional as F

import sage_ref

from . import attn_int8
from .launch import INT8_MIN_HEAD_DIM, LOG2E, Tiles, head_dim_block

# Tile = quantization block. 64x128 with 4 warps and 2 stages was the fastest fp16-P·V shape in the
# second H200 sweep (docs/notes.md: 552 TOPS kernel-only at hd128, N=8k, against 504 for 128x64 with
# 3 stages, the first sweep's choice), at the same accuracy. At head_dim 256 four warps hold a [64, 256] fp32
# accumulator and a [64, 128] score tile per warpgroup: 255 registers and 1-1.7 KB of spills per thread (sm80-sm90
# builds); eight warps split both along the columns and do not spill (one program per SM either way: shared memory):
# the same bits, kernel alone +29-45 % (H200: 361 against 280 TOPS at N=4k, 312 against 215 at 1k; docs/notes.md).
# At head_dim 64 the sm90 build takes 167 registers without a causal mask but 177 with one (since the tree row max;
# 168 before): two programs per SM instead of three, and the causal kernel ran 10-22 % slower (H200). Capped at 168,
# both fit three, with the same bits and no spills (causal +10-25 %, non-causal unchanged; docs/notes.md). The
# sm80/sm89 builds (191-204 registers uncapped) spill 16-64 bytes per thread under the cap: not measured there.
# At head_dim 32 the non-causal build takes 128 registers (four programs per SM) and the causal one 168 (three):
# capped at 128, the causal kernel alone ran 7-12 % faster (H200, same bits, no spills); the same cap on the
# non-causal build, already at 128, cost 2-3 % (ptxas schedules it differently), so it is a causal-only cap.
# Under it the sm80/sm89 builds spill 24-28 bytes per thread: not measured there either.
TILES = Tiles(
    block_m=64, block_n=128, num_warps=4, num_stages=2,
    register_caps=((64, 168),), causal_register_caps=((32, 128),), head_dim_warps=((256, 8),),
)  # fmt: skip
BLOCK_M, BLOCK_N = TILES.block_m, TILES.block_n


def forward(q, k, v, *, is_causal=False, sm_scale=None, smooth_k=True, attn_mask=None, return_lse=False):
    """q [B,H,Nq,D], k, v [B,Hkv,Nkv,D] fp16/bf16/fp32 (any strides) -> out (and lse [B,H,Nq]).

    attn_mask: bool (True = attend) or natural-log additive bias, broadcastable to [B,H,Nq,Nkv].
    """
    head_dim = q.shape[-1]
    pad = head_dim_block(head_dim, INT8_MIN_HEAD_DIM) - head_dim
    scale = head_dim**-0.5 if sm_scale is None else sm_scale
    k_mean = None
    if smooth_k:
        k, k_mean = sage_ref.smooth_k(k)
    q_hat = sage_ref.quantize_int8(q.float() * (scale * LOG2E), "block", BLOCK_M)
    k_hat = sage_ref.quantize_int8(k, "block", BLOCK_N)
    shift = None
    if return_lse and smooth_k:
        group = q.shape[1] // k_mean.shape[1]
        shift = scale * torch.matmul(q.float(), k_mean.repeat_interleave(group, dim=1).transpose(-1, -2))[..., 0]
    return attn_int8.launch(
        F.pad(q_hat.codes, (0, pad)).contiguous(), q_hat.scale.contiguous(),
        F.pad(k_hat.codes, (0, pad)).contiguous(), k_hat.scale.contiguous(), v,
        out_like=q, head_dim=head_dim, is_causal=is_causal, block_m=BLOCK_M, block_n=BLOCK_N,
        num_warps=TILES.warps(head_dim + pad), num_stages=TILES.num_stages,
        maxnreg=TILES.maxnreg(head_dim + pad, is_causal),
        shift=shift, attn_mask=attn_mask, return_lse=return_lse,
    )  # fmt: skip
