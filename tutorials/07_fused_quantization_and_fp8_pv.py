r"""07 · Fused quantization and FP8 P·V: SageAttention2 on the GPU

You will learn:

- how to quantize inside a Triton kernel, one program per tile, with codes bit-identical to `sage_ref`'s;
- why P is scaled by 448 before it is rounded to fp8 e4m3, and what fp8 costs against fp16 and int8;
- how V gets one fp8 scale per channel, undone by a single multiply at the end;
- how Hopper's TMA copy engine frees registers, and why fewer registers made rung 5 faster than rung 4 with
  the same arithmetic, bit for bit;
- how renaming the keys lets P reach the fp8 tensor core without moving between threads;
- where the time of the project's fastest path (rung 5, `sageattn(pv="fp8")`) goes, measured on an H200.
"""

# %%
import inspect
import json
import math
import os
import re
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # set before Triton is imported

import triton
import triton.language as tl
from listing import show  # tutorials/listing.py: source fitted to the page

import sage_fast.triton  # under the interpreter, this fixes two of its bugs
import sage_ref
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
    # an all-zero tile gets codes 0
    safe = tl.where(amax == 0.0, 1.0, amax)
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
print(f"{n} rows, {scale.numel()} tiles: "
      "codes and scales bit-identical to sage_ref's")

# %% [markdown]
# The project's `sage_fast.triton.quant` does the same for Q (with \(\tfrac{1}{\sqrt d}\log_2 e\) folded in),
# and for K in two launches: one sums K over tokens for the smoothing mean, one subtracts it and quantizes (for
# short heads, one launch whose programs each do both for one head).
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
# Probabilities lie in \([0, 1]\), the bottom of that range. From \(2^{-6}\) up, e4m3 keeps its 3 bits of
# relative precision whatever the scale, but below it P is subnormal and loses bits, and below \(2^{-10}\) it
# rounds to 0. Multiplying by 448 first moves that edge down by 448: probabilities from about \(3.5 \cdot 10^{-5}\)
# up keep all three bits; the factor \(1/448\) is folded into the final scale. INT8 (\(P \cdot 127\)) has
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
# Rung 4 is this, with rung 3's fused quantization; in the kernel \(\ell\) sums the scaled \(448 P\) that
# comes out of exp2 (\(\log_2 448\) added to the exponent), so the 448 cancels and the end is \(\mathrm{acc}/\ell
# \cdot s\). Under the interpreter at a small size, against its `sage_ref` twin and an fp64 truth:

# %%
rung4 = sage_fast.triton.RUNGS[3]
shape = (1, 2, 150, 64)
torch.manual_seed(0)
q, k, v = (torch.randn(shape, dtype=torch.float16, device=DEVICE) for _ in range(3))
truth = sage_ref.naive_attention(q.double(), k.double(), v.double())
kwargs = {"is_causal": False, "sm_scale": None, "return_lse": False,
          "smooth_k": True}
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
# ## Rung 5: tiles copied by TMA
#
# Rung 4's loop brings a tile of K̂ (128 keys × head_dim int8 codes) and one of V̂ᵀ from global memory (the GPU's
# DRAM) into shared memory (a small scratchpad next to the compute units) for every step. With ordinary loads
# every one of the program's 128 threads computes the addresses of its share of the tile and issues its own small
# copies, and it keeps those address tiles in registers for the whole loop. On Hopper GPUs (H100, H200) each SM,
# the processor that runs a program, has a copy engine for this, the *Tensor Memory Accelerator* (TMA): a *tensor
# descriptor*, made once on the host, tells it a matrix's address, shape and strides; then one thread asks for "the
# tile at row r, column c" and the engine moves the whole tile into shared memory by itself (filling zeros past the
# matrix's end). The threads stop computing addresses, the copy instructions leave the loop, and the registers that
# held the addresses are free. Rung 5 is rung 4 with K̂ and V̂ᵀ reaching the kernel as descriptors. The two ways to
# load K̂, from the kernel both rungs share (`sage_fast/triton/attn_int8.py`):

# %%
from sage_fast.triton import attn_int8

source = [line.strip() for line in inspect.getsource(attn_int8).splitlines()]


def first(test):
    """The first line of attn_int8.py's source that passes `test`, indented."""
    return "    " + next(line for line in source if test(line))


print("rung 4: a tile of addresses, each thread loads its share")
show(first(lambda line: line.startswith("k_src = KInt8 +")))
show(first(lambda line: line == "k = tl.load(k_src + start_n * HEAD_DIM)"))
print("rung 5: a descriptor made on the host, one request per tile in the kernel")
show(first(lambda line: line.startswith("k_int8 = TensorDescriptor.from_tensor(")))
show(first(lambda line: line.startswith("k = k_src.load(")))

# %% [markdown]
# (`.T` because the descriptor's tile is [keys, channels] and the product needs [channels, keys]; on GPUs before
# Hopper the same code compiles to plain loads.) Keys past the end of the sequence in the last tile now arrive as
# the next head's codes or zeros instead of being masked at the load, and the softmax's mask removes them as
# before. Nothing in the arithmetic changed, so rung 5 must equal rung 4 bit for bit: under the interpreter, on
# the inputs above, and causal with grouped-query heads and 133 keys, so the last key tile reads past a head:

# %%
rung5 = sage_fast.triton.RUNGS[4]
out5 = rung5.forward(q, k, v, **kwargs)
assert torch.equal(out5, out)
torch.manual_seed(1)
q2 = torch.randn(1, 4, 120, 64, dtype=torch.float16, device=DEVICE)
k2, v2 = (torch.randn(1, 2, 133, 64, dtype=torch.float16, device=DEVICE)
          for _ in range(2))
causal = {"is_causal": True, "sm_scale": None, "return_lse": True}
o4, lse4 = rung4.forward(q2, k2, v2, **causal)
o5, lse5 = rung5.forward(q2, k2, v2, **causal)
assert torch.equal(o5, o4) and torch.equal(lse5, lse4)
print(f"{rung5.name} == {rung4.name}: bit-identical outputs and log-sum-exps")

# %% [markdown]
# Why free registers make a kernel faster: a GPU hides the time each instruction takes (tens of cycles for a
# tensor-core product, hundreds for a load) by switching between programs, so that while one waits another issues.
# How many programs one SM (the H200 has 132) holds at once is set by what each needs from the SM's
# fixed stock: 65,536 registers and 228 KB of shared memory. NVIDIA's profiler, ncu, on both kernels (head_dim 128,
# N = 8192), read from the committed reports:

# %%
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


TENSOR_PIPE = "tensor pipe busy, %"


def ncu_report(name):
    """{metric: value} from an ncu text report; the tensor pipe's busy %
    under one name for both reports."""
    metrics = {}
    for line in (RESULTS / name).read_text().splitlines():
        fields = re.split(r"\s{2,}", line.strip())
        if len(fields) >= 2 and re.fullmatch(r"[0-9.,]+", fields[-1]):
            metrics.setdefault(fields[0], fields[-1])
        # rung 4's report: the Compute Workload Analysis section
        tensor = re.search(
            r"Tensor is the highest-utilized pipeline \(([0-9.]+)%\)", line
        )
        if tensor:
            metrics[TENSOR_PIPE] = tensor.group(1)
    # rung 5's report: a raw metric
    raw = metrics.get(
        "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"
    )
    if raw:
        metrics[TENSOR_PIPE] = f"{float(raw):.1f}"
    return metrics


reports = {"rung 4": ncu_report("ncu-rung4-h200-2026-11-26.txt"),
           "rung 5": ncu_report("ncu-rung5-d128-h200-2026-11-26.txt")}
shown = (
    ("Registers Per Thread", "registers per thread"),
    ("Dynamic Shared Memory Per Block", "shared memory per program, KB"),
    ("Block Limit Registers", "programs per SM, register limit"),
    ("Block Limit Shared Mem", "programs per SM, shared-memory limit"),
    ("Active Warps Per Scheduler", "warps per scheduler"),
    ("Eligible Warps Per Scheduler", "  of them ready to issue"),
    ("Issued Warp Per Scheduler", "instructions per scheduler-cycle"),
    (TENSOR_PIPE, TENSOR_PIPE),
    ("Duration", "kernel time under ncu, ms"),
)
print(f"  {'':38s}" + "".join(f"{rung:>9}" for rung in reports))
for metric, label in shown:
    values = (report[metric] for report in reports.values())
    print(f"  {label:38s}" + "".join(f"{value:>9}" for value in values))

# %% [markdown]
# Rung 4: 255 registers for each of 128 threads is about 32k registers per program, and its three pipeline stages
# take 107 KB of shared memory: two programs fit, by either limit. Each SM has four schedulers, each issuing at
# most one instruction per cycle from one of its warps (groups of 32 threads). Two programs of four warps give
# each scheduler two warps; on average fewer than one of them is ready, so a scheduler issues on about every
# other cycle and the tensor cores are busy well under half the time. The kernel is *latency-bound*: within a
# program each step waits on the one before (the Q·Kᵀ product, then the softmax's maximum and exp2, then the P·V
# product), and two programs per SM are too few to fill the gaps.
#
# Rung 5 has the registers for three programs, and with two pipeline stages instead of three their shared memory
# fits too: three warps per scheduler. More of them are ready and the tensor pipe is busier, but not by the half
# that a third program suggests: the programs share the same schedulers and tensor cores, each still waits on its
# own chain of steps, and the [Notes](../notes.md) find a new wait in ncu's stall reasons, the barrier that keeps
# a TMA copy from overwriting a shared-memory stage still in use. Measured without the profiler, the two kernels
# alternating in one process on the same pre-quantized inputs (N = 8192, two rounds each), and whole calls
# against SDPA cuDNN the same way:

# %%
probes = json.loads((RESULTS / "probes-h200-2026-11-26.json").read_text())
probes = probes["rung5_tma"]
shapes = {"head_dim 128": (128, False),
          "head_dim 128 causal": (128, True),
          "head_dim 64": (64, False)}


def runs(key, name, d, is_causal):
    """TOPS of each round of one probe, in the order they ran."""
    return [r["tops"] for r in probes
            if r.get(key) == name and r["d"] == d and r["causal"] == is_causal
            and r.get("n", 8192) == 8192]


def spread(values):
    low, high = f"{min(values):.0f}", f"{max(values):.0f}"
    return low if low == high else f"{low}–{high}"


head = f"{'rung 4':>11} {'rung 5':>11}"
print(f"TOPS, N = 8192, kernel alone {head}   rung 5 / rung 4, by round")
for label, (d, is_causal) in shapes.items():
    r4 = runs("kernel", "r4", d, is_causal)
    r5 = runs("kernel", "tma s2", d, is_causal)
    gains = "  ".join(f"{b / a - 1:+.1%}" for a, b in zip(r4, r5))
    print(f"  {label:26s} {spread(r4):>11} {spread(r5):>11}   {gains}")
print(f"TOPS, N = 8192, whole call   {'SDPA cuDNN':>11} {head}")
for label, (d, is_causal) in shapes.items():
    calls = (runs("call", rung, d, is_causal)
             for rung in ("cudnn", "rung4", "rung5"))
    print(f"  {label:26s}" + "".join(f" {spread(call):>11}" for call in calls))

# %% [markdown]
# A few percent, kernel alone and whole call, for the same bits: what is left is the chain inside each program,
# and overlapping one tile's softmax with the next tile's product needs explicit control of the warps that plain
# Triton does not give (the [Notes](../notes.md) have the attempt). `sageattn(pv="fp8")` runs rung 5.

# %% [markdown]
# ## P's keys in the order the tensor core wants
#
# Reading rung 5's machine code (SASS) showed one more cost inside the chain. The tensor core leaves each thread
# its share of S in the *accumulator* layout: in every 8 columns, 2 adjacent ones (thread `q = lane % 4` holds
# columns `8g + 2q` and `8g + 2q + 1`). But the fp8 product P·V wants P as an 8-bit *operand*, 4 adjacent
# k of every 16 per thread (`16·g1 + 4q … 4q + 3`). So between the softmax and the product the threads swapped
# bytes: per thread and tile 16 shuffles, 32 selects and 16 byte permutes, on the critical path.
#
# P·V sums over keys, so it does not care what the keys are called, as long as P's columns and V's rows are
# renamed alike. Rename the keys so that what each thread holds *is* its operand, and the conversion becomes
# a renaming of registers. `sage_fast.triton.common.operand_key_order` is that renaming (within every 32 keys,
# a rotation of three bits of the key index); the quantization kernel stores V̂ᵀ with its keys in that order,
# and the attention kernel applies it to P. What it does to the key numbers 0-31:

# %%
from sage_fast.triton.common import operand_key_order


@triton.jit
def relabel_kernel(X, Out, N: tl.constexpr):
    row = tl.load(X + tl.arange(0, N))[None, :]
    tl.store(Out + tl.arange(0, N)[None, :], operand_key_order(row))


keys = torch.arange(32, dtype=torch.int32, device=DEVICE)
order = torch.empty_like(keys)
relabel_kernel[(1,)](keys, order, N=32)
print("position k holds key:", order.tolist())
for lane in range(4):
    held = [8 * g + 2 * lane + j for g in range(4) for j in range(2)]
    wanted = [order[16 * half + 4 * lane + i].item() for half in range(2) for i in range(4)]
    print(f"  thread q={lane}: holds keys {held}, its operand slots now name {wanted}")
    assert sorted(held) == sorted(wanted)

# %% [markdown]
# Every thread's operand slots name exactly the keys it already holds. The product is unchanged, whatever the
# renaming, when both sides get it (here in fp64 with small integers, so every sum is exact):

# %%
p_tile = torch.randint(0, 8, (4, 32), dtype=torch.float64)
v_tile = torch.randint(-4, 5, (32, 6), dtype=torch.float64)
perm = order.long().cpu()
assert torch.equal(p_tile[:, perm] @ v_tile[perm], p_tile @ v_tile)
print("P[:, order] · V[order] == P · V")

# %% [markdown]
# In rung 5's sm90 build the hot loop went from 601 to 552 instructions per tile, and no byte is moved between
# threads on the way to the product (`tests/test_triton_compile.py` holds every fp8 build with P in registers to
# that). The tensor core now adds the 32 products of each instruction in another order, so the result may
# differ from before in the last bits; rungs 4, 5 and 6 all use the new order and still equal each other bit
# for bit. Measured on the GPU, old and new code alternating in one run:

# %%
order_probe = json.loads((RESULTS / "probes-operand-order-h200-2026-11-26.json").read_text())
print(order_probe["environment"]["card"] + ", TOPS, two rounds each")
cases = {"head_dim 128, N = 8192": (8192, 128, False), "  causal": (8192, 128, True),
         "head_dim 128, N = 1024": (1024, 128, False), "head_dim 64, N = 8192": (8192, 64, False)}


def pick(name, era, case):
    """TOPS of one probe (r5: rung 5's kernel, sage: the whole call) in each round, old or new code."""
    return [r["tops"] for r in order_probe["rows"] if r["name"] == name and r["label"].startswith(era)
            and (r["N"], r["D"], r["causal"]) == case]


print(f"  {'':24s} {'kernel old':>11} {'kernel new':>11} {'call old':>9} {'call new':>9} {'SDPA cuDNN':>11}")
for label, case in cases.items():
    cells = (pick("r5", "old", case), pick("r5", "new", case), pick("sage", "old", case),
             pick("sage", "new", case), pick("cudnn", "new", case))
    print(f"  {label:24s}" + "".join(f" {spread(c):>{w}}" for c, w in zip(cells, (11, 11, 9, 9, 11))))

# %% [markdown]
# ## A register cliff
#
# Programs per SM come in whole numbers, so registers count in steps: an SM's 65536 registers hold three programs
# of 128 threads at up to 168 registers per thread (they are handed out in steps of eight), two above that. A later
# change to the row maximum (a tree of halvings, `sage_fast.triton.common.row_max`: the same bits, a shorter chain)
# took rung 3's non-causal build at head_dim 64 from 198 registers down to 167, but its causal build, same source,
# from 168 up to 177. The change was measured on the non-causal kernel only; the next full benchmark showed the
# causal one 11-22 % slower. ncu on the causal kernel before and after, same inputs and same output bits:

# %%
cliff = {"168 registers": ncu_report("ncu-rung3-causal-d64-3be23e3-h200-2026-11-27.txt"),
         "177 registers": ncu_report("ncu-rung3-causal-d64-a04f1ea-h200-2026-11-27.txt")}
for metric, label in (("Registers Per Thread", "registers per thread"),
                      ("Block Limit Registers", "programs per SM, register limit"),
                      ("Issued Warp Per Scheduler", "instructions per scheduler-cycle"),
                      ("Duration", "kernel time under ncu, us")):
    print(f"  {label:36s}" + "".join(f"{report[metric]:>15}" for report in cliff.values()))

# %% [markdown]
# A cap on the registers (`maxnreg`, the launch option `Tiles.register_caps` feeds) puts the third program back
# if the compiler can fit the kernel without spilling to memory; here it could. The kernel alone, capped or not
# (the same bits either way):

# %%
def cap_table(results, head_dim, cap, shapes):
    """TOPS of rung 3's kernel without and with a register cap, from a committed probe (rows named asis / capN)."""
    rows = json.loads((RESULTS / results).read_text())["rows"]
    print(f"TOPS, rung 3's kernel, head_dim {head_dim:<3d} {'no cap':>9} {f'cap {cap}':>9}")
    for batch, n, is_causal in shapes:
        cells = [[r["tops"] for r in rows if r.get("name") == name and (r["B"], r["N"], r["D"], r["causal"])
                  == (batch, n, head_dim, is_causal)] for name in ("asis", f"cap{cap}")]
        label = f"N = {n:5d}" + (", causal" if is_causal else "")
        print(f"  {label:34s}" + "".join(f" {spread(c):>9}" for c in cells))


cap_table("probes-causal-register-cap-h200-2026-11-27.json", 64, 168,
          ((16, 1024, True), (4, 4096, True), (1, 16384, True), (4, 4096, False)))

# %% [markdown]
# The cap is in `rung2_int8_qk.TILES`, and `tests/test_triton_compile.py::test_programs_per_sm` compiles the
# kernels for sm90 on the CPU, reads their registers and shared memory from ptxas and fails when a build drops a
# program per SM. It could not have caught this before: the compile tests built every kernel with the log-sum-exp
# output, and that build kept 168 registers; only the default call's build took 177.
#
# A cap is not free where the compiler would have fitted anyway. At head_dim 32 the causal build takes 168
# registers (three programs) and the non-causal one 128 (four); a 128 cap gives the causal kernel its fourth
# program, but on the non-causal build, already at 128, it changes how ptxas schedules and costs a little. So that
# cap applies to causal launches only (`Tiles.causal_register_caps`):

# %%
cap_table("probes-causal-d32-register-cap-h200-2026-11-27.json", 32, 128,
          ((16, 1024, True), (1, 16384, True), (16, 1024, False), (1, 16384, False)))

# %% [markdown]
# ## Measured on a GPU
#
# Where a call's time goes (rung 5, head_dim 128; each part timed alone; the copy is a reference point:
# one read and write of q, k and v), read from the committed results:

# %%
breakdown = json.loads(
    (RESULTS / "breakdown-h200-2026-11-27.json").read_text()
)
env = breakdown["environment"]
print(f"{env['card']}, triton {env['triton']}, {env['date']}:")
print("ms per part, B·N = 16k, 32 heads")
parts = list(dict.fromkeys(r["part"] for r in breakdown["rows"]))
ms = {(r["part"], r["n"]): r["ms"] for r in breakdown["rows"]}
print(f"  {'':20s} {'N = 1024':>9} {'N = 8192':>9}")
for part in parts:
    print(f"  {part:20s} {ms[part, 1024]:9.3f} {ms[part, 8192]:9.3f}")
whole = next(part for part in parts if part.endswith("whole call"))
share = {n: (ms["quantize_kv", n] + ms["quantize_q", n]) / ms[whole, n]
         for n in (1024, 8192)}
print(f"  quantization's share of the call: {share[1024]:.0%} at N = 1024, "
      f"{share[8192]:.0%} at N = 8192")

# %% [markdown]
# And the whole ladder against PyTorch's fastest attention and PyPI `sageattention` 1.0.6 (TOPS as in
# tutorial 03):

# %%
bench = json.loads((RESULTS / "bench-h200-2026-11-27.json").read_text())
rows = [r for r in bench["rows"] if r["head_dim"] == 128 and not r["causal"]]
tops = {(r["name"], r["n"]): r["tops"] for r in rows}
names = {"sdpa-cudnn": "SDPA cuDNN", "sageattention-1.0.6": "1.0.6",
         "rung3-fused-quant": "rung 3", "rung4-fp8-pv": "rung 4",
         "rung5-tma": "rung 5", "sageattn-fp8": "sageattn fp8"}
print("TOPS, head_dim 128, non-causal")
print("     N" + "".join(f"{label:>13}" for label in names.values()))
for n in (1024, 4096, 8192, 32768):
    print(f"{n:6d}" + "".join(f"{tops[name, n]:13.0f}" for name in names))

# %% [markdown]
# `sageattn fp8` is rung 5 measured a second time: the two columns differ by the run-to-run spread of a single
# measurement, up to 7 % in this run. At short sequences the quantization launches are a large share of the call and
# SDPA wins; from \(N \approx 4\text{k}\) on, fp8 P·V makes the whole call faster than PyTorch's cuDNN attention,
# at the accuracy cost measured above; the fp16 path, `sageattn(pv="fp16")`, is the accurate one.
