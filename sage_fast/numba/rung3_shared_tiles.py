"""Rung 3: one thread block per query tile; K and V tiles staged in shared memory.

What changed from rung 2: a block of BLOCK_M threads owns BLOCK_M consecutive query rows (one
row per thread, as before) and walks over the keys in tiles of BLOCK_N. For each tile the
block's threads first copy K_j and V_j [BLOCK_N, head_dim] cooperatively into shared memory
(consecutive threads read consecutive elements: coalesced loads), ``cuda.syncthreads()``, then
every thread runs the online softmax over the tile from shared memory; a second barrier keeps
the next tile's copy from overwriting keys a slower thread is still reading. Each k/v element
now comes from global memory once per block instead of once per query row: BLOCK_M = 64 times
less global traffic. The online softmax updates m, l and acc once per tile (the scores of the
tile are kept in a small local array), not once per key.

Shared memory holds 2 · BLOCK_N · HEAD_DIM fp32 values, and Numba's static shared arrays need
compile-time shapes, so a kernel is built per head_dim bucket (16, 32, ..., 256, the next power
of two) with BLOCK_N = 64, 64, 64, 32, 16 keys: at most 32 KiB, under the 48 KiB static limit.

What it bought: measured numbers: docs/benchmarks-numba.md.

Numerics: fp32, so it is held to ``sage_ref.flash_attention``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from .common import (
    LOG2E,
    NEG_INF,
    ONE,
    ZERO,
    as_kernel_array,
    ceil_div,
    check_args,
    empty_f32,
    finish,
    fp32,
    head_dim_bucket,
)  # fmt: skip

BLOCK_M = 64  # query rows (= threads) per block


def block_n_for(head_dim_padded: int) -> int:
    """Keys per tile: 2 · BLOCK_N · HEAD_DIM fp32 values must fit 32 KiB of shared memory."""
    return min(64, 4096 // head_dim_padded)


@functools.cache
def build_kernel(HEAD_DIM: int):
    """The kernel for head_dim <= HEAD_DIM (closure constants are compile-time constants to Numba)."""
    BLOCK_N = block_n_for(HEAD_DIM)

    @cuda.jit
    def tiled_kernel(Q, K, V, Out, Lse2, group, q_len, kv_len, head_dim, qk_scale2, is_causal):
        tid = cuda.threadIdx.x
        start_m = cuda.blockIdx.x * BLOCK_M
        bh = cuda.blockIdx.y
        heads = Q.shape[1]
        b, h = bh // heads, bh % heads
        kv_h = h // group
        i = start_m + tid
        row_ok = i < q_len

        k_tile = cuda.shared.array((BLOCK_N, HEAD_DIM), np.float32)
        v_tile = cuda.shared.array((BLOCK_N, HEAD_DIM), np.float32)
        q_row = cuda.local.array(HEAD_DIM, np.float32)
        acc = cuda.local.array(HEAD_DIM, np.float32)
        s = cuda.local.array(BLOCK_N, np.float32)
        for d in range(head_dim):
            q_row[d] = Q[b, h, i, d] * qk_scale2 if row_ok else ZERO
            acc[d] = ZERO
        m = NEG_INF
        l = ZERO
        # The keys the block needs: with a bottom-right causal mask, up to the last row's diagonal.
        # Every thread runs the same number of tiles, since all of them meet at the barriers.
        hi = kv_len
        if is_causal:
            hi = min(kv_len, max(0, min(start_m + BLOCK_M, q_len) + kv_len - q_len))
        last = i + kv_len - q_len  # the last key row i sees when causal
        for start_n in range(0, hi, BLOCK_N):
            for e in range(tid, BLOCK_N * head_dim, BLOCK_M):  # coalesced: thread t copies elements t, t+64, ...
                jj, d = e // head_dim, e % head_dim
                j = start_n + jj
                k_tile[jj, d] = K[b, kv_h, j, d] if j < kv_len else ZERO
                v_tile[jj, d] = V[b, kv_h, j, d] if j < kv_len else ZERO
            cuda.syncthreads()
            if row_ok:
                m_new = m
                for jj in range(BLOCK_N):
                    j = start_n + jj
                    if j < kv_len and (not is_causal or j <= last):
                        dot = ZERO
                        for d in range(head_dim):
                            dot += q_row[d] * k_tile[jj, d]
                        s[jj] = dot
                        m_new = max(m_new, dot)
                    else:
                        s[jj] = NEG_INF
                # No visible key yet: shift by 0 so exp2(-inf - -inf) never makes NaN.
                m_safe = ZERO if m_new == NEG_INF else m_new
                alpha = math.exp2(m - m_safe)
                l = l * alpha
                for d in range(head_dim):
                    acc[d] *= alpha
                for jj in range(BLOCK_N):
                    p = math.exp2(s[jj] - m_safe)
                    l += p
                    for d in range(head_dim):
                        acc[d] += p * v_tile[jj, d]
                m = m_new
            cuda.syncthreads()
        if row_ok:
            inv = ONE if l == ZERO else ONE / l
            for d in range(head_dim):
                Out[b, h, i, d] = acc[d] * inv
            Lse2[b, h, i] = NEG_INF if l == ZERO else m + math.log2(l)

    return tiled_kernel


def forward(q, k, v, *, is_causal=False, sm_scale=None, return_lse=False):
    """q [B,H,Nq,D], k, v [B,Hkv,Nkv,D] (fp16/bf16/fp32, CUDA or simulator) -> out [B,H,Nq,D] (and lse [B,H,Nq])."""
    shape, scale = check_args(q, k, v, is_causal=is_causal, sm_scale=sm_scale, return_lse=return_lse)
    B, H, Nq, D = shape.batch, shape.heads, shape.q_len, shape.head_dim
    qf, kf, vf = fp32(q), fp32(k), fp32(v)
    out = empty_f32(B, H, Nq, D, device=q.device)
    lse2 = empty_f32(B, H, Nq, device=q.device)
    build_kernel(head_dim_bucket(D))[(ceil_div(Nq, BLOCK_M), B * H), (BLOCK_M, 1)](
        *map(as_kernel_array, (qf, kf, vf, out, lse2)),
        shape.group, Nq, shape.kv_len, D, np.float32(scale * LOG2E), is_causal,
    )  # fmt: skip
    return finish(out, lse2, q, return_lse)
