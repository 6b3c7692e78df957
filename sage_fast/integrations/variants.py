"""The attention variants an integration can run for one layer, with torch's SDPA semantics.

======== ================================================================ ===============================
variant  what runs                                                        accuracy (Gaussian, rel-L1)
======== ================================================================ ===============================
"fp8"    ``sageattn(pv="fp8")``: INT8 Q·Kᵀ, FP8 e4m3 P·V (SageAttention2) about 0.04
"fp16"   ``sageattn(pv="fp16")``: INT8 Q·Kᵀ, FP16 P·V (SageAttention v1)  about 0.01
"torch"  ``torch.nn.functional.scaled_dot_product_attention`` itself     the input dtype's rounding
======== ================================================================ ===============================

Which is fastest depends on the GPU, the head_dim and the length, so calibration measures it
(``sage_fast.integrations.calibration``). On an H200 (docs/benchmarks.md: fp16 inputs, 1k-32k tokens)
"fp8" beats torch's SDPA with cuDNN only from about 4k tokens, and "fp16" only from 8-16k (1.02-1.15x;
at 1k tokens fp8 0.62-0.82x, fp16 0.57-0.80x, where "torch" is faster and more accurate than either); "auto"
follows those crossovers (``resolve``). The order of ``VARIANTS`` (fp8, fp16, torch: the paper's assumption
that lower P·V precision is faster) is only the fallback where nothing is timed. The v1 paper's INT8 P·V is
left out: it exists only in the sage_ref emulation (``sage_ref.sage_attention(pv="int8")``), not as a kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sage_ref.checks import check_choice

from .. import api
from ..api import FP8_MIN_CAPABILITY, IMPLEMENTATIONS, resolve_pv, scaled_dot_product_attention
from ..triton.launch import cuda_capability

VARIANTS = ("fp8", "fp16", "torch")  # also calibration's static order where nothing is timed
SAGE_VARIANTS = ("fp8", "fp16")
CHOICES = ("auto", *VARIANTS)  # "auto": see ``resolve``
# "auto" runs torch's SDPA for calls with fewer queries than this: one query tile of the kernels (BLOCK_M).
AUTO_MIN_QUERIES = 64
# ... and, on a CUDA device, for calls with fewer keys than this per P·V precision: from there on the whole sageattn
# call ran at 0.96x torch's SDPA (cuDNN) or better at every head size, causal or not (H100, H200; B·N = 16k, H = 32).
AUTO_MIN_KEYS = {"fp8": 4096, "fp16": 8192}


def check_options(variant: str, implementation: str) -> None:
    """Refuse an unknown ``variant`` or ``implementation`` by name (ValueError)."""
    check_choice("variant", variant, CHOICES)
    check_choice("implementation", implementation, IMPLEMENTATIONS)


def variants_for(device: torch.device, implementation: str = "auto") -> tuple[str, ...]:
    """The variants that can run on ``device``, in ``VARIANTS``' order: "fp8" needs sm89+ for the Triton kernels,
    and is not in the Numba ladder (fp16 P·V only) at all.

    On the CPU every variant runs (the sage_ref emulation rounds P to e4m3 like the kernel does).
    """
    if implementation == "numba":
        return tuple(v for v in VARIANTS if v != "fp8")
    device = torch.device(device)
    kernels = implementation == "triton" or (implementation == "auto" and device.type == "cuda")
    if kernels and device.type == "cuda" and cuda_capability(device) < FP8_MIN_CAPABILITY:
        return tuple(v for v in VARIANTS if v != "fp8")
    return VARIANTS


def attend(variant, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
           *, implementation="auto"):  # fmt: skip
    """softmax(Q Kᵀ · scale + mask) V with torch's SDPA semantics (top-left causal), by ``variant``.

    query [batch, heads, q_len, head_dim], key and value [batch, kv_heads, kv_len, head_dim] (kv_heads
    dividing heads with ``enable_gqa``); returns [batch, heads, q_len, head_dim]. The sage variants
    refuse what they cannot honour (``dropout_p`` > 0 among them) with TypeError/ValueError naming the
    argument; "torch" runs torch's function (``implementation`` does not apply to it).
    """
    check_options(variant, implementation)
    if variant == "torch":
        return F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=enable_gqa,
        )
    return scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
        enable_gqa=enable_gqa, pv=variant, implementation=implementation,
    )  # fmt: skip


def attend_causal(variant, query, key, value, key_mask=None, scale=None, *, implementation="auto"):
    """softmax(Q Kᵀ · scale + causal + key_mask) V by a sage ``variant``, causal aligned *bottom-right*.

    Query i sees key j iff j <= i + kv_len - q_len and ``key_mask[b, 0, 0, j]`` (bool [batch, 1, 1,
    kv_len], or None): sageattn's own ``is_causal`` with a key-padding row, the kernel's fast mask path.
    torch's SDPA has no such call (its ``is_causal`` is top-left and excludes a mask), so there is no
    "torch" variant here. Shapes as ``attend``'s; GQA runs natively.
    """
    check_options(variant, implementation)
    check_choice("variant", variant, SAGE_VARIANTS)
    return api.sageattn(query, key, value, is_causal=True, sm_scale=scale, attn_mask=key_mask, pv=variant,
                        implementation=implementation)  # fmt: skip


def mask_layout(attn_mask, is_causal: bool) -> str:
    """How a call's mask reaches the kernel, as ``CallCounts.masks`` keys it (from shapes, never values)."""
    if attn_mask is None:
        return "causal" if is_causal else "none"
    rows = "key row" if attn_mask.dim() < 2 or attn_mask.shape[-2] == 1 else "full"
    return f"causal + {rows}" if is_causal else rows


def resolve(variant: str, device: torch.device, q_len: int | None = None, kv_len: int | None = None,
            implementation: str = "auto") -> str:  # fmt: skip
    """The variant that runs a call of ``q_len`` queries over ``kv_len`` keys on ``device`` (None: not known, e.g. a
    run's variant, whatever its calls) with sageattn's ``implementation``.

    "auto" is the P·V precision sageattn picks on ``device`` (fp8 on sm89+ GPUs, else fp16; always fp16 for the
    Numba ladder, which has no fp8 P·V), except where torch's SDPA is faster, which then runs:

    - calls with fewer than ``AUTO_MIN_QUERIES`` queries (decoding with a KV cache, short chunks), on any device:
      each cached key serves few queries, so the call is memory-bound and the 8-bit arithmetic saves nothing,
      while sage quantizes K and V (reading them twice more) and spends ≈ 0.2-0.5 ms of host time. On an H200 a
      decode step (one query over 4k-32k cached keys) took 16-257 µs in torch's SDPA against 265-1337 µs.
    - on a CUDA device, calls with fewer than ``AUTO_MIN_KEYS[precision]`` keys: quantizing costs a fixed share per key
      (a third or more of the call at 1k keys) and a sage call ≈ 0.2-0.5 ms of host time, so torch's
      SDPA (cuDNN on Hopper) wins the short calls: H200 and H100 whole calls at B·N = 16k, fp8 0.54-0.82× at 1k
      keys, 0.73-1.01× at 2k, 0.96-1.16× at 4k; fp16 0.54-0.80× at 1k, 0.88-0.99× at 4k, 0.97-1.10× at 8k. At
      batch 1 a 1k-token causal prompt took 181-192 µs in sage against 35 in torch (host-bound). It does not
      apply on the CPU, where the emulation runs for testing (on CUDA tensors it applies whatever the
      implementation).

    The lines are measured crossovers of two cards, not a model: near them either can win by ≈ 10 % (at 8k keys
    a chunk of 512 queries at batch 1 lost 7 %, 1024 won 1.6×); calibration measures each layer. Other variants
    are returned as given. docs/notes.md has the measurements.
    """
    if variant != "auto":
        return variant
    if q_len is not None and q_len < AUTO_MIN_QUERIES:
        return "torch"
    device = torch.device(device)
    precision = "fp16" if implementation == "numba" else resolve_pv("auto", device, "auto")
    if kv_len is not None and device.type == "cuda" and kv_len < AUTO_MIN_KEYS[precision]:
        return "torch"
    return precision
