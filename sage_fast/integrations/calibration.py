"""Calibration: measure each variant on a model's own attention inputs and choose per layer (SageAttention v1).

The integrations capture every attention call of a sample run (``transformers.capture``,
``diffusers.capture``) as ``AttentionCall``s, each layer's q, k, v as the accurate model
produced them. ``measure`` runs every variant on them and compares with an fp64 truth;
``choose`` gives each layer the fastest variant whose smallest cosine similarity is at least the
threshold (speed order fp8 > fp16 > torch, ``sage_fast.integrations.variants``); a layer no sage
variant satisfies runs torch. ``calibrate`` does both and returns an ``AttentionPlan``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import sage_ref

from .plan import AttentionPlan, check_cosine, check_variant
from .variants import VARIANTS, attend, variants_for

TRUTH_ELEMENTS = 2**27  # fp64 scores per chunk of query heads (1 GiB): bounds the truth's memory at long lengths


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


def measure(calls, variants=VARIANTS, *, implementation: str = "auto") -> dict:
    """Layer → variant → smallest cosine similarity to the fp64 truth over the layer's calls.

    Every variant runs every call (the sage ones as ``implementation`` says); a variant that refuses
    a call raises, as it would in the model. A NaN cosine (a non-finite output) counts as -1.
    """
    for variant in variants:
        check_variant("a variant", variant)
    metrics: dict = {}
    with torch.no_grad():
        for call in calls:
            exact = truth(call)
            by_variant = metrics.setdefault(call.layer, {})
            for variant in variants:
                out = attend(variant, implementation=implementation, **call.sdpa_arguments())
                cosine = sage_ref.cosine_similarity(out, exact)
                # NaN (a non-finite output) fails every threshold; above 1 is rounding of a perfect match.
                cosine = -1.0 if math.isnan(cosine) else cosine
                by_variant[variant] = min(by_variant.get(variant, 1.0), cosine)
    return metrics


def choose(metrics: dict, threshold: float, variants=VARIANTS) -> dict:
    """Layer → the first of ``variants`` (fastest first) whose cosine is >= ``threshold``, else "torch".

    Examples
    --------
    >>> choose({"a": {"fp8": 0.9990, "fp16": 0.9999}, "b": {"fp8": 0.98, "fp16": 0.99}}, 0.999)
    {'a': 'fp8', 'b': 'torch'}
    """
    check_cosine("threshold", threshold)
    return {layer: next((v for v in variants if v in by_variant and by_variant[v] >= threshold), "torch")
            for layer, by_variant in metrics.items()}  # fmt: skip


def calibrate(calls, *, threshold: float = 0.999, default: str = "torch", variants=None,
              implementation: str = "auto") -> AttentionPlan:  # fmt: skip
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
        Candidates, fastest first; by default those that run on the calls' device ("fp8" needs sm89+
        for the kernels).
    implementation : str
        Passed to ``sage_fast.sageattn``.
    """
    calls = list(calls)
    if not calls or not all(isinstance(c, AttentionCall) for c in calls):
        raise ValueError("calls must be a non-empty list of AttentionCall (from a capture)")
    check_variant("default", default)
    check_cosine("threshold", threshold)
    if variants is None:
        variants = variants_for(calls[0].query.device, implementation)
    metrics = measure(calls, variants, implementation=implementation)
    return AttentionPlan(layers=choose(metrics, threshold, variants), default=default, threshold=threshold,
                         metrics=metrics)  # fmt: skip
