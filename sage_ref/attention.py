"""Exact attention two ways: materialized softmax, and the tiled online softmax.

Both take HND tensors: q [batch, heads, q_len, head_dim], k and v
[batch, kv_heads, kv_len, head_dim] with heads % kv_heads == 0 (GQA/MQA: query head
h reads key/value head h // (heads // kv_heads)).
"""

from __future__ import annotations

import math

import torch

from .checks import check_attn_mask, check_block, check_flag, check_qkv, resolve_sm_scale
from .masks import additive_bias
from .online_softmax import causal_visible, online_softmax

LOG2E = math.log2(math.e)


def expand_kv(t: torch.Tensor, group: int) -> torch.Tensor:
    """[batch, kv_heads, n, d] -> [batch, kv_heads * group, n, d]: each KV head serves ``group`` query heads."""
    return t if group == 1 else t.repeat_interleave(group, dim=1)


def naive_attention(q, k, v, *, is_causal=False, sm_scale=None, attn_mask=None, return_lse=False):
    """softmax(Q Kᵀ · sm_scale + mask) V with the score matrix materialized, in the input's precision.

    Shapes: q [B, H, Nq, D], k, v [B, Hkv, Nkv, D] -> out [B, H, Nq, D] (and lse [B, H, Nq]).
    ``lse = log Σ_j exp(S_ij)`` in natural log. With fp64 inputs this is the truth every
    other implementation is measured against. Causal masking is bottom-right aligned;
    ``attn_mask`` is bool (True = attend) or an additive natural-log bias, broadcastable to
    [B, H, Nq, Nkv]. A row that sees no key gives 0 and lse = -inf.
    """
    shape = check_qkv(q, k, v)
    check_flag("is_causal", is_causal)
    check_flag("return_lse", return_lse)
    attn_mask = check_attn_mask(attn_mask, shape, q.device)
    scale = resolve_sm_scale(sm_scale, shape.head_dim)
    k, v = expand_kv(k, shape.group), expand_kv(v, shape.group)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if attn_mask is not None:
        s = s + additive_bias(attn_mask, s.dtype)
    if is_causal:
        s = s.masked_fill(~causal_visible(shape.q_len, shape.kv_len, q.device), float("-inf"))
    # Subtract the row maximum, not the lse: when a mask pushes every logit of a row to about
    # -finfo.max, s - lse loses all precision, while s - max stays exact. A fully masked row
    # has max = -inf; shifting by 0 instead keeps its probabilities at exactly 0.
    m = s.amax(dim=-1, keepdim=True)
    e = torch.exp(s - torch.where(m == float("-inf"), 0.0, m))
    row_sum = e.sum(dim=-1, keepdim=True)
    out = torch.matmul(e / torch.where(row_sum == 0, 1.0, row_sum), v)
    lse = torch.where(row_sum == 0, float("-inf"), m + torch.log(row_sum))[..., 0]
    return (out, lse) if return_lse else out


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Kernels accumulate in fp32; fp64 inputs stay fp64 so the reference can serve as a truth."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def flash_attention(
    q, k, v, *, is_causal=False, sm_scale=None, attn_mask=None, block_m=128, block_n=64, return_lse=False
):
    """FlashAttention's forward pass: tiles of ``block_n`` keys, online softmax, exp2.

    S_j = (Q K_jᵀ) · sm_scale · log2 e is a base-2 logit, so P_j = exp2(S_j - m_i) equals
    exp(Q K_jᵀ · sm_scale - m_i ln 2): the same softmax, one cheap instruction per element.
    Arithmetic is fp32 (fp64 for fp64 inputs); the output has the input's dtype.
    Query rows are independent, so the ``block_m`` rows a kernel program owns are all
    processed at once here: per row the arithmetic is the kernel's.
    ``attn_mask`` (bool or natural-log bias, broadcastable to [B, H, Nq, Nkv]) is added to
    the base-2 logits as bias · log2 e. Returns out [B, H, Nq, D] and, with ``return_lse``,
    the natural-log lse [B, H, Nq].
    """
    shape = check_qkv(q, k, v)
    check_flag("is_causal", is_causal)
    check_flag("return_lse", return_lse)
    attn_mask = check_attn_mask(attn_mask, shape, q.device)
    check_block("block_m", block_m)
    check_block("block_n", block_n)
    scale2 = resolve_sm_scale(sm_scale, shape.head_dim) * LOG2E
    dtype = compute_dtype(q.dtype)
    qc = q.to(dtype)
    kc, vc = expand_kv(k, shape.group).to(dtype), expand_kv(v, shape.group).to(dtype)
    out, lse2 = online_softmax(
        lambda a, b: torch.matmul(qc, kc[:, :, a:b].transpose(-1, -2)) * scale2,
        lambda p, a, b: torch.matmul(p, vc[:, :, a:b]),
        q_len=shape.q_len,
        kv_len=shape.kv_len,
        block_n=block_n,
        is_causal=is_causal,
        acc_shape=tuple(q.shape),
        dtype=dtype,
        device=q.device,
        attn_mask=attn_mask,
    )
    out = out.to(q.dtype)
    return (out, lse2 / LOG2E) if return_lse else out
