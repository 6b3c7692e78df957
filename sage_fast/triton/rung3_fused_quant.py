"""Rung 3: smoothing and quantization fused into Triton kernels (one launch for Q, at most two for K and V).

What changed from rung 2: instead of PyTorch's separate passes (mean, subtract, abs-max,
divide, round, cast, pad), ``sage_fast.triton.quant`` reads Q once and K twice (once
for its mean, once to quantize; the second read mostly hits L2) and writes the int8
codes and scales the attention kernel reads, plus the lse shift when asked.

What it bought (H200, 2026-11-26; docs/benchmarks.md): hd128, N = 8k, whole call 547 TOPS
against rung 2's 261 (the kernel alone: 591), 1.34× PyPI sageattention 1.0.6 (409) at the
same accuracy (rel L1 0.0131 vs fp32 SDPA, both). At N = 1k quantization is still a quarter of
the call (362 against the kernel's 479).

Held to ``sage_ref.sage_attention(qk_granularity="block", pv="fp16", block_m=64, block_n=128)``.
"""

import torch

from . import attn_int8, rung2_int8_qk
from .launch import INT8_MIN_HEAD_DIM, head_dim_block
from .quant import quantize_kv, quantize_q

TILES = rung2_int8_qk.TILES  # the same kernel as rung 2: only where the quantization runs changed
BLOCK_M, BLOCK_N = TILES.block_m, TILES.block_n


def quantized_forward(q, k, v, *, is_causal, sm_scale, smooth_k, return_lse, v_fp8, tiles, attn_mask=None):
    """The fused pipeline shared by rungs 3-6: quantize K (and V), then Q, then attend.

    tiles: the kernel's ``Tiles`` (``sage_fast.triton.launch``), whose blocks are also the
    quantization blocks. attn_mask: None, or bool (True = attend) / natural-log additive bias
    broadcastable to [B,H,Nq,Nkv].
    """
    head_dim = q.shape[-1]
    head_dim_padded = head_dim_block(head_dim, INT8_MIN_HEAD_DIM)
    scale = head_dim**-0.5 if sm_scale is None else sm_scale
    kv = quantize_kv(k, v, block_n=tiles.block_n, head_dim_padded=head_dim_padded, smooth_k=smooth_k, v_fp8=v_fp8)
    if not v_fp8 and v.dtype != torch.float16:
        # fp16 P·V multiplies fp16 V: round a bf16/fp32 V once here (the same round-to-nearest-even
        # the kernel's conversion does), not once per query tile inside the kernel, where the
        # conversion (two instructions per element for bf16) ran N / BLOCK_M times per element.
        v = v.to(torch.float16)
    q_int8, q_scale, shift = quantize_q(
        q, sm_scale=scale, block_m=tiles.block_m, head_dim_padded=head_dim_padded,
        k_mean=kv["k_mean"] if (smooth_k and return_lse) else None, kv_heads=k.shape[1],
    )  # fmt: skip
    if tiles.gluon:
        if attn_mask is not None:
            raise ValueError("the Gluon kernel takes no attn_mask: use rung 3's or rung 5's tiles for masked calls")
        from . import attn_gluon  # only Tritons with Gluon's Hopper API have it (see __init__)

        return attn_gluon.launch(
            q_int8, q_scale, kv["k_int8"], kv["k_scale"], kv["v_fp8_t"] if v_fp8 else v, kv["v_scale"], out_like=q,
            head_dim=head_dim, is_causal=is_causal, block_m=tiles.block_m, block_n=tiles.block_n,
            num_stages=tiles.num_stages, shift=shift, return_lse=return_lse,
        )  # fmt: skip
    return attn_int8.launch(
        q_int8, q_scale, kv["k_int8"], kv["k_scale"], kv["v_fp8_t"] if v_fp8 else v,
        v_scale=kv["v_scale"], out_like=q, head_dim=head_dim, is_causal=is_causal,
        block_m=tiles.block_m, block_n=tiles.block_n, num_warps=tiles.warps(head_dim_padded), num_stages=tiles.num_stages,
        maxnreg=tiles.maxnreg(head_dim_padded, is_causal), tma=tiles.tma, shift=shift, attn_mask=attn_mask,
        return_lse=return_lse,
    )  # fmt: skip


def forward_for(tiles, *, v_fp8):
    """The ``forward`` of a rung that runs this pipeline with ``tiles`` (fp8 P·V when ``v_fp8``)."""

    def forward(q, k, v, *, is_causal=False, sm_scale=None, smooth_k=True, attn_mask=None, return_lse=False):
        """q [B,H,Nq,D], k, v [B,Hkv,Nkv,D] fp16/bf16/fp32 (any strides) -> out (and lse [B,H,Nq]).

        attn_mask: bool (True = attend) or natural-log additive bias, broadcastable to [B,H,Nq,Nkv].
        """
        return quantized_forward(
            q, k, v, is_causal=is_causal, sm_scale=sm_scale, smooth_k=smooth_k, attn_mask=attn_mask,
            return_lse=return_lse, v_fp8=v_fp8, tiles=tiles,
        )  # fmt: skip

    return forward


forward = forward_for(TILES, v_fp8=False)
