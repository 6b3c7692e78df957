"""Every rung of the Triton ladder against the sage_ref variant it claims to implement.

Runs on the CPU under Triton's interpreter (tests/conftest.py), with the interpreter's float
conversions fixed (sage_fast/triton/interpreter_fixes.py), so the kernels round where the GPU does.
The bound is FlashAttention's (tests/attention_bounds.py): |rung - truth| <= 2 |emulation - truth|
+ noise, on the maximum and, for the rungs whose P is fp16, element by element; the truth is fp64
attention of the very inputs. Outputs are allocated poisoned (NaN), so an element no program writes
fails. The quantization kernels are held to sage_ref's quantizers exactly: same codes, same scales.
"""

from __future__ import annotations

import pytest
import torch
from attention_bounds import assert_fa_bound, lse_noise, output_noise, poisoned_allocations, truth
from hypothesis import example, given
from hypothesis import strategies as st

import sage_ref
from sage_fast.triton import RUNGS
from sage_fast.triton.launch import INT8_MIN_HEAD_DIM, head_dim_block
from sage_fast.triton import quant
from sage_fast.triton.quant import quantize_kv, quantize_q

LENGTHS = st.one_of(st.sampled_from([1, 63, 64, 65, 77, 128, 129]), st.integers(1, 140))


def operand_key_order(x: torch.Tensor) -> torch.Tensor:
    """x [..., N] with out[..., k] = x[..., c(k)] within every 32 keys: k = 16·g1 + 4q + 2·g0 + j holds key
    c = 16·g1 + 8·g0 + 2q + j (``common.operand_key_order``'s docstring, written out index by index)."""
    k = torch.arange(x.shape[-1])
    g1, q, g0, j = (k >> 4) & 1, (k >> 2) & 3, (k >> 1) & 1, k & 1
    return x[..., (k & ~31) + 16 * g1 + 8 * g0 + 2 * q + j]


@st.composite
def inputs(draw, dtypes):
    """q [B,H,Nq,D], k, v [B,Hkv,Nkv,D] Gaussian (K with an optional shared channel bias) and is_causal."""
    kv_heads, group = draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 3]))
    q_len, kv_len = draw(LENGTHS), draw(LENGTHS)
    head_dim = draw(st.sampled_from([16, 40, 64, 128]))
    dtype = draw(st.sampled_from(dtypes))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    k_bias = draw(st.sampled_from([0.0, 4.0]))

    def gauss(heads, n, shift=0.0):
        return (torch.randn(1, heads, n, head_dim, generator=gen, dtype=torch.float64) + shift).to(dtype)

    q, k, v = gauss(kv_heads * group, q_len), gauss(kv_heads, kv_len, k_bias), gauss(kv_heads, kv_len)
    return q, k, v, draw(st.booleans())


def pinned(q_len, kv_len, *, head_dim=64, sharp=False):
    """Causal inputs the draws rarely reach, for ``@example``: q_len - kv_len past a key tile (the first rows see no
    key: 0 and lse -inf; the masked loop must not start below key 0), or with ``sharp``, keys 0-127 scoring ≈ 224
    (base 2) above keys 128-255, so the running maximum must never go down (alpha = exp2(224) would be inf)."""
    gen = torch.Generator().manual_seed(q_len + kv_len)
    q, k, v = (torch.randn(1, 2, n, head_dim, generator=gen) for n in (q_len, kv_len, kv_len))
    if sharp:
        q[..., 0], k[..., 0] = 20.0, 0.0
        k[:, :, :128, 0], k[:, :, 128:, 0] = 31.0, -31.0
    return q.half(), k.half(), v.half(), True


EDGES = [pinned(140, 11), pinned(300, 16), pinned(64, 129), pinned(300, 300, sharp=True)]


def at_edges(test):
    """The test with every ``EDGES`` case pinned as an example."""
    for data in EDGES:
        test = example(data=data)(test)
    return test


def check_rung(rung, q, k, v, is_causal, *, elementwise):
    before = [t.clone() for t in (q, k, v)]
    with poisoned_allocations():
        out, lse = rung.forward(q, k, v, is_causal=is_causal, return_lse=True)
    for t, t0 in zip((q, k, v), before):
        assert torch.equal(t, t0), "an input was modified"
    emul, emul_lse = rung.reference(q, k, v, is_causal=is_causal, return_lse=True)
    ref, ref_lse = truth(q, k, v, is_causal=is_causal)
    sm_scale = q.shape[-1] ** -0.5
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_fa_bound(out, emul, ref, output_noise(q.dtype, v), elementwise=elementwise, what=rung.name)
    assert_fa_bound(lse, emul_lse, ref_lse, lse_noise(q, k, sm_scale), elementwise=True, what=f"{rung.name} lse")


# Rung 1 rounds P to the input's dtype; its emulation rounds P to fp16, so it is held on fp16 inputs.
@given(data=inputs(dtypes=(torch.float16,)))
@example(data=(torch.randn(1, 2, 1, 64).half(), torch.randn(1, 1, 300, 64).half(), torch.randn(1, 1, 300, 64).half(), True))
@at_edges
def test_rung1_flash(data):
    check_rung(RUNGS[0], *data, elementwise=True)


@pytest.mark.parametrize("rung", RUNGS[1:3], ids=lambda r: r.name)
@given(data=inputs(dtypes=(torch.float16, torch.bfloat16, torch.float32)))
@at_edges
def test_int8_qk_fp16_pv_rungs(rung, data):
    check_rung(rung, *data, elementwise=True)


# fp8 P·V: per element, a P whose e4m3 rounding flips (exp2's last bit) can exceed the noise term
# where the emulation happens to be right, so the bound holds on the maximum (attention_bounds.py).
# Gluon kernels (rung 6) have no interpreter: tests/test_triton_compile.py builds them for sm90 and the GPU
# suite (tests/test_gpu_rungs.py) holds them to the same bound and to rung 5 bit for bit.
@pytest.mark.parametrize("rung", [r for r in RUNGS[3:] if r.interpretable], ids=lambda r: r.name)
@given(data=inputs(dtypes=(torch.float16, torch.bfloat16, torch.float32)))
@at_edges
def test_fp8_pv_rungs(rung, data):
    check_rung(rung, *data, elementwise=False)


@given(data=inputs(dtypes=(torch.float16, torch.bfloat16, torch.float32)))
def test_rung5_equals_rung4(data):
    """TMA changes how K̂ and V̂ᵀ reach the kernel, not what it computes: rung 5 is rung 4 bit for bit,
    including the keys of the last tile that lie past kv_len (another head's codes, masked)."""
    q, k, v, is_causal = data
    with poisoned_allocations():
        out5, lse5 = RUNGS[4].forward(q, k, v, is_causal=is_causal, return_lse=True)
    out4, lse4 = RUNGS[3].forward(q, k, v, is_causal=is_causal, return_lse=True)
    assert torch.equal(out5, out4)
    torch.testing.assert_close(lse5, lse4, rtol=0, atol=0, equal_nan=True)


@given(
    data=inputs(dtypes=(torch.float16, torch.bfloat16, torch.float32)),
    block=st.sampled_from([(64, 128), (128, 64)]),
    per_head=st.booleans(),
)
def test_quantization_kernels_equal_sage_ref(data, block, per_head):
    """The fused quantization launches write sage_ref's codes and scales, bit for bit, K and V in two launches
    or in one of a program per head (``per_head``).

    K's mean is summed in fp64 on both sides, so it rounds to the same fp32 value whatever the order.
    """
    q, k, v, _ = data
    block_m, block_n = block
    dp = head_dim_block(q.shape[-1], INT8_MIN_HEAD_DIM)
    pad = dp - q.shape[-1]
    with poisoned_allocations():
        kv = quantize_kv(k, v, block_n=block_n, head_dim_padded=dp, smooth_k=True, v_fp8=True, per_head=per_head)
        q_int8, q_scale, shift = quantize_q(
            q, sm_scale=0.3, block_m=block_m, head_dim_padded=dp, k_mean=kv["k_mean"], kv_heads=k.shape[1]
        )
    k_smoothed, k_mean = sage_ref.smooth_k(k)
    assert torch.equal(kv["k_mean"][..., : k.shape[-1]], k_mean[:, :, 0])
    k_hat = sage_ref.quantize_int8(k_smoothed, "block", block_n)
    assert torch.equal(kv["k_int8"], torch.nn.functional.pad(k_hat.codes, (0, pad)))
    assert torch.equal(kv["k_scale"], k_hat.scale)
    q_hat = sage_ref.quantize_int8(q.float() * (0.3 * sage_ref.attention.LOG2E), "block", block_m)
    assert torch.equal(q_int8, torch.nn.functional.pad(q_hat.codes, (0, pad)))
    assert torch.equal(q_scale, q_hat.scale)
    v_fp8, v_scale = sage_ref.quantize_v_fp8(v)
    # V̂ᵀ [B, Hkv, Dp, Npad]: zero-padded, keys of every 32 in operand order (stored[k] = key c).
    v_fp8_t = torch.nn.functional.pad(v_fp8.float().transpose(-1, -2), (0, kv["v_fp8_t"].shape[-1] - k.shape[2], 0, pad))
    assert torch.equal(kv["v_fp8_t"].float(), operand_key_order(v_fp8_t))
    assert torch.equal(kv["v_scale"][..., : k.shape[-1]], v_scale[:, :, 0])
    group = q.shape[1] // k.shape[1]
    expected_shift = 0.3 * torch.matmul(q.float(), k_mean.repeat_interleave(group, dim=1).transpose(-1, -2))[..., 0]
    torch.testing.assert_close(shift, expected_shift, rtol=1e-5, atol=1e-5 * float(expected_shift.abs().max()) + 1e-6)


@pytest.mark.parametrize("chunk", [64, 128])
@given(kv_len=st.integers(65, 300), kv_heads=st.integers(2, 3), seed=st.integers(0, 2**31))
def test_statistics_in_chunks_equal_sage_ref(chunk, kv_len, kv_heads, seed):
    """The two-launch K/V path combines per-chunk statistics (STATS_CHUNK tokens each): at the real 2048 every CPU
    size is one chunk, so the chunk size is lowered here. K's mean differs per head and V grows along the sequence,
    so a sum or maximum from the wrong chunk or head changes the codes, which must be sage_ref's bit for bit."""
    assert quant.STATS_CHUNK % quant.STATS_BLOCK_N == 0  # the statistics loads do not cross a chunk's end
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(2, kv_heads, kv_len, 40, generator=gen) + torch.arange(kv_heads)[:, None, None] * 3.0
    v = torch.randn(2, kv_heads, kv_len, 40, generator=gen) * torch.linspace(0.1, 4.0, kv_len)[:, None]
    k, v = k.half(), v.half()
    with poisoned_allocations(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(quant, "STATS_CHUNK", chunk)
        kv = quantize_kv(k, v, block_n=128, head_dim_padded=64, smooth_k=True, v_fp8=True, per_head=False)
    k_smoothed, k_mean = sage_ref.smooth_k(k)
    k_hat = sage_ref.quantize_int8(k_smoothed, "block", 128)
    v_fp8, v_scale = sage_ref.quantize_v_fp8(v)
    assert torch.equal(kv["k_mean"][..., :40], k_mean[:, :, 0])
    assert torch.equal(kv["k_int8"][..., :40], k_hat.codes) and torch.equal(kv["k_scale"], k_hat.scale)
    assert torch.equal(kv["v_scale"][..., :40], v_scale[:, :, 0])
    v_fp8_t = torch.nn.functional.pad(v_fp8.float().transpose(-1, -2), (0, kv["v_fp8_t"].shape[-1] - kv_len))
    assert torch.equal(kv["v_fp8_t"][:, :, :40].float(), operand_key_order(v_fp8_t))


@pytest.mark.parametrize("per_head", [False, True])
def test_quantization_kernels_round_ties_away_from_zero(per_head):
    """Codes of exact ties (x · 127 / max|x| = n + 1/2) round away from zero, as sage_ref's do: K holds ±(n + 1/2)
    beside ±127 in every block, in opposite pairs of tokens, so its mean is 0 and its scale exactly 1."""
    halves = torch.tensor([0.5, 1.5, 2.5, -0.5, -3.5, 126.5, 127.0, 64.5])
    k = torch.cat([halves, -halves]).repeat(8)[:, None].expand(-1, 16).reshape(1, 1, 128, 16).half()
    kv = quantize_kv(k, k, block_n=128, head_dim_padded=16, smooth_k=True, v_fp8=False, per_head=per_head)
    codes = kv["k_int8"][0, 0, :8, 0].tolist()
    assert codes == [1, 2, 3, -1, -4, 127, 127, 65] and torch.equal(kv["k_scale"], torch.ones(1, 1, 1))
    assert torch.equal(kv["k_int8"], sage_ref.quantize_int8(k, "block", 128).codes)
