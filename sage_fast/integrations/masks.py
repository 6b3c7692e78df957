"""The mask builder registered with transformers for sage: SDPA's masks, with the query-free part as one row of keys.

transformers builds a bidirectional mask (encoders such as BERT, cross-attention, decoders run with
``is_causal=False``) from the 2-d padding mask as ``q_idx >= 0 and padding[b, kv_idx]``: a function of
the query index, so ``sdpa_mask`` materialises a full boolean [batch, 1, q_len, kv_len] tensor. The
sage kernel reads such a mask tile by tile ([BLOCK_M, BLOCK_N] bytes per key tile, the slow FULL_BIAS
path); a mask that does not vary over queries it reads one row of keys per tile (ROW_BIAS, ~2.5×
faster at long lengths).

``sdpa_key_mask`` builds those masks from a mask function that does not look at the query
(``kv_idx >= 0``, true for every key, like ``q_idx >= 0`` for every query) and returns the
[batch, 1, 1, kv_len] view. Which masks are key-only is known *by construction* (transformers passed
its bidirectional mask function), never found by reading the mask (a GPU→CPU synchronisation).

A causal mask with padding (a padded decoder batch, batched generation) is
``q_offset + i >= kv_offset + j and padding[b, kv_offset + j]``: the causal part depends on the query,
the padding part does not. When ``q_offset - kv_offset == kv_len - q_len`` (plain ints: prefill without
a cache, a dynamic cache, each decode step over it) the causal part is exactly sageattn's bottom-right
``is_causal`` (query i sees key j iff j <= i + kv_len - q_len). Then ``sdpa_key_mask`` still returns
``sdpa_mask``'s full mask (what every other reader of the mask expects: transformers' own functions,
a "torch" layer, a model that slices it) and notes, keyed by that very tensor object, its
``CausalKeys``: the key row [batch, 1, 1, kv_len] and the lengths. sage's attention function looks the
mask up (``causal_keys``) and calls ``sageattn(is_causal=True, attn_mask=key_row)``; a tensor derived
from the mask (a slice, a copy) is not noted and runs the full mask. The note dies with the mask.

Left on the full mask: sliding windows and chunked attention (their mask functions are not
``causal_mask_function``; the window is a band the kernel has no flag for), packed sequences, custom
``and``/``or`` overlays, static caches (a tensor ``q_offset`` and a ``kv_len`` of the whole cache: proving
the alignment would read device data), transformers versions that pass ``cache_position`` instead of
``q_offset``, and anything traced by ``torch.compile``. Every other mask is ``sdpa_mask``'s own, and
``sdpa_mask`` decides as for "sdpa" when no mask is needed at all (None).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from .extras import require


def every_key(batch_idx, head_idx, q_idx, kv_idx):
    """A transformers mask function that lets every query see every key, without using the query index."""
    return kv_idx >= 0


@dataclass(frozen=True)
class CausalKeys:
    """What a causal padding mask [batch, 1, q_len, kv_len] says, in sageattn's terms.

    The mask equals ``causal_visible(q_len, kv_len) & key_mask`` (bottom-right causal, and the keys
    that are not padding); ``key_mask`` is bool [batch, 1, 1, kv_len], or None where nothing is padded.
    """

    key_mask: torch.Tensor | None
    q_len: int
    kv_len: int


NOTED: WeakIdKeyDictionary = WeakIdKeyDictionary()  # mask tensor (by identity) -> CausalKeys


def causal_keys(mask) -> CausalKeys | None:
    """The ``CausalKeys`` that ``sdpa_key_mask`` noted for this very ``mask`` object, or None (no lookup under tracing)."""
    if not isinstance(mask, torch.Tensor) or torch.compiler.is_compiling():
        return None
    return NOTED.get(mask)


def bottom_right_aligned(q_length, kv_length, q_offset, kv_offset) -> bool:
    """Whether ``kv_offset + j <= q_offset + i`` is ``j <= i + kv_length - q_length``, from ints alone."""
    ints = all(type(n) is int for n in (q_length, kv_length, q_offset, kv_offset))
    return ints and q_offset - kv_offset == kv_length - q_length


def key_row(padding: torch.Tensor, kv_length: int, kv_offset: int) -> torch.Tensor:
    """``padding[b, kv_offset + j]`` as [batch, 1, 1, kv_length], False past its end (as ``sdpa_mask`` pads it)."""
    if (missing := kv_offset + kv_length - padding.shape[-1]) > 0:
        padding = F.pad(padding, (0, missing))
    return padding[:, None, None, kv_offset : kv_offset + kv_length]


def sdpa_key_mask(**kwargs):
    """transformers' ``sdpa_mask`` (same keyword arguments), with the query-free part of masks as one row of keys.

    Returns None where ``sdpa_mask`` does; the boolean key-padding view [batch, 1, 1, kv_len] for
    ``mask_function=bidirectional_mask_function`` (it equals every query row of ``sdpa_mask``'s
    [batch, 1, q_len, kv_len] mask); ``sdpa_mask``'s mask for any other mask function, noted with its
    ``CausalKeys`` (see ``causal_keys``) where it is ``causal_mask_function`` aligned bottom-right.

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
    >>> causal = sdpa_key_mask(
    ...     batch_size=2, q_length=3, kv_length=3, attention_mask=padding,
    ...     mask_function=masking_utils.causal_mask_function,
    ... )
    >>> causal.shape, causal_keys(causal).key_mask[1, 0, 0].tolist()
    (torch.Size([2, 1, 3, 3]), [False, True, True])
    """
    masking_utils = require("transformers.masking_utils")
    function = kwargs.get("mask_function")
    if function is masking_utils.bidirectional_mask_function:
        mask = masking_utils.sdpa_mask(**{**kwargs, "mask_function": every_key})
        return None if mask is None else mask[:, :, :1]
    mask = masking_utils.sdpa_mask(**kwargs)
    if mask is None or function is not masking_utils.causal_mask_function or torch.compiler.is_compiling():
        return mask
    batch, q_length, kv_length = kwargs.get("batch_size"), kwargs.get("q_length"), kwargs.get("kv_length")
    q_offset, kv_offset, padding = kwargs.get("q_offset", 0), kwargs.get("kv_offset", 0), kwargs.get("attention_mask")
    if tuple(mask.shape) != (batch, 1, q_length, kv_length) or not bottom_right_aligned(
        q_length, kv_length, q_offset, kv_offset
    ):
        return mask
    if padding is None:
        NOTED[mask] = CausalKeys(None, q_length, kv_length)
    elif padding.dim() == 2 and padding.dtype == torch.bool and padding.shape[0] == batch:
        NOTED[mask] = CausalKeys(key_row(padding, kv_length, kv_offset).to(mask.device), q_length, kv_length)
    return mask
