r"""07 · Fused quantization and FP8 P·V: SageAttention2 on the GPU

You will learn:

- how to quantize inside a Triton kernel, one program per tile, with codes bit-identical to `sage_ref`'s;
- why P is scaled by 448 before it is rounded to fp8 e4m3, and what fp8 costs against fp16 and int8;
- how V gets one fp8 scale per channel, undone by a single multiply at the end;
- where the time of the project's fastest path (rung 4, `sageattn(pv="fp8")`) goes, measured on an H200.
"""

# %%
import json
import math
import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # set before Triton is imported

import triton
import triton.language as tl

import sage_ref
import sage_fast.triton  # under the interpreter, this fixes two of its bugs
from sage_fast.triton import quant

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# %% [markdown]
# ## Quantizing in a kernel
#
# Rung 2 quantized Q and K with several PyTorch operations, each a full pass over memory. A Triton program can
# load a tile of `BLOCK` rows once, find its maximum, and write the codes and the scale:
#
# \[
# \delta = \frac{\max|x|}{127}, \qquad \hat x = \operatorname{round}\!\Big(x \cdot \frac{127}{\max|x|}\Big)
# \quad\text{(halves away from zero)} .
# \]
#
# One division per tile and a multiply per element: a GPU's IEEE division costs about twenty instructions.
# `div_rn` is the correctly rounded division, so the codes match `sage_ref` bit for bit.

# %%
@triton.jit
def quantize_rows_kernel(X, Codes, Scale, n, BLOCK: tl.constexpr, D: tl.constexpr):
    tile = tl.program_id(0)
    offs = tile * BLOCK + tl.arange(0, BLOCK)
    rows = offs[:, None] < n
    ptrs = offs[:, None] * D + tl.arange(0, D)[None, :]
    x = tl.load(X + ptrs, mask=rows, other=0.0)
    amax = tl.max(tl.max(tl.abs(x), 1), 0)
    safe = tl.where(amax == 0.0, 1.0, amax)            # an all-zero tile gets codes 0
    inv = tl.where(amax == 0.0, 0.0, tl.math.div_rn(127.0, safe))
    xs = x * inv
    # The cast truncates, so adding ±0.5 first rounds halves away from zero.
    codes = (xs + tl.where(xs >= 0, 0.5, -0.5)).to(tl.int8)
    tl.store(Codes + ptrs, codes, mask=rows)
    tl.store(Scale + tile, tl.math.div_rn(amax, 127.0))


n, d, block = 100, 32, 32
x = torch.randn(n, d, device=DEVICE)
codes = torch.empty(n, d, dtype=torch.int8, device=DEVICE)
scale = torch.empty(triton.cdiv(n, block), device=DEVICE)
quantize_rows_kernel[(triton.cdiv(n, block),)](x, codes, scale, n, BLOCK=block, D=d)

expected = sage_ref.quantize_int8(x[None, None], "block", block_size=block)
assert torch.equal(codes, expected.codes[0, 0])
assert torch.equal(scale, expected.scale[0, 0])
print(f"{n} rows, {scale.numel()} tiles: codes and scales bit-identical to sage_ref's")

# %% [markdown]
# The project's `sage_fast.triton.quant` does the same for Q (with \(\tfrac{1}{\sqrt d}\log_2 e\) folded in),
# and for K in two launches: one sums K over tokens for the smoothing mean, one subtracts it and quantizes.
# Its Q codes against `sage_ref`'s:

# %%
q = torch.randn(1, 2, 100, 64, dtype=torch.float16, device=DEVICE)
sm_scale = 64**-0.5
q_int8, q_scale, _ = quant.quantize_q(
    q, sm_scale=sm_scale, block_m=64, head_dim_padded=64
)
q_scaled = q.float() * (sm_scale * math.log2(math.e))
q_hat = sage_ref.quantize_int8(q_scaled, "block", 64)
assert torch.equal(q_int8, q_hat.codes) and torch.equal(q_scale, q_hat.scale)
print("quant.quantize_q == sage_ref.quantize_int8: bit-identical")

# %% [markdown]
# ## P in fp8: why times 448
#
# e4m3 has 3 mantissa bits and represents magnitudes up to 448; its smallest normal number is \(2^{-6}\).
# Probabilities lie in \([0, 1]\), the bottom of that range, where e4m3 is subnormal and coarse. Multiplying by
# 448 first uses the whole range; the factor \(1/448\) is folded into the final scale. INT8 (\(P \cdot 127\)) has
# uniform steps of \(1/127\) instead: finer for large probabilities, useless for small ones.

# %%
p = torch.tensor([0.9, 0.3, 0.05, 0.01, 0.002, 0.0005])
print("   P         e4m3(P)   e4m3(P·448)/448   round(P·127)/127")
for value in p.tolist():
    t = torch.tensor([value])
    raw = t.to(torch.float8_e4m3fn).float().item()
    fp8 = sage_ref.decode_p(*sage_ref.encode_p(t, "fp8")).item()
    int8 = sage_ref.decode_p(*sage_ref.encode_p(t, "int8")).item()
    print(f"  {value:<9g} {raw:<9.4g} {fp8:<17.4g} {int8:.4g}")

# %% [markdown]
# ## V per channel, and the whole product
#
# V has no softmax to absorb a shift, but its channels differ in size, so each channel gets its own scale
# \(s_c = \max_n |V_{nc}| / 448\). Per key block the fp8 tensor cores compute
# \(\mathrm{e4m3}(448 P_j)\cdot \mathrm{e4m3}(V_j / s)\) into a fresh fp32 tile, which is added into an fp32
# total (the instruction's own accumulator keeps fewer bits than fp32); at the end
#
# \[
# O = \frac{\mathrm{acc}}{\ell} \cdot \frac{s}{448} .
# \]
#
# Rung 4 is this, with rung 3's fused quantization. Under the interpreter at a small size, against its
# `sage_ref` twin and an fp64 truth:

# %%
rung4 = sage_fast.triton.RUNGS[3]
shape = (1, 2, 150, 64)
torch.manual_seed(0)
q, k, v = (torch.randn(shape, dtype=torch.float16, device=DEVICE) for _ in range(3))
truth = sage_ref.naive_attention(q.double(), k.double(), v.double())
kwargs = dict(is_causal=False, sm_scale=None, return_lse=False, smooth_k=True)
out, ref = rung4.forward(q, k, v, **kwargs), rung4.reference(q, k, v, **kwargs)
err_rung, err_ref = ((t.double() - truth).abs().max().item() for t in (out, ref))
print(f"{rung4.name}: max |rung - fp64| = {err_rung:.2e}, "
      f"max |reference - fp64| = {err_ref:.2e}")
assert err_rung <= 2 * err_ref

# %% [markdown]
# What fp8 P·V costs: the same inputs through the fp16 P·V path (same Q·Kᵀ quantization), both against the
# fp64 truth:

# %%
fp16_pv = sage_ref.sage_attention(q, k, v, pv="fp16", block_m=64, block_n=128)
print(f"rel L1 vs fp64: fp8 P·V (rung 4) {sage_ref.relative_l1(out, truth):.4f}, "
      f"fp16 P·V {sage_ref.relative_l1(fp16_pv, truth):.4f}")

# %% [markdown]
# ## Measured on a GPU
#
# Where a call's time goes (rung 4, head_dim 128; each part timed alone; the copy is a reference point:
# one read and write of q, k and v), read from the committed results:

# %%
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
breakdown = json.loads((RESULTS / "breakdown-h200-2026-11-26.json").read_text())
env = breakdown["environment"]
print(f"{env['card']}, triton {env['triton']}, {env['date']}:")
print("ms per part, B·N = 16k, 32 heads")
parts = list(dict.fromkeys(r["part"] for r in breakdown["rows"]))
ms = {(r["part"], r["n"]): r["ms"] for r in breakdown["rows"]}
print(f"  {'':20s} {'N = 1024':>9} {'N = 8192':>9}")
for part in parts:
    print(f"  {part:20s} {ms[part, 1024]:9.3f} {ms[part, 8192]:9.3f}")

# %% [markdown]
# And the whole ladder against PyTorch's fastest attention and PyPI `sageattention` 1.0.6 (TOPS as in
# tutorial 03):

# %%
bench = json.loads((RESULTS / "bench-h200-2026-11-26.json").read_text())
rows = [r for r in bench["rows"] if r["head_dim"] == 128 and not r["causal"]]
tops = {(r["name"], r["n"]): r["tops"] for r in rows}
names = {"sdpa-cudnn": "SDPA cuDNN", "sageattention-1.0.6": "1.0.6",
         "rung3-fused-quant": "rung 3", "rung4-fp8-pv": "rung 4",
         "sageattn-fp8": "sageattn fp8"}
print("TOPS, head_dim 128, non-causal")
print("      N  " + "".join(f"{label:>14}" for label in names.values()))
for n in (1024, 8192, 32768):
    print(f"  {n:5d}  " + "".join(f"{tops[name, n]:14.0f}" for name in names))

# %% [markdown]
# At short sequences the quantization launches are a large share of the call and SDPA wins; from
# \(N \approx 8\text{k}\) on, fp8 P·V makes the whole call faster than PyTorch's cuDNN attention, at the accuracy
# cost measured above; the fp16 path, `sageattn(pv="fp16")`, is the accurate one.
