"""The public API: ``sageattn``, and ``scaled_dot_product_attention``, a drop-in for torch's.

Both validate and normalise their arguments in Python (layouts become strided views, never copies)
and then call one ``torch.library`` custom op, ``sage_fast::sageattn``, whose fake implementation
gives the output's shape, dtype and strides. So ``torch.compile(fullgraph=True)`` traces a call
without a graph break, and the Triton launches inside the op are opaque to it (and capturable by
CUDA graphs: no host synchronisation, no data-dependent shapes). A plain eager call, where nothing traces,
records or intercepts it, runs the op's implementation directly (``call_op``): same code, less host time.

The op runs the fused pipeline of rung 3 (``pv="fp16"``; rung 7, its Gluon twin, on sm90 at head_dim
65-128 without a mask) or rung 5 (``pv="fp8"``) of the Triton ladder, or, as
``implementation="reference"``, the sage_ref emulation those rungs are tested against (same quantization
blocks, same rounding points), which works on any device.
"""

from __future__ import annotations

import numbers
import re
from typing import Literal, Optional, overload

import torch
from triton.runtime.interpreter import InterpretedFunction

import sage_ref
from sage_ref.checks import check_attn_mask, check_choice, check_flag, check_qkv, resolve_sm_scale

from .triton import attn_int8, rung3_fused_quant, rung5_tma, rung7_gluon_fp16  # rung 7: None without Gluon
from .triton.launch import cuda_capability

LAYOUTS = ("HND", "NHD")
PV_CHOICES = ("auto", "fp16", "fp8")
IMPLEMENTATIONS = ("auto", "triton", "numba", "reference")
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_MIN_CAPABILITY = (8, 9)  # fp8 e4m3 tensor cores: Ada (sm89) and Hopper (sm90)
PV_RUNGS = {"fp16": rung3_fused_quant, "fp8": rung5_tma}  # each module's BLOCK_M/N are its quantization blocks


def triton_rung(pv, q, attn_mask):
    """The Triton-ladder module that runs a call: ``PV_RUNGS[pv]``, except fp16 P·V without a mask at head_dim
    65-128 on an sm90 GPU, where rung 7 (the same arithmetic, bit for bit, in Gluon with FlashAttention-3's
    schedule) is faster: whole call 613 TOPS against rung 3's 539 at head_dim 128, N = 8k, 375 against 359 at
    N = 1k (H100, docs/results/bench-h100-2026-11-26-rung7.json); at head_dim 64 it is slower (360 against 444)."""
    if (pv == "fp16" and attn_mask is None and rung7_gluon_fp16 is not None and q.is_cuda
            and 64 < q.shape[-1] <= 128 and cuda_capability(q.device)[0] == 9):  # fmt: skip
        return rung7_gluon_fp16
    return PV_RUNGS[pv]


def reference_forward(q, k, v, *, is_causal, sm_scale, smooth_k, pv, attn_mask, return_lse):
    """The sage_ref emulation of the rung that ``pv`` selects, with that rung's block sizes."""
    rung = PV_RUNGS[pv]
    return sage_ref.sage_attention(
        q, k, v, is_causal=is_causal, sm_scale=sm_scale, smooth_k=smooth_k, qk_granularity="block", pv=pv,
        block_m=rung.BLOCK_M, block_n=rung.BLOCK_N, attn_mask=attn_mask, return_lse=return_lse,
    )  # fmt: skip


def sageattn_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: Optional[torch.Tensor],
    is_causal: bool,
    sm_scale: float,
    smooth_k: bool,
    pv: str,
    return_lse: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated HND views in, (out like ``torch.empty_like(q)``, lse [B,H,Nq] fp32 or an empty [0]) out.

    backend "triton" runs rung 3 or 7 (pv "fp16", see ``triton_rung``) or rung 5 (pv "fp8"); "numba" the
    fastest Numba rung (``sage_fast.numba.forward``, fp16 P·V, no masks); "reference" the Triton rungs'
    sage_ref emulation.
    """
    kwargs = dict(is_causal=is_causal, sm_scale=sm_scale, smooth_k=smooth_k, attn_mask=attn_mask, return_lse=return_lse)
    if backend == "triton":
        result = triton_rung(pv, q, attn_mask).forward(q, k, v, **kwargs)
    elif backend == "numba":
        from . import numba as numba_ladder  # imported on first use: numba's import is slow

        result = numba_ladder.forward(q, k, v, is_causal=is_causal, sm_scale=sm_scale, smooth_k=smooth_k, return_lse=return_lse)
    else:
        result = reference_forward(q, k, v, pv=pv, **kwargs)
    out, lse = result if return_lse else (result, None)
    if backend != "triton":
        # The emulation returns a fresh contiguous tensor; give it the layout the fake promises.
        out = torch.empty_like(q).copy_(out)
    lse = lse.float().contiguous() if return_lse else q.new_empty(0, dtype=torch.float32)
    return out, lse


sageattn_op = torch.library.custom_op("sage_fast::sageattn", mutates_args=())(sageattn_impl)


@sageattn_op.register_fake
def _(q, k, v, attn_mask, is_causal, sm_scale, smooth_k, pv, return_lse, backend):
    lse_shape = q.shape[:3] if return_lse else (0,)
    return torch.empty_like(q), q.new_empty(lse_shape, dtype=torch.float32)


def needs_dispatch(tensors) -> bool:
    """Whether a call must go through torch's dispatcher as the custom op, not straight to ``sageattn_impl``: under
    torch.compile's tracing, a dispatch or function mode (fake tensors, FLOP counters, ``with torch.device``),
    for tensor subclasses, for meta tensors (shapes only: the op's fake implementation answers), or when autograd
    would record the call (the op's missing backward raises where a direct call would return an output silently
    cut from the graph)."""
    return (
        torch.compiler.is_compiling()
        or torch._C._len_torch_dispatch_stack() > 0
        or torch._C._is_torch_function_mode_enabled()
        or any(type(t) is not torch.Tensor or t.is_meta for t in tensors)
        or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    )


def call_op(q, k, v, attn_mask, is_causal, sm_scale, smooth_k, pv, return_lse, backend):
    """``torch.ops.sage_fast.sageattn``, or in a plain eager call its implementation directly: the same function,
    without the dispatcher, whose wrapper around the implementation (dynamo's ``disable``) makes every Python frame
    of the launches slower. Host time per call at B=1, H=32, N=1k, hd128 (H200): 210 against 440 µs in one run,
    214-272 against 267-403 in three interleaved rounds (docs/notes.md); SDPA's is ≈ 40, and a CUDA graph's replay
    of the whole call ≈ 3."""
    tensors = (q, k, v) if attn_mask is None else (q, k, v, attn_mask)
    if needs_dispatch(tensors):
        return torch.ops.sage_fast.sageattn(q, k, v, attn_mask, is_causal, sm_scale, smooth_k, pv, return_lse, backend)
    return sageattn_impl(q, k, v, attn_mask, is_causal, sm_scale, smooth_k, pv, return_lse, backend)


def nothing_to_attend(q):
    """(out, lse) of a call without a batch, a query or a key: zeros like q and lse -inf [B,H,Nq], no kernel.
    With no keys every query sees none, which gives 0 (and lse -inf) as a fully masked row does, and as torch's
    SDPA gives 0; with no batch or no query both are empty."""
    return torch.zeros_like(q), torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)


def kernels_available(device: torch.device) -> bool:
    """Whether the Triton kernels can run on tensors of ``device``: CUDA, or any device under the interpreter."""
    return device.type == "cuda" or isinstance(attn_int8.sage_attn_kernel, InterpretedFunction)


def resolve_pv(pv: str, device: torch.device, backend: str) -> str:
    """``pv="auto"``: fp8 on a CUDA GPU with compute capability >= 8.9, else fp16; refuse fp8 kernels below sm89."""
    capability = cuda_capability(device) if device.type == "cuda" else None
    on_fp8_gpu = capability is not None and capability >= FP8_MIN_CAPABILITY
    if pv == "auto":
        return "fp8" if on_fp8_gpu else "fp16"
    if pv == "fp8" and backend == "triton" and capability is not None and not on_fp8_gpu:
        raise ValueError(f"pv='fp8' needs fp8 tensor cores (sm89+), this GPU is sm{capability[0]}{capability[1]}; "
                         "use pv='fp16'")  # fmt: skip
    return pv


@overload
def sageattn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, tensor_layout: str = ..., is_causal: bool = ...,
    sm_scale: Optional[float] = ..., smooth_k: bool = ..., pv: str = ..., attn_mask: Optional[torch.Tensor] = ...,
    return_lse: Literal[False] = ..., implementation: str = ...,
) -> torch.Tensor: ...  # fmt: skip


@overload
def sageattn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, tensor_layout: str = ..., is_causal: bool = ...,
    sm_scale: Optional[float] = ..., smooth_k: bool = ..., pv: str = ..., attn_mask: Optional[torch.Tensor] = ...,
    return_lse: Literal[True], implementation: str = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...  # fmt: skip


def sageattn(
    q,
    k,
    v,
    *,
    tensor_layout="HND",
    is_causal=False,
    sm_scale=None,
    smooth_k=True,
    pv="auto",
    attn_mask=None,
    return_lse=False,
    implementation="auto",
):
    """SageAttention: softmax(Q Kᵀ · sm_scale + mask) V with INT8 Q·Kᵀ and FP16 or FP8 P·V.

    Q and K are quantized to INT8 with one scale per kernel tile (K first smoothed: its mean over
    tokens subtracted, which the softmax does not see); P·V runs in fp16 (SageAttention v1) or in
    FP8 e4m3 with per-channel V scales and fp32 accumulation across tiles (SageAttention2).

    Parameters
    ----------
    q : torch.Tensor
        Queries, [batch, heads, q_len, head_dim] ("HND") or [batch, q_len, heads, head_dim] ("NHD").
        float16, bfloat16 or float32 (float64 only with ``implementation="reference"``); any strides.
    k, v : torch.Tensor
        Keys and values, [batch, kv_heads, kv_len, head_dim] (or NHD), same dtype and device as q.
        ``heads`` must be a multiple of ``kv_heads`` (GQA/MQA: query head h reads KV head
        h // (heads // kv_heads)). Lengths are any >= 0 (as in torch's SDPA, no key gives 0 and lse
        -inf; no batch or query an empty output); head_dim is 1..256.
    tensor_layout : {"HND", "NHD"}
        How q, k, v and the output are laid out. Strided views are read in place, never copied.
    is_causal : bool
        Causal masking aligned bottom-right (FlashAttention's convention): query i sees key j iff
        j <= i + kv_len - q_len, so the last query sees every key, as decoding with a KV cache needs.
        Queries that see no key give 0 (and lse -inf).
    sm_scale : float, optional
        Softmax scale; ``head_dim ** -0.5`` by default.
    smooth_k : bool
        Subtract K's per-channel mean before quantizing it (accuracy; the output is unchanged in
        exact arithmetic).
    pv : {"auto", "fp16", "fp8"}
        Precision of the P·V product. "auto" is "fp8" on CUDA GPUs of compute capability >= 8.9 (as
        SageAttention2 does there; about rel-L1 0.04 on diffuse attention, twice the tensor-core
        rate) and "fp16" elsewhere. Pass "fp16" for the accurate path (about rel-L1 0.01). Its range is
        fp16's, as in SageAttention v1's kernel: V is rounded to fp16 and each 128-key tile's Σ p·v is
        summed in fp16, so it must stay below 65504 (|v| <= 511 always does; beyond, a row overflows to
        inf, never to a finite wrong value). "fp8" scales V per channel and has no such limit.
    attn_mask : torch.Tensor, optional
        Boolean (True = attend, torch's convention) or an additive float bias in natural-log units
        (added to Q Kᵀ · sm_scale, as torch's SDPA does), broadcastable to
        [batch, heads, q_len, kv_len] in every layout. A key-padding mask [batch, 1, 1, kv_len] takes
        the fast path: one row of the mask per key tile. Combined with ``is_causal`` by "and".
    return_lse : bool
        Also return the natural-log log-sum-exp of each row's (masked) logits, of the original Q and
        K (not the smoothed K), [batch, heads, q_len] float32 in every layout.
    implementation : {"auto", "triton", "numba", "reference"}
        "triton": the fused Triton kernels (on CPU tensors only under Triton's interpreter, i.e. with
        TRITON_INTERPRET=1 set before sage_fast is imported). "numba": the Numba-CUDA ladder's fastest
        rung (a teaching kernel, far slower; fp16 P·V, no ``attn_mask``; on CPU only under Numba's
        simulator, NUMBA_ENABLE_CUDASIM=1). "reference": the sage_ref emulation of the Triton kernels
        (same blocks, same rounding; any device, slow). "auto": "triton" for CUDA tensors,
        "reference" otherwise.

    Returns
    -------
    out : torch.Tensor
        Shape and layout of q, dtype of q.
    lse : torch.Tensor
        Only with ``return_lse=True``.

    Raises
    ------
    TypeError, ValueError
        For a bad argument, naming it. The op has no backward pass: differentiating through it
        raises when ``backward`` runs.

    Examples
    --------
    >>> import torch, sage_fast
    >>> q = torch.randn(2, 8, 100, 64, dtype=torch.float16)
    >>> # GQA: 2 KV heads, each shared by 4 query heads
    >>> k = torch.randn(2, 2, 77, 64, dtype=torch.float16)
    >>> v = torch.randn_like(k)
    >>> # key padding: sequence 2 has 50 real keys; the mask is [batch, 1, 1, kv_len]
    >>> padding = torch.arange(77) < torch.tensor([77, 50])[:, None]
    >>> mask = padding[:, None, None, :]
    >>> out, lse = sage_fast.sageattn(q, k, v, attn_mask=mask, return_lse=True)
    >>> out.shape, out.dtype, lse.shape
    (torch.Size([2, 8, 100, 64]), torch.float16, torch.Size([2, 8, 100]))
    """
    check_choice("tensor_layout", tensor_layout, LAYOUTS)
    check_choice("pv", pv, PV_CHOICES)
    check_choice("implementation", implementation, IMPLEMENTATIONS)
    for name, value in (("is_causal", is_causal), ("smooth_k", smooth_k), ("return_lse", return_lse)):
        check_flag(name, value)
    if tensor_layout == "NHD":
        # Validation speaks HND; a [batch, seq, heads, head_dim] tensor is read as its transposed view.
        q, k, v = (t.transpose(1, 2) if isinstance(t, torch.Tensor) and t.dim() == 4 else t for t in (q, k, v))
    shape = check_qkv(q, k, v, allow_empty=True)
    attn_mask = check_attn_mask(attn_mask, shape, q.device)
    scale = resolve_sm_scale(sm_scale, shape.head_dim)

    if implementation == "auto":
        backend = "triton" if q.device.type == "cuda" else "reference"
    else:
        backend = implementation
    if backend == "triton":
        if q.dtype not in KERNEL_DTYPES:
            raise TypeError(f"q has dtype {q.dtype}; the kernels take float16/bfloat16/float32 "
                            "(float64 only with implementation='reference')")  # fmt: skip
        if not kernels_available(q.device):
            raise RuntimeError(
                f"implementation='triton' needs CUDA tensors (q is on {q.device}) or Triton's CPU interpreter: "
                "set TRITON_INTERPRET=1 before importing sage_fast, or use implementation='reference'"
            )
    elif backend == "numba":
        if q.dtype not in KERNEL_DTYPES:
            raise TypeError(f"q has dtype {q.dtype}; implementation='numba' takes float16/bfloat16/float32")
        if attn_mask is not None:
            raise ValueError("attn_mask is not supported by implementation='numba'; use 'triton' or 'reference'")
        if pv == "fp8":
            raise ValueError("pv='fp8' is not supported by implementation='numba' (its P·V is fp16); use 'fp16' or 'auto'")
    elif implementation == "auto" and q.dtype not in KERNEL_DTYPES:
        raise TypeError(f"q has dtype {q.dtype}; float64 is only for implementation='reference'")
    pv = "fp16" if backend == "numba" else resolve_pv(pv, q.device, backend)

    if min(shape.batch, shape.q_len, shape.kv_len) == 0:
        out, lse = nothing_to_attend(q)
    else:
        out, lse = call_op(q, k, v, attn_mask, is_causal, scale, smooth_k, pv, return_lse, backend)
    if tensor_layout == "NHD":
        out = out.transpose(1, 2)
    return (out, lse) if return_lse else out


TORCH_NAMES = {"q": "query", "k": "key", "v": "value", "sm_scale": "scale"}


def scaled_dot_product_attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, *,
    pv="auto", implementation="auto",
):  # fmt: skip
    """A drop-in for ``torch.nn.functional.scaled_dot_product_attention`` that runs [`sageattn`][sage_fast.sageattn].

    Same arguments and semantics as torch's: ``attn_mask`` is bool (True = attend) or an additive
    float bias, broadcastable to [batch, heads, q_len, kv_len]; ``is_causal`` aligns the causal mask
    *top-left* (query i sees key j iff j <= i, also when q_len != kv_len; rows that see no key give
    0, as torch's do). Quantized: expect sageattn's accuracy (INT8 Q·Kᵀ; FP8 P·V on sm89+ GPUs), not
    fp16 SDPA's bits.

    What it does not honour it refuses, never ignores:

    - ``dropout_p`` must be 0.0 (this is an inference kernel): ValueError. Use torch's SDPA for
      training with dropout.
    - query, key, value must be 4-d [batch, heads, seq, head_dim] with key's and value's head_dim
      equal to query's; torch's 3-d and unbatched forms are refused with ValueError.
    - ``attn_mask`` together with ``is_causal=True``: ValueError, as torch documents (fold the
      causal mask into ``attn_mask`` instead).
    - heads != kv_heads needs ``enable_gqa=True`` (then heads must be a multiple of kv_heads);
      torch's broadcasting of size-1 batch or head dimensions is not supported.
    - float64 inputs: TypeError (use torch's SDPA or ``sageattn(implementation="reference")``).
    - The op has no backward; differentiating through it raises when ``backward`` runs.

    ``pv`` and ``implementation``, keyword-only and not torch's, are passed to [`sageattn`][sage_fast.sageattn]
    (integrations use them to pick a layer's P·V precision).

    Examples
    --------
    >>> import torch, sage_fast
    >>> q, k, v = (torch.randn(1, 4, 10, 32) for _ in range(3))
    >>> k, v = k[:, :, :7], v[:, :, :7]  # 10 queries, 7 keys: causal is top-left
    >>> out = sage_fast.scaled_dot_product_attention(q, k, v, is_causal=True)
    >>> out.shape
    torch.Size([1, 4, 10, 32])
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-d [batch, heads, seq, head_dim], got shape {tuple(t.shape)}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p must be a float, got {dropout_p!r}")
    if dropout_p != 0.0:
        raise ValueError(
            f"dropout_p={dropout_p}: sage_fast's attention is an inference kernel and has no dropout; "
            "call torch.nn.functional.scaled_dot_product_attention for training"
        )
    check_flag("is_causal", is_causal)
    check_flag("enable_gqa", enable_gqa)
    if is_causal and attn_mask is not None:
        raise ValueError("attn_mask must be None when is_causal=True (as torch documents); fold the mask into attn_mask")
    if not enable_gqa and query.shape[1] != key.shape[1]:
        raise ValueError(
            f"key has {key.shape[1]} heads but query has {query.shape[1]}; pass enable_gqa=True for grouped-query attention"
        )
    q_len, kv_len = query.shape[2], key.shape[2]
    if is_causal and q_len <= kv_len:
        # Top-left: query i sees keys j <= i < q_len, so keys from q_len on never count, and on the
        # square problem that is left top-left and bottom-right alignment agree.
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    elif is_causal:
        # q_len > kv_len: rows from kv_len on see every key; the bottom-right kernel mask does not fit.
        attn_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()
        is_causal = False
    try:
        return sageattn(
            query, key, value, is_causal=is_causal, sm_scale=scale, attn_mask=attn_mask, pv=pv, implementation=implementation
        )
    except (TypeError, ValueError) as error:
        # sageattn names q, k, v and sm_scale; this function's caller knows them by torch's names.
        message = re.sub(r"\b(q|k|v|sm_scale)\b", lambda m: TORCH_NAMES[m.group(1)], str(error))
        raise type(error)(message) from None
