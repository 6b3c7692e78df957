r"""02 · Tiling and the online softmax: attention without the N×N matrix

You will learn:

- how FlashAttention computes exact attention one block of keys at a time, keeping three small running
  quantities per query row instead of a row of \(N\) scores;
- why the kernels use \(2^x\) instead of \(e^x\), and how \(\log_2 e\) is folded into the scale for free;
- how to prove a tiled implementation right: it must match the fp64 truth to rounding, for any block size.
"""

# %%
import json
import math
from pathlib import Path

import torch

import sage_ref

torch.manual_seed(0)

# %% [markdown]
# ## The idea
#
# A GPU runs attention as many small *programs* at once, each with a little fast on-chip memory: room for a
# tile of query rows and a block of keys, not for a row of \(N\) scores. A program reads the keys in blocks of
# `block_n`, so it cannot know a row's maximum before it has seen every block. Instead it keeps three running
# quantities per query row: the maximum so far \(m_i\), the sum so far \(\ell_i\) of \(e^{s - m_i}\), and the
# unnormalised output \(\mathrm{acc}\). When block \(j\) raises the maximum, everything accumulated so far is
# rescaled by \(\alpha = e^{m_{\text{old}} - m_{\text{new}}}\):
#
# \[
# \begin{aligned}
# m_{\text{new}} &= \max(m_i, \max_j S_j), & P_j &= e^{S_j - m_{\text{new}}}, \\
# \ell_i &\leftarrow \alpha\,\ell_i + \textstyle\sum P_j, & \mathrm{acc} &\leftarrow \alpha\,\mathrm{acc} + P_j V_j .
# \end{aligned}
# \]
#
# At the end, \(O = \mathrm{acc} / \ell_i\). Every quantity but the current block is a vector per row.

# %%
def online_attention(q, k, v, block_n):
    scale = 1 / math.sqrt(q.shape[-1])
    m = torch.full(q.shape[:-1], float("-inf"), dtype=q.dtype)  # running max  m_i
    l = torch.zeros(q.shape[:-1], dtype=q.dtype)                 # running sum  ℓ_i
    acc = torch.zeros_like(q)                                    # unnormalised O
    for start in range(0, k.shape[-2], block_n):
        k_j = k[..., start:start + block_n, :]
        v_j = v[..., start:start + block_n, :]
        s = q @ k_j.transpose(-1, -2) * scale                   # S_j = Q K_jᵀ / √d
        m_new = torch.maximum(m, s.amax(dim=-1))
        alpha = torch.exp(m - m_new)                            # α = e^(m_old - m_new)
        p = torch.exp(s - m_new[..., None])                     # P_j = e^(S_j - m_new)
        l = alpha * l + p.sum(dim=-1)
        acc = alpha[..., None] * acc + p @ v_j
        m = m_new
    return acc / l[..., None]


# %% [markdown]
# ## The check
#
# In fp64 the tiled result must equal the materialised softmax to rounding, whatever the block size, including
# blocks that do not divide the 300 keys and a block of 1 key:

# %%
q, k, v = (torch.randn(1, 2, 300, 64, dtype=torch.float64) for _ in range(3))
truth = sage_ref.naive_attention(q, k, v)

for block_n in (1, 16, 64, 128, 300):
    err = (online_attention(q, k, v, block_n) - truth).abs().max().item()
    print(f"block_n = {block_n:3d}: max |tiled - naive| = {err:.1e}")
    assert err < 1e-12

# %% [markdown]
# ## exp2 instead of exp
#
# A GPU evaluates \(2^x\) in one instruction (`ex2`); \(e^x\) costs a multiply more. Since
# \(e^{x} = 2^{x \log_2 e}\), the kernels fold \(\log_2 e\) into the softmax scale once, work with base-2 logits
# \(S' = Q K^\top \cdot \tfrac{1}{\sqrt d} \log_2 e\), and use `exp2` everywhere. The softmax is unchanged:

# %%
s = q @ k.transpose(-1, -2) / math.sqrt(64)
s2 = s * math.log2(math.e)
p_e = torch.softmax(s, dim=-1)
p_2 = torch.exp2(s2 - s2.amax(-1, keepdim=True))
p_2 = p_2 / p_2.sum(-1, keepdim=True)
print(f"max |softmax_e - softmax_2| = {(p_e - p_2).abs().max().item():.1e}")
assert torch.allclose(p_e, p_2, rtol=0, atol=1e-14)

# %% [markdown]
# ## The project's reference
#
# `sage_ref.flash_attention` is the same loop with `exp2`, fp32 arithmetic (what a kernel's registers hold) and
# the kernels' block sizes; `sage_ref.online_softmax` is the loop itself, with the product \(P_j V_j\) pluggable,
# which is where the quantized variants of tutorial 03 differ. Fed fp16 inputs, it must stay within fp32
# rounding of the fp64 truth:

# %%
q16, k16, v16 = (t.to(torch.float16) for t in (q, k, v))
truth16 = sage_ref.naive_attention(q16.double(), k16.double(), v16.double())
flash = sage_ref.flash_attention(q16.float(), k16.float(), v16.float(), block_n=64)
err = (flash.double() - truth16).abs().max().item()
cos = sage_ref.cosine_similarity(flash, truth16)
print(f"flash_attention (fp32, block_n=64): cosine {cos:.9f}, max abs err {err:.1e}")
assert err < 1e-5

# %% [markdown]
# ## Memory: what the tiles buy
#
# The loop keeps, per query row, \(m_i\), \(\ell_i\) and a row of \(\mathrm{acc}\): \(O(N d)\) memory in all,
# never the \(N \times N\) matrix. The arithmetic is the same \(4 N^2 d\) FLOPs. A fused kernel (rung 1 of the
# Triton ladder, `sage_fast/triton/rung1_flash.py`) runs this loop with Q·Kᵀ and P·V on the tensor cores.
#
# ## Measured on a GPU
#
# Rung 1 against PyTorch's own fused kernels, read from the committed benchmark:

# %%
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
bench = json.loads((RESULTS / "bench-h200-2026-11-27.json").read_text())
env = bench["environment"]
print(f"{env['card']}, triton {env['triton']}, {env['date']}:")
print("TFLOPS, 32 heads, head_dim 128, non-causal")
names = {"rung1-flash-fp16": "rung 1 (Triton)",
         "sdpa-flash": "SDPA flash",
         "sdpa-cudnn": "SDPA cuDNN"}
rows = [r for r in bench["rows"] if r["head_dim"] == 128 and not r["causal"]]
tops = {(r["name"], r["n"]): r["tops"] for r in rows}
print("      N  " + "".join(f"{label:>17}" for label in names.values()))
for n in (1024, 8192, 32768):
    print(f"  {n:5d}  " + "".join(f"{tops[name, n]:17.0f}" for name in names))
