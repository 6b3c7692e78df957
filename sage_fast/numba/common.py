"""What every Numba rung shares: argument checks, moving torch tensors to kernel arrays, output buffers.

Kernels see contiguous arrays [batch, heads, seq, head_dim], fp32 unless a rung says otherwise (fp16 and
bf16 widen to fp32 exactly; rungs 4-6 also take quantized codes, rungs 4-5 an fp16 V, rung 6 fp16 inputs as
they are). On a CUDA tensor the kernel gets a zero-copy view through ``__cuda_array_interface__``
(`as_kernel_array`, rungs 1-5) or the tensor's address (`kernel_pointer`, rung 6); under Numba's simulator
(``NUMBA_ENABLE_CUDASIM=1``) a CPU tensor is handed over as the numpy array sharing its memory, so
what the kernel writes lands in the torch tensor either way.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import config, cuda

from sage_ref.checks import check_flag, check_qkv, resolve_sm_scale

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
NEG_INF = np.float32(-np.inf)
ZERO = np.float32(0.0)
ONE = np.float32(1.0)


def simulated() -> bool:
    """Whether kernels run in Numba's CUDA simulator (a Python thread per CUDA thread)."""
    return bool(config.ENABLE_CUDASIM)


def check_args(q, k, v, *, is_causal, sm_scale, return_lse):
    """Validate like sage_ref, plus what the kernels need; return (shape, sm_scale as float)."""
    shape = check_qkv(q, k, v)
    check_flag("is_causal", is_causal)
    check_flag("return_lse", return_lse)
    if q.dtype not in KERNEL_DTYPES:
        raise TypeError(f"q has dtype {q.dtype}; the Numba kernels take float16, bfloat16 or float32")
    if q.device.type != "cuda" and not simulated():
        raise RuntimeError(
            f"the Numba kernels need CUDA tensors (q is on {q.device}), or Numba's simulator: "
            "set NUMBA_ENABLE_CUDASIM=1 before importing numba"
        )
    return shape, resolve_sm_scale(sm_scale, shape.head_dim)


def as_kernel_array(t: torch.Tensor):
    """A contiguous torch tensor as something a Numba kernel takes: a CUDA array view, or numpy (simulator)."""
    if t.device.type == "cuda":
        return cuda.as_cuda_array(t.detach())
    return t.detach().numpy()


def kernel_pointer(t: torch.Tensor):
    """A contiguous tensor as a pointer argument (the kernel's signature says ``CPointer(dtype)``): its address.

    Cheaper per call than `as_kernel_array`, whose array view Numba builds anew on every call (by default
    with a host sync) and then types, checks and flattens into 13 launch parameters. In the simulator: the
    flat numpy view, which a kernel indexes the same way.
    """
    if simulated():
        return t.detach().view(-1).numpy()
    return t.data_ptr()


def torch_stream():
    """Torch's current CUDA stream as a Numba stream (Numba's default stream in the simulator): a kernel
    launched on it queues behind the torch work that made its inputs."""
    if simulated():
        return cuda.default_stream()
    return cuda.external_stream(torch.cuda.current_stream().cuda_stream)


def fp32(t: torch.Tensor) -> torch.Tensor:
    """t widened to a contiguous fp32 tensor (a copy unless it already is one; inputs are never written)."""
    return t.detach().to(torch.float32).contiguous()


def empty_f32(*shape, device) -> torch.Tensor:
    """An fp32 buffer from torch.empty: the tests poison it, so an element no thread writes shows up as NaN."""
    return torch.empty(*shape, dtype=torch.float32, device=device)


def head_dim_bucket(head_dim: int) -> int:
    """The compile-time head_dim a kernel is specialised for: the next power of two >= head_dim, at least 16."""
    return max(16, 1 << (head_dim - 1).bit_length())


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def finish(out, lse2, q, return_lse, lse_shift=None):
    """fp32 kernel output -> q's dtype; base-2 lse -> natural log (plus the smoothing shift, if any)."""
    out = out.to(q.dtype)
    if not return_lse:
        return out
    lse = lse2 * LN2
    if lse_shift is not None:
        lse = lse + lse_shift
    return out, lse
