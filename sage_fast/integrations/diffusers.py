"""diffusers: every attention processor of a model wrapped so that its SDPA calls run through sage.

::

    from sage_fast.integrations import diffusers as sage_diffusers

    counts = sage_diffusers.apply(pipe.unet)             # or pipe.transformer; plan=AttentionPlan.load(...)
    image = pipe(prompt).images[0]
    print(counts)                                        # calls per variant, fallbacks with reasons
    sage_diffusers.remove(pipe.unet)                     # the original processors back

diffusers computes attention in processors (``AttnProcessor2_0`` for the UNets and DiT-style models,
``FluxAttnProcessor``, ``JointAttnProcessor2_0``, ... for the newer ones), which call
``torch.nn.functional.scaled_dot_product_attention`` directly or through diffusers' "native" attention
backend. ``SageAttnProcessor`` keeps the model's processor and runs it under
``SageSDPA`` with its layer's variant, so the processor's own
logic (norms, projections, residuals, masks) is untouched and only the attention product changes. A
processor that made no SDPA call (the legacy ``AttnProcessor``, xFormers, another attention backend)
is counted as a fallback (an error with ``strict=True``): nothing of it ran on sage.
"""

from __future__ import annotations

import functools
import inspect

import torch

from sage_ref.checks import check_flag

from .calibration import AttentionCall
from .counts import CallCounts
from .plan import AttentionPlan
from .sdpa_router import SageSDPA, torch_sdpa_arguments
from .variants import check_options

SUFFIX = ".processor"  # attn_processors names a layer's processor "<module name>.processor"


class SageAttnProcessor:
    """A diffusers attention processor: ``processor`` with its SDPA calls routed through sage.

    Parameters
    ----------
    processor
        The model's processor for this layer (any that calls torch's SDPA; not one with weights).
    layer : str
        The attention module's name (the plan's key), for the counts' fallback reasons.
    mode : callable
        Returns the ``torch.overrides.TorchFunctionMode`` a call runs under (a
        ``SageSDPA``, or a recorder while calibrating).
    counts : CallCounts
        Where calls without any SDPA call are counted as fallbacks.
    """

    def __init__(self, processor, layer: str, mode, counts: CallCounts):
        if isinstance(processor, torch.nn.Module):
            raise TypeError(
                f"the processor of {layer} ({type(processor).__name__}) has weights; wrapping it would take them "
                "out of the model's modules, so sage does not wrap it"
            )
        self.processor, self.layer, self.mode, self.counts = processor, layer, mode, counts

    def __reduce__(self):
        # Built again by ``wrap``: its class is made per processor class (``processor_class``) and has no importable
        # name, so pickling the class itself (torch.save of a model, copy.deepcopy) would fail.
        return wrap, (self.processor, self.layer, self.mode, self.counts)

    def __call__(self, attn, *args, **kwargs):
        mode = self.mode()
        with mode:
            out = self.processor(attn, *args, **kwargs)
        if not mode.sdpa_calls:
            reason = f"{type(self.processor).__name__} made no scaled_dot_product_attention call"
            if getattr(mode, "strict", False):  # a SageSDPA with strict=True (a calibration recorder has none)
                raise ValueError(f"{self.layer}: {reason}, so none of it can run on sage (strict=True)")
            self.counts.fall_back(reason)
        return out


@functools.cache
def processor_class(inner: type) -> type:
    """A ``SageAttnProcessor`` subclass whose ``__call__`` has ``inner.__call__``'s signature.

    diffusers' attention modules pass a processor only the ``cross_attention_kwargs`` its ``__call__``
    names (``inspect.signature``), so the wrapper shows the wrapped processor's names.
    """

    def __call__(self, attn, *args, **kwargs):
        return SageAttnProcessor.__call__(self, attn, *args, **kwargs)

    __call__.__signature__ = inspect.signature(inner.__call__)
    return type(f"Sage{inner.__name__}", (SageAttnProcessor,), {"__call__": __call__})


def wrap(processor, layer: str, mode, counts: CallCounts) -> SageAttnProcessor:
    return processor_class(type(processor))(processor, layer, mode, counts)


def layer_processors(model) -> dict:
    """Layer name (the attention module's name) → its current processor, unwrapped."""
    if not hasattr(model, "attn_processors") or not hasattr(model, "set_attn_processor"):
        raise TypeError(f"model must be a diffusers model with attention processors, got {type(model).__name__}")
    processors = {}
    for key, processor in model.attn_processors.items():
        layer = key.removesuffix(SUFFIX)
        processors[layer] = processor.processor if isinstance(processor, SageAttnProcessor) else processor
    return processors


def apply(model, *, variant: str = "auto", plan: AttentionPlan = None, implementation: str = "auto",
          strict: bool = False) -> CallCounts:  # fmt: skip
    """Wrap every attention processor of ``model`` (a diffusers ModelMixin) and return their counts.

    Applying again replaces the earlier wrappers (the original processors are kept inside).

    Parameters
    ----------
    variant : {"auto", "fp8", "fp16", "torch"}
        The variant of every layer ("auto": torch's SDPA where it is faster, decode
        steps and short calls on a GPU, else sageattn's P·V choice; ``variants.resolve``); leave it
        "auto" when a ``plan`` is given: a plan's variants are taken literally, for calls of every length.
    plan : AttentionPlan, optional
        Per-layer variants keyed by attention module name (e.g. from ``capture`` and
        ``sage_fast.integrations.calibration.calibrate``); a name the model lacks is a ValueError.
    implementation : {"auto", "triton", "numba", "reference"}
        Passed to ``sage_fast.sageattn``.
    strict : bool
        Raise instead of falling back to torch for a call sage cannot take, or for a processor that made no
        SDPA call (ValueError naming the layer).
    """
    check_options(variant, implementation)
    check_flag("strict", strict)  # here, not only in SageSDPA: its modes are made at the first call
    if plan is not None and not isinstance(plan, AttentionPlan):
        raise TypeError(f"plan must be an AttentionPlan or None, got {type(plan).__name__}")
    if plan is not None and variant != "auto":
        raise ValueError(f"pass variant={variant!r} or a plan, not both (a plan has its own default)")
    processors = layer_processors(model)
    if plan is not None:
        missing = sorted(set(plan.layers) - set(processors))
        if missing:
            raise ValueError(f"plan names layers this model does not have: {missing[:5]}")
    counts = CallCounts()
    wrapped = {}
    for layer, processor in processors.items():
        layer_variant = variant if plan is None else plan.variant(layer)
        mode = functools.partial(SageSDPA, layer_variant, implementation=implementation, strict=strict,
                                 counts=counts)  # fmt: skip
        wrapped[layer + SUFFIX] = wrap(processor, layer, mode, counts)
    model.set_attn_processor(wrapped)
    return counts


def remove(model) -> None:
    """Put back the processors ``apply`` wrapped."""
    model.set_attn_processor({layer + SUFFIX: processor for layer, processor in layer_processors(model).items()})


class Recorder(torch.overrides.TorchFunctionMode):
    """Records each SDPA call of one layer as an ``AttentionCall`` and runs torch's SDPA."""

    def __init__(self, layer: str, calls: list):
        super().__init__()
        self.layer, self.calls, self.sdpa_calls = layer, calls, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.sdpa_calls += 1
            call = torch_sdpa_arguments(*args, **kwargs)
            if call.pop("dropout_p") != 0.0:
                raise ValueError(f"{self.layer}: dropout_p != 0 while calibrating; call model.eval()")
            self.calls.append(AttentionCall.of(self.layer, **call))
        return func(*args, **kwargs)


def capture(model, run) -> list:
    """The SDPA calls ``run(model)`` makes, each an ``AttentionCall`` named by its attention module.

    The model's processors run unchanged (torch's SDPA); they are put back afterwards as they were, sage's
    wrappers from an earlier ``apply`` included. Tensors are cloned, so keep the sample small (one denoising
    step of a small latent is plenty).
    """
    calls: list = []
    counts = CallCounts()
    processors = layer_processors(model)
    installed = dict(model.attn_processors)  # wrapped or not: what the model runs now
    model.set_attn_processor({
        layer + SUFFIX: wrap(processor, layer, functools.partial(Recorder, layer, calls), counts)
        for layer, processor in processors.items()
    })  # fmt: skip
    try:
        with torch.no_grad():
            run(model)
    finally:
        model.set_attn_processor(installed)
    if counts.fallback_calls:
        raise ValueError(f"some processors made no scaled_dot_product_attention call, nothing to calibrate: {counts}")
    return calls
