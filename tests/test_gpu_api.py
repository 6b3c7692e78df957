"""GPU suite (H100/H200): the public ``sageattn`` at real sizes, masks, layouts, CUDA graphs, torch.compile.

Same bound as everywhere (tests/attention_bounds.py): |triton - truth| <= 2 |emulation - truth| + noise,
the emulation being ``implementation="reference"`` on the same inputs; element by element for fp16 P·V,
on the maximum for fp8 P·V (a flipped e4m3 rounding of P may exceed the noise where the emulation is
right).
"""

import pytest
import torch
from attention_bounds import assert_fa_bound, lse_noise, make_mask, output_noise, truth

import sage_fast

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def gaussian(shape, dtype, gen, shift=0.0):
    return (torch.randn(shape, device="cuda", generator=gen, dtype=torch.float64) + shift).to(dtype)


def check(q, k, v, layout, *, pv, **kwargs):
    q0, k0, v0 = q.clone(), k.clone(), v.clone()
    out, lse = sage_fast.sageattn(q, k, v, tensor_layout=layout, pv=pv, return_lse=True, **kwargs)
    torch.cuda.synchronize()
    assert torch.equal(q, q0) and torch.equal(k, k0) and torch.equal(v, v0), "inputs were modified"
    emul, emul_lse = sage_fast.sageattn(
        q, k, v, tensor_layout=layout, pv=pv, return_lse=True, implementation="reference", **kwargs
    )
    qh, kh, vh = (t.transpose(1, 2) if layout == "NHD" else t for t in (q, k, v))
    ref, ref_lse = truth(qh, kh, vh, is_causal=kwargs.get("is_causal", False), attn_mask=kwargs.get("attn_mask"))
    if layout == "NHD":
        ref = ref.transpose(1, 2)
    assert_fa_bound(out, emul, ref, output_noise(q.dtype, v), elementwise=pv == "fp16", what=f"out {pv}")
    assert_fa_bound(lse, emul_lse, ref_lse, lse_noise(qh, kh, q.shape[-1] ** -0.5), elementwise=True, what="lse")


@pytest.mark.parametrize("pv", ["fp16", "fp8"])
@pytest.mark.parametrize(
    "mask_kind, layout, dtype, causal",
    [
        ("none", "HND", torch.float16, False),
        ("none", "NHD", torch.bfloat16, True),
        ("key_padding_bool", "NHD", torch.float16, False),
        ("key_padding_float", "HND", torch.bfloat16, False),
        ("full_bool", "HND", torch.float16, True),
        ("full_float", "NHD", torch.float16, False),
        ("head_float", "HND", torch.float32, False),
    ],
)
def test_sageattn_masks_and_layouts(pv, mask_kind, layout, dtype, causal):
    gen = torch.Generator(device="cuda").manual_seed(len(mask_kind) + causal)
    b, kv_heads, group, q_len, kv_len, d = 2, 2, 4, 1000, 1030, 128
    shape = lambda h, n: (b, h, n, d) if layout == "HND" else (b, n, h, d)  # noqa: E731
    q = gaussian(shape(kv_heads * group, q_len), dtype, gen)
    k = gaussian(shape(kv_heads, kv_len), dtype, gen, shift=2.0)
    v = gaussian(shape(kv_heads, kv_len), dtype, gen)
    mask = make_mask(mask_kind, b, kv_heads * group, q_len, kv_len, seed=3)
    check(q, k, v, layout, pv=pv, is_causal=causal, attn_mask=None if mask is None else mask.cuda())


@pytest.mark.parametrize("pv", ["fp16", "fp8"])
@pytest.mark.parametrize("head_dim, q_len, kv_len", [(40, 77, 4097), (256, 1000, 1000), (64, 4097, 4097), (96, 1, 8192)])
def test_sageattn_awkward_sizes(pv, head_dim, q_len, kv_len):
    gen = torch.Generator(device="cuda").manual_seed(head_dim + q_len)
    q = gaussian((1, 8, q_len, head_dim), torch.float16, gen)
    k = gaussian((1, 8, kv_len, head_dim), torch.float16, gen, shift=1.0)
    v = gaussian((1, 8, kv_len, head_dim), torch.float16, gen)
    check(q, k, v, "HND", pv=pv, is_causal=True)


@pytest.mark.parametrize("pv", ["fp16", "fp8"])
def test_constant_keys_and_tail_keys(pv):
    """1.0.6's bugs at real size: constant K (all-zero smoothed blocks) and kv_len past a tile edge."""
    gen = torch.Generator(device="cuda").manual_seed(5)
    q = gaussian((1, 4, 512, 64), torch.float16, gen)
    v = gaussian((1, 4, 4097, 64), torch.float16, gen, shift=3.0)
    k = torch.ones(1, 4, 4097, 64, device="cuda", dtype=torch.float16)
    out = sage_fast.sageattn(q, k, v, pv=pv)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), v.float().mean(dim=2, keepdim=True).expand_as(out), atol=0.06, rtol=0)
    check(q, gaussian((1, 4, 4097, 64), torch.float16, gen), v, "HND", pv=pv)


@pytest.mark.parametrize("pv", ["fp16", "fp8"])
def test_tiles_and_channels_too_small_to_scale(pv):
    """fp32 inputs: a Q tile and a V channel of largest |value| ≈ 1e-37, where 127 / max (448 / max) overflows
    fp32: they quantize to 0 (sage_ref.quantization.reciprocal_scale), where a GPU's saturating cast of the inf
    codes would give garbage. Finite, the tiny channel ≈ 0, within the bound of the emulation."""
    gen = torch.Generator(device="cuda").manual_seed(6)
    q, k, v = (gaussian((1, 4, n, 64), torch.float32, gen) for n in (1000, 1000, 1000))
    q[:, :, :64] *= 1e-37
    v[..., 0] *= 1e-37
    out = sage_fast.sageattn(q, k, v, pv=pv)
    assert torch.isfinite(out).all() and out[..., 0].abs().max() <= 1e-36
    check(q, k, v, "HND", pv=pv)


@pytest.mark.parametrize("head_dim", [64, 128])  # rung 3, and on sm90 rung 7 (Gluon)
def test_fp16_pv_range_is_fp16s(head_dim):
    """pv="fp16" sums each 128-key tile's p·v in fp16 (documented in sageattn): equal scores over |v| = 511 give
    ≈ 511, over |v| = 600 the tile sum passes 65504 and the output is inf, never a finite wrong value."""
    q = torch.zeros(1, 2, 100, head_dim, device="cuda", dtype=torch.float16)
    k = torch.randn(1, 2, 300, head_dim, device="cuda", dtype=torch.float16)
    for value, finite in ((511.0, True), (600.0, False)):
        out = sage_fast.sageattn(q, k, torch.full_like(k, value), pv="fp16").float()
        assert bool(torch.isfinite(out).all()) == finite
        if finite:
            torch.testing.assert_close(out, torch.full_like(out, value), rtol=2e-3, atol=0)


@pytest.mark.parametrize("pv", ["fp16", "fp8"])
def test_nothing_to_attend(pv):
    """No batch, query or key on the GPU: torch's SDPA's answer (zeros of q's shape), lse -inf, no kernel. torch's
    answer is taken on the CPU: torch 2.11's CUDA SDPA returns None for an empty batch with enable_gqa."""
    for q_shape, kv_shape in (((0, 4, 9, 64), (0, 2, 9, 64)), ((2, 4, 0, 64), (2, 2, 9, 64)),
                              ((2, 4, 9, 64), (2, 2, 0, 64))):  # fmt: skip
        q = torch.randn(q_shape, device="cuda", dtype=torch.float16)
        k, v = (torch.randn(kv_shape, device="cuda", dtype=torch.float16) for _ in range(2))
        out, lse = sage_fast.sageattn(q, k, v, pv=pv, is_causal=True, return_lse=True)
        expected = torch.nn.functional.scaled_dot_product_attention(q.cpu(), k.cpu(), v.cpu(), enable_gqa=True)
        assert out.shape == q.shape and out.is_cuda and torch.equal(out.cpu(), expected)
        assert lse.shape == q.shape[:3] and bool((lse == float("-inf")).all())


def test_cuda_graph_capture_and_compile():
    """The custom op can be captured in a CUDA graph and traced by torch.compile(fullgraph=True)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (gaussian((2, 8, 1024, 128), torch.float16, gen) for _ in range(3))
    eager = sage_fast.sageattn(q, k, v, is_causal=True)
    sage_fast.sageattn(q, k, v, is_causal=True)  # compile the kernels outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = sage_fast.sageattn(q, k, v, is_causal=True)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)
    compiled = torch.compile(lambda a, b, c: sage_fast.sageattn(a, b, c, is_causal=True), fullgraph=True)
    assert torch.equal(compiled(q, k, v), eager)
