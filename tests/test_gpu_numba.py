"""GPU suite for the Numba ladder (H100/H200): every rung at real, awkward sizes against its sage_ref variant.

Same bound as the simulator tests (tests/attention_bounds.py), element by element: |rung - truth| <=
2 |emulation - truth| + noise, truth an fp64 naive attention, outputs allocated poisoned (NaN).
Runs only with SAGE_TEST_GPU=1 on a CUDA machine (tests/conftest.py).
"""

import pytest
import torch
from attention_bounds import assert_fa_bound, lse_noise, output_noise, poisoned_allocations, truth

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SHAPES = [  # batch, heads, kv_heads, q_len, kv_len, head_dim, causal
    (2, 4, 2, 1000, 1537, 128, True),
    (1, 4, 4, 2048, 2048, 64, False),
    (1, 2, 1, 77, 300, 256, True),  # rung 4's 48 KiB of shared memory
    (3, 2, 2, 1, 513, 32, True),
    (1, 4, 1, 1025, 77, 96, True),  # q_len > kv_len: rows that see no key
]


def rungs():
    from sage_fast.numba import RUNGS

    return RUNGS


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:6])) + ("-causal" if s[6] else ""))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rung_index", range(5))
def test_numba_rung_on_gpu(rung_index, dtype, shape):
    rung = rungs()[rung_index]
    major, minor = torch.cuda.get_device_capability()
    if major * 10 + minor < rung.min_arch:
        pytest.skip(f"{rung.name} needs sm{rung.min_arch}")
    batch, heads, kv_heads, q_len, kv_len, head_dim, causal = shape
    if rung.name.startswith("5") and head_dim > 128:
        pytest.skip("rung 5 takes head_dim <= 128 (its refusal is tested on the CPU)")
    gen = torch.Generator(device="cuda").manual_seed(sum(shape))
    q = torch.randn(batch, heads, q_len, head_dim, device="cuda", generator=gen).to(dtype)
    k = (torch.randn(batch, kv_heads, kv_len, head_dim, device="cuda", generator=gen) + 3).to(dtype)
    v = torch.randn(batch, kv_heads, kv_len, head_dim, device="cuda", generator=gen).to(dtype)
    q0, k0, v0 = q.clone(), k.clone(), v.clone()
    with poisoned_allocations():
        out, lse = rung.forward(q, k, v, is_causal=causal, return_lse=True)
    torch.cuda.synchronize()
    assert torch.equal(q, q0) and torch.equal(k, k0) and torch.equal(v, v0), "inputs were modified"
    assert out.dtype == dtype and out.shape == q.shape and out.device == q.device
    emul, emul_lse = rung.reference(q, k, v, is_causal=causal, return_lse=True)
    ref, ref_lse = truth(q, k, v, is_causal=causal)
    assert_fa_bound(out, emul, ref, output_noise(dtype, v), elementwise=True, what=rung.name)
    assert_fa_bound(lse, emul_lse, ref_lse, lse_noise(q, k, head_dim**-0.5), elementwise=True, what=f"{rung.name} lse")
