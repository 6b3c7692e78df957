"""Fused smoothing + quantization kernels (rungs 3-5): one launch for Q, at most two for K and V.

Q: one program per (tile of BLOCK_M rows, batch·head) reads the tile once and writes
    Q̂ = round(Q' · 127 / max|Q'|),  q_scale = max|Q'| / 127,  Q' = Q · sm_scale · log2 e,
    and, for the log-sum-exp, shift = sm_scale · Q · k_mean (the logit shift smoothing removed).
K and V, first the statistics: one program per (chunk of STATS_CHUNK tokens, batch·kv head) writes
    Σ_n K (fp64, for k_mean) or, for fp8 P·V, max_n |V| per channel; then the quantization: one
    program per (tile of BLOCK_N keys, batch·kv head) combines the chunks in a fixed order and writes
    K̂ = round((K - k_mean) / k_scale) per tile, or e4m3(V / v_scale) transposed to [D, N] (keys
    contiguous, what an 8-bit wgmma needs for its B operand), zero-padded to whole BLOCK_N tiles,
    the keys of every 32 in ``operand_key_order`` (the attention kernels relabel P's keys alike).
    For short heads (``per_head_pays``) one program per (batch·kv head, K or V) does both in one launch
    instead: the statistics loop, then the tiles, re-read from L2.
Rounding is round-half-away-from-zero via trunc(x ± 0.5); each tile or channel divides once
(IEEE ``div_rn``) and multiplies its elements by 127 / max|x| (448 / max|v|), exactly as
``sage_ref.quantization`` computes it.
"""

import functools

import torch
import triton
import triton.language as tl

from .common import nan_poisoned, operand_key_order
from .launch import LOG2E, cdiv, cuda_index, cuda_properties, strides


@triton.jit
def reciprocal_or_zero(target, amax):
    """target / amax (IEEE ``div_rn``), and 0 where that overflows: amax 0, or below target / FP32_MAX, as
    ``sage_ref.quantization.reciprocal_scale``. One division per tile or channel, a multiply per element (an IEEE
    division per element is ~20 instructions)."""
    inv = tl.math.div_rn(target, tl.where(amax == 0.0, 1.0, amax))
    return tl.where((amax == 0.0) | (inv == float("inf")), 0.0, inv)


@triton.jit
def quantize_tile(x, row_ok):
    """INT8 codes and the scale max|x|/127 of a tile x [ROWS, HEAD_DIM] (rows outside ``row_ok`` ignored)."""
    x = tl.where(row_ok[:, None], x, 0.0)
    amax = nan_poisoned(tl.max(tl.max(tl.abs(x), 1), 0), tl.sum(tl.sum(x * 0.0, 1), 0))
    scale = tl.math.div_rn(amax, 127.0)
    xs = x * reciprocal_or_zero(127.0, amax)
    codes = (xs + tl.where(xs >= 0, 0.5, -0.5)).to(tl.int8)
    return codes, scale


@triton.jit
def load_rows(X, b, h, rows, row_ok, s_b, s_h, s_n, s_d, head_dim, HEAD_DIM: tl.constexpr):
    """Rows ``rows`` of head (b, h) of a [B, H, N, D] tensor with strides (s_b, s_h, s_n, s_d), as fp32
    [len(rows), HEAD_DIM]: rows outside ``row_ok`` and channels from head_dim on read 0."""
    offs_d = tl.arange(0, HEAD_DIM)
    return tl.load(
        X + b * s_b + h * s_h + rows[:, None] * s_n + offs_d[None, :] * s_d,
        mask=row_ok[:, None] & (offs_d[None, :] < head_dim), other=0.0,
    ).to(tl.float32)


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
    q = load_rows(Q, b, h, offs_m, row_ok, sq_b, sq_h, sq_n, sq_d, head_dim, HEAD_DIM)
    codes, scale = quantize_tile(q * qk_scale, row_ok)
    bh64 = bh.to(tl.int64)
    tl.store(QInt8 + (bh64 * q_len + offs_m[:, None]) * HEAD_DIM + offs_d[None, :], codes, mask=row_ok[:, None])
    tl.store(QScale + bh64 * tl.num_programs(0) + pid_m, scale)
    if WITH_SHIFT:
        k_mean = tl.load(KMean + (b * kv_heads + h // group) * HEAD_DIM + offs_d)
        tl.store(Shift + bh64 * q_len + offs_m, tl.sum(q * k_mean[None, :], 1) * sm_scale, mask=row_ok)


@triton.jit
def k_sum(K, b, h, lo, hi, kv_len, sk_b, sk_h, sk_n, sk_d, head_dim,
          BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, STAGES: tl.constexpr):  # fmt: skip
    """Σ K[b, h, lo:hi] over tokens, per channel, in fp64 [HEAD_DIM] (so the mean rounds to the same fp32 value
    as sage_ref's whatever the summation order)."""
    offs_n = tl.arange(0, BLOCK_N)
    # Each thread accumulates its own elements; the tile is reduced over tokens once at the end (a reduction
    # per loaded tile would put a cross-warp exchange and a barrier in the loop).
    total = tl.zeros([BLOCK_N, HEAD_DIM], tl.float64)
    for start in tl.range(lo, hi, BLOCK_N, num_stages=STAGES):
        rows = start + offs_n
        total += load_rows(K, b, h, rows, rows < kv_len, sk_b, sk_h, sk_n, sk_d, head_dim, HEAD_DIM).to(tl.float64)
    return tl.sum(total, 0)


@triton.jit
def v_amax(V, b, h, lo, hi, kv_len, sv_b, sv_h, sv_n, sv_d, head_dim,
           BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, STAGES: tl.constexpr):  # fmt: skip
    """max |V[b, h, lo:hi]| over tokens, per channel [HEAD_DIM], NaN-poisoned."""
    offs_n = tl.arange(0, BLOCK_N)
    amax = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    poison = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for start in tl.range(lo, hi, BLOCK_N, num_stages=STAGES):
        rows = start + offs_n
        v = load_rows(V, b, h, rows, rows < kv_len, sv_b, sv_h, sv_n, sv_d, head_dim, HEAD_DIM)
        amax = tl.maximum(amax, tl.abs(v))
        poison += v * 0.0
    return nan_poisoned(tl.max(amax, 0), tl.sum(poison, 0))


@triton.jit
def kv_stats_kernel(
    K, V, KSum, VAmax,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    kv_heads, kv_len, head_dim,
    CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, SMOOTH_K: tl.constexpr, STAGES: tl.constexpr,
):  # fmt: skip
    """Per (chunk of CHUNK tokens, batch·kv head): Σ K over the chunk (program_id(2) == 0, if SMOOTH_K) or
    max |V| per channel, NaN-poisoned (program_id(2) == 1). Partials [B·Hkv, n_chunks, HEAD_DIM]."""
    chunk = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // kv_heads).to(tl.int64)
    h = (bh % kv_heads).to(tl.int64)
    out = (bh.to(tl.int64) * tl.num_programs(0) + chunk) * HEAD_DIM + tl.arange(0, HEAD_DIM)
    lo = chunk * CHUNK
    hi = tl.minimum(lo + CHUNK, kv_len)
    if tl.program_id(2) == 0:
        if SMOOTH_K:  # without smoothing the launch is for V alone
            tl.store(KSum + out, k_sum(K, b, h, lo, hi, kv_len, sk_b, sk_h, sk_n, sk_d, head_dim, BLOCK_N, HEAD_DIM, STAGES))
    else:
        tl.store(VAmax + out, v_amax(V, b, h, lo, hi, kv_len, sv_b, sv_h, sv_n, sv_d, head_dim, BLOCK_N, HEAD_DIM, STAGES))


@triton.jit
def sum_chunks(KSum, bh, n_chunks, HEAD_DIM: tl.constexpr):
    """Σ of a (batch, kv head)'s fp64 chunk sums [n_chunks, HEAD_DIM]."""
    offs_d = tl.arange(0, HEAD_DIM)
    total = tl.zeros([HEAD_DIM], tl.float64)
    for c in range(n_chunks):
        total += tl.load(KSum + (bh.to(tl.int64) * n_chunks + c) * HEAD_DIM + offs_d)
    return total


@triton.jit
def max_chunks(VAmax, bh, n_chunks, HEAD_DIM: tl.constexpr):
    """NaN-poisoned max of a (batch, kv head)'s chunk maxima [n_chunks, HEAD_DIM]."""
    offs_d = tl.arange(0, HEAD_DIM)
    amax = tl.zeros([HEAD_DIM], tl.float32)
    poison = tl.zeros([HEAD_DIM], tl.float32)
    for c in range(n_chunks):
        x = tl.load(VAmax + (bh.to(tl.int64) * n_chunks + c) * HEAD_DIM + offs_d)
        amax = tl.maximum(amax, x)
        poison += x * 0.0
    return nan_poisoned(amax, poison)


@triton.jit
def quantize_v_tile(v, v_amax, VFp8T, VScale, bh64, blk, rows, kv_len_padded, HEAD_DIM: tl.constexpr):
    """e4m3(v / v_scale) of a tile v [BLOCK_N, HEAD_DIM] of head bh64 into V̂ᵀ, v_scale = v_amax / 448 per
    channel (v_amax: the head's max |V|; tile 0 stores v_scale)."""
    offs_d = tl.arange(0, HEAD_DIM)
    if blk == 0:
        tl.store(VScale + bh64 * HEAD_DIM + offs_d, tl.math.div_rn(v_amax, 448.0))
    inv = reciprocal_or_zero(448.0, v_amax)
    # Stored [D, N]: transposed in registers (through shared memory) so that each row of the
    # store is contiguous bytes, not one byte every kv_len_padded; within every 32 keys in the
    # order of an 8-bit MMA operand (common.operand_key_order), so P needs no shuffles.
    v_codes = operand_key_order(tl.trans((v * inv[None, :]).to(tl.float8e4nv)))
    tl.store(VFp8T + (bh64 * HEAD_DIM + offs_d[:, None]) * kv_len_padded + rows[None, :], v_codes)


@triton.jit
def quantize_k_tile(k, k_mean, KInt8, KScale, bh64, blk, n_blocks, rows, kv_len, HEAD_DIM: tl.constexpr):
    """K̂ = round((k - k_mean) / k_scale) of a tile k [BLOCK_N, HEAD_DIM] of head bh64, and its k_scale."""
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = rows < kv_len
    codes, scale = quantize_tile(k - k_mean[None, :], row_ok)
    tl.store(KInt8 + (bh64 * kv_len + rows[:, None]) * HEAD_DIM + offs_d[None, :], codes, mask=row_ok[:, None])
    tl.store(KScale + bh64 * n_blocks + blk, scale)


@triton.jit
def quantize_kv_kernel(
    K, V, KSum, VAmax, KInt8, KScale, KMean, VFp8T, VScale,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    kv_heads, kv_len, kv_len_float, kv_len_padded, head_dim, n_chunks,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, SMOOTH_K: tl.constexpr, V_FP8: tl.constexpr,
):  # fmt: skip
    """Per (tile of BLOCK_N keys, batch·kv head): K̂ and k_scale (program_id(2) == 0) or
    e4m3(V / v_scale) transposed (program_id(2) == 1), from the chunk statistics."""
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // kv_heads).to(tl.int64)
    h = (bh % kv_heads).to(tl.int64)
    bh64 = bh.to(tl.int64)
    rows = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = rows < kv_len
    if tl.program_id(2) == 0:
        k = load_rows(K, b, h, rows, row_ok, sk_b, sk_h, sk_n, sk_d, head_dim, HEAD_DIM)
        k_mean = tl.zeros([HEAD_DIM], tl.float32)
        if SMOOTH_K:
            k_mean = (sum_chunks(KSum, bh, n_chunks, HEAD_DIM) / kv_len_float).to(tl.float32)
            if blk == 0:
                tl.store(KMean + bh64 * HEAD_DIM + offs_d, k_mean)
        quantize_k_tile(k, k_mean, KInt8, KScale, bh64, blk, tl.num_programs(0), rows, kv_len, HEAD_DIM)
    elif V_FP8:  # a constexpr, so fp16-P·V builds carry no e4m3 code (sm80 has no e4m3 type)
        v = load_rows(V, b, h, rows, row_ok, sv_b, sv_h, sv_n, sv_d, head_dim, HEAD_DIM)
        v_amax_ = max_chunks(VAmax, bh, n_chunks, HEAD_DIM)
        quantize_v_tile(v, v_amax_, VFp8T, VScale, bh64, blk, rows, kv_len_padded, HEAD_DIM)


@triton.jit
def quantize_kv_per_head_kernel(
    K, V, KInt8, KScale, KMean, VFp8T, VScale,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    kv_heads, kv_len, kv_len_float, kv_len_padded, head_dim, n_blocks,
    BLOCK_N: tl.constexpr, STATS_BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, SMOOTH_K: tl.constexpr,
    V_FP8: tl.constexpr, STATS_STAGES: tl.constexpr, TILE_STAGES: tl.constexpr,
):  # fmt: skip
    """One program per (batch·kv head, K or V): the statistics over all its tokens, then every tile quantized.

    The second loop reads the head again right after the first, so for short sequences (a head of at most a
    few hundred KB, ``quantize_kv``'s choice) it reads from L2: DRAM sees K and V about once, without the
    statistics launch or any waiting between programs. Same results as the two launches, bit for bit.
    """
    bh = tl.program_id(0)
    b = (bh // kv_heads).to(tl.int64)
    h = (bh % kv_heads).to(tl.int64)
    bh64 = bh.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    if tl.program_id(1) == 0:
        k_mean = tl.zeros([HEAD_DIM], tl.float32)
        if SMOOTH_K:
            total = k_sum(K, b, h, 0, kv_len, kv_len, sk_b, sk_h, sk_n, sk_d, head_dim, STATS_BLOCK_N, HEAD_DIM,
                          STATS_STAGES)  # fmt: skip
            k_mean = (total / kv_len_float).to(tl.float32)
            tl.store(KMean + bh64 * HEAD_DIM + offs_d, k_mean)
        for blk in tl.range(0, n_blocks, num_stages=TILE_STAGES):
            rows = blk * BLOCK_N + offs_n
            k = load_rows(K, b, h, rows, rows < kv_len, sk_b, sk_h, sk_n, sk_d, head_dim, HEAD_DIM)
            quantize_k_tile(k, k_mean, KInt8, KScale, bh64, blk, n_blocks, rows, kv_len, HEAD_DIM)
    elif V_FP8:
        amax = v_amax(V, b, h, 0, kv_len, kv_len, sv_b, sv_h, sv_n, sv_d, head_dim, STATS_BLOCK_N, HEAD_DIM, STATS_STAGES)
        for blk in tl.range(0, n_blocks, num_stages=TILE_STAGES):
            rows = blk * BLOCK_N + offs_n
            v = load_rows(V, b, h, rows, rows < kv_len, sv_b, sv_h, sv_n, sv_d, head_dim, HEAD_DIM)
            quantize_v_tile(v, amax, VFp8T, VScale, bh64, blk, rows, kv_len_padded, HEAD_DIM)


def quantize_q(q, *, sm_scale, block_m, head_dim_padded, k_mean=None, kv_heads=1):
    """q [B,H,N,D] (any strides) -> (q_int8 [B,H,N,Dp], q_scale [B,H,ceil(N/block_m)], shift [B,H,N] or None)."""
    batch, heads, q_len, head_dim = q.shape
    n_blocks = cdiv(q_len, block_m)
    q_int8 = torch.empty(batch, heads, q_len, head_dim_padded, dtype=torch.int8, device=q.device)
    q_scale = torch.empty(batch, heads, n_blocks, dtype=torch.float32, device=q.device)
    shift = None if k_mean is None else torch.empty(batch, heads, q_len, dtype=torch.float32, device=q.device)
    quantize_q_kernel[(n_blocks, batch * heads)](
        q, q_int8, q_scale, k_mean if k_mean is not None else q_scale, shift if shift is not None else q_scale,
        *strides(q), heads, heads // kv_heads, kv_heads, q_len, head_dim, sm_scale, sm_scale * LOG2E,
        BLOCK_M=block_m, HEAD_DIM=head_dim_padded, WITH_SHIFT=k_mean is not None,
    )  # fmt: skip
    return q_int8, q_scale, shift


STATS_CHUNK = 2048  # tokens per statistics program: enough programs to fill the GPU, few partials to combine
STATS_BLOCK_N = 64  # tokens per load in the statistics loop (H200: 64 > 16 > 32, docs/notes.md)
# A chunk must be whole loads: k_sum and v_amax mask rows by kv_len, not by the chunk's end (tests check it).
STATS_STAGES = 3  # loads in flight per statistics program (software-pipelined loop; H200: -8 % at B·H >= 64)
SMALLEST_SHARED_MEMORY = 99 * 1024  # sm89's limit per program: the smallest of the GPUs the kernels target


@functools.cache
def shared_memory_per_program(device_index):
    """The shared memory one program may use on CUDA device ``device_index`` (None: no GPU, e.g. the
    interpreter or a compile test: the smallest limit of the GPUs the kernels target)."""
    if device_index is None:
        return SMALLEST_SHARED_MEMORY
    return triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"]


def statistics_stages(tile_bytes, device):
    """STATS_STAGES where the loads they keep in flight (STATS_STAGES - 1 tiles) fit ``device``'s shared memory,
    else one: fp32 inputs at head_dim 256 need 131 KB for three, more than sm89's 99 KB (an H200 has 227)."""
    index = cuda_index(device) if device.type == "cuda" else None
    return STATS_STAGES if (STATS_STAGES - 1) * tile_bytes <= shared_memory_per_program(index) else 1


def pipeline_stages(tile_bytes):
    """Loads in flight in a per-head loop: three while they take at most 96 KB of shared memory, else one
    (fp32 inputs, head_dim 256), so the kernel fits every GPU's shared memory."""
    return 3 if 3 * tile_bytes <= 96 * 1024 else 1


def kv_warps(head_dim_padded):
    """Warps of the two K/V launches: eight at head_dim 256, where four spilled (their [64 or 128, 256] tiles, the
    statistics' fp64 sums: 255 registers and 444-888 bytes of local memory per thread on sm90), else four."""
    return 8 if head_dim_padded >= 256 else 4


PER_HEAD_MAX_LEN = 2048  # longest head ``quantize_kv_per_head_kernel`` takes (it reads each head twice, from L2)


def per_head_pays(k, smooth_k, v_fp8):
    """Whether one program per head and tensor beats the two launches for k [B,Hkv,N,D] (H200, 2026-11-26,
    docs/results/probes-per-head-quantization-h200-2026-11-26.json). Measured for 16-bit inputs and head_dim
    <= 128, heads of at most PER_HEAD_MAX_LEN tokens: it wins when only K is quantized (the fp16-P·V path:
    96-104 against 110-117 µs at hd128 and B·N = 16k, 53 against 89-91 at hd64), or with V when there are
    no more programs than SMs (B=1, H=8, N=1k: 56-60 against 92-102 µs). With V at many heads it loses (270
    against 203 µs: one program per SM transposing V̂ᵀ tiles through shared memory), and from 4k tokens on
    the second read misses L2."""
    batch, kv_heads, kv_len, head_dim = k.shape
    if kv_len > PER_HEAD_MAX_LEN or head_dim > 128 or k.element_size() > 2 or not (smooth_k or v_fp8):
        return False
    if not v_fp8:
        return True
    sms = cuda_properties(k.device).multi_processor_count if k.is_cuda else 0
    return 2 * batch * kv_heads <= sms


def quantize_kv(k, v, *, block_n, head_dim_padded, smooth_k, v_fp8, per_head=None):
    """Smooth and quantize K (and V to fp8 when ``v_fp8``): a statistics launch, then a quantization launch,
    or (``per_head``; default: where ``per_head_pays``) one launch of a program per head and tensor.

    k, v [B,Hkv,N,D] (any strides) -> dict with k_int8 [B,Hkv,N,Dp], k_scale [B,Hkv,ceil(N/block_n)],
    k_mean [B,Hkv,Dp] (if smooth_k), and v_fp8_t [B,Hkv,Dp,Npad] (keys in ``operand_key_order`` within
    every 32), v_scale [B,Hkv,Dp] (if v_fp8).
    The two launches are parallel over token chunks and batch·head; the statistics are combined in a
    fixed order, so results are deterministic, and both ways give the same bits (sage_ref's codes).
    """
    batch, kv_heads, kv_len, head_dim = k.shape
    dev = k.device
    n_blocks = cdiv(kv_len, block_n)
    kv_len_padded = n_blocks * block_n
    n_chunks = cdiv(kv_len, STATS_CHUNK)
    parts = 2 if v_fp8 else 1
    out = {
        "k_int8": torch.empty(batch, kv_heads, kv_len, head_dim_padded, dtype=torch.int8, device=dev),
        "k_scale": torch.empty(batch, kv_heads, n_blocks, dtype=torch.float32, device=dev),
        "k_mean": torch.empty(batch, kv_heads, head_dim_padded, dtype=torch.float32, device=dev) if smooth_k else None,
        "v_fp8_t": None,
        "v_scale": None,
    }
    if v_fp8:
        out["v_fp8_t"] = torch.empty(batch, kv_heads, head_dim_padded, kv_len_padded, dtype=torch.float8_e4m3fn, device=dev)
        out["v_scale"] = torch.empty(batch, kv_heads, head_dim_padded, dtype=torch.float32, device=dev)
    placeholder = out["k_scale"]
    if per_head is None:
        per_head = per_head_pays(k, smooth_k, v_fp8)
    if per_head:
        quantize_kv_per_head_kernel[(batch * kv_heads, parts)](
            k, v, out["k_int8"], out["k_scale"], out["k_mean"] if smooth_k else placeholder,
            out["v_fp8_t"] if v_fp8 else placeholder, out["v_scale"] if v_fp8 else placeholder,
            *strides(k), *strides(v), kv_heads, kv_len, float(kv_len), kv_len_padded, head_dim, n_blocks,
            BLOCK_N=block_n, STATS_BLOCK_N=STATS_BLOCK_N, HEAD_DIM=head_dim_padded, SMOOTH_K=smooth_k, V_FP8=v_fp8,
            STATS_STAGES=pipeline_stages(STATS_BLOCK_N * head_dim_padded * k.element_size()),
            TILE_STAGES=pipeline_stages(block_n * head_dim_padded * k.element_size()),
        )  # fmt: skip
        return out
    k_sums = torch.empty(batch * kv_heads, n_chunks, head_dim_padded, dtype=torch.float64, device=dev)
    v_amax = torch.empty(batch * kv_heads, n_chunks, head_dim_padded, dtype=torch.float32, device=dev)
    if smooth_k or v_fp8:
        kv_stats_kernel[(n_chunks, batch * kv_heads, parts)](
            k, v, k_sums, v_amax, *strides(k), *strides(v), kv_heads, kv_len, head_dim,
            CHUNK=STATS_CHUNK, BLOCK_N=STATS_BLOCK_N, HEAD_DIM=head_dim_padded, SMOOTH_K=smooth_k,
            STAGES=statistics_stages(STATS_BLOCK_N * head_dim_padded * k.element_size(), dev),
            num_warps=kv_warps(head_dim_padded),
        )  # fmt: skip
    quantize_kv_kernel[(n_blocks, batch * kv_heads, parts)](
        k, v, k_sums, v_amax, out["k_int8"], out["k_scale"], out["k_mean"] if smooth_k else placeholder,
        out["v_fp8_t"] if v_fp8 else placeholder, out["v_scale"] if v_fp8 else placeholder,
        *strides(k), *strides(v), kv_heads, kv_len, float(kv_len), kv_len_padded, head_dim, n_chunks,
        BLOCK_N=block_n, HEAD_DIM=head_dim_padded, SMOOTH_K=smooth_k, V_FP8=v_fp8, num_warps=kv_warps(head_dim_padded),
    )  # fmt: skip
    return out
