"""Attention semantics every implementation in sage_ref shares: naive, flash, and sage in several variants.

Hypothesis draws the data; ``parametrize`` picks the implementation. Exact properties (GQA equals
repeated K/V, fully masked rows, NaN propagation) hold for every variant, quantized or not, so they
run over all of them; properties about values hold for the exact ones (fp64 truth to ~1e-12).
"""

from functools import partial

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import AttentionShape, attention_inputs, attention_shapes, block_sizes, fixed_inputs, randn_like, seeds

from sage_ref import flash_attention, naive_attention, sage_attention

IMPLEMENTATIONS = {
    "naive": naive_attention,
    "flash": partial(flash_attention, block_m=32, block_n=17),
    "sage-exact": partial(sage_attention, qk_granularity=None, pv="fp32"),
    "sage-block-fp16": partial(sage_attention, block_m=64, block_n=32),
    "sage-warp-fp16-nosmooth": partial(sage_attention, qk_granularity="warp", smooth_k=False, block_m=64, block_n=16),
    "sage-thread-fp8": partial(sage_attention, qk_granularity="thread", pv="fp8", block_m=32, block_n=16),
    "sage-token-int8": partial(sage_attention, qk_granularity="token", pv="int8", smooth_k=False),
    "sage-tensor-fp32": partial(sage_attention, qk_granularity="tensor", pv="fp32"),
}
EXACT = {"naive": IMPLEMENTATIONS["naive"], "flash": IMPLEMENTATIONS["flash"]}
SMALL = dict(max_len=130, max_head_dim=64)


def visible(q_len: int, kv_len: int, is_causal: bool) -> torch.Tensor:
    """[q_len, kv_len] bool: query i sees key j (bottom-right aligned causal mask), written out independently."""
    i = torch.arange(q_len)[:, None]
    j = torch.arange(kv_len)[None, :]
    return (j <= i + kv_len - q_len) | (not is_causal)


@given(inp=attention_inputs(dtypes=(torch.float64,)), block_m=block_sizes(), block_n=block_sizes())
@example(
    inp=fixed_inputs(AttentionShape(batch=1, kv_heads=2, group=3, q_len=77, kv_len=300, head_dim=72), is_causal=True),
    block_m=128,
    block_n=64,
).via("awkward causal GQA shape, kv_len > q_len")
def test_flash_equals_naive_in_fp64(inp, block_m, block_n):
    """Online softmax with exp2 and alpha rescaling is the same function as the materialized softmax."""
    out, lse = flash_attention(*inp.qkv, is_causal=inp.is_causal, block_m=block_m, block_n=block_n, return_lse=True)
    ref, ref_lse = naive_attention(*inp.qkv, is_causal=inp.is_causal, return_lse=True)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS.values(), ids=IMPLEMENTATIONS.keys())
@given(inp=attention_inputs(**SMALL, dtypes=(torch.float16, torch.float32)))
def test_gqa_equals_mha_with_repeated_kv(impl, inp):
    """Query head h reads KV head h // group: the same as handing every query head its own copy."""
    group = inp.shape.group
    k_rep, v_rep = inp.k.repeat_interleave(group, dim=1), inp.v.repeat_interleave(group, dim=1)
    out, lse = impl(*inp.qkv, is_causal=inp.is_causal, return_lse=True)
    out_rep, lse_rep = impl(inp.q, k_rep, v_rep, is_causal=inp.is_causal, return_lse=True)
    assert torch.equal(out, out_rep)
    assert torch.equal(lse, lse_rep)


@pytest.mark.parametrize("impl", EXACT.values(), ids=EXACT.keys())
@given(inp=attention_inputs(causal=True), data=st.data())
def test_causal_rows_ignore_later_keys(impl, inp, data):
    """Rewrite keys and values j >= cut; rows that cannot see key ``cut`` must not change by a bit."""
    q_len, kv_len = inp.shape.q_len, inp.shape.kv_len
    cut = data.draw(st.integers(0, kv_len - 1), label="cut")
    k2, v2 = inp.k.clone(), inp.v.clone()
    k2[:, :, cut:] = randn_like(k2[:, :, cut:], data.draw(seeds(), label="seed"), scale=3.0)
    v2[:, :, cut:] = randn_like(v2[:, :, cut:], data.draw(seeds(), label="seed"), scale=3.0)
    rows = torch.arange(q_len) + kv_len - q_len < cut  # row i sees keys j <= i + kv_len - q_len only
    out, lse = impl(*inp.qkv, is_causal=True, return_lse=True)
    out2, lse2 = impl(inp.q, k2, v2, is_causal=True, return_lse=True)
    assert torch.equal(out[:, :, rows], out2[:, :, rows])
    assert torch.equal(lse[:, :, rows], lse2[:, :, rows])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS.values(), ids=IMPLEMENTATIONS.keys())
@given(
    inp=attention_inputs(
        shapes=attention_shapes(max_len=130, max_head_dim=64, same_length=False).filter(lambda s: s.q_len > s.kv_len),
        causal=True,
    )
)
def test_rows_that_see_no_key_give_zero_and_minus_inf_lse(impl, inp):
    """Causal with q_len > kv_len: the first q_len - kv_len queries see nothing (bottom-right alignment)."""
    out, lse = impl(*inp.qkv, is_causal=True, return_lse=True)
    blind = inp.shape.q_len - inp.shape.kv_len
    assert torch.equal(out[:, :, :blind], torch.zeros_like(out[:, :, :blind]))
    assert bool((lse[:, :, :blind] == float("-inf")).all())
    assert bool(out[:, :, blind:].isfinite().all()) and bool(lse[:, :, blind:].isfinite().all())


@pytest.mark.parametrize("impl", EXACT.values(), ids=EXACT.keys())
@given(inp=attention_inputs(dtypes=(torch.float64,)), data=st.data())
def test_constant_or_zero_keys_give_the_mean_of_visible_values(impl, inp, data):
    """Equal logits in a row make the softmax uniform: out_i = mean of the values row i sees.

    All-zero K (also what smoothing makes of a constant K) is the case that divides by zero
    if a scale or a running sum is not guarded.
    """
    constant = data.draw(st.sampled_from([0.0, 1.0, -3.5]), label="constant")
    k = torch.full_like(inp.k, constant)
    see = visible(inp.shape.q_len, inp.shape.kv_len, inp.is_causal).to(torch.float64)
    counts = see.sum(-1, keepdim=True)
    mean = see @ inp.v.repeat_interleave(inp.shape.group, dim=1) / counts.clamp(min=1)
    out = impl(inp.q, k, inp.v, is_causal=inp.is_causal)
    torch.testing.assert_close(out, mean, rtol=1e-12, atol=1e-12)


def poison(inp, data):
    """Put one NaN into q, k or v; return the poisoned (q, k, v) and a bool mask [B, H, Nq, D] of outputs
    that must be NaN: every output of a query that sees the NaN (for v: in the NaN's channel)."""
    s = inp.shape
    q, k, v = (t.clone() for t in inp.qkv)
    where = data.draw(st.sampled_from("qkv"), label="tensor")
    b = data.draw(st.integers(0, s.batch - 1), label="batch")
    d = data.draw(st.integers(0, s.head_dim - 1), label="channel")
    must = torch.zeros(s.q_shape, dtype=torch.bool)
    see = visible(s.q_len, s.kv_len, inp.is_causal)
    if where == "q":
        h = data.draw(st.integers(0, s.heads - 1), label="head")
        i = data.draw(st.integers(0, s.q_len - 1), label="row")
        q[b, h, i, d] = float("nan")
        must[b, h, i] = bool(see[i].any())
    else:
        g = data.draw(st.integers(0, s.kv_heads - 1), label="kv head")
        j = data.draw(st.integers(0, s.kv_len - 1), label="key")
        (k if where == "k" else v)[b, g, j, d] = float("nan")
        heads = slice(g * s.group, (g + 1) * s.group)
        if where == "k":
            must[b, heads] = see[:, j, None]
        else:
            must[b, heads, :, d] = see[:, j]
    return (q, k, v), must, where


@pytest.mark.parametrize("name", IMPLEMENTATIONS.keys())
@given(inp=attention_inputs(**SMALL, dtypes=(torch.float16, torch.bfloat16, torch.float32)), data=st.data())
def test_nan_input_never_gives_finite_output(name, inp, data):
    """A NaN reaches every output that depends on it; exact implementations leave the other rows alone.

    Quantized variants may spread a NaN further (it poisons a shared scale or K's mean); that is
    allowed, finite garbage is not. A NaN in V also reaches rows that do not see it, through
    0 · NaN in P·V: allowed too.
    """
    impl = IMPLEMENTATIONS[name]
    (q, k, v), must, where = poison(inp, data)
    out = impl(q, k, v, is_causal=inp.is_causal)
    missed = must & ~out.isnan()
    assert not missed.any(), f"finite output at {missed.nonzero()[:5].tolist()}"
    if name in EXACT and where != "v":
        clean = impl(*inp.qkv, is_causal=inp.is_causal)
        untouched = ~must.any(-1)
        assert torch.equal(out[untouched], clean[untouched])
