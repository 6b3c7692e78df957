r"""sage_attention: the bridge to flash_attention, smoothing, and an error bound derived from the quantization steps.

The bound (every quantity below is computed per element by :func:`error_bound`)
===============================================================================

Notation, per batch and head, for a query row i and the keys j it sees. c = sm_scale · log2 e.
The truth: u_ij = c · q_i·(k_j - μ) (base-2 logits; μ is the K mean sage subtracts, or 0 without
smoothing; a row shift, so the softmax is that of the original logits), p_ij = softmax_j(u_ij) in
fp64, o_i = Σ_j p_ij v_j.

1. Q and K to INT8. sage quantizes q'_i = c·q_i and k'_j = k_j - μ with scales σq_i, σk_j
   (read from :func:`quantize_int8`). Rounding to the nearest code leaves |q̃_id - q'_id| ≤ δq_i and
   |k̃_jd - k'_jd| ≤ δk_j with δ = σ (1/2 + 2^-15) (the 2^-15 is derived in test_ref_quantization).
   The computed logit is t_ij = q̃_i·k̃_j (the int32 dot product is exact), and
       q̃·k̃ - q'·k' = q̃·(k̃ - k') + (q̃ - q')·k'
   gives |t_ij - u_ij| ≤ Σ_d (|q'_id| + δq_i) δk_j + |k'_jd| δq_i  +  fp32 roundings
   (of c·q, of k - μ, of the int32 sum times σq σk: each ≤ a few 2^-24 relative; we charge
   2^-20 · Σ_d (|q'_d| + δq)(|k'_d| + |k_d| + δk), a factor ~4 to spare; without quantization
   the dot product itself is fp32, and the charge grows by head_dim · 2^-23).
2. The fp32 online softmax (t - m, exp2, the alpha rescales) rounds each argument by 2^-24
   relative (|argument| ≤ 2 W_i, W_i = max_j |u_ij| + E_ij) and each exp2 by ~1 ulp, at most
   n_blocks + 2 times per probability: a further logit error ζ_i = 2^-21 (W_i + 1)(n_blocks + 4).
   Together: |Δ_ij| ≤ E'_ij = E_ij + ζ_i.
3. Softmax perturbation. With P*_ij the softmax of the perturbed logits,
       P*_j / p_j = 2^{Δ_j} / Σ_l p_l 2^{Δ_l} ∈ [2^{-R_ij}, 2^{R_ij}],   R_ij = E'_ij + max_l E'_il,
   so |P*_j - p_j| ≤ (2^{R_ij} - 1) p_j and P*_j ≤ P̄_j = min(1, 2^{R_ij} p_j).
4. P·V. The kernel holds block-local probabilities in [0, 1], encodes them, and multiplies by the
   encoded V; after the alpha rescales and the division by l ≥ 1 an absolute encoding error can only
   shrink. With π̂_j the normalized encoded probability and V̂ the encoded V:
       Σ_j π̂_j V̂_jd - o_id = Σ_j (π̂_j - P*_j) V̂_jd + Σ_j P*_j (V̂_jd - V_jd) + Σ_j (P*_j - p_j) V_jd
   - P encoding e_P (half a step of the format): fp16 2^-11 P̄ + 2^-25 (subnormals);
     fp8 (P·448 in e4m3, 3 mantissa bits) (2^-4 + 2^-23) P̄ + 2^-10/448; int8 (round(127 P)/127)
     min(P̄, 1/254 + 2^-23) (a P below 1/254 rounds to 0, an error of P itself); fp32: 0.
   - V encoding e_V: fp16 (2^-11 + 2^-23)|v| + 2^-25 (double rounding via fp32); fp8 per channel,
     σv_d = max_j |v_jd| / 448: (2^-4 + 2^-20)|v| + 2^-10 σv_d; int8, σv_d = max|v_d| / 127:
     σv_d (1/2 + 2^-15) + 2^-22 |v|; fp32: 2^-24 |v| (fp64 input rounded to fp32).
   - fp16 accumulation (pv="fp16"): each block rounds its fp16 accumulator ceil(block_n / 16)
     times, each by 2^-11 of at most Σ_{j in block} π̂_j |V̂_jd|, or 2^-25 among subnormals.
   - fp32 sums across blocks, the sum l and the final scalings: γ = 2^-22 (block_n + n_blocks + 8)
     relative to Σ_j π̂_j |V̂_jd|.
   Hence, with A_d = Σ_j (P̄_j + e_P,j) |V̂_jd| and |V̂| ≤ |v| + e_V:
       B_id = Σ_j (2^{R_ij} - 1) p_j |v_jd| + Σ_j e_P,j |V̂_jd| + Σ_j P̄_j e_V,jd
              + [fp16] 1.01 ceil(block_n/16) 2^-11 A_d + n_mma 2^-25  + γ A_d.
5. The output dtype rounds once more: + u (|o_id| + B_id) + 2^-25 (u = 2^-11 fp16, 2^-8 bf16, else 2^-24).
6. lse. The sum l uses unencoded P, so only the logits move it:
       |lse_i - lse_true_i| ≤ ln 2 · max_j E'_ij + 2γ + 2^-20 (|lse_true_i| + (head_dim + 1) s_i + 1)
   where s_i = sm_scale · Σ_d |q_id μ_d| bounds the smoothing shift sm_scale · q_i·μ that sage adds
   back with an fp32 dot product (step 5 of sage.py).

Rows that see no key must give exactly 0 and lse = -inf.

Two references
==============
Against the fp64 truth the bound is loose: step 1 assumes every rounding error in a dot product
points the same way, so at head_dim 64 it sits ~20-100x above the observed error (it catches a
flipped scale or a dropped lse shift, not a subtly worse rounding; test_ref_quantization guards the
rounding). So the same steps are also run against a second reference: the logits q̃·k̃ rebuilt in fp64
from the quantizers' codes and scales. Then step 1 leaves only fp32 rounding (E = 2^-22 |u|), and the
check pins everything sage does after quantization (tiling, online softmax, P·V encodings, lse shift)
to within ~4-12x of its real error (~1x for pv="fp32" on fp16 data, where the output's rounding dominates).
"""

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import attention_inputs, block_sizes, lengths, randn_like, seeds

from sage_ref import (
    GRANULARITIES,
    PV_MODES,
    flash_attention,
    naive_attention,
    quantize_int8,
    sage_attention,
    smooth_k,
)
from sage_ref.study import DATASETS, QUICK, run_study, variants

LOG2E = math.log2(math.e)
OUT_UNIT = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24, torch.float64: 2.0**-24}
SMALL = dict(max_len=160, max_head_dim=96)


def visible(q_len: int, kv_len: int, is_causal: bool) -> torch.Tensor:
    """[q_len, kv_len] bool: query i sees key j (bottom-right aligned causal mask)."""
    i = torch.arange(q_len)[:, None]
    j = torch.arange(kv_len)[None, :]
    return (j <= i + kv_len - q_len) | (not is_causal)


def expand(t: torch.Tensor, group: int) -> torch.Tensor:
    return t.repeat_interleave(group, dim=1)


def e_p(p_bar: torch.Tensor, pv: str) -> torch.Tensor:
    """Normalized error of one encoded probability (step 4)."""
    if pv == "fp16":
        return 2.0**-11 * p_bar + 2.0**-25
    if pv == "fp8":
        return (2.0**-4 + 2.0**-23) * p_bar + 2.0**-10 / 448
    if pv == "int8":
        return torch.minimum(p_bar * (1 + 2.0**-20), torch.full_like(p_bar, 1 / 254 + 2.0**-23))
    return torch.zeros_like(p_bar)


def e_v(v: torch.Tensor, pv: str) -> torch.Tensor:
    """Error of one encoded value of V [B, H, N, D] (step 4)."""
    a = v.abs()
    amax = a.amax(dim=-2, keepdim=True) * (1 + 2.0**-20)
    if pv == "fp16":
        return (2.0**-11 + 2.0**-23) * a + 2.0**-25
    if pv == "fp8":
        return (2.0**-4 + 2.0**-20) * a + 2.0**-10 * amax / 448
    if pv == "int8":
        return amax / 127 * (0.5 + 2.0**-15) + 2.0**-22 * a
    return 2.0**-24 * a


def logits_and_error(q, k, *, smooth, granularity, block_m, block_n, c, reference):
    """Step 1: base-2 logits u [B, H, Nq, Nkv] of the reference, the bound E on sage's error in them, and μ.

    reference="truth": u = c q·(k - μ) in fp64, E from the quantization scales (derived above).
    reference="codes": u = q̃·k̃ from the quantizers' own codes and scales, exact in fp64, so E is
    only sage's fp32 rounding of the int32 sum times σq σk (2^-23 |u|): a much tighter check of
    everything after quantization (online softmax, scale application, P·V, the lse shift).
    """
    d = q.shape[-1]
    group = q.shape[1] // k.shape[1]
    k_s, mu = smooth_k(k) if smooth else (k, torch.zeros_like(k[:, :, :1], dtype=torch.float64))
    k64, mu = expand(k.double(), group), expand(mu.double(), group)
    if granularity is not None:
        q_hat = quantize_int8(q.float() * c, granularity, block_m, warps=4)
        k_hat = quantize_int8(expand(k_s, group), granularity, block_n, warps=1)
        if reference == "codes":
            u = q_hat.codes.double() * q_hat.token_scale().double()[..., None]
            u = u @ (k_hat.codes.double() * k_hat.token_scale().double()[..., None]).transpose(-1, -2)
            return u, 2.0**-22 * u.abs(), mu
        dq = q_hat.token_scale().double() * (0.5 + 2.0**-15)
        dk = k_hat.token_scale().double() * (0.5 + 2.0**-15)
    else:
        dq = torch.zeros(q.shape[:-1], dtype=torch.float64)
        dk = torch.zeros(k64.shape[:-1], dtype=torch.float64)
    qa, ka = (c * q.double()).abs(), (k64 - mu).abs()
    e = (qa.sum(-1) + d * dq)[..., None] * dk[..., None, :] + dq[..., None] * ka.sum(-1)[..., None, :]
    slop = 2.0**-20 + (d * 2.0**-23 if granularity is None else 0.0)  # None: an fp32 dot product, not int32
    e = e + slop * (qa + dq[..., None]) @ (ka + k64.abs() + dk[..., None]).transpose(-1, -2)
    return c * q.double() @ (k64 - mu).transpose(-1, -2), e, mu


def error_bound(q, k, v, *, is_causal, smooth, granularity, pv, block_m, block_n, reference="truth"):
    """The bound of the module docstring: (reference out, out bound, reference lse, lse bound), all fp64."""
    b, h, q_len, d = q.shape
    kv_len = k.shape[2]
    scale = d**-0.5
    c = scale * LOG2E
    v64 = expand(v.double(), h // k.shape[1])
    see = visible(q_len, kv_len, is_causal)
    u, e, mu = logits_and_error(
        q, k, smooth=smooth, granularity=granularity, block_m=block_m, block_n=block_n, c=c, reference=reference
    )
    # Step 2: fp32 softmax arithmetic.
    n_blocks = -(-kv_len // block_n)
    w = torch.where(see, u.abs() + e, 0.0).amax(-1)
    e = e + (2.0**-21 * (w + 1) * (n_blocks + 4))[..., None]
    e_max = torch.where(see, e, 0.0).amax(-1)
    # Step 3: softmax perturbation.
    p = torch.where(see, u * math.log(2), float("-inf")).softmax(-1).nan_to_num(0.0)  # u is base 2
    growth = torch.exp2(torch.where(see, e + e_max[..., None], 0.0))
    p_bar = torch.minimum(growth * p, torch.ones_like(p))
    # Step 4: P·V.
    ep, ev = e_p(p_bar, pv), e_v(v64, pv)
    v_hat = v64.abs() + ev
    out = p @ v64
    bound = ((growth - 1) * p) @ v64.abs() + ep @ v_hat + p_bar @ ev
    mass = (p_bar + ep) @ v_hat
    if pv == "fp16":
        mma_steps = sum(-(-min(block_n, kv_len - s) // 16) for s in range(0, kv_len, block_n))
        bound = bound + 1.01 * -(-block_n // 16) * 2.0**-11 * mass + mma_steps * 2.0**-25
    gamma = 2.0**-22 * (block_n + n_blocks + 8)
    bound = bound + gamma * mass
    # Step 5: the output's own rounding.
    bound = bound + OUT_UNIT[q.dtype] * (out.abs() + bound) + 2.0**-25
    bound = torch.where(see.any(-1)[:, None], bound, 0.0)
    # Step 6: lse = ln Σ_j 2^u_ij + sm_scale · q_i·μ (the shift smoothing took away).
    q64 = q.double()
    lse = torch.where(see, u * math.log(2), float("-inf")).logsumexp(-1) + scale * (q64 @ mu.transpose(-1, -2))[..., 0]
    shift = scale * (q64.abs() @ mu.abs().transpose(-1, -2))[..., 0]  # its fp32 dot product errs by <= d 2^-24
    lse_bound = math.log(2) * e_max + 2 * gamma + 2.0**-20 * (lse.abs().nan_to_num(0.0) + (d + 1) * shift + 1)
    return out, bound, lse, lse_bound


def assert_within(actual, expected, bound, what):
    """|actual - expected| <= bound everywhere; on failure show the first few offenders (llm.c style)."""
    actual = actual.double()
    err = (actual - expected).abs()
    bad = ~(err <= bound)  # NaN counts as bad
    if bad.any():
        lines = [
            f"  at {tuple(i)}: got {actual[tuple(i)]:.6g}, truth {expected[tuple(i)]:.6g}, "
            f"error {err[tuple(i)]:.3g} > bound {bound[tuple(i)]:.3g}"
            for i in bad.nonzero()[:5].tolist()
        ]
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} outside the bound\n" + "\n".join(lines))


def sage_options():
    """Block sizes and smoothing for a sage_attention call."""
    return st.fixed_dictionaries(
        {"block_m": block_sizes(128), "block_n": block_sizes(128), "smooth_k": st.booleans()}
    )


def check_bound(q, k, v, is_causal, granularity, pv, options):
    out, lse = sage_attention(
        q, k, v, is_causal=is_causal, qk_granularity=granularity, pv=pv, return_lse=True, **options
    )
    assert out.dtype == q.dtype
    for reference in ("truth", "codes"):
        ref, bound, ref_lse, lse_bound = error_bound(
            q, k, v, is_causal=is_causal, smooth=options["smooth_k"], granularity=granularity, pv=pv,
            block_m=options["block_m"], block_n=options["block_n"], reference=reference,
        )
        assert_within(out, ref, bound, f"out vs {reference}")
        blind = ref_lse == float("-inf")
        assert bool((lse[blind] == float("-inf")).all())
        assert_within(lse[~blind], ref_lse[~blind], lse_bound[~blind], f"lse vs {reference}")


@pytest.mark.parametrize("pv", PV_MODES)
@pytest.mark.parametrize("granularity", [*GRANULARITIES, None])
@given(
    inp=attention_inputs(**SMALL, k_biases=(0.0, 4.0), q_gains=(1.0, 8.0)),
    options=sage_options(),
)
def test_sage_within_the_derived_bound_of_the_fp64_truth(granularity, pv, inp, options):
    check_bound(inp.q, inp.k, inp.v, inp.is_causal, granularity, pv, options)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@given(
    inp=attention_inputs(**SMALL, dtypes=(torch.float32,)),
    options=sage_options(),
    pv=st.sampled_from(PV_MODES),
    data=st.data(),
)
def test_constant_keys_and_zero_key_blocks_stay_finite_and_accurate(granularity, inp, options, pv, data):
    """A constant K is all zeros after smoothing; without smoothing a zero block has scale 0."""
    k = inp.k.clone()
    if data.draw(st.booleans(), label="constant K"):
        k[:] = k[:, :, :1]
    else:
        bn = options["block_n"]
        block = data.draw(st.integers(0, (inp.shape.kv_len - 1) // bn), label="zero block")
        k[:, :, block * bn : (block + 1) * bn] = 0
    check_bound(inp.q, k, inp.v, inp.is_causal, granularity, pv, options)


@given(kv_len=lengths(), block_n=block_sizes(128), seed=seeds())
def test_fp16_pv_rounds_where_the_tensor_core_does(kv_len, block_n, seed):
    """pv="fp16" bit for bit, on a case simple enough to write out: with K = 0 every P is exactly 1, so
    out = (Σ over blocks, in fp32, of the block's fp16 accumulator) / kv_len, where the accumulator
    adds the exact sum of each 16 fp16-rounded values and rounds to fp16 (one MMA step).

    A bound cannot see an emulation that rounds less often than the kernel; this pins the rounding points.
    """
    v = 300 * randn_like(torch.empty(1, 1, kv_len, 8), seed)
    q, k = torch.ones(1, 1, 1, 8), torch.zeros(1, 1, kv_len, 8)
    v16 = v.to(torch.float16).double()
    total = torch.zeros(8, dtype=torch.float32)
    for start in range(0, kv_len, block_n):
        acc16 = torch.zeros(8, dtype=torch.float16)
        for c in range(start, min(start + block_n, kv_len), 16):
            acc16 = (acc16.double() + v16[0, 0, c : min(c + 16, start + block_n, kv_len)].sum(0)).half()
        total = total + acc16.float()
    expected = total / kv_len
    out = sage_attention(q, k, v, qk_granularity=None, pv="fp16", smooth_k=False, block_n=block_n)
    assert torch.equal(out.flatten(), expected)


@given(inp=attention_inputs(), block_m=block_sizes(), block_n=block_sizes())
def test_sage_without_quantization_is_flash_attention_exactly(inp, block_m, block_n):
    """qk_granularity=None, pv="fp32", smooth_k=False: the same operations in the same order, bit for bit."""
    blocks = dict(block_m=block_m, block_n=block_n)
    out, lse = sage_attention(
        *inp.qkv, is_causal=inp.is_causal, qk_granularity=None, pv="fp32", smooth_k=False, return_lse=True, **blocks
    )
    ref, ref_lse = flash_attention(*inp.qkv, is_causal=inp.is_causal, return_lse=True, **blocks)
    assert out.dtype == inp.q.dtype
    assert torch.equal(out, ref)
    assert torch.equal(lse, ref_lse)


@given(inp=attention_inputs(dtypes=(torch.float64,), k_biases=(0.0, 10.0)), block_n=block_sizes())
def test_smoothing_leaves_exact_attention_unchanged(inp, block_n):
    """softmax(q (K - mean)ᵀ) = softmax(q Kᵀ): the shift q·mean is the same for every key of a row.

    sage's lse must be that of the original logits, so it adds the shift back.
    """
    ref, ref_lse = naive_attention(*inp.qkv, is_causal=inp.is_causal, return_lse=True)
    k_s, k_mean = smooth_k(inp.k)
    torch.testing.assert_close(naive_attention(inp.q, k_s, inp.v, is_causal=inp.is_causal), ref, rtol=1e-10, atol=1e-10)
    out, lse = sage_attention(
        *inp.qkv, is_causal=inp.is_causal, qk_granularity=None, pv="fp32", smooth_k=True, block_n=block_n,
        return_lse=True,
    )
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("pv", PV_MODES)
@given(inp=attention_inputs(**SMALL, causal=True), options=sage_options(), data=st.data())
def test_sage_causal_rows_ignore_later_keys(pv, inp, options, data):
    """Rewrite keys j >= cut; rows that cannot see key ``cut`` must not change by a bit.

    Only where nothing a row uses depends on the rewritten keys: K's mean is taken over all keys,
    and a block, warp, thread or tensor scale over keys the row may not see, so this runs with
    smooth_k=False and per-token scales. V's fp8/int8 scales are per channel over all keys, so
    later values are only negated and permuted, which keeps every channel's max |v|.
    """
    q_len, kv_len = inp.shape.q_len, inp.shape.kv_len
    cut = data.draw(st.integers(0, kv_len - 1), label="cut")
    k2, v2 = inp.k.clone(), inp.v.clone()
    k2[:, :, cut:] = randn_like(k2[:, :, cut:], data.draw(seeds(), label="seed"), scale=3.0)
    order = torch.randperm(kv_len - cut, generator=torch.Generator().manual_seed(data.draw(seeds(), label="perm")))
    v2[:, :, cut:] = -v2[:, :, cut:][:, :, order]
    rows = torch.arange(q_len) + kv_len - q_len < cut
    options = {**options, "smooth_k": False}
    run = dict(is_causal=True, qk_granularity="token", pv=pv, return_lse=True, **options)
    out, lse = sage_attention(*inp.qkv, **run)
    out2, lse2 = sage_attention(inp.q, k2, v2, **run)
    assert torch.equal(out[:, :, rows], out2[:, :, rows])
    assert torch.equal(lse[:, :, rows], lse2[:, :, rows])


@pytest.mark.parametrize("pv", PV_MODES)
def test_bounds_have_teeth(pv):
    """On plain fp16 data (head_dim 64, block granularity, smoothing) the bounds stay well below the
    error of a broken pipeline: the truth bound under |v| ~ 1, the codes bound near the P·V rounding."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 77, 64, generator=gen, dtype=torch.float64).half() for _ in range(3))
    limits = {"truth": 0.7, "codes": {"fp32": 2e-4, "fp16": 3e-3, "fp8": 0.15, "int8": 0.3}[pv]}
    for reference, limit in limits.items():
        _, bound, _, lse_bound = error_bound(
            q, k, v, is_causal=False, smooth=True, granularity="block", pv=pv, block_m=64, block_n=32,
            reference=reference,
        )
        assert float(bound.median()) < limit and float(lse_bound.max()) < 0.3, reference


def test_study_shows_smoothing_fixes_biased_k():
    """The accuracy study runs (tiny sizes), and on K with a shared channel bias smoothing helps
    block granularity for every P·V precision, by a wide margin in relative L1."""
    variant_list = [dict(qk_granularity="block", smooth_k=s, pv=pv) for pv in PV_MODES for s in (False, True)]
    rows = run_study(["k-bias"], variant_list=variant_list, **QUICK)
    assert len(rows) == len(variant_list)
    for pv in PV_MODES:
        off, on = (next(r for r in rows if r["pv"] == pv and r["smooth_k"] == s) for s in (False, True))
        assert on["rel_l1"] < 0.5 * off["rel_l1"] and on["rmse"] < off["rmse"] and on["cosine"] > off["cosine"], pv


def test_study_command_prints_a_table_per_dataset():
    """``python -m sage_ref --quick``: a header line per dataset, then aligned rows of numbers."""
    result = subprocess.run(
        [sys.executable, "-m", "sage_ref", "--quick"], capture_output=True, text=True, check=True, timeout=300
    )
    lines = result.stdout.splitlines()
    for name in DATASETS:
        assert any(line.startswith(f"{name}: ") for line in lines), name
    header = next(line for line in lines if line.startswith("qk_granularity"))
    rows = [line for line in lines if line.split()[:1] and line.split()[0] in (*GRANULARITIES, "none")]
    assert len(rows) == len(DATASETS) * len(list(variants()))
    assert {len(line) for line in rows} == {len(header)}
