r"""06 · INT8 Q·Kᵀ: the first SageAttention kernel

You will learn:

- how the flash kernel of tutorial 05 changes when Q and K arrive as INT8 codes with one scale per tile;
- why the integer product is exact and dequantization costs one multiply per score;
- why the project's rung 2 is *slower* than rung 1 as a whole call, though its kernel is faster: the
  quantization passes around it, which rung 3 fuses.
"""

# %%
import json
import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # set before Triton is imported

import triton
import triton.language as tl

import sage_ref
import sage_fast.triton  # under the interpreter, this fixes two of its bugs
from sage_ref.sage import quantize_qk
from sage_ref.study import make_inputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)

# %% [markdown]
# ## Scores from integers
#
# Q (with \(\tfrac{1}{\sqrt d}\log_2 e\) folded in) and the smoothed K are quantized on the host, one scale per
# tile of `BLOCK_M` queries and `BLOCK_N` keys (tutorial 03). For a query tile \(i\) and a key tile \(j\) every
# score shares the same two scales, so
#
# \[
# S_{ij} = \big(\hat Q_i \hat K_j^\top\big)\,\delta_{Q,i}\,\delta_{K,j},
# \]
#
# where \(\hat Q_i \hat K_j^\top\) is an int8 × int8 product summed in int32: exact, since
# \(d \cdot 127^2 < 2^{31}\). The tensor cores do it at twice the fp16 rate; the dequantization is one fp32
# multiply per score, and the rest of the loop is tutorial 05's.

# %%
@triton.jit
def int8_flash_kernel(Qc, Qs, Kc, Ks, V, Out, n,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    bh = tl.program_id(1)
    tile_m = tl.program_id(0)
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    base = bh * n * D
    rows = offs_m[:, None] < n
    q_ptrs = Qc + base + offs_m[:, None] * D + offs_d[None, :]
    q = tl.load(q_ptrs, mask=rows, other=0)                       # int8 codes
    q_scale = tl.load(Qs + bh * tl.cdiv(n, BLOCK_M) + tile_m)     # δ_Q,i

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start in range(0, n, BLOCK_N):
        keys = start + offs_n
        cols = keys[None, :] < n
        k_ptrs = Kc + base + keys[None, :] * D + offs_d[:, None]
        k = tl.load(k_ptrs, mask=cols, other=0)
        k_scale = tl.load(Ks + bh * tl.cdiv(n, BLOCK_N) + start // BLOCK_N)  # δ_K,j
        s_int = tl.dot(q, k)                                      # exact, int32
        s = s_int.to(tl.float32) * (q_scale * k_scale)            # S_ij
        s = tl.where(cols, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_ptrs = V + base + keys[:, None] * D + offs_d[None, :]
        v = tl.load(v_ptrs, mask=keys[:, None] < n, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), v)
        m_i = m_new
    out_ptrs = Out + base + offs_m[:, None] * D + offs_d[None, :]
    tl.store(out_ptrs, (acc / l_i[:, None]).to(tl.float16), mask=rows)


# %% [markdown]
# The host side smooths K, quantizes Q and K with `sage_ref`'s quantizer (codes and one scale per tile) and
# launches one program per (query tile, batch · head):

# %%
def int8_flash(q, k, v, block_m=32, block_n=16):
    """q, k, v [B, H, n, D] fp16 -> SageAttention v1 (smoothed K, INT8 Q·Kᵀ)."""
    batch, heads, n, d = q.shape
    k_smooth, _ = sage_ref.smooth_k(k)        # free for the softmax (tutorial 03)
    q_hat, k_hat = quantize_qk(q, k_smooth, sm_scale=d**-0.5, qk_granularity="block",
                               block_m=block_m, block_n=block_n)
    out = torch.empty_like(q)
    grid = (triton.cdiv(n, block_m), batch * heads)
    int8_flash_kernel[grid](
        q_hat.codes.contiguous(), q_hat.scale.contiguous(),
        k_hat.codes.contiguous(), k_hat.scale.contiguous(),
        v.contiguous(), out, n, BLOCK_M=block_m, BLOCK_N=block_n, D=d,
    )
    return out


# %% [markdown]
# ## The test
#
# The `k-bias` data of tutorial 03 (K with a large per-channel offset), an awkward length, fp16. The
# reference is `sage_ref.sage_attention` with the same blocks; it rounds P·V in an fp16 accumulator where this
# kernel accumulates in fp32, so the kernel may only be closer to the truth. Bound: twice the reference's error.

# %%
inputs = make_inputs("k-bias", batch=1, heads=2, seq_len=77, head_dim=32)
q, k, v = (t.to(DEVICE) for t in inputs)
out = int8_flash(q, k, v)
truth = sage_ref.naive_attention(q.double(), k.double(), v.double())
ref = sage_ref.sage_attention(
    q, k, v, qk_granularity="block", pv="fp16", block_m=32, block_n=16
)
err_kernel = (out.double() - truth).abs().max().item()
err_ref = (ref.double() - truth).abs().max().item()
print(f"max |INT8 kernel - fp64| = {err_kernel:.2e}")
print(f"max |sage_ref    - fp64| = {err_ref:.2e}")
print(f"cosine vs fp64: {sage_ref.cosine_similarity(out, truth):.6f}")
assert err_kernel <= 2 * err_ref

# %% [markdown]
# ## The project's rung 2
#
# `sage_fast/triton/rung2_int8_qk.py` is this kernel with strided inputs, GQA, causal masks, the
# log-sum-exp and tiles of 64 queries × 128 keys. Its P·V rounds in fp16 inside a key tile as SageAttention v1
# does, and its `sage_ref` twin rounds at the same points:

# %%
rung2 = sage_fast.triton.RUNGS[1]
shape = (1, 2, 100, 64)
q, k, v = (torch.randn(shape, dtype=torch.float16, device=DEVICE) for _ in range(3))
truth = sage_ref.naive_attention(q.double(), k.double(), v.double(), is_causal=True)
kwargs = dict(is_causal=True, sm_scale=None, return_lse=False, smooth_k=True)
out, ref = rung2.forward(q, k, v, **kwargs), rung2.reference(q, k, v, **kwargs)
err_rung, err_ref = ((t.double() - truth).abs().max().item() for t in (out, ref))
print(f"{rung2.name}: max |rung - fp64| = {err_rung:.2e}, "
      f"max |reference - fp64| = {err_ref:.2e}")
assert err_rung <= 2 * err_ref

# %% [markdown]
# ## Measured on a GPU
#
# The kernel alone (on pre-quantized inputs) against rung 1 and against rung 2's whole call, which quantizes Q
# and K with separate PyTorch operations first, read from the committed benchmark (TOPS as in tutorial 03):

# %%
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
bench = json.loads((RESULTS / "bench-h200-2026-11-27.json").read_text())
env = bench["environment"]
print(f"{env['card']}, triton {env['triton']}, {env['date']}:")
print("TOPS, head_dim 128, non-causal")
rows = [r for r in bench["rows"] if r["head_dim"] == 128 and not r["causal"]]
tops = {(r["name"], r["n"]): r["tops"] for r in rows}
names = {
    "rung1-flash-fp16": "rung 1 (fp16)",
    "kernel-only-fp16": "INT8 kernel alone",
    "rung2-int8-qk": "rung 2 (call)",
    "rung3-fused-quant": "rung 3 (fused)",
}
print("      N  " + "".join(f"{label:>19}" for label in names.values()))
for n in (1024, 8192, 32768):
    print(f"  {n:5d}  " + "".join(f"{tops[name, n]:19.0f}" for name in names))

# %% [markdown]
# INT8 makes the kernel faster than fp16 FlashAttention, but rung 2's host-side quantization reads and writes Q
# and K several times, and the whole call is slower than rung 1 until \(N\) is large enough for the quadratic
# kernel to dominate. Rung 3 quantizes in one fused Triton pass per tensor and keeps most of the kernel's gain.
