"""The contract around the numbers: bad input is refused with an error naming the argument, dtypes
round-trip, and inputs are never written to.
"""

from functools import partial

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import FLOAT_DTYPES, attention_inputs, block_sizes

from sage_ref import (
    GRANULARITIES,
    PV_MODES,
    cosine_similarity,
    decode_p,
    encode_p,
    flash_attention,
    naive_attention,
    quantize_int8,
    quantize_v_fp8,
    quantize_v_int8,
    relative_l1,
    rmse,
    sage_attention,
    smooth_k,
    token_groups,
)

ATTENTION = {"naive": naive_attention, "flash": flash_attention, "sage": sage_attention}
TINY = dict(max_len=40, max_head_dim=32)
OTHER_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float16, torch.float32: torch.float64,
               torch.float64: torch.float32}


def with_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t[:, :1].expand(t.shape[0], heads, *t.shape[2:]).contiguous()


# name -> (change (q, k, v, kwargs) -> (q, k, v, kwargs), exception, message pattern naming the argument)
BAD_QKV = {
    "q rank 3": (lambda q, k, v, kw: (q[0], k, v, kw), ValueError, r"^q must have 4 dimensions"),
    "k rank 5": (lambda q, k, v, kw: (q, k[None], v, kw), ValueError, r"^k must have 4 dimensions"),
    "v rank 3": (lambda q, k, v, kw: (q, k, v[0], kw), ValueError, r"^v must have 4 dimensions"),
    "q not a tensor": (lambda q, k, v, kw: (q.tolist(), k, v, kw), TypeError, r"^q must be a torch.Tensor"),
    "head_dim": (lambda q, k, v, kw: (q[..., :-1], k, v, kw), ValueError, r"^k has head_dim \d+ but q has head_dim"),
    "batch": (lambda q, k, v, kw: (q, torch.cat([k, k]), torch.cat([v, v]), kw), ValueError, r"^k has batch"),
    "v shape": (lambda q, k, v, kw: (q, k, torch.cat([v, v], dim=2), kw), ValueError, r"^v must have the shape of k"),
    "heads": (lambda q, k, v, kw: (q, with_heads(k, q.shape[1] + 1), with_heads(v, q.shape[1] + 1), kw),
              ValueError, r"^q's heads"),
    "int q": (lambda q, k, v, kw: (q.to(torch.int32), k, v, kw), TypeError, r"^q must be float16"),
    "bool v": (lambda q, k, v, kw: (q, k, v.bool(), kw), TypeError, r"^v must be float16"),
    "mixed dtypes": (lambda q, k, v, kw: (q, k.to(OTHER_DTYPE[k.dtype]), v, kw), TypeError, r"^k has dtype"),
    "devices": (lambda q, k, v, kw: (q, k, v.to("meta"), kw), ValueError, r"^v is on meta"),
    "kv_len 0": (lambda q, k, v, kw: (q, k[:, :, :0], v[:, :, :0], kw), ValueError, r"lengths >= 1"),
    "q heads 0": (lambda q, k, v, kw: (q[:, :0], k, v, kw), ValueError, r"heads and lengths >= 1"),
    "head_dim 257": (lambda q, k, v, kw: tuple(t.new_zeros(*t.shape[:3], 257) for t in (q, k, v)) + (kw,),
                     ValueError, r"head_dim 257"),
    "is_causal 1": (lambda q, k, v, kw: (q, k, v, {**kw, "is_causal": 1}), TypeError, r"^is_causal must be a bool"),
    "is_causal None": (lambda q, k, v, kw: (q, k, v, {**kw, "is_causal": None}), TypeError, r"^is_causal"),
    "return_lse 0": (lambda q, k, v, kw: (q, k, v, {**kw, "return_lse": 0}), TypeError, r"^return_lse must be a bool"),
    "sm_scale nan": (lambda q, k, v, kw: (q, k, v, {**kw, "sm_scale": float("nan")}), ValueError, r"^sm_scale"),
    "sm_scale inf": (lambda q, k, v, kw: (q, k, v, {**kw, "sm_scale": float("inf")}), ValueError, r"^sm_scale"),
    "sm_scale str": (lambda q, k, v, kw: (q, k, v, {**kw, "sm_scale": "0.1"}), TypeError, r"^sm_scale"),
    "sm_scale bool": (lambda q, k, v, kw: (q, k, v, {**kw, "sm_scale": True}), TypeError, r"^sm_scale"),
    "sm_scale tensor": (lambda q, k, v, kw: (q, k, v, {**kw, "sm_scale": torch.tensor(0.1)}), TypeError, r"^sm_scale"),
}
BAD_BLOCKS = {
    f"{name}={value!r}": (lambda q, k, v, kw, name=name, value=value: (q, k, v, {**kw, name: value}),
                          ValueError, rf"^{name} must be a positive int")
    for name in ("block_m", "block_n")
    for value in (0, -64, 64.0, True, None)
}
BAD_SAGE = {
    "pv": (lambda q, k, v, kw: (q, k, v, {**kw, "pv": "fp4"}), ValueError, r"^pv must be one of"),
    "pv None": (lambda q, k, v, kw: (q, k, v, {**kw, "pv": None}), ValueError, r"^pv must be one of"),
    "qk_granularity": (lambda q, k, v, kw: (q, k, v, {**kw, "qk_granularity": "channel"}), ValueError,
                       r"^qk_granularity must be one of"),
    "smooth_k": (lambda q, k, v, kw: (q, k, v, {**kw, "smooth_k": "yes"}), TypeError, r"^smooth_k must be a bool"),
}
CASES = [
    (fn, case)
    for fn in ATTENTION
    for case in [*BAD_QKV, *(BAD_BLOCKS if fn != "naive" else []), *(BAD_SAGE if fn == "sage" else [])]
]
ALL_BAD = {**BAD_QKV, **BAD_BLOCKS, **BAD_SAGE}


@pytest.mark.parametrize(("fn", "case"), CASES, ids=[f"{fn}-{case}" for fn, case in CASES])
@given(inp=attention_inputs(**TINY))
def test_bad_input_raises_an_error_naming_the_argument(fn, case, inp):
    change, error, pattern = ALL_BAD[case]
    q, k, v, kwargs = change(*inp.qkv, {"is_causal": inp.is_causal})
    with pytest.raises(error, match=pattern):
        ATTENTION[fn](q, k, v, **kwargs)


X = torch.ones(1, 1, 4, 16)
BAD_QUANTIZER_OPTIONS = {
    "granularity": (partial(quantize_int8, X, "channel"), r"^granularity must be one of"),
    "granularity None": (partial(token_groups, 4, None, 64), r"^granularity must be one of"),
    "block_size 0": (partial(quantize_int8, X, "block", 0), r"^block_size must be a positive int"),
    "block_size -1": (partial(token_groups, 4, "tensor", -1), r"^block_size must be a positive int"),
    "encoding": (partial(encode_p, torch.ones(4), "bf16"), r"^encoding must be one of"),
    "warps 0": (partial(token_groups, 4, "warp", 64, 0), r"^warps must be a positive int"),
    "warps 2.5": (partial(quantize_int8, X, "warp", 64, 2.5), r"^warps must be a positive int"),
    "n 3.0": (partial(token_groups, 3.0, "token", 64), r"^n must be a positive int"),
    "no tokens x": (partial(quantize_int8, X[:, :, :0], "block", 64), r"^x needs at least one token"),
    "no tokens v": (partial(quantize_v_fp8, X[:, :, :0]), r"^v needs at least one token"),
    "no tokens k": (partial(smooth_k, X[:, :, :0]), r"^k needs at least one token"),
}


@pytest.mark.parametrize("case", BAD_QUANTIZER_OPTIONS)
def test_bad_quantizer_options_raise_an_error_naming_the_argument(case):
    call, pattern = BAD_QUANTIZER_OPTIONS[case]
    with pytest.raises(ValueError, match=pattern):
        call()


def attention_calls(q, k, v, is_causal, block_m, block_n):
    """Every public attention entry point, with the options that change its code path."""
    blocks = dict(block_m=block_m, block_n=block_n)
    yield "naive", naive_attention(q, k, v, is_causal=is_causal, return_lse=True)
    yield "flash", flash_attention(q, k, v, is_causal=is_causal, return_lse=True, **blocks)
    for granularity in (*GRANULARITIES, None):
        for pv in PV_MODES:
            for smooth in (True, False):
                yield f"sage-{granularity}-{pv}-{smooth}", sage_attention(
                    q, k, v, is_causal=is_causal, qk_granularity=granularity, pv=pv, smooth_k=smooth,
                    return_lse=True, **blocks,
                )


@given(inp=attention_inputs(**TINY), block_m=block_sizes(64), block_n=block_sizes(64))
def test_attention_returns_the_input_dtype_and_leaves_inputs_untouched(inp, block_m, block_n):
    """out has q's dtype and shape, lse is floating [B, H, Nq]; q, k, v are bitwise unchanged after every call."""
    before = [t.clone() for t in inp.qkv]
    for name, (out, lse) in attention_calls(*inp.qkv, inp.is_causal, block_m, block_n):
        assert out.dtype == inp.q.dtype and out.shape == inp.q.shape, name
        assert lse.is_floating_point() and lse.shape == inp.q.shape[:-1], name
        for t, saved in zip(inp.qkv, before):
            assert torch.equal(t, saved), name


@given(inp=attention_inputs(**TINY), granularity=st.sampled_from(GRANULARITIES), block_size=block_sizes(64))
def test_helpers_return_documented_dtypes_and_leave_inputs_untouched(inp, granularity, block_size):
    """INT8 codes with fp32 scales, e4m3 V with fp32 scales, fp32 (fp64 for fp64) smoothing, float metrics;
    inputs unchanged."""
    x, k, v = inp.qkv
    before = [t.clone() for t in inp.qkv]
    qx = quantize_int8(x, granularity, block_size)
    assert qx.codes.dtype == torch.int8 and qx.scale.dtype == torch.float32
    assert qx.dequantize().dtype == torch.float32
    v8, v8_scale = quantize_v_fp8(v)
    assert v8.dtype == torch.float8_e4m3fn and v8_scale.dtype == torch.float32
    vi, vi_scale = quantize_v_int8(v)
    assert vi.dtype == torch.int8 and vi_scale.dtype == torch.float32
    k_s, k_mean = smooth_k(k)
    wide = torch.float64 if k.dtype == torch.float64 else torch.float32
    assert k_s.dtype == k_mean.dtype == wide
    k_s += 1  # smooth_k's result must not alias its input
    p = torch.rand(3, 5, generator=torch.Generator().manual_seed(0)).to(x.dtype)
    p_before = p.clone()
    for encoding in ("fp16", "fp8", "int8"):
        assert decode_p(*encode_p(p, encoding)).dtype == torch.float32
    assert torch.equal(p, p_before)
    for metric in (cosine_similarity, relative_l1, rmse):
        assert isinstance(metric(x, x + 1), float)
    for t, saved in zip(inp.qkv, before):
        assert torch.equal(t, saved)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_non_contiguous_inputs_give_the_same_result(dtype):
    """An NHD tensor viewed as HND (a transpose, as models store K/V) is read by index, not by raw memory.

    Not bit for bit: BLAS may sum strided operands in another order, and a last-bit change can flip
    one INT8 code of P (1/127). A misread layout is wrong by O(1).
    """
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 77, 2, 32, generator=gen, dtype=torch.float64).to(dtype).transpose(1, 2)
               for _ in range(3))
    for (name, strided), (_, dense) in zip(
        attention_calls(q, k, v, True, 32, 16), attention_calls(*(t.contiguous() for t in (q, k, v)), True, 32, 16)
    ):
        torch.testing.assert_close(strided, dense, rtol=2e-2, atol=2e-2, msg=name)


@pytest.mark.parametrize(
    "call, bad, name, error",
    [
        (lambda t: quantize_int8(t), torch.zeros(3, 4, 5), "x", ValueError),
        (lambda t: quantize_int8(t), torch.zeros(1, 1, 4, 4, dtype=torch.int32), "x", TypeError),
        (lambda t: smooth_k(t), [[1.0]], "k", TypeError),
        (lambda t: quantize_v_fp8(t), torch.zeros(2, 4, 8), "v", ValueError),
        (lambda t: quantize_v_int8(t), torch.zeros(1, 1, 4, 4, dtype=torch.int8), "v", TypeError),
    ],
)
def test_quantizers_refuse_bad_tensors_naming_them(call, bad, name, error):
    with pytest.raises(error, match=rf"^{name} "):
        call(bad)
