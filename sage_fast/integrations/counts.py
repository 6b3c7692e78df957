"""How many attention calls ran through sage and how many fell back to torch, and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class CallCounts:
    """A tally of attention calls, kept by an integration and read by its caller.

    Attributes
    ----------
    variants : collections.Counter
        Calls that ran each variant by choice: "fp8" or "fp16" (sageattn), "torch" (torch's SDPA because
        a plan or an option asked for it, or "auto" chose it where torch is faster:
        ``variants.resolve``).
    fallbacks : collections.Counter
        Calls that were meant for sage but ran torch's SDPA because sage cannot honour them, keyed by
        the reason (sage's own error message, or what the integration checked).
    masks : collections.Counter
        sage calls by the mask layout that reached the kernel (integrations that record it): "none",
        "causal" (the flag alone), "key row" ([batch, 1, 1, kv_len], the fast ROW_BIAS path), "causal +
        key row" (both: a padded decoder batch), "full" (a mask that varies over queries, FULL_BIAS).

    Examples
    --------
    >>> counts = CallCounts()
    >>> counts.record("fp16"); counts.record("fp16")
    >>> counts.fall_back("dropout_p=0.1")
    >>> counts.sage_calls, counts.torch_calls, counts.fallback_calls
    (2, 1, 1)
    """

    variants: Counter = field(default_factory=Counter)
    fallbacks: Counter = field(default_factory=Counter)
    masks: Counter = field(default_factory=Counter)

    def record(self, variant: str) -> None:
        """One call ran ``variant`` ("fp8", "fp16" or "torch") as chosen."""
        self.variants[variant] += 1

    def record_mask(self, layout: str) -> None:
        """One sage call reached the kernel with mask ``layout`` (see ``masks``)."""
        self.masks[layout] += 1

    def fall_back(self, reason: str) -> None:
        """One call meant for sage ran torch's SDPA instead, because of ``reason``."""
        self.fallbacks[reason] += 1

    @property
    def sage_calls(self) -> int:
        """Calls that ran a sageattn kernel (or its emulation)."""
        return sum(n for variant, n in self.variants.items() if variant != "torch")

    @property
    def torch_calls(self) -> int:
        """Calls that ran torch's SDPA, chosen or fallen back to."""
        return self.variants["torch"] + self.fallback_calls

    @property
    def fallback_calls(self) -> int:
        return sum(self.fallbacks.values())

    def as_dict(self) -> dict:
        """A JSON-ready summary: calls per variant, fallbacks per reason, and the totals."""
        return {
            "sage_calls": self.sage_calls,
            "torch_calls": self.torch_calls,
            "variants": dict(self.variants),
            "fallbacks": dict(self.fallbacks),
            "masks": dict(self.masks),
        }

    def __str__(self) -> str:
        ran = ", ".join(f"{variant} {n}" for variant, n in sorted(self.variants.items())) or "none"
        text = f"attention calls: {ran}; fallbacks to torch: {self.fallback_calls}"
        return text + "".join(f"\n  {n} × {reason}" for reason, n in self.fallbacks.most_common())
