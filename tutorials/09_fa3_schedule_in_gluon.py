r"""09 · FlashAttention-3's schedule in Gluon: rung 6

You will learn:

- why rung 5 leaves the tensor cores idle half the time although no unit is saturated: each program waits
  on its own chain of steps;
- FlashAttention-3's two answers: overlap a warpgroup's softmax with its previous tile's P·V, and let two
  warpgroups take turns on the tensor cores, fed by a producer warp;
- how Triton's lower layer, Gluon, writes that schedule (asynchronous wgmmas, mbarriers, warp-specialized
  partitions with their own register budgets), and how to check without a GPU that the compiler kept it;
- what it bought on an H200: the same output bit for bit, a tie with rung 5 at 8k tokens, a lead at 32k,
  and why it trails at short sequences.
"""

# %%
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # set before Triton is imported

from listing import show  # tutorials/listing.py: source fitted to the page

import sage_fast.triton

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"

# %% [markdown]
# ## The chain inside one program
#
# For every key tile, one program of rung 5 runs four steps, each waiting for the one before: the int8 product
# S = Q̂·K̂ᵀ on the tensor cores, the row maximum of S, the exponentials, and the fp8 product P·V on the tensor
# cores again. While the softmax runs, that program's tensor-core work is done; while the products run, its
# softmax waits. Rung 5 hides the gaps only by running three programs per SM, uncoordinated. Triton 3.6 cannot
# do better from inside a program: it waits for every wgmma right after issuing it. FlashAttention-3 (Shah et
# al., 2024) reorders the loop so the tensor cores always have queued work:
#
# 1. within a warpgroup (128 threads, the unit that issues a wgmma), issue S_j and the *previous* tile's
#    P_{j-1}·V_{j-1} together, wait only for S_j, and compute tile j's softmax while P_{j-1}·V_{j-1} runs;
# 2. give each program two such consumer warpgroups that take turns issuing (ping-pong), so one's softmax runs
#    while the other's products do, and a producer warp that only copies K̂/V̂ tiles (TMA) into shared memory.
#
# Gluon, Triton's lower-level layer, exposes exactly these pieces. Here is one iteration of a consumer warpgroup
# in rung 6: `warpgroup_mma(..., is_async=True)` issues, `warpgroup_mma_wait(1, ...)` waits until at most one
# wgmma group is still in flight, and `ready`, `empty` and `turn` are mbarriers in shared memory.

# %%
rung6 = next(rung for rung in sage_fast.triton.RUNGS if rung.name == "6-gluon")
print(rung6.name, "- held to", rung6.reference.keywords)
attn_gluon = sys.modules["sage_fast.triton.attn_gluon"]
show(inspect.getsource(attn_gluon.step.fn))

# %% [markdown]
# The arithmetic is rung 5's in the same order (the FMA that dequantizes, exp2 with log2 448 in the exponent,
# P·V into a fresh fp32 accumulator added to the running one with the alpha of its own tile), so the outputs
# are equal bit for bit; only the moment each step runs changed. P̂ goes through shared memory on its way to
# the second wgmma: kept in registers from one iteration to the next, 64 separate 8-bit values per thread
# were re-packed into 16 registers on every tile (about 220 extra instructions per tile).
#
# The partitions are declared once per program with `gl.warp_specialize`: the default partition and one
# worker are the two consumers, the other worker is the producer, and each worker names its register budget
# (`setmaxnreg`: the producer gives registers up, the consumers take them).

# %%
kernel_source = inspect.getsource(attn_gluon.sage_attn_gluon_kernel.fn)
show(kernel_source[kernel_source.index("    gl.warp_specialize("):])

# %% [markdown]
# ## Checking the schedule without a GPU
#
# A compiler may quietly undo a schedule: ptxas *serializes* asynchronous wgmmas (waits after each) when it
# cannot prove that no other instruction touches their registers while they run, and says so only in a
# message. Gluon kernels do not run in Triton's interpreter, but they compile for Hopper on any machine.
# `tests/compile_specs.py` records the launches of `rung6.forward` on small CPU tensors and builds them for sm90
# with the JIT's own specialization (in a fresh process: this one has the interpreter switched on).

# %%
case = {"rung": rung6.name, "head_dim": 128, "is_causal": False, "archs": [90]}
with tempfile.TemporaryDirectory() as out_dir:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, str(ROOT / "tests" / "compile_specs.py"), out_dir, "--ptxas"],
                   input=json.dumps([case]), env=env, cwd=ROOT, text=True, check=True, capture_output=True)
    built = json.loads(Path(out_dir, "index.json").read_text())
    (attention,) = [b for b in built if b["kernel"] == "sage_attn_gluon_kernel"]
    ptx = Path(out_dir, attention["stem"] + ".ptx").read_text()

products = sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m64n\d+k\d+\.\w+\.\w+\.\w+)", ptx)))
waits = sorted(set(re.findall(r"wgmma\.wait_group\.sync\.aligned (\d+);", ptx)))
budgets = sorted(set(re.findall(r"setmaxnreg\.(inc|dec)\.sync\.aligned\.u32\s+(\d+);", ptx)))
print("tensor-core products:", *products, sep="\n  ")
print("wgmma waits, groups left in flight:", waits)
print("register budgets set by the partitions:", budgets)
print(f"shared memory per program: {attention['shared'] / 1024:.0f} KB;",
      f"ptxas spills {attention['spill_stores']} B;",
      "serialized by ptxas:", attention["serialized"] or "no")
assert "1" in waits and not attention["serialized"]

# %% [markdown]
# int8 × int8 into int32 for the scores, e4m3 × e4m3 into fp32 for P·V, a wait that leaves one group (P·V) in
# flight while the softmax runs, registers handed from the producer to the consumers, and no serialization:
# the schedule survived compilation. (`tests/test_triton_compile.py` checks the same on every CI run.)
#
# ## What it bought
#
# First the correctness claim. On the H200, rung 6 and rung 5 were run on the same inputs at awkward shapes
# (grouped heads, causal masks with more queries than keys, lengths 1, 77, 1000, 4097, head sizes 32 to 128):

# %%
equal = json.loads((RESULTS / "probes-rung6-ws-eq-h200-2026-11-26.json").read_text())["eq"]
for r in equal:
    print(f"  B,H,Hkv,Nq,Nkv,D = {r['shape'][:6]}, causal={r['shape'][6]!s:5}",
          "outputs equal" if r["out_equal"] else "OUTPUTS DIFFER",
          "lse equal" if r["lse_equal"] else "LSE DIFFERS")
assert all(r["out_equal"] and r["lse_equal"] for r in equal)
if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0):
    q, k, v = (torch.randn(1, 4, 1000, 128, device="cuda", dtype=torch.float16) for _ in range(3))
    assert torch.equal(rung6.forward(q, k, v), sage_fast.triton.RUNGS[4].forward(q, k, v))
    print("and on this GPU, just now: equal")

# %% [markdown]
# Then the speed, the kernel alone on pre-quantized inputs (head_dim 128, 8192 tokens, 16k tokens per batch,
# two rounds each, the kernels alternating in one process). The first attempt put the overlap into one
# warpgroup per program, without a producer or a partner:

# %%
def tops(file, name, d=128, causal=False, n=8192):
    runs = [r["tops"] for r in json.loads((RESULTS / file).read_text())["time"]
            if r["name"] == name and r["d"] == d and r["causal"] == causal and r["n"] == n]
    return f"{min(runs):.0f}–{max(runs):.0f}"


one = "probes-rung6-h200-2026-11-26.json"
ws = "probes-rung6-ws-h200-2026-11-26.json"
print(f"  rung 5 (Triton, 3 programs per SM)            {tops(one, 'k-r5'):>9} TOPS")
print(f"  overlap in one warpgroup, 2 programs per SM   {tops(one, 'k-r6s2'):>9}")
print(f"  rung 5, next run                              {tops(ws, 'r5'):>9}")
print(f"  producer + 2 consumers, without turn-taking   {tops(ws, 'ws-s2-pp0'):>9}")
print(f"  producer + 2 consumers, taking turns          {tops(ws, 'ws-s2-pp1'):>9}")

# %% [markdown]
# The overlap alone lost: a warpgroup holding S, the in-flight P·V block and the running sum needs about 250
# registers per thread, so two programs fit per SM instead of rung 5's three. ncu shows the trade (`Warp cycles
# per issued instruction` counts every resident warp, the producer's idle ones included for rung 6):

# %%
def ncu(file):
    found = {}
    for line in (RESULTS / file).read_text().splitlines():
        m = re.match(r"\s+(\S.*?\S)\s+(?:[a-z/%]+\s+)?([0-9.]+)$", line)
        if m:
            found.setdefault(m.group(1), m.group(2))
    return found


reports = {"rung 5": ncu("ncu-rung5-vs-rung6-d128-h200-2026-11-26.txt"),
           "1 partition": ncu("ncu-rung6-one-partition-d128-h200-2026-11-26.txt"),
           "rung 6": ncu("ncu-rung6-d128-h200-2026-11-26.txt")}
rows = (("Registers Per Thread", "registers per thread (kernel-wide)"),
        ("Block Limit Registers", "programs per SM"),
        ("Active Warps Per Scheduler", "warps per scheduler"),
        ("Warp Cycles Per Issued Instruction", "cycles between a warp's instructions"),
        ("Issued Warp Per Scheduler", "instructions per scheduler-cycle"),
        ("Duration", "kernel time under ncu, ms"))
print(f"  {'':38s}" + "".join(f"{name:>13}" for name in reports))
for key, label in rows:
    print(f"  {label:38s}" + "".join(f"{report[key]:>13}" for report in reports.values()))

# %% [markdown]
# In one partition the overlap did shorten each warp's path (4.5 cycles between instructions against 5.7), but
# with two warps per scheduler instead of three the SM issued less. Warp specialization gets both: 232 registers
# for each consumer and 40 for the producer fit one program of 128 rows per SM, the producer's copies and waits
# leave the consumers' instruction stream, and each K̂/V̂ tile serves 128 rows. The turn-taking matters once the
# pipeline is shallow: without it, both consumers reach their softmax at the same time and the tensor cores wait.
#
# Whole calls, quantization included, from the project's benchmark run:

# %%
bench = json.loads((RESULTS / "bench-h200-2026-11-26-rung6.json").read_text())["rows"]
print(f"  {'TOPS, whole call':34s}{'rung 5':>8}{'rung 6':>8}{'cuDNN':>8}")
for d, causal, n in ((128, False, 1024), (128, False, 8192), (128, False, 32768),
                     (128, True, 8192), (128, True, 32768), (64, False, 8192)):
    got = {r["name"]: r["tops"] for r in bench
           if r["head_dim"] == d and r["causal"] == causal and r["n"] == n and "tops" in r}
    label = f"head_dim {d}{' causal' if causal else ''}, N = {n}"
    print(f"  {label:34s}" + "".join(f"{got[name]:8.0f}" for name in ("rung5-tma", "rung6-gluon", "sdpa-cudnn")))

# %% [markdown]
# A tie at 8k tokens and a small lead at 32k, behind at short or causal sequences and at head_dim 64. One
# program per SM has nothing to hide its start (Q̂'s copy, the first tile alone) and its end (the last P·V, the
# stores) behind, which costs most when a program has few tiles; at head_dim 64 the 232 registers per thread
# sit mostly idle where rung 5 fits four programs per SM. A persistent grid that walks work items in a fixed
# order did not fix it (causal items of unequal length then end unevenly; see the [Notes](../notes.md)). So
# `sageattn(pv="fp8")` keeps rung 5.
#
# ## Where the schedule pays: fp16 P·V (rung 7)
#
# The fp16 product runs at half the fp8 rate, so on SageAttention v1's path the tensor cores take a larger share
# of each tile, and hiding the softmax behind them is worth more. Rung 7 is the same kernel with `PV_FP8=False`
# (P and V in fp16, an fp16 accumulator per tile, rung 3's arithmetic bit for bit); measured on an H100 in one run:

# %%
rows = json.loads((RESULTS / "bench-h100-2026-11-26-rung7.json").read_text())["rows"]
print(f"  {'TOPS, whole call (H100)':34s}{'rung 3':>8}{'rung 7':>8}{'cuDNN':>8}")
for d, causal, n in ((128, False, 1024), (128, False, 8192), (128, False, 32768), (128, True, 8192), (64, False, 8192)):
    got = {r["name"]: r["tops"] for r in rows
           if r["head_dim"] == d and r["causal"] == causal and r["n"] == n and "tops" in r}
    label = f"head_dim {d}{' causal' if causal else ''}, N = {n}"
    names = ("rung3-fused-quant", "rung7-gluon-fp16", "sdpa-cudnn")
    print(f"  {label:34s}" + "".join(f"{got[name]:8.0f}" for name in names))

# %% [markdown]
# At head_dim 128 rung 7 wins at every length, so `sageattn(pv="fp16")` runs it on Hopper there (head_dim 65-128,
# no mask); at head_dim 64 a program's fixed 232 registers per consumer thread leave the SM one program where
# rung 3 runs several, and rung 3 stays. The next steps start from here: a persistent grid with a dynamic
# schedule, P̂'s operand conversion done inside one iteration, and a lighter layout for head_dim 64.
