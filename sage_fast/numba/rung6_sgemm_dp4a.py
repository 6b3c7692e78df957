"""Rung 6: the SGEMM recipe on the CUDA cores, with dp4a for INT8 Q·Kᵀ through a linked CUDA C function.

What changed from rung 5 (same SageAttention arithmetic: INT8 Q·Kᵀ, fp16 P·V with its 16-key fp16 accumulator):
- dp4a. Q's and K's INT8 codes travel packed four to an int32 word, and Q·Kᵀ multiplies words with dp4a: four
  int8 multiply-adds into an int32 in one instruction, where rung 5 spent one int32 multiply-add per code.
  Numba has no intrinsic for it, so the kernel calls ``dp4a_s32``, declared with ``cuda.declare_device`` and
  defined in ``dp4a.cu`` (one line of CUDA C) that numba-cuda compiles with NVRTC and links; with nvJitLink's
  link-time optimization the call is inlined. Numba's simulator cannot run linked code: there the same name is
  ``dp4a_simulated``, the arithmetic in Python (tested against int8 dot products on the CPU).
- Register tiles as in an SGEMM, 256 threads as 16 × 16: thread (ty, tx) owns queries 4ty..4ty+3 against keys
  4tx..4tx+3 (16 scores) and the same queries against channels 4tx..4tx+3 of P·V, so every shared-memory
  read is 16 contiguous bytes (one vector load) and the 16 threads of half a warp read the same Q words and P
  rows (a broadcast). Q's words are stored [word, query], K's [word, key], P [query, key]; rows padded by 4
  words keep them 16-byte aligned and spread the staging stores over the memory banks.
- The softmax on all 256 threads, where rung 5 gave it 64: each thread writes its partial row maximum to shared
  memory (the simulator has no warp shuffles), the 16 threads of a row read all 16 and agree on m, and each
  keeps a partial row sum l, added up once at the end.
- V widened to fp32 in shared memory (fp16 values, exactly) and P stored as fp32 of its fp16 rounding: P·V is
  plain fp32 FMAs, and every 16 keys their sum goes into the fp16 accumulator as the MMA step would.
- Quantization on the GPU: each attention block quantizes its own 64 queries (it reads them once anyway); K's
  tiles get a small kernel of their own (one block per 64 keys); K's mean (smoothing) is torch's, in fp64 like
  ``sage_ref.smooth_k``. Rung 5 ran about 40 small torch operations on the host instead.
- Launched with raw device pointers (the kernels' signatures say ``CPointer``) on torch's current stream: a
  Numba array view of each tensor, built anew on every call (by default with a host sync), typed and flattened
  into 13 launch parameters, cost more host time per call than a short kernel runs.
- head_dim <= 64: at 128 the fp32 V and P tiles would overflow the 48 KiB of static shared memory Numba gives a
  block (rung 5 takes up to 128).

What it bought (NVIDIA H200, 2026-11-26, whole call, head_dim 64, B = 1, H = 8): 26.8 TOPS at N = 4096 and 31.7 at
8192, 5.3× and 5.2× rung 5; the attention kernel alone 31.8 TOPS at 4096. The host time before the kernel can
start fell from about 0.42 ms (Numba array views) to 0.16 ms (pointers), per call from 0.64-0.76 ms to 0.23 ms.
What dp4a alone buys is not measured (the SASS says Q·Kᵀ without it takes 8× the instructions). Experiments and
profile: docs/benchmarks-numba.md.

Numerics: ``sage_ref.sage_attention(qk_granularity="block", pv="fp16", block_m=64, block_n=64)``, rounding at
the same points (the codes are sage_ref's quantizer's, computed the same way).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
from numba import cuda, types

from sage_ref.attention import expand_kv
from sage_ref.checks import check_flag
from sage_ref.sage import MMA_K

from .common import (
    LOG2E,
    NEG_INF,
    ONE,
    ZERO,
    ceil_div,
    check_args,
    empty_f32,
    finish,
    head_dim_bucket,
    kernel_pointer,
    simulated,
    torch_stream,
)

BLOCK_M = 64  # queries per block, and Q's quantization block
BLOCK_N = 64  # keys per tile, and K's quantization block
THREADS = 16  # threads per side of the 16 x 16 block
BLOCK_THREADS = THREADS * THREADS
TM = BLOCK_M // THREADS  # queries per thread (4)
TN = BLOCK_N // THREADS  # keys per thread in the S tile (4)
# Shared rows padded by 4 words (compile-time constants, as shared shapes must be): rows stay 16-byte
# aligned for vector loads, and the stores of a warp spread over the memory banks.
TILE_STRIDE = BLOCK_N + 4  # K words [word, key] and P [query, key]
PART_STRIDE = THREADS + 4  # per-thread row partials [query, tx]
MAX_HEAD_DIM = 64
# Numba aligns shared arrays to their element size; 16 bytes lets reads of 4 neighbours be one vector load.
# (The simulator refuses the argument, and has nothing to align.)
ALIGN = None if simulated() else 16
# Two blocks of 256 threads per SM: at most 128 registers a thread (the simulator takes no launch bounds).
KERNEL_OPTIONS = {} if simulated() else {"launch_bounds": (BLOCK_THREADS, 2)}
INT8_MAX = np.float32(127.0)
HALF = np.float32(0.5)


@cuda.jit(device=True)
def int8_reciprocal(amax):
    """127 / amax, and 0 where that overflows (amax 0, or below 127 / FP32_MAX): such a tile quantizes to 0, as
    ``sage_ref.quantization.reciprocal_scale``."""
    if amax == ZERO:
        return ZERO
    inv = INT8_MAX / amax
    return ZERO if math.isinf(inv) else inv


def dp4a_simulated(a, b, c):
    """c + Σ_k a_k · b_k over the four signed bytes of the int32 words a and b: dp4a, in Python."""
    total = int(c)
    for shift in (0, 8, 16, 24):
        x, y = (int(a) >> shift) & 0xFF, (int(b) >> shift) & 0xFF
        total += (x - ((x & 0x80) << 1)) * (y - ((y & 0x80) << 1))  # two's complement bytes
    return np.int32(total)


DP4A_SOURCE = Path(__file__).with_name("dp4a.cu")
if simulated():
    dp4a = dp4a_simulated
else:
    dp4a = cuda.declare_device("dp4a_s32", "int32(int32, int32, int32)", link=[str(DP4A_SOURCE)], abi="c")


@cuda.jit(device=True)
def int8_code(y):
    """round(y), halves away from zero: trunc(y ± 0.5), as ``sage_ref.quantization.round_half_away``."""
    return np.int32(y + (HALF if y >= ZERO else -HALF))


@cuda.jit(device=True)
def pack4(c0, c1, c2, c3):
    """Four codes in [-127, 127] as one int32 word, byte k = code k (little-endian, what dp4a reads)."""
    return np.int32((c0 & 0xFF) | ((c1 & 0xFF) << 8) | ((c2 & 0xFF) << 16) | (c3 << 24))


@cuda.jit(device=True)
def block_max(buf, tid, x):
    """The maximum of x over the block's THREADS² threads, for every thread (buf: THREADS² fp32 of shared memory).

    Two rounds of THREADS-way maxima, two barriers (a tree would take eight). Call it once per kernel: a second
    call's first store could overwrite what a slow thread still reads.
    """
    buf[tid] = x
    cuda.syncthreads()
    if tid < THREADS:
        for t in range(1, THREADS):
            x = max(x, buf[tid + THREADS * t])
        buf[tid] = x
    cuda.syncthreads()
    result = buf[0]
    for t in range(1, THREADS):
        result = max(result, buf[t])
    return result


def signature(*args):
    """A kernel signature: "ptr:dtype" is a pointer to a flat, contiguous buffer of that dtype."""
    return types.void(
        *(types.CPointer(getattr(types, a[4:])) if a.startswith("ptr:") else getattr(types, a) for a in args)
    )


@functools.cache
def build_prepare_kv(HEAD_DIM: int, dtype: str):
    """K's quantizer and V's staging copy for head_dim <= HEAD_DIM and inputs of ``dtype`` (float16 or float32)."""
    WORDS = HEAD_DIM // 4
    sig = signature(*[f"ptr:{dtype}", "ptr:float32", f"ptr:{dtype}", "ptr:int32", "ptr:float32", "ptr:float32"],
                    "int64", "int64", "int64")  # fmt: skip

    @cuda.jit(sig)
    def prepare_kv_kernel(K, KMean, V, KWords, KScale, V32, kv_len, kv_rows, head_dim):
        """One block per (tile of BLOCK_N keys, batch · kv head). K, V [B, Hkv, kv_len, head_dim], KMean
        [B, Hkv, head_dim] -> KWords [B, Hkv, kv_rows, WORDS]: round((K - KMean) · 127 / max|K - KMean|) per tile,
        packed; KScale [B, Hkv, tiles]; V32 [B, Hkv, kv_rows, HEAD_DIM]: V rounded to fp16, in fp32. Zeros past
        kv_len and head_dim, so the attention kernel copies whole tiles without a test."""
        tid = cuda.threadIdx.x
        tile = cuda.blockIdx.x
        bh = cuda.blockIdx.y  # batch · kv_heads + kv head
        buf = cuda.shared.array(BLOCK_THREADS, np.float32)
        codes = cuda.local.array(4, np.int32)
        start = tile * BLOCK_N
        amax = ZERO
        for e in range(tid, BLOCK_N * head_dim, BLOCK_THREADS):
            j, d = start + e // head_dim, e % head_dim
            if j < kv_len:
                amax = max(amax, abs(np.float32(K[(bh * kv_len + j) * head_dim + d]) - KMean[bh * head_dim + d]))
        amax = block_max(buf, tid, amax)
        if tid == 0:
            KScale[bh * (kv_rows // BLOCK_N) + tile] = amax / INT8_MAX
        inv = int8_reciprocal(amax)  # one division per tile, a multiply per element
        for e in range(tid, BLOCK_N * WORDS, BLOCK_THREADS):
            j, w = start + e // WORDS, e % WORDS
            for c in range(4):
                d = 4 * w + c
                x = ZERO
                if j < kv_len and d < head_dim:
                    x = np.float32(K[(bh * kv_len + j) * head_dim + d]) - KMean[bh * head_dim + d]
                codes[c] = int8_code(x * inv)
            KWords[(bh * kv_rows + j) * WORDS + w] = pack4(codes[0], codes[1], codes[2], codes[3])
        for e in range(tid, BLOCK_N * HEAD_DIM, BLOCK_THREADS):
            j, d = start + e // HEAD_DIM, e % HEAD_DIM
            x = ZERO
            if j < kv_len and d < head_dim:
                x = np.float32(np.float16(V[(bh * kv_len + j) * head_dim + d]))
            V32[(bh * kv_rows + j) * HEAD_DIM + d] = x

    return prepare_kv_kernel


@functools.cache
def build_kernel(HEAD_DIM: int, dtype: str):
    """The attention kernel for head_dim <= HEAD_DIM (16, 32 or 64), Q of ``dtype``. Shared memory: 47 KiB at 64."""
    WORDS = HEAD_DIM // 4  # int32 words per row of codes
    RD = HEAD_DIM // THREADS  # channels per thread in P·V, contiguous
    sig = signature(*[f"ptr:{dtype}", "ptr:int32", "ptr:float32", "ptr:float32", "ptr:float32", "ptr:float32"],
                    *["int64"] * 6, "boolean", "float32")  # fmt: skip

    @cuda.jit(sig, **KERNEL_OPTIONS)
    def attention_kernel(Q, KWords, KScale, V32, Out, Lse2, heads, group, q_len, kv_len, kv_rows, head_dim,
                         is_causal, qk_scale):  # fmt: skip
        """Q, Out [B, H, q_len, head_dim], Lse2 (base 2) [B, H, q_len]; KWords, KScale, V32: prepare_kv_kernel's."""
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * THREADS + tx
        tile_m = cuda.blockIdx.x
        start_m = tile_m * BLOCK_M
        bh = cuda.blockIdx.y  # batch · heads + head
        kv_bh = bh // heads * (heads // group) + bh % heads // group  # its K/V head's row in the K and V buffers
        # This thread's first query, key and channel in the tiles. The masks change nothing but show the compiler
        # these are not negative: Numba's wraparound of negative indices then vanishes, and with it what keeps
        # neighbouring loads from becoming one vector load.
        row0, key0, ch0 = (ty * TM) & (BLOCK_M - 1), (tx * TN) & (BLOCK_N - 1), (tx * RD) & (HEAD_DIM - 1)

        q_words = cuda.shared.array((WORDS, BLOCK_M), np.int32, alignment=ALIGN)
        k_words = cuda.shared.array((WORDS, TILE_STRIDE), np.int32, alignment=ALIGN)
        v_tile = cuda.shared.array((BLOCK_N, HEAD_DIM), np.float32, alignment=ALIGN)
        p_tile = cuda.shared.array((BLOCK_M, TILE_STRIDE), np.float32, alignment=ALIGN)
        row_part = cuda.shared.array((BLOCK_M, PART_STRIDE), np.float32, alignment=ALIGN)  # row maxima, then sums
        buf = cuda.shared.array(BLOCK_THREADS, np.float32)
        codes = cuda.local.array(4, np.int32)
        qw = cuda.local.array(TM, np.int32)
        kw = cuda.local.array(TN, np.int32)
        dots = cuda.local.array((TM, TN), np.int32)
        s = cuda.local.array((TM, TN), np.float32)
        p4 = cuda.local.array((TM, 4), np.float32)
        part = cuda.local.array((TM, RD), np.float32)
        acc16 = cuda.local.array((TM, RD), np.float32)
        acc = cuda.local.array((TM, RD), np.float32)
        m_i = cuda.local.array(TM, np.float32)
        l_i = cuda.local.array(TM, np.float32)
        alpha = cuda.local.array(TM, np.float32)

        # Q's tile, quantized as sage_ref.quantize_qk does: x = q · (sm_scale · log2 e), one scale per tile.
        amax = ZERO
        for e in range(tid, BLOCK_M * head_dim, BLOCK_THREADS):
            i = start_m + e // head_dim
            if i < q_len:
                amax = max(amax, abs(np.float32(Q[(bh * q_len + i) * head_dim + e % head_dim]) * qk_scale))
        amax = block_max(buf, tid, amax)
        q_scale = amax / INT8_MAX
        inv = int8_reciprocal(amax)
        for e in range(tid, BLOCK_M * WORDS, BLOCK_THREADS):
            r, w = e // WORDS, e % WORDS
            i = start_m + r
            for c in range(4):
                d = 4 * w + c
                x = ZERO
                if i < q_len and d < head_dim:
                    x = np.float32(Q[(bh * q_len + i) * head_dim + d]) * qk_scale
                codes[c] = int8_code(x * inv)
            q_words[w, r] = pack4(codes[0], codes[1], codes[2], codes[3])
        for r in range(TM):
            m_i[r] = NEG_INF
            l_i[r] = ZERO
            for c in range(RD):
                acc[r, c] = ZERO

        hi = kv_len
        if is_causal:
            hi = min(kv_len, max(0, min(start_m + BLOCK_M, q_len) + kv_len - q_len))
        for start_n in range(0, hi, BLOCK_N):
            # Stage the tile: each thread copies fixed elements (constant trip counts, so the loops unroll).
            tile_row = kv_bh * kv_rows + start_n  # the tile's first row in the K and V buffers
            for it in range(BLOCK_N * WORDS // BLOCK_THREADS):
                e = (tid + it * BLOCK_THREADS) & (BLOCK_N * WORDS - 1)
                k_words[e % WORDS, e // WORDS] = KWords[tile_row * WORDS + e]
            for it in range(BLOCK_N * HEAD_DIM // BLOCK_THREADS):
                e = (tid + it * BLOCK_THREADS) & (BLOCK_N * HEAD_DIM - 1)
                v_tile[e // HEAD_DIM, e % HEAD_DIM] = V32[tile_row * HEAD_DIM + e]
            cuda.syncthreads()

            # S = Q̂ K̂ᵀ on a 4 x 4 register tile: per word, 4 + 4 loads and 16 dp4a (64 int8 multiply-adds).
            for r in range(TM):
                for c in range(TN):
                    dots[r, c] = 0
            for w0 in range(WORDS):
                w = w0 & (WORDS - 1)  # the mask: as for row0
                for r in range(TM):
                    qw[r] = q_words[w, row0 + r]
                for c in range(TN):
                    kw[c] = k_words[w, key0 + c]
                for r in range(TM):
                    for c in range(TN):
                        dots[r, c] = dp4a(qw[r], kw[c], dots[r, c])
            qk_scale_tile = q_scale * KScale[kv_bh * (kv_rows // BLOCK_N) + start_n // BLOCK_N]
            for r in range(TM):
                for c in range(TN):
                    s[r, c] = np.float32(dots[r, c]) * qk_scale_tile
            # Only tiles on an edge (the last keys, the last queries, the causal diagonal) test each score.
            inside = start_n + BLOCK_N <= kv_len and start_m + BLOCK_M <= q_len
            if not (inside and (not is_causal or start_n + BLOCK_N - 1 <= start_m + kv_len - q_len)):
                for r in range(TM):
                    i = start_m + row0 + r
                    for c in range(TN):
                        j = start_n + key0 + c
                        if i >= q_len or j >= kv_len or (is_causal and j > i + kv_len - q_len):
                            s[r, c] = NEG_INF
            for r in range(TM):
                row_max = s[r, 0]
                for c in range(1, TN):
                    row_max = max(row_max, s[r, c])
                row_part[row0 + r, tx] = row_max
            cuda.syncthreads()

            # Online softmax: the 16 threads of a row read its 16 partial maxima and compute the same m.
            for r in range(TM):
                m_new = m_i[r]
                for t in range(THREADS):
                    m_new = max(m_new, row_part[row0 + r, t])
                m_safe = ZERO if m_new == NEG_INF else m_new
                alpha[r] = math.exp2(m_i[r] - m_safe)
                row_sum = ZERO
                for c in range(TN):
                    p = math.exp2(s[r, c] - m_safe)
                    row_sum += p
                    p_tile[row0 + r, key0 + c] = np.float32(np.float16(p))
                l_i[r] = l_i[r] * alpha[r] + row_sum
                m_i[r] = m_new
            cuda.syncthreads()

            # P·V on a 4 x RD register tile in fp32; every 16 keys the sum enters the fp16 accumulator.
            for r in range(TM):
                for c in range(RD):
                    acc16[r, c] = ZERO
            for r in range(TM):
                for c in range(RD):
                    part[r, c] = ZERO
            for g in range(BLOCK_N // 4):  # 4 keys at a time: one 16-byte read of P per query
                kk = (4 * g) & (BLOCK_N - 1)  # the mask: as for row0
                for r in range(TM):
                    for t in range(4):
                        p4[r, t] = p_tile[row0 + r, kk + t]
                for t in range(4):
                    for c in range(RD):
                        v = v_tile[kk + t, ch0 + c]
                        for r in range(TM):
                            part[r, c] += p4[r, t] * v
                if g % (MMA_K // 4) == MMA_K // 4 - 1:  # the end of a 16-key MMA step
                    for r in range(TM):
                        for c in range(RD):
                            acc16[r, c] = np.float32(np.float16(acc16[r, c] + part[r, c]))
                            part[r, c] = ZERO
            for r in range(TM):
                for c in range(RD):
                    acc[r, c] = acc[r, c] * alpha[r] + acc16[r, c]
            cuda.syncthreads()

        for r in range(TM):
            row_part[row0 + r, tx] = l_i[r]
        cuda.syncthreads()
        for r in range(TM):
            i = start_m + row0 + r
            if i < q_len:
                l = ZERO
                for t in range(THREADS):
                    l += row_part[row0 + r, t]
                inv_l = ONE if l == ZERO else ONE / l
                for c in range(RD):
                    if ch0 + c < head_dim:
                        Out[(bh * q_len + i) * head_dim + ch0 + c] = acc[r, c] * inv_l
                if tx == 0:
                    Lse2[bh * q_len + i] = NEG_INF if l == ZERO else m_i[r] + math.log2(l)

    return attention_kernel


def forward(q, k, v, *, is_causal=False, sm_scale=None, smooth_k=True, return_lse=False):
    """q [B,H,Nq,D], k, v [B,Hkv,Nkv,D] (fp16/bf16/fp32, D <= 64, CUDA or simulator) -> out (and lse).

    Any strides: non-contiguous inputs are copied to contiguous ones, which the kernels index flat.
    """
    shape, scale = check_args(q, k, v, is_causal=is_causal, sm_scale=sm_scale, return_lse=return_lse)
    check_flag("smooth_k", smooth_k)
    if shape.head_dim > MAX_HEAD_DIM:
        raise ValueError(f"q has head_dim {shape.head_dim}; rung 6 supports up to {MAX_HEAD_DIM} (rung 5 up to 128)")
    B, H, Nq, D = shape.batch, shape.heads, shape.q_len, shape.head_dim
    kv_heads, kv_len, device = k.shape[1], shape.kv_len, q.device
    HEAD_DIM = head_dim_bucket(D)
    # The kernels read flat, contiguous buffers; torch exports no bf16 to Numba, so bf16 is widened (exactly).
    q_in, k_in, v_in = (t.detach().float() if t.dtype == torch.bfloat16 else t.detach() for t in (q, k, v))
    q_in, k_in, v_in = (t.contiguous() for t in (q_in, k_in, v_in))
    dtype = str(q_in.dtype).removeprefix("torch.")
    if smooth_k:  # sage_ref.smooth_k's mean: summed in fp64, rounded once to fp32
        k_mean = k.detach().to(torch.float64).mean(dim=-2, keepdim=True).to(torch.float32)
    else:
        k_mean = torch.zeros(B, kv_heads, 1, D, dtype=torch.float32, device=device)
    n_tiles = ceil_div(kv_len, BLOCK_N)
    kv_rows = n_tiles * BLOCK_N
    k_words = torch.empty(B, kv_heads, kv_rows, HEAD_DIM // 4, dtype=torch.int32, device=device)
    k_scale = empty_f32(B, kv_heads, n_tiles, device=device)
    v32 = empty_f32(B, kv_heads, kv_rows, HEAD_DIM, device=device)
    out = empty_f32(B, H, Nq, D, device=device)
    lse2 = empty_f32(B, H, Nq, device=device)
    stream = torch_stream()
    q_p, k_p, k_mean_p, v_p, k_words_p, k_scale_p, v32_p, out_p, lse2_p = map(
        kernel_pointer, (q_in, k_in, k_mean, v_in, k_words, k_scale, v32, out, lse2)
    )
    build_prepare_kv(HEAD_DIM, dtype)[(n_tiles, B * kv_heads), BLOCK_THREADS, stream](
        k_p, k_mean_p, v_p, k_words_p, k_scale_p, v32_p, kv_len, kv_rows, D
    )
    build_kernel(HEAD_DIM, dtype)[(ceil_div(Nq, BLOCK_M), B * H), (THREADS, THREADS), stream](
        q_p, k_words_p, k_scale_p, v32_p, out_p, lse2_p, H, shape.group, Nq, kv_len, kv_rows, D, is_causal,
        np.float32(scale * LOG2E),
    )  # fmt: skip
    shift = None
    if return_lse and smooth_k:
        shift = scale * torch.matmul(q.to(torch.float32), expand_kv(k_mean, shape.group).transpose(-1, -2))[..., 0]
    return finish(out, lse2, q, return_lse, shift)
