"""Pieces every attention rung shares: the key-range of a query tile, masks, the softmax step.

Kernels index tensors through explicit strides ``[batch, head, token, channel]``, so HND,
NHD and any strided view are read in place, without a copy.
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
FP32_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def key_range(start_m, q_len, kv_len, BLOCK_M: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """The keys [0, hi) a query tile starting at ``start_m`` can see.

    Causal is bottom-right aligned: query i sees key j iff j <= i + kv_len - q_len, so
    the tile's last row sees keys up to start_m + BLOCK_M - 1 + kv_len - q_len.
    """
    if IS_CAUSAL:
        # May be <= 0: the tile's rows see no key and the loop does not run.
        hi = tl.minimum(kv_len, start_m + BLOCK_M + kv_len - q_len)
    else:
        hi = kv_len
    return hi


@triton.jit
def unmasked_range(start_m, q_len, kv_len, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """The keys [0, mid) every row of the tile sees, in whole BLOCK_N tiles: no mask needed there.

    Past mid only the causal diagonal and the kv_len tail remain, a tile or two per row tile.
    """
    mid = kv_len // BLOCK_N * BLOCK_N
    if IS_CAUSAL:
        # The tile's first row sees keys <= start_m + kv_len - q_len.
        mid = tl.minimum(mid, tl.maximum(start_m + kv_len - q_len + 1, 0) // BLOCK_N * BLOCK_N)
    return mid


@triton.jit
def visible(offs_m, offs_n, q_len, kv_len, IS_CAUSAL: tl.constexpr):
    """[BLOCK_M, BLOCK_N] mask of the scores that exist: keys past kv_len and, if causal, future keys are out."""
    mask = offs_n[None, :] < kv_len
    if IS_CAUSAL:
        mask = mask & (offs_n[None, :] <= offs_m[:, None] + (kv_len - q_len))
    return mask


@triton.jit
def max_halves(x):
    """x [R, N] -> [R, N/2]: the elementwise maximum of the tile's left and right key halves."""
    rows: tl.constexpr = x.shape[0]
    keys: tl.constexpr = x.shape[1]
    left, right = tl.split(tl.permute(tl.reshape(x, [rows, 2, keys // 2]), [0, 2, 1]))
    return tl.maximum(left, right)


@triton.jit
def row_max(x):
    """max over axis 1 of x [R, N] (N a power of two <= 256) as a tree: the same value as ``tl.max(x, 1)``,
    since max is exact in any order, on a shorter dependency chain.

    ``tl.max`` folds a thread's share of a row one element after another: 31 dependent maxima per row at
    N = 128 on an MMA accumulator (each thread holds 32 of a row's keys), and the exponentials of the
    softmax wait for the end of that chain. Halving the tile while more than 8 keys remain takes the
    maximum of two halves whose elements a thread holds side by side: in an MMA accumulator the top bits
    of the key index select registers (c = 8g + 2q + j, q = lane % 4), so each halving is independent
    per-thread maxima, and the chain is five deep; ``tl.max`` then reduces the last 8 keys (two per
    thread, four lanes). Same instruction count; kernel alone +1-2.5 % at head_dim 64, no change at 128
    (H200); the Gluon kernel keeps ``gl.max``, where the tree lost 2-3 % (docs/notes.md).
    """
    if x.shape[1] > 128:
        x = max_halves(x)
    if x.shape[1] > 64:
        x = max_halves(x)
    if x.shape[1] > 32:
        x = max_halves(x)
    if x.shape[1] > 16:
        x = max_halves(x)
    if x.shape[1] > 8:
        x = max_halves(x)
    return tl.max(x, 1)


@triton.jit
def softmax_step(s, m_i, l_i, P_LOG2: tl.constexpr):
    """One online-softmax step on base-2 logits s [BLOCK_M, BLOCK_N] (masked entries = -inf).

    Returns (p, alpha, m_new, l_new): p = exp2(s - m_new + P_LOG2) = 2^P_LOG2 · softmax
    numerator (P_LOG2 = log2 448 puts fp8's P straight into [0, 448]; 0 otherwise),
    alpha = exp2(m_i - m_new) rescales what was accumulated, l_new = alpha · l_i + rowsum(p).
    A row with no visible key yet keeps m = -inf; subtracting 0 instead keeps NaN out of it.
    """
    m_new = tl.maximum(m_i, row_max(s))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - (m_safe - P_LOG2)[:, None])
    l_new = l_i * alpha + tl.sum(p, 1)
    return p, alpha, m_new, l_new


@triton.jit
def softmax_step_int(s_int, scale, m_i, l_i, P_LOG2: tl.constexpr):
    """``softmax_step`` for an unmasked tile of int32 scores s_int with logits s_int · scale.

    scale = q_scale · k_scale >= 0, so rowmax(s_int · scale) = rowmax(s_int) · scale exactly,
    and p = exp2(s_int · scale - m_new + P_LOG2) is one FMA and one exp2 per score: no
    separate multiply, no mask, no guard (every row sees every key of the tile, so m is finite).
    """
    s = s_int.to(tl.float32)
    m_new = tl.maximum(m_i, row_max(s) * scale)
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(tl.fma(s, scale, -(m_new - P_LOG2)[:, None]))
    l_new = l_i * alpha + tl.sum(p, 1)
    return p, alpha, m_new, l_new


@triton.jit
def operand_key_order(x):
    """x [R, N] with its N keys relabelled, within every 32, into the order an 8-bit MMA operand wants.

    An int32/fp32 MMA accumulator (wgmma on sm90, mma.sync on sm89) gives each thread two adjacent
    columns of every eight, c = 8g + 2q + j (q = lane % 4, j in {0, 1}), but an 8-bit A operand wants
    four adjacent k of every sixteen, k = 16·g1 + 4q + 2·g0 + j (g = 2·g1 + g0). P·V sums over keys,
    so it is unchanged when P's columns and V's rows are relabelled alike; with the relabelling
    ``out[:, k] = x[:, c]`` (a rotation of bits 1-3 of the key index) every thread already holds its
    operand, and converting P to it is a register renaming instead of shuffles: on rung 5's sm90
    build 32 shuffles, 36 selects and 32 byte permutes less per thread (docs/notes.md). quant.py
    stores V̂ᵀ's keys in this order, so the kernels apply it to P only.
    """
    rows: tl.constexpr = x.shape[0]
    keys: tl.constexpr = x.shape[1]
    x = tl.reshape(x, [rows, keys // 32, 2, 2, 4, 2])  # (g1, g0, q, j) within 32 keys
    return tl.reshape(tl.permute(x, [0, 1, 2, 4, 3, 5]), [rows, keys])  # -> (g1, q, g0, j)


@triton.jit
def finish(acc, m_i, l_i, P_LOG2: tl.constexpr):
    """out = acc / l (0 for a row that saw no key) and its base-2 log-sum-exp m + log2 l - P_LOG2 (-inf there)."""
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse2 = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe) - P_LOG2)
    return out, lse2


@triton.jit
def bias_base2(bias, IS_BOOL: tl.constexpr):
    """An attention-mask tile as an additive bias on base-2 logits (``sage_ref.masks.base2_bias``).

    bool (True = attend) -> 0 / -inf; a float bias b in natural-log units -> b · log2 e, clamped
    to -FP32_MAX where only the conversion or the product overflowed, so a finite bias (torch.finfo.min masks,
    fp64's among them) stays finite.
    """
    if IS_BOOL:
        bias2 = tl.where(bias != 0, 0.0, float("-inf"))
    else:
        bias32 = bias.to(tl.float32)
        bias2 = bias32 * LOG2E
        if bias.dtype == tl.float64:  # fp64's finite range passes fp32's: -inf after the conversion may be finite
            finite = bias != float("-inf")
        else:  # compared in fp32: the interpreter computes on bf16 wrongly (tests/conftest.py)
            finite = bias32 != float("-inf")
        bias2 = tl.where((bias2 == float("-inf")) & finite, -FP32_MAX, bias2)
    return bias2


@triton.jit
def nan_poisoned(amax, poison):
    """amax + Σ 0·x: the hardware's max drops NaN, but 0·NaN = 0·inf = NaN survives a sum,
    so a non-finite input makes its scale NaN instead of quantizing to finite garbage."""
    return amax + poison
