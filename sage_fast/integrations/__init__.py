"""Using sage in real models: integrations, the adaptive per-layer plan, and what they share.

- ``route_sdpa`` (``sdpa_router``): a ``with`` block in which torch's
  ``scaled_dot_product_attention`` runs through sage where it can and torch where not, counted.
- ``sage_fast.integrations.transformers``: ``register("sage")`` makes sage an ``attn_implementation``
  of Hugging Face transformers; ``apply_plan`` gives each layer its planned variant; ``capture`` records
  a model's attention calls for calibration.
- ``sage_fast.integrations.diffusers``: ``apply(model)`` wraps a diffusers model's attention processors.
- ``AttentionPlan`` (``plan``) and ``calibrate`` (``calibration``): the SageAttention v1 paper's
  adaptive choice, per layer the fastest variant (``variants``: fp8 or fp16 P·V, or torch; timed on
  the GPU) whose cosine similarity to an fp64 truth stays above a threshold, saved and loaded as JSON.

transformers and diffusers are optional (``pip install 'sage-attention-ref[integrations]'``); their
modules import them on first use, nothing here imports them.
"""

from .calibration import AttentionCall, calibrate
from .counts import CallCounts
from .plan import AttentionPlan
from .sdpa_router import SageSDPA, route_sdpa
from .variants import VARIANTS

__all__ = ["VARIANTS", "AttentionCall", "AttentionPlan", "CallCounts", "SageSDPA", "calibrate", "route_sdpa"]
