"""The SDPA router: torch's scaled_dot_product_attention runs through sage inside the block, torch outside.

A routed call must give exactly what the drop-in ``sage_fast.scaled_dot_product_attention`` gives for
the same arguments (Hypothesis draws shapes, masks, causal, GQA), a call sage cannot take exactly
what torch gives, and the counts must say which happened and why.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from attention_bounds import make_mask
from hypothesis import given
from hypothesis import strategies as st

import sage_fast
from sage_fast.integrations import CallCounts, route_sdpa
from sage_fast.integrations.variants import AUTO_MIN_KEYS, AUTO_MIN_QUERIES, resolve, variants_for


@st.composite
def sdpa_calls(draw):
    batch, kv_heads, group = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.sampled_from([1, 2]))
    q_len, kv_len, head_dim = draw(st.integers(1, 70)), draw(st.integers(1, 70)), draw(st.sampled_from([8, 40]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    q = torch.randn(
        batch,
        kv_heads * group,
        q_len,
        head_dim,
        generator=gen,
        dtype=draw(st.sampled_from([torch.float16, torch.float32])),
    )
    k = torch.randn(batch, kv_heads, kv_len, head_dim, generator=gen).to(q.dtype)
    v = torch.randn(batch, kv_heads, kv_len, head_dim, generator=gen).to(q.dtype)
    mask_kind = draw(st.sampled_from(["none", "causal", "key_padding_bool", "full_float", "bool_2d"]))
    mask = (
        None if mask_kind == "causal" else make_mask(mask_kind, batch, q.shape[1], q_len, kv_len, seed=1, dtype=q.dtype)
    )
    kwargs = {"attn_mask": mask, "is_causal": mask_kind == "causal", "scale": draw(st.sampled_from([None, 0.2])),
                  "enable_gqa": group > 1}  # fmt: skip
    return q, k, v, kwargs


@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")
@given(problem=sdpa_calls(), variant=st.sampled_from(["fp16", "fp8"]))
def test_routed_call_is_the_drop_in(problem, variant):
    q, k, v, kwargs = problem
    before = [t.clone() for t in (q, k, v)]
    with route_sdpa(variant) as counts:
        out = F.scaled_dot_product_attention(q, k, v, **kwargs)
    expected = sage_fast.scaled_dot_product_attention(q, k, v, **kwargs, pv=variant)
    assert torch.equal(out, expected)
    assert all(torch.equal(a, b) for a, b in zip(before, (q, k, v)))
    assert dict(counts.variants) == {variant: 1} and counts.fallback_calls == 0


@pytest.mark.parametrize("q_len", [1, 17, AUTO_MIN_QUERIES - 1, AUTO_MIN_QUERIES, 77])
def test_auto_leaves_calls_shorter_than_a_query_tile_to_torch(q_len):
    """Decode steps (one query over a KV cache) and other calls with fewer queries than a query tile run torch's
    own SDPA under "auto" (variants.resolve says why), counted as "torch"; from a tile on, sage's own choice."""
    gen = torch.Generator().manual_seed(q_len)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen) for n in (q_len, 90, 90))
    with route_sdpa() as counts:
        out = F.scaled_dot_product_attention(q, k, v)
    variant = "torch" if q_len < AUTO_MIN_QUERIES else resolve("auto", q.device)
    expected = F.scaled_dot_product_attention(q, k, v) if variant == "torch" else (
        sage_fast.scaled_dot_product_attention(q, k, v, pv=variant))  # fmt: skip
    assert torch.equal(out, expected) and dict(counts.variants) == {variant: 1} and counts.fallback_calls == 0


@pytest.mark.parametrize("capability, precision", [((9, 0), "fp8"), ((8, 9), "fp8"), ((8, 0), "fp16")])
def test_auto_leaves_calls_with_few_keys_on_a_gpu_to_torch(monkeypatch, capability, precision):
    """On a GPU "auto" runs torch's SDPA for calls with fewer keys than the measured crossover of its P·V precision,
    and sage from there on; the query rule still applies, a run's variant (no lengths) is sage's, explicit
    variants are taken literally, and the CPU emulation ignores the key rule (it runs for testing)."""
    monkeypatch.setattr(sage_fast.api, "cuda_capability", lambda device: capability)
    cuda, keys = torch.device("cuda"), AUTO_MIN_KEYS[precision]
    chosen = [resolve("auto", cuda, 4096, n) for n in (1, keys - 1, keys, 10**6)]
    assert chosen == ["torch", "torch", precision, precision]
    assert resolve("auto", "cuda:0", AUTO_MIN_QUERIES - 1, 10**6) == "torch"
    assert resolve("auto", cuda, AUTO_MIN_QUERIES, keys) == precision
    assert resolve("auto", cuda) == resolve("auto", cuda, None, None) == precision
    assert [resolve(v, cuda, 1, 1) for v in ("fp8", "fp16", "torch")] == ["fp8", "fp16", "torch"]
    assert resolve("auto", torch.device("cpu"), AUTO_MIN_QUERIES, 1) == resolve("auto", "cpu") == "fp16"
    # The Numba ladder has no fp8 P·V: "auto" is fp16 there, and calibration does not offer fp8.
    assert resolve("auto", cuda, AUTO_MIN_QUERIES, 10**6, implementation="numba") == "fp16"
    assert variants_for(cuda, "numba") == variants_for("cpu", "numba") == ("fp16", "torch")


def test_a_call_torch_refuses_is_torchs_to_refuse():
    """A query without a sequence dimension reaches torch's own function, which raises its own error (the router
    must not fail first while choosing a variant from the query's length)."""
    q = torch.randn(8)
    with pytest.raises(RuntimeError) as routed, route_sdpa():
        F.scaled_dot_product_attention(q, q, q)
    with pytest.raises(RuntimeError) as direct:
        F.scaled_dot_product_attention(q, q, q)
    assert str(routed.value) == str(direct.value)


def qkv(*shape, dtype=torch.float32, requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=gen, dtype=dtype, requires_grad=requires_grad) for _ in range(3))


FALLBACKS = [
    ("dropout", lambda: (qkv(1, 2, 9, 8), {"dropout_p": 0.5}), "dropout_p"),
    ("needs grad", lambda: (qkv(1, 2, 9, 8, requires_grad=True), {}), "require grad"),
    ("float64", lambda: (qkv(1, 2, 9, 8, dtype=torch.float64), {}), "float64"),
    ("3-d", lambda: (qkv(2, 9, 8), {}), "4-d"),
    ("head_dim 300", lambda: (qkv(1, 2, 9, 300), {}), "head_dim"),
    ("batch broadcast", lambda: ((qkv(1, 2, 9, 8)[0], *qkv(2, 2, 9, 8)[1:]), {}), "batch"),
]


@pytest.mark.parametrize("make, reason", [f[1:] for f in FALLBACKS], ids=[f[0] for f in FALLBACKS])
def test_what_sage_cannot_take_runs_torch_and_is_counted(make, reason):
    (q, k, v), kwargs = make()
    with route_sdpa("fp16") as counts:
        torch.manual_seed(0)
        out = F.scaled_dot_product_attention(q, k, v, **kwargs)
    torch.manual_seed(0)
    expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
    assert torch.equal(out, expected)
    assert counts.sage_calls == 0 and counts.fallback_calls == 1
    assert reason in next(iter(counts.fallbacks)), counts.fallbacks
    with pytest.raises((TypeError, ValueError)), route_sdpa("fp16", strict=True):
        F.scaled_dot_product_attention(q, k, v, **kwargs)


def test_variant_torch_counts_and_changes_nothing():
    """"torch" runs torch's SDPA for every call, one that needs grad too (nothing for sage to refuse, even strictly)."""
    q, k, v = qkv(1, 2, 9, 8)
    with route_sdpa("torch") as counts:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert dict(counts.variants) == {"torch": 1} and counts.sage_calls == 0
    q, k, v = qkv(1, 2, 9, 8, requires_grad=True)
    with route_sdpa("torch", strict=True) as counts:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    assert dict(counts.variants) == {"torch": 1} and counts.fallback_calls == 0 and q.grad is not None


def test_nested_blocks_the_innermost_decides():
    """A call the inner block gives to torch (its variant, or a fallback) is torch's own, counted once, by the inner
    block; the outer block does not route it again."""
    q, k, v = qkv(1, 2, 70, 8)
    with route_sdpa("fp16") as outer:
        with route_sdpa("torch") as inner:
            out = F.scaled_dot_product_attention(q, k, v)
        with route_sdpa("fp8") as inner_fp8:
            F.scaled_dot_product_attention(q.double(), k.double(), v.double())  # float64: a fallback
            routed = F.scaled_dot_product_attention(q, k, v)
        F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
    assert torch.equal(routed, sage_fast.scaled_dot_product_attention(q, k, v, pv="fp8"))
    assert dict(inner.variants) == {"torch": 1}
    assert dict(inner_fp8.variants) == {"fp8": 1} and inner_fp8.fallback_calls == 1
    assert dict(outer.variants) == {"fp16": 1} and outer.fallback_calls == 0


def test_a_call_is_counted_once_it_has_run():
    """A call torch refuses (four query heads over two KV heads without enable_gqa) raises torch's error, uncounted."""
    q, k, v = qkv(1, 4, 9, 8)
    for variant in ("torch", "fp16"):
        with route_sdpa(variant) as counts, pytest.raises(RuntimeError):
            F.scaled_dot_product_attention(q, k[:, :2], v[:, :2])
        assert counts.torch_calls == counts.sage_calls == 0, counts


def test_only_sdpa_in_this_thread_is_routed():
    q, k, v = qkv(1, 2, 9, 8)
    seen = []
    with route_sdpa("fp16") as counts:
        x = torch.matmul(q, k.transpose(-1, -2)).softmax(-1)  # other torch functions pass through
        worker = threading.Thread(target=lambda: seen.append(F.scaled_dot_product_attention(q, k, v)))
        worker.start()
        worker.join()
    assert torch.equal(x, torch.matmul(q, k.transpose(-1, -2)).softmax(-1))
    assert counts.sage_calls == 0 and torch.equal(seen[0], F.scaled_dot_product_attention(q, k, v))


def test_the_block_ends_on_an_exception():
    q, k, v = qkv(1, 2, 9, 8)
    with pytest.raises(RuntimeError, match="boom"), route_sdpa("fp16") as counts:
        raise RuntimeError("boom")
    F.scaled_dot_product_attention(q, k, v)
    assert counts.sage_calls == 0


def test_counts_accumulate_across_blocks():
    q, k, v = qkv(1, 2, 9, 8)
    counts = CallCounts()
    for _ in range(2):
        with route_sdpa("fp8", counts=counts):
            F.scaled_dot_product_attention(q, k, v)
    assert counts.variants["fp8"] == 2 and "fp8 2" in str(counts)


@pytest.mark.parametrize("kwargs, error", [({"variant": "int8"}, ValueError), ({"implementation": "gpu"}, ValueError),
                                           ({"strict": 1}, TypeError), ({"counts": {}}, TypeError)])  # fmt: skip
def test_bad_options_are_refused(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        route_sdpa(**kwargs)
