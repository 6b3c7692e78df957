"""An adaptive plan: which attention variant each layer runs, as the SageAttention v1 paper chooses it.

The paper calibrates on sample inputs and gives each layer the fastest kernel whose output keeps a
cosine similarity above a threshold against accurate attention. A plan holds that choice per layer
(keyed by a layer's qualified module name), the variant for layers it does not list, the threshold,
and the calibration's measurements, and round-trips through JSON::

    {
      "format": "sage-attention-plan", "version": 2,
      "threshold": 0.999, "default": "torch",
      "layers": {"model.layers.0.self_attn": "fp8", "model.layers.1.self_attn": "torch"},
      "metrics": {"model.layers.0.self_attn": {"fp8": {"cosine": 0.9993, "ms": 0.41},
                                               "fp16": {"cosine": 0.9999, "ms": 0.62},
                                               "torch": {"cosine": 1.0, "ms": 0.47}}, ...}
    }

``metrics[layer][variant]["cosine"]`` is the smallest cosine similarity of that variant's output to
the fp64 truth over the layer's calibration calls; ``"ms"``, where present, the summed median time of
those calls (measured on a GPU, absent where calibration did not time: see
``sage_fast.integrations.calibration``). Version 1 files, whose metrics hold the cosine alone
(``{"fp8": 0.9993}``), load as version 2 without times. Loading validates every field and names the
first bad one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .variants import VARIANTS

FORMAT, VERSION = "sage-attention-plan", 2
VERSIONS = (1, 2)  # version 1: metrics[layer][variant] is the cosine alone
FIELDS = ("format", "version", "threshold", "default", "layers", "metrics")
MEASURES = ("cosine", "ms")  # the fields of metrics[layer][variant]


def check_variant(where: str, variant) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"{where} must be one of {list(VARIANTS)}, got {variant!r}")
    return variant


def check_cosine(where: str, value) -> float:
    """A cosine similarity: a finite number in [-1, 1] (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where} must be a number, got {value!r}")
    if not (math.isfinite(value) and -1.0 <= value <= 1.0):
        raise ValueError(f"{where} must be a finite cosine similarity in [-1, 1], got {value!r}")
    return float(value)


def check_ms(where: str, value) -> float:
    """A measured time in milliseconds: a finite number > 0 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where} must be a number of milliseconds, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{where} must be a finite time > 0 in milliseconds, got {value!r}")
    return float(value)


def check_measures(where: str, value) -> dict:
    """One variant's measurements: {"cosine": cosine similarity} with an optional "ms" (a time > 0)."""
    if not isinstance(value, dict):
        raise TypeError(f"{where} must be a dict with 'cosine' and optionally 'ms', got {value!r:.80}")
    unknown = sorted(set(value) - set(MEASURES), key=str)
    if unknown or "cosine" not in value:
        raise ValueError(f"{where} must have 'cosine' and optionally 'ms', got the keys {sorted(value, key=str)}")
    check_cosine(f"{where}['cosine']", value["cosine"])
    if "ms" in value:
        check_ms(f"{where}['ms']", value["ms"])
    return value


def check_layer_dict(where: str, value) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise TypeError(f"{where} must be a dict keyed by non-empty layer names (str), got {value!r:.80}")
    return value


@dataclass(frozen=True)
class AttentionPlan:
    """Per-layer attention variants ("fp8", "fp16", "torch"; see ``sage_fast.integrations.variants``).

    Parameters
    ----------
    layers : dict[str, str]
        Layer name → variant. Names are qualified module names (transformers: ``model.named_modules()``,
        e.g. ``"model.layers.3.self_attn"``; diffusers: the attention module's name, e.g.
        ``"down_blocks.0.attentions.0.transformer_blocks.0.attn1"``).
    default : str
        The variant of every layer the plan does not list.
    threshold : float
        The cosine similarity each chosen sage variant kept on the calibration data.
    metrics : dict[str, dict[str, dict[str, float]]]
        Layer → variant → ``{"cosine": smallest cosine similarity against the fp64 truth, "ms": summed
        median time of the layer's calibration calls}`` ("ms" absent where not timed; the whole dict
        may be empty for a hand-written plan).

    Examples
    --------
    >>> layer0, layer1 = "model.layers.0.self_attn", "model.layers.1.self_attn"
    >>> plan = AttentionPlan(layers={layer0: "fp8"}, default="fp16", threshold=0.99)
    >>> plan.variant(layer0), plan.variant(layer1)
    ('fp8', 'fp16')
    >>> AttentionPlan.from_json(plan.to_json()) == plan
    True
    """

    layers: dict
    default: str
    threshold: float
    metrics: dict = field(default_factory=dict)

    def __post_init__(self):
        check_layer_dict("layers", self.layers)
        for layer, variant in self.layers.items():
            check_variant(f"layers[{layer!r}]", variant)
        check_variant("default", self.default)
        object.__setattr__(self, "threshold", check_cosine("threshold", self.threshold))
        check_layer_dict("metrics", self.metrics)
        for layer, by_variant in self.metrics.items():
            check_layer_dict(f"metrics[{layer!r}]", by_variant)
            for variant, measures in by_variant.items():
                check_variant(f"a variant of metrics[{layer!r}]", variant)
                check_measures(f"metrics[{layer!r}][{variant!r}]", measures)

    def variant(self, layer: str) -> str:
        """The variant ``layer`` runs: its own, or the default."""
        return self.layers.get(layer, self.default)

    def to_json(self) -> str:
        data = {"format": FORMAT, "version": VERSION, "threshold": self.threshold, "default": self.default,
                    "layers": self.layers, "metrics": self.metrics}  # fmt: skip
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> AttentionPlan:
        """Parse and validate a plan (ValueError/TypeError naming the bad field)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"a plan must be JSON: {error}") from None
        if not isinstance(data, dict):
            raise TypeError(f"a plan must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown plan fields {unknown}; a plan has {list(FIELDS)}")
        version = data.get("version")
        if data.get("format") != FORMAT or isinstance(version, bool) or version not in VERSIONS:
            raise ValueError(f"format/version must be {FORMAT!r}/one of {list(VERSIONS)}, "
                             f"got {data.get('format')!r}/{version!r}")  # fmt: skip
        for name in ("threshold", "default", "layers"):
            if name not in data:
                raise ValueError(f"the plan has no {name!r}")
        metrics = data.get("metrics", {})
        if version == 1:
            metrics = upgrade_metrics(metrics)
        return cls(layers=data["layers"], default=data["default"], threshold=data["threshold"], metrics=metrics)

    def save(self, path) -> Path:
        """Write the plan as JSON to ``path``; returns the path."""
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path) -> AttentionPlan:
        """Read and validate a plan written by ``save``."""
        return cls.from_json(Path(path).read_text())


def upgrade_metrics(metrics):
    """Version 1's metrics (layer → variant → cosine) as version 2's (layer → variant → {"cosine": ...}).

    What is not a dict of dicts is passed through for ``AttentionPlan`` to refuse by name.
    """
    if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
        return metrics
    return {layer: {variant: {"cosine": cosine} for variant, cosine in by_variant.items()}
            for layer, by_variant in metrics.items()}  # fmt: skip
