r"""05 · A Triton flash kernel: the online softmax on the tensor cores

You will learn:

- how a Triton kernel is organised: one *program* per tile of query rows, blocks of keys loaded in a loop;
- how the loop of tutorial 02 becomes kernel code: `tl.dot` for \(QK^\top\) and \(PV\), `exp2` for the softmax;
- how to test a kernel without a GPU: Triton's interpreter runs it on the CPU, and the result must stay within
  twice the error of a `sage_ref` emulation that rounds at least where the kernel does;
- what the project's rung 1 measured on an H200.
"""

# %%
import json
import math
import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # Set before Triton is imported: kernels then run on the CPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton
import triton.language as tl

import sage_ref
import sage_fast.triton  # under the interpreter, this fixes two of its bugs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
print("running on", DEVICE, "(Triton interpreter)" if DEVICE == "cpu" else "")

# %% [markdown]
# ## The kernel
#
# A program owns `BLOCK_M` query rows of one (batch · head). It loads its \(Q\) tile once, then walks over the
# keys `BLOCK_N` at a time, exactly as the loop of tutorial 02, in base 2:
#
# \[
# \begin{aligned}
# S_j &= Q K_j^\top \cdot \tfrac{1}{\sqrt d}\log_2 e, & m_{\text{new}} &= \max(m_i, \max S_j), \\
# P_j &= 2^{S_j - m_{\text{new}}}, & \mathrm{acc} &\leftarrow 2^{m_i - m_{\text{new}}}\,\mathrm{acc} + P_j V_j .
# \end{aligned}
# \]
#
# `tl.dot` multiplies fp16 tiles on the tensor cores with fp32 accumulation; \(P_j\) is rounded to fp16 for the
# second product. A tile is loaded from a block of addresses, built the way PyTorch broadcasts: a column of row
# offsets plus a row of column offsets (`offs_m[:, None] * D + offs_d[None, :]`). Masks (`keys < n`) handle the
# last, partial tiles: masked loads read zeros, masked scores are set to \(-\infty\).

# %%
@triton.jit
def flash_kernel(Q, K, V, Out, n, qk_scale,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    bh = tl.program_id(1)                       # which (batch · head)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    base = bh * n * D                           # contiguous [B·H, n, D]
    rows = offs_m[:, None] < n                  # the last tile may be partial
    q_ptrs = Q + base + offs_m[:, None] * D + offs_d[None, :]     # [BLOCK_M, D]
    q = tl.load(q_ptrs, mask=rows, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start in range(0, n, BLOCK_N):
        keys = start + offs_n
        cols = keys[None, :] < n
        k_ptrs = K + base + keys[None, :] * D + offs_d[:, None]   # Kᵀ: [D, BLOCK_N]
        k = tl.load(k_ptrs, mask=cols, other=0.0)
        s = tl.dot(q, k) * qk_scale             # S_j: base-2 logits
        s = tl.where(cols, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)       # rescales what was accumulated
        p = tl.math.exp2(s - m_new[:, None])    # P_j
        l_i = l_i * alpha + tl.sum(p, 1)
        v_ptrs = V + base + keys[:, None] * D + offs_d[None, :]   # [BLOCK_N, D]
        v = tl.load(v_ptrs, mask=keys[:, None] < n, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), v)
        m_i = m_new
    out = acc / l_i[:, None]
    out_ptrs = Out + base + offs_m[:, None] * D + offs_d[None, :]
    tl.store(out_ptrs, out.to(tl.float16), mask=rows)


# %% [markdown]
# On the host, `flash` launches the kernel on a *grid* of programs, one per (query tile, batch · head). A
# kernel receives each tensor as the address of its first element and assumes the layout it was written for,
# here contiguous `[B·H, n, D]`, so the inputs are made contiguous first.

# %%
def flash(q, k, v, block_m=32, block_n=16):
    """q, k, v [B, H, n, D] fp16 (D a power of 2, ≥ 16) -> softmax(Q Kᵀ / √D) V."""
    batch, heads, n, d = q.shape
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q)
    qk_scale = d**-0.5 * math.log2(math.e)      # log2 e folded in
    grid = (triton.cdiv(n, block_m), batch * heads)
    flash_kernel[grid](q, k, v, out, n, qk_scale,
                       BLOCK_M=block_m, BLOCK_N=block_n, D=d)
    return out


# %% [markdown]
# ## The test
#
# Small sizes, an awkward length (\(n = 77\): a partial tile at the end), fp16 inputs. The truth is fp64
# attention on the same inputs. Exact agreement is impossible (P is rounded to fp16), so the bound comes from a
# baseline, as FlashAttention's own tests do: `sage_ref.sage_attention(qk_granularity=None, pv="fp16",
# smooth_k=False)` rounds P to fp16 as the kernel does, and also rounds its P·V accumulator to fp16 every 16 keys
# (SageAttention v1's tensor-core arithmetic, which later rungs use), where this kernel accumulates in fp32. The
# baseline rounds more than the kernel, so the kernel should come out closer to the truth; it may be at most twice
# as far.

# %%
torch.manual_seed(0)
shape = (1, 2, 77, 32)                                  # [batch, heads, n, head_dim]
q, k, v = (torch.randn(shape, dtype=torch.float16, device=DEVICE) for _ in range(3))
out = flash(q, k, v)

truth = sage_ref.naive_attention(q.double(), k.double(), v.double())
emulation = sage_ref.sage_attention(
    q, k, v, qk_granularity=None, pv="fp16", smooth_k=False, block_m=32, block_n=16
)
err_kernel = (out.double() - truth).abs().max().item()
err_emulation = (emulation.double() - truth).abs().max().item()
print(f"max |kernel - fp64| = {err_kernel:.2e}")
print(f"max |sage_ref - fp64| = {err_emulation:.2e}")
assert err_kernel <= 2 * err_emulation

# %% [markdown]
# ## The project's rung 1
#
# `sage_fast/triton/rung1_flash.py` is this kernel grown up: strided inputs (any layout, no copies), grouped-query
# attention, causal masking, the log-sum-exp, and block sizes tuned on the GPU (128 × 64). The ladder's registry
# `sage_fast.triton.RUNGS` pairs it with its `sage_ref` variant, and the test suite holds every rung to the same
# bound as above:

# %%
rung1 = sage_fast.triton.RUNGS[0]
shape = (1, 2, 100, 64)
q, k, v = (torch.randn(shape, dtype=torch.float16, device=DEVICE) for _ in range(3))
truth = sage_ref.naive_attention(q.double(), k.double(), v.double(), is_causal=True)
out = rung1.forward(q, k, v, is_causal=True, sm_scale=None, return_lse=False)
ref = rung1.reference(q, k, v, is_causal=True, sm_scale=None, return_lse=False)
err_rung, err_ref = ((t.double() - truth).abs().max().item() for t in (out, ref))
print(f"{rung1.name}: max |rung - fp64| = {err_rung:.2e}, "
      f"max |reference - fp64| = {err_ref:.2e}")
assert err_rung <= 2 * err_ref

# %% [markdown]
# ## Measured on a GPU
#
# Rung 1 against PyTorch's fused kernels, read from the committed benchmark (TFLOPS = \(4 B H N^2 D\) / time):

# %%
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
bench = json.loads((RESULTS / "bench-h200-2026-11-27.json").read_text())
env = bench["environment"]
print(f"{env['card']}, triton {env['triton']}, {env['date']}:")
print("TFLOPS, N = 8192, 32 heads")
rows = [r for r in bench["rows"] if r["n"] == 8192]
tops = {(r["name"], r["head_dim"], r["causal"]): r["tops"] for r in rows}
columns = [(d, causal) for d in (64, 128) for causal in (False, True)]
labels = [f"hd{d} {'causal' if causal else 'full'}" for d, causal in columns]
print(f"  {'':17s}" + "".join(f"{label:>12s}" for label in labels))
for name in ("rung1-flash-fp16", "sdpa-flash", "sdpa-cudnn"):
    print(f"  {name:17s}" + "".join(f"{tops[name, d, c]:12.0f}" for d, c in columns))

# %% [markdown]
# A plain fp16 flash kernel in thirty lines of Triton runs between PyTorch's two fused backends. The next rungs
# replace \(QK^\top\) by an INT8 product and fuse the quantization into the kernel's neighbours.
