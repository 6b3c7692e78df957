"""The FlashAttention-style bound the kernel tests hold every fast path to, and the masks they draw.

Bound: |fast - truth| <= 2 · |emulation - truth| + noise, with the truth an fp64 naive attention of
the very inputs the fast path saw (upcast exactly) and the emulation sage_ref's variant that rounds
at the same points. It is checked on the maximum over the tensor and, with ``elementwise=True``,
element by element.

Why this noise (the only absolute term), per output element, with ``vmax = max|v|``:

- the output's own rounding to its dtype: both sides round to out's dtype, and results that
  differ by a hair can land one ulp apart. |out| <= vmax (a convex combination of values), so
  one ulp is at most ``eps(out) · vmax`` (eps = 2^-10 fp16, 2^-7 bf16, 2^-23 fp32);
- fp16 P·V: the tensor core's fp16 accumulator inside one key tile (at most 128 keys: the fp16-P·V
  rungs' block_n) is rounded after every 16-key MMA step; the emulation rounds at the same steps,
  but the interpreter's and the GPU's summation order inside a step differ, so each of the 8 steps
  may end half an fp16 ulp away: 8 · 2^-11 · (Σ p) · vmax, which is at most 2^-8 · vmax after
  dividing by l;
- P rounded to fp16 from a p that differs by an fp32 ulp (exp2's last bit) moves by one fp16
  ulp, 2^-10 · p: summed over a row that is again at most 2^-10 · vmax.

Total: ``(2 · eps(out) + 2^-8 + 2^-10) · vmax``. For fp8 P·V a flipped e4m3 rounding of P can
cost more than that, but only where the emulation's own error, which the 2× term scales, is as
large; the test says where it checks elementwise.
"""

from __future__ import annotations

import contextlib

import torch

import sage_ref

EPS = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7, torch.float32: 2.0**-23, torch.float64: 2.0**-52}


def output_noise(out_dtype: torch.dtype, v: torch.Tensor) -> float:
    """The absolute noise term for outputs (see the module docstring)."""
    return (2 * EPS[out_dtype] + 2.0**-8 + 2.0**-10) * float(v.double().abs().max())


def lse_noise(q: torch.Tensor, k: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """Absolute noise for the log-sum-exp [B, H, Nq]: 32 fp32 ulps of the largest logit magnitude a
    row touches (sm_scale · |q_i| · max_j |k_j|, Cauchy-Schwarz), plus 1: the kernels add the
    smoothing shift sm_scale · q · mean(k) and m + log2 l in fp32, in another order than the emulation."""
    group = q.shape[1] // k.shape[1]
    k_norm = k.double().norm(dim=-1).amax(dim=-1).repeat_interleave(group, dim=1)  # [B, H]
    logit_max = sm_scale * q.double().norm(dim=-1) * k_norm[..., None]
    return 32 * 2.0**-24 * (1 + logit_max)


def truth(q, k, v, **kwargs):
    """fp64 naive attention of exactly these inputs (and a float mask upcast exactly), with lse."""
    mask = kwargs.pop("attn_mask", None)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.double()
    return sage_ref.naive_attention(q.double(), k.double(), v.double(), attn_mask=mask, return_lse=True, **kwargs)


def assert_fa_bound(fast, emul, ref, noise, *, elementwise: bool, what: str = "out"):
    """|fast - ref| <= 2 |emul - ref| + noise on the maximum, and per element when ``elementwise``.

    ``ref`` may hold -inf (lse of rows with no visible key): there fast and emul must be -inf too.
    Prints the first few violations with their indices, llm.c style.
    """
    fast, emul, ref = fast.double(), emul.double(), ref.double()
    assert not torch.isnan(fast).any(), f"{what}: NaN at {torch.isnan(fast).nonzero()[:5].tolist()}"
    inf = torch.isinf(ref)
    assert torch.equal(torch.isinf(fast), inf), f"{what}: -inf pattern differs from the truth's"
    assert torch.equal(torch.isinf(emul), inf), f"{what}: emulation's -inf pattern differs from the truth's"
    fast, emul, ref = (torch.where(inf, 0.0, t) for t in (fast, emul, ref))
    noise = torch.as_tensor(noise, dtype=torch.float64)
    err, err_emul = (fast - ref).abs(), (emul - ref).abs()
    bound_max = 2 * err_emul.max() + noise.max()
    assert err.max() <= bound_max, f"{what}: max error {err.max():.3g} > 2 · {err_emul.max():.3g} + {noise.max():.3g}"
    if elementwise:
        bad = err > 2 * err_emul + noise
        if bad.any():
            idx = bad.nonzero()[:5]
            rows = [
                f"  {tuple(i.tolist())}: fast {fast[tuple(i)]:.6g} emul {emul[tuple(i)]:.6g} truth {ref[tuple(i)]:.6g}"
                for i in idx
            ]
            raise AssertionError(f"{what}: {int(bad.sum())} elements break the bound, first:\n" + "\n".join(rows))


@contextlib.contextmanager
def poisoned_allocations():
    """Make torch.empty / torch.empty_like return NaN (floats) or 77 (integers): unwritten elements show."""
    originals = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan") if t.dtype.is_floating_point else (True if t.dtype == torch.bool else 77))

    torch.empty = lambda *a, **kw: poison(originals[0](*a, **kw))
    torch.empty_like = lambda *a, **kw: poison(originals[1](*a, **kw))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = originals


MASK_KINDS = ("none", "key_padding_bool", "key_padding_float", "full_bool", "full_float", "bool_2d", "head_float")


def make_mask(kind: str, batch: int, heads: int, q_len: int, kv_len: int, seed: int, dtype=torch.float32):
    """An attention mask of one kind, broadcastable to [batch, heads, q_len, kv_len] (None for "none").

    key_padding_*: [batch, 1, 1, kv_len], each sequence keeps a random prefix of >= 1 keys (float:
    masked keys get torch.finfo(float32).min, what many models use); full_bool: [B, H, Nq, Nkv] with
    ~20% masked (rows may end up fully masked: they must give 0); full_float: a Gaussian additive bias
    stored transposed (a non-contiguous view); bool_2d: [Nq, Nkv] ~half masked; head_float:
    [1, H, 1, Nkv] ALiBi-like slopes.
    """
    gen = torch.Generator().manual_seed(seed)
    if kind == "none":
        return None
    if kind.startswith("key_padding"):
        keep = torch.randint(1, kv_len + 1, (batch,), generator=gen)
        visible = (torch.arange(kv_len)[None, :] < keep[:, None])[:, None, None, :]
        if kind == "key_padding_bool":
            return visible
        return torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min).to(dtype)
    if kind == "full_bool":
        return torch.rand(batch, heads, q_len, kv_len, generator=gen) > 0.2
    if kind == "full_float":
        return (2 * torch.randn(batch, heads, kv_len, q_len, generator=gen)).to(dtype).transpose(-1, -2)
    if kind == "bool_2d":
        return torch.rand(q_len, kv_len, generator=gen) > 0.5
    if kind == "head_float":
        slopes = torch.rand(1, heads, 1, 1, generator=gen)
        return (-slopes * torch.arange(kv_len, dtype=torch.float32) / kv_len * 4).to(dtype)
    raise ValueError(kind)
