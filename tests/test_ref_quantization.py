"""The quantizers and encodings of sage_ref.quantization, checked against their stated error bounds.

INT8: ``s = max_group |x| / 127`` and ``code = round(x · r)`` with ``r = 127 / max_group |x|``, one
division per group and a multiply per element, as the kernels do. Exactly, |x - code · s| <= s / 2.
In fp32 the test allows ``s · 2^-15`` more, because

- r and x · r are each rounded (2^-24 relative), and |x · r| <= 127: at most 127 · 2^-23 < 2^-16
  code units;
- ``round`` is ``trunc(y + 0.5)`` in fp32, and y + 0.5 rounds to 1.0 for the one y = 0.5 - 2^-25
  (every other sum is exact or cannot reach the next integer): 2^-25 code units more;
- s is rounded too (2^-24 relative), which moves code · s by at most 127 · 2^-24 s < 2^-17 s;

together less than 2^-15 s. fp64 input is first rounded to fp32, which adds |x| · 2^-24. FP8 e4m3 has
3 mantissa bits: for |y| >= 2^-6 half an ulp is 2^(floor(log2 |y|) - 4), below it the subnormal spacing
2^-9 gives 2^-10; y = v · (448 / max|v|) itself is off from v / s by three fp32 roundings (< 2^-21 |y|).
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import attention_inputs, block_sizes, lengths

from sage_ref import (
    GRANULARITIES,
    decode_p,
    encode_p,
    quantize_int8,
    quantize_v_fp8,
    quantize_v_int8,
    smooth_k,
    token_groups,
)

SLACK = 2.0**-15
MEDIUM = dict(max_len=260, max_head_dim=128)


def tensors(which="q", **kwargs):
    """A [B, H, N, D] tensor (q, k or v of a drawn attention problem), any float dtype, magnitudes 1e-3..1e3."""
    return st.builds(
        lambda inp, gain: (getattr(inp, which).double() * gain).to(inp.q.dtype),
        attention_inputs(**kwargs),
        st.sampled_from([1e-3, 1.0, 1e3]),
    )


def zero_a_run(x: torch.Tensor, data, dim: int) -> torch.Tensor:
    """Zero a drawn run of indices along ``dim`` (tokens: -2, channels: -1), so whole groups can be zero."""
    n = x.shape[dim]
    start = data.draw(st.integers(0, n - 1), label="zero from")
    stop = data.draw(st.integers(start, n), label="zero to")
    x = x.clone()
    x.narrow(dim, start, stop - start).zero_()
    return x


def div_rn(a: torch.Tensor, b: float) -> torch.Tensor:
    """a / b correctly rounded in a's dtype (tensor / tensor; CUDA computes tensor / float with a reciprocal)."""
    return a / torch.full_like(a, b)


def e4m3_half_ulp(y: torch.Tensor) -> torch.Tensor:
    """Half the spacing of FP8 e4m3 values around y (fp64)."""
    exponent = torch.floor(torch.log2(y.abs().clamp(min=2.0**-6)))
    return torch.exp2(exponent - 4)


def fp32_input_error(x: torch.Tensor) -> torch.Tensor:
    """|x - fp32(x)| bound: 0 for inputs that fp32 holds exactly, |x| · 2^-24 for fp64."""
    return x.double().abs() * 2.0**-24 if x.dtype == torch.float64 else torch.zeros_like(x, dtype=torch.float64)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@given(x=tensors(**MEDIUM), block_size=block_sizes(), warps=st.sampled_from([1, 2, 4]), data=st.data())
def test_quantize_int8_error_within_half_a_step(granularity, x, block_size, warps, data):
    x = zero_a_run(x, data, dim=-2)
    qx = quantize_int8(x, granularity, block_size, warps)
    b, h, n, _ = x.shape

    assert qx.codes.dtype == torch.int8 and qx.codes.shape == x.shape
    assert int(qx.codes.abs().max()) <= 127
    assert torch.equal(qx.group, token_groups(n, granularity, block_size, warps))
    assert qx.scale.dtype == torch.float32
    assert qx.scale.shape == ((1, 1, 1) if granularity == "tensor" else (b, h, int(qx.group.max()) + 1))

    # Each used group's scale is its max |x| / 127 in fp32, and its largest element uses the whole range.
    x32 = x.to(torch.float32)
    dims = (0, 1, 2, 3) if granularity == "tensor" else (-2, -1)
    for g in qx.group.unique().tolist():
        amax = x32[..., qx.group == g, :].abs().amax(dim=dims)
        assert torch.equal(qx.scale[..., g].reshape(amax.shape), div_rn(amax, 127))
        top = qx.codes[..., qx.group == g, :].abs().amax(dim=dims)
        assert bool((top[amax > 0] == 127).all())

    token_scale = qx.token_scale()
    step = token_scale.double()[..., None]
    err = (x.double() - qx.codes.double() * step).abs()
    assert bool((err <= step * (0.5 + SLACK) + fp32_input_error(x)).all()), float((err / step).nan_to_num().max())

    zero = token_scale == 0
    assert bool((qx.codes[zero] == 0).all())
    dequant = qx.dequantize()
    assert bool(dequant.isfinite().all())
    assert torch.equal(dequant, qx.codes.float() * token_scale[..., None])


@given(
    halves=st.lists(st.integers(-127, 126), min_size=1, max_size=64),
    exponent=st.integers(-20, 20),
    granularity=st.sampled_from(GRANULARITIES),
)
def test_quantize_int8_rounds_ties_away_from_zero(halves, exponent, granularity):
    """x / scale = k + 1/2 exactly gives the code away from zero, as trunc(y ± 0.5) on the GPU does
    (torch.round would give the even neighbour). One token holds 127 · 2^e, so scale = 2^e exactly."""
    step = 2.0**exponent
    row = torch.tensor([127.0] + [k + 0.5 for k in halves]) * step
    x = row.reshape(1, 1, 1, -1).to(torch.float32)
    expected = torch.tensor([127] + [k + 1 if k >= 0 else k for k in halves], dtype=torch.int8)
    assert torch.equal(quantize_int8(x, granularity, 64).codes.flatten(), expected)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@given(n=lengths(), block_size=block_sizes(), warps=st.sampled_from([1, 2, 4, 8]))
def test_token_groups_partition_tokens_like_the_kernel(granularity, n, block_size, warps):
    """Two tokens share a scale iff the kernel's thread that dequantizes one also holds the other.

    tensor: all; token: none; block: same tile of block_size; warp: same tile and same warp slice
    of block_size // warps rows (a remainder forms one more slice); thread: same warp slice and the
    same row index mod 8 (the MMA fragment rows one thread holds). Groups never straddle a tile.
    """
    group = token_groups(n, granularity, block_size, warps)
    assert group.shape == (n,) and group.dtype == torch.long and int(group.min()) >= 0
    t = torch.arange(n)
    slice_rows = max(block_size // warps, 1)
    tile, row = t // block_size, t % block_size
    warp, lane = row // slice_rows, row % slice_rows % 8

    def alike(a):
        return a[:, None] == a[None, :]

    same = {
        "tensor": torch.ones(n, n, dtype=torch.bool),
        "token": torch.eye(n, dtype=torch.bool),
        "block": alike(tile),
        "warp": alike(tile) & alike(warp),
        "thread": alike(tile) & alike(warp) & alike(lane),
    }[granularity]
    assert torch.equal(alike(group), same)


@given(v=tensors("v", **MEDIUM), data=st.data())
def test_quantize_v_fp8_round_trip_within_half_an_e4m3_ulp(v, data):
    v = zero_a_run(v, data, dim=-1)
    v_fp8, v_scale = quantize_v_fp8(v)
    assert v_fp8.dtype == torch.float8_e4m3fn and v_scale.shape == (*v.shape[:2], 1, v.shape[3])
    v32 = v.to(torch.float32)
    assert torch.equal(v_scale, div_rn(v32.abs().amax(dim=-2, keepdim=True), 448))

    step = v_scale.double()
    y = v.double() / torch.where(step == 0, 1.0, step)  # the value the cast rounds, up to fp32 roundings
    decoded = v_fp8.double()
    assert bool((decoded.abs() <= 448).all())
    slack = y.abs() * 2.0**-21 + fp32_input_error(v) / torch.where(step == 0, 1.0, step)
    assert bool(((decoded - y).abs() <= e4m3_half_ulp(y) + slack).all())
    assert bool((decoded[(step == 0).expand_as(decoded)] == 0).all())
    amax_channels = step > 0
    assert bool((decoded.abs().amax(dim=-2, keepdim=True)[amax_channels] == 448).all())


@given(v=tensors("v", **MEDIUM))
def test_quantize_v_int8_error_within_half_a_step(v):
    codes, v_scale = quantize_v_int8(v)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) <= 127
    assert torch.equal(v_scale, div_rn(v.to(torch.float32).abs().amax(dim=-2, keepdim=True), 127))
    step = v_scale.double()
    err = (v.double() - codes.double() * step).abs()
    assert bool((err <= step * (0.5 + SLACK) + fp32_input_error(v)).all())


def probabilities():
    """P in [0, 1] as a kernel holds it: exp2(s - rowmax) in fp32, so 1.0 and exact 0 both occur."""
    return st.builds(
        lambda seed, n, spread: torch.exp2(
            -spread * torch.rand(4, n, generator=torch.Generator().manual_seed(seed))
        ).where(torch.arange(n) > 0, 1.0),
        st.integers(0, 2**32 - 1),
        lengths(max_len=300),
        st.sampled_from([0.0, 1.0, 10.0, 40.0, 200.0]),
    )


@pytest.mark.parametrize("encoding", ["fp16", "fp8", "int8"])
@given(p=probabilities())
def test_encode_p_round_trip(encoding, p):
    """fp16: half an fp16 ulp (2^-11 relative, 2^-25 among subnormals); fp8: P · 448 within half an
    e4m3 ulp; int8: round(127 P) / 127 within 1/254. Rounding is monotone and keeps 0 and 1 exact."""
    codes, p_scale = encode_p(p, encoding)
    decoded = decode_p(codes, p_scale)
    assert decoded.dtype == torch.float32 and decoded.shape == p.shape
    err = (decoded.double() - p.double()).abs()
    if encoding == "fp16":
        assert codes.dtype == torch.float16 and p_scale == 1.0
        assert bool((err <= torch.maximum(p.double() * 2.0**-11, torch.full_like(err, 2.0**-25))).all())
    elif encoding == "fp8":
        assert codes.dtype == torch.float8_e4m3fn and p_scale == 1 / 448
        scaled = p.double() * 448
        assert bool(((codes.double() - scaled).abs() <= e4m3_half_ulp(scaled) + scaled * 2.0**-23).all())
    else:
        assert codes.dtype == torch.int8 and p_scale == 1 / 127
        assert int(codes.min()) >= 0 and int(codes.max()) <= 127
        assert bool((err <= 1 / 254 + 2.0**-20).all())
    for exact in (0.0, 1.0):
        assert bool((decoded[p == exact] == exact).all())
    order = p.flatten().argsort()
    assert bool((decoded.flatten()[order].diff() >= 0).all())


@given(k=tensors("k", **MEDIUM, k_biases=(0.0, 10.0)))
def test_smooth_k_subtracts_the_token_mean(k):
    """K_s + mean = K, and every channel of K_s has mean ~0; fp32 (fp64 for fp64 input)."""
    k_s, k_mean = smooth_k(k)
    expected = torch.float64 if k.dtype == torch.float64 else torch.float32
    assert k_s.dtype == k_mean.dtype == expected
    assert k_mean.shape == (*k.shape[:2], 1, k.shape[3])
    ulp = 2.0**-52 if expected == torch.float64 else 2.0**-23
    scale = k.double().abs().amax() * k.shape[-2] * ulp
    torch.testing.assert_close(k_mean.double(), k.double().mean(dim=-2, keepdim=True), rtol=0, atol=float(scale))
    torch.testing.assert_close((k_s + k_mean).double(), k.double(), rtol=0, atol=float(2 * scale))
    assert float(k_s.double().mean(dim=-2).abs().max()) <= 2 * float(scale)


def test_e4m3_half_ulp_matches_torch():
    """The spacing the fp8 bounds use, checked against torch's own e4m3 grid."""
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).double()
    grid = grid[grid.isfinite() & (grid >= 0)].unique()
    gaps = grid.diff()
    assert torch.equal(e4m3_half_ulp(grid[:-1]), gaps / 2)
    assert math.isclose(float(grid.max()), 448.0)


@pytest.mark.parametrize("tiny", [1e-45, 1e-38, 3e-37, 1e-36, 2e-36])
def test_groups_whose_reciprocal_overflows_quantize_to_zero(tiny):
    """127 / max|x| overflows fp32 below ≈ 3.7e-37 and 448 / max|v| below ≈ 1.3e-36: such a group quantizes to
    codes 0 (it dequantizes to 0, within max|x| of every value) instead of x · inf (NaN where x = 0); a group just
    above the line quantizes normally. One group of the tensor is tiny, the others are not."""
    x = torch.randn(1, 2, 128, 16, generator=torch.Generator().manual_seed(0))
    x[:, :, :64] *= tiny / x[:, :, :64].abs().amax()  # the first 64-token block: max |x| = tiny
    x[:, :, :64, 0] = 0.0  # zeros inside the tiny group (0 · inf would be NaN)
    q = quantize_int8(x, "block", 64)
    codes, scale = q.codes.to(torch.float64), q.token_scale().double()[..., None]
    error = (codes * scale - x.double()).abs()
    overflows = 127.0 / tiny > torch.finfo(torch.float32).max  # (no value here is near the exact line)
    assert torch.isfinite(error).all() and (codes[:, :, :64] == 0).all() == overflows
    assert (error[:, :, :64] <= x[:, :, :64].abs().amax().double()).all()
    assert (error[:, :, 64:] <= scale[:, :, 64:] * (0.5 + SLACK)).all()
    v = torch.randn(1, 2, 64, 16, generator=torch.Generator().manual_seed(1))
    v[..., 0] = v[..., 0] * (tiny / v[..., 0].abs().amax())
    v[0, 0, 0, 0] = 0.0  # channel 0 is tiny (per-channel groups)
    fp8, v_scale = quantize_v_fp8(v)
    dequant = fp8.double() * v_scale.double()
    assert torch.isfinite(dequant).all()
    assert (fp8[..., 0].double() == 0).all() == (448.0 / tiny > torch.finfo(torch.float32).max)
    assert ((dequant[..., 0] - v[..., 0].double()).abs() <= v[..., 0].abs().amax().double()).all()
