"""The fp8-P·V SageAttention kernel in Gluon, laid out like FlashAttention-3 (sm90 only).

Same arithmetic as ``attn_int8.sage_attn_kernel`` with ``PV_FP8`` and no attention mask: per key tile j

    S_j  = (Q̂ K̂_jᵀ, int8 wgmma, int32) · q_scale · k_scale_j
    P_j  = exp2(S_j - m_j + log2 448)                  # e4m3, in [0, 448]
    PV_j = P_j · V̂_j (fp8 wgmma from a zero fp32 accumulator)
    acc  = alpha_j · acc + PV_j                       # fp32 across tiles

but scheduled by hand, in three warp-specialized partitions of one program (128 query rows):

- a producer warp (``producer``, 40 registers) copies Q̂'s two 64-row tiles once and streams K̂ / V̂ᵀ
  tiles through NUM_STAGES shared-memory slots by TMA: ``ready[slot]`` says a tile landed,
  ``empty[slot]`` (two arrivals) that both consumers are done with it;
- two consumer warpgroups (``consumer``, 232 registers each, 64 rows each) share every K̂/V̂ tile.
  Each iteration issues S_j and PV_{j-1} as asynchronous wgmmas, waits only for S_j
  (``warpgroup_mma_wait(1)``) and runs tile j's softmax while PV_{j-1} is on the tensor cores
  (FA3's intra-warpgroup overlap), then adds PV_{j-1} into acc with its own tile's alpha;
- the two consumers take turns issuing their wgmmas (``turn`` mbarriers, FA3's ping-pong), so one
  warpgroup's softmax runs while the other's products do.

The result is the same sequence of roundings as the Triton kernel's, one tile later. P̂_j waits for its
wgmma in shared memory (one buffer per consumer: P̂_j is written after PV_{j-1} finished), not in
registers: a P̂ carried across iterations in registers is 64 separate 8-bit values per thread at the loop
boundary, re-packed into 16 registers every tile, and carrying S_{j+1}'s in-flight accumulator instead makes ptxas serialize the wgmmas (C7514);
packed into 32-bit words for the trip, they cost more instructions than the shared-memory barriers they
save (docs/notes.md). Keys past kv_len in the last tile are another head's codes (or zeros), masked. Gluon has no
interpreter: this kernel runs only on an sm90 GPU.
"""

import functools

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

from .launch import cuda_capability, lse_buffer, strides

LN2: gl.constexpr = gl.constexpr(0.6931471805599453)
LOG2_448: gl.constexpr = gl.constexpr(8.807354922057604)
CONSUMERS = 2  # warpgroups per program, BLOCK_M query rows each


@gluon.jit
def tile_counts(start_m, q_len, kv_len, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr):
    """(n_tiles, n_full) for the rows [start_m, start_m + BLOCK_M): key tiles [0, n_tiles) are visible to some
    row, [0, n_full) to every row (no mask needed); causal is bottom-right aligned (``common.key_range``)."""
    if IS_CAUSAL:
        hi = gl.minimum(kv_len, start_m + BLOCK_M + kv_len - q_len)
        n_full = gl.minimum(kv_len // BLOCK_N, gl.maximum(start_m + kv_len - q_len + 1, 0) // BLOCK_N)
    else:
        hi = kv_len
        n_full = kv_len // BLOCK_N
    return gl.maximum(gl.cdiv(hi, BLOCK_N), 0), n_full


@gluon.jit
def producer(q_desc, k_desc, v_desc, q_bufs, k_bufs, v_bufs, q_bar, ready, empty, q_row, k_row, v_row, n_tiles,
             BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, PV_FP8: gl.constexpr):  # fmt: skip
    """The copy partition: both consumers' Q̂ tiles, then K̂ / V̂ᵀ tile t into slot t % NUM_STAGES once both
    consumers released tile t - NUM_STAGES."""
    mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row, 0], q_bar, q_bufs.index(0))
    tma.async_copy_global_to_shared(q_desc, [q_row + BLOCK_M, 0], q_bar, q_bufs.index(1))
    for t in range(n_tiles):
        slot = t % NUM_STAGES
        mbarrier.wait(empty.index(slot), ((t // NUM_STAGES) & 1) ^ 1, pred=t >= NUM_STAGES)
        bar = ready.index(slot)
        mbarrier.expect(bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [k_row + t * BLOCK_N, 0], bar, k_bufs.index(slot))
        if PV_FP8:  # V̂ᵀ [B·Hkv·Dp, Npad]: rows v_row = kv head · Dp, keys along the columns
            tma.async_copy_global_to_shared(v_desc, [v_row, t * BLOCK_N], bar, v_bufs.index(slot))
        else:  # V [B·Hkv, N, D]: keys past N (and channels past D) arrive as zeros, never another head's values
            tma.async_copy_global_to_shared(v_desc, [v_row, t * BLOCK_N, 0], bar, v_bufs.index(slot))


@gluon.jit
def take_turn(turn, ME: gl.constexpr, phase):
    """Wait until the other consumer has issued its wgmmas; returns the phase of our next turn."""
    mbarrier.wait(turn.index(ME), phase)
    return phase ^ 1


@gluon.jit
def operand_key_order(x):
    """``common.operand_key_order`` in Gluon: x [R, N]'s keys relabelled within every 32 as V̂ᵀ stores them."""
    rows: gl.constexpr = x.shape[0]
    keys: gl.constexpr = x.shape[1]
    x = gl.reshape(x, [rows, keys // 32, 2, 2, 4, 2])
    return gl.reshape(gl.permute(x, [0, 1, 2, 4, 3, 5]), [rows, keys])


@gluon.jit
def store_p(p_bufs, p, index, PV_FP8: gl.constexpr):
    """P̂ = e4m3(p) (keys in V̂ᵀ's order) or fp16(p) into P buffer ``index``, visible to the consumer's next
    wgmma (all its warps wrote)."""
    if PV_FP8:
        p_bufs.index(index).store(operand_key_order(p.to(p_bufs.dtype)))
    else:
        p_bufs.index(index).store(p.to(p_bufs.dtype))
    fence_async_shared()
    gl.thread_barrier()


@gluon.jit
def softmax(s_int, scale, m_i, l_i, t, offs_m, q_len, kv_len,
            BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr, MASKED: gl.constexpr, P_LOG2: gl.constexpr):  # fmt: skip
    """One online-softmax step on tile t's int32 scores: (p, alpha, m_new, l_new), as in
    ``common.softmax_step_int`` (unmasked: one FMA per score into exp2) and ``common.softmax_step``
    (MASKED: scores outside ``visible`` are -inf; a row with no visible key keeps m = -inf); P_LOG2 = log2 448
    puts an fp8 P straight into [0, 448], 0 leaves an fp16 P in [0, 1]."""
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
        p = gl.exp2(s - (m_safe - P_LOG2)[:, None])
    else:
        m_new = gl.maximum(m_i, gl.max(s, 1) * scale)
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(gl.fma(s, scale, -(m_new - P_LOG2)[:, None]))
    l_new = l_i * alpha + gl.sum(p, 1)
    return p, alpha, m_new, l_new


@gluon.jit
def block_pv(p_smem, v_bufs, slot, o_layout: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
             HEAD_DIM: gl.constexpr, PV_FP8: gl.constexpr):  # fmt: skip
    """Issue P̂·V̂ of one key tile as an asynchronous wgmma from a zero accumulator: e4m3 × e4m3 into fp32
    (V̂ᵀ's tile read transposed), or fp16 × fp16 into fp16 (SageAttention v1's accumulator inside a block)."""
    if PV_FP8:
        v = v_bufs.index(slot).permute((1, 0))
        zero = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
    else:
        v = v_bufs.index(slot).reshape([BLOCK_N, HEAD_DIM])
        zero = gl.zeros([BLOCK_M, HEAD_DIM], gl.float16, o_layout)
    return warpgroup_mma(p_smem, v, zero, use_acc=False, is_async=True)


@gluon.jit
def step(q_smem, k_bufs, v_bufs, p_bufs, ready, empty, turn, acc, alpha_prev, m_i, l_i, t, phase,
         q_scale, KScaleRow, offs_m, q_len, kv_len,
         ME: gl.constexpr, s_layout: gl.constexpr, o_layout: gl.constexpr,
         BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr,
         IS_CAUSAL: gl.constexpr, MASKED: gl.constexpr, PV_FP8: gl.constexpr, P_LOG2: gl.constexpr):  # fmt: skip
    """Iteration t >= 1 of consumer ME: S_t and PV_{t-1} in flight together, the softmax of S_t while
    PV_{t-1} runs. Returns (acc, alpha_t, m_i, l_i, phase); acc then holds tiles < t at tile t-1's maximum."""
    slot = t % NUM_STAGES
    prev = (t - 1) % NUM_STAGES
    mbarrier.wait(ready.index(slot), (t // NUM_STAGES) & 1)
    phase = take_turn(turn, ME, phase)
    s_tok = warpgroup_mma(q_smem, k_bufs.index(slot).permute((1, 0)),
                          gl.zeros([BLOCK_M, BLOCK_N], gl.int32, s_layout), use_acc=False, is_async=True)
    pv_tok = block_pv(p_bufs.index(ME), v_bufs, prev, o_layout, BLOCK_M, BLOCK_N, HEAD_DIM, PV_FP8)
    mbarrier.arrive(turn.index(1 - ME), count=1)
    s_int = warpgroup_mma_wait(1, deps=(s_tok,))  # S_t done, PV_{t-1} may still run
    scale = q_scale * gl.load(KScaleRow + t)
    p, alpha, m_i, l_i = softmax(s_int, scale, m_i, l_i, t, offs_m, q_len, kv_len, BLOCK_N, IS_CAUSAL, MASKED, P_LOG2)
    pv = warpgroup_mma_wait(0, deps=(pv_tok,))
    mbarrier.arrive(empty.index(prev), count=1)  # this consumer is done with tile t-1
    acc = gl.fma(acc, alpha_prev[:, None], pv.to(gl.float32))
    store_p(p_bufs, p, ME, PV_FP8)  # PV_{t-1}, the last reader of this buffer, is done
    return acc, gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), m_i, l_i, phase


@gluon.jit
def consumer(ME: gl.constexpr, q_bufs, k_bufs, v_bufs, p_bufs, q_bar, ready, empty, turn,
             QScale, KScale, VScale, Out, Lse, Shift, so_b, so_h, so_n, so_d,
             pid_m, bh, b, h, kv_bh, q_len, kv_len, head_dim, n_tiles, n_full, n_turns_other,
             BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr,
             IS_CAUSAL: gl.constexpr, RETURN_LSE: gl.constexpr, WITH_SHIFT: gl.constexpr,
             PV_FP8: gl.constexpr):  # fmt: skip
    """Consumer warpgroup ME: rows (2 pid_m + ME) · BLOCK_M + [0, BLOCK_M) of head (b, h), written to Out (and Lse)."""
    # Register layouts of the two wgmmas' results (k per instruction: 32 for int8 and e4m3, 16 for fp16).
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 32])  # fmt: skip
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 32 if PV_FP8 else 16])  # fmt: skip
    P_LOG2: gl.constexpr = LOG2_448 if PV_FP8 else 0.0
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    q_smem = q_bufs.index(ME)
    q_block = pid_m * 2 + ME
    start_m = q_block * BLOCK_M
    n_blocks = gl.cdiv(q_len, BLOCK_M)  # Q̂'s quantization blocks: BLOCK_M rows each
    q_scale = gl.load(QScale + bh * n_blocks + q_block, mask=q_block < n_blocks, other=0.0)
    KScaleRow = KScale + kv_bh * gl.cdiv(kv_len, BLOCK_N)
    offs_m = start_m + gl.arange(0, BLOCK_M, layout=row_s)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, row_s)
    l_i = gl.zeros([BLOCK_M], gl.float32, row_s)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
    phase = 0
    mbarrier.wait(q_bar, 0)
    if n_tiles > 0:
        # Tile 0: its scores alone (nothing to overlap with yet).
        mbarrier.wait(ready.index(0), 0)
        phase = take_turn(turn, ME, phase)
        s_tok = warpgroup_mma(q_smem, k_bufs.index(0).permute((1, 0)),
                              gl.zeros([BLOCK_M, BLOCK_N], gl.int32, s_layout), use_acc=False, is_async=True)
        mbarrier.arrive(turn.index(1 - ME), count=1)
        s_int = warpgroup_mma_wait(0, deps=(s_tok,))
        scale = q_scale * gl.load(KScaleRow)
        if n_full > 0:
            p, alpha, m_i, l_i = softmax(s_int, scale, m_i, l_i, 0, offs_m, q_len, kv_len, BLOCK_N, IS_CAUSAL, False,
                                         P_LOG2)  # fmt: skip
        else:
            p, alpha, m_i, l_i = softmax(s_int, scale, m_i, l_i, 0, offs_m, q_len, kv_len, BLOCK_N, IS_CAUSAL, True,
                                         P_LOG2)  # fmt: skip
        store_p(p_bufs, p, ME, PV_FP8)
        alpha = gl.convert_layout(alpha, row_o)
        for t in range(1, n_full):
            acc, alpha, m_i, l_i, phase = step(
                q_smem, k_bufs, v_bufs, p_bufs, ready, empty, turn, acc, alpha, m_i, l_i, t, phase,
                q_scale, KScaleRow, offs_m, q_len, kv_len, ME, s_layout, o_layout,
                BLOCK_M, BLOCK_N, HEAD_DIM, NUM_STAGES, IS_CAUSAL, False, PV_FP8, P_LOG2,
            )  # fmt: skip
        for t in range(gl.maximum(n_full, 1), n_tiles):
            acc, alpha, m_i, l_i, phase = step(
                q_smem, k_bufs, v_bufs, p_bufs, ready, empty, turn, acc, alpha, m_i, l_i, t, phase,
                q_scale, KScaleRow, offs_m, q_len, kv_len, ME, s_layout, o_layout,
                BLOCK_M, BLOCK_N, HEAD_DIM, NUM_STAGES, IS_CAUSAL, True, PV_FP8, P_LOG2,
            )  # fmt: skip
        # The last tile's P·V, with nothing left to overlap.
        last = (n_tiles - 1) % NUM_STAGES
        phase = take_turn(turn, ME, phase)
        pv_tok = block_pv(p_bufs.index(ME), v_bufs, last, o_layout, BLOCK_M, BLOCK_N, HEAD_DIM,
                          PV_FP8)  # fmt: skip
        mbarrier.arrive(turn.index(1 - ME), count=1)
        pv = warpgroup_mma_wait(0, deps=(pv_tok,))
        mbarrier.arrive(empty.index(last), count=1)
        acc = gl.fma(acc, alpha[:, None], pv.to(gl.float32))
    # The turns the other consumer still waits for: causal rows 64 further down may see one more tile.
    for _ in range(gl.where(n_tiles > 0, n_tiles + 1, 0), n_turns_other):
        phase = take_turn(turn, ME, phase)
        mbarrier.arrive(turn.index(1 - ME), count=1)

    # out = acc / l (· v_scale for fp8; 0 for a row that saw no key); lse = (m + log2 l - P_LOG2) · ln 2 (+ shift).
    l_o = gl.convert_layout(l_i, row_o)
    l_safe = gl.where(l_o == 0.0, 1.0, l_o)
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    out = acc / l_safe[:, None]
    if PV_FP8:
        out = out * gl.load(VScale + kv_bh * HEAD_DIM + offs_d)[None, :]
    offs_mo = start_m + gl.arange(0, BLOCK_M, layout=row_o)
    out_ptrs = Out + b.to(gl.int64) * so_b + h.to(gl.int64) * so_h + offs_mo[:, None] * so_n + offs_d[None, :] * so_d
    gl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=(offs_mo[:, None] < q_len) & (offs_d[None, :] < head_dim))
    if RETURN_LSE:
        lse = gl.where(l_i == 0.0, float("-inf"), m_i + gl.log2(gl.where(l_i == 0.0, 1.0, l_i)) - P_LOG2) * LN2
        m_ok = offs_m < q_len
        lse_offs = bh.to(gl.int64) * q_len + offs_m
        if WITH_SHIFT:
            lse += gl.load(Shift + lse_offs, mask=m_ok, other=0.0)
        gl.store(Lse + lse_offs, lse, mask=m_ok)


@gluon.jit
def sage_attn_gluon_kernel(
    q_desc, k_desc, v_desc, QScale, KScale, VScale, Out, Lse, Shift,
    so_b, so_h, so_n, so_d,
    heads, group, kv_heads, q_len, kv_len, head_dim,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, NUM_STAGES: gl.constexpr,
    IS_CAUSAL: gl.constexpr, RETURN_LSE: gl.constexpr, WITH_SHIFT: gl.constexpr, PV_FP8: gl.constexpr,
    CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    pid_m = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // heads
    h = bh % heads
    kv_bh = b * kv_heads + h // group
    start_m = pid_m * 2 * BLOCK_M
    n_tiles0, n_full0 = tile_counts(start_m, q_len, kv_len, BLOCK_M, BLOCK_N, IS_CAUSAL)
    n_tiles1, n_full1 = tile_counts(start_m + BLOCK_M, q_len, kv_len, BLOCK_M, BLOCK_N, IS_CAUSAL)
    # Each consumer takes n_tiles + 1 turns (every wgmma issue); the one with fewer tiles passes the rest.
    n_turns0 = gl.where(n_tiles0 > 0, n_tiles0 + 1, 0)
    n_turns1 = gl.where(n_tiles1 > 0, n_tiles1 + 1, 0)

    q_bufs = gl.allocate_shared_memory(gl.int8, [2, BLOCK_M, HEAD_DIM], q_desc.layout)
    k_bufs = gl.allocate_shared_memory(gl.int8, [NUM_STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    if PV_FP8:
        v_bufs = gl.allocate_shared_memory(gl.float8e4nv, [NUM_STAGES, HEAD_DIM, BLOCK_N], v_desc.layout)
    else:
        v_bufs = gl.allocate_shared_memory(gl.float16, [NUM_STAGES, 1, BLOCK_N, HEAD_DIM], v_desc.layout)
    p_dtype: gl.constexpr = gl.float8e4nv if PV_FP8 else gl.float16
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_N], p_dtype)
    p_bufs = gl.allocate_shared_memory(p_dtype, [2, BLOCK_M, BLOCK_N], p_layout)  # one per consumer
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)
    mbarrier.init(turn.index(0), count=1)
    mbarrier.init(turn.index(1), count=1)
    mbarrier.arrive(turn.index(0), count=1)  # consumer 0 issues first

    gl.warp_specialize(
        [
            (consumer, (0, q_bufs, k_bufs, v_bufs, p_bufs, q_bar, ready, empty, turn,
                        QScale, KScale, VScale, Out, Lse, Shift, so_b, so_h, so_n, so_d,
                        pid_m, bh, b, h, kv_bh, q_len, kv_len, head_dim, n_tiles0, n_full0, n_turns1,
                        BLOCK_M, BLOCK_N, HEAD_DIM, NUM_STAGES, IS_CAUSAL, RETURN_LSE, WITH_SHIFT, PV_FP8)),
            (consumer, (1, q_bufs, k_bufs, v_bufs, p_bufs, q_bar, ready, empty, turn,
                        QScale, KScale, VScale, Out, Lse, Shift, so_b, so_h, so_n, so_d,
                        pid_m, bh, b, h, kv_bh, q_len, kv_len, head_dim, n_tiles1, n_full1, n_turns0,
                        BLOCK_M, BLOCK_N, HEAD_DIM, NUM_STAGES, IS_CAUSAL, RETURN_LSE, WITH_SHIFT, PV_FP8)),
            (producer, (q_desc, k_desc, v_desc, q_bufs, k_bufs, v_bufs, q_bar, ready, empty,
                        bh * q_len + start_m, kv_bh * kv_len, kv_bh * HEAD_DIM if PV_FP8 else kv_bh,
                        gl.maximum(n_tiles0, n_tiles1), BLOCK_M, BLOCK_N, NUM_STAGES, PV_FP8)),
        ],
        [4, 1],
        [CONSUMER_REGS, PRODUCER_REGS],
    )  # fmt: skip


@functools.cache
def shared_layout(block_shape: tuple[int, ...], dtype) -> gl.NVMMASharedLayout:
    """The swizzled shared layout the wgmma reads for tiles of ``block_shape``, built once per shape and dtype
    (building it is microseconds of host time per call)."""
    return gl.NVMMASharedLayout.get_default_for(list(block_shape), dtype)


def descriptor(t: torch.Tensor, block_shape: list[int], dtype) -> TensorDescriptor:
    """A TMA descriptor over ``t`` with the swizzled shared layout the wgmma reads."""
    return TensorDescriptor.from_tensor(t, block_shape, shared_layout(tuple(block_shape), dtype))


def launch(q_int8, q_scale, k_int8, k_scale, v, v_scale, *, out_like, head_dim, is_causal, block_m, block_n,
           shift=None, return_lse=False, num_stages=2, consumer_regs=232, producer_regs=40):  # fmt: skip
    """Run ``sage_attn_gluon_kernel`` on quantized inputs (the layouts ``attn_int8.launch`` takes).

    q_int8 [B,H,Nq,Dp], k_int8 [B,Hkv,Nkv,Dp] contiguous; q_scale [B,H,ceil(Nq/block_m)], k_scale
    [B,Hkv,ceil(Nkv/block_n)]. fp8 P·V: v is V̂ᵀ [B,Hkv,Dp,Npad] e4m3 (contiguous) with v_scale [B,Hkv,Dp];
    fp16 P·V (``v_scale`` None): v is V [B,Hkv,Nkv,D] fp16, read through a 3-d descriptor [B·Hkv, Nkv, D] so
    that a tile's keys past Nkv arrive as zeros (a copy only where TMA cannot read it in place: D not a multiple
    of 8 or rows not 16-byte aligned). One program per 2·block_m query rows (a consumer warpgroup per block_m).
    ``consumer_regs`` / ``producer_regs``: the registers per thread each partition gets (``setmaxnreg``;
    2·128·232 + 128·40 fit the SM's 64 Ki). Returns out (and lse [B,H,Nq] fp32, natural log).
    """
    _, heads, q_len, head_dim_padded = q_int8.shape
    kv_heads, kv_len = k_int8.shape[1], k_int8.shape[2]
    pv_fp8 = v_scale is not None
    if out_like.is_cuda and cuda_capability(out_like.device)[0] != 9:
        major, minor = cuda_capability(out_like.device)
        raise ValueError(f"the Gluon kernel needs an sm90 GPU (wgmma, setmaxnreg); this one is sm{major}{minor}")
    if num_stages < 2:
        raise ValueError(f"num_stages={num_stages}: tiles j-1 and j are in use at once, so at least 2")
    if not pv_fp8 and head_dim_padded > 128:
        raise ValueError(f"head_dim={head_dim}: the fp16 P·V kernel's tiles fit shared memory up to head_dim 128")
    out = torch.empty_like(out_like)
    lse = lse_buffer(out, return_lse)
    q_desc = descriptor(q_int8.view(-1, head_dim_padded), [block_m, head_dim_padded], gl.int8)
    k_desc = descriptor(k_int8.view(-1, head_dim_padded), [block_n, head_dim_padded], gl.int8)
    if pv_fp8:
        v_desc = descriptor(v.view(-1, v.shape[-1]), [head_dim_padded, block_n], gl.float8e4nv)
    else:
        v3 = v.reshape(-1, kv_len, head_dim)
        if v3.stride(-1) != 1 or any(st % 8 for st in v3.stride()[:-1]) or v3.data_ptr() % 16:
            v3 = torch.nn.functional.pad(v3, (0, -head_dim % 8))  # contiguous, rows a multiple of 16 bytes
        v_desc = descriptor(v3, [1, block_n, head_dim_padded], gl.float16)
    grid = (-(-q_len // (CONSUMERS * block_m)), out.shape[0] * out.shape[1])
    sage_attn_gluon_kernel[grid](
        q_desc, k_desc, v_desc, q_scale, k_scale, v_scale if pv_fp8 else q_scale, out, lse,
        shift if shift is not None else lse, *strides(out), heads, heads // kv_heads, kv_heads, q_len, kv_len, head_dim,
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim_padded, NUM_STAGES=num_stages, IS_CAUSAL=is_causal,
        RETURN_LSE=return_lse, WITH_SHIFT=shift is not None, PV_FP8=pv_fp8, CONSUMER_REGS=consumer_regs,
        PRODUCER_REGS=producer_regs, num_warps=4,
    )  # fmt: skip
    return (out, lse) if return_lse else out
