"""sage_fast: SageAttention kernels (Triton) behind a PyTorch API.

[`sageattn`][sage_fast.sageattn] is the full-featured entry point;
[`scaled_dot_product_attention`][sage_fast.scaled_dot_product_attention] is a
drop-in for ``torch.nn.functional.scaled_dot_product_attention`` with torch's semantics.
"""

from .api import sageattn, scaled_dot_product_attention

__all__ = ["sageattn", "scaled_dot_product_attention"]
