"""Attention masks: sage_ref against torch's SDPA, and the INT8 kernel (rungs 2-4) against sage_ref.

A mask is bool (True = attend) or an additive natural-log bias, broadcastable to
[batch, heads, q_len, kv_len]; the kernel adds bias · log2 e to its base-2 logits, reading a
key-padding mask [B, 1, 1, Nkv] one row per key tile (ROW_BIAS) and anything else tile by tile.
"""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from attention_bounds import MASK_KINDS, assert_fa_bound, lse_noise, make_mask, output_noise, truth
from hypothesis import given
from hypothesis import strategies as st

import sage_ref

# Masks built with torch.finfo(float32).min overflow when the kernel multiplies them by log2 e (it then
# clamps them back to a finite value, see sage_ref.masks.base2_bias); the interpreter's NumPy says so.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")

REFERENCES = {
    "naive": sage_ref.naive_attention,
    "flash": partial(sage_ref.flash_attention, block_m=16, block_n=17),
    "sage-exact": partial(sage_ref.sage_attention, qk_granularity=None, pv="fp32", block_n=33),
}
LENGTHS = st.sampled_from([1, 2, 17, 63, 64, 65, 77, 100, 129])


@st.composite
def problems(draw, dtypes=(torch.float64,), kinds=MASK_KINDS):
    """q, k, v (GQA), a mask kind and its mask."""
    batch, kv_heads, group = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.sampled_from([1, 3]))
    q_len, kv_len, head_dim = draw(LENGTHS), draw(LENGTHS), draw(st.sampled_from([8, 40, 64]))
    dtype = draw(st.sampled_from(dtypes))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    q = torch.randn(batch, kv_heads * group, q_len, head_dim, generator=gen, dtype=torch.float64).to(dtype)
    k = torch.randn(batch, kv_heads, kv_len, head_dim, generator=gen, dtype=torch.float64).to(dtype)
    v = torch.randn(batch, kv_heads, kv_len, head_dim, generator=gen, dtype=torch.float64).to(dtype)
    kind = draw(st.sampled_from(kinds))
    mask = make_mask(kind, batch, kv_heads * group, q_len, kv_len, draw(st.integers(0, 2**31)))
    return q, k, v, kind, mask


@pytest.mark.parametrize("ref", REFERENCES.values(), ids=REFERENCES.keys())
@given(problem=problems(kinds=MASK_KINDS[1:]))
def test_reference_masks_match_torch_sdpa(ref, problem):
    """sage_ref's exact implementations apply masks as torch does (fp64, to rounding)."""
    q, k, v, _, mask = problem
    mask64 = mask if mask.dtype == torch.bool else mask.double()
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask64, enable_gqa=True)
    # torch gives fully masked rows 0 (its _safe_softmax) as we do.
    torch.testing.assert_close(ref(q, k, v, attn_mask=mask), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rung_name", ["2-int8-qk", "3-fused-quant", "4-fp8-pv", "5-tma"])
@given(problem=problems(dtypes=(torch.float16, torch.bfloat16, torch.float32)), causal=st.booleans())
def test_rung_with_mask_within_bound_of_emulation(rung_name, problem, causal):
    """The kernel with a mask is held to sage_ref with the same mask, FlashAttention-style."""
    from sage_fast.triton import RUNGS

    rung = next(r for r in RUNGS if r.name == rung_name)
    q, k, v, kind, mask = problem
    out, lse = rung.forward(q, k, v, is_causal=causal, attn_mask=mask, return_lse=True)
    emul, emul_lse = rung.reference(q, k, v, is_causal=causal, attn_mask=mask, return_lse=True)
    ref, ref_lse = truth(q, k, v, is_causal=causal, attn_mask=mask)
    fp8 = rung_name[0] in "45"
    assert_fa_bound(out, emul, ref, output_noise(q.dtype, v), elementwise=not fp8, what=f"out ({kind})")
    assert_fa_bound(lse, emul_lse, ref_lse, lse_noise(q, k, q.shape[-1] ** -0.5), elementwise=True, what="lse")


@pytest.mark.parametrize("mode", ["key_padding", "full"])
def test_fully_masked_rows_give_zero_and_minus_inf_lse(mode):
    from sage_fast.triton import rung3_fused_quant

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 70, 40, generator=gen).half() for _ in range(3))
    if mode == "key_padding":
        mask = torch.ones(2, 1, 1, 70, dtype=torch.bool)
        mask[1] = False  # the whole second sequence is padding
        dead = (slice(1, 2), slice(None), slice(None))
    else:
        mask = torch.ones(2, 2, 70, 70, dtype=torch.bool)
        mask[0, 1, 5] = False
        dead = (0, 1, 5)
    for out, lse in (
        rung3_fused_quant.forward(q, k, v, attn_mask=mask, return_lse=True),
        sage_ref.sage_attention(q, k, v, attn_mask=mask, return_lse=True),
    ):
        assert torch.isfinite(out).all()
        assert (out[dead] == 0).all()
        assert (lse[dead] == float("-inf")).all()
        assert torch.isfinite(lse[mask.expand(2, 2, 70, 70).any(-1)]).all()


# fp64's minimum overflows when the kernel converts it to fp32 (then clamped); the interpreter's NumPy says so.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.float64])
def test_finite_mask_minimum_stays_finite(mask_dtype):
    """A row masked with torch.finfo(dtype).min everywhere is torch's uniform average, not a zero row:
    bias · log2 e overflows fp32 (fp64's minimum already in the conversion), and the kernel clamps it back to
    -finfo.max."""
    from sage_fast.triton import rung3_fused_quant

    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 9, 32, generator=gen) for _ in range(3))
    mask = torch.zeros(9, 9, dtype=mask_dtype)
    mask[4] = torch.finfo(mask_dtype).min
    expected = F.scaled_dot_product_attention(q.to(mask_dtype), k.to(mask_dtype), v.to(mask_dtype), attn_mask=mask)
    assert torch.allclose(expected[:, :, 4].float(), v.mean(dim=2), atol=1e-6)
    for out in (
        rung3_fused_quant.forward(q, k, v, attn_mask=mask),
        sage_ref.sage_attention(q, k, v, attn_mask=mask),
        sage_ref.naive_attention(q, k, v, attn_mask=mask),
    ):
        torch.testing.assert_close(out[:, :, 4], expected[:, :, 4].float(), atol=2e-3, rtol=0)


def test_v_scale_of_huge_finite_values_is_finite():
    """max|V| per channel, NaN only for non-finite V: 100 tokens of 1e37 sum past fp32's range, the scale does not."""
    v = torch.full((1, 1, 100, 4), 1e37)
    for quantize, target in ((sage_ref.quantize_v_fp8, 448.0), (sage_ref.quantize_v_int8, 127.0)):
        _, scale = quantize(v)
        assert torch.equal(scale, torch.full_like(scale, 1e37) / target)
    v[0, 0, 50, 1] = float("inf")
    assert torch.isnan(sage_ref.quantize_v_fp8(v)[1][..., 1]).all()


@pytest.mark.parametrize(
    "mask, error, match",
    [
        ([[True]], TypeError, "attn_mask must be a torch.Tensor"),
        (torch.ones(9, 9, dtype=torch.int32), TypeError, "attn_mask must be bool or float"),
        (torch.ones(8, 9, dtype=torch.bool), ValueError, "attn_mask of shape"),
        (torch.ones(1, 1, 1, 1, 9, dtype=torch.bool), ValueError, "attn_mask of shape"),
        (torch.ones(1, 3, 9, 9), ValueError, "attn_mask of shape"),
        (torch.ones(9, 9, device="meta"), ValueError, "attn_mask is on meta"),
    ],
)
@pytest.mark.parametrize("ref", REFERENCES.values(), ids=REFERENCES.keys())
def test_bad_masks_are_refused_by_name(ref, mask, error, match):
    q = k = v = torch.zeros(1, 2, 9, 8)
    with pytest.raises(error, match=match):
        ref(q, k, v, attn_mask=mask)
