"""Fused smoothing + quantization kernels (rungs 3 and 4): one launch per tensor, no host-side passes.

Q: one program per (tile of BLOCK_M rows, batch·head) reads the tile once and writes
    Q̂ = round(Q · sm_scale · log2 e / q_scale),  q_scale = max|Q · sm_scale · log2 e| / 127,
    and, for the log-sum-exp, shift = sm_scale · Q · k_mean (the logit shift smoothing removed).
K: one program per (batch, kv head) sums K over tokens (k_mean), then walks the tiles of
    BLOCK_N keys again writing K̂ = round((K - k_mean) / k_scale) per tile.
V (fp8 P·V): one program per (batch, kv head) finds max_n |V| per channel, then writes
    e4m3(V / v_scale) transposed to [D, N] (keys contiguous, what an 8-bit wgmma needs
    for its B operand), zero-padded to whole BLOCK_N tiles.
Rounding is round-half-away-from-zero via trunc(x ± 0.5) and division is IEEE
(``div_rn``), exactly as ``sage_ref.quantization`` computes it.
"""

import torch
import triton
import triton.language as tl

from .common import nan_poisoned
from .launch import LOG2E, strides


@triton.jit
def quantize_tile(x, row_ok):
    """INT8 codes and the scale max|x|/127 of a tile x [ROWS, HEAD_DIM] (rows outside ``row_ok`` ignored)."""
    x = tl.where(row_ok[:, None], x, 0.0)
    scale = tl.math.div_rn(nan_poisoned(tl.max(tl.max(tl.abs(x), 1), 0), tl.sum(tl.sum(x * 0.0, 1), 0)), 127.0)
    xs = tl.math.div_rn(x, tl.where(scale == 0.0, 1.0, scale))
    codes = (xs + tl.where(xs >= 0, 0.5, -0.5)).to(tl.int8)
    return codes, scale


@triton.jit
def quantize_q_kernel(
    Q, QInt8, QScale, KMean, Shift,
    sq_b, sq_h, sq_n, sq_d,
    heads, group, kv_heads, q_len, head_dim, sm_scale, qk_scale,
    BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, WITH_SHIFT: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = bh % heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len
    q = tl.load(
        Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d,
        mask=row_ok[:, None] & (offs_d[None, :] < head_dim), other=0.0,
    ).to(tl.float32)
    codes, scale = quantize_tile(q * qk_scale, row_ok)
    bh64 = bh.to(tl.int64)
    tl.store(QInt8 + (bh64 * q_len + offs_m[:, None]) * HEAD_DIM + offs_d[None, :], codes, mask=row_ok[:, None])
    tl.store(QScale + bh64 * tl.num_programs(0) + pid_m, scale)
    if WITH_SHIFT:
        k_mean = tl.load(KMean + (b * kv_heads + h // group) * HEAD_DIM + offs_d)
        tl.store(Shift + bh64 * q_len + offs_m, tl.sum(q * k_mean[None, :], 1) * sm_scale, mask=row_ok)


@triton.jit
def quantize_kv_kernel(
    K, V, KInt8, KScale, KMean, VFp8T, VScale,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    kv_heads, kv_len, kv_len_float, kv_len_padded, head_dim,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, SMOOTH_K: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    b = (bh // kv_heads).to(tl.int64)
    h = (bh % kv_heads).to(tl.int64)
    bh64 = bh.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    d_ok = offs_d < head_dim
    if tl.program_id(1) == 0:
        k_ptrs = K + b * sk_b + h * sk_h + offs_n[:, None] * sk_n + offs_d[None, :] * sk_d
        k_mean = tl.zeros([HEAD_DIM], tl.float32)
        if SMOOTH_K:
            for start in range(0, kv_len, BLOCK_N):
                row_ok = start + offs_n < kv_len
                k = tl.load(k_ptrs + start * sk_n, mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
                k_mean += tl.sum(k, 0)
            k_mean = tl.math.div_rn(k_mean, kv_len_float)
            tl.store(KMean + bh64 * HEAD_DIM + offs_d, k_mean)
        for start in range(0, kv_len, BLOCK_N):
            row_ok = start + offs_n < kv_len
            k = tl.load(k_ptrs + start * sk_n, mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            codes, scale = quantize_tile(k - k_mean[None, :], row_ok)
            rows = start + offs_n
            tl.store(KInt8 + (bh64 * kv_len + rows[:, None]) * HEAD_DIM + offs_d[None, :], codes, mask=row_ok[:, None])
            tl.store(KScale + bh64 * tl.cdiv(kv_len, BLOCK_N) + start // BLOCK_N, scale)
    else:
        v_ptrs = V + b * sv_b + h * sv_h + offs_n[:, None] * sv_n + offs_d[None, :] * sv_d
        v_amax = tl.zeros([HEAD_DIM], tl.float32)
        v_poison = tl.zeros([HEAD_DIM], tl.float32)
        for start in range(0, kv_len, BLOCK_N):
            row_ok = start + offs_n < kv_len
            v = tl.load(v_ptrs + start * sv_n, mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            v_amax = tl.maximum(v_amax, tl.max(tl.abs(v), 0))
            v_poison += tl.sum(v * 0.0, 0)
        v_scale = tl.math.div_rn(nan_poisoned(v_amax, v_poison), 448.0)
        tl.store(VScale + bh64 * HEAD_DIM + offs_d, v_scale)
        safe = tl.where(v_scale == 0.0, 1.0, v_scale)
        for start in range(0, kv_len_padded, BLOCK_N):
            row_ok = start + offs_n < kv_len
            v = tl.load(v_ptrs + start * sv_n, mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            codes = tl.math.div_rn(v, safe[None, :]).to(tl.float8e4nv)
            rows = start + offs_n
            tl.store(VFp8T + (bh64 * HEAD_DIM + offs_d[None, :]) * kv_len_padded + rows[:, None], codes)


def quantize_q(q, *, sm_scale, block_m, head_dim_padded, k_mean=None, kv_heads=1):
    """q [B,H,N,D] (any strides) -> (q_int8 [B,H,N,Dp], q_scale [B,H,ceil(N/block_m)], shift [B,H,N] or None)."""
    batch, heads, q_len, head_dim = q.shape
    n_blocks = triton.cdiv(q_len, block_m)
    q_int8 = torch.empty(batch, heads, q_len, head_dim_padded, dtype=torch.int8, device=q.device)
    q_scale = torch.empty(batch, heads, n_blocks, dtype=torch.float32, device=q.device)
    shift = None if k_mean is None else torch.empty(batch, heads, q_len, dtype=torch.float32, device=q.device)
    quantize_q_kernel[(n_blocks, batch * heads)](
        q, q_int8, q_scale, k_mean if k_mean is not None else q_scale, shift if shift is not None else q_scale,
        *strides(q), heads, heads // kv_heads, kv_heads, q_len, head_dim, sm_scale, sm_scale * LOG2E,
        BLOCK_M=block_m, HEAD_DIM=head_dim_padded, WITH_SHIFT=k_mean is not None,
    )  # fmt: skip
    return q_int8, q_scale, shift


def quantize_kv(k, v, *, block_n, head_dim_padded, smooth_k, v_fp8):
    """Smooth and quantize K (and V to fp8 when ``v_fp8``) in one launch.

    k, v [B,Hkv,N,D] (any strides) -> dict with k_int8 [B,Hkv,N,Dp], k_scale [B,Hkv,ceil(N/block_n)],
    k_mean [B,Hkv,Dp] (if smooth_k), and v_fp8_t [B,Hkv,Dp,Npad], v_scale [B,Hkv,Dp] (if v_fp8).
    """
    batch, kv_heads, kv_len, head_dim = k.shape
    dev = k.device
    n_blocks = triton.cdiv(kv_len, block_n)
    kv_len_padded = n_blocks * block_n
    out = {
        "k_int8": torch.empty(batch, kv_heads, kv_len, head_dim_padded, dtype=torch.int8, device=dev),
        "k_scale": torch.empty(batch, kv_heads, n_blocks, dtype=torch.float32, device=dev),
        "k_mean": torch.zeros(batch, kv_heads, head_dim_padded, dtype=torch.float32, device=dev) if smooth_k else None,
        "v_fp8_t": None,
        "v_scale": None,
    }
    if v_fp8:
        out["v_fp8_t"] = torch.empty(batch, kv_heads, head_dim_padded, kv_len_padded, dtype=torch.float8_e4m3fn, device=dev)
        out["v_scale"] = torch.empty(batch, kv_heads, head_dim_padded, dtype=torch.float32, device=dev)
    placeholder = out["k_scale"]
    quantize_kv_kernel[(batch * kv_heads, 2 if v_fp8 else 1)](
        k, v, out["k_int8"], out["k_scale"], out["k_mean"] if smooth_k else placeholder,
        out["v_fp8_t"] if v_fp8 else placeholder, out["v_scale"] if v_fp8 else placeholder,
        *strides(k), *strides(v), kv_heads, kv_len, float(kv_len), kv_len_padded, head_dim,
        BLOCK_N=block_n, HEAD_DIM=head_dim_padded, SMOOTH_K=smooth_k,
    )  # fmt: skip
    return out
