"""Every rung of the Numba ladder against the sage_ref variant it claims to implement.

Runs under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set by tests/conftest.py), which runs
one Python thread per CUDA thread: shapes stay tiny (lengths <= 40, head_dim 16-32, batch·heads
<= 2) a simulated launch costs 0.01-1 s, so the profile's 25 examples per rung keep the whole file
under a minute on two cores. The bound is
FlashAttention's (tests/attention_bounds.py): |rung - truth| <= 2 |emulation - truth| + noise,
element by element, for the output and the lse; the truth is fp64 attention of the very inputs.
Output buffers (and rung 1's score matrix) are allocated poisoned (NaN), so an element no thread
writes fails. Real sizes run in tests/test_gpu_numba.py. Rung 6's dp4a is a linked CUDA C function,
which the simulator cannot run: here rung 6 runs its Python stand-in (``dp4a_simulated``, checked against
int8 dot products below), and the linked function is tested on the GPU only.
"""

from __future__ import annotations

import pytest
import torch
from attention_bounds import assert_fa_bound, lse_noise, output_noise, poisoned_allocations, truth
from hypothesis import example, given
from hypothesis import strategies as st

from sage_fast.numba import RUNGS, rung6_sgemm_dp4a

LENGTHS = st.one_of(st.sampled_from([1, 2, 16, 17, 33, 40]), st.integers(1, 40))


def gaussian(gen, heads, n, head_dim, dtype, shift=0.0):
    return (torch.randn(1, heads, n, head_dim, generator=gen, dtype=torch.float64) + shift).to(dtype)


@st.composite
def inputs(draw):
    """q [1,H,Nq,D], k, v [1,Hkv,Nkv,D] with H <= 2 (MHA, or GQA with 2 query heads on 1 KV head), and is_causal."""
    kv_heads, group = draw(st.sampled_from([(1, 1), (1, 2), (2, 1)]))
    q_len, kv_len = draw(LENGTHS), draw(LENGTHS)
    head_dim = draw(st.sampled_from([16, 24, 32]))
    dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    k_bias = draw(st.sampled_from([0.0, 4.0]))  # a channel bias K shares across tokens: what smoothing removes
    q = gaussian(gen, kv_heads * group, q_len, head_dim, dtype)
    k = gaussian(gen, kv_heads, kv_len, head_dim, dtype, k_bias)
    v = gaussian(gen, kv_heads, kv_len, head_dim, dtype)
    return q, k, v, draw(st.booleans())


def check_rung(rung, q, k, v, is_causal, **kwargs):
    before = [t.clone() for t in (q, k, v)]
    with poisoned_allocations():
        out, lse = rung.forward(q, k, v, is_causal=is_causal, return_lse=True, **kwargs)
    for t, t0 in zip((q, k, v), before):
        assert torch.equal(t, t0), "an input was modified"
    assert out.dtype == q.dtype and out.shape == q.shape
    assert lse.shape == q.shape[:3]
    emul, emul_lse = rung.reference(q, k, v, is_causal=is_causal, return_lse=True, **kwargs)
    ref, ref_lse = truth(q, k, v, is_causal=is_causal)
    sm_scale = q.shape[-1] ** -0.5
    assert_fa_bound(out, emul, ref, output_noise(q.dtype, v), elementwise=True, what=rung.name)
    assert_fa_bound(lse, emul_lse, ref_lse, lse_noise(q, k, sm_scale), elementwise=True, what=f"{rung.name} lse")


def fixed(q_len, kv_len, head_dim=16, heads=1, kv_heads=1, dtype=torch.float16, causal=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        gaussian(gen, heads, q_len, head_dim, dtype),
        gaussian(gen, kv_heads, kv_len, head_dim, dtype, 3.0),
        gaussian(gen, kv_heads, kv_len, head_dim, dtype),
        causal,
    )


@pytest.mark.parametrize("rung", RUNGS, ids=lambda r: r.name)
@given(data=inputs())
@example(data=fixed(1, 1))  # one query, one key
@example(data=fixed(33, 7, heads=2))  # causal with q_len > kv_len: the first 26 rows see no key (out 0, lse -inf)
@example(data=fixed(2, 40, head_dim=24, heads=2, kv_heads=1, dtype=torch.float32, causal=False))  # GQA, D not 2^k
def test_rung_matches_its_emulation(rung, data):
    check_rung(rung, *data)


SAGE_RUNGS = [r for r in RUNGS if r.smooths]


@pytest.mark.parametrize("rung", SAGE_RUNGS, ids=lambda r: r.name)
def test_sage_rungs_without_smoothing(rung):
    check_rung(rung, *fixed(17, 33, head_dim=32, heads=2, kv_heads=1, dtype=torch.bfloat16), smooth_k=False)


@pytest.mark.parametrize("rung", SAGE_RUNGS, ids=lambda r: r.name)
def test_sage_rungs_span_tiles(rung):
    """More than one 64-row query tile and 64-key tile: per-tile scales, the causal tile bound, barriers."""
    check_rung(rung, *fixed(70, 67, seed=1))


@pytest.mark.parametrize("rung", SAGE_RUNGS, ids=lambda r: r.name)
def test_sage_rungs_tiles_too_small_to_scale(rung):
    """A Q tile, then every K tile (after smoothing), of largest |value| ≈ 1e-37, where 127 / max overflows fp32:
    they quantize to 0 as sage_ref does (uniform attention over the keys that row sees), the outputs finite. (Under
    the simulator NumPy casts the overflowed inf codes to int32's minimum, whose low byte happens to be 0; a GPU
    would saturate them to -1 codes without the guard.)"""
    q, k, v, causal = fixed(70, 67, dtype=torch.float32, seed=2)
    q[:, :, :64] *= 1e-37
    check_rung(rung, q, k, v, causal)
    check_rung(rung, q, k[:, :, :1] + 1e-37 * k, v, causal)


@pytest.mark.parametrize(("rung", "head_dim"), [(RUNGS[4], 160), (RUNGS[5], 72)], ids=lambda x: getattr(x, "name", x))
def test_register_tile_rungs_refuse_head_dims_past_their_shared_memory(rung, head_dim):
    x = torch.randn(1, 1, 4, head_dim)
    with pytest.raises(ValueError, match=f"head_dim {head_dim}"):
        rung.forward(x, x, x)


def test_rung6_simulated_dp4a_is_an_int8_dot_product():
    """The simulator's stand-in for the linked dp4a (the GPU suite checks the linked one against it)."""
    gen = torch.Generator().manual_seed(5)
    a, b = (torch.randint(-128, 128, (64, 4), generator=gen, dtype=torch.int8) for _ in range(2))
    a[0], b[0] = torch.tensor([-128, 127, -1, 0], dtype=torch.int8), torch.tensor([-128, 127, -1, 5], dtype=torch.int8)
    c = torch.randint(-(2**20), 2**20, (64,), generator=gen, dtype=torch.int32)
    expected = c + (a.int() * b.int()).sum(dim=1, dtype=torch.int32)
    words_a, words_b = a.view(torch.int32)[:, 0], b.view(torch.int32)[:, 0]  # little-endian: byte k = element k
    dp4a = rung6_sgemm_dp4a.dp4a_simulated
    got = [int(dp4a(x, y, z)) for x, y, z in zip(words_a.tolist(), words_b.tolist(), c.tolist())]
    assert got == expected.tolist()


@pytest.mark.parametrize("rung", RUNGS, ids=lambda r: r.name)
def test_refuses_bad_input(rung):
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(TypeError, match="float64|dtype"):
        rung.forward(q.double(), q.double(), q.double())
    with pytest.raises(ValueError, match="head_dim"):
        big = torch.randn(1, 1, 4, 257)
        rung.forward(big, big, big)
    with pytest.raises(ValueError, match="multiple"):
        rung.forward(torch.randn(1, 3, 4, 16), q.expand(1, 2, 4, 16), q.expand(1, 2, 4, 16))
    with pytest.raises(TypeError, match="is_causal"):
        rung.forward(q, q, q, is_causal=1)


def test_fastest_rung_on_strided_views():
    """sage_fast.numba.forward (what sageattn's implementation="numba" would call) on NHD-transposed views."""
    import sage_fast.numba as ladder

    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 19, 2, 16, generator=gen).half().transpose(1, 2)  # [B, H, N, D] views of [B, N, H, D]
    k = (torch.randn(1, 23, 1, 16, generator=gen) + 2).half().transpose(1, 2)
    v = torch.randn(1, 23, 1, 16, generator=gen).half().transpose(1, 2)
    out, lse = ladder.forward(q, k, v, is_causal=True, return_lse=True)
    emul, emul_lse = ladder.reference_for(16)(q, k, v, is_causal=True, return_lse=True)
    assert out.shape == q.shape and (out.double() - emul.double()).abs().max() <= output_noise(q.dtype, v)
    torch.testing.assert_close(lse, emul_lse, rtol=0, atol=1e-5)
