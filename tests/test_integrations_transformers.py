"""sage as a transformers ``attn_implementation``: tiny random models from configs, on the CPU (sage_ref emulation).

Two checks for each model. Accuracy: hidden states with sage against those with torch's own "sdpa"
at the bound of tests/tiny_models.py (AGREEMENT), which a dropped mask breaks (test below). Plumbing:
the model with sage gives *bit-identical* outputs to the same model on transformers' "sdpa" path with
torch's SDPA routed to sage (``route_sdpa``): transformers' own function then decides masks, causal
alignment, GQA and position bias, so any difference in what the integration hands sage shows.
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from tiny_models import AGREEMENT, bert, llama, tokens, transformers

import sage_ref
from sage_fast.integrations import AttentionPlan, route_sdpa
from sage_fast.integrations import transformers as sage_hf
from sage_fast.integrations.variants import AUTO_MIN_QUERIES, resolve


def hidden(model, implementation, **inputs):
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    return out.hidden_states[-1] if hasattr(out, "hidden_states") and out.hidden_states else out.last_hidden_state


def kept(states, mask):
    """The hidden states of real tokens (padding positions' outputs are arbitrary)."""
    return states[mask.bool()]


@pytest.mark.parametrize("variant", ["fp16", "fp8"])
@pytest.mark.parametrize(
    "build, padded", [(llama, 0), (llama, 11), (bert, 11)], ids=["llama", "llama-padded", "bert-padded"]
)
def test_model_agrees_with_sdpa(build, padded, variant):
    """Causal with GQA (Llama, with and without left padding), bidirectional with padding (BERT)."""
    model = build()
    ids, mask = tokens(padded=padded)
    name = sage_hf.register(f"sage_test_{variant}", variant=variant)
    reference = kept(hidden(model, "sdpa", input_ids=ids, attention_mask=mask), mask)
    with_sage = kept(hidden(model, name, input_ids=ids, attention_mask=mask), mask)
    cosine = sage_ref.cosine_similarity(with_sage, reference)
    assert cosine >= AGREEMENT, cosine
    assert sage_hf.counts(name).variants[variant] == 2 and sage_hf.counts(name).fallback_calls == 0


def ignores_the_mask(module, query, key, value, attention_mask, **kwargs):
    """A broken attention function: torch's SDPA without the mask or the causal flag."""
    kwargs = {k: v for k, v in kwargs.items() if k in ("scaling",)}
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=kwargs.get("scaling"),
                                                           enable_gqa=query.shape[1] != key.shape[1])  # fmt: skip
    return out.transpose(1, 2).contiguous(), None


@pytest.mark.parametrize("build", [llama, bert])
def test_the_bound_catches_a_dropped_mask(build):
    """The agreement bound can fail: an integration that loses the mask falls below it."""
    transformers.AttentionInterface.register("ignores_the_mask", ignores_the_mask)
    transformers.masking_utils.AttentionMaskInterface.register("ignores_the_mask", transformers.masking_utils.sdpa_mask)
    model = build()
    ids, mask = tokens(padded=11)
    reference = kept(hidden(model, "sdpa", input_ids=ids, attention_mask=mask), mask)
    broken = kept(hidden(model, "ignores_the_mask", input_ids=ids, attention_mask=mask), mask)
    assert sage_ref.cosine_similarity(broken, reference) < AGREEMENT


def t5():
    config = transformers.T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                   initializer_factor=3.0)  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return transformers.T5ForConditionalGeneration(config).eval()


def rebuilt(model, implementation):
    """The same weights built with ``implementation`` (transformers 5.17's set_attn_implementation does not
    reach T5's stacks, whose configs are copies)."""
    fresh = type(model)._from_config(model.config, attn_implementation=implementation).eval()
    fresh.load_state_dict(model.state_dict())
    return fresh


def mistral():
    config = transformers.MistralConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=1, sliding_window=8,
                                        initializer_range=0.3)  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return transformers.MistralForCausalLM(config).eval()


def outputs(model, implementation, routed, **inputs):
    model = rebuilt(model, implementation)
    with torch.no_grad(), route_sdpa("fp16", strict=True) if routed else torch.no_grad():
        out = model(**inputs)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


ids, mask = tokens(padded=11)
PLUMBING = {
    "llama-causal": (llama, {"input_ids": ids}),
    "llama-padded": (llama, {"input_ids": ids, "attention_mask": mask}),
    "bert-padded": (bert, {"input_ids": ids, "attention_mask": mask}),
    "t5-position-bias-cross-attention": (
        t5,
        {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": ids[:, :9]},
    ),
    "mistral-sliding-window-mqa": (mistral, {"input_ids": ids}),
}


@pytest.mark.parametrize("case", PLUMBING)
def test_same_arithmetic_as_transformers_sdpa_path(case):
    build, inputs = PLUMBING[case]
    model = build()
    name = sage_hf.register("sage_test_plumbing", variant="fp16")
    ours = outputs(model, name, False, **inputs)
    theirs = outputs(model, "sdpa", True, **inputs)
    assert torch.equal(ours, theirs)
    assert sage_hf.counts(name).sage_calls > 0 and sage_hf.counts(name).variants["torch"] == 0


def test_kv_cache_prefill_in_chunks_and_greedy_decode():
    """q_len < kv_len: a second chunk of 18 queries over a 48-key cache (with padding), then greedy
    decoding (one query over the cache) matches the routed "sdpa" path token for token."""
    model = llama()
    name = sage_hf.register("sage_test_cache", variant="fp16")
    logits = {}
    for implementation, routed in ((name, False), ("sdpa", True)):
        model.set_attn_implementation(implementation)
        with torch.no_grad(), route_sdpa("fp16", strict=True) if routed else torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # past_key_values is being renamed in transformers 5.2x
            cache = transformers.DynamicCache(config=model.config)
            model(input_ids=ids[:, :30], attention_mask=mask[:, :30], past_key_values=cache, use_cache=True)
            second = model(input_ids=ids[:, 30:], attention_mask=mask, past_key_values=cache, use_cache=True)
            generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5,
                                       do_sample=False, pad_token_id=0)  # fmt: skip
        logits[implementation] = second.logits, generated
    assert torch.equal(logits[name][0], logits["sdpa"][0])
    assert torch.equal(logits[name][1], logits["sdpa"][1])
    assert sage_hf.counts(name).variants["fp16"] == 2 * 2 + 2 * 5  # two chunks, then prefill + 4 decode steps


def call(module=None, **overrides):
    """One direct call of the registered function on small tensors (GQA 4 over 2 heads)."""
    gen = torch.Generator().manual_seed(0)
    args = {"query": torch.randn(1, 4, 9, 16, generator=gen), "key": torch.randn(1, 2, 9, 16, generator=gen),
                "value": torch.randn(1, 2, 9, 16, generator=gen), "attention_mask": None}  # fmt: skip
    args.update(overrides)
    function = sage_hf.registered(sage_hf.register("sage_test_call", variant="fp16"))
    module = module if module is not None else torch.nn.Module()
    return function(module, args.pop("query"), args.pop("key"), args.pop("value"), args.pop("attention_mask"), **args)


REFUSALS = [
    ({"dropout": 0.1}, ValueError, "dropout"),
    ({"softcap": 30.0}, ValueError, "softcap"),
    ({"s_aux": torch.zeros(4)}, ValueError, "sinks"),
    ({"output_attentions": True}, ValueError, "output_attentions"),
    ({"cu_seq_lens_q": torch.tensor([0, 9])}, ValueError, "cu_seq_lens_q"),
    ({"made_up_option": 3}, ValueError, "made_up_option"),
    ({"query": torch.zeros(1, 4, 9, 300), "key": torch.zeros(1, 2, 9, 300), "value": torch.zeros(1, 2, 9, 300)}, ValueError, "head_dim"),
    ({"query": torch.zeros(1, 4, 9, 16, dtype=torch.float64), "key": torch.zeros(1, 2, 9, 16, dtype=torch.float64),
          "value": torch.zeros(1, 2, 9, 16, dtype=torch.float64)}, TypeError, "float64"),
    ({"attention_mask": torch.ones(1, 1, 9, 7, dtype=torch.bool)}, ValueError, "attn_mask"),
    ({"query": torch.zeros(1, 3, 9, 16)}, ValueError, "heads"),
]  # fmt: skip


@pytest.mark.parametrize("overrides, error, match", REFUSALS, ids=[r[2] for r in REFUSALS])
def test_what_sage_cannot_honour_is_refused(overrides, error, match):
    with pytest.raises(error, match=match):
        call(**overrides)


def test_training_mode_is_refused_by_name():
    model = llama(attention_dropout=0.1).train()
    model.set_attn_implementation(sage_hf.register("sage_test_train"))
    with pytest.raises(ValueError, match="model.eval"):
        model(input_ids=ids)


def test_inputs_are_untouched_and_output_is_nhd():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(2, 4, 9, 16, generator=gen),
        torch.randn(2, 2, 9, 16, generator=gen),
        torch.randn(2, 2, 9, 16, generator=gen),
    )
    attention_mask = torch.rand(2, 1, 9, 9, generator=gen) > 0.3
    before = [t.clone() for t in (q, k, v, attention_mask)]
    out, weights = call(query=q, key=k, value=v, attention_mask=attention_mask)
    assert all(torch.equal(a, b) for a, b in zip(before, (q, k, v, attention_mask)))
    assert out.shape == (2, 9, 4, 16) and out.is_contiguous() and weights is None
    expected = sage_ref.naive_attention(q.double(), k.double(), v.double(), attn_mask=attention_mask)
    assert sage_ref.cosine_similarity(out.transpose(1, 2), expected) > 0.999


@pytest.mark.parametrize("name", ["sdpa", "eager", "", " ", "org/kernel", "paged|sage", "sage_flash", "sage_fast_capture"])
def test_register_refuses_names_it_would_clobber_or_misread(name):
    with pytest.raises(ValueError, match="name"):
        sage_hf.register(name)
    with pytest.raises(TypeError, match="name"):
        sage_hf.register(3)


def test_register_refuses_unknown_options():
    with pytest.raises(ValueError, match="variant"):
        sage_hf.register("sage_x", variant="int8")
    with pytest.raises(ValueError, match="implementation"):
        sage_hf.register("sage_x", implementation="cuda")
    with pytest.raises(KeyError, match="sage_never_registered"):
        sage_hf.counts("sage_never_registered")


def test_from_config_with_the_registered_name():
    config = llama().config
    name = sage_hf.register("sage_cfg", variant="fp16")
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=name)
    with torch.no_grad():
        model(input_ids=ids)
    assert sage_hf.counts("sage_cfg").sage_calls == config.num_hidden_layers


def test_auto_runs_the_prefill_on_sage_and_the_decode_steps_on_torch():
    """The "auto" variant leaves calls with fewer than a query tile (AUTO_MIN_QUERIES) to transformers' sdpa: on the
    CPU (where the key-length rule is off) a prompt of that many tokens runs sage, each decode step (one query over
    the cache) torch, token for token as a run that chooses by hand (sage's variant for the prompt, transformers'
    "sdpa" for the step)."""
    model = llama()
    prompt, prompt_mask = tokens(seq_len=AUTO_MIN_QUERIES)
    auto = sage_hf.register("sage_auto_decode")
    sage = sage_hf.register("sage_resolved_decode", variant=resolve("auto", prompt.device))
    logits = {}
    for prefill, decode in ((auto, auto), (sage, "sdpa")):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # past_key_values is being renamed in transformers 5.2x
            cache = transformers.DynamicCache(config=model.config)
            model.set_attn_implementation(prefill)
            first = model(input_ids=prompt, attention_mask=prompt_mask, past_key_values=cache, use_cache=True)
            model.set_attn_implementation(decode)
            step = model(input_ids=first.logits[:, -1:].argmax(-1), past_key_values=cache, use_cache=True,
                         attention_mask=torch.ones(2, AUTO_MIN_QUERIES + 1, dtype=torch.long))  # fmt: skip
        logits[prefill] = first.logits, step.logits
    layers = model.config.num_hidden_layers
    assert dict(sage_hf.counts(auto).variants) == {resolve("auto", prompt.device): layers, "torch": layers}
    assert torch.equal(logits[auto][0], logits[sage][0]) and torch.equal(logits[auto][1], logits[sage][1])


def test_auto_chooses_by_the_query_and_cached_key_lengths(monkeypatch):
    """What "auto" is asked about each call: the queries and the keys, cache included (the key rule needs the
    latter), for the prompt and then a decode step over prompt + 1 keys."""
    asked = []

    def recording_resolve(variant, device, q_len=None, kv_len=None, implementation="auto"):
        asked.append((variant, q_len, kv_len))
        return "torch"

    monkeypatch.setattr(sage_hf, "resolve", recording_resolve)
    model = llama()
    prompt, prompt_mask = tokens(seq_len=70)
    model.set_attn_implementation(sage_hf.register("sage_auto_lengths"))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # past_key_values is being renamed in transformers 5.2x
        cache = transformers.DynamicCache(config=model.config)
        first = model(input_ids=prompt, attention_mask=prompt_mask, past_key_values=cache, use_cache=True)
        model(input_ids=first.logits[:, -1:].argmax(-1), past_key_values=cache, use_cache=True,
              attention_mask=torch.ones(2, 71, dtype=torch.long))  # fmt: skip
    layers = model.config.num_hidden_layers
    assert asked == [("auto", 70, 70)] * layers + [("auto", 1, 71)] * layers


def test_a_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers.masking_utils", None)
    with pytest.raises(ImportError, match=r"sage-attention-ref\[integrations\]"):
        sage_hf.register("sage_no_transformers")


def test_apply_plan_gives_each_layer_its_variant():
    model = llama()
    plan = AttentionPlan(layers={"model.layers.0.self_attn": "torch", "model.layers.1.self_attn": "fp8"},
                         default="fp16", threshold=0.99)  # fmt: skip
    name = sage_hf.apply_plan(model, plan, name="sage_test_plan")
    with torch.no_grad():
        model(input_ids=ids)
    assert model.config._attn_implementation == name
    assert dict(sage_hf.counts(name).variants) == {"torch": 1, "fp8": 1}
    with pytest.raises(ValueError, match="does not have"):
        sage_hf.apply_plan(model, AttentionPlan(layers={"decoder.9": "fp8"}, default="fp16", threshold=0.9), name=name)
    with pytest.raises(ValueError, match="implementation"):
        sage_hf.apply_plan(model, plan, name=name, implementation="reference")


def test_a_half_switched_model_is_refused(monkeypatch):
    """If set_attn_implementation leaves a submodule's config behind, sage does not run in part of the model: the
    switch is refused and the model is back on its implementation (a forward runs no sage)."""
    model = llama()
    monkeypatch.setattr(model.model.layers[1].self_attn, "config", type(model.config)(**model.config.to_dict()))
    name = sage_hf.register("sage_test_switch", variant="fp16")
    with pytest.raises(ValueError, match="model.layers.1.self_attn"):
        sage_hf.switch(model, name)
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        model(input_ids=tokens(seq_len=70)[0])
    assert sage_hf.counts(name).sage_calls == 0


def test_capture_records_every_layer_and_restores_the_model():
    model = bert()
    calls = sage_hf.capture(model, lambda m: m(input_ids=ids, attention_mask=mask))
    assert [c.layer for c in calls] == [f"encoder.layer.{i}.attention.self" for i in range(2)]
    assert calls[0].attn_mask is not None and not calls[0].is_causal and calls[0].query.shape == (2, 4, 48, 16)
    assert model.config._attn_implementation == "sdpa"
