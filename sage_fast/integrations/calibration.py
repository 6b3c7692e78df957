"""Calibration: measure each variant on a model's own attention inputs and choose per layer (SageAttention v1).

The integrations capture every attention call of a sample run (``transformers.capture``,
``diffusers.capture``) as ``AttentionCall``s, each layer's q, k, v as the accurate model
produced them. ``measure`` runs every variant on them, compares with an fp64 truth and, on a GPU,
times each; ``choose`` gives each layer the fastest variant that passes: "torch" always (it is the
model's own attention), a sage variant if its smallest cosine similarity is at least the threshold.
``calibrate`` does both and returns an ``AttentionPlan``.

Fastest means measured, not assumed. On an H200 (docs/benchmarks.md) sageattn fp8 beats SDPA-cuDNN only
from about 4k tokens, and sageattn fp16 only from 8-16k tokens (1.02-1.15x; 0.57-0.80x at 1k): a fixed order
fp8 > fp16 > torch would hand a short layer that fails fp8's threshold the fp16 path, slower than torch and
less accurate. So on CUDA every variant is timed on every call (``cuda_ms``: the median of repetitions after
a warm-up, so compilation is not timed) and a layer's time is the sum over its calls: the choice holds for
the shapes of the sample, so calibrate on inputs as long as those the model will run. On the CPU the sage
variants run an emulation whose speed says nothing about a GPU's, so nothing is timed and the choice falls
back to the static order ``VARIANTS`` (fp8, fp16, torch: the paper's assumption that lower P·V precision is
faster), unless the caller passes a ``timer``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import sage_ref

from .plan import AttentionPlan, check_cosine, check_variant
from .variants import VARIANTS, attend, variants_for

TRUTH_ELEMENTS = 2**27  # fp64 scores per chunk of query heads (1 GiB): bounds the truth's memory at long lengths
WARMUP_MS, REP_MS = 10, 50  # do_bench's budgets: a few repetitions at long lengths, many at short ones


@dataclass(frozen=True)
class AttentionCall:
    """One captured attention call, in torch SDPA semantics (top-left causal, bool or additive mask).

    query [batch, heads, q_len, head_dim]; key, value [batch, kv_heads, kv_len, head_dim]; attn_mask
    broadcastable to [batch, heads, q_len, kv_len] or None. ``layer`` is the calling module's name.
    """

    layer: str
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attn_mask: torch.Tensor | None
    is_causal: bool
    scale: float | None
    enable_gqa: bool

    @classmethod
    def of(cls, layer, *, query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
        """A call with its tensors cloned (and detached): a cache updated in place later cannot change it."""
        mask = None if attn_mask is None else attn_mask.detach().clone()
        return cls(layer, query.detach().clone(), key.detach().clone(), value.detach().clone(), mask,
                   bool(is_causal), scale, bool(enable_gqa))  # fmt: skip

    def sdpa_arguments(self) -> dict:
        return {"query": self.query, "key": self.key, "value": self.value, "attn_mask": self.attn_mask,
                    "is_causal": self.is_causal, "scale": self.scale, "enable_gqa": self.enable_gqa}  # fmt: skip


def truth(call: AttentionCall) -> torch.Tensor:
    """The call's attention in fp64 (torch's SDPA math on upcast inputs), [batch, heads, q_len, head_dim].

    Computed a chunk of query heads at a time, so that the fp64 scores stay within TRUTH_ELEMENTS.
    """
    q, k, v = (t.double() for t in (call.query, call.key, call.value))
    mask = call.attn_mask
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.double()
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    batch, heads, q_len, _ = q.shape
    step = max(1, TRUTH_ELEMENTS // (batch * q_len * k.shape[2]))
    chunks = []
    for h in range(0, heads, step):
        heads_mask = mask if mask is None or mask.dim() < 3 or mask.shape[-3] == 1 else mask[..., h : h + step, :, :]
        chunks.append(F.scaled_dot_product_attention(q[:, h : h + step], k[:, h : h + step], v[:, h : h + step],
                                                     attn_mask=heads_mask, is_causal=call.is_causal,
                                                     scale=call.scale))  # fmt: skip
    return torch.cat(chunks, dim=1)


def cuda_ms(variant: str, run) -> float:
    """The median time of ``run()`` on the GPU in milliseconds (``triton.testing.do_bench``).

    do_bench runs ``run`` once and then for about WARMUP_MS before it times, so a Triton compilation is
    not timed, and clears the L2 cache before each timed repetition, as a model's other layers would.
    ``variant`` is part of the timer interface for timers that model speed rather than measure it
    (the tests' synthetic ones); this one measures and ignores it.
    """
    from triton.testing import do_bench

    return do_bench(run, warmup=WARMUP_MS, rep=REP_MS, return_mode="median")


def measure(calls, variants=VARIANTS, *, implementation: str = "auto", timer=None) -> dict:
    """Layer → variant → {"cosine": smallest cosine similarity to the fp64 truth over the layer's calls,
    "ms": the sum over its calls of ``timer(variant, run)``} ("ms" only with a ``timer``).

    Every variant runs every call (the sage ones as ``implementation`` says); a variant that refuses
    a call raises, as it would in the model. A NaN cosine (a non-finite output) counts as -1. A call without
    a batch, a query or a key is skipped: every variant answers it exactly (zeros), and it takes no time.
    """
    for variant in variants:
        check_variant("a variant", variant)
    metrics: dict = {}
    with torch.no_grad():
        for call in calls:
            if min(call.query.shape[0], call.query.shape[-2], call.key.shape[-2]) == 0:
                continue
            exact = truth(call)
            by_variant = metrics.setdefault(call.layer, {})
            for variant in variants:
                run = functools.partial(attend, variant, implementation=implementation, **call.sdpa_arguments())
                cosine = sage_ref.cosine_similarity(run(), exact)
                # NaN (a non-finite output) fails every threshold; above 1 is rounding of a perfect match.
                cosine = -1.0 if math.isnan(cosine) else cosine
                measures = by_variant.setdefault(variant, {"cosine": 1.0})
                measures["cosine"] = min(measures["cosine"], cosine)
                if timer is not None:
                    measures["ms"] = measures.get("ms", 0.0) + timer(variant, run)
    return metrics


def choose(metrics: dict, threshold: float) -> dict:
    """Layer → the fastest variant that passes: "torch" always, a sage variant if its cosine >= ``threshold``.

    Fastest by ``metrics[layer][variant]["ms"]`` where every passing variant, "torch" among them, has
    one (ties go to the earlier in ``VARIANTS``); where any lacks a time (nothing was timed), the first
    passing variant in the static order ``VARIANTS``: fp8, fp16, torch. torch's own cosine is not held
    to the threshold: it is the model's own attention, the one the threshold bounds sage's departure from.

    Examples
    --------
    >>> timed = {
    ...     "fp8": {"cosine": 0.998, "ms": 1.0},
    ...     "fp16": {"cosine": 0.9999, "ms": 2.2},
    ...     "torch": {"cosine": 1.0, "ms": 2.0},
    ... }
    >>> untimed = {v: {"cosine": m["cosine"]} for v, m in timed.items()}
    >>> choose({"a": timed, "b": untimed}, 0.999)  # a: fp16 passes, but torch is faster
    {'a': 'torch', 'b': 'fp16'}
    >>> choose({"a": timed}, 0.99)
    {'a': 'fp8'}
    """
    check_cosine("threshold", threshold)
    chosen = {}
    for layer, by_variant in metrics.items():
        passing = [v for v in VARIANTS if v == "torch" or (v in by_variant and by_variant[v]["cosine"] >= threshold)]
        if all("ms" in by_variant.get(v, {}) for v in passing):
            chosen[layer] = min(passing, key=lambda v: by_variant[v]["ms"])  # min keeps the first of equals
        else:
            chosen[layer] = passing[0]
    return chosen


def calibrate(calls, *, threshold: float = 0.999, default: str = "torch", variants=None,
              implementation: str = "auto", timer=None) -> AttentionPlan:  # fmt: skip
    """Measure the variants on captured ``calls`` and return the plan that ``choose`` makes.

    Parameters
    ----------
    calls : list of AttentionCall
        From ``sage_fast.integrations.transformers.capture`` or ``...diffusers.capture``.
    threshold : float
        The smallest cosine similarity to the fp64 truth a layer's sage variant may have on any call.
    default : {"torch", "fp16", "fp8"}
        The variant of layers the calibration did not see ("torch": nothing is risked on them).
    variants : sequence of str, optional
        The sage variants to try; by default those that run on the calls' device ("fp8" needs sm89+
        for the kernels). "torch" is always measured too: every layer can fall back to it.
    implementation : str
        Passed to ``sage_fast.sageattn``.
    timer : callable, optional
        ``timer(variant, run)`` → milliseconds that ``run()`` takes. By default ``cuda_ms`` for calls on
        a GPU, and no timing elsewhere (the choice then follows the static order ``VARIANTS``).
    """
    calls = list(calls)
    if not calls or not all(isinstance(c, AttentionCall) for c in calls):
        raise ValueError("calls must be a non-empty list of AttentionCall (from a capture)")
    check_variant("default", default)
    check_cosine("threshold", threshold)
    if isinstance(variants, str):
        raise TypeError(f"variants must be a sequence of variant names, not the str {variants!r}")
    device = calls[0].query.device
    if variants is None:
        variants = variants_for(device, implementation)
    # Each variant once (a repeat would be measured twice and its times summed), "torch" last.
    variants = (*dict.fromkeys(v for v in variants if v != "torch"), "torch")
    if timer is None and device.type == "cuda":
        timer = cuda_ms
    metrics = measure(calls, variants, implementation=implementation, timer=timer)
    return AttentionPlan(layers=choose(metrics, threshold), default=default, threshold=threshold, metrics=metrics)
