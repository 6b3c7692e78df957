"""Attention masks as the kernels apply them: an additive bias on the base-2 logits.

A mask is boolean (True = attend, torch's convention) or an additive float bias in
*natural-log* units (what ``torch.nn.functional.scaled_dot_product_attention`` adds to
Q Kᵀ · scale), broadcastable to [batch, heads, q_len, kv_len]. Kernels work with base-2
logits S · log2 e, so a natural-log bias b enters as b · log2 e:

    softmax_e(S + b) = softmax_2((S + b) · log2 e) = softmax_2(S₂ + b · log2 e)

A boolean mask becomes 0 (attend) or -inf (masked), added like a float bias: kernels fold it
into the FMA that dequantizes the scores. (So a NaN score stays NaN where it is masked, too:
NaN anywhere in a row's scores makes the row NaN, masked or not.) Every conversion keeps the
mask's broadcast shape: a key-padding mask [batch, 1, 1, kv_len] never grows to [B, H, Nq, Nkv].
"""

from __future__ import annotations

import math

import torch

LOG2E = math.log2(math.e)


def additive_bias(attn_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The natural-log bias a mask adds to the logits, in ``dtype``: bool -> 0 / -inf, float -> itself, a finite
    value past ``dtype``'s range (fp64's finfo.min in fp32) clamped to it, so a finite bias stays finite."""
    if attn_mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=dtype, device=attn_mask.device)
        return torch.where(attn_mask, zero, float("-inf"))
    bias = attn_mask.to(dtype)
    overflowed = torch.isinf(bias) & torch.isfinite(attn_mask)
    return torch.where(overflowed, torch.finfo(dtype).max * torch.sign(bias), bias)


def base2_bias(attn_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The bias on base-2 logits, b · log2 e in ``dtype``, computed as the kernels compute it.

    A finite bias stays finite: fp32's most negative number (``torch.finfo(torch.float32).min``,
    the "masked" value many models use) times log2 e would overflow to -inf and turn a row whose
    keys are all masked that way into a zero row, where torch gives the uniform average. So the
    product is clamped to -finfo.max unless the bias itself is -inf (in its own dtype: fp64's finfo.min already
    overflows when converted to fp32).
    """
    bias = additive_bias(attn_mask, dtype)  # a finite mask past dtype's range already clamped to it
    if attn_mask.dtype == torch.bool:
        return bias
    bias2 = bias * LOG2E
    overflowed = (bias2 == float("-inf")) & (bias != float("-inf"))
    return torch.where(overflowed, -torch.finfo(dtype).max, bias2)
