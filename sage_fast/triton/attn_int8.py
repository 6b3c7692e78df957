"""The SageAttention kernel of rungs 2-5: INT8 Q·Kᵀ, online softmax in base 2, FP16 or FP8 P·V.

Per program: a tile of BLOCK_M query rows of one (batch, head); per key tile of BLOCK_N keys

    S   = (Q̂ K̂ᵀ on the int8 tensor cores, int32) · (q_scale · k_scale)   # one scalar per tile
        + bias · log2 e                        # attention mask, if any (natural-log units)
    P   = exp2(S - m_new)                      # log2 e is already inside q_scale
    PV  = fp16(P) · fp16(V), fp16 accumulator   (PV_FP8=False, SageAttention v1)
        = e4m3(448 P) · e4m3(V / v_scale), fp32  (PV_FP8=True, SageAttention2)
    acc = alpha · acc + PV                     # fp32 across tiles: the second accumulation level

and at the end out = acc / l (· v_scale for fp8), lse = (m + log2 l) · ln 2 + shift.
For fp8, 448 P comes straight out of exp2 (log2 448 is added to the exponent) and l sums
448 P, so neither P nor the output needs a separate multiply by 448. On tiles every row sees
in full, S · scale - m is one FMA feeding exp2.
The fp8 block product is a separate dot from a zero accumulator, added into acc in fp32,
so fp8's reduced-precision tensor-core accumulation never sees the running total.

Masks: one additive-bias pointer with [batch, head, query, key] strides, 0 on broadcast
dimensions. When the bias does not depend on the query row (a key-padding mask
[batch, 1, 1, kv_len]), BIAS == ROW_BIAS loads one row of BLOCK_N values per key tile and
broadcasts it over the tile's BLOCK_M rows; otherwise (FULL_BIAS) a [BLOCK_M, BLOCK_N] tile.
The bias enters through the FMA that dequantizes the scores; a boolean mask is read as bytes
and becomes 0 / -inf in registers (per row for ROW_BIAS), so it is never converted or copied on
the host.
"""

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .common import (
    bias_base2,
    finish,
    key_range,
    operand_key_order,
    softmax_step,
    softmax_step_int,
    unmasked_range,
    visible,
)
from .launch import attention_grid, lse_buffer, strides

LN2 = tl.constexpr(0.6931471805599453)  # ln 2: natural-log lse = base-2 lse · ln 2
LOG2_448 = tl.constexpr(8.807354922057604)  # log2 448: exp2(x + log2 448) = 448 · exp2(x), e4m3's range
NO_BIAS = tl.constexpr(0)
ROW_BIAS = tl.constexpr(1)  # the bias is one row of keys, shared by every query (key padding)
FULL_BIAS = tl.constexpr(2)


@triton.jit
def attend(
    acc, m_i, l_i, q, q_scale, k_src, k_scale_ptr, v_src, bias_ptrs, lo, hi,
    offs_m, offs_n, offs_d, sv_n, sb_n, q_len, kv_len, head_dim, k_row, v_row,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr, PV_FP8: tl.constexpr,
    BIAS: tl.constexpr, BIAS_BOOL: tl.constexpr, MASKED: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """Key tiles [lo, hi) of one query tile: scores, online softmax, P·V. Returns (acc, m_i, l_i).

    MASKED=False is the hot loop over tiles every row sees in full: no bounds checks, no -inf
    fill, the dequantization folded into the exponent's FMA (when no attention mask is given).
    For fp8, P comes out of exp2 already scaled into [0, 448] (log2 448 added to the exponent).
    k_src and v_src are pointer tiles or, with TMA, tensor descriptors of K̂ [B·Hkv·Nkv, Dp] and
    V̂ᵀ [B·Hkv·Dp, Npad] whose tiles start at rows k_row + start_n and v_row.
    """
    P_LOG2: tl.constexpr = LOG2_448 if PV_FP8 else 0.0
    for start_n in range(lo, hi, BLOCK_N):
        keys = start_n + offs_n
        if TMA:
            # One thread issues the copy of the whole [BLOCK_N, HEAD_DIM] tile; keys past kv_len are
            # the next head's (or zeros): finite int8 codes whose scores the mask below removes.
            k = k_src.load([k_row + start_n, 0]).T
        elif MASKED:
            k = tl.load(k_src + start_n * HEAD_DIM, mask=keys[None, :] < kv_len)
        else:
            k = tl.load(k_src + start_n * HEAD_DIM)
        scale = q_scale * tl.load(k_scale_ptr + start_n // BLOCK_N)
        s_int = tl.dot(q, k)
        if MASKED or BIAS != NO_BIAS:
            # The bias is added by the FMA that dequantizes the scores: no extra pass over the tile.
            # A key-padding row is converted once per tile ([BLOCK_N] values), then broadcast.
            if BIAS == ROW_BIAS:
                bias = tl.load(bias_ptrs + keys * sb_n, mask=keys < kv_len, other=0)
                s = tl.fma(s_int.to(tl.float32), scale, bias_base2(bias, BIAS_BOOL)[None, :])
            elif BIAS == FULL_BIAS:
                bias_ok = (offs_m[:, None] < q_len) & (keys[None, :] < kv_len)
                bias = tl.load(bias_ptrs + keys[None, :] * sb_n, mask=bias_ok, other=0)
                s = tl.fma(s_int.to(tl.float32), scale, bias_base2(bias, BIAS_BOOL))
            else:
                s = s_int.to(tl.float32) * scale
            if MASKED:
                s = tl.where(visible(offs_m, keys, q_len, kv_len, IS_CAUSAL), s, float("-inf"))
            p, alpha, m_i, l_i = softmax_step(s, m_i, l_i, P_LOG2)
        else:
            p, alpha, m_i, l_i = softmax_step_int(s_int, scale, m_i, l_i, P_LOG2)
        if PV_FP8:
            if TMA:
                v = v_src.load([v_row, start_n]).T
            else:
                v = tl.load(v_src + start_n)
            # V̂ᵀ's keys are stored in operand order (quant.py): P's are relabelled alike, for free.
            pv = tl.dot(operand_key_order(p.to(tl.float8e4nv)), v)
        else:
            v_ok = offs_d[None, :] < head_dim
            if MASKED:
                v_ok = v_ok & (keys[:, None] < kv_len)
            v = tl.load(v_src + start_n * sv_n, mask=v_ok, other=0.0)
            pv = tl.dot(p.to(tl.float16), v.to(tl.float16), out_dtype=tl.float16).to(tl.float32)
        # One fma, not `acc * alpha + pv`: Triton folds `x + dot(a, b, 0)` into `dot(a, b, x)`
        # where it may (sm89's fp8 dot), which would feed the running total through fp8's
        # reduced-precision MMA accumulator and undo the two-level accumulation.
        acc = tl.fma(acc, alpha[:, None], pv)
    return acc, m_i, l_i


@triton.jit
def sage_attn_kernel(
    QInt8, KInt8, QScale, KScale, V, VScale, Out, Lse, Shift, Bias,
    sv_b, sv_h, sv_n, sv_d,
    so_b, so_h, so_n, so_d,
    sb_b, sb_h, sb_m, sb_n,
    heads, group, kv_heads, q_len, kv_len, kv_len_padded, head_dim,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    IS_CAUSAL: tl.constexpr, PV_FP8: tl.constexpr, RETURN_LSE: tl.constexpr, WITH_SHIFT: tl.constexpr,
    BIAS: tl.constexpr, BIAS_BOOL: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    start_m = pid_m * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    b = bh // heads
    h = bh % heads
    kv_bh = b * kv_heads + h // group
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)

    q = tl.load(QInt8 + (bh * q_len + offs_m[:, None]) * HEAD_DIM + offs_d[None, :], mask=offs_m[:, None] < q_len)
    q_scale = tl.load(QScale + bh * tl.num_programs(0) + pid_m)
    k_scale_ptr = KScale + kv_bh * tl.cdiv(kv_len, BLOCK_N)
    if TMA:  # KInt8 and V are tensor descriptors (rung 5)
        k_src = KInt8
        v_src = V
    else:
        k_src = KInt8 + (kv_bh * kv_len + offs_n[None, :]) * HEAD_DIM + offs_d[:, None]
        if PV_FP8:
            # V is stored transposed [D, N_padded]: the keys, P·V's reduction axis, are contiguous.
            v_src = V + (kv_bh * HEAD_DIM + offs_d[None, :]) * kv_len_padded + offs_n[:, None]
        else:
            v_src = V + b * sv_b + (h // group) * sv_h + offs_n[:, None] * sv_n + offs_d[None, :] * sv_d
    bias_ptrs = Bias + b * sb_b + h * sb_h
    if BIAS == FULL_BIAS:
        bias_ptrs = bias_ptrs + offs_m[:, None].to(tl.int64) * sb_m

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # Tiles every row sees in full run without masks; the causal diagonal and the kv tail, with.
    mid = unmasked_range(start_m, q_len, kv_len, BLOCK_N, IS_CAUSAL)
    hi = key_range(start_m, q_len, kv_len, BLOCK_M, IS_CAUSAL)
    k_row = (kv_bh * kv_len).to(tl.int32)  # descriptor coordinates are int32
    v_row = (kv_bh * HEAD_DIM).to(tl.int32)
    acc, m_i, l_i = attend(
        acc, m_i, l_i, q, q_scale, k_src, k_scale_ptr, v_src, bias_ptrs, 0, mid,
        offs_m, offs_n, offs_d, sv_n, sb_n, q_len, kv_len, head_dim, k_row, v_row,
        BLOCK_N, HEAD_DIM, IS_CAUSAL, PV_FP8, BIAS, BIAS_BOOL, False, TMA,
    )  # fmt: skip
    acc, m_i, l_i = attend(
        acc, m_i, l_i, q, q_scale, k_src, k_scale_ptr, v_src, bias_ptrs, mid, hi,
        offs_m, offs_n, offs_d, sv_n, sb_n, q_len, kv_len, head_dim, k_row, v_row,
        BLOCK_N, HEAD_DIM, IS_CAUSAL, PV_FP8, BIAS, BIAS_BOOL, True, TMA,
    )  # fmt: skip

    if PV_FP8:
        out, lse2 = finish(acc, m_i, l_i, LOG2_448)
        out = out * tl.load(VScale + kv_bh * HEAD_DIM + offs_d)[None, :]
    else:
        out, lse2 = finish(acc, m_i, l_i, 0.0)
    m_ok = offs_m < q_len
    tl.store(
        Out + b * so_b + h * so_h + offs_m[:, None] * so_n + offs_d[None, :] * so_d,
        out.to(Out.dtype.element_ty), mask=m_ok[:, None] & (offs_d[None, :] < head_dim),
    )
    if RETURN_LSE:
        lse = lse2 * LN2
        if WITH_SHIFT:
            lse += tl.load(Shift + bh * q_len + offs_m, mask=m_ok)
        tl.store(Lse + bh * q_len + offs_m, lse, mask=m_ok)


def bias_view(attn_mask, shape):
    """A validated mask (bool or float, broadcastable to ``shape`` [B,H,Nq,Nkv]) as the kernel reads it.

    Returns (tensor, strides, mode): the mask expanded to ``shape`` as a view (stride 0 on broadcast
    dimensions, nothing copied) and ROW_BIAS when it does not vary over queries, else FULL_BIAS.
    """
    if attn_mask is None:
        return None, (0, 0, 0, 0), NO_BIAS
    bias = attn_mask[(None,) * (4 - attn_mask.dim())].expand(shape)
    sb = strides(bias)
    mode = ROW_BIAS if sb[2] == 0 or shape[2] == 1 else FULL_BIAS
    return bias, sb, mode


def launch(q_int8, q_scale, k_int8, k_scale, v, *, out_like, head_dim, is_causal, block_m, block_n,
           v_scale=None, shift=None, attn_mask=None, return_lse=False, num_warps=8, num_stages=3, maxnreg=None,
           tma=False):  # fmt: skip
    """Run ``sage_attn_kernel`` on quantized inputs.

    q_int8 [B,H,Nq,Dp], k_int8 [B,Hkv,Nkv,Dp] contiguous; q_scale [B,H,ceil(Nq/block_m)],
    k_scale [B,Hkv,ceil(Nkv/block_n)]; v: V [B,Hkv,Nkv,D], any strides (fp16 P·V: the kernel rounds a bf16
    or fp32 V to fp16 per tile, rung 3 passes it already rounded) or, with
    ``v_scale`` [B,Hkv,Dp], V̂ᵀ [B,Hkv,Dp,Npad] in e4m3 (fp8 P·V). ``out_like`` gives the
    output's shape/dtype/device. ``attn_mask``: bool (True = attend) or natural-log additive
    bias, broadcastable to [B,H,Nq,Nkv], any strides. ``tma`` (fp8 P·V only): K̂ and V̂ᵀ reach the
    kernel as tensor descriptors, so their tiles are copied by the TMA unit (sm90; a plain load elsewhere).
    Returns out (and lse [B,H,Nq] fp32, natural log).
    """
    batch, heads, q_len, head_dim_padded = q_int8.shape
    kv_heads, kv_len = k_int8.shape[1], k_int8.shape[2]
    pv_fp8 = v_scale is not None
    kv_len_padded = v.shape[-1] if pv_fp8 else kv_len
    out = torch.empty_like(out_like)
    lse = lse_buffer(out, return_lse)
    bias, bias_strides, bias_mode = bias_view(attn_mask, (batch, heads, q_len, kv_len))
    if bias_mode == FULL_BIAS and head_dim_padded >= 256:
        # Each pipeline stage also buffers a [block_m, block_n] mask tile; beside 256-wide K and V
        # tiles, three stages overflow Hopper's 227 KiB of shared memory.
        num_stages = min(num_stages, 2)
    if bias_mode == FULL_BIAS and head_dim_padded >= 128:
        # A register cap buys a third program per SM; with a mask tile per stage beside 128-wide K̂ and V̂ᵀ tiles
        # (rung 5: 91 KB) shared memory allows two anyway, and the capped build spilled 600-750 bytes per thread:
        # uncapped, +15-23 % (H200, docs/notes.md). At head_dim 32 and 64 the caps still pay with a mask (hd32
        # causal: 128 registers with ≈ 100 bytes of spills beat 255 registers by 7-11 %).
        maxnreg = None
    if tma:
        if not pv_fp8:
            raise ValueError("tma=True needs the fp8 P·V layout (v_scale and V̂ᵀ): fp16 P·V reads V with any strides")
        k_int8 = TensorDescriptor.from_tensor(k_int8.view(-1, head_dim_padded), [block_n, head_dim_padded])
        v = TensorDescriptor.from_tensor(v.view(-1, kv_len_padded), [head_dim_padded, block_n])
    sage_attn_kernel[attention_grid(out, block_m)](
        q_int8, k_int8, q_scale, k_scale, v, v_scale if pv_fp8 else q_scale, out, lse,
        shift if shift is not None else lse, bias if bias is not None else q_scale,
        *(strides(v) if not pv_fp8 else (0, 0, 0, 0)), *strides(out), *bias_strides,
        heads, heads // kv_heads, kv_heads, q_len, kv_len, kv_len_padded, head_dim,
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim_padded, IS_CAUSAL=is_causal,
        PV_FP8=pv_fp8, RETURN_LSE=return_lse, WITH_SHIFT=shift is not None,
        BIAS=bias_mode, BIAS_BOOL=bias is not None and bias.dtype == torch.bool, TMA=tma,
        num_warps=num_warps, num_stages=num_stages, maxnreg=maxnreg,
    )  # fmt: skip
    return (out, lse) if return_lse else out
