"""The noise floor of the agreement numbers: the same model with exact attention computed in a wider dtype.

An agreement number alone cannot say whether sage moved the outputs much or whether the outputs move
at any touch (random weights: logits nearly tied, 32 layers that amplify a perturbation). The noise
floor is the same comparison for an attention that is exact and differs from the baseline's only by
rounding: torch's SDPA on the baseline's q, k, v (and mask) upcast to float32 (float64 for a float32
model), its output rounded back to the model's dtype. Everything outside attention runs as in the
baseline, so the floor is what rounding inside a bfloat16 attention alone does to the outputs. sage
rounds elsewhere (INT8 Q·Kᵀ; FP8 P·V, or FP16 P·V, which keeps more of P than the baseline's bfloat16
P·V): what matters is how far above the floor it lands, and how far it is from this attention itself.

Why not ``attn_implementation="eager"`` (also exact): at 8k it materialises every head's
[q_len, kv_len] scores and their float32 softmax, over 10 GB of temporaries per Llama-8B layer (32
heads × 8192² scores in bfloat16, then in float32), and it rounds the scores themselves to bfloat16: a
different rounding of the same size as the baseline's, not less of it. The upcast SDPA runs in O(N)
memory (torch's memory-efficient kernel takes float32 on the GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..integrations.transformers import sdpa_call

WIDER = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.float32: torch.float64}


def wide_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                   position_bias=None, **kwargs):  # fmt: skip
    """transformers' "sdpa" attention in ``WIDER[query.dtype]``, rounded back: ([B, Nq, H, D], None).

    query [B, H, Nq, D], key/value [B, Hkv, Nkv, D]; the mask, causal flag and scale are those the
    "sdpa" function would use (``sdpa_call``). Grouped-query K and V are repeated, so that every SDPA
    backend (the memory-efficient one in float32) takes the call.
    """
    if query.dtype not in WIDER:
        raise TypeError(f"query has dtype {query.dtype}; the noise floor widens only {sorted(map(str, WIDER))}")
    call = sdpa_call(module, query, key, value, attention_mask, dropout, scaling, is_causal, position_bias, kwargs)
    wide = WIDER[query.dtype]
    q, k, v = (call[name].to(wide) for name in ("query", "key", "value"))
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    mask = call["attn_mask"]
    if mask is not None and mask.is_floating_point():
        mask = mask.to(wide)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=call["is_causal"], scale=call["scale"])
    return out.to(query.dtype).transpose(1, 2).contiguous(), None
