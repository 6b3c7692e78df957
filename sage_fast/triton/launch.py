"""Host-side helpers shared by the rungs' launchers."""

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch

LOG2E = math.log2(math.e)


def strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    """A 4-d tensor's element strides: kernels read any layout or view in place."""
    return tuple(t.stride())


def cuda_index(device: torch.device) -> int:
    """The index of CUDA ``device`` ("cuda" without one: the current device)."""
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.cache
def cuda_properties_of(index: int):
    """``torch.cuda.get_device_properties(index)``, looked up once per GPU."""
    return torch.cuda.get_device_properties(index)


def cuda_properties(device: torch.device):
    """The properties (``major``, ``minor``, ``multi_processor_count``, ...) of CUDA ``device``: each lookup through
    torch costs microseconds of host time, and a call needs them up to four times."""
    return cuda_properties_of(cuda_index(device))


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of CUDA ``device``, e.g. (9, 0) for an H100."""
    props = cuda_properties(device)
    return props.major, props.minor


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) on the host. ``triton.cdiv`` (and ``triton.next_power_of_2``) are constexpr functions in Triton
    3.6, so each host call passes through their wrapper: ≈ 2-3 µs, five times per sageattn call."""
    return -(-a // b)


def head_dim_block(head_dim: int, minimum: int = 16) -> int:
    """The kernels' HEAD_DIM tile: a power of two >= ``minimum`` (the tensor-core K step: 16 for fp16,
    32 for int8, see ``INT8_MIN_HEAD_DIM``); the extra channels are masked or zero-padded."""
    return max(minimum, 1 << (head_dim - 1).bit_length())


INT8_MIN_HEAD_DIM = 32  # an int8 MMA sums 32 products per step


def attention_grid(q: torch.Tensor, block_m: int) -> tuple[int, int]:
    """One program per (query tile, batch·head)."""
    return (cdiv(q.shape[2], block_m), q.shape[0] * q.shape[1])


def lse_buffer(q: torch.Tensor, return_lse: bool) -> torch.Tensor:
    """fp32 [B, H, Nq] for the log-sum-exp, or a 1-element placeholder the kernel never touches."""
    if return_lse:
        return torch.full(q.shape[:3], float("nan"), dtype=torch.float32, device=q.device)
    return torch.empty(1, dtype=torch.float32, device=q.device)


@dataclass(frozen=True)
class Tiles:
    """A kernel configuration: BLOCK_M query rows x BLOCK_N keys per tile, warps, pipeline stages;
    ``register_caps``, (HEAD_DIM tile, registers per thread) pairs that bound the registers the compiler
    may use at that head size (absent: its own choice); ``causal_register_caps``, the same for causal launches,
    taking precedence there (the diagonal tile's mask can need registers the other launches do not);
    ``head_dim_warps``, (HEAD_DIM tile, warps) pairs that override ``num_warps`` at that head size; ``tma``: K
    and V tiles copied through tensor descriptors (the Hopper TMA unit) instead of per-thread loads; and
    ``gluon``: the attention runs the warp-specialized Gluon kernel (``attn_gluon``, sm90, fp8 or fp16 P·V, no
    attention mask) instead of ``attn_int8``'s, with two consumer warpgroups of ``num_warps`` = 4 warps and BLOCK_M rows
    each per program."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    register_caps: tuple[tuple[int, int], ...] = ()
    causal_register_caps: tuple[tuple[int, int], ...] = ()
    head_dim_warps: tuple[tuple[int, int], ...] = ()
    tma: bool = False
    gluon: bool = False

    def maxnreg(self, head_dim_padded: int, is_causal: bool) -> Optional[int]:
        """The launch's ``maxnreg``: fewer registers per thread let more programs share an SM."""
        caps = dict(self.register_caps)
        if is_causal:
            caps.update(self.causal_register_caps)
        return caps.get(head_dim_padded)

    def warps(self, head_dim_padded: int) -> int:
        """The launch's ``num_warps`` at this HEAD_DIM tile."""
        return dict(self.head_dim_warps).get(head_dim_padded, self.num_warps)
