"""SageAttention end to end, with the kernels' arithmetic.

    1. smooth K:      K_s = K - mean_n K                       (softmax-invariant)
    2. quantize:      Q̂ = int8(Q · sm_scale · log2 e),  K̂ = int8(K_s), scales per group
    3. scores:        S_j = (Q̂ K̂_jᵀ in int32) · q_scale · k_scale  (base-2 logits)
    4. online softmax with exp2; P_j · V_j in the precision ``pv`` names
    5. out = acc / l;  lse = (m + log2 l) · ln 2 + sm_scale · q · k_mean

``pv``:
- ``fp32``: exact P·V in fp32 (fp64 for fp64 inputs when nothing is quantized).
- ``fp16``: SageAttention v1. P and V rounded to fp16; inside a key block the tensor
  core accumulates in fp16 (emulated: each 16-key MMA step's exact partial sum is
  added to the fp16 accumulator and rounded); across blocks fp32.
- ``fp8``: SageAttention2. P · 448 and V / v_scale (per channel) rounded to e4m3; each
  block's product is accumulated in fp32 and added into an fp32 total; the total is
  multiplied by v_scale / 448 at the end.
- ``int8``: the v1 paper's variant: P · 127 and per-channel V in int8, exact int32
  products per block, fp32 across blocks.
"""

from __future__ import annotations

import torch

from .attention import LOG2E, compute_dtype, expand_kv
from .checks import check_attn_mask, check_block, check_choice, check_flag, check_qkv, resolve_sm_scale
from .online_softmax import online_softmax
from .quantization import FP8_E4M3_MAX, GRANULARITIES, INT8_MAX, encode_p, quantize_int8, quantize_v_fp8, quantize_v_int8
from .quantization import smooth_k as smooth_k_fn

PV_MODES = ("fp32", "fp16", "fp8", "int8")
MMA_K = 16  # keys one fp16 tensor-core MMA step sums before rounding its fp16 accumulator


def quantize_qk(q, k, *, sm_scale, qk_granularity, block_m, block_n):
    """Step 2: Q (with sm_scale · log2 e folded in) and K to INT8.

    Q's groups live in its tiles of ``block_m`` rows, split among 4 warps for ``warp``
    and ``thread``; K's in tiles of ``block_n`` keys, which every warp shares, so K's
    ``warp`` granularity is its block. Returns two [`Int8Quantized`][sage_ref.Int8Quantized].
    """
    q_hat = quantize_int8(q.to(torch.float32) * (sm_scale * LOG2E), qk_granularity, block_m, warps=4)
    k_hat = quantize_int8(k, qk_granularity, block_n, warps=1)
    return q_hat, k_hat


def int8_scores(q_hat, k_hat):
    """Step 3 as a function of the key range: S = (Q̂ K̂ᵀ exactly) · (q_scale · k_scale), fp32.

    The int32 products are exact; fp64 matmul of int8 codes is exact too (|sum| < 2^53),
    and works on every device.
    """
    q_codes = q_hat.codes.to(torch.float64)
    k_codes = k_hat.codes.to(torch.float64)
    q_scale, k_scale = q_hat.token_scale(), k_hat.token_scale()

    def scores(start, end):
        s_int = torch.matmul(q_codes, k_codes[:, :, start:end].transpose(-1, -2)).to(torch.float32)
        return s_int * (q_scale[..., :, None] * k_scale[..., None, start:end])

    return scores


def fp16_block_pv(p, v16):
    """P_j · V_j as an fp16-accumulating tensor core computes it: [B,H,M,n] x [B,H,n,D] -> fp32.

    Products of fp16 values are exact; every MMA step of 16 keys adds its partial sum to
    the fp16 accumulator, which is rounded to fp16.
    """
    p16 = p.to(torch.float16)
    acc16 = torch.zeros(*p.shape[:-1], v16.shape[-1], dtype=torch.float16, device=p.device)
    for c in range(0, p.shape[-1], MMA_K):
        partial = torch.matmul(p16[..., c : c + MMA_K].double(), v16[..., c : c + MMA_K, :].double())
        acc16 = (acc16.double() + partial).to(torch.float16)
    return acc16.to(torch.float32)


def pv_product(v, pv):
    """Step 4's P·V for one block, and the factor the final output is multiplied by.

    v [B, H, N, D] (already expanded for GQA). Returns (pv_fn, out_scale).
    """
    if pv == "fp16":
        v16 = v.to(torch.float16)
        return (lambda p, a, b: fp16_block_pv(p, v16[:, :, a:b])), None
    if pv == "fp8":
        v_fp8, v_scale = quantize_v_fp8(v)
        v_dec = v_fp8.to(torch.float64)
        return (
            lambda p, a, b: torch.matmul(encode_p(p, "fp8")[0].to(torch.float64), v_dec[:, :, a:b]).to(torch.float32)
        ), v_scale / FP8_E4M3_MAX
    if pv == "int8":
        v_codes, v_scale = quantize_v_int8(v)
        v_dec = v_codes.to(torch.float64)
        return (
            lambda p, a, b: torch.matmul(encode_p(p, "int8")[0].to(torch.float64), v_dec[:, :, a:b]).to(torch.float32)
        ), v_scale / INT8_MAX
    return (lambda p, a, b: torch.matmul(p, v[:, :, a:b].to(p.dtype))), None


def sage_attention(
    q,
    k,
    v,
    *,
    is_causal=False,
    sm_scale=None,
    smooth_k=True,
    qk_granularity="block",
    pv="fp16",
    block_m=128,
    block_n=64,
    attn_mask=None,
    return_lse=False,
):
    """SageAttention with the kernels' rounding points: q [B,H,Nq,D], k, v [B,Hkv,Nkv,D] -> out [B,H,Nq,D].

    qk_granularity: one of ``tensor token block warp thread`` (see
    [`quantize_int8`][sage_ref.quantize_int8]), or None to keep Q and K unquantized. With
    ``qk_granularity=None, pv="fp32", smooth_k=False`` this is exactly
    [`flash_attention`][sage_ref.flash_attention]. ``attn_mask``: bool (True = attend) or an
    additive natural-log bias, broadcastable to [B, H, Nq, Nkv], added to the base-2 logits
    as bias · log2 e. ``return_lse`` gives the natural-log lse of the original (masked)
    logits Q Kᵀ · sm_scale + bias [B, H, Nq].
    """
    shape = check_qkv(q, k, v)
    check_flag("is_causal", is_causal)
    check_flag("smooth_k", smooth_k)
    check_flag("return_lse", return_lse)
    check_choice("qk_granularity", qk_granularity, (*GRANULARITIES, None))
    check_choice("pv", pv, PV_MODES)
    check_block("block_m", block_m)
    check_block("block_n", block_n)
    attn_mask = check_attn_mask(attn_mask, shape, q.device)
    scale = resolve_sm_scale(sm_scale, shape.head_dim)
    exact = qk_granularity is None and pv == "fp32"
    dtype = compute_dtype(q.dtype) if exact else torch.float32

    if smooth_k:
        k, k_mean = smooth_k_fn(k)
    if qk_granularity is None:
        qc, kc = q.to(dtype), expand_kv(k, shape.group).to(dtype)
        scores = lambda a, b: torch.matmul(qc, kc[:, :, a:b].transpose(-1, -2)) * (scale * LOG2E)  # noqa: E731
    else:
        # Each KV head's quantization is shared by its query heads; quantizing the
        # expanded K gives the same codes and scales per head.
        q_hat, k_hat = quantize_qk(
            q, expand_kv(k, shape.group), sm_scale=scale, qk_granularity=qk_granularity, block_m=block_m, block_n=block_n
        )
        scores = int8_scores(q_hat, k_hat)
    pv_fn, out_scale = pv_product(expand_kv(v, shape.group).to(dtype), pv)

    out, lse2 = online_softmax(
        scores,
        pv_fn,
        q_len=shape.q_len,
        kv_len=shape.kv_len,
        block_n=block_n,
        is_causal=is_causal,
        acc_shape=tuple(q.shape),
        dtype=dtype,
        device=q.device,
        attn_mask=attn_mask,
    )
    if out_scale is not None:
        out = out * out_scale
    out = out.to(q.dtype)
    if not return_lse:
        return out
    lse = lse2 / LOG2E
    if smooth_k:
        # S_original = S_smoothed + sm_scale · q · k_mean: the same shift for every key of a row.
        shift = torch.matmul(q.to(k_mean.dtype), expand_kv(k_mean, shape.group).transpose(-1, -2))[..., 0]
        lse = lse + scale * shift.to(lse.dtype)
    return out, lse

