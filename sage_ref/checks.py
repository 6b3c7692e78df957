"""Input validation shared by every entry point of the project.

Every public function validates its arguments here, so bad input always gets the
same ValueError/TypeError naming the argument, never an ``assert`` or a crash deep
inside a kernel.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class Shape:
    """Sizes of an attention problem in HND layout.

    q: [batch, heads, q_len, head_dim]; k, v: [batch, kv_heads, kv_len, head_dim].
    """

    batch: int
    heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 for MHA, heads for MQA)."""
        return self.heads // self.kv_heads


def check_qkv(q, k, v, *, allow_empty: bool = False) -> Shape:
    """Check q, k, v (HND layout) and return their sizes.

    Batch and lengths must be >= 1, or, with ``allow_empty``, may be 0 (the public API answers such calls as
    torch's SDPA does, without a kernel); heads are always >= 1.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float_tensor(name, t)
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}; q, k and v must share a dtype")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; q, k and v must share a device")
    batch, heads, q_len, head_dim = q.shape
    _, kv_heads, kv_len, _ = k.shape
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if k.shape[0] != batch:
        raise ValueError(f"k has batch {k.shape[0]} but q has batch {batch}")
    if k.shape[3] != head_dim:
        raise ValueError(f"k has head_dim {k.shape[3]} but q has head_dim {head_dim}")
    if heads < 1 or kv_heads < 1 or (not allow_empty and min(batch, q_len, kv_len) < 1):
        least = "heads >= 1" if allow_empty else "batch, heads and lengths >= 1"
        raise ValueError(f"q and k need {least}, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"q has head_dim {head_dim}; supported is 1..{MAX_HEAD_DIM}")
    if heads % kv_heads != 0:
        raise ValueError(f"q's heads ({heads}) must be a multiple of k's heads ({kv_heads}) for GQA/MQA")
    return Shape(batch, heads, kv_heads, q_len, kv_len, head_dim)


def check_float_tensor(name: str, t) -> torch.Tensor:
    """A 4-d floating-point tensor [batch, heads, seq, head_dim]."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.dim() != 4:
        raise ValueError(f"{name} must have 4 dimensions [batch, heads, seq, head_dim], got shape {tuple(t.shape)}")
    return t


def check_tokens(name: str, t: torch.Tensor) -> torch.Tensor:
    """A [..., seq, channels] tensor with at least one token: a mean or a maximum over none has no value."""
    if t.shape[-2] < 1:
        raise ValueError(f"{name} needs at least one token (dimension -2), got shape {tuple(t.shape)}")
    return t


def check_flag(name: str, value) -> bool:
    """A boolean option; 0/1 or None are refused so typos don't pass silently."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_choice(name: str, value, choices):
    """An option that must be one of ``choices`` (strings, or None where listed; anything else, an array included,
    is refused by name rather than compared elementwise)."""
    if not (value is None or isinstance(value, str)) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_block(name: str, value) -> int:
    """A tile size: a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def resolve_sm_scale(sm_scale, head_dim: int) -> float:
    """The softmax scale: ``head_dim ** -0.5`` by default, else a finite real number (Python's or NumPy's)."""
    if sm_scale is None:
        return head_dim**-0.5
    if isinstance(sm_scale, bool) or not isinstance(sm_scale, numbers.Real):
        raise TypeError(f"sm_scale must be a float or None, got {sm_scale!r}")
    try:
        value = float(sm_scale)
    except OverflowError:  # an int beyond float's range
        value = math.inf
    if not math.isfinite(value):
        raise ValueError(f"sm_scale must be finite, got {sm_scale!r}")
    return value


MASK_DTYPES = (torch.bool, *FLOAT_DTYPES)


def check_attn_mask(attn_mask, shape: Shape, device) -> torch.Tensor | None:
    """Check an attention mask and return it as a 4-d view broadcastable to [batch, heads, q_len, kv_len].

    A mask is boolean (True = the query attends to the key, torch's convention) or an
    additive float bias in natural-log units, with any shape that broadcasts to
    [batch, heads, q_len, kv_len] (heads = query heads). Nothing is copied: the view keeps
    the mask's size-1 dimensions, so a key-padding mask [batch, 1, 1, kv_len] stays small.
    """
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.dtype not in MASK_DTYPES:
        raise TypeError(f"attn_mask must be bool or float16/bfloat16/float32/float64, got {attn_mask.dtype}")
    if attn_mask.device != device:
        raise ValueError(f"attn_mask is on {attn_mask.device} but q is on {device}; they must share a device")
    target = (shape.batch, shape.heads, shape.q_len, shape.kv_len)
    mask_shape = tuple(attn_mask.shape)
    if len(mask_shape) > 4 or any(m not in (1, t) for m, t in zip(reversed(mask_shape), reversed(target))):
        raise ValueError(
            f"attn_mask of shape {mask_shape} does not broadcast to [batch, heads, q_len, kv_len] = {list(target)}"
        )
    return attn_mask[(None,) * (4 - attn_mask.dim())]
