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
def test_rung1_flash(data):
    check_rung(RUNGS[0], *data, elementwise=True)


@pytest.mark.parametrize("rung", RUNGS[1:3], ids=lambda r: r.name)
@given(data=inputs(dtypes=(torch.float16, torch.bfloat16, torch.float32)))
def test_int8_qk_fp16_pv_rungs(rung, data):
    check_rung(rung, *data, elementwise=True)


# fp8 P·V: per element, a P whose e4m3 rounding flips (exp2's last bit) can exceed the noise term
# where the emulation happens to be right, so the bound holds on the maximum (attention_bounds.py).
# Gluon kernels (rung 6) have no interpreter: tests/test_triton_compile.py builds them for sm90 and the GPU
# suite (tests/test_gpu_rungs.py) holds them to the same bound and to rung 5 bit for bit.
@pytest.mark.parametrize("rung", [r for r in RUNGS[3:] if r.interpretable], ids=lambda r: r.name)
@given(data=inputs(dtypes=(torch.float16, torch.bfloat16, torch.float32)))
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
