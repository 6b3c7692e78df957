"""How closely a model's outputs with sage attention follow its outputs with torch's SDPA.

For one batch of tokens run both ways:

- ``cosine_hidden``: cosine similarity of the last hidden states, over all tokens and channels;
- ``top1_agreement``: the fraction of positions whose highest logit is the same token;
- ``perplexity``: exp(mean cross-entropy): a decoder's of each next token, an encoder's (masked LM
  head, nothing masked) of each input token at its own position; with random weights both are near
  the vocabulary size, and what is compared is the change, ``perplexity_change`` = sage / sdpa - 1;
- ``greedy_agreement`` (decoders, with ``new_tokens``): the fraction of greedily generated tokens that
  are equal, a KV-cache decode (q_len 1 over the cache) with either attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import sage_ref


def forward(model, tokens: torch.Tensor) -> dict:
    """The last hidden states [batch, seq, hidden] and logits [batch, seq, vocab] of one forward."""
    with torch.no_grad():
        out = model(input_ids=tokens, output_hidden_states=True)
    return {"hidden": out.hidden_states[-1], "logits": out.logits}


def perplexity(logits: torch.Tensor, tokens: torch.Tensor, decoder: bool) -> float:
    """exp of the mean cross-entropy of the targets: the next tokens (decoder) or the tokens themselves."""
    if decoder:
        logits, tokens = logits[:, :-1], tokens[:, 1:]
    loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
    return math.exp(loss.item())


def agreement(reference: dict, test: dict, tokens: torch.Tensor, *, decoder: bool) -> dict:
    """The metrics of the module docstring for outputs of ``forward`` (reference: torch's SDPA)."""
    ppl_ref = perplexity(reference["logits"], tokens, decoder)
    ppl_test = perplexity(test["logits"], tokens, decoder)
    top1 = (reference["logits"].argmax(-1) == test["logits"].argmax(-1)).double().mean().item()
    return {
        "cosine_hidden": sage_ref.cosine_similarity(test["hidden"], reference["hidden"]),
        "top1_agreement": top1,
        "perplexity_sdpa": ppl_ref,
        "perplexity_sage": ppl_test,
        "perplexity_change": ppl_test / ppl_ref - 1,
    }


def greedy(model, tokens: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """``new_tokens`` greedy continuations [batch, new_tokens] of ``tokens`` (KV cache on)."""
    with torch.no_grad():
        out = model.generate(input_ids=tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)  # fmt: skip
    return out[:, tokens.shape[1] :]
