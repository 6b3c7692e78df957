"""Route ``torch.nn.functional.scaled_dot_product_attention`` through sage inside a ``with`` block.

Any model that calls torch's SDPA tries sage in one line::

    with torch.no_grad(), sage_fast.integrations.route_sdpa() as counts:
        out = model(x)
    print(counts)   # calls per variant, and every fallback to torch with its reason

(sage has no backward: under grad mode, a model whose weights require grad makes every call a fallback.)
The router is a ``torch.overrides.TorchFunctionMode``: it sees every call of torch's function,
however it was imported (``F.scaled_dot_product_attention``, ``from torch.nn.functional import ...``),
in the thread that entered the block, and passes every other torch function through unchanged (at a
few microseconds of Python per call). A call sage cannot honour (dropout, grad needed, float64, a mask
that does not broadcast without batch broadcasting, head_dim > 256, ...) runs torch's own function and
is counted with the reason, or raises with ``strict=True``. Blocks nest: the innermost decides each call.
Not routed: ``nn.MultiheadAttention`` and the ``nn.Transformer*`` layers, whose attention runs in C++ fast
paths or inside ``F.multi_head_attention_forward``, which the mode hands to torch whole (Hugging Face models
call SDPA themselves).
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from sage_ref.checks import check_flag

from .counts import CallCounts
from .variants import attend, check_options, resolve


def torch_sdpa_arguments(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                         enable_gqa=False):  # fmt: skip
    """torch's SDPA signature, to bind a call's positional and keyword arguments by name."""
    return {"query": query, "key": key, "value": value, "attn_mask": attn_mask, "dropout_p": dropout_p, "is_causal": is_causal,
                "scale": scale, "enable_gqa": enable_gqa}  # fmt: skip


class HandedBack(threading.local):
    """Whether this thread is running torch's SDPA for a call a ``SageSDPA`` decided (``torch_runs``)."""

    active = False


HANDED_BACK = HandedBack()


def torch_runs(func, args, kwargs):
    """Torch's own SDPA for a call a ``SageSDPA`` gives back to torch. Inside a mode's ``__torch_function__`` only
    that mode is off: the call would reach the next ``SageSDPA`` out (a nested ``route_sdpa`` block, a diffusers
    layer's mode inside one) and be routed and counted again. The innermost decides; other modes still see the call.
    """
    previous, HANDED_BACK.active = HANDED_BACK.active, True
    try:
        return func(*args, **kwargs)
    finally:
        HANDED_BACK.active = previous


class SageSDPA(TorchFunctionMode):
    """The mode behind ``route_sdpa``: sage for the SDPA calls it can take, torch's SDPA for the rest.

    Parameters
    ----------
    variant : {"auto", "fp8", "fp16", "torch"}
        What the routed calls run (see ``sage_fast.integrations.variants``); "torch" counts the calls
        and changes nothing; "auto" leaves the calls where torch's SDPA is faster to it (decode steps, and on a GPU
        calls with fewer keys than ``variants.AUTO_MIN_KEYS``; ``variants.resolve``) and counts them as "torch".
    implementation : {"auto", "triton", "numba", "reference"}
        Passed to ``sage_fast.sageattn`` ("auto": the Triton kernels on CUDA tensors, the sage_ref
        emulation on the CPU).
    strict : bool
        Raise sage's TypeError/ValueError instead of falling back.
    counts : CallCounts, optional
        Where to count; a new one by default (the ``with`` statement's target).
    """

    def __init__(self, variant="auto", *, implementation="auto", strict=False, counts=None):
        super().__init__()
        check_options(variant, implementation)
        check_flag("strict", strict)
        if counts is not None and not isinstance(counts, CallCounts):
            raise TypeError(f"counts must be a CallCounts or None, got {type(counts).__name__}")
        self.variant, self.implementation, self.strict = variant, implementation, strict
        self.counts = CallCounts() if counts is None else counts
        self.sdpa_calls = 0  # calls this mode saw, routed or not

    def __enter__(self):
        super().__enter__()
        return self.counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or HANDED_BACK.active:
            return func(*args, **kwargs)
        return self.route(func, args, kwargs)

    def route(self, func, args, kwargs):
        """One SDPA call: the variant "auto" or the block chose first ("torch" runs torch's SDPA, counted as such,
        whatever the inputs), then sage if it can honour the call. A call is counted once it has run."""
        self.sdpa_calls += 1
        try:
            call = torch_sdpa_arguments(*args, **kwargs)
        except TypeError as error:  # an argument this torch has and sage does not know of
            return self.fall_back(func, args, kwargs, f"arguments sage does not know: {error}")
        tensors = [
            t for t in (call["query"], call["key"], call["value"], call["attn_mask"]) if isinstance(t, torch.Tensor)
        ]
        query, key = call["query"], call["key"]
        q_len, kv_len = (t.shape[-2] if isinstance(t, torch.Tensor) and t.dim() >= 2 else None for t in (query, key))
        variant = resolve(self.variant, query.device, q_len, kv_len, self.implementation) if tensors else self.variant
        if variant == "torch":
            out = torch_runs(func, args, kwargs)
            self.counts.record("torch")
            return out
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return self.fall_back(func, args, kwargs, "inputs require grad (sageattn has no backward)")
        try:
            out = attend(variant, implementation=self.implementation, **call)
        except (TypeError, ValueError) as error:
            return self.fall_back(func, args, kwargs, str(error), error)
        self.counts.record(variant)
        return out

    def fall_back(self, func, args, kwargs, reason, error=None):
        if self.strict:
            raise (
                error
                if error is not None
                else ValueError(f"sage cannot run this scaled_dot_product_attention call: {reason}")
            )
        out = torch_runs(func, args, kwargs)
        self.counts.fall_back(reason)
        return out


def route_sdpa(variant="auto", *, implementation="auto", strict=False, counts=None) -> SageSDPA:
    """A context manager that runs torch's scaled_dot_product_attention calls through sage.

    ``with route_sdpa(...) as counts:`` gives the ``CallCounts`` the block fills. Arguments as
    ``SageSDPA``. Semantics are torch's (top-left causal, boolean or additive masks, ``enable_gqa``);
    quantized, so expect sageattn's accuracy, not fp16 SDPA's bits.

    Examples
    --------
    >>> import torch, torch.nn.functional as F
    >>> q = torch.randn(1, 4, 10, 32)
    >>> with route_sdpa(variant="fp16") as counts:
    ...     out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    ...     # sage has no dropout: torch runs this call, and counts it as a fallback
    ...     out = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
    >>> counts.variants["fp16"], counts.fallback_calls
    (1, 1)
    """
    return SageSDPA(variant, implementation=implementation, strict=strict, counts=counts)
