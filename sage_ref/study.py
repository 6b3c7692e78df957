"""The accuracy study: every SageAttention variant against an fp64 truth, on data that shows why each step exists.

For each dataset, q, k, v are drawn once (fixed seed) and rounded to fp16, as a model would feed
them. The truth is [`naive_attention`][sage_ref.naive_attention] on those same fp16 values in fp64; each variant
``sage_attention(q, k, v, qk_granularity=g, smooth_k=s, pv=p)`` is scored by

    cosine similarity  Σ o·r / (‖o‖ ‖r‖),   relative L1  Σ|o - r| / Σ|r|,   RMSE  sqrt(mean (o - r)²).

The three datasets are the SageAttention papers' findings in miniature:

- ``gaussian``: q, k, v ~ N(0, 1). Nothing is hard; what is left is the rounding of each step.
- ``k-bias``: k = N(0, 1) + 10·b, one bias b ~ N(0, 1) per (head, channel) shared by every token, as
  real models' K has. The bias sets K's INT8 scale and drowns the part that differs between tokens,
  which is all the softmax sees; subtracting K's token mean (smooth_k) removes it for free.
- ``sharp``: q · 8. Large logits make attention nearly one-hot and multiply every logit error before
  the exponential, so the granularity of the Q and K scales matters most here.

Run ``python -m sage_ref`` (``--quick`` for tiny sizes); [`run_study`][sage_ref.study.run_study] returns the rows.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

import torch

from .attention import naive_attention
from .metrics import cosine_similarity, relative_l1, rmse
from .quantization import GRANULARITIES
from .sage import PV_MODES, sage_attention

Shape = tuple[int, int, int, int]


@dataclass(frozen=True)
class Dataset:
    """A synthetic input: ``make(shape, generator) -> (q, k, v)`` in fp64, and what it shows."""

    shows: str
    make: Callable[[Shape, torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _randn(shape, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def _gaussian(shape, gen):
    return _randn(shape, gen), _randn(shape, gen), _randn(shape, gen)


def _k_bias(shape, gen):
    q, k, v = _gaussian(shape, gen)
    bias = _randn((shape[0], shape[1], 1, shape[3]), gen)
    return q, k + 10 * bias, v


def _sharp(shape, gen):
    q, k, v = _gaussian(shape, gen)
    return 8 * q, k, v


DATASETS = {
    "gaussian": Dataset("q, k, v ~ N(0, 1): the baseline, only each step's rounding is left", _gaussian),
    "k-bias": Dataset(
        "k = N(0, 1) + 10·b, b shared by all tokens: the bias sets K's INT8 scale; smooth_k removes it", _k_bias
    ),
    "sharp": Dataset("q · 8: near one-hot attention amplifies logit errors; scale granularity matters", _sharp),
}
FULL = dict(batch=1, heads=4, seq_len=1024, head_dim=64)
QUICK = dict(batch=1, heads=2, seq_len=128, head_dim=32)


def make_inputs(dataset: str, *, batch: int, heads: int, seq_len: int, head_dim: int, seed: int = 0):
    """q, k, v [batch, heads, seq_len, head_dim] in fp16 for ``dataset``, the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(t.to(torch.float16) for t in DATASETS[dataset].make((batch, heads, seq_len, head_dim), gen))


def variants(granularities=GRANULARITIES, smooth=(False, True), pvs=PV_MODES):
    """The exact pipeline first (no quantization: the floor, the output's rounding to fp16), then granularity ×
    smooth_k × pv."""
    yield dict(qk_granularity=None, smooth_k=False, pv="fp32")
    for granularity in granularities:
        for smooth_k in smooth:
            for pv in pvs:
                yield dict(qk_granularity=granularity, smooth_k=smooth_k, pv=pv)


def run_study(datasets=tuple(DATASETS), *, seed=0, is_causal=False, variant_list=None, **sizes) -> list[dict]:
    """Score every variant on every dataset; one dict per (dataset, variant).

    sizes: batch, heads, seq_len, head_dim (default ``FULL``: 1, 4, 1024, 64). Each row holds ``dataset``,
    ``qk_granularity``, ``smooth_k``, ``pv`` and the metrics ``cosine``, ``rel_l1``, ``rmse``.
    """
    sizes = {**FULL, **sizes}
    rows = []
    for name in datasets:
        q, k, v = make_inputs(name, seed=seed, **sizes)
        truth = naive_attention(q.double(), k.double(), v.double(), is_causal=is_causal)
        for options in variant_list if variant_list is not None else variants():
            out = sage_attention(q, k, v, is_causal=is_causal, **options)
            rows.append(
                dict(
                    dataset=name,
                    **options,
                    cosine=cosine_similarity(out, truth),
                    rel_l1=relative_l1(out, truth),
                    rmse=rmse(out, truth),
                )
            )
    return rows


def format_table(rows: list[dict]) -> str:
    """Plain aligned text: per dataset a header line saying what it shows, then one line per variant."""
    columns = ("qk_granularity", "smooth_k", "pv", "cosine", "rel_l1", "rmse")
    cells = {
        "qk_granularity": lambda r: str(r["qk_granularity"] or "none"),
        "smooth_k": lambda r: "on" if r["smooth_k"] else "off",
        "pv": lambda r: r["pv"],
        "cosine": lambda r: f"{r['cosine']:.6f}",
        "rel_l1": lambda r: f"{r['rel_l1']:.3e}",
        "rmse": lambda r: f"{r['rmse']:.3e}",
    }
    width = {c: max(len(c), *(len(cells[c](r)) for r in rows)) for c in columns}

    def line(values):
        return "  ".join(v.rjust(width[c]) if c in ("cosine", "rel_l1", "rmse") else v.ljust(width[c])
                         for c, v in zip(columns, values)).rstrip()

    out = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        out += ["", f"{name}: {DATASETS[name].shows}", line(columns)]
        out += [line([cells[c](r) for c in columns]) for r in rows if r["dataset"] == name]
    return "\n".join(out[1:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sage_ref", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes {QUICK} instead of {FULL}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    # One thread: the tensors are small, so extra threads cost more than they save (much more
    # on a busy machine), and a fixed thread count keeps BLAS summation orders, and so the
    # printed digits, the same from machine to machine.
    torch.set_num_threads(1)
    print(
        "SageAttention variants vs an fp64 naive_attention truth; fp16 inputs "
        + " ".join(f"{k}={v}" for k, v in sizes.items())
        + f", seed {args.seed}, block_m=128 block_n=64, non-causal\n"
    )
    print(format_table(run_study(seed=args.seed, **sizes)))
    return 0
