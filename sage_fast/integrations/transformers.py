"""Hugging Face transformers: sage as an ``attn_implementation``, registered with ``AttentionInterface``.

::

    from sage_fast.integrations import transformers as sage_hf

    name = sage_hf.register("sage")                      # once per process
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=name)
    model.generate(...)
    print(sage_hf.counts(name))                          # calls per variant

The registered function behaves as transformers' own "sdpa" one, with sageattn doing the arithmetic:
the masks are those transformers builds for "sdpa" (``masks.sdpa_key_mask`` is registered under the same
name: ``sdpa_mask``'s boolean [batch, 1, q_len, kv_len], except that padding-only masks of bidirectional
attention come as [batch, 1, 1, kv_len], the kernel's fast path; None when ``is_causal`` or no padding
says it all). A causal padding mask that ``sdpa_key_mask`` noted as bottom-right causal plus a row of
keys (``masks.causal_keys``: a padded decoder batch in prefill or generation) runs as
``sageattn(is_causal=True, attn_mask=[batch, 1, 1, kv_len])``, the fast path too; every other mask as
it comes (``counts(name).masks`` tallies the layouts). Causal without a mask is torch's top-left
convention for prefill and no mask for a single decoded token, grouped-query attention runs natively
(no ``repeat_kv`` copy), T5-style ``position_bias`` becomes an additive mask. A KV cache is whatever
the model's cache hands the function: q_len < kv_len with the cache's mask.

What it cannot honour it refuses with ValueError, naming it: ``dropout`` > 0 (a model in training
mode), ``softcap``, attention sinks (``s_aux``), ``output_attentions=True``, packed-sequence arguments
of the flash-attention path, and any keyword argument it does not know that is not None. Unsupported
tensors (head_dim > 256, float64 on a GPU, a batch-broadcast query) get sageattn's own errors.
"""

from __future__ import annotations

import weakref

import torch

from .calibration import AttentionCall
from .counts import CallCounts
from .extras import require
from .masks import causal_keys, sdpa_key_mask
from .plan import AttentionPlan
from .variants import attend, attend_causal, check_options, mask_layout, resolve

# Keyword arguments models pass that need nothing from the attention function: rotary positions are
# already in q and k, the cache was updated before the call, the sliding window and packed sequences
# (position_ids, seq_idx) are in the mask that sdpa_mask built, encoder states are already projected
# into k and v, and the rest (TransformersKwargs) are about the model's outputs or its loss.
HONOURED_ELSEWHERE = {"position_ids", "seq_idx", "cache", "cache_position", "use_cache", "past_key_values", "past_key_value",
                      "sliding_window", "encoder_hidden_states", "output_hidden_states", "output_router_logits",
                      "return_dict", "num_items_in_batch"}  # fmt: skip
REFUSED = {
    "softcap": "logit soft-capping (softcap) is not supported by sageattn",
    "s_aux": "attention sinks (s_aux) are not supported by sageattn",
    "head_mask": "head_mask is not supported by sageattn",
    "cu_seq_lens_q": "packed sequences given as cu_seq_lens_q (the flash-attention path) are not supported; "
    "pass position_ids so that transformers builds the mask",
    "cu_seq_lens_k": "packed sequences given as cu_seq_lens_k are not supported; pass position_ids instead",
    "max_length_q": "max_length_q (the flash-attention path's packed sequences) is not supported",
    "max_length_k": "max_length_k (the flash-attention path's packed sequences) is not supported",
}
BUILTIN_NAMES = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4")
CAPTURE_NAME = "sage_fast_capture"  # the recorder ``capture`` registers for the duration of a run


def sdpa_call(module, query, key, value, attention_mask, dropout, scaling, is_causal, position_bias, kwargs) -> dict:
    """One attention-interface call as torch SDPA arguments (what transformers' "sdpa" function passes).

    query [batch, heads, q_len, head_dim], key/value [batch, kv_heads, kv_len, head_dim]. Returns
    ``dict(query, key, value, attn_mask, is_causal, scale, enable_gqa)``; refuses what sage cannot honour.
    """
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise TypeError(f"dropout must be a float, got {dropout!r}")
    if dropout != 0.0:
        raise ValueError(f"dropout={dropout}: sage attention has no dropout; call model.eval() for inference")
    if kwargs.get("output_attentions"):
        raise ValueError("output_attentions=True: sage attention does not compute attention weights; use 'eager'")
    for name, value_ in kwargs.items():
        if name in REFUSED and value_ is not None:
            raise ValueError(REFUSED[name])
        if (
            name not in REFUSED
            and name not in HONOURED_ELSEWHERE
            and name != "output_attentions"
            and value_ is not None
        ):
            raise ValueError(
                f"keyword argument {name}={type(value_).__name__} is unknown to sage's attention function; "
                "it cannot tell whether ignoring it is safe, so it refuses"
            )
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    # transformers' rule: the flag only when no mask was built, and never for one decoded token (which sees
    # every cached key); sage_fast.scaled_dot_product_attention applies torch's top-left alignment.
    is_causal = bool(query.shape[2] > 1 and attention_mask is None and is_causal)
    if position_bias is not None:
        sdpa_attention = require("transformers.integrations.sdpa_attention")
        attention_mask = sdpa_attention.create_position_bias_mask(position_bias, attention_mask, is_causal, query, key)
        is_causal = False
    return {"query": query, "key": key, "value": value, "attn_mask": attention_mask, "is_causal": is_causal, "scale": scaling,
                "enable_gqa": query.shape[1] != key.shape[1]}  # fmt: skip


class SageAttention:
    """The function registered under a name: transformers' attention-interface signature, sageattn inside.

    ``variant`` ("auto", "fp8", "fp16", "torch") is used for every module without one of its own;
    ``apply_plan`` gives a model's modules their plan's variants. "torch" runs transformers' own
    "sdpa" function. ``counts`` tallies the calls by the variant that ran.
    """

    def __init__(self, variant: str = "auto", implementation: str = "auto"):
        check_options(variant, implementation)
        self.variant, self.implementation = variant, implementation
        self.counts = CallCounts()
        self.module_variants: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __call__(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                 position_bias=None, **kwargs):  # fmt: skip
        """query [B, H, Nq, D], key/value [B, Hkv, Nkv, D] → ([B, Nq, H, D], None), like transformers' "sdpa"."""
        call = sdpa_call(module, query, key, value, attention_mask, dropout, scaling, is_causal, position_bias, kwargs)
        variant = resolve(self.module_variants.get(module, self.variant), query.device, query.shape[2], key.shape[2],
                          self.implementation)  # fmt: skip
        if variant == "torch":
            sdpa_attention = require("transformers.integrations.sdpa_attention")
            out = sdpa_attention.sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                                        scaling=scaling, is_causal=is_causal,
                                                        position_bias=position_bias, **kwargs)  # fmt: skip
            self.counts.record("torch")
            return out
        noted = causal_keys(attention_mask) if position_bias is None else None
        if noted is not None and (noted.q_len, noted.kv_len) == (query.shape[2], key.shape[2]):
            out = attend_causal(variant, query, key, value, noted.key_mask, scaling, implementation=self.implementation)
            self.counts.record_mask(mask_layout(noted.key_mask, True))
        else:
            out = attend(variant, implementation=self.implementation, **call)
            self.counts.record_mask(mask_layout(call["attn_mask"], call["is_causal"]))
        self.counts.record(variant)
        return out.transpose(1, 2).contiguous(), None


REGISTERED: dict[str, SageAttention] = {}


def check_name(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not name.strip() or "/" in name or "|" in name:
        raise ValueError(f"name must be a non-empty str without '/' or '|' (hub kernels, paged), got {name!r}")
    if "flash" in name:  # transformers' is_flash_attention_requested: it would look for a flash-attention kernel
        raise ValueError(f"name {name!r} contains 'flash', which transformers reserves for flash-attention kernels")
    if name in BUILTIN_NAMES or name == CAPTURE_NAME:
        raise ValueError(
            f"name {name!r} is one of transformers' own attention implementations or capture's; pick another"
        )
    return name


def register(name: str = "sage", *, variant: str = "auto", implementation: str = "auto") -> str:
    """Register sage as the attention implementation ``name`` and return ``name``.

    Afterwards ``from_pretrained(..., attn_implementation=name)``, ``AutoModel.from_config(config,
    attn_implementation=name)`` or ``model.set_attn_implementation(name)`` use it. Registering a name
    again replaces its function: its counts and the per-layer variants of an ``apply_plan`` go with it (apply
    the plan again). Names containing "flash" are refused: transformers would look for a flash-attention kernel.
    The name's mask builder is ``masks.sdpa_key_mask`` (a name without one would get no masks at all: padding and
    sliding windows would be lost).

    Parameters
    ----------
    name : str
        The ``attn_implementation`` name; not one of transformers' own ("sdpa", "eager", ...).
    variant : {"auto", "fp8", "fp16", "torch"}
        What every layer runs unless ``apply_plan`` says otherwise ("auto": torch's SDPA where it is faster, i.e.
        decode steps and, on a GPU, calls with fewer keys than ``variants.AUTO_MIN_KEYS``, else fp8 P·V on sm89+
        GPUs and fp16 P·V elsewhere; ``variants.resolve`` says why).
    implementation : {"auto", "triton", "numba", "reference"}
        Passed to ``sage_fast.sageattn``; "auto" runs the Triton kernels on CUDA tensors and the
        sage_ref emulation on CPU tensors.

    Examples
    --------
    >>> import torch, transformers
    >>> from sage_fast.integrations import transformers as sage_hf
    >>> config = transformers.LlamaConfig(
    ...     vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...     num_attention_heads=4, num_key_value_heads=2,
    ... )
    >>> model = transformers.AutoModelForCausalLM.from_config(
    ...     config, attn_implementation=sage_hf.register("sage")
    ... )
    >>> # 70 tokens: "auto" leaves calls with fewer than 64 queries (decode steps) to torch
    >>> logits = model(torch.randint(0, 64, (1, 70))).logits
    >>> sage_hf.counts("sage").sage_calls
    1
    """
    check_name(name)
    check_options(variant, implementation)
    modeling_utils = require("transformers.modeling_utils")
    masking_utils = require("transformers.masking_utils")
    function = SageAttention(variant, implementation)
    modeling_utils.AttentionInterface.register(name, function)
    masking_utils.AttentionMaskInterface.register(name, sdpa_key_mask)
    REGISTERED[name] = function
    return name


def registered(name: str) -> SageAttention:
    """The ``SageAttention`` registered as ``name`` (KeyError with the registered names if none)."""
    if name not in REGISTERED:
        raise KeyError(f"no sage attention is registered as {name!r}; registered: {sorted(REGISTERED)}")
    return REGISTERED[name]


def counts(name: str = "sage") -> CallCounts:
    """The calls the function registered as ``name`` has run, by variant."""
    return registered(name).counts


def switch(model, name: str) -> None:
    """``model.set_attn_implementation(name)``, checked: every module's config must then say ``name``.

    Some transformers versions do not reach every submodel (5.17 leaves T5's encoder and decoder
    stacks, whose configs are copies, on their old implementation); a model half switched would run
    sage in some layers only, so this refuses it, and switches the model back first.
    """
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    stale = sorted({layer for layer, module in model.named_modules()
                    if getattr(getattr(module, "config", None), "_attn_implementation", name) != name})  # fmt: skip
    if stale:
        model.set_attn_implementation(previous)
        raise ValueError(
            f"set_attn_implementation({name!r}) did not reach {stale[:3]} in this transformers version; "
            f"build the model with attn_implementation={name!r} instead"
        )


def apply_plan(model, plan: AttentionPlan, *, name: str = "sage", implementation: str = "auto") -> str:
    """Run ``model`` with sage, each attention module with its plan's variant; return the implementation name.

    Plan layers are the qualified names of ``model.named_modules()`` (as ``capture`` records them);
    a name the model lacks is a ValueError (a plan for another model), every module the plan does not
    list gets ``plan.default``. ``name`` is registered if it is not yet (with ``implementation``), and
    the model is switched to it with ``model.set_attn_implementation`` (checked by ``switch``). A plan's
    variants are taken literally, for calls of every length: a layer planned "fp8" runs sage on decode
    steps too, where torch's SDPA is 2-36× faster (``variants.resolve``).
    """
    if not isinstance(plan, AttentionPlan):
        raise TypeError(f"plan must be an AttentionPlan, got {type(plan).__name__}")
    modules = dict(model.named_modules())
    missing = sorted(set(plan.layers) - set(modules))
    if missing:
        raise ValueError(f"plan names layers this model does not have: {missing[:5]}")
    if name not in REGISTERED:
        register(name, implementation=implementation)
    function = registered(name)
    if function.implementation != implementation:
        raise ValueError(
            f"{name!r} is registered with implementation={function.implementation!r}, not {implementation!r}; "
            "register it again or pass the same implementation"
        )
    for layer, module in modules.items():
        function.module_variants[module] = plan.variant(layer)
    switch(model, name)
    return name


class Recorder:
    """An attention function that records each call's torch SDPA arguments by layer and runs "sdpa"."""

    def __init__(self, model):
        self.names = {module: layer for layer, module in model.named_modules()}
        self.calls: list = []

    def __call__(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                 position_bias=None, **kwargs):  # fmt: skip
        call = sdpa_call(module, query, key, value, attention_mask, dropout, scaling, is_causal, position_bias, kwargs)
        self.calls.append(AttentionCall.of(self.names[module], **call))
        sdpa_attention = require("transformers.integrations.sdpa_attention")
        return sdpa_attention.sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                                     scaling=scaling, is_causal=is_causal, position_bias=position_bias,
                                                     **kwargs)  # fmt: skip


def capture(model, run) -> list:
    """The attention calls ``run(model)`` makes, each as an ``AttentionCall``.

    The model runs transformers' "sdpa" attention meanwhile (the inputs each layer sees are those of
    the accurate model; the masks are those sage gets, ``masks.sdpa_key_mask``) and is switched back to
    its implementation afterwards. Tensors are cloned: a
    calibration sample should be small (every layer's q, k, v are kept on their device).
    """
    modeling_utils = require("transformers.modeling_utils")
    masking_utils = require("transformers.masking_utils")
    recorder = Recorder(model)
    modeling_utils.AttentionInterface.register(CAPTURE_NAME, recorder)
    masking_utils.AttentionMaskInterface.register(CAPTURE_NAME, sdpa_key_mask)
    previous = model.config._attn_implementation
    try:
        switch(model, CAPTURE_NAME)
        with torch.no_grad():
            run(model)
    finally:
        model.set_attn_implementation(previous)
    return recorder.calls
