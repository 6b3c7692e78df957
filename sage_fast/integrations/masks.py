"""The mask builder registered with transformers for sage: SDPA's masks, key-only masks as one row of keys.

transformers builds a bidirectional mask (encoders such as BERT, cross-attention, decoders run with
``is_causal=False``) from the 2-d padding mask as ``q_idx >= 0 and padding[b, kv_idx]``: a function of
the query index, so ``sdpa_mask`` materialises a full boolean [batch, 1, q_len, kv_len] tensor. The
sage kernel reads such a mask tile by tile ([BLOCK_M, BLOCK_N] bytes per key tile, the slow FULL_BIAS
path); a mask that does not vary over queries it reads one row of keys per tile (ROW_BIAS, ~2.5×
faster at long lengths).

``sdpa_key_mask`` builds those masks from a mask function that does not look at the query
(``kv_idx >= 0``, true for every key, like ``q_idx >= 0`` for every query) and returns the
[batch, 1, 1, kv_len] view. Which masks are key-only is known *by construction* (transformers passed
its bidirectional mask function), never found by reading the mask (a GPU→CPU synchronisation). Every
other mask (causal, sliding windows, packed sequences, custom overlays) is ``sdpa_mask``'s own, and
``sdpa_mask`` decides as for "sdpa" when no mask is needed at all (None).
"""

from __future__ import annotations

from .extras import require


def every_key(batch_idx, head_idx, q_idx, kv_idx):
    """A transformers mask function that lets every query see every key, without using the query index."""
    return kv_idx >= 0


def sdpa_key_mask(**kwargs):
    """transformers' ``sdpa_mask`` (same keyword arguments), with bidirectional masks as [batch, 1, 1, kv_len].

    Returns None where ``sdpa_mask`` does, the boolean key-padding view [batch, 1, 1, kv_len] for
    ``mask_function=bidirectional_mask_function`` (it equals every query row of ``sdpa_mask``'s
    [batch, 1, q_len, kv_len] mask), and ``sdpa_mask``'s mask for any other mask function.

    Examples
    --------
    >>> import torch
    >>> from transformers import masking_utils
    >>> padding = torch.tensor([[True, True, True], [False, True, True]])
    >>> mask = sdpa_key_mask(
    ...     batch_size=2, q_length=4, kv_length=3, attention_mask=padding,
    ...     mask_function=masking_utils.bidirectional_mask_function,
    ... )
    >>> mask.shape, mask[1, 0, 0].tolist()
    (torch.Size([2, 1, 1, 3]), [False, True, True])
    """
    masking_utils = require("transformers.masking_utils")
    if kwargs.get("mask_function") is not masking_utils.bidirectional_mask_function:
        return masking_utils.sdpa_mask(**kwargs)
    mask = masking_utils.sdpa_mask(**{**kwargs, "mask_function": every_key})
    return None if mask is None else mask[:, :, :1]
