"""The public API, ``sage_fast.sageattn`` and ``sage_fast.scaled_dot_product_attention``, on the CPU.

The Triton path runs under the interpreter (tests/conftest.py) and is held to its sage_ref variant
(``implementation="reference"``, the same blocks and rounding points) with the FlashAttention-style
bound of tests/attention_bounds.py, against an fp64 truth of the very inputs it saw. Hypothesis
draws shapes (lengths 1..150 around tile edges), head dims 8..256, GQA, causal, dtypes, layouts
(HND/NHD, contiguous or strided views) and masks. Outputs are allocated poisoned (NaN), so an
element the kernel never writes fails. The drop-in SDPA is held to torch's own function.
"""

from __future__ import annotations

import doctest
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from attention_bounds import (
    MASK_KINDS,
    assert_fa_bound,
    lse_noise,
    make_mask,
    output_noise,
    poisoned_allocations,
    truth,
)
from hypothesis import example, given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import sage_fast
import sage_fast.api

# Masks built with torch.finfo(float32).min overflow when the kernel multiplies them by log2 e (it then
# clamps them back to a finite value, see sage_ref.masks.base2_bias); the interpreter's NumPy says so.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")

LENGTHS = st.one_of(st.sampled_from([1, 2, 17, 63, 64, 65, 77, 127, 128, 129, 150]), st.integers(1, 150))
HEAD_DIMS = st.sampled_from([8, 40, 40, 64, 64, 128, 256])  # 256 sparingly: the interpreter is slow
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
VIEWS = ("contiguous", "sliced", "transposed")


@dataclass(frozen=True)
class Problem:
    """One sageattn call: tensors in ``layout`` (possibly strided views) and its keyword arguments."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    layout: str
    view: str
    mask_kind: str
    kwargs: dict

    def hnd(self):
        """q, k, v as HND views (what the truth is computed from)."""
        if self.layout == "HND":
            return self.q, self.k, self.v
        return tuple(t.transpose(1, 2) for t in (self.q, self.k, self.v))


def make_input(shape_hnd, layout: str, view: str, dtype, gen, shift: float = 0.0) -> torch.Tensor:
    """A Gaussian tensor of HND shape [B, H, N, D], laid out as ``layout``, as a ``view`` of its storage.

    Values are drawn in fp64 and rounded once to ``dtype`` in the storage, so the fp64 truth of the
    view is exact. sliced: a window of a longer, wider buffer (seq offset 1, every other channel);
    transposed: stored in the other layout's order and transposed into this one.
    """
    b, h, n, d = shape_hnd
    logical = (b, h, n, d) if layout == "HND" else (b, n, h, d)
    if view == "transposed":
        other = (b, n, h, d) if layout == "HND" else (b, h, n, d)
        base = torch.randn(other, generator=gen, dtype=torch.float64) + shift
        return base.to(dtype).transpose(1, 2)
    if view == "sliced":
        seq_dim = 2 if layout == "HND" else 1
        big = list(logical)
        big[seq_dim] += 3
        big[3] *= 2
        base = (torch.randn(big, generator=gen, dtype=torch.float64) + shift).to(dtype)
        return base.narrow(seq_dim, 1, n)[..., ::2]
    return (torch.randn(logical, generator=gen, dtype=torch.float64) + shift).to(dtype)


@st.composite
def problems(draw, *, dtypes=DTYPES, pvs=("fp16", "fp8"), mask_kinds=MASK_KINDS, head_dims=HEAD_DIMS):
    batch, kv_heads, group = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 3]))
    heads, q_len, kv_len, head_dim = kv_heads * group, draw(LENGTHS), draw(LENGTHS), draw(head_dims)
    dtype, layout, view = draw(st.sampled_from(dtypes)), draw(st.sampled_from(["HND", "NHD"])), draw(st.sampled_from(VIEWS))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    k_bias = draw(st.sampled_from([0.0, 3.0]))  # a channel bias shared by all keys: what smoothing removes
    q = make_input((batch, heads, q_len, head_dim), layout, view, dtype, gen)
    k = make_input((batch, kv_heads, kv_len, head_dim), layout, view, dtype, gen, shift=k_bias)
    v = make_input((batch, kv_heads, kv_len, head_dim), layout, view, dtype, gen)
    mask_kind = draw(st.sampled_from(mask_kinds))
    kwargs = dict(
        tensor_layout=layout,
        is_causal=draw(st.booleans()),
        sm_scale=draw(st.sampled_from([None, 0.05, 0.3])),
        smooth_k=draw(st.booleans()),
        pv=draw(st.sampled_from(pvs)),
        attn_mask=make_mask(mask_kind, batch, heads, q_len, kv_len, draw(st.integers(0, 2**31))),
    )
    return Problem(q, k, v, layout, view, mask_kind, kwargs)


def snapshot(*tensors):
    return [None if t is None else (t.clone(), t.stride()) for t in tensors]


def assert_untouched(before, *tensors):
    for saved, t in zip(before, tensors):
        if t is not None:
            assert torch.equal(saved[0], t) and saved[1] == t.stride(), "an input was modified"


def check_against_reference(p: Problem, *, elementwise: bool):
    """Triton vs its sage_ref variant vs the fp64 truth, for out and lse."""
    before = snapshot(p.q, p.k, p.v, p.kwargs.get("attn_mask"))
    with poisoned_allocations():
        out, lse = sage_fast.sageattn(p.q, p.k, p.v, return_lse=True, implementation="triton", **p.kwargs)
    assert_untouched(before, p.q, p.k, p.v, p.kwargs.get("attn_mask"))
    emul, emul_lse = sage_fast.sageattn(p.q, p.k, p.v, return_lse=True, implementation="reference", **p.kwargs)
    assert out.shape == p.q.shape and out.dtype == p.q.dtype and lse.dtype == torch.float32
    q, k, v = p.hnd()
    sm_scale = p.kwargs.get("sm_scale") or q.shape[-1] ** -0.5
    ref, ref_lse = truth(q, k, v, is_causal=p.kwargs.get("is_causal", False), sm_scale=sm_scale, attn_mask=p.kwargs.get("attn_mask"))
    if p.layout == "NHD":
        ref = ref.transpose(1, 2)
    what = f"{p.layout}/{p.view}/{p.kwargs['pv']}/{p.mask_kind}"
    assert_fa_bound(out, emul, ref, output_noise(p.q.dtype, v), elementwise=elementwise, what=f"out {what}")
    assert_fa_bound(lse, emul_lse, ref_lse, lse_noise(q, k, sm_scale), elementwise=True, what=f"lse {what}")


@given(p=problems(pvs=("fp16",)))
def test_triton_within_bound_of_reference_fp16_pv(p):
    """pv="fp16": bounded on the maximum and element by element."""
    check_against_reference(p, elementwise=True)


@given(p=problems(pvs=("fp8",)))
def test_triton_within_bound_of_reference_fp8_pv(p):
    """pv="fp8": on the maximum; per element a flipped e4m3 rounding of P may exceed the noise term
    where the emulation happens to be right (see tests/attention_bounds.py)."""
    check_against_reference(p, elementwise=False)


@pytest.mark.parametrize("head_dim", [1, 8, 40, 256])
@pytest.mark.parametrize("pv", ["fp16", "fp8"])
def test_head_dims_padded_by_the_kernels(head_dim, pv):
    """head_dim 1..256: the kernels pad HEAD_DIM to a power of two >= 32 and mask the rest."""
    gen = torch.Generator().manual_seed(head_dim)
    q = make_input((1, 2, 77, head_dim), "HND", "contiguous", torch.float16, gen)
    k = make_input((1, 1, 129, head_dim), "HND", "contiguous", torch.float16, gen, shift=2.0)
    v = make_input((1, 1, 129, head_dim), "HND", "contiguous", torch.float16, gen)
    p = Problem(q, k, v, "HND", "contiguous", "none", dict(tensor_layout="HND", is_causal=True, pv=pv))
    check_against_reference(p, elementwise=pv == "fp16")


# --- what sageattention 1.0.6 gets wrong ---------------------------------------------------------------


@pytest.mark.parametrize("kv_len", [65, 129])
@pytest.mark.parametrize("pv", ["fp16", "fp8"])
def test_keys_past_a_tile_edge_get_no_weight(kv_len, pv):
    """kv_len just past a multiple of 64: the tile's padding keys must get no softmax weight (1.0.6 gives
    them weight). Giving 63 phantom keys a score of 0 would pull the output towards 0 by about half."""
    gen = torch.Generator().manual_seed(kv_len)
    q = make_input((1, 2, 40, 64), "HND", "contiguous", torch.float16, gen)
    k = make_input((1, 2, kv_len, 64), "HND", "contiguous", torch.float16, gen)
    v = make_input((1, 2, kv_len, 64), "HND", "contiguous", torch.float16, gen, shift=5.0)  # far from 0
    p = Problem(q, k, v, "HND", "contiguous", "none", dict(tensor_layout="HND", pv=pv))
    check_against_reference(p, elementwise=pv == "fp16")


@pytest.mark.parametrize("implementation", ["triton", "reference"])
def test_constant_keys_give_the_mean_of_v(implementation):
    """All keys equal: smoothing makes every K tile zero (scale 0, 1.0.6 divides by it). Attention is
    uniform, so the output is the mean of V, finite, and lse = q·k·scale + log(kv_len)."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 70, 64, generator=gen).half()
    k = torch.randn(1, 1, 1, 64, generator=gen).half().expand(1, 1, 130, 64)
    v = torch.randn(1, 1, 130, 64, generator=gen).half()
    out, lse = sage_fast.sageattn(q, k, v, return_lse=True, implementation=implementation, pv="fp16")
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    mean = v.double().mean(dim=2, keepdim=True).expand(1, 2, 70, 64)
    torch.testing.assert_close(out.double(), mean, atol=output_noise(torch.float16, v), rtol=0)
    expected_lse = (q.double() @ k[:, :, :1].double().transpose(-1, -2))[..., 0] / 8 + torch.log(torch.tensor(130.0))
    torch.testing.assert_close(lse.double(), expected_lse, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("pv", ["fp16", "fp8"])
def test_tiles_and_channels_too_small_to_scale_give_finite_outputs(pv):
    """A Q tile, a K tile after smoothing and a V channel whose largest |value| is ≈ 1e-37: 127 / max (448 / max for
    V) overflows fp32, so they quantize to 0 (``sage_ref.quantization.reciprocal_scale``), not to x · inf. The
    outputs are finite, the kernel's equal the emulation's, the tiny V channel reads ≈ 0 and the rows of the tiny
    Q tile see uniform attention (their true scores are ≈ 1e-37): the mean of V."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, n, 32, generator=gen) for n in (70, 130, 130))
    q[:, :, :64] *= 1e-37  # the first query tile
    k[:, :, :] = k[:, :, :1] + 1e-37 * k  # every key ≈ one key: smoothing leaves ≈ 1e-37 in every K tile
    v[..., 0] *= 1e-37  # one V channel
    check_against_reference(Problem(q, k, v, "HND", "contiguous", "none", dict(pv=pv)), elementwise=pv == "fp16")
    for implementation in ("triton", "reference"):
        out = sage_fast.sageattn(q, k, v, pv=pv, implementation=implementation)
        assert torch.isfinite(out).all() and out[..., 0].abs().max() <= 1e-36
        mean = v.mean(dim=2, keepdim=True)[..., 1:].expand(1, 2, 64, 31)
        torch.testing.assert_close(out[:, :, :64, 1:], mean, atol=0.05, rtol=0)


@pytest.mark.parametrize("implementation", ["triton", "reference"])
def test_fp16_pv_range_is_fp16s(implementation):
    """pv="fp16" sums each 128-key tile's p·v in fp16 (the v1 kernel's arithmetic, documented in sageattn): with
    |v| = 511 a tile of equal scores sums to ≈ 65408 and the output is ≈ 511 (fp16 sums round at 32 there, 0.1 %
    of the row after division); with |v| = 600 the tile sum passes
    65504 and the output is inf, not a finite wrong value; pv="fp8" scales V per channel and reads ≈ 600."""
    q = torch.zeros(1, 1, 4, 16, dtype=torch.float16)  # equal scores: p = 1 for every key
    k = torch.randn(1, 1, 128, 16, generator=torch.Generator().manual_seed(0)).half()
    for value, finite in ((511.0, True), (600.0, False)):
        v = torch.full((1, 1, 128, 16), value, dtype=torch.float16)
        out = sage_fast.sageattn(q, k, v, pv="fp16", implementation=implementation)
        assert bool(torch.isfinite(out).all()) == finite
        if finite:
            torch.testing.assert_close(out.float(), torch.full_like(out.float(), value), rtol=2e-3, atol=0)
    out = sage_fast.sageattn(q, k, v, pv="fp8", implementation=implementation)
    torch.testing.assert_close(out.float(), torch.full_like(out.float(), 600.0), rtol=0.07, atol=0)


def test_callers_tensors_are_untouched():
    """1.0.6 subtracts K's mean in place. Here every input, mask included, keeps its values and strides."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (make_input((2, 4, 65, 64), "NHD", "sliced", torch.bfloat16, gen, shift=1.0) for _ in range(3))
    mask = make_mask("full_float", 2, 4, 65, 65, seed=3)
    before = snapshot(q, k, v, mask)
    for implementation in ("triton", "reference"):
        sage_fast.sageattn(q, k, v, tensor_layout="NHD", attn_mask=mask, implementation=implementation)
    assert_untouched(before, q, k, v, mask)


# --- arguments -----------------------------------------------------------------------------------------


def qkv(*shape, dtype=torch.float16):
    return tuple(torch.zeros(shape, dtype=dtype) for _ in range(3))


BAD_CALLS = [
    (dict(q=[1.0]), TypeError, "q must be a torch.Tensor"),
    (dict(k=torch.zeros(1, 2, 9, 8, dtype=torch.float32)), TypeError, "k has dtype"),
    (dict(v=torch.zeros(1, 2, 9, 7, dtype=torch.float16)), ValueError, "v must have the shape of k"),
    (dict(q=torch.zeros(2, 9, 8, dtype=torch.float16)), ValueError, "q must have 4 dimensions"),
    (dict(q=torch.zeros(1, 3, 9, 8, dtype=torch.float16)), ValueError, r"q's heads \(3\) must be a multiple"),
    (dict(q=torch.zeros(1, 2, 9, 300, dtype=torch.float16)), ValueError, "head_dim"),
    (dict(q=torch.zeros(1, 2, 9, 8, dtype=torch.int8)), TypeError, "q must be float16"),
    (dict(tensor_layout="BHND"), ValueError, "tensor_layout"),
    (dict(is_causal=1), TypeError, "is_causal"),
    (dict(smooth_k=None), TypeError, "smooth_k"),
    (dict(return_lse="yes"), TypeError, "return_lse"),
    (dict(sm_scale="0.1"), TypeError, "sm_scale"),
    (dict(sm_scale=float("nan")), ValueError, "sm_scale"),
    (dict(sm_scale=2**1100), ValueError, "sm_scale must be finite"),  # an int past float's range
    (dict(pv=np.array(["fp8", "fp16"])), ValueError, "pv must be one of"),  # not compared elementwise
    (dict(tensor_layout=np.array(["HND"])), ValueError, "tensor_layout must be one of"),
    (dict(pv="int8"), ValueError, "pv"),
    (dict(implementation="cuda"), ValueError, "implementation"),
    (dict(attn_mask=torch.zeros(9, 10)), ValueError, "attn_mask"),
    (dict(attn_mask=torch.zeros(9, 9, dtype=torch.int64)), TypeError, "attn_mask"),
    (dict(q=torch.zeros(1, 2, 9, 8, dtype=torch.float64), implementation="triton"), TypeError, "float64"),
]


def test_numpy_scalars_are_numbers_and_meta_tensors_give_shapes():
    """NumPy scalars pass as torch's SDPA takes them (the same output as the Python float); meta tensors (shapes
    only, no data) get the op's fake implementation: the output's and lse's shapes, as on a real device."""
    q, k, v = (torch.randn(1, 2, 9, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    expected = sage_fast.sageattn(q, k, v, sm_scale=0.25)
    assert torch.equal(sage_fast.sageattn(q, k, v, sm_scale=np.float32(0.25)), expected)
    assert torch.equal(sage_fast.scaled_dot_product_attention(q, k, v, dropout_p=np.float32(0), scale=np.float32(0.25)),
                       sage_fast.scaled_dot_product_attention(q, k, v, scale=0.25))  # fmt: skip
    meta = torch.empty(1, 9, 2, 8, device="meta", dtype=torch.float16)
    out, lse = sage_fast.sageattn(meta, meta, meta, tensor_layout="NHD", return_lse=True)
    assert out.is_meta and out.shape == meta.shape and out.dtype == meta.dtype and lse.shape == (1, 2, 9)


# name -> HND shapes of q and of k, v: a call with nothing to attend, which torch's SDPA answers without an error.
EMPTY_CALLS = {
    "no batch": ((0, 4, 9, 8), (0, 2, 9, 8)),
    "no query": ((2, 4, 0, 8), (2, 2, 9, 8)),
    "no key": ((2, 4, 9, 8), (2, 2, 0, 8)),
}


@pytest.mark.parametrize("implementation", ["triton", "reference"])
@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("case", EMPTY_CALLS)
def test_nothing_to_attend_is_answered_as_torch_does(case, layout, implementation):
    """No batch, query or key: torch's SDPA returns zeros of q's shape (empty, or 0 for queries without keys),
    and so does sageattn, with lse -inf (a row that sees no key, as under a mask) and q's dtype and layout."""
    q_shape, kv_shape = EMPTY_CALLS[case]
    gen = torch.Generator().manual_seed(0)
    q = make_input(q_shape, layout, "sliced", torch.float16, gen)
    k, v = (make_input(kv_shape, layout, "sliced", torch.float16, gen) for _ in range(2))
    hnd = (lambda t: t) if layout == "HND" else (lambda t: t.transpose(1, 2))
    for is_causal in (False, True):
        out, lse = sage_fast.sageattn(q, k, v, tensor_layout=layout, is_causal=is_causal, return_lse=True,
                                      implementation=implementation)  # fmt: skip
        expected = F.scaled_dot_product_attention(*(hnd(t).float() for t in (q, k, v)), enable_gqa=True)
        assert out.shape == q.shape and out.dtype == q.dtype and out.stride() == torch.empty_like(q).stride()
        assert torch.equal(hnd(out).float(), expected)
        assert lse.shape == hnd(q).shape[:3] and lse.dtype == torch.float32 and bool((lse == float("-inf")).all())
    with pytest.raises(ValueError, match="pv must be one of"):  # arguments are still checked
        sage_fast.sageattn(q, k, v, tensor_layout=layout, pv="int8", implementation=implementation)


@pytest.mark.parametrize("case", EMPTY_CALLS)
def test_sdpa_drop_in_with_nothing_to_attend_matches_torch(case):
    q_shape, kv_shape = EMPTY_CALLS[case]
    q, k, v = torch.randn(q_shape), torch.randn(kv_shape), torch.randn(kv_shape)
    for is_causal in (False, True):
        out = sage_fast.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=True)
        assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=True))


@pytest.mark.parametrize("call, error, match", BAD_CALLS, ids=[c[2] for c in BAD_CALLS])
def test_bad_arguments_are_refused_by_name(call, error, match):
    q, k, v = qkv(1, 2, 9, 8)
    call = dict(call)
    args = dict(q=call.pop("q", q), k=call.pop("k", k), v=call.pop("v", v))
    if args["q"] is not q and isinstance(args["q"], torch.Tensor) and args["q"].dtype == torch.float64:
        args["k"], args["v"] = k.double(), v.double()
    with pytest.raises(error, match=match):
        sage_fast.sageattn(args["q"], args["k"], args["v"], **call)


@pytest.mark.parametrize("implementation", ["triton", "reference"])
def test_torchs_default_dtype_changes_nothing(implementation):
    """Under torch.set_default_dtype(torch.float64) (some scientific code sets it) every buffer keeps its dtype."""
    q, k, v = (torch.randn(1, 2, 70, 32, generator=torch.Generator().manual_seed(i)).half() for i in range(3))
    expected = sage_fast.sageattn(q, k, v, return_lse=True, implementation=implementation)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = sage_fast.sageattn(q, k, v, return_lse=True, implementation=implementation)
    finally:
        torch.set_default_dtype(default)
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, expected))


def test_unknown_keywords_are_refused():
    """No **kwargs: a typo is an error, not a silently ignored option (1.0.6 swallows them)."""
    with pytest.raises(TypeError):
        sage_fast.sageattn(*qkv(1, 2, 9, 8), causal=True)


def test_float64_only_with_the_reference():
    q, k, v = qkv(1, 2, 9, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        sage_fast.sageattn(q, k, v)
    assert sage_fast.sageattn(q, k, v, implementation="reference").dtype == torch.float64


def test_triton_on_cpu_without_the_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.setattr(sage_fast.api.attn_int8, "sage_attn_kernel", object())  # what a non-interpreted build has
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        sage_fast.sageattn(*qkv(1, 2, 9, 8), implementation="triton")


@pytest.mark.parametrize(
    "capability, pv, expected",
    [((9, 0), "auto", "fp8"), ((8, 9), "auto", "fp8"), ((8, 0), "auto", "fp16"), ((8, 0), "fp16", "fp16")],
)
def test_pv_auto_picks_fp8_on_sm89_and_later(monkeypatch, capability, pv, expected):
    monkeypatch.setattr(sage_fast.api, "cuda_capability", lambda device: capability)
    assert sage_fast.api.resolve_pv(pv, torch.device("cuda"), "triton") == expected
    assert sage_fast.api.resolve_pv(pv, torch.device("cpu"), "reference") == ("fp16" if pv == "auto" else pv)


def test_fp8_kernels_refused_below_sm89(monkeypatch):
    monkeypatch.setattr(sage_fast.api, "cuda_capability", lambda device: (8, 0))
    with pytest.raises(ValueError, match="pv='fp8' needs"):
        sage_fast.api.resolve_pv("fp8", torch.device("cuda"), "triton")


def test_no_backward_is_an_error_not_a_silent_zero():
    q, k, v = (t.float().requires_grad_() for t in qkv(1, 2, 9, 8))
    out = sage_fast.sageattn(q, k, v)
    with pytest.raises(RuntimeError, match="autograd"):
        out.sum().backward()


# --- torch.compile and the custom op -------------------------------------------------------------------


def small_inputs():
    gen = torch.Generator().manual_seed(5)
    q = make_input((1, 2, 33, 40), "NHD", "contiguous", torch.float16, gen)
    k = make_input((1, 1, 70, 40), "NHD", "contiguous", torch.float16, gen)
    v = make_input((1, 1, 70, 40), "NHD", "contiguous", torch.float16, gen)
    return q, k, v, torch.arange(70)[None, None, None, :] < 50


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_custom_op_passes_opcheck(backend):
    """Schema, fake implementation (shapes, dtypes, strides) and AOT dispatch agree with the real op."""
    q, k, v, mask = small_inputs()
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # NHD storage, HND views: what sageattn passes
    for return_lse in (True, False):
        args = (q, k, v, mask, True, 0.2, True, "fp16", return_lse, backend)
        torch.library.opcheck(torch.ops.sage_fast.sageattn.default, args)


@pytest.mark.parametrize("compile_backend", ["eager", "aot_eager"])
def test_torch_compile_fullgraph_matches_eager(compile_backend):
    """The wrapper (validation, layouts) traces into one graph around the op: no graph break."""
    q, k, v, mask = small_inputs()

    def attend(q, k, v, mask):
        out, lse = sage_fast.sageattn(
            q, k, v, tensor_layout="NHD", attn_mask=mask, return_lse=True, implementation="triton"
        )
        return out * 2, lse

    torch._dynamo.reset()
    compiled = torch.compile(attend, fullgraph=True, backend=compile_backend)
    out, lse = compiled(q, k, v, mask)
    expected, expected_lse = attend(q, k, v, mask)
    assert torch.equal(out, expected) and torch.equal(lse, expected_lse)


class OpRecorder(TorchDispatchMode):
    """Records the name of every op that reaches the dispatcher inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_eager_calls_skip_the_dispatcher_only_where_nothing_watches():
    """A plain eager call runs the op's implementation directly (host time: the dispatcher's wrapper slowed every
    Python frame); under a dispatch mode, a function mode or a recording autograd the op is dispatched as one op,
    and both ways give the same bits."""
    q, k, v, mask = small_inputs()
    assert not sage_fast.api.needs_dispatch((q, k, v, mask))
    assert sage_fast.api.needs_dispatch((q.float().requires_grad_(), k, v))
    with torch.no_grad():
        assert not sage_fast.api.needs_dispatch((q.float().requires_grad_(), k, v))
    direct = sage_fast.sageattn(q, k, v, tensor_layout="NHD", attn_mask=mask, implementation="triton")
    with torch.device("cpu"):
        assert sage_fast.api.needs_dispatch((q, k, v))
        dispatched = sage_fast.sageattn(q, k, v, tensor_layout="NHD", attn_mask=mask, implementation="triton")
    assert torch.equal(dispatched, direct)
    with OpRecorder() as recorder:
        assert sage_fast.api.needs_dispatch((q, k, v))
        watched = sage_fast.sageattn(q, k, v, tensor_layout="NHD", attn_mask=mask, implementation="triton")
    assert "sage_fast.sageattn.default" in recorder.ops and not any("empty" in op for op in recorder.ops)
    assert torch.equal(watched, direct)


def test_docstring_examples_run():
    failures, attempted = doctest.testmod(sage_fast.api, raise_on_error=False, verbose=False)
    assert attempted > 0 and failures == 0


# --- the drop-in scaled_dot_product_attention ------------------------------------------------------------


@st.composite
def sdpa_problems(draw):
    batch, kv_heads, group = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.sampled_from([1, 2]))
    q_len, kv_len, head_dim = draw(LENGTHS), draw(LENGTHS), draw(st.sampled_from([8, 40, 64]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    q = torch.randn(batch, kv_heads * group, q_len, head_dim, generator=gen)
    k = torch.randn(batch, kv_heads, kv_len, head_dim, generator=gen)
    v = torch.randn(batch, kv_heads, kv_len, head_dim, generator=gen)
    mask_kind = draw(st.sampled_from(("none", "causal", "key_padding_bool", "full_float", "bool_2d")))
    mask = None if mask_kind == "causal" else make_mask(mask_kind, batch, kv_heads * group, q_len, kv_len, seed=1)
    return q, k, v, mask, mask_kind == "causal", draw(st.sampled_from([None, 0.2]))


@given(problem=sdpa_problems())
@example(problem=(*(torch.randn(1, 2, n, 16) for n in (100, 30, 30)), None, True, None)).via("q_len > kv_len, causal")
@example(problem=(*(torch.randn(1, 2, n, 16) for n in (30, 100, 100)), None, True, None)).via("q_len < kv_len, causal")
def test_sdpa_drop_in_matches_torch(problem):
    """torch's semantics, top-left causal included: held to torch's fp64 SDPA, FlashAttention-style, with
    the emulation given torch's mask written out explicitly (independent of how the drop-in translates it)."""
    q, k, v, mask, is_causal, scale = problem
    enable_gqa = q.shape[1] != k.shape[1]
    out = sage_fast.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                                 enable_gqa=enable_gqa)  # fmt: skip
    mask64 = mask.double() if mask is not None and mask.dtype != torch.bool else mask
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask64,
                                              is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)  # fmt: skip
    explicit = mask
    if is_causal:
        explicit = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril()  # torch's top-left rule
    emul = sage_fast.sageattn(q, k, v, attn_mask=explicit, sm_scale=scale, pv="fp16", implementation="reference")
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_fa_bound(out, emul, expected, output_noise(q.dtype, v), elementwise=False, what="sdpa")
    # And near torch's own fp32 result; the quantization error on these inputs is ~1e-2 of max|v|.
    reference32 = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                                 enable_gqa=enable_gqa)  # fmt: skip
    assert (out - reference32).abs().max() <= 0.05 * v.abs().max()


SDPA_BAD_CALLS = [
    (dict(dropout_p=0.1), ValueError, "dropout_p"),
    (dict(is_causal=True, attn_mask=torch.ones(9, 9, dtype=torch.bool)), ValueError, "attn_mask must be None"),
    (dict(query=torch.zeros(2, 9, 8)), ValueError, "query must be 4-d"),
    (dict(key=torch.zeros(1, 1, 9, 8), value=torch.zeros(1, 1, 9, 8)), ValueError, "enable_gqa=True"),
    (dict(scale="x"), TypeError, "scale"),
    (dict(scale=float("inf")), ValueError, "scale must be finite"),
    (dict(query=torch.zeros(1, 2, 9, 8, dtype=torch.float64)), TypeError, "key has dtype"),
    (dict(value=torch.zeros(1, 2, 9, 6)), ValueError, "value must have the shape of key"),
]


@pytest.mark.parametrize("call, error, match", SDPA_BAD_CALLS, ids=[c[2] for c in SDPA_BAD_CALLS])
def test_sdpa_refuses_what_it_cannot_honour(call, error, match):
    args = dict(query=torch.zeros(1, 2, 9, 8), key=torch.zeros(1, 2, 9, 8), value=torch.zeros(1, 2, 9, 8))
    args.update(call)
    with pytest.raises(error, match=match):
        sage_fast.scaled_dot_product_attention(**args)
