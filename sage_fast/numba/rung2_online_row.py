"""Rung 2: one thread per query row, online softmax with exp2: the score matrix never exists.

What changed from rung 1: the three launches fuse into one. Each thread owns one query row and
walks over the keys once, keeping the running maximum m, the running sum l of exp2(s - m) and the
output accumulator acc[head_dim] (a per-thread local array); when a key raises the maximum,
l and acc are rescaled by alpha = exp2(m_old - m_new). At the end out = acc / l. Scores are
base-2 logits: log2 e is folded into the scale once per query (q · sm_scale · log2 e), so each
exponential is one exp2 instead of exp's extra multiply. No N×N matrix, no second and third
pass over it; but every thread still streams every key and value row from global memory on its
own, and neighbouring threads read the same k_j at the same time (broadcast, not reuse).

What it bought: measured numbers: docs/benchmarks-numba.md.

Numerics: fp32, so it is held to ``sage_ref.flash_attention``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .common import (
    LOG2E,
    MAX_HEAD_DIM,
    NEG_INF,
    ONE,
    ZERO,
    as_kernel_array,
    ceil_div,
    check_args,
    empty_f32,
    finish,
    fp32,
)  # fmt: skip

ROWS = 64  # threads (query rows) per block


@cuda.jit
def online_row_kernel(Q, K, V, Out, Lse2, group, q_len, kv_len, head_dim, qk_scale2, is_causal):
    i, bh = cuda.grid(2)
    heads = Q.shape[1]
    b, h = bh // heads, bh % heads
    if i >= q_len:
        return
    kv_h = h // group
    q_row = cuda.local.array(MAX_HEAD_DIM, np.float32)
    acc = cuda.local.array(MAX_HEAD_DIM, np.float32)
    for d in range(head_dim):
        q_row[d] = Q[b, h, i, d] * qk_scale2  # base-2 logits: sm_scale · log2 e folded in once
        acc[d] = ZERO
    m = NEG_INF
    l = ZERO
    hi = kv_len
    if is_causal:  # bottom-right aligned: query i sees keys j <= i + kv_len - q_len
        hi = min(kv_len, max(0, i + kv_len - q_len + 1))
    for j in range(hi):
        s = ZERO
        for d in range(head_dim):
            s += q_row[d] * K[b, kv_h, j, d]
        m_new = max(m, s)
        alpha = math.exp2(m - m_new)  # m = -inf before the first key: alpha = 0, and acc is 0 anyway
        p = math.exp2(s - m_new)
        l = l * alpha + p
        for d in range(head_dim):
            acc[d] = acc[d] * alpha + p * V[b, kv_h, j, d]
        m = m_new
    inv = ONE if l == ZERO else ONE / l  # l = 0 only for a row that sees no key: out 0, lse -inf
    for d in range(head_dim):
        Out[b, h, i, d] = acc[d] * inv
    Lse2[b, h, i] = NEG_INF if l == ZERO else m + math.log2(l)


def forward(q, k, v, *, is_causal=False, sm_scale=None, return_lse=False):
    """q [B,H,Nq,D], k, v [B,Hkv,Nkv,D] (fp16/bf16/fp32, CUDA or simulator) -> out [B,H,Nq,D] (and lse [B,H,Nq])."""
    shape, scale = check_args(q, k, v, is_causal=is_causal, sm_scale=sm_scale, return_lse=return_lse)
    B, H, Nq, D = shape.batch, shape.heads, shape.q_len, shape.head_dim
    qf, kf, vf = fp32(q), fp32(k), fp32(v)
    out = empty_f32(B, H, Nq, D, device=q.device)
    lse2 = empty_f32(B, H, Nq, device=q.device)
    online_row_kernel[(ceil_div(Nq, ROWS), B * H), (ROWS, 1)](
        *map(as_kernel_array, (qf, kf, vf, out, lse2)),
        shape.group, Nq, shape.kv_len, D, np.float32(scale * LOG2E), is_causal,
    )  # fmt: skip
    return finish(out, lse2, q, return_lse)
