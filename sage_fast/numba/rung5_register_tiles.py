"""Rung 5: register tiles. 256 threads share a 64-query × 32-key tile; each owns a 4 × 2 piece of S and of P·V.

What changed from rung 4 (same SageAttention arithmetic, same host quantization):
- Rung 4's threads each computed a whole row of scores, so every int8 product needed two loads (a
  q code from the thread's local array, a k code from shared memory). Here the block's 256 threads
  form a 16 × 16 grid: thread (ty, tx) computes the scores of queries ty + 16r (r < 4) against keys
  tx + 16c (c < 2), so each step over head_dim loads 4 q codes and 2 k codes from shared memory and
  does 8 int32 multiply-adds: a register tile (the same idea as a GEMM's thread tile). Q's codes are
  staged in shared memory once per block.
- The softmax is a separate phase: 64 threads each take one query row of the S tile in shared
  memory, update m and l, and write P (fp16) and the rescale factor alpha back for everyone.
- P·V is tiled the same way: thread (ty, tx) owns queries ty + 16r and channels tx + 16c, so its
  accumulators live in a small fixed-size array, and the fp16 16-key MMA steps are kept exactly.
- BLOCK_N = 32 (K's quantization block too) keeps S, Q, K and V tiles within 48 KiB of shared
  memory at head_dim 128; head_dim above 128 is refused with a ValueError (rung 4 takes up to 256).

What it bought: measured numbers: docs/benchmarks-numba.md.

Numerics: ``sage_ref.sage_attention(qk_granularity="block", pv="fp16", block_m=64, block_n=32)``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from numba import cuda

import sage_ref
from sage_ref.attention import expand_kv
from sage_ref.checks import check_flag
from sage_ref.sage import MMA_K, quantize_qk

from .common import NEG_INF, ONE, ZERO, as_kernel_array, ceil_div, check_args, empty_f32, finish, head_dim_bucket

BLOCK_M = 64  # queries per block, and Q's quantization block
BLOCK_N = 32  # keys per tile, and K's quantization block
THREADS = 16  # threads per side of the 16 x 16 thread grid
RM = BLOCK_M // THREADS  # queries per thread (4)
RN = BLOCK_N // THREADS  # keys per thread in the S tile (2)
MAX_HEAD_DIM = 128
S_STRIDE = BLOCK_N + 1  # S tile row stride: +1 puts a column's rows in different banks (a compile-time constant)


@functools.cache
def build_kernel(HEAD_DIM: int):
    """The kernel for head_dim <= HEAD_DIM (a power of two, 16..128)."""
    RD = max(1, HEAD_DIM // THREADS)  # channels per thread in the P·V tile

    @cuda.jit
    def tiled_kernel(Qc, Qs, Kc, Ks, V16, Out, Lse2, group, q_len, kv_len, head_dim, is_causal):
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * THREADS + tx
        tile_m = cuda.blockIdx.x
        start_m = tile_m * BLOCK_M
        bh = cuda.blockIdx.y
        heads = Qc.shape[1]
        b, h = bh // heads, bh % heads
        kv_h = h // group

        q_tile = cuda.shared.array((BLOCK_M, HEAD_DIM), np.int8)
        k_tile = cuda.shared.array((BLOCK_N, HEAD_DIM), np.int8)
        v_tile = cuda.shared.array((BLOCK_N, HEAD_DIM), np.float16)
        s_tile = cuda.shared.array((BLOCK_M, S_STRIDE), np.float32)
        p_tile = cuda.shared.array((BLOCK_M, BLOCK_N), np.float16)
        m_row = cuda.shared.array(BLOCK_M, np.float32)
        l_row = cuda.shared.array(BLOCK_M, np.float32)
        alpha_row = cuda.shared.array(BLOCK_M, np.float32)
        acc = cuda.local.array((RM, RD), np.float32)
        dots = cuda.local.array((RM, RN), np.int32)

        for e in range(tid, BLOCK_M * HEAD_DIM, THREADS * THREADS):
            r, d = e // HEAD_DIM, e % HEAD_DIM
            i = start_m + r
            q_tile[r, d] = Qc[b, h, i, d] if i < q_len and d < head_dim else 0
        if tid < BLOCK_M:
            m_row[tid] = NEG_INF
            l_row[tid] = ZERO
        for r in range(RM):
            for c in range(RD):
                acc[r, c] = ZERO
        q_scale = Qs[b, h, tile_m]
        hi = kv_len
        if is_causal:
            hi = min(kv_len, max(0, min(start_m + BLOCK_M, q_len) + kv_len - q_len))
        for start_n in range(0, hi, BLOCK_N):
            for e in range(tid, BLOCK_N * HEAD_DIM, THREADS * THREADS):
                jj, d = e // HEAD_DIM, e % HEAD_DIM
                j = start_n + jj
                ok = j < kv_len and d < head_dim
                k_tile[jj, d] = Kc[b, kv_h, j, d] if ok else 0
                v_tile[jj, d] = V16[b, kv_h, j, d] if ok else np.float16(ZERO)
            cuda.syncthreads()
            # Phase 1: the 4 x 2 register tile of int32 dot products.
            for r in range(RM):
                for c in range(RN):
                    dots[r, c] = 0
            for d in range(head_dim):
                for r in range(RM):
                    qv = np.int32(q_tile[ty + THREADS * r, d])
                    for c in range(RN):
                        dots[r, c] += qv * np.int32(k_tile[tx + THREADS * c, d])
            qk_scale = q_scale * Ks[b, kv_h, start_n // BLOCK_N]
            for r in range(RM):
                i = start_m + ty + THREADS * r
                for c in range(RN):
                    j = start_n + tx + THREADS * c
                    visible = i < q_len and j < kv_len and (not is_causal or j <= i + kv_len - q_len)
                    s_tile[ty + THREADS * r, tx + THREADS * c] = (
                        np.float32(dots[r, c]) * qk_scale if visible else NEG_INF
                    )
            cuda.syncthreads()
            # Phase 2: one thread per query row updates m and l and writes P in fp16.
            if tid < BLOCK_M:
                m_old = m_row[tid]
                m_new = m_old
                for jj in range(BLOCK_N):
                    m_new = max(m_new, s_tile[tid, jj])
                m_safe = ZERO if m_new == NEG_INF else m_new
                alpha = math.exp2(m_old - m_safe)
                row_sum = ZERO
                for jj in range(BLOCK_N):
                    p = math.exp2(s_tile[tid, jj] - m_safe)
                    row_sum += p
                    p_tile[tid, jj] = np.float16(p)
                l_row[tid] = l_row[tid] * alpha + row_sum
                alpha_row[tid] = alpha
                m_row[tid] = m_new
            cuda.syncthreads()
            # Phase 3: the 4 x RD register tile of P·V, fp16-accumulated per 16-key step as an MMA does.
            for r in range(RM):
                row = ty + THREADS * r
                alpha = alpha_row[row]
                for c in range(RD):
                    d = tx + THREADS * c
                    acc16 = np.float16(ZERO)
                    for k0 in range(0, BLOCK_N, MMA_K):
                        partial = ZERO
                        for jj in range(k0, k0 + MMA_K):
                            partial += np.float32(p_tile[row, jj]) * np.float32(v_tile[jj, d])
                        acc16 = np.float16(np.float32(acc16) + partial)
                    acc[r, c] = acc[r, c] * alpha + np.float32(acc16)
            cuda.syncthreads()
        for r in range(RM):
            row = ty + THREADS * r
            i = start_m + row
            if i < q_len:
                l = l_row[row]
                inv = ONE if l == ZERO else ONE / l
                for c in range(RD):
                    d = tx + THREADS * c
                    if d < head_dim:
                        Out[b, h, i, d] = acc[r, c] * inv
        if tid < BLOCK_M and start_m + tid < q_len:
            l = l_row[tid]
            Lse2[b, h, start_m + tid] = NEG_INF if l == ZERO else m_row[tid] + math.log2(l)

    return tiled_kernel


def forward(q, k, v, *, is_causal=False, sm_scale=None, smooth_k=True, return_lse=False):
    """q [B,H,Nq,D], k, v [B,Hkv,Nkv,D] (fp16/bf16/fp32, D <= 128, CUDA or simulator) -> out (and lse)."""
    shape, scale = check_args(q, k, v, is_causal=is_causal, sm_scale=sm_scale, return_lse=return_lse)
    check_flag("smooth_k", smooth_k)
    if shape.head_dim > MAX_HEAD_DIM:
        raise ValueError(f"q has head_dim {shape.head_dim}; rung 5 supports up to {MAX_HEAD_DIM} (rung 4 up to 256)")
    B, H, Nq, D = shape.batch, shape.heads, shape.q_len, shape.head_dim
    k_mean = None
    if smooth_k:
        k, k_mean = sage_ref.smooth_k(k)
    q_hat, k_hat = quantize_qk(q, k, sm_scale=scale, qk_granularity="block", block_m=BLOCK_M, block_n=BLOCK_N)
    q_codes, k_codes = q_hat.codes.contiguous(), k_hat.codes.contiguous()
    q_scale, k_scale = q_hat.scale.contiguous(), k_hat.scale.contiguous()
    v16 = v.detach().to(torch.float32).to(torch.float16).contiguous()
    out = empty_f32(B, H, Nq, D, device=q.device)
    lse2 = empty_f32(B, H, Nq, device=q.device)
    build_kernel(head_dim_bucket(D))[(ceil_div(Nq, BLOCK_M), B * H), (THREADS, THREADS)](
        *map(as_kernel_array, (q_codes, q_scale, k_codes, k_scale, v16, out, lse2)),
        shape.group, Nq, shape.kv_len, D, is_causal,
    )  # fmt: skip
    shift = None
    if return_lse and smooth_k:
        shift = scale * torch.matmul(q.to(torch.float32), expand_kv(k_mean, shape.group).transpose(-1, -2))[..., 0]
    return finish(out, lse2, q, return_lse, shift)
