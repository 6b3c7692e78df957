"""Rung 4: SageAttention's math on rung 3's tiles: smoothed K, INT8 Q and K, int32 dot products, fp16 P·V.

What changed from rung 3 (the tiling, barriers and online softmax are the same):
- K is smoothed (K - mean over tokens, which leaves softmax unchanged) and Q (with sm_scale · log2 e
  folded in) and K are quantized to INT8 with one scale per tile of BLOCK_M queries / BLOCK_N keys,
  on the host with ``sage_ref``'s quantizers (rung 5 would fuse this into a kernel). A tile's
  dequantization is then one multiply: s = (q̂ · k̂ in int32) · q_scale · k_scale, and that product
  of scales is a base-2 logit already, so exp2 needs no further scaling.
- The dot products run on int8 codes widened to int32 before multiplying (exact: |Σ| <= 256 · 127²;
  and the simulator would wrap an int8 × int8 product). K codes sit in shared memory as int8: a
  quarter of rung 3's K tile.
- P·V in fp16 as SageAttention v1's tensor cores do it: P rounded to fp16, V stored in fp16 (half
  of rung 3's V tile), and inside a tile the products are summed 16 keys at a time into an fp16
  accumulator that is rounded after every 16-key step (what an fp16-accumulating MMA does); across
  tiles fp32. numba-cuda has no tensor-core or dp4a API, so this rung runs on the CUDA cores: it
  teaches the arithmetic, the tensor-core speed lives in the Triton ladder.
- lse: the kernel's base-2 lse of the smoothed logits, plus sm_scale · q · mean(K) on the host.

What it bought: measured numbers: docs/benchmarks-numba.md.

Numerics: ``sage_ref.sage_attention(qk_granularity="block", pv="fp16", block_m=64, block_n=64)``,
rounding at the same points.
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

BLOCK_M = 64  # query rows (= threads) per block, and Q's quantization block
BLOCK_N = 64  # keys per tile, and K's quantization block


@functools.cache
def build_kernel(HEAD_DIM: int):
    """The kernel for head_dim <= HEAD_DIM. Shared memory: BLOCK_N · HEAD_DIM · (1 + 2) bytes (48 KiB at 256)."""

    @cuda.jit
    def sage_kernel(Qc, Qs, Kc, Ks, V16, Out, Lse2, group, q_len, kv_len, head_dim, is_causal):
        tid = cuda.threadIdx.x
        tile_m = cuda.blockIdx.x
        start_m = tile_m * BLOCK_M
        bh = cuda.blockIdx.y
        heads = Qc.shape[1]
        b, h = bh // heads, bh % heads
        kv_h = h // group
        i = start_m + tid
        row_ok = i < q_len

        k_tile = cuda.shared.array((BLOCK_N, HEAD_DIM), np.int8)
        v_tile = cuda.shared.array((BLOCK_N, HEAD_DIM), np.float16)
        q_row = cuda.local.array(HEAD_DIM, np.int32)
        acc = cuda.local.array(HEAD_DIM, np.float32)
        s = cuda.local.array(BLOCK_N, np.float32)
        p16 = cuda.local.array(BLOCK_N, np.float16)
        for d in range(head_dim):
            q_row[d] = np.int32(Qc[b, h, i, d]) if row_ok else 0  # widened once: int32 products below
            acc[d] = ZERO
        q_scale = Qs[b, h, tile_m]  # the block's scale: sm_scale · log2 e is inside it
        m = NEG_INF
        l = ZERO
        hi = kv_len
        if is_causal:
            hi = min(kv_len, max(0, min(start_m + BLOCK_M, q_len) + kv_len - q_len))
        last = i + kv_len - q_len
        for start_n in range(0, hi, BLOCK_N):
            for e in range(tid, BLOCK_N * head_dim, BLOCK_M):
                jj, d = e // head_dim, e % head_dim
                j = start_n + jj
                k_tile[jj, d] = Kc[b, kv_h, j, d] if j < kv_len else 0
                v_tile[jj, d] = V16[b, kv_h, j, d] if j < kv_len else np.float16(ZERO)
            cuda.syncthreads()
            if row_ok:
                qk_scale = q_scale * Ks[b, kv_h, start_n // BLOCK_N]  # one dequantizing multiply per score
                m_new = m
                for jj in range(BLOCK_N):
                    j = start_n + jj
                    if j < kv_len and (not is_causal or j <= last):
                        dot = 0
                        for d in range(head_dim):
                            dot += q_row[d] * np.int32(k_tile[jj, d])
                        s[jj] = np.float32(dot) * qk_scale
                        m_new = max(m_new, s[jj])
                    else:
                        s[jj] = NEG_INF
                m_safe = ZERO if m_new == NEG_INF else m_new
                alpha = math.exp2(m - m_safe)
                l = l * alpha
                for jj in range(BLOCK_N):
                    p = math.exp2(s[jj] - m_safe)
                    l += p
                    p16[jj] = np.float16(p)
                for d in range(head_dim):
                    acc16 = np.float16(ZERO)  # (an np.float16 global constant makes invalid NVVM IR)
                    for c in range(0, BLOCK_N, MMA_K):  # one fp16-accumulating MMA step per 16 keys
                        partial = ZERO
                        for jj in range(c, c + MMA_K):
                            partial += np.float32(p16[jj]) * np.float32(v_tile[jj, d])  # exact fp16 products
                        acc16 = np.float16(np.float32(acc16) + partial)
                    acc[d] = acc[d] * alpha + np.float32(acc16)
                m = m_new
            cuda.syncthreads()
        if row_ok:
            inv = ONE if l == ZERO else ONE / l
            for d in range(head_dim):
                Out[b, h, i, d] = acc[d] * inv
            Lse2[b, h, i] = NEG_INF if l == ZERO else m + math.log2(l)

    return sage_kernel


def forward(q, k, v, *, is_causal=False, sm_scale=None, smooth_k=True, return_lse=False):
    """q [B,H,Nq,D], k, v [B,Hkv,Nkv,D] (fp16/bf16/fp32, CUDA or simulator) -> out [B,H,Nq,D] (and lse [B,H,Nq])."""
    shape, scale = check_args(q, k, v, is_causal=is_causal, sm_scale=sm_scale, return_lse=return_lse)
    check_flag("smooth_k", smooth_k)
    B, H, Nq, D = shape.batch, shape.heads, shape.q_len, shape.head_dim
    k_mean = None
    if smooth_k:
        k, k_mean = sage_ref.smooth_k(k)
    # Per (batch, head) quantization: each KV head's codes and scales serve its whole query-head group.
    q_hat, k_hat = quantize_qk(q, k, sm_scale=scale, qk_granularity="block", block_m=BLOCK_M, block_n=BLOCK_N)
    q_codes, k_codes = q_hat.codes.contiguous(), k_hat.codes.contiguous()
    q_scale, k_scale = q_hat.scale.contiguous(), k_hat.scale.contiguous()
    v16 = v.detach().to(torch.float32).to(torch.float16).contiguous()
    out = empty_f32(B, H, Nq, D, device=q.device)
    lse2 = empty_f32(B, H, Nq, device=q.device)
    build_kernel(head_dim_bucket(D))[(ceil_div(Nq, BLOCK_M), B * H), (BLOCK_M, 1)](
        *map(as_kernel_array, (q_codes, q_scale, k_codes, k_scale, v16, out, lse2)),
        shape.group, Nq, shape.kv_len, D, is_causal,
    )  # fmt: skip
    shift = None
    if return_lse and smooth_k:
        # S_original = S_smoothed + sm_scale · q · k_mean, the same for every key of a row.
        shift = scale * torch.matmul(q.to(torch.float32), expand_kv(k_mean, shape.group).transpose(-1, -2))[..., 0]
    return finish(out, lse2, q, return_lse, shift)
