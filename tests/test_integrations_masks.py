"""Which mask reaches ``sageattn`` from transformers models, and that the fast layouts change no bit.

The kernel reads a mask that does not vary over queries as one row of keys per tile (ROW_BIAS) and any
other mask tile by tile (FULL_BIAS, ~2.5× slower at 8k). transformers materialises bidirectional
padding masks as [batch, 1, q_len, kv_len]; ``masks.sdpa_key_mask`` builds them as [batch, 1, 1, kv_len]
instead. Here: the layouts that reach ``sageattn`` for encoders and decoders, with and without padding,
and the outputs with the key-padding view equal those with transformers' full mask bit for bit
(``implementation="reference"``, the kernels' emulation, on the CPU).
"""

from __future__ import annotations

import doctest

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import bert, llama, tokens, transformers

import sage_fast.api
from sage_fast.integrations import masks
from sage_fast.integrations import transformers as sage_hf
from sage_fast.triton.attn_int8 import FULL_BIAS, NO_BIAS, ROW_BIAS, bias_view

masking_utils = transformers.masking_utils


def test_docstring_example_runs():
    failures, attempted = doctest.testmod(masks, raise_on_error=False, verbose=False)
    assert attempted > 0 and failures == 0


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


ids, padding = tokens(padded=11)
LAYOUTS = {
    # encoder, padded batch: one row of keys per sequence
    "bert-padded": (bert, {"input_ids": ids, "attention_mask": padding}, ROW_BIAS, (2, 1, 1, 48), False),
    # encoder, one sequence without padding (what the evaluation runs): no mask at all
    "bert-one-sequence": (bert, {"input_ids": ids[:1]}, NO_BIAS, None, False),
    "bert-all-ones": (bert, {"input_ids": ids[:1], "attention_mask": padding[:1]}, NO_BIAS, None, False),
    # decoder without padding: the causal flag, no mask
    "llama-causal": (llama, {"input_ids": ids}, NO_BIAS, None, True),
    # decoder with padding: causal and padding together depend on the query (the full mask)
    "llama-padded": (llama, {"input_ids": ids, "attention_mask": padding}, FULL_BIAS, (2, 1, 48, 48), False),
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
