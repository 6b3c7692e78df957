"""sage_ref: a readable PyTorch reference of every SageAttention step.

Each function emulates a kernel's arithmetic (rounding points, block boundaries), so
the fast kernels in ``sage_fast`` can be held to a tight bound against it.
"""

from .attention import flash_attention, naive_attention
from .masks import additive_bias, base2_bias
from .metrics import cosine_similarity, relative_l1, rmse
from .online_softmax import causal_visible, online_softmax
from .quantization import (
    GRANULARITIES,
    Int8Quantized,
    decode_p,
    encode_p,
    quantize_int8,
    quantize_v_fp8,
    quantize_v_int8,
    smooth_k,
    token_groups,
)
from .sage import PV_MODES, sage_attention

__all__ = [
    "GRANULARITIES",
    "PV_MODES",
    "Int8Quantized",
    "additive_bias",
    "base2_bias",
    "causal_visible",
    "cosine_similarity",
    "decode_p",
    "encode_p",
    "flash_attention",
    "naive_attention",
    "online_softmax",
    "quantize_int8",
    "quantize_v_fp8",
    "quantize_v_int8",
    "relative_l1",
    "rmse",
    "sage_attention",
    "smooth_k",
    "token_groups",
]
