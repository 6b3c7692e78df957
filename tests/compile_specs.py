"""Build every Triton rung's kernels for GPUs this machine may not have, as the JIT would build them on one.

``python tests/compile_specs.py OUT_DIR < cases.json`` calls each case's ``rung.forward`` on small CPU
tensors with ``JITFunction.run`` replaced by a recorder, so no kernel runs: what is recorded is
every launch exactly as the rung's host code issues it (kernel, arguments, num_warps, num_stages).
Each launch is then specialized the way the JIT specializes it on a GPU (16-byte-aligned pointers and
ints divisible by 16 get ``tt.divisibility``; ints equal to 1 become constants) and compiled with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` for each arch asked. Why not a
hand-written signature: without the divisibility hints Triton cannot use cp.async on the 8-bit tiles,
does not software-pipeline the K/V loads, and the build (its shared memory, its registers) is not the
one that runs; and a hand-written signature goes stale when a kernel's arguments change.

A case is {"rung": RUNGS name, "head_dim": int, "is_causal": bool, "archs": [80, ...], "seq": 256}: fp16
q, k, v [2, 2, seq, head_dim] (optional "dtype": a torch dtype's name; "per_head": forces how K and V are
quantized, ``quant.quantize_kv(per_head=...)``; "return_lse": False builds the call without the log-sum-exp,
the kernel most calls run, which the compiler may allocate differently; True by default; "mask": "row" passes a
key-padding mask [2, 1, 1, seq], "full" a per-query one [2, 2, seq, seq]). Launches that specialize identically (rungs 2 and 3 share their attention
kernel; quantization ignores causality) are built once. Writes ``OUT_DIR/<stem>.ptx`` and ``.ttgir`` per
build and ``OUT_DIR/index.json``: one record per (case, arch, launch) with the kernel's name, its
constexprs, the launch options, its ``stem`` and shared memory or, for a build that failed, the error.
Must run with ``TRITON_INTERPRET`` unset (see tests/test_triton_compile.py). ``--ptxas`` also runs the
ptxas Triton ships with ``-v`` on each PTX and records registers and spill bytes
(``CompiledKernel.n_regs`` is only filled in by a GPU driver).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import traceback

ARCHS = (80, 89, 90)
# Largest dynamic shared memory one block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin):
# A100 163 KB, Ada (sm89) 99 KB, H100/H200 227 KB.
SMEM_LIMIT = {80: 166912, 89: 101376, 90: 232448}
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def case_id(case: dict) -> str:
    """``4-fp8-pv-d128-causal`` for {"rung": "4-fp8-pv", "head_dim": 128, "is_causal": True, ...}."""
    tail = "-causal" if case["is_causal"] else ""
    seq = "" if case.get("seq", 256) == 256 else f"-n{case['seq']}"
    dtype = "" if case.get("dtype", "float16") == "float16" else f"-{case['dtype']}"
    per_head = "" if case.get("per_head") is None else f"-per-head{int(case['per_head'])}"
    no_lse = "" if case.get("return_lse", True) else "-no-lse"
    mask = f"-{case['mask']}-mask" if case.get("mask") else ""
    return f"{case['rung']}-d{case['head_dim']}{seq}{dtype}{per_head}{no_lse}{mask}{tail}"


def record_launches(case: dict) -> list[tuple]:
    """The (kernel, args, kwargs) of every launch ``rung.forward`` makes for ``case``, on CPU tensors (of
    ``case["dtype"]``, fp16 by default; ``case["per_head"]``, if given, forces ``quantize_kv``'s choice)."""
    import functools

    import torch
    from triton.runtime.jit import JITFunction

    from sage_fast.triton import RUNGS, quant, rung3_fused_quant

    launches = []

    def record(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))

    rung = next(r for r in RUNGS if r.name == case["rung"])
    batch, heads, seq, head_dim = 2, 2, case.get("seq", 256), case["head_dim"]
    gen = torch.Generator().manual_seed(0)
    dtype = getattr(torch, case.get("dtype", "float16"))
    q, k, v = (torch.randn(batch, heads, seq, head_dim, generator=gen).to(dtype) for _ in range(3))
    original = JITFunction.run
    JITFunction.run = record
    if case.get("per_head") is not None:
        rung3_fused_quant.quantize_kv = functools.partial(quant.quantize_kv, per_head=case["per_head"])
    try:
        masks = {"row": (batch, 1, 1, seq), "full": (batch, heads, seq, seq)}
        mask = {"attn_mask": torch.ones(masks[case["mask"]], dtype=torch.bool)} if case.get("mask") else {}
        rung.forward(q, k, v, is_causal=case["is_causal"], return_lse=case.get("return_lse", True), **mask)
    finally:
        JITFunction.run = original
        rung3_fused_quant.quantize_kv = quant.quantize_kv
    return launches


def specialize(kernel, args, kwargs, arch: int) -> dict:
    """What ``JITFunction.run`` would compile this launch as on ``sm{arch}`` (Triton 3.6's own binder)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    _, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    launch_options = {k: kwargs[k] for k in LAUNCH_OPTIONS if k in kwargs}
    return {"kernel": kernel, "arch": arch, "signature": signature, "constexprs": constexprs, "attrs": attrs,
            "options": launch_options}  # fmt: skip


def spec_key(spec: dict) -> str:
    """Launches with equal keys compile to the same binary (rungs share kernels; quantization ignores causal)."""
    fields = ("arch", "signature", "constexprs", "attrs", "options")
    return repr((spec["kernel"].__module__, spec["kernel"].__name__, *(spec[f] for f in fields)))


def build(spec: dict):
    """``triton.compile`` one specialized launch."""
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.experimental.gluon._runtime import GluonASTSource

    source = GluonASTSource if spec["kernel"].is_gluon() else ASTSource
    src = source(spec["kernel"], spec["signature"], spec["constexprs"], spec["attrs"])
    return triton_compile(src, target=GPUTarget("cuda", spec["arch"], 32), options=spec["options"])


def ptxas_usage(ptx: str, arch: int) -> dict:
    """Registers, spill bytes and wgmma-serialization warnings from ``ptxas -v`` (the ptxas Triton itself uses)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [get_ptxas(arch).path, "-v", f"--gpu-name={sm_arch_from_capability(arch)}", src, "-o", src + ".o"]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    serialized = re.findall(r"^.*wgmma\.mma_async instructions are serialized.*$", log, re.M)
    return {"n_regs": int(regs.group(1)), "spill_stores": int(spills.group(1)), "spill_loads": int(spills.group(2)),
            "serialized": serialized}  # fmt: skip


_SPECS: list[dict] = []  # every distinct build, in a fixed order; each worker process collects its own copy


def collect(cases: list[dict]) -> tuple[list[dict], list[dict]]:
    """(records, specs): one record per (case, arch, launch) pointing at ``specs[record["build"]]``."""
    records, unique, specs = [], {}, []
    for case in cases:
        try:
            launches = record_launches(case)
        except Exception:  # noqa: BLE001
            records.append({"case": case_id(case), "arch": None, "error": traceback.format_exc()})
            continue
        for arch in case["archs"]:
            for n, (kernel, args, kwargs) in enumerate(launches):
                spec = specialize(kernel, args, kwargs, arch)
                key = spec_key(spec)
                if key not in unique:
                    unique[key] = len(specs)
                    specs.append(spec)
                names = {(kernel.arg_names.index(name),): name for name in kernel.arg_names}
                records.append({
                    "case": case_id(case), "rung": case["rung"], "arch": arch, "launch": n, "kernel": kernel.__name__,
                    "constexprs": {names[path]: value for path, value in spec["constexprs"].items()},
                    "options": spec["options"], "build": unique[key],
                })  # fmt: skip
    return records, specs


def init_worker(cases: list[dict]) -> None:
    """A fresh (spawned) worker records the same launches, so its _SPECS[i] is the parent's."""
    _SPECS[:] = collect(cases)[1]


def build_one(job: tuple[int, str, bool]) -> dict:
    """Compile _SPECS[i], write its PTX and TTGIR as ``OUT_DIR/<stem>.*`` (runs in a worker process)."""
    i, out_dir, with_ptxas = job
    spec = _SPECS[i]
    with tempfile.TemporaryFile(mode="w+") as log:
        # MLIR prints its diagnostics (the reason a build is refused) to fd 2, not into the exception.
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            compiled = build(spec)
        except Exception as e:  # noqa: BLE001 - reported by the test; sm80 has no e4m3, for one
            os.dup2(saved, 2)
            log.seek(0)
            return {"error": f"{type(e).__name__}: {e}\n{log.read()[-2000:]}"}
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    stem = f"{i}-sm{spec['arch']}-{spec['kernel'].__name__}"
    for ext in ("ptx", "ttgir"):
        with open(os.path.join(out_dir, f"{stem}.{ext}"), "w") as f:
            f.write(compiled.asm[ext])
    result = {"stem": stem, "shared": compiled.metadata.shared}
    if with_ptxas:
        result.update(ptxas_usage(compiled.asm["ptx"], spec["arch"]))
    return result


def main(argv: list[str]) -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("compile_specs: TRITON_INTERPRET must be unset: interpreted kernels cannot be compiled")
    out_dir = argv[0]
    with_ptxas = "--ptxas" in argv
    cases = json.load(sys.stdin)
    os.makedirs(out_dir, exist_ok=True)
    records, specs = collect(cases)
    jobs = [(i, out_dir, with_ptxas) for i in range(len(specs))]
    # spawn, not fork: recording the launches runs torch ops (and may start their threads) in this process, and a
    # forked worker can inherit a lock some thread held and wait on it forever (seen once in CI).
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with multiprocessing.get_context("spawn").Pool(workers, initializer=init_worker, initargs=(cases,)) as pool:
        # A worker that dies (LLVM aborts on some unsupported targets) would leave map() waiting forever.
        results = pool.map_async(build_one, jobs, chunksize=1).get(timeout=1200)
    for record in records:
        if "build" in record:
            record.update(results[record["build"]])
    with open(os.path.join(out_dir, "index.json"), "w") as f:
        json.dump(records, f, indent=1, default=str)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(sys.argv[1:])
