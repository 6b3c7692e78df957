"""How closely a model's outputs with one attention follow its outputs with torch's SDPA (the baseline).

For one batch of tokens run both ways, ``agreement`` gives:

- ``cosine_hidden``: cosine similarity of the last hidden states, over all tokens and channels;
- ``top1_agreement``: the fraction of positions whose highest logit is the same token;
- ``logit_rms_error``: the root mean square of the logits' difference, to be read against the
  baseline's ``top1_margin_median`` (``baseline``: the median gap between its highest and second
  highest logit). Random weights give logits that are nearly tied (the two highest of 128k Gaussian
  logits differ by about 0.2 of their standard deviation, on average): where the margin is below the
  RMS error, a top-1 agreement near 50 % says that the logits moved by that much, no more;
- ``perplexity``: exp(mean cross-entropy): a decoder's of each next token, an encoder's (masked LM
  head, nothing masked) of each input token at its own position; with random weights it is near the
  vocabulary size, and what is compared is the change, ``perplexity_change`` = test / baseline - 1;
- ``greedy_agreement`` (decoders, with ``greedy``): the fraction of greedily generated tokens that
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


def top1_margin_median(logits: torch.Tensor) -> float:
    """The median over positions of the highest logit minus the second highest."""
    top2 = logits.topk(2, dim=-1).values.float()
    return (top2[..., 0] - top2[..., 1]).median().item()


def logit_rms_error(reference: torch.Tensor, test: torch.Tensor, rows: int = 1024) -> float:
    """sqrt(mean((test - reference)²)) over all logits, in fp32 ``rows`` positions at a time (a 128k
    vocabulary at 8k tokens is 4 GB per fp32 copy)."""
    reference, test = reference.flatten(0, -2), test.flatten(0, -2)
    total = sum(((test[i : i + rows].float() - reference[i : i + rows].float()) ** 2).sum(dtype=torch.float64)
                for i in range(0, reference.shape[0], rows))  # fmt: skip
    return math.sqrt(total.item() / reference.numel())


def baseline(reference: dict, tokens: torch.Tensor, *, decoder: bool) -> dict:
    """What the comparisons are read against: the baseline's perplexity and median top-1 margin."""
    return {
        "perplexity": perplexity(reference["logits"], tokens, decoder),
        "top1_margin_median": top1_margin_median(reference["logits"]),
    }


def agreement(reference: dict, test: dict, tokens: torch.Tensor, *, decoder: bool) -> dict:
    """The metrics of the module docstring for outputs of ``forward`` (reference: torch's SDPA)."""
    ppl_ref = perplexity(reference["logits"], tokens, decoder)
    ppl_test = perplexity(test["logits"], tokens, decoder)
    top1 = (reference["logits"].argmax(-1) == test["logits"].argmax(-1)).double().mean().item()
    return {
        "cosine_hidden": sage_ref.cosine_similarity(test["hidden"], reference["hidden"]),
        "top1_agreement": top1,
        "logit_rms_error": logit_rms_error(reference["logits"], test["logits"]),
        "perplexity": ppl_test,
        "perplexity_change": ppl_test / ppl_ref - 1,
    }


def greedy(model, tokens: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """``new_tokens`` greedy continuations [batch, new_tokens] of ``tokens`` (KV cache on)."""
    with torch.no_grad():
        out = model.generate(input_ids=tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)  # fmt: skip
    return out[:, tokens.shape[1] :]
