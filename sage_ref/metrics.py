"""Accuracy metrics used throughout the SageAttention papers, computed in fp64 over the whole tensor.

For an output ``o`` and a reference ``r`` (same shape):
cosine similarity  Σ o·r / (‖o‖ ‖r‖);  relative L1  Σ|o - r| / Σ|r|;  RMSE  sqrt(mean (o - r)²).
"""

from __future__ import annotations

import torch


def _pair(out: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if out.shape != ref.shape:
        raise ValueError(f"out has shape {tuple(out.shape)} but ref has {tuple(ref.shape)}")
    return out.detach().to(torch.float64).flatten(), ref.detach().to(device=out.device, dtype=torch.float64).flatten()


def cosine_similarity(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Σ o·r / (‖o‖ ‖r‖) over all elements; 1.0 is perfect."""
    o, r = _pair(out, ref)
    return float(torch.dot(o, r) / (o.norm() * r.norm()))


def relative_l1(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Σ|o - r| / Σ|r| over all elements; 0.0 is perfect."""
    o, r = _pair(out, ref)
    return float((o - r).abs().sum() / r.abs().sum())


def rmse(out: torch.Tensor, ref: torch.Tensor) -> float:
    """sqrt(mean (o - r)²) over all elements."""
    o, r = _pair(out, ref)
    return float((o - r).square().mean().sqrt())
