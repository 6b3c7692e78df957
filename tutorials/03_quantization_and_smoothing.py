"""03 · Quantization and smoothing: Q·Kᵀ in INT8 without losing the softmax

You will learn:

- symmetric INT8 quantization: one scale per group of tokens, and the error bound it guarantees;
- why K is the hard tensor: a per-channel bias shared by every token sets the scale and drowns the signal;
- why subtracting K's mean over tokens ("smoothing K") is free for the softmax, and how much it buys;
- how SageAttention keeps P·V in fp16 or fp8, and what each choice costs in accuracy.
"""

# %%
import json
from pathlib import Path

import torch

import sage_ref
from sage_ref.study import make_inputs

torch.manual_seed(0)

# %% [markdown]
# ## INT8 quantization
#
# A group of values \(x\) shares one scale \(\delta = \max|x| / 127\); each value is stored as the integer
# \(\hat x = \operatorname{round}(x / \delta) \in [-127, 127]\) and read back as \(\hat x\,\delta\). Rounding to
# the nearest integer bounds the error by half a step: \(|x - \hat x\,\delta| \le \delta / 2\).
# `sage_ref.quantize_int8` does this for `[batch, heads, tokens, head_dim]` tensors, with one scale per token
# group (the *granularity*: `tensor`, `block` of tokens, `token`, ...).

# %%
x = torch.randn(1, 1, 256, 64)
xq = sage_ref.quantize_int8(x, granularity="block", block_size=64)
print("codes", xq.codes.dtype, tuple(xq.codes.shape))
print("scales", tuple(xq.scale.shape), "(one per 64 tokens)")
err = (xq.dequantize() - x).abs()
half_step = xq.token_scale()[..., None] / 2
print(f"max error / half step = {(err / half_step).max().item():.3f}")
assert (err <= half_step * (1 + 1e-6)).all()

# %% [markdown]
# Why bother: \(Q K^\top\) on INT8 codes runs on integer tensor cores at twice the fp16 rate, and the result
# is exact in int32. The scores are recovered by one multiply per tile:
# \(S = (\hat Q \hat K^\top)\,\delta_Q\,\delta_K\).
#
# ## The hard tensor: K
#
# In real models, K carries a large per-channel bias that every token shares. The project's `k-bias` dataset
# models it: \(K = \mathcal{N}(0, 1) + 10\,b\), one \(b\) per channel. The bias sets \(\max|K|\), so the
# quantization step is coarse, while the part that differs between tokens — the only part the softmax sees —
# is small.

# %%
q, k, v = make_inputs("k-bias", batch=1, heads=2, seq_len=256, head_dim=64)
k32 = k.float()
print(f"|channel mean| of K: {k32.mean(dim=-2).abs().mean().item():5.2f}    "
      f"spread across tokens (std): {k32.std(dim=-2).mean().item():4.2f}")

# %% [markdown]
# ## Smoothing K is free for the softmax
#
# Subtract the mean over tokens, \(K_s = K - \bar k\). Every score of query row \(i\) shifts by the same amount:
#
# \[
# q_i \cdot (k_j - \bar k) = q_i \cdot k_j - q_i \cdot \bar k ,
# \]
#
# and the softmax of a row is unchanged by adding a constant to it. So attention with \(K_s\) is attention with
# \(K\), exactly, while \(K_s\) has no bias left to waste the INT8 range on. Checked in fp64:

# %%
k_s, _ = sage_ref.smooth_k(k.double())  # K_s, and the mean k̄ it subtracted
plain = sage_ref.naive_attention(q.double(), k.double(), v.double())
smoothed = sage_ref.naive_attention(q.double(), k_s, v.double())
print(f"max |attn(K_s) - attn(K)| = {(smoothed - plain).abs().max().item():.1e}")
assert torch.allclose(smoothed, plain, rtol=0, atol=1e-12)


# %% [markdown]
# What smoothing buys is a finer INT8 step. The quantization error that matters is measured against what
# differs between tokens, \(\lVert K - \bar k \rVert = \lVert K_s \rVert\), since that is all the softmax sees:

# %%
def quant_err(t):
    t_hat = sage_ref.quantize_int8(t, "block").dequantize()  # INT8 and back
    return (t_hat.double() - t.double()).norm()


signal = k_s.norm()
print(f"INT8 error / ‖K - k̄‖: raw K {quant_err(k) / signal:.4f}, "
      f"smoothed K {quant_err(k_s) / signal:.4f}")

# %% [markdown]
# ## End to end: granularity × smoothing
#
# `sage_ref.sage_attention` runs the whole pipeline with the kernels' rounding points: smooth K, quantize Q and
# K to INT8, scores from integer products, the online softmax of tutorial 02, and P·V in fp16. Scored against
# the fp64 truth with cosine similarity:

# %%
truth = sage_ref.naive_attention(q.double(), k.double(), v.double())
print("granularity   smooth_k off   smooth_k on")
cos = {}
for g in ("tensor", "block", "token"):
    for smooth in (False, True):
        out = sage_ref.sage_attention(q, k, v, qk_granularity=g, smooth_k=smooth)
        cos[g, smooth] = sage_ref.cosine_similarity(out, truth)
    print(f"{g:11s}   {cos[g, False]:12.6f}   {cos[g, True]:11.6f}")
assert all(cos[g, True] > cos[g, False] for g in ("tensor", "block", "token"))
assert cos["block", True] > 0.999

# %% [markdown]
# Without smoothing, even one scale per token leaves a visible error; with it, one scale per block of 64 keys
# (one multiply per tile in the kernel) is enough. That is SageAttention's choice for Q·Kᵀ.
#
# ## P·V: fp16, fp8 or int8?
#
# The second product, \(P V\), multiplies probabilities in \([0, 1]\) by values. SageAttention v1 keeps it in
# fp16 (fp16 tensor cores, rounding inside a key block, fp32 across blocks); SageAttention2 stores \(P \cdot 448\)
# and \(V\) scaled per channel in fp8 e4m3, whose tensor cores run at the INT8 rate on Hopper GPUs (H100, H200).
# The v1 paper's INT8 variant is there for comparison. Each against the fp64 truth:

# %%
for pv in ("fp32", "fp16", "fp8", "int8"):
    out = sage_ref.sage_attention(q, k, v, qk_granularity="block", pv=pv)
    print(f"pv = {pv:4s}: cosine {sage_ref.cosine_similarity(out, truth):.6f}   "
          f"rel L1 {sage_ref.relative_l1(out, truth):.2e}")

# %% [markdown]
# fp16 P·V is as accurate as fp32: the error left is Q·Kᵀ's quantization. fp8's 3 mantissa bits cost the most;
# that is the price of its speed (see below). INT8 does well on this synthetic data; the SageAttention paper kept
# P·V out of INT8 because it lost accuracy on some real models' layers.

# %% [markdown]
# ## Measured on a GPU
#
# The fused kernels (`sageattn`, rungs 3 and 5 of the Triton ladder) against PyTorch's fastest fp16 attention,
# and their accuracy against an fp64 truth on the benchmark's inputs, read from the committed results. Speed is
# in TOPS, tera-operations per second (\(4 B H N^2 D\) / time): an INT8 or fp8 multiply-add counts as two
# operations, as an fp16 one does in TFLOPS.

# %%
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
bench = json.loads((RESULTS / "bench-h200-2026-11-27.json").read_text())
env = bench["environment"]
print(f"{env['card']}, triton {env['triton']}, {env['date']}:")
print("TOPS, 32 heads, head_dim 128, non-causal")
rows = [r for r in bench["rows"] if r["head_dim"] == 128 and not r["causal"]]
tops = {(r["name"], r["n"]): r["tops"] for r in rows}
for n in (8192, 32768):
    base = tops["sdpa-cudnn", n]
    fp16, fp8 = tops["sageattn-fp16", n], tops["sageattn-fp8", n]
    print(f"  N = {n:5d}: SDPA cuDNN {base:3.0f}, "
          f"sageattn fp16 {fp16:3.0f} ({fp16 / base:.2f}×), "
          f"sageattn fp8 {fp8:3.0f} ({fp8 / base:.2f}×)")
for acc in env["accuracy_vs_fp64"]:
    print(f"  {acc['name']:20s} cosine {acc['cos']:.6f}  rel L1 {acc['rel_l1']:.4f}")
