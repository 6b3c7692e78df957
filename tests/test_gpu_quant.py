"""GPU: K/V quantization by one program per head equals the two launches bit for bit, and leaves its inputs alone.

``quant.quantize_kv(per_head=True)`` runs ``quantize_kv_per_head_kernel`` (statistics and tiles in one program per
batch·kv head and tensor); ``per_head=False`` the statistics launch and the per-tile quantization launch. The CPU
suite holds both to sage_ref's codes under the interpreter (tests/test_triton_rungs.py); here both run on the GPU
on the same inputs, at awkward lengths (also beyond what ``per_head_pays`` picks), every input dtype, strided views,
and with inf and NaN in some heads: every output tensor must be the same bits (NaN scales included).
"""

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SHAPES = [  # batch, kv_heads, kv_len, head_dim, block_n
    (1, 1, 1, 64, 128),
    (2, 3, 77, 96, 128),
    (1, 2, 1000, 128, 64),
    (2, 2, 4097, 64, 128),
    (1, 16, 8192, 128, 128),
    (3, 1, 16384, 128, 128),
    (1, 2, 20000, 64, 128),
    (1, 1, 300, 256, 128),
]
MODES = [(True, True), (True, False), (False, True)]  # smooth_k, v_fp8


def bits(t):
    """The tensor's bits as integers, so NaN compares equal to the same NaN."""
    return None if t is None else t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"smooth{int(m[0])}-fp8{int(m[1])}")
def test_per_head_equals_two_launches(shape, dtype, mode):
    from sage_fast.triton.launch import INT8_MIN_HEAD_DIM, head_dim_block
    from sage_fast.triton.quant import quantize_kv

    batch, kv_heads, kv_len, head_dim, block_n = shape
    smooth_k, v_fp8 = mode
    gen = torch.Generator(device="cuda").manual_seed(kv_len + head_dim)
    # [B, N, H, D] transposed: strided views, as a model's projections hand them over.
    k = (torch.randn(batch, kv_len, kv_heads, head_dim, device="cuda", generator=gen) * 4 + 2).to(dtype).transpose(1, 2)
    v = torch.randn(batch, kv_len, kv_heads, head_dim, device="cuda", generator=gen).to(dtype).transpose(1, 2)
    if kv_heads > 1:
        k[0, 1, kv_len // 2, 0] = float("inf")
        v[-1, -1, kv_len - 1, head_dim - 1] = float("nan")
    k0, v0 = k.clone(), v.clone()
    dp = head_dim_block(head_dim, INT8_MIN_HEAD_DIM)
    kwargs = {"block_n": block_n, "head_dim_padded": dp, "smooth_k": smooth_k, "v_fp8": v_fp8}
    one = quantize_kv(k, v, per_head=True, **kwargs)
    two = quantize_kv(k, v, per_head=False, **kwargs)
    torch.cuda.synchronize()
    assert torch.equal(bits(k), bits(k0)) and torch.equal(bits(v), bits(v0)), "an input was modified"
    for name in two:
        a, b = bits(one[name]), bits(two[name])
        assert (a is None) == (b is None), name
        if a is not None:  # whole tensors: padding channels and keys too
            assert torch.equal(a, b), f"{name}: {(a != b).sum().item()} of {a.numel()} differ"

