"""Which mask reaches ``sageattn`` from transformers models, and that the fast layouts change no bit.

The kernel reads a mask that does not vary over queries as one row of keys per tile (ROW_BIAS) and any
other mask tile by tile (FULL_BIAS, ~2.5× slower at 8k). transformers materialises bidirectional
padding masks as [batch, 1, q_len, kv_len]; ``masks.sdpa_key_mask`` builds them as [batch, 1, 1, kv_len]
instead. Causal padding masks (a padded decoder batch) it builds as transformers does but notes them as
bottom-right ``is_causal`` plus a key row, which sage's attention function runs. Here: the layouts that
reach ``sageattn`` for encoders and decoders, with and without padding, in prefill and generation, and
the outputs with the fast layouts equal those with transformers' full mask bit for bit
(``implementation="reference"``, the kernels' emulation, on the CPU).
"""

from __future__ import annotations


import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import STD, bert, llama, seeded, tokens, transformers

import sage_fast.api
import sage_ref
from sage_fast.integrations import masks
from sage_fast.integrations import transformers as sage_hf
from sage_fast.triton.attn_int8 import FULL_BIAS, NO_BIAS, ROW_BIAS, bias_view

masking_utils = transformers.masking_utils


@given(
    batch=st.integers(1, 3), q_len=st.integers(1, 40), kv_len=st.integers(1, 77), kv_offset=st.integers(0, 5),
    padded=st.lists(st.integers(0, 77), min_size=3, max_size=3), causal=st.booleans(), skip=st.booleans(),
)  # fmt: skip
def test_key_mask_is_every_row_of_sdpa_mask(batch, q_len, kv_len, kv_offset, padded, causal, skip):
    """Bidirectional: [B,1,1,Nkv] equal to each query row of sdpa_mask's mask (None where it is None).
    Any other mask function: sdpa_mask's own mask."""
    padding = torch.ones(batch, kv_len + kv_offset, dtype=torch.bool)
    for b in range(batch):
        padding[b, : min(padded[b], kv_len + kv_offset - 1)] = False
    function = masking_utils.causal_mask_function if causal else masking_utils.bidirectional_mask_function
    kwargs = {"batch_size": batch, "q_length": q_len, "kv_length": kv_len, "kv_offset": kv_offset,
                  "mask_function": function, "attention_mask": padding, "allow_is_causal_skip": skip,
                  "allow_is_bidirectional_skip": skip}  # fmt: skip
    full, fast = masking_utils.sdpa_mask(**kwargs), masks.sdpa_key_mask(**kwargs)
    if full is None:
        assert fast is None
    elif causal:
        assert torch.equal(fast, full)
    else:
        assert fast.shape == (batch, 1, 1, kv_len) and torch.equal(fast.expand_as(full), full)


@given(
    batch=st.integers(1, 3), q_len=st.integers(1, 40), past=st.integers(0, 40), kv_offset=st.integers(0, 5),
    misaligned=st.integers(-2, 2), padded=st.lists(st.integers(0, 90), min_size=3, max_size=3),
    padding=st.booleans(), short=st.integers(0, 3),
)  # fmt: skip
def test_causal_padding_mask_is_noted_exactly_when_bottom_right(
    batch, q_len, past, kv_offset, misaligned, padded, padding, short
):
    """Causal: sdpa_mask's own mask, noted as causal + key row iff q_offset - kv_offset == kv_len - q_len,
    and then bottom-right causal & the key row is that mask, element for element (a 2-d mask ``short``
    of the keys is padded with False, as sdpa_mask pads it)."""
    kv_len = past + q_len
    q_offset = kv_offset + past + misaligned
    padding_mask = None
    if padding:
        padding_mask = torch.ones(batch, max(kv_offset + kv_len - short, 1), dtype=torch.bool)
        for b in range(batch):
            padding_mask[b, : padded[b] % padding_mask.shape[1]] = False
    kwargs = {"batch_size": batch, "q_length": q_len, "kv_length": kv_len, "q_offset": q_offset,
                  "kv_offset": kv_offset, "mask_function": masking_utils.causal_mask_function,
                  "attention_mask": padding_mask, "allow_is_causal_skip": False}  # fmt: skip
    full, built = masking_utils.sdpa_mask(**kwargs), masks.sdpa_key_mask(**kwargs)
    assert torch.equal(built, full)
    noted = masks.causal_keys(built)
    if misaligned:
        assert noted is None
        return
    assert (noted.q_len, noted.kv_len) == (q_len, kv_len)
    visible = sage_ref.causal_visible(q_len, kv_len, "cpu").expand_as(full)
    if noted.key_mask is None:
        assert padding_mask is None and torch.equal(visible, full)
    else:
        assert noted.key_mask.shape == (batch, 1, 1, kv_len)
        assert torch.equal(visible & noted.key_mask, full)


def test_what_is_not_noted():
    """Sliding windows, overlays and a tensor q_offset (static caches) keep the full mask; so does anything
    derived from a noted mask (a slice is another tensor)."""
    padding = torch.tensor([[False, True, True, True, True, True]])
    base = {"batch_size": 1, "q_length": 6, "kv_length": 6, "q_offset": 0, "kv_offset": 0, "attention_mask": padding}
    for function in (masking_utils.sliding_window_causal_mask_function(3),
                     masking_utils.and_masks(masking_utils.causal_mask_function, masks.every_key)):  # fmt: skip
        assert masks.causal_keys(masks.sdpa_key_mask(**base, mask_function=function)) is None
    static = masks.sdpa_key_mask(
        **{**base, "q_offset": torch.tensor(0)}, mask_function=masking_utils.causal_mask_function
    )
    assert static.shape == (1, 1, 6, 6) and masks.causal_keys(static) is None
    noted = masks.sdpa_key_mask(**base, mask_function=masking_utils.causal_mask_function)
    assert masks.causal_keys(noted) is not None
    assert masks.causal_keys(noted[:, :, :, :6]) is None and masks.causal_keys(noted.clone()) is None


@pytest.fixture
def reaching_sageattn(monkeypatch):
    """The (attn_mask, is_causal, q_len, kv_len) of every sageattn call, in order."""
    seen, sageattn = [], sage_fast.api.sageattn

    def spy(q, k, v, **kwargs):
        seen.append((kwargs["attn_mask"], kwargs["is_causal"], q.shape[2], k.shape[2]))
        return sageattn(q, k, v, **kwargs)

    monkeypatch.setattr(sage_fast.api, "sageattn", spy)
    return seen


def mode(mask, q_len, kv_len):
    """The kernel's mask path for ``mask`` on a [2, 4, q_len, kv_len] problem."""
    return bias_view(mask, (2, 4, q_len, kv_len))[2]


def mistral():
    """A 2-layer Mistral with an 8-token sliding window (shorter than the test sequences)."""
    config = transformers.MistralConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, sliding_window=8,
                                        initializer_range=STD)  # fmt: skip
    return seeded(transformers.MistralForCausalLM, config)


ids, padding = tokens(padded=11)
right_padding = padding.flip(-1)  # the last sequence's 11 padding tokens at its end
LAYOUTS = {
    # encoder, padded batch: one row of keys per sequence
    "bert-padded": (bert, {"input_ids": ids, "attention_mask": padding}, ROW_BIAS, (2, 1, 1, 48), False),
    # encoder, one sequence without padding (what the evaluation runs): no mask at all
    "bert-one-sequence": (bert, {"input_ids": ids[:1]}, NO_BIAS, None, False),
    "bert-all-ones": (bert, {"input_ids": ids[:1], "attention_mask": padding[:1]}, NO_BIAS, None, False),
    # decoder without padding: the causal flag, no mask
    "llama-causal": (llama, {"input_ids": ids}, NO_BIAS, None, True),
    # decoder with padding, left or right: bottom-right causal and one row of keys
    "llama-padded": (llama, {"input_ids": ids, "attention_mask": padding}, ROW_BIAS, (2, 1, 1, 48), True),
    "llama-right-padded": (llama, {"input_ids": ids, "attention_mask": right_padding}, ROW_BIAS, (2, 1, 1, 48), True),
    # a sliding window is a band of keys per query: the full mask
    "mistral-window-padded": (mistral, {"input_ids": ids, "attention_mask": padding}, FULL_BIAS, (2, 1, 48, 48), False),
}


@pytest.mark.parametrize("case", LAYOUTS)
def test_layout_that_reaches_sageattn(case, reaching_sageattn):
    build, inputs, expected_mode, shape, is_causal = LAYOUTS[case]
    model = build()
    model.set_attn_implementation(sage_hf.register("sage_test_layouts", variant="fp16"))
    with torch.no_grad():
        model(**inputs)
    assert len(reaching_sageattn) == model.config.num_hidden_layers
    for mask, causal, q_len, kv_len in reaching_sageattn:
        assert causal is is_causal and q_len == kv_len == inputs["input_ids"].shape[1]
        assert (mask is None) == (shape is None) and (mask is None or tuple(mask.shape) == shape)
        assert mode(mask, q_len, kv_len) == expected_mode


@pytest.mark.parametrize("variant", ["fp16", "fp8"])
def test_key_padding_view_changes_no_bit(variant):
    """A padded BERT batch: sage with [B,1,1,Nkv] masks gives the outputs of sage with transformers' full mask."""
    model = bert()
    fast = sage_hf.register(f"sage_test_key_mask_{variant}", variant=variant, implementation="reference")
    full = sage_hf.register(f"sage_test_full_mask_{variant}", variant=variant, implementation="reference")
    masking_utils.AttentionMaskInterface.register(full, masking_utils.sdpa_mask)
    outputs = {}
    for name in (fast, full):
        model.set_attn_implementation(name)
        with torch.no_grad():
            outputs[name] = model(input_ids=ids, attention_mask=padding).last_hidden_state
    assert torch.equal(outputs[fast], outputs[full])
    assert sage_hf.counts(fast).variants[variant] == sage_hf.counts(full).variants[variant] == 2


def generate(model, name, attention_mask, new_tokens=5):
    """Greedy generation with a KV cache (prefill, then one query per step); the logits of every step."""
    model.set_attn_implementation(name)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, output_logits=True,
                             return_dict_in_generate=True)  # fmt: skip
    return out.sequences, torch.stack(out.logits)


@pytest.mark.parametrize("variant", ["fp16", "fp8"])
@pytest.mark.parametrize("attention_mask", [padding, right_padding], ids=["left", "right"])
def test_causal_key_row_changes_no_bit(variant, attention_mask):
    """A padded Llama batch: prefill logits and greedy generation with a KV cache (tokens and every step's
    logits) with causal + [B,1,1,Nkv] equal those with transformers' full causal mask bit for bit."""
    model = llama()
    fast = sage_hf.register(f"sage_test_causal_keys_{variant}", variant=variant, implementation="reference")
    full = sage_hf.register(f"sage_test_causal_full_{variant}", variant=variant, implementation="reference")
    masking_utils.AttentionMaskInterface.register(full, masking_utils.sdpa_mask)
    prefill, generated = {}, {}
    for name in (fast, full):
        model.set_attn_implementation(name)
        with torch.no_grad():
            prefill[name] = model(input_ids=ids, attention_mask=attention_mask).logits
        generated[name] = generate(model, name, attention_mask)
    assert torch.equal(prefill[fast], prefill[full])
    assert torch.equal(generated[fast][0], generated[full][0]) and torch.equal(generated[fast][1], generated[full][1])
    steps = 2 * (1 + 1 + 4)  # two layers: the prefill above, generation's prefill and 4 decode steps
    assert sage_hf.counts(fast).masks == {"causal + key row": steps}
    assert sage_hf.counts(full).masks == {"full": 2 * 2, "key row": 2 * 4}  # one query: [B,1,1,Nkv] already


@pytest.mark.parametrize("attention_mask", [padding, right_padding], ids=["left", "right"])
def test_layout_in_generation(attention_mask, reaching_sageattn):
    """Greedy generation of a padded batch: prefill and every decode step reach sageattn as is_causal=True with
    [B,1,1,Nkv] (bottom-right: the one new query sees the whole cache)."""
    model = llama()
    generate(model, sage_hf.register("sage_test_generation_layouts", variant="fp16"), attention_mask)
    lengths = [(q_len, kv_len) for _, _, q_len, kv_len in reaching_sageattn]
    assert lengths == [(48, 48)] * 2 + [(1, 48 + step) for step in range(1, 5) for _ in range(2)]
    for mask, causal, q_len, kv_len in reaching_sageattn:
        assert causal is True and tuple(mask.shape) == (2, 1, 1, kv_len) and mode(mask, q_len, kv_len) == ROW_BIAS
