"""The tiled online softmax that every FlashAttention-style kernel runs.

A kernel never holds a whole row of scores. It walks over key blocks of ``block_n``
keys and keeps, per query row, the running maximum ``m_i`` and the running sum
``l_i`` of ``exp2(s - m_i)``; when a new block raises the maximum, everything
accumulated so far is rescaled by ``alpha = exp2(m_old - m_new)``:

    m_new = max(m_i, rowmax(S_j))
    P_j   = exp2(S_j - m_new)                     # in [0, 1]
    l_i   = alpha * l_i + rowsum(P_j)
    acc   = alpha * acc + P_j · V_j               # how P_j · V_j is computed is pluggable
    out   = acc / l_i,   lse2 = m_i + log2(l_i)   # at the end

Scores are base-2 logits (log2 e folded into the scale), so the exponential is
``exp2``, which the GPU evaluates in one instruction.
"""

from __future__ import annotations

from typing import Callable

import torch

from .checks import check_block
from .masks import base2_bias

ScoresFn = Callable[[int, int], torch.Tensor]
"""``scores(start, end) -> [batch, heads, q_len, end - start]`` base-2 logits of keys start..end-1."""
PVFn = Callable[[torch.Tensor, int, int], torch.Tensor]
"""``pv(P_j, start, end) -> [batch, heads, q_len, head_dim]``: the block's P·V product."""


def causal_visible(q_len: int, kv_len: int, device) -> torch.Tensor:
    """Bottom-right aligned causal mask [q_len, kv_len]: query i sees key j iff j <= i + kv_len - q_len.

    This is FlashAttention's convention: the last query sees every key, which is what
    decoding with a KV cache needs. A query with i + kv_len - q_len < 0 sees nothing.
    """
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(kv_len, device=device)[None, :]
    return j <= i + (kv_len - q_len)


def online_softmax(
    scores: ScoresFn,
    pv: PVFn,
    *,
    q_len: int,
    kv_len: int,
    block_n: int,
    is_causal: bool,
    acc_shape: tuple[int, ...],
    dtype: torch.dtype,
    device,
    attn_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the online softmax over key blocks; return ``(acc / l, lse2)``.

    acc_shape: [batch, heads, q_len, head_dim]. attn_mask: bool (True = attend; 0 / -inf) or a
    natural-log additive bias, broadcastable to [batch, heads, q_len, kv_len], added to each
    block's base-2 logits as ``b · log2 e`` (see [`base2_bias`][sage_ref.base2_bias]). Returns
    the normalised output in ``dtype`` and the base-2 log-sum-exp [batch, heads, q_len].
    A row that sees no key gets output 0 and lse2 = -inf; NaN anywhere in a row's scores
    makes the row NaN.
    """
    check_block("block_n", block_n)
    visible = causal_visible(q_len, kv_len, device) if is_causal else None
    bias2 = None
    if attn_mask is not None:
        # Expanding is a view (stride 0), so each block slices keys without a copy.
        bias2 = base2_bias(attn_mask, dtype).expand(*acc_shape[:-1], kv_len)
    m_i = torch.full(acc_shape[:-1], float("-inf"), dtype=dtype, device=device)
    l_i = torch.zeros(acc_shape[:-1], dtype=dtype, device=device)
    acc = torch.zeros(acc_shape, dtype=dtype, device=device)
    for start in range(0, kv_len, block_n):
        end = min(start + block_n, kv_len)
        s = scores(start, end)
        if bias2 is not None:
            s = s + bias2[..., start:end]
        if visible is not None:
            s = s.masked_fill(~visible[:, start:end], float("-inf"))
        m_new = torch.maximum(m_i, s.amax(dim=-1))
        # A row with no visible key yet has m = -inf; subtracting 0 instead keeps
        # exp2(-inf - (-inf)) = NaN out of it, and its P stays exactly 0.
        m_safe = torch.where(m_new == float("-inf"), 0.0, m_new)
        alpha = torch.exp2(m_i - m_safe)
        p = torch.exp2(s - m_safe[..., None])
        l_i = l_i * alpha + p.sum(dim=-1)
        acc = acc * alpha[..., None] + pv(p, start, end)
        m_i = m_new
    # l_i == 0 only for rows that saw no key, whose acc is 0: divide by 1 instead.
    out = acc / torch.where(l_i == 0, 1.0, l_i)[..., None]
    lse2 = torch.where(l_i == 0, float("-inf"), m_i + torch.log2(l_i))
    return out, lse2
