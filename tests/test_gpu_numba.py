"""GPU suite for the Numba ladder (H100/H200): every rung at real, awkward sizes against its sage_ref variant.

Same bound as the simulator tests (tests/attention_bounds.py), element by element: |rung - truth| <=
2 |emulation - truth| + noise, truth an fp64 naive attention, outputs allocated poisoned (NaN).
Runs only with SAGE_TEST_GPU=1 on a CUDA machine (tests/conftest.py).
"""

import re

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
    (2, 6, 3, 777, 1000, 48, True),  # rung 6: head_dim padded to its 64-wide tiles, GQA
]


def rungs():
    from sage_fast.numba import RUNGS

    return RUNGS


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:6])) + ("-causal" if s[6] else ""))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rung_index", range(6))
def test_numba_rung_on_gpu(rung_index, dtype, shape):
    from sage_fast.numba import max_head_dim

    rung = rungs()[rung_index]
    major, minor = torch.cuda.get_device_capability()
    if major * 10 + minor < rung.min_arch:
        pytest.skip(f"{rung.name} needs sm{rung.min_arch}")
    batch, heads, kv_heads, q_len, kv_len, head_dim, causal = shape
    if head_dim > max_head_dim(rung):
        pytest.skip(f"{rung.name} takes head_dim <= {max_head_dim(rung)} (its refusal is tested on the CPU)")
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


def test_linked_dp4a_matches_its_simulator_stand_in():
    """GPU only: rung 6's dp4a is CUDA C linked into the kernel, which Numba's simulator cannot run (there
    rung 6 uses dp4a_simulated, whose arithmetic test_numba_rungs.py checks): here one against the other."""
    from numba import cuda

    from sage_fast.numba.rung6_sgemm_dp4a import dp4a, dp4a_simulated

    @cuda.jit
    def dp4a_kernel(out, a, b, c):
        i = cuda.grid(1)
        if i < out.shape[0]:
            out[i] = dp4a(a[i], b[i], c[i])

    gen = torch.Generator().manual_seed(6)
    a, b = (torch.randint(-(2**31), 2**31, (4096,), generator=gen, dtype=torch.int64).int() for _ in range(2))
    a[0], b[0] = -0x7F7F7F80, -0x7F7F7F80  # 0x80808080: every byte -128, the largest products
    c = torch.randint(-(2**20), 2**20, (4096,), generator=gen, dtype=torch.int32)
    out = torch.empty(4096, dtype=torch.int32, device="cuda")
    dp4a_kernel[16, 256](*(cuda.as_cuda_array(t.cuda()) for t in (out, a, b, c)))
    expected = [int(dp4a_simulated(x, y, z)) for x, y, z in zip(a.tolist(), b.tolist(), c.tolist())]
    assert out.cpu().tolist() == expected


def test_fma_microbenchmark_is_fp32_only():
    """The peak behind "of FP32 peak": fp32 FMAs only (a float64 constant once made 7 of 8 chains fp64), with
    the inner loop unrolled whole (one copy of the 8 FMAs per iteration of it)."""
    from numba import cuda

    from sage_fast.numba import bench

    ptx, _ = cuda.compile_ptx_for_current_device(bench.fma_kernel.py_func, "void(float32[:], float32, float32)")
    assert not re.search(r"\.f64\b", ptx), "a float64 instruction in the FMA microbenchmark"
    assert ptx.count("fma.rn.f32") >= bench.FMA_CHAINS * bench.FMA_UNROLL
