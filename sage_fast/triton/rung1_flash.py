"""Rung 1: a fused fp16 FlashAttention forward kernel.

What it is: one program per (query tile of BLOCK_M rows, batch·head). It walks over key
tiles of BLOCK_N keys, computes S = Q Kᵀ on the tensor cores (fp16 in, fp32 out), runs
the online softmax in base 2 (log2 e folded into the scale, so exp2 is one
instruction) and accumulates P·V in fp32. The N×N score matrix never exists in memory.

What it bought (H200, torch 2.11, triton 3.6, 2026-11-26; docs/benchmarks.md): hd128, N = 8k,
non-causal, 424 TOPS, above SDPA's FLASH_ATTENTION backend (336) and below its cuDNN backend
(577): the baseline every later rung is measured against.

Numerics: P is rounded to fp16 for the P·V product, so this rung is held to
``sage_ref.sage_attention(qk_granularity=None, pv="fp16", smooth_k=False)``, which rounds P alike and
also its P·V accumulator to fp16 every 16 keys (SageAttention v1's arithmetic) where this rung keeps
fp32: the emulation rounds more than the rung, so the 2× bound holds with room.
"""

import torch
import triton
import triton.language as tl

from .attn_int8 import LN2
from .common import finish, key_range, softmax_step, visible
from .launch import LOG2E, attention_grid, head_dim_block, lse_buffer, strides

BLOCK_M = 128
BLOCK_N = 64


@triton.jit
def flash_fwd_kernel(
    Q, K, V, Out, Lse,
    sq_b, sq_h, sq_n, sq_d,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    so_b, so_h, so_n, so_d,
    heads, group, q_len, kv_len, head_dim, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    IS_CAUSAL: tl.constexpr, RETURN_LSE: tl.constexpr,
):  # fmt: skip
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = bh % heads
    kv_h = (h // group).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    d_ok = offs_d < head_dim

    q = tl.load(
        Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d,
        mask=(offs_m[:, None] < q_len) & d_ok[None, :], other=0.0,
    )
    k_ptrs = K + b * sk_b + kv_h * sk_h + offs_n[None, :] * sk_n + offs_d[:, None] * sk_d
    v_ptrs = V + b * sv_b + kv_h * sv_h + offs_n[:, None] * sv_n + offs_d[None, :] * sv_d

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    hi = key_range(start_m, q_len, kv_len, BLOCK_M, IS_CAUSAL)
    for start_n in range(0, hi, BLOCK_N):
        keys = start_n + offs_n
        k = tl.load(k_ptrs + start_n * sk_n, mask=(keys[None, :] < kv_len) & d_ok[:, None], other=0.0)
        s = tl.dot(q, k) * qk_scale
        s = tl.where(visible(offs_m, keys, q_len, kv_len, IS_CAUSAL), s, float("-inf"))
        p, alpha, m_i, l_i = softmax_step(s, m_i, l_i, 0.0)
        v = tl.load(v_ptrs + start_n * sv_n, mask=(keys[:, None] < kv_len) & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)

    out, lse2 = finish(acc, m_i, l_i, 0.0)
    m_ok = offs_m < q_len
    tl.store(
        Out + b * so_b + h * so_h + offs_m[:, None] * so_n + offs_d[None, :] * so_d,
        out.to(Out.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :],
    )
    if RETURN_LSE:
        tl.store(Lse + bh.to(tl.int64) * q_len + offs_m, lse2 * LN2, mask=m_ok)


def forward(q, k, v, *, is_causal=False, sm_scale=None, return_lse=False):
    """fp16/bf16 q [B,H,Nq,D], k, v [B,Hkv,Nkv,D] (any strides) -> out (and natural-log lse [B,H,Nq] fp32)."""
    batch, heads, q_len, head_dim = q.shape
    kv_len = k.shape[2]
    scale = head_dim**-0.5 if sm_scale is None else sm_scale
    out = torch.empty_like(q)
    lse = lse_buffer(q, return_lse)
    flash_fwd_kernel[attention_grid(q, BLOCK_M)](
        q, k, v, out, lse,
        *strides(q), *strides(k), *strides(v), *strides(out),
        heads, heads // k.shape[1], q_len, kv_len, head_dim, scale * LOG2E,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, HEAD_DIM=head_dim_block(head_dim),
        IS_CAUSAL=is_causal, RETURN_LSE=return_lse, num_warps=8,
        # Three stages of 64x256 fp16 K and V tiles beside a 128x256 Q tile overflow 227 KB of shared memory.
        num_stages=3 if head_dim <= 128 else 2,
    )  # fmt: skip
    return (out, lse) if return_lse else out
