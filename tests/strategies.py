"""Hypothesis strategies shared by every attention test: awkward shapes, GQA groups, dtypes, input data.

Shapes are HND: q [batch, heads, q_len, head_dim], k and v [batch, kv_heads, kv_len, head_dim].
Lengths mix sizes that sit on and next to tile edges (1, 15-17, 63-65, 77, 127-129, 255-257, 300)
with arbitrary ones, because tail masks are where kernels break; powers of two alone prove little.

Tensor values are not drawn element by element (slow, and Hypothesis shrinks them poorly): a drawn
seed feeds ``torch.Generator``, so a failure is still reproducible and shrinks to a small shape.
Values are made in fp64 and then cast, so ``inp.q.double()`` is exactly what the function under
test saw and an fp64 truth computed from it carries no input-rounding error.

Use from any test module (reference or kernel)::

    from strategies import attention_inputs

    @given(attention_inputs(max_len=128, max_head_dim=64, dtypes=(torch.float16,)))
    def test_something(inp):
        out = f(inp.q, inp.k, inp.v, is_causal=inp.is_causal)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

AWKWARD_LENGTHS = (1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 77, 100, 127, 128, 129, 191, 255, 256, 257, 300)
HEAD_DIMS = (16, 24, 32, 40, 48, 64, 72, 80, 96, 112, 128, 160, 192, 256)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BLOCK_SIZES = (1, 7, 16, 17, 32, 64, 77, 128, 256)


def _mix(special, low: int, high: int) -> st.SearchStrategy[int]:
    """Mostly the special sizes within [low, high], sometimes any integer there."""
    picks = [n for n in special if low <= n <= high]
    anything = st.integers(low, high)
    return st.one_of(st.sampled_from(picks), anything) if picks else anything


def lengths(max_len: int = 300, min_len: int = 1) -> st.SearchStrategy[int]:
    """Sequence lengths in [min_len, max_len], biased towards tile edges and 77."""
    return _mix(AWKWARD_LENGTHS, min_len, max_len)


def head_dims(min_head_dim: int = 16, max_head_dim: int = 256) -> st.SearchStrategy[int]:
    """Head dims in [min_head_dim, max_head_dim], biased towards the ones models use."""
    return _mix(HEAD_DIMS, min_head_dim, max_head_dim)


def block_sizes(max_block: int = 256) -> st.SearchStrategy[int]:
    """Tile sizes (BLOCK_M / BLOCK_N): powers of two and awkward ones, including 1."""
    return _mix(BLOCK_SIZES, 1, max_block)


@dataclass(frozen=True)
class AttentionShape:
    """Sizes of one attention problem (HND layout); ``group`` query heads share a KV head."""

    batch: int
    kv_heads: int
    group: int
    q_len: int
    kv_len: int
    head_dim: int

    @property
    def heads(self) -> int:
        return self.kv_heads * self.group

    @property
    def q_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.heads, self.q_len, self.head_dim)

    @property
    def kv_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.kv_heads, self.kv_len, self.head_dim)


@st.composite
def attention_shapes(
    draw,
    *,
    max_len: int = 300,
    min_head_dim: int = 16,
    max_head_dim: int = 256,
    max_batch: int = 2,
    max_kv_heads: int = 2,
    max_group: int = 4,
    same_length: bool | None = None,
) -> AttentionShape:
    """An :class:`AttentionShape`. same_length: True forces q_len == kv_len (self-attention), False forbids
    it (cross-attention, a KV cache), None draws either, half of the time each."""
    q_len = draw(lengths(max_len))
    equal = draw(st.booleans()) if same_length is None else same_length
    kv_len = q_len if equal else draw(lengths(max_len).filter(lambda n: n != q_len or same_length is None))
    return AttentionShape(
        batch=draw(st.integers(1, max_batch)),
        kv_heads=draw(st.integers(1, max_kv_heads)),
        group=draw(st.integers(1, max_group)),
        q_len=q_len,
        kv_len=kv_len,
        head_dim=draw(head_dims(min_head_dim, max_head_dim)),
    )


@dataclass(frozen=True)
class AttentionInputs:
    """q, k, v on one device, with the causal flag and the shape they were drawn for."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    is_causal: bool
    shape: AttentionShape

    @property
    def qkv(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.q, self.k, self.v


def make_qkv(shape: AttentionShape, seed: int, *, k_bias: float = 0.0, q_gain: float = 1.0):
    """Gaussian q, k, v in fp64 on the CPU: q ~ q_gain · N(0, 1), v ~ N(0, 1), and
    k ~ N(0, 1) + k_bias · b with one b ~ N(0, 1) per (batch, kv_head, channel) shared by all tokens,
    the channel bias real models' K carry (what SageAttention's smoothing removes)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*size):
        return torch.randn(*size, generator=gen, dtype=torch.float64)

    q = q_gain * randn(*shape.q_shape)
    k = randn(*shape.kv_shape) + k_bias * randn(shape.batch, shape.kv_heads, 1, shape.head_dim)
    v = randn(*shape.kv_shape)
    return q, k, v


def fixed_inputs(
    shape: AttentionShape, *, dtype=torch.float64, is_causal=False, seed=0, k_bias=0.0, q_gain=1.0, device="cpu"
) -> AttentionInputs:
    """One concrete problem, for ``@example`` (pinning a shape that once failed) and for benchmarks."""
    q, k, v = (t.to(device=device, dtype=dtype) for t in make_qkv(shape, seed, k_bias=k_bias, q_gain=q_gain))
    return AttentionInputs(q, k, v, is_causal, shape)


def randn_like(t: torch.Tensor, seed: int, scale: float = 1.0) -> torch.Tensor:
    """scale · N(0, 1) with t's shape, dtype and device, reproducible from ``seed`` (draw the seed)."""
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(t.shape, generator=gen, dtype=torch.float64)).to(device=t.device, dtype=t.dtype)


@st.composite
def attention_inputs(
    draw,
    *,
    shapes: st.SearchStrategy[AttentionShape] | None = None,
    max_len: int = 300,
    min_head_dim: int = 16,
    max_head_dim: int = 256,
    max_group: int = 4,
    dtypes=FLOAT_DTYPES,
    causal: bool | None = None,
    k_biases=(0.0,),
    q_gains=(1.0,),
    device="cpu",
) -> AttentionInputs:
    """Inputs for one attention call.

    shapes: a strategy of :class:`AttentionShape` (default: :func:`attention_shapes` with the limits
    given here). dtypes, k_biases, q_gains: values to sample from (see :func:`make_qkv`; q_gain > 1
    gives sharp attention). causal: a fixed flag, or None to draw it.
    """
    if shapes is None:
        shapes = attention_shapes(
            max_len=max_len, min_head_dim=min_head_dim, max_head_dim=max_head_dim, max_group=max_group
        )
    shape = draw(shapes)
    dtype = draw(st.sampled_from(dtypes))
    is_causal = draw(st.booleans()) if causal is None else causal
    return fixed_inputs(
        shape,
        dtype=dtype,
        is_causal=is_causal,
        seed=draw(seeds()),
        k_bias=draw(st.sampled_from(k_biases)),
        q_gain=draw(st.sampled_from(q_gains)),
        device=device,
    )


def seeds() -> st.SearchStrategy[int]:
    """Seeds for :func:`make_qkv` and :func:`randn_like`."""
    return st.integers(0, 2**32 - 1)
