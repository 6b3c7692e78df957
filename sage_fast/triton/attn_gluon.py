"""The fp8-P·V SageAttention kernel written in Gluon, with FA3's intra-warpgroup overlap (sm90 only).

Same arithmetic as ``attn_int8.sage_attn_kernel`` with ``PV_FP8`` and no attention mask: per key tile j

    S_j  = (Q̂ K̂_jᵀ, int8 wgmma, int32) · q_scale · k_scale_j
    P_j  = exp2(S_j - m_j + log2 448)                  # e4m3, in [0, 448]
    PV_j = P_j · V̂_j (fp8 wgmma from a zero fp32 accumulator)
    acc  = alpha_j · acc + PV_j                       # fp32 across tiles

but scheduled by hand. Plain Triton waits for every wgmma right after issuing it, so inside one
program the tensor cores sit idle during the softmax and the softmax waits for the tensor cores.
Here each iteration issues two asynchronous wgmmas, S_j and PV_{j-1}, then waits only for S_j
(``warpgroup_mma_wait(1)``) and computes its softmax while PV_{j-1} is still running; only then
waits for PV_{j-1} and adds it (with the alpha of its own tile) into acc. The result is the same
sequence of roundings as the Triton kernel's, one tile later.

P̂_j waits for its wgmma in shared memory (two buffers: PV_{j-1} reads one while P̂_j is written to
the other), not in registers: a P̂ carried across iterations in registers is 64 separate 8-bit values
per thread at the loop boundary, re-packed into 16 registers every tile (+150 PRMT/LOP3 per thread
per tile in the SASS), and carrying S_{j+1}'s in-flight accumulator instead makes ptxas serialize the
wgmmas (C7514). K̂ [B·Hkv·Nkv, Dp] and V̂ᵀ [B·Hkv·Dp, Npad] arrive as TMA descriptors and stream
through NUM_STAGES shared-memory slots, each with an mbarrier the copy signals; a slot is refilled
(tile j-1+NUM_STAGES) once the wgmma that read it last (PV_{j-1}) has been waited for, so no second
barrier is needed. Q̂'s tile is copied once. Tiles every row sees in full run without masks; the
causal diagonal and the kv tail, with. Gluon has no interpreter: this kernel runs only on an sm90 GPU.
"""

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .launch import attention_grid, lse_buffer, strides

LN2: gl.constexpr = gl.constexpr(0.6931471805599453)
LOG2_448: gl.constexpr = gl.constexpr(8.807354922057604)


@gluon.jit
def load_tile(k_desc, v_desc, k_bufs, v_bufs, k_bars, v_bars, t, n_tiles, k_row, v_row,
              BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr):  # fmt: skip
    """Start the TMA copies of key tile t (K̂ and V̂ᵀ) into slot t % NUM_STAGES, if t < n_tiles."""
    slot = t % NUM_STAGES
    ok = t < n_tiles
    mbarrier.expect(k_bars.index(slot), k_desc.block_type.nbytes, pred=ok)
    tma.async_copy_global_to_shared(k_desc, [k_row + t * BLOCK_N, 0], k_bars.index(slot), k_bufs.index(slot), ok)
    mbarrier.expect(v_bars.index(slot), v_desc.block_type.nbytes, pred=ok)
    tma.async_copy_global_to_shared(v_desc, [v_row, t * BLOCK_N], v_bars.index(slot), v_bufs.index(slot), ok)


@gluon.jit
def scores(q_smem, k_bufs, k_bars, t, s_layout: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
           NUM_STAGES: gl.constexpr):  # fmt: skip
    """Issue S_t = Q̂ K̂_tᵀ (int8 wgmma, asynchronous) once tile t's K̂ has landed; returns the token."""
    slot = t % NUM_STAGES
    mbarrier.wait(k_bars.index(slot), (t // NUM_STAGES) & 1)
    zero = gl.zeros([BLOCK_M, BLOCK_N], gl.int32, s_layout)
    return warpgroup_mma(q_smem, k_bufs.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)


@gluon.jit
def block_pv(p_bufs, v_bufs, v_bars, t, o_layout: gl.constexpr, BLOCK_M: gl.constexpr, HEAD_DIM: gl.constexpr,
             NUM_STAGES: gl.constexpr):  # fmt: skip
    """Issue PV_t = P̂_t · V̂_t (fp8 wgmma from zero, asynchronous, P̂_t from shared memory) once V̂ᵀ_t landed."""
    slot = t % NUM_STAGES
    mbarrier.wait(v_bars.index(slot), (t // NUM_STAGES) & 1)
    zero = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
    return warpgroup_mma(p_bufs.index(t % 2), v_bufs.index(slot).permute((1, 0)), zero, use_acc=False, is_async=True)


@gluon.jit
def store_p(p_bufs, p, t):
    """P̂_t = e4m3(p) into P buffer t % 2 (PV_{t-1} may still read the other), visible to the next wgmma."""
    p_bufs.index(t % 2).store(p.to(gl.float8e4nv))
    fence_async_shared()
    gl.thread_barrier()


@gluon.jit
def softmax(s_int, scale, m_i, l_i, t, offs_m, q_len, kv_len,
            BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr, MASKED: gl.constexpr):  # fmt: skip
    """One online-softmax step on tile t's int32 scores: (p, alpha, m_new, l_new), as in
    ``common.softmax_step_int`` (unmasked: one FMA per score into exp2) and ``common.softmax_step``
    (MASKED: scores outside ``visible`` are -inf; a row with no visible key keeps m = -inf)."""
    s = s_int.to(gl.float32)
    if MASKED:
        keys = t * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_int.type.layout))
        ok = keys[None, :] < kv_len
        if IS_CAUSAL:
            ok = ok & (keys[None, :] <= offs_m[:, None] + (kv_len - q_len))
        s = gl.where(ok, s * scale, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1))
        m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = gl.exp2(m_i - m_safe)
        p = gl.exp2(s - (m_safe - LOG2_448)[:, None])
    else:
        m_new = gl.maximum(m_i, gl.max(s, 1) * scale)
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(gl.fma(s, scale, -(m_new - LOG2_448)[:, None]))
    l_new = l_i * alpha + gl.sum(p, 1)
    return p, alpha, m_new, l_new


@gluon.jit
def step(q_smem, k_bufs, v_bufs, p_bufs, k_bars, v_bars, k_desc, v_desc, acc, alpha_prev, m_i, l_i, t,
         q_scale, KScaleRow, offs_m, q_len, kv_len, n_tiles, k_row, v_row,
         s_layout: gl.constexpr, o_layout: gl.constexpr,
         BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr,
         IS_CAUSAL: gl.constexpr, MASKED: gl.constexpr):  # fmt: skip
    """Iteration t >= 1: S_t and PV_{t-1} in flight together, the softmax of S_t while PV_{t-1} runs.
    Returns (acc, alpha_t, m_i, l_i); acc then holds tiles < t, at tile t-1's maximum."""
    s_tok = scores(q_smem, k_bufs, k_bars, t, s_layout, BLOCK_M, BLOCK_N, NUM_STAGES)
    pv_tok = block_pv(p_bufs, v_bufs, v_bars, t - 1, o_layout, BLOCK_M, HEAD_DIM, NUM_STAGES)
    s_int = warpgroup_mma_wait(1, deps=(s_tok,))  # S_t done, PV_{t-1} may still run
    scale = q_scale * gl.load(KScaleRow + t)
    p, alpha, m_i, l_i = softmax(s_int, scale, m_i, l_i, t, offs_m, q_len, kv_len, BLOCK_N, IS_CAUSAL, MASKED)
    pv = warpgroup_mma_wait(0, deps=(pv_tok,))
    acc = gl.fma(acc, alpha_prev[:, None], pv)
    store_p(p_bufs, p, t)
    # Slot (t-1) % NUM_STAGES is free now: both its wgmmas are done.
    load_tile(k_desc, v_desc, k_bufs, v_bufs, k_bars, v_bars, t - 1 + NUM_STAGES, n_tiles, k_row, v_row,
              BLOCK_N, NUM_STAGES)  # fmt: skip
    return acc, gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), m_i, l_i


@gluon.jit
def sage_attn_gluon_kernel(
    q_desc, k_desc, v_desc, QScale, KScale, VScale, Out, Lse, Shift,
    so_b, so_h, so_n, so_d,
    heads, group, kv_heads, q_len, kv_len, head_dim,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr,
    IS_CAUSAL: gl.constexpr, RETURN_LSE: gl.constexpr, WITH_SHIFT: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    # Register layouts of the two wgmmas' results (int8: k = 32 per instruction; e4m3 alike).
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 32])  # fmt: skip
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, HEAD_DIM, 32])  # fmt: skip
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)

    pid_m = gl.program_id(0)
    start_m = pid_m * BLOCK_M
    bh = gl.program_id(1)
    b = bh // heads
    h = bh % heads
    kv_bh = b * kv_heads + h // group
    k_row = kv_bh * kv_len
    v_row = kv_bh * HEAD_DIM
    # Key tiles [0, n_full) every row sees in full; [n_full, n_tiles) need the mask (causal diagonal, kv tail).
    if IS_CAUSAL:
        hi = gl.minimum(kv_len, start_m + BLOCK_M + kv_len - q_len)
        n_full = gl.minimum(kv_len // BLOCK_N, gl.maximum(start_m + kv_len - q_len + 1, 0) // BLOCK_N)
    else:
        hi = kv_len
        n_full = kv_len // BLOCK_N
    n_tiles = gl.maximum(gl.cdiv(hi, BLOCK_N), 0)

    q_smem = gl.allocate_shared_memory(gl.int8, [BLOCK_M, HEAD_DIM], q_desc.layout)
    k_bufs = gl.allocate_shared_memory(gl.int8, [NUM_STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_bufs = gl.allocate_shared_memory(gl.float8e4nv, [NUM_STAGES, HEAD_DIM, BLOCK_N], v_desc.layout)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_N], gl.float8e4nv)
    p_bufs = gl.allocate_shared_memory(gl.float8e4nv, [2, BLOCK_M, BLOCK_N], p_layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(k_bars.index(i), count=1)
        mbarrier.init(v_bars.index(i), count=1)

    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [bh * q_len + start_m, 0], q_bar, q_smem)
    for i in gl.static_range(NUM_STAGES):
        load_tile(k_desc, v_desc, k_bufs, v_bufs, k_bars, v_bars, i, n_tiles, k_row, v_row, BLOCK_N, NUM_STAGES)

    offs_m = start_m + gl.arange(0, BLOCK_M, layout=row_s)
    q_scale = gl.load(QScale + bh * gl.num_programs(0) + pid_m)
    KScaleRow = KScale + kv_bh * gl.cdiv(kv_len, BLOCK_N)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, row_s)
    l_i = gl.zeros([BLOCK_M], gl.float32, row_s)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
    mbarrier.wait(q_bar, 0)
    if n_tiles > 0:
        # Tile 0: its scores alone (nothing to overlap with yet).
        s_int = warpgroup_mma_wait(0, deps=(scores(q_smem, k_bufs, k_bars, 0, s_layout, BLOCK_M, BLOCK_N, NUM_STAGES),))
        scale = q_scale * gl.load(KScaleRow)
        if n_full > 0:
            p, alpha, m_i, l_i = softmax(s_int, scale, m_i, l_i, 0, offs_m, q_len, kv_len, BLOCK_N, IS_CAUSAL, False)
        else:
            p, alpha, m_i, l_i = softmax(s_int, scale, m_i, l_i, 0, offs_m, q_len, kv_len, BLOCK_N, IS_CAUSAL, True)
        store_p(p_bufs, p, 0)
        alpha = gl.convert_layout(alpha, row_o)
        for t in range(1, n_full):
            acc, alpha, m_i, l_i = step(
                q_smem, k_bufs, v_bufs, p_bufs, k_bars, v_bars, k_desc, v_desc, acc, alpha, m_i, l_i, t,
                q_scale, KScaleRow, offs_m, q_len, kv_len, n_tiles, k_row, v_row,
                s_layout, o_layout, BLOCK_M, BLOCK_N, HEAD_DIM, NUM_STAGES, IS_CAUSAL, False,
            )  # fmt: skip
        for t in range(gl.maximum(n_full, 1), n_tiles):
            acc, alpha, m_i, l_i = step(
                q_smem, k_bufs, v_bufs, p_bufs, k_bars, v_bars, k_desc, v_desc, acc, alpha, m_i, l_i, t,
                q_scale, KScaleRow, offs_m, q_len, kv_len, n_tiles, k_row, v_row,
                s_layout, o_layout, BLOCK_M, BLOCK_N, HEAD_DIM, NUM_STAGES, IS_CAUSAL, True,
            )  # fmt: skip
        # The last tile's P·V, with nothing left to overlap.
        pv_tok = block_pv(p_bufs, v_bufs, v_bars, n_tiles - 1, o_layout, BLOCK_M, HEAD_DIM, NUM_STAGES)
        pv = warpgroup_mma_wait(0, deps=(pv_tok,))
        acc = gl.fma(acc, alpha[:, None], pv)
    mbarrier.invalidate(q_bar)
    for i in gl.static_range(NUM_STAGES):
        mbarrier.invalidate(k_bars.index(i))
        mbarrier.invalidate(v_bars.index(i))

    # out = acc / l · v_scale (0 for a row that saw no key); lse = (m + log2 l - log2 448) · ln 2 (+ shift).
    l_o = gl.convert_layout(l_i, row_o)
    l_safe = gl.where(l_o == 0.0, 1.0, l_o)
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    v_scale = gl.load(VScale + kv_bh * HEAD_DIM + offs_d)
    out = acc / l_safe[:, None] * v_scale[None, :]
    offs_mo = start_m + gl.arange(0, BLOCK_M, layout=row_o)
    out_ptrs = Out + b.to(gl.int64) * so_b + h.to(gl.int64) * so_h + offs_mo[:, None] * so_n + offs_d[None, :] * so_d
    gl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=(offs_mo[:, None] < q_len) & (offs_d[None, :] < head_dim))
    if RETURN_LSE:
        lse = gl.where(l_i == 0.0, float("-inf"), m_i + gl.log2(gl.where(l_i == 0.0, 1.0, l_i)) - LOG2_448) * LN2
        m_ok = offs_m < q_len
        lse_offs = bh.to(gl.int64) * q_len + offs_m
        if WITH_SHIFT:
            lse += gl.load(Shift + lse_offs, mask=m_ok, other=0.0)
        gl.store(Lse + lse_offs, lse, mask=m_ok)


def descriptor(t: torch.Tensor, block_shape: list[int], dtype) -> TensorDescriptor:
    """A 2-d TMA descriptor over ``t`` with the swizzled shared layout the wgmma reads."""
    return TensorDescriptor.from_tensor(t, block_shape, gl.NVMMASharedLayout.get_default_for(block_shape, dtype))


def launch(q_int8, q_scale, k_int8, k_scale, v_fp8_t, v_scale, *, out_like, head_dim, is_causal, block_m, block_n,
           shift=None, return_lse=False, num_warps=4, num_stages=2, maxnreg=None):  # fmt: skip
    """Run ``sage_attn_gluon_kernel`` on quantized inputs (the layouts of ``attn_int8.launch`` with fp8 P·V).

    q_int8 [B,H,Nq,Dp], k_int8 [B,Hkv,Nkv,Dp], v_fp8_t V̂ᵀ [B,Hkv,Dp,Npad] e4m3, contiguous; q_scale
    [B,H,ceil(Nq/block_m)], k_scale [B,Hkv,ceil(Nkv/block_n)], v_scale [B,Hkv,Dp]. Returns out
    (and lse [B,H,Nq] fp32, natural log).
    """
    _, heads, q_len, head_dim_padded = q_int8.shape
    kv_heads, kv_len = k_int8.shape[1], k_int8.shape[2]
    out = torch.empty_like(out_like)
    lse = lse_buffer(out, return_lse)
    q_desc = descriptor(q_int8.view(-1, head_dim_padded), [block_m, head_dim_padded], gl.int8)
    k_desc = descriptor(k_int8.view(-1, head_dim_padded), [block_n, head_dim_padded], gl.int8)
    v_desc = descriptor(v_fp8_t.view(-1, v_fp8_t.shape[-1]), [head_dim_padded, block_n], gl.float8e4nv)
    sage_attn_gluon_kernel[attention_grid(out, block_m)](
        q_desc, k_desc, v_desc, q_scale, k_scale, v_scale, out, lse, shift if shift is not None else lse,
        *strides(out), heads, heads // kv_heads, kv_heads, q_len, kv_len, head_dim,
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim_padded, NUM_STAGES=num_stages, IS_CAUSAL=is_causal,
        RETURN_LSE=return_lse, WITH_SHIFT=shift is not None, num_warps=num_warps, maxnreg=maxnreg,
    )  # fmt: skip
    return (out, lse) if return_lse else out
