"""Rung 1: naive attention in three kernels, the N×N score matrix materialized in global memory.

What it is: the textbook formula, one launch per step.
    1. ``scores_kernel``: one thread per (query i, key j) computes S_ij = q_i · k_j · sm_scale
       (-inf where the causal mask hides the key) into S [batch, heads, q_len, kv_len], fp32;
    2. ``softmax_kernel``: one thread per query row finds the row maximum, sums exp(S - max) and
       overwrites the row with the probabilities P (and writes lse = max + log Σ);
    3. ``pv_kernel``: one thread per (query i, channel d) computes out_id = Σ_j P_ij v_jd.
Every thread of step 1 reads a whole q row and k row from global memory, and the score matrix
costs 4·q_len·kv_len bytes per head, written once and read twice: this rung is bound by memory
traffic, which is what the next rungs remove.

What it bought: the baseline. Measured numbers: docs/benchmarks-numba.md.

Numerics: fp32 throughout, natural-log softmax, so it is held to ``sage_ref.flash_attention``
(exact attention in fp32; the tiling there only reorders fp32 roundings).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .common import NEG_INF, ONE, ZERO, as_kernel_array, ceil_div, check_args, empty_f32, fp32

TILE = 16  # threads per block side for the 2-d launches (16 x 16 = 256 threads)
ROWS = 64  # threads per block for the per-row softmax


@cuda.jit
def scores_kernel(Q, K, S, group, q_len, kv_len, head_dim, sm_scale, is_causal):
    j, i, bh = cuda.grid(3)
    heads = Q.shape[1]
    b, h = bh // heads, bh % heads
    if i >= q_len or j >= kv_len:
        return
    if is_causal and j > i + kv_len - q_len:  # bottom-right aligned: the last query sees every key
        S[b, h, i, j] = NEG_INF
        return
    kv_h = h // group
    dot = ZERO
    for d in range(head_dim):
        dot += Q[b, h, i, d] * K[b, kv_h, j, d]
    S[b, h, i, j] = dot * sm_scale


@cuda.jit
def softmax_kernel(S, Lse, q_len, kv_len):
    i, bh = cuda.grid(2)
    heads = S.shape[1]
    b, h = bh // heads, bh % heads
    if i >= q_len:
        return
    m = NEG_INF
    for j in range(kv_len):
        m = max(m, S[b, h, i, j])
    # A row that sees no key has m = -inf: shift by 0 so exp(-inf) = 0, not exp(NaN).
    m_safe = ZERO if m == NEG_INF else m
    row_sum = ZERO
    for j in range(kv_len):
        row_sum += math.exp(S[b, h, i, j] - m_safe)
    inv = ZERO if row_sum == ZERO else ONE / row_sum
    for j in range(kv_len):
        S[b, h, i, j] = math.exp(S[b, h, i, j] - m_safe) * inv
    Lse[b, h, i] = NEG_INF if row_sum == ZERO else m + math.log(row_sum)


@cuda.jit
def pv_kernel(P, V, Out, group, q_len, kv_len, head_dim):
    d, i, bh = cuda.grid(3)
    heads = P.shape[1]
    b, h = bh // heads, bh % heads
    if i >= q_len or d >= head_dim:
        return
    kv_h = h // group
    acc = ZERO
    for j in range(kv_len):
        acc += P[b, h, i, j] * V[b, kv_h, j, d]
    Out[b, h, i, d] = acc


def forward(q, k, v, *, is_causal=False, sm_scale=None, return_lse=False):
    """q [B,H,Nq,D], k, v [B,Hkv,Nkv,D] (fp16/bf16/fp32, CUDA or simulator) -> out [B,H,Nq,D] (and lse [B,H,Nq])."""
    shape, scale = check_args(q, k, v, is_causal=is_causal, sm_scale=sm_scale, return_lse=return_lse)
    B, H, Nq, Nkv, D = shape.batch, shape.heads, shape.q_len, shape.kv_len, shape.head_dim
    qf, kf, vf = fp32(q), fp32(k), fp32(v)
    s = empty_f32(B, H, Nq, Nkv, device=q.device)
    out = empty_f32(B, H, Nq, D, device=q.device)
    lse = empty_f32(B, H, Nq, device=q.device)
    Qa, Ka, Va, Sa, Oa, La = map(as_kernel_array, (qf, kf, vf, s, out, lse))
    scores_kernel[(ceil_div(Nkv, TILE), ceil_div(Nq, TILE), B * H), (TILE, TILE, 1)](
        Qa,
        Ka,
        Sa,
        shape.group,
        Nq,
        Nkv,
        D,
        np.float32(scale),
        is_causal,  # an fp32 scalar: fp32 math
    )
    softmax_kernel[(ceil_div(Nq, ROWS), B * H), (ROWS, 1)](Sa, La, Nq, Nkv)
    pv_kernel[(ceil_div(D, TILE), ceil_div(Nq, TILE), B * H), (TILE, TILE, 1)](Sa, Va, Oa, shape.group, Nq, Nkv, D)
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out
