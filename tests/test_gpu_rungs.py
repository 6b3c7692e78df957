"""GPU suite (H100/H200): every rung at real, awkward sizes against its sage_ref emulation.

Bound, in FlashAttention's spirit: max|kernel - truth| <= 2 · max|emulation - truth| + noise,
with the truth an fp64 naive attention and the emulation sage_ref's variant of the rung, which
rounds at the same points. noise = 2^-10 · max|v| covers what the emulation cannot pin down
exactly: the output's own rounding to fp16/bf16 (2^-11 relative, |out| <= max|v|), exp2's
approximation, the tensor cores' summation order and, for fp8, Hopper's reduced-precision
accumulation inside one 64-key MMA.
"""

import pytest
import torch

import sage_ref

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SHAPES = [  # batch, heads, kv_heads, q_len, kv_len, head_dim, causal
    (2, 8, 2, 1000, 4097, 128, True),
    (1, 4, 4, 4096, 4096, 64, False),
    (1, 6, 3, 77, 1000, 256, True),
    (3, 2, 2, 1, 300, 32, True),
    (2, 4, 2, 1000, 1000, 32, True),  # rungs 2-3 cap registers at head_dim 32 only when causal
    (1, 4, 1, 4097, 77, 128, True),
    (2, 4, 4, 1024, 1024, 96, False),
]


def rungs():
    from sage_fast.triton import RUNGS

    return RUNGS


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:6])) + ("-causal" if s[6] else ""))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rung_index", range(7))
def test_rung_matches_emulation(rung_index, dtype, shape):
    if rung_index >= len(rungs()):
        pytest.skip("this Triton has no Gluon, so no rungs 6 and 7")
    rung = rungs()[rung_index]
    major, minor = torch.cuda.get_device_capability()
    if major * 10 + minor < rung.min_arch:
        pytest.skip(f"{rung.name} needs sm{rung.min_arch}")
    if rung.name.startswith("1") and dtype == torch.bfloat16:
        pytest.skip("rung 1 rounds P to the input dtype; its emulation is fp16")
    batch, heads, kv_heads, q_len, kv_len, head_dim, causal = shape
    if rung.name.startswith("7") and head_dim > 128:
        with pytest.raises(ValueError, match="head_dim"):
            rung.forward(*(torch.zeros(1, 1, 8, head_dim, device="cuda", dtype=dtype) for _ in range(3)))
        return
    gen = torch.Generator(device="cuda").manual_seed(sum(shape))
    q = torch.randn(batch, heads, q_len, head_dim, device="cuda", generator=gen).to(dtype)
    k = (torch.randn(batch, kv_heads, kv_len, head_dim, device="cuda", generator=gen) + 3).to(dtype)
    v = torch.randn(batch, kv_heads, kv_len, head_dim, device="cuda", generator=gen).to(dtype)
    q0, k0, v0 = q.clone(), k.clone(), v.clone()
    out, lse = rung.forward(q, k, v, is_causal=causal, return_lse=True)
    torch.cuda.synchronize()
    assert torch.equal(q, q0) and torch.equal(k, k0) and torch.equal(v, v0), "inputs were modified"
    emu, emu_lse = rung.reference(q, k, v, is_causal=causal, return_lse=True)
    truth, truth_lse = sage_ref.naive_attention(q.double(), k.double(), v.double(), is_causal=causal, return_lse=True)
    assert torch.isfinite(out).all(), "non-finite output on finite input (unwritten or broken elements)"
    noise = 2.0**-10 * v.double().abs().max()
    err = (out.double() - truth).abs().max()
    bound = 2 * (emu.double() - truth).abs().max() + noise
    assert err <= bound, f"{rung.name}: max error {err:.3e} > bound {bound:.3e}"
    seen = torch.isfinite(truth_lse)
    assert torch.equal(torch.isfinite(lse), seen)
    lse_err = (lse.double() - truth_lse)[seen].abs().max()
    lse_bound = 2 * (emu_lse.double() - truth_lse)[seen].abs().max() + 1e-4
    assert lse_err <= lse_bound, f"{rung.name}: lse error {lse_err:.3e} > {lse_bound:.3e}"


# (Gluon rung, the Triton rung whose arithmetic it reschedules)
TWINS = [(5, 4), (6, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:6])) + ("-causal" if s[6] else ""))
@pytest.mark.parametrize("twins", TWINS, ids=lambda t: f"rung{t[0] + 1}-vs-rung{t[1] + 1}")
def test_gluon_rungs_equal_their_triton_twins(twins, shape):
    """Rungs 6 and 7 reschedule rung 5's and rung 3's arithmetic (the softmax of tile j while P_{j-1}·V_{j-1}
    runs, two warpgroups taking turns) without changing a rounding: outputs and log-sum-exps equal bit for bit,
    at every awkward shape."""
    if len(rungs()) <= twins[0]:
        pytest.skip("this Triton has no Gluon, so no rungs 6 and 7")
    gluon_rung, triton_rung = rungs()[twins[0]], rungs()[twins[1]]
    major, minor = torch.cuda.get_device_capability()
    if major * 10 + minor < gluon_rung.min_arch:
        pytest.skip(f"{gluon_rung.name} needs sm{gluon_rung.min_arch}")
    batch, heads, kv_heads, q_len, kv_len, head_dim, causal = shape
    if gluon_rung.name.startswith("7") and head_dim > 128:
        pytest.skip("rung 7 refuses head_dim > 128 (its tiles would not fit shared memory)")
    gen = torch.Generator(device="cuda").manual_seed(sum(shape) + 1)
    q = torch.randn(batch, heads, q_len, head_dim, device="cuda", generator=gen).half()
    k = (torch.randn(batch, kv_heads, kv_len, head_dim, device="cuda", generator=gen) - 2).half()
    v = torch.randn(batch, kv_heads, kv_len, head_dim, device="cuda", generator=gen).half()
    out_t, lse_t = triton_rung.forward(q, k, v, is_causal=causal, return_lse=True)
    out_g, lse_g = gluon_rung.forward(q, k, v, is_causal=causal, return_lse=True)
    assert torch.equal(out_g, out_t)
    torch.testing.assert_close(lse_g, lse_t, rtol=0, atol=0, equal_nan=True)


def test_rung7_reads_a_strided_v_and_its_neighbours_stay_out():
    """Rung 7 reads V in place through a 3-d descriptor: an NHD view works, and an inf in the next head's V
    does not reach this head's last tile (TMA zero-fills keys past N instead of reading on)."""
    if len(rungs()) <= 6 or torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("rung 7 needs Gluon and sm90")
    rung3, rung7 = rungs()[2], rungs()[6]
    gen = torch.Generator(device="cuda").manual_seed(3)
    q = torch.randn(1, 77, 2, 64, device="cuda", generator=gen).half().transpose(1, 2)  # NHD views
    k = torch.randn(1, 77, 2, 64, device="cuda", generator=gen).half().transpose(1, 2)
    v = torch.randn(1, 77, 2, 64, device="cuda", generator=gen).half().transpose(1, 2)
    assert torch.equal(rung7.forward(q, k, v), rung3.forward(q, k, v))
    v = torch.randn(1, 2, 77, 64, device="cuda", generator=gen).half()
    v[:, 1] = float("inf")
    out = rung7.forward(q.contiguous(), k.contiguous(), v)
    expected = rung3.forward(q.contiguous(), k.contiguous(), v)
    assert torch.isfinite(out[:, 0]).all() and torch.equal(out[:, 0], expected[:, 0])
