"""01 · Naive attention: the formula, in three lines of PyTorch

You will learn:

- what scaled dot-product attention computes, and the shapes every later step uses;
- how to check an implementation against an fp64 truth (the test every kernel here passes);
- why the naive version cannot scale: the score matrix grows with the square of the sequence.
"""

# %%
import json
import math
from pathlib import Path

import torch

import sage_ref

torch.manual_seed(0)

# %% [markdown]
# ## The formula
#
# Each query row \(q_i\) scores every key \(k_j\), the scores become weights with a softmax, and the
# output is the weighted sum of the values:
#
# \[
# S = \frac{Q K^\top}{\sqrt{d}}, \qquad P = \operatorname{softmax}_{\text{row}}(S), \qquad O = P V .
# \]
#
# Shapes are `[batch, heads, seq, head_dim]` throughout (the "HND" layout). Subtracting the row
# maximum before `exp` changes nothing mathematically (it cancels in the ratio) and keeps `exp` from overflowing.

# %%
def attention(q, k, v):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # S = Q Kᵀ / √d  [B,H,N,N]
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))        # exp(S - rowmax)
    return (p / p.sum(dim=-1, keepdim=True)) @ v           # softmax(S) V   [B,H,N,D]


q, k, v = (torch.randn(1, 2, 77, 64, dtype=torch.float16) for _ in range(3))
out = attention(q.float(), k.float(), v.float())
print(out.shape, out.dtype)

# %% [markdown]
# ## The check: an fp64 truth
#
# The same fp16 inputs, computed in fp64, are the truth every implementation in this project is measured
# against (`sage_ref.naive_attention`). Our fp32 version must agree to fp32 rounding, and so must PyTorch's own
# `scaled_dot_product_attention`.

# %%
truth = sage_ref.naive_attention(q.double(), k.double(), v.double())
sdpa = torch.nn.functional.scaled_dot_product_attention(
    q.float(), k.float(), v.float()
)

err_ours = (out.double() - truth).abs().max().item()
err_sdpa = (sdpa.double() - truth).abs().max().item()
print(f"max |ours - fp64| = {err_ours:.1e}   max |SDPA - fp64| = {err_sdpa:.1e}")
assert err_ours < 1e-5 and err_sdpa < 1e-5

# %% [markdown]
# The three accuracy metrics the project reports (see [Concepts](../concepts.md#metrics)): cosine similarity
# (1 is perfect), relative L1 and RMSE (0 is perfect).

# %%
print(f"cosine {sage_ref.cosine_similarity(out, truth):.9f}  "
      f"rel L1 {sage_ref.relative_l1(out, truth):.2e}  "
      f"RMSE {sage_ref.rmse(out, truth):.2e}")

# %% [markdown]
# ## Causal attention
#
# A decoder's query \(i\) may only see keys \(j \le i\): the masked scores are set to \(-\infty\) before the
# softmax. With a KV cache the queries are the *last* `q_len` positions, so the mask is aligned to the bottom
# right: query \(i\) sees key \(j\) iff \(j \le i + N_{kv} - N_q\). For 3 new queries over 5 keys (row \(i\)
# marks the keys query \(i\) sees):

# %%
print(sage_ref.causal_visible(3, 5, "cpu").int())

# %% [markdown]
# Masking the scores with it and taking the softmax gives what `sage_ref.naive_attention(..., is_causal=True)`
# computes:

# %%
s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(64)
s = s.masked_fill(~sage_ref.causal_visible(77, 77, "cpu"), float("-inf"))
causal = torch.softmax(s, dim=-1) @ v.double()
expected = sage_ref.naive_attention(q.double(), k.double(), v.double(), is_causal=True)
err = (causal - expected).abs().max().item()
print(f"max |masked softmax - sage_ref causal| = {err:.1e}")
assert torch.allclose(causal, expected)

# %% [markdown]
# ## Why this does not scale
#
# \(S\) has \(N \times N\) entries per head. Computing it costs \(N^2 d\) multiply-adds, \(2 N^2 d\) FLOPs per head, and so does
# \(P V\): \(4 N^2 d\) FLOPs in all, quadratic in the sequence length, while the rest of a transformer layer is
# linear in it. Storing \(S\) in fp16 is worse still:

# %%
for n in (1024, 8192, 32768):
    gib = 32 * n * n * 2 / 2**30  # 32 heads × N² scores × 2 bytes
    print(f"N = {n:5d}: S for 32 heads takes {gib:6.2f} GiB in fp16")

# %% [markdown]
# At \(N = 32768\) that is 64 GiB for one layer of one sequence: no GPU keeps it, and even where it fits, writing
# and re-reading it costs far more time than the arithmetic. Fused kernels (tutorial 02) never store \(S\).
#
# ## Measured on a GPU
#
# The project's benchmark times PyTorch's fused attention (cuDNN backend) on an H200, with 16k tokens per call
# (the batch shrinks as \(N\) grows; \(N = 32768\) is one sequence of 32k). The numbers are read from the committed
# results, not typed in:

# %%
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
bench = json.loads((RESULTS / "bench-h200-2026-11-27.json").read_text())
env = bench["environment"]
print(f"{env['card']}, torch {env['torch']}, {env['date']}:")
print("SDPA cuDNN, 32 heads, head_dim 128, non-causal")
for row in bench["rows"]:
    if row["name"] == "sdpa-cudnn" and row["head_dim"] == 128 and not row["causal"]:
        print(f"  N = {row['n']:5d}  batch {row['batch']:2d}  "
              f"{row['ms']:7.3f} ms  {row['tops']:4.0f} TFLOPS")

# %% [markdown]
# The FLOP rate is flat from \(N = 1024\) to \(32768\) while the work per token grows with \(N\): a fused kernel
# runs at the speed of the *tensor cores* (the GPU's matrix-multiply units), and the only way to go faster is
# cheaper arithmetic. That is what 8-bit attention buys (tutorial 03).
