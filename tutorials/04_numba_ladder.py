r"""04 · The Numba ladder: the GPU's execution model, one rung at a time

You will learn:

- how a CUDA kernel is organised: a *grid* of *blocks*, each block a group of *threads* that share fast
  *shared memory* and meet at *barriers* (`cuda.syncthreads()`);
- how the project's Numba ladder (`sage_fast/numba/`) climbs from one thread per score to a tiled INT8
  SageAttention kernel, and what each rung changes: fusion, data reuse through shared memory, 8-bit
  arithmetic, register tiles, and a CUDA C function (dp4a) linked into a Numba kernel;
- how to run CUDA kernels without a GPU: Numba's simulator runs each CUDA thread as a Python thread, and every
  rung must stay within twice the error of the `sage_ref` emulation that rounds at the same points;
- what each rung measured on an H200.

Numba writes kernels in plain Python with nothing hidden: every index, every copy into shared memory and every
barrier is in the code. It has no tensor-core API (and reaches dp4a only through linked CUDA C), so this ladder
teaches the algorithm and the memory hierarchy on the CUDA cores; the tensor-core story is tutorial 05's Triton.
"""

# %%
import inspect
import json
import os
from pathlib import Path

import torch

# Numba reads this switch once, when it is first imported, and then decides for
# good whether `numba.cuda` compiles for a GPU or simulates one: so it is set before
# anything imports numba (sage_fast.numba does). setdefault leaves a caller's choice
# alone (the test suite sets it too).
if not torch.cuda.is_available():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import sage_fast.numba
import sage_ref
from sage_fast.numba import (
    RUNGS,
    rung1_naive,
    rung2_online_row,
    rung3_shared_tiles,
    rung4_sage_int8,
    rung5_register_tiles,
    rung6_sgemm_dp4a,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
print("running on", DEVICE, "(Numba's CUDA simulator)" if DEVICE == "cpu" else "")
print("rungs:", *(rung.name for rung in RUNGS), sep="\n  ")


# %% [markdown]
# The kernels live in `sage_fast/numba/`; this page prints the lines of each that the text is about. Their
# source is 120 characters wide, wider than this page, so `show` (from `tutorials/listing.py`, which
# tutorial 07 uses too) reflows what it prints: a trailing comment moves onto its own line above its code,
# and a line of code still too long breaks inside its brackets, where Python lets a statement go on.

# %%
from listing import show


def excerpt(obj, first, last):
    """Show obj's source from the line with `first` to the next line with `last`."""
    lines = inspect.getsource(obj).splitlines()
    jit = next((line for line in lines if "@cuda.jit" in line), "")
    # the kernel body's indentation becomes column 0
    body = len(jit) - len(jit.lstrip()) + 4
    start = next(n for n, line in enumerate(lines) if first in line)
    stop = next(n for n, line in enumerate(lines) if n >= start and last in line)
    show("\n".join(line[body:] for line in lines[start : stop + 1]))


# %% [markdown]
# ## The test every rung takes
#
# Tiny sizes (the simulator runs one Python thread per CUDA thread): two heads, 40 queries and keys, head_dim
# 16, fp16 inputs, a causal mask, and a channel bias on K (the thing smoothing removes in rungs 4-6). The
# truth is fp64 attention of the very inputs. Each rung in `RUNGS` names the `sage_ref` variant it implements
# (`rung.reference`): `flash_attention` (exact attention in fp32) for rungs 1–3, `sage_attention` with INT8
# Q·Kᵀ and fp16 P·V for rungs 4–6. The rung may be at most twice as far from the truth as its reference.

# %%
torch.manual_seed(0)
shape = (1, 2, 40, 16)  # [batch, heads, n, head_dim]
q, k, v = (torch.randn(shape, dtype=torch.float16, device=DEVICE) for _ in range(3))
k = k + 3.0  # a bias every token of K shares
truth = sage_ref.naive_attention(q.double(), k.double(), v.double(), is_causal=True)


def check(rung):
    out = rung.forward(q, k, v, is_causal=True)
    ref = rung.reference(q, k, v, is_causal=True)
    err_rung, err_ref = (
        (t.double() - truth).abs().max().item() for t in (out, ref)
    )
    print(f"{rung.name}: max |rung - fp64| = {err_rung:.2e}, "
          f"max |reference - fp64| = {err_ref:.2e}")
    assert err_rung <= 2 * err_ref


# %% [markdown]
# ## Rung 1: one thread per score, three launches
#
# A launch `kernel[grid, block](args)` starts `grid` blocks of `block` threads each; every thread runs the same
# function and finds out which piece of work it owns from its coordinates: `cuda.grid(3)` is
# `blockIdx * blockDim + threadIdx` along x, y, z. Rung 1 is the textbook formula in three launches: 16 × 16
# threads per block, one thread per score \(S_{ij} = q_i \cdot k_j\) written to global memory; then one thread per
# row for the softmax; then one thread per output element for \(PV\). A grid is rounded up to whole blocks, so
# threads past the end return at once:

# %%
show(inspect.getsource(rung1_naive.scores_kernel))
excerpt(rung1_naive.forward, "scores_kernel[", "pv_kernel[")

# %% [markdown]
# Each of the \(N^2\) threads reads a whole \(q\) row and \(k\) row from global memory, and the \(N \times N\) score
# matrix is written once and read twice: the rung is bound by memory traffic.

# %%
check(RUNGS[0])

# %% [markdown]
# ## Rung 2: one thread per query row, the online softmax
#
# The three launches fuse into one. A thread owns a query row and walks over every key once with the online
# softmax of tutorial 02 (in base 2: \(\log_2 e\) folded into the scale, one `exp2` per score). Its accumulator
# lives in `cuda.local.array`, memory private to the thread (registers when the compiler can). The score matrix
# never exists; but each thread still streams every key and value row from global memory by itself.

# %%
excerpt(rung2_online_row.online_row_kernel, "for j in range(hi):", "m = m_new")

# %%
check(RUNGS[1])

# %% [markdown]
# ## Rung 3: a block per query tile, K and V staged in shared memory
#
# Threads of one block can share `cuda.shared.array`, a small on-chip memory (48 KiB of static shared memory per
# block). Rung 3's block of 64 threads owns 64 query rows; for each tile of keys the threads first *copy* K and V
# into shared memory together (thread `t` copies elements `t, t + 64, ...`: neighbours read neighbouring
# addresses, a coalesced load), then each thread computes from the copy. Two barriers guard the copy:
# `cuda.syncthreads()` waits until every thread of the block has arrived, so nobody reads a tile before it is
# complete, and nobody overwrites it while a slower thread still reads. Each K/V element now leaves global memory
# once per block instead of once per row. Shared arrays need compile-time shapes, so `build_kernel` makes one
# kernel per head_dim bucket (a power of two) and closes over the constants:

# %%
kernel = rung3_shared_tiles.build_kernel
excerpt(kernel, "k_tile = cuda.shared.array", "v_tile = cuda.shared.array")
excerpt(kernel, "for start_n in range(0, hi, BLOCK_N):", "cuda.syncthreads()")
print("    if row_ok:  # a thread whose query row exists: online softmax")
print("        ...")
excerpt(kernel, "m = m_new", "cuda.syncthreads()")

# %%
check(RUNGS[2])

# %% [markdown]
# A barrier must be reached by *every* thread of the block: that is why rows past the end (`row_ok` false) still
# walk the same tiles and only skip the arithmetic.
#
# ## Rung 4: SageAttention's arithmetic on rung 3's tiles
#
# Same tiles, same barriers, the numbers of tutorial 03: K is smoothed, Q and K are quantized to INT8 with one
# scale per tile (on the host, with `sage_ref`'s quantizers), the scores are int32 dot products dequantized by one
# multiply, and P·V runs in fp16, rounded after every 16-key step as an fp16-accumulating MMA would. The K tile in
# shared memory is int8 now, a quarter of rung 3's:

# %%
kernel = rung4_sage_int8.build_kernel
excerpt(kernel, "k_tile = cuda.shared.array", "v_tile = cuda.shared.array")
excerpt(kernel, "qk_scale = q_scale * Ks", "s[jj] = np.float32(dot) * qk_scale")
excerpt(kernel, "p16[jj] = np.float16(p)", "acc[d] = acc[d] * alpha")

# %%
check(RUNGS[3])

# %% [markdown]
# The codes are widened to int32 before they are multiplied: the sum is exact (\(|\Sigma| \le 256 \cdot 127^2\)),
# where an int8 × int8 product would wrap.
#
# ## Rung 5: register tiles
#
# In rung 4 each thread computes a whole row of scores, so every multiply-add needs two loads. Rung 5's block is a
# 16 × 16 grid of 256 threads sharing a 64-query × 32-key tile: thread `(ty, tx)` computes queries
# `ty + 16r` (r < 4) against keys `tx + 16c` (c < 2), so per step over head_dim it loads 4 Q codes and 2 K codes
# and does 8 multiply-adds: a *register tile*, the same idea as a GEMM's thread tile. The work comes in three
# phases separated by barriers: scores into a shared S tile, one thread per row for the softmax (P in fp16 and the
# rescale factor, written back to shared memory for everyone), then P·V tiled the same way.

# %%
kernel = rung5_register_tiles.build_kernel
excerpt(kernel, "# Phase 1", "dots[r, c] += qv")
excerpt(kernel, "# Phase 2", "m_row[tid] = m_new")
excerpt(kernel, "# Phase 3", "d = tx + THREADS * c")

# %%
check(RUNGS[4])

# %% [markdown]
# The S tile's rows are `BLOCK_N + 1` floats apart: with 32 banks of shared memory, the padding puts the rows of
# one column in different banks, so the softmax threads reading a column do not queue on one bank.

# %%
stride, keys = rung5_register_tiles.S_STRIDE, rung5_register_tiles.BLOCK_N
print(f"S tile row stride: {stride} floats for {keys} keys")

# %% [markdown]
# ## Rung 6: the SGEMM recipe, and dp4a from CUDA C
#
# Rung 6 keeps rung 5's arithmetic and rebuilds the kernel the way a fast matrix multiply is built. Each of the 256
# threads owns a 4 × 4 tile of scores (queries `4ty..4ty+3`, keys `4tx..4tx+3`) and the same queries' 4 × 4 tile
# of P·V; the 16 threads of half a warp share their queries, so their reads of Q and P are broadcasts, and every
# read from shared memory is 16 neighbouring bytes, one vector load. Q's and K's INT8 codes are packed four to an
# int32 word and multiplied with *dp4a*: four int8 products summed into an int32 in one instruction. Numba has no
# intrinsic for it, so the kernel calls a one-line CUDA C function, declared in Python and linked into the kernel:

# %%
dp4a_cu = Path(rung6_sgemm_dp4a.__file__).with_name("dp4a.cu")
print(dp4a_cu.read_text().splitlines()[-1])
source = inspect.getsource(rung6_sgemm_dp4a)
start = source.index("DP4A_SOURCE =")
show(source[start : source.index("\n\n", start)])

# %% [markdown]
# The simulator cannot run linked machine code, so there `dp4a` is `dp4a_simulated`, the same arithmetic in
# Python (this page runs it). The inner loop over Q·Kᵀ: per word of 4 channels, 4 Q words and 4 K words from
# shared memory, 16 dp4a:

# %%
kernel = rung6_sgemm_dp4a.build_kernel
excerpt(kernel, "for w0 in range(WORDS):", "dots[r, c] = dp4a(")
check(RUNGS[5])

# %% [markdown]
# The softmax no longer waits on 64 threads: each thread writes its 4 rows' partial maxima to shared memory, and the
# 16 threads of a row read all 16 partials and agree on the same maximum (the simulator has no warp shuffles, so
# shared memory it is). Quantization moved to the GPU too: each block quantizes its own queries, a small kernel
# quantizes K's tiles, and the kernels take raw device pointers, because Numba's per-call array views cost more
# host time than a short kernel runs. Rung 6 takes head_dim up to 64 (its fp32 V and P tiles fill Numba's 48 KiB of
# static shared memory); `sage_fast.numba.forward`, what `sageattn(..., implementation="numba")` runs, picks rung 6
# up to head_dim 64, rung 5 up to 128 and rung 4 above:

# %%
for head_dim in (64, 128, 256):
    print(f"head_dim {head_dim}: {sage_fast.numba.fastest_rung(head_dim).name}")
print("forward at head_dim 16 holds itself to:")
print(" ", sage_fast.numba.reference_for(16).keywords)

# %% [markdown]
# ## Measured on a GPU
#
# Each rung on an H200, read from the committed benchmark (TOPS = \(4 B H N^2 D\) / time of one whole forward
# call, non-causal, fp16 inputs), and the fraction of the FP32 CUDA-core peak measured in the same run:

# %%
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
bench = json.loads((RESULTS / "bench-numba-h200-2026-11-26.json").read_text())
print(f"{bench['card']}, numba-cuda {bench['numba_cuda']}, {bench['date'][:10]}:")
print(f"TOPS (% of the FP32 peak, {bench['fp32_peak_tflops']:.1f} TFLOPS)")
first = bench["results"][0]
print(f"batch {first['batch']}, {first['heads']} heads, non-causal")
tops = {(r["rung"], r["head_dim"], r["n"]): r for r in bench["results"]}
sizes = sorted({n for _, _, n in tops})
columns = [(d, n) for d in (64, 128) for n in (sizes[0], sizes[-1])]


def cell(r):  # r is None for a head_dim the rung does not take
    return f"{r['tops']:5.2f} ({r['fraction_of_fp32_peak']:4.0%})" if r else "-"


print(f"  {'rung':17s}" + "".join(f"  {f'hd{d} N={n}':>13s}" for d, n in columns))
for name in dict.fromkeys(r["rung"] for r in bench["results"]):  # those measured
    cells = [cell(tops.get((name, d, n))) for d, n in columns]
    print(f"  {name:17s}" + "".join(f"  {c:>13s}" for c in cells))

# %% [markdown]
# Not every step of the ladder pays on its own. On this card rungs 2 and 3 are *slower* than rung 1 at most
# sizes: one thread per query row gives (batch · heads) × N/64 blocks little parallelism and long dependent
# loops, and rung 3's shared tiles pay two barriers per tile for one row per thread. Rung 4 gains from INT8 in its
# data movement only, and rung 5's register tiles roughly double that again. Rung 6 is about 5× rung 5 at head_dim
# 64: its kernel alone runs about 32 TOPS at N = 4096, and moving quantization onto the GPU and launching with raw
# pointers took the host's share of a call from about 0.4 ms to 0.16 ms. The percentages are of an FP32 FMA
# microbenchmark run alongside; the [Numba benchmark page](../benchmarks-numba.md) has every size and the
# experiments behind rung 6 (what the profile says limits it, what dp4a changes), and the tensor cores' numbers are
# tutorial 05's.
