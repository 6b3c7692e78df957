"""Tiny randomly initialised transformers and diffusers models for the integration tests (nothing downloaded).

Why the weights are drawn wider than the libraries' default (std 0.3 instead of 0.02): with the default,
q·k is ~0.02 on these widths, attention is uniform, and a model barely notices what its attention
does: dropping BERT's padding mask then moves its hidden states by 1 - cosine ~ 1e-6, so no bound
could tell a broken integration from a working one. At std 0.3 the scores spread over a few units,
as a trained model's do, and the same mistake costs 1 - cosine ~ 0.03 (decoders: ~0.6 for a causal
mask dropped), well outside the bound the tests hold sage to (see ``AGREEMENT``).

AGREEMENT = 0.99, the cosine similarity of hidden states with sage to those with torch's SDPA: with
a relative L2 error e of the hidden states, cosine ~ 1 - e²/2, so 0.99 allows e = 0.14. One sage call
is off by a relative ~0.01 (fp16 P·V) to ~0.04 (fp8 P·V) of its output (docs/accuracy.md, Gaussian
inputs, the diffuse worst case); two layers add at most two such errors to the residual stream,
e <= 0.08, 1 - cosine <= 0.003: the bound leaves a factor ~2 in e for the layers' own amplification.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched; a test that tried would fail
transformers = pytest.importorskip("transformers", reason="the integrations extra: pip install -e '.[integrations]'")

import torch

STD = 0.3
AGREEMENT = 0.99
VOCAB = 128


def llama(**overrides):
    """A 2-layer Llama: hidden 64, 4 query heads over 2 KV heads (GQA), head_dim 16."""
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, initializer_range=STD,
                                      **overrides)  # fmt: skip
    return seeded(transformers.LlamaForCausalLM, config)


def bert(**overrides):
    """A 2-layer BERT encoder: hidden 64, 4 heads, head_dim 16."""
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, initializer_range=STD, **overrides)  # fmt: skip
    return seeded(transformers.BertModel, config)


def seeded(cls, config, seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls(config).eval()


def tokens(batch=2, seq_len=48, seed=0, padded=0):
    """Token ids [batch, seq_len] and an attention mask whose last sequence has ``padded`` left-padding tokens."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, seq_len), generator=gen)
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    mask[-1, :padded] = 0
    return ids, mask
