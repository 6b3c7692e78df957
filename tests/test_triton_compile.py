"""The tensor cores are used: every rung compiles, without a GPU, for each architecture it claims.

For every rung of ``sage_fast.triton.RUNGS``, head_dim 64 and 128, causal or not, and every arch in
sm80 / sm89 / sm90 at or above ``rung.min_arch``, the kernels the rung launches are compiled with
``triton.compile(..., target=GPUTarget("cuda", arch, 32))`` (tests/compile_specs.py records the launches
and builds them) and the generated code is held to what the rung's docstring promises:

- it builds, and its shared memory fits what one block may use on that arch;
- its matrix products are tensor-core instructions of the promised types: on sm90 ``wgmma`` with
  s8·s8 for Q·Kᵀ (rungs 2-4), e4m3·e4m3 for P·V (rung 4), f16·f16 (rung 1 both, rungs 2-3 P·V);
  on sm80/sm89 the same types in ``mma.sync``;
- two-level accumulation (rungs 2-4): the reduced-precision P·V product of a key tile starts from a
  zero accumulator and is added into the fp32 total afterwards. Triton's combine pass rewrites
  ``d + dot(a, b, 0)`` into ``dot(a, b, d)`` when it can, which would put the running total through
  the tensor core's reduced-precision accumulator: the TTGIR must show that did not happen;
- an arch below ``min_arch`` is refused by the compiler (rung 4 on sm80 has no e4m3 type).

Why a subprocess: conftest.py sets TRITON_INTERPRET=1 on a machine without CUDA before the kernels are
imported, so ``@triton.jit`` has already made them interpreter functions (``triton.compile`` rejects
them: no ``cache_key``), and sage_fast.triton has patched the interpreter. Toggling
``triton.knobs.runtime.interpret`` afterwards cannot undo either. A fresh interpreter with
TRITON_INTERPRET removed from its environment imports the kernels as the GPU would.
Builds land in Triton's cache (~/.triton/cache), keyed on the kernel source, so a warm cache never hides
an edit. About 60 distinct builds: cold 30-55 s on 2 cores, warm about 10 s.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest

from sage_fast.triton import RUNGS

from compile_specs import ARCHS, SMEM_LIMIT, case_id

HERE = Path(__file__).parent

HEAD_DIMS = (64, 128)

# Programs of 4 warps that share an sm90 SM (65536 registers, 227 KB of shared memory) at the tiles' register caps:
# (rung, head_dim) -> programs. The kernels are latency-bound, so a program per SM fewer costs 10-25 %: without its
# cap the compiler gave rung 3's causal head_dim-64 build 177 registers (two programs; its non-causal build 167), and
# its causal head_dim-32 build 168 (three; non-causal 128).
PROGRAMS_PER_SM = {
    ("2-int8-qk", 32): 4, ("3-fused-quant", 32): 4, ("5-tma", 32): 4,
    ("2-int8-qk", 64): 3, ("3-fused-quant", 64): 3, ("5-tma", 64): 4, ("5-tma", 128): 3,
}  # fmt: skip


def claimed(rung) -> list[int]:
    return [arch for arch in ARCHS if arch >= rung.min_arch]


CASES = [
    {"rung": rung.name, "head_dim": head_dim, "is_causal": causal, "archs": claimed(rung)}
    for rung in RUNGS
    for head_dim in HEAD_DIMS
    for causal in (False, True)
] + [  # awkward sizes: no length divisible by 16, head_dim padded to the HEAD_DIM tile
    {"rung": rung.name, "head_dim": 96, "is_causal": True, "seq": 77, "archs": claimed(rung)} for rung in RUNGS
] + [  # the per-head K/V quantization at its largest tiles (fp32 inputs, head_dim 256) must fit shared memory
    # (rung 3's own attention tiles at head_dim 256 do not fit sm89's 99 KB: a known limit, docs/notes.md)
    {"rung": "3-fused-quant", "head_dim": 256, "is_causal": False, "seq": 300, "dtype": "float32", "per_head": True,
     "archs": [80, 90]},
    {"rung": "5-tma", "head_dim": 256, "is_causal": False, "seq": 300, "dtype": "float32", "per_head": True,
     "archs": [89, 90]},
    # ... and so must the two K/V launches (the statistics loop's three stages took 131 KB for fp32, over sm89's 99)
    {"rung": "3-fused-quant", "head_dim": 256, "is_causal": False, "seq": 300, "dtype": "float32", "per_head": False,
     "archs": [80, 90]},
    {"rung": "5-tma", "head_dim": 256, "is_causal": False, "seq": 300, "dtype": "float32", "per_head": False,
     "archs": [89, 90]},
] + [  # head_dim 256 with a mask on every path (causal): the attention kernel's largest register need
    {"rung": "2-int8-qk", "head_dim": 256, "is_causal": True, "archs": [90]},
] + [  # the call most users make (no log-sum-exp) on the GPU the tiles were tuned for: see test_programs_per_sm
    {"rung": rung, "head_dim": head_dim, "is_causal": causal, "return_lse": False, "archs": [90]}
    for (rung, head_dim) in PROGRAMS_PER_SM
    for causal in (False, True)
] + [  # a per-query mask: one more tile per pipeline stage in shared memory (see test_full_mask_does_not_spill)
    {"rung": "5-tma", "head_dim": 128, "is_causal": causal, "return_lse": False, "mask": "full", "archs": [90]}
    for causal in (False, True)
]
# The highest arch below each rung's min_arch, once: it must not build. Not for the Gluon rungs (6, 7): their
# lowering for sm89 does not fail with an error but aborts the compiling process ("LLVM ERROR: Cannot select:
# setmaxnreg"), so ``attn_gluon.launch`` refuses a GPU other than sm90 before compiling anything.
UNCLAIMED = [
    {"rung": rung.name, "head_dim": 128, "is_causal": False, "archs": [max(a for a in ARCHS if a < rung.min_arch)]}
    for rung in RUNGS
    if any(a < rung.min_arch for a in ARCHS) and rung.interpretable
]


# Tensor-core instruction, as PTX spells its types (D accumulator, A, B): what each rung's two
# products must compile to. ``mma.sync`` (sm80/sm89) also names C, equal to D here.
@dataclass(frozen=True)
class Product:
    d: str
    a: str

    def pattern(self, arch: int) -> re.Pattern:
        if arch >= 90:
            return re.compile(rf"\bwgmma\.mma_async\.sync\.aligned\.m64n\d+k\d+\.{self.d}\.{self.a}\.{self.a}\b")
        types = rf"{self.d}\.{self.a}\.{self.a}\.{self.d}"
        return re.compile(rf"\bmma\.sync\.aligned\.m16n8k\d+\.row\.col(?:\.satfinite)?\.{types}\b")


F16_F32 = Product("f32", "f16")  # fp16 in, fp32 accumulator
S8_S32 = Product("s32", "s8")  # int8 in, int32 accumulator
F16_F16 = Product("f16", "f16")  # fp16 in, fp16 accumulator (SageAttention v1's P·V)
E4M3_F32 = Product("f32", "e4m3")  # fp8 e4m3 in, fp32 accumulator (reduced-precision inside the MMA)

# rung -> (Q·Kᵀ, P·V, whether P·V must start from zero: the two-level accumulation)
PRODUCTS = {
    "1-flash-fp16": (F16_F32, F16_F32, False),
    "2-int8-qk": (S8_S32, F16_F16, True),
    "3-fused-quant": (S8_S32, F16_F16, True),
    "4-fp8-pv": (S8_S32, E4M3_F32, True),
    "5-tma": (S8_S32, E4M3_F32, True),
    "6-gluon": (S8_S32, E4M3_F32, True),
    "7-gluon-fp16": (S8_S32, F16_F16, True),
}


@dataclass
class Build:
    """One kernel launch of one case built for one arch (see compile_specs.build_one)."""

    record: dict
    out_dir: Path

    @property
    def error(self) -> str | None:
        return self.record.get("error")

    @cached_property
    def ptx(self) -> str:
        return (self.out_dir / f"{self.record['stem']}.ptx").read_text()

    @cached_property
    def ttgir(self) -> str:
        return (self.out_dir / f"{self.record['stem']}.ttgir").read_text()

    def __str__(self):
        r = self.record
        return f"{r['case']} sm{r['arch']} {r.get('kernel')} {r.get('constexprs', '')} {r.get('options', '')}"


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """{(case id, arch): [Build, ...]} for CASES and UNCLAIMED, built in one subprocess."""
    out_dir = tmp_path_factory.mktemp("triton-builds")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "compile_specs.py"), str(out_dir)],
        input=json.dumps(CASES + UNCLAIMED), env=env, cwd=HERE.parent, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, f"compile_specs.py failed:\n{proc.stderr[-5000:]}"
    table = {}
    for record in json.loads((out_dir / "index.json").read_text()):
        assert record["arch"] is not None, f"{record['case']}: recording its launches failed:\n{record['error']}"
        table.setdefault((record["case"], record["arch"]), []).append(Build(record, out_dir))
    return table


def claimed_builds():
    return [
        pytest.param(case, arch, id=f"{case_id(case)}-sm{arch}")
        for case in CASES
        for arch in case["archs"]
    ]  # fmt: skip


def attention_build(builds, case, arch) -> Build:
    """The launch that multiplies matrices: the attention kernel (the others quantize)."""
    launched = builds[case_id(case), arch]
    for build in launched:
        if build.error:
            pytest.fail(f"{build} does not build:\n{build.error}", pytrace=False)
    with_dots = [b for b in launched if re.search(r"\b(tt\.dot|ttng\.warp_group_dot) ", b.ttgir)]
    if len(with_dots) != 1:
        pytest.fail(f"expected one launch with matrix products, got {[str(b) for b in with_dots]}", pytrace=False)
    return with_dots[0]


def test_products_cover_the_ladder():
    assert {rung.name for rung in RUNGS} <= set(PRODUCTS), "list the new rung's tensor-core products in PRODUCTS"


@pytest.mark.parametrize("case, arch", claimed_builds())
def test_builds_and_fits_shared_memory(builds, case, arch):
    launched = builds[case_id(case), arch]
    assert launched, "the rung launched no kernel"
    for build in launched:
        if build.error:
            pytest.fail(f"{build} does not build:\n{build.error}", pytrace=False)
        shared = build.record["shared"]
        if shared > SMEM_LIMIT[arch]:
            pytest.fail(f"{build} needs {shared} B of shared memory, sm{arch} allows {SMEM_LIMIT[arch]}")


@pytest.mark.parametrize("case, arch", claimed_builds())
def test_uses_tensor_cores(builds, case, arch):
    build = attention_build(builds, case, arch)
    qk, pv, _ = PRODUCTS[case["rung"]]
    found = sorted(set(re.findall(r"\b(?:wgmma\.mma_async|mma\.sync)\.\S+?(?=[ \t])", build.ptx)))
    for name, product in (("Q·Kᵀ", qk), ("P·V", pv)):
        pattern = product.pattern(arch)
        assert pattern.search(build.ptx), f"{build}: no {name} instruction matching {pattern.pattern}; found {found}"


# A dot in TTGIR, e.g.
#   %pv = ttng.warp_group_dot %a, %b, %cst_6 {inputPrecision = 0 : i32, ...} : tensor<128x64xf8E4M3FN, ...> * ...
#   %pv = tt.dot %a, %b, %acc, inputPrecision = tf32 : tensor<128x64xf8E4M3FN, ...> * ...
# operands: A, B, the accumulator C and, for warp_group_dot, an optional i1 useC.
DOT = re.compile(
    r"^\s*%\S+ = (?:tt\.dot|ttng\.warp_group_dot) (?P<operands>%[\w#.]+(?:, %[\w#.]+)*)(?P<rest>.*)$", re.M
)
A_ELEMENT = re.compile(r": (?:tensor|!ttg\.memdesc)<(?:\d+x)+(\w+)")


def defining_line(ttgir: str, value: str) -> str:
    match = re.search(rf"^\s*{re.escape(value.split('#')[0])}(?::\d+)? = .*$", ttgir, re.M)
    return match.group(0).strip() if match else f"(no definition of {value})"


def starts_from_zero(ttgir: str, operands: list[str]) -> bool:
    """The dot's accumulator is a zero constant, or its useC flag is a false constant."""
    zero = re.compile(r"= arith\.constant dense<(?:0|0\.000000e\+00)> ")
    if zero.search(defining_line(ttgir, operands[2])):
        return True
    return len(operands) > 3 and "arith.constant false" in defining_line(ttgir, operands[3])


# Triton 3.6's combine patterns (lib/Dialect/Triton/Transforms/Combine.td) fold `d + dot(a, b, 0)` when the
# dot has one use and, for floats, maxNumImpreciseAcc == 0. Triton gives fp8 dots 2**30 on sm90 only, so
# there it cannot fire; on sm89 (and for any fp32-accumulated dot) nothing in the compiler prevents it.
@pytest.mark.parametrize("case, arch", [p for p in claimed_builds() if PRODUCTS[p.values[0]["rung"]][2]])
def test_pv_accumulates_in_two_levels(builds, case, arch):
    build = attention_build(builds, case, arch)
    pv_dots = [m for m in DOT.finditer(build.ttgir) if A_ELEMENT.search(m["rest"]).group(1) != "i8"]
    # One P·V dot per key loop (the unmasked hot loop and the masked diagonal/tail loop).
    assert pv_dots, f"{build}: no P·V dot (A not int8) found"
    for dot in pv_dots:
        operands = [op.strip() for op in dot["operands"].split(",")]
        if not starts_from_zero(build.ttgir, operands):
            pytest.fail(
                f"{build}: a P·V dot does not start from zero, so the running fp32 total goes through the "
                f"tensor core's reduced-precision accumulation (Triton folded `acc * alpha + dot(p, v)` into "
                f"`dot(p, v, acc * alpha)`):\n  {dot.group(0).strip()[:300]}\n"
                f"  accumulator: {defining_line(build.ttgir, operands[2])[:300]}",
                pytrace=False,
            )


@pytest.mark.parametrize("case", UNCLAIMED, ids=case_id)
def test_refuses_arch_below_min_arch(builds, case):
    (arch,) = case["archs"]
    failures = [b for b in builds[case_id(case), arch] if b.error]
    assert failures, f"{case['rung']} builds for sm{arch}: lower its min_arch or find why it should not"
    reasons = [b.error for b in failures]
    tails = [r[-600:] for r in reasons]
    assert any("fp8e4nv" in reason for reason in reasons), f"refused, but not for lack of e4m3: {tails}"


# Rungs whose K̂/V̂ᵀ tiles come through tensor descriptors: on sm90 the key loop must copy them with
# the TMA unit (cp.async.bulk.tensor), not with per-thread cp.async (what a lowering fallback emits).
TMA_RUNGS = {rung.name for rung in RUNGS if rung.name.startswith(("5", "6", "7"))}


@pytest.mark.parametrize("case, arch", [p for p in claimed_builds() if p.values[0]["rung"] in TMA_RUNGS])
def test_tma_copies_key_and_value_tiles(builds, case, arch):
    build = attention_build(builds, case, arch)
    bulk = len(re.findall(r"\bcp\.async\.bulk\.tensor\.[23]d\.", build.ptx))  # rung 7 reads V in 3-d
    if arch >= 90:
        # K̂ and V̂ᵀ, in the unmasked and the masked loop (the pipeliner may peel more copies).
        assert bulk >= 4, f"{build}: {bulk} TMA tensor copies, expected K and V in both key loops"
    else:
        assert bulk == 0, f"{build}: sm{arch} has no TMA unit but the PTX copies with cp.async.bulk.tensor"


# Rung 6's reason to exist: FA3's schedule. Within a consumer warpgroup, S_t and PV_{t-1} are in flight
# together and the wait for S_t leaves one wgmma group outstanding (PV_{t-1}, which runs during the
# softmax); ptxas undoes such overlap silently when it cannot prove the registers safe ("wgmma.mma_async
# instructions are serialized", C7514). Across warpgroups, the partitions exist and trade registers:
# the producer gives some up (setmaxnreg.dec), the consumers take them (setmaxnreg.inc).
OVERLAP_RUNGS = {rung.name for rung in RUNGS if rung.name.startswith(("6", "7"))}


@pytest.mark.parametrize("case, arch", [p for p in claimed_builds() if p.values[0]["rung"] in OVERLAP_RUNGS])
def test_softmax_overlaps_the_pv_wgmma(builds, case, arch):
    from compile_specs import ptxas_usage

    build = attention_build(builds, case, arch)
    waits_one = re.search(r"\bwgmma\.wait_group\.sync\.aligned 1;", build.ptx)
    assert waits_one, f"{build}: no wgmma wait leaves one group in flight"
    usage = ptxas_usage(build.ptx, arch)
    assert not usage["serialized"], f"{build}: ptxas serialized the wgmmas: {usage['serialized']}"
    regs = {op: sorted(set(map(int, re.findall(rf"setmaxnreg\.{op}\.sync\.aligned\.u32\s+(\d+);", build.ptx))))
            for op in ("inc", "dec")}  # fmt: skip
    assert regs["inc"] and regs["dec"], f"{build}: no register hand-over between partitions (setmaxnreg): {regs}"


# At head_dim 256 four warps hold a [64, 256] fp32 accumulator and a [64, 128] score tile per warpgroup: every
# Triton rung's build took 255 registers and spilled 1-1.7 KB per thread. The fp16-P·V kernel (rungs 2-3) runs eight
# warps there (``Tiles.head_dim_warps``: +29-45 % on the H200), which split both tiles by columns, and on sm90 it
# must not spill. The fp8 rungs keep four: eight removed their spills too but ran 2-8 % slower (docs/notes.md).
FP16_PV_RUNGS = {"2-int8-qk", "3-fused-quant"}


def unspilled_usage(build, arch) -> dict:
    """ptxas's registers and spills for ``build`` (compile_specs.ptxas_usage), failing if it spills."""
    from compile_specs import ptxas_usage

    usage = ptxas_usage(build.ptx, arch)
    assert usage["spill_stores"] == 0, f"{build}: {usage['n_regs']} registers, {usage['spill_stores']} B spilled"
    return usage


@pytest.mark.parametrize(
    "case, arch",
    [p for p in claimed_builds() if p.values[0]["rung"] in FP16_PV_RUNGS and p.values[0]["head_dim"] == 256
     and p.values[1] == 90],
)  # fmt: skip
def test_head_dim_256_does_not_spill(builds, case, arch):
    unspilled_usage(attention_build(builds, case, arch), arch)


@pytest.mark.parametrize(
    "case, arch",
    [p for p in claimed_builds() if (p.values[0]["rung"], p.values[0]["head_dim"]) in PROGRAMS_PER_SM
     and p.values[1] == 90 and p.values[0].get("seq", 256) == 256 and not p.values[0].get("mask")],
)  # fmt: skip
def test_programs_per_sm(builds, case, arch):
    build = attention_build(builds, case, arch)
    usage = unspilled_usage(build, arch)
    allocated = -(-usage["n_regs"] // 8) * 8  # registers are handed out in steps of eight per thread
    threads = 32 * build.record["options"]["num_warps"]
    programs = min(65536 // (allocated * threads), SMEM_LIMIT[arch] // build.record["shared"])
    want = PROGRAMS_PER_SM[case["rung"], case["head_dim"]]
    assert programs >= want, (
        f"{build}: {usage['n_regs']} registers, {build.record['shared']} B shared: {programs} per SM"
    )


# The two K/V launches at head_dim 256 hold [64 or 128, 256] tiles (the statistics as fp64 sums): with four warps
# they took 255 registers and spilled 444-888 bytes per thread on sm90; they run eight there (quant.kv_warps).
@pytest.mark.parametrize(
    "case, arch",
    [p for p in claimed_builds() if p.values[0]["head_dim"] == 256 and p.values[0].get("per_head") is False
     and p.values[1] == 90],
)  # fmt: skip
def test_kv_launches_at_head_dim_256_do_not_spill(builds, case, arch):
    kv_kernels = ("kv_stats_kernel", "quantize_kv_kernel")
    kv_launches = [b for b in builds[case_id(case), arch] if b.record["kernel"] in kv_kernels]
    assert len(kv_launches) == 2, [str(b) for b in builds[case_id(case), arch]]
    for build in kv_launches:
        unspilled_usage(build, arch)


# With a per-query mask rung 5's head_dim-128 program needs 91 KB of shared memory (a mask tile per stage), so two
# programs share an SM whatever its registers; under the 168-register cap that buys the third program elsewhere,
# this build spilled 600-750 bytes per thread and ran 15-23 % slower (H200). attn_int8.launch drops the cap there.
@pytest.mark.parametrize(
    "case, arch", [p for p in claimed_builds() if p.values[0].get("mask") == "full" and p.values[1] == 90]
)
def test_full_mask_does_not_spill(builds, case, arch):
    unspilled_usage(attention_build(builds, case, arch), arch)


# Rungs 4 and 5 hand P to the fp8 P·V wgmma in registers. V̂ᵀ's keys are stored in the order of the
# wgmma's 8-bit A operand (common.operand_key_order) and P's keys are relabelled alike, so each thread
# already holds its operand: converting P must not move bytes between threads or within registers.
# Before the relabelling the sm90 PTX had 32 `shfl` (besides the row max and sum's) and 32 `prmt` for it.
REGISTER_P_RUNGS = {"4-fp8-pv", "5-tma"}


@pytest.mark.parametrize(
    "case, arch", [p for p in claimed_builds() if p.values[0]["rung"] in REGISTER_P_RUNGS and p.values[1] >= 90]
)
def test_p_reaches_the_fp8_operand_without_moving(builds, case, arch):
    build = attention_build(builds, case, arch)
    permutes = len(re.findall(r"\bprmt\.b32\b", build.ptx))
    assert permutes == 0, f"{build}: {permutes} byte permutes: P is rearranged on its way to the P·V operand"
