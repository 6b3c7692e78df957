"""Benchmark the Numba ladder on a CUDA GPU: TOPS per rung, speedup over the previous rung, fraction of the FP32 peak.

    python -m sage_fast.numba.bench [--out DIR]

TOPS = 4·B·H·N²·D / time of one whole ``forward`` call (host-side conversion and, for rung 4, the
host quantization included), non-causal, fp16 Gaussian inputs [1, 8, N, D] with K shifted by 3,
head_dim 64 and 128, N = 1k..8k; median of a few calls timed with CUDA events after one warm-up call
(which compiles). A rung whose next size would take over ~6 s a call stops there. The CUDA-core peak comes
from an FMA microbenchmark in the same run (8 independent fp32 FMA chains per thread, unrolled), counted as
2 operations per FMA, like the attention's multiply-adds. Writes ``bench-numba.json`` (card,
versions, date, every number) into --out (default $OUT, else the current directory), prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
from pathlib import Path

import numba
import numpy as np
import torch
from numba import cuda

FMA_ITERS = 4096
FMA_CHAINS = 8
FMA_UNROLL = 16
FMA_THREADS = 256


@cuda.jit
def fma_kernel(out, a, b):
    # Every operand float32: an int or Python-float constant (x0 + 1) would make a chain float64, and Hopper's
    # fp64 FMAs run at half the fp32 rate (an early version did that to 7 of its 8 chains). And the FMAs in an
    # inner loop of constant length, which the compiler unrolls whole: Numba's 64-bit loop bookkeeping, which
    # ptxas otherwise repeats in every unrolled copy, took 5 of every 13 instructions. A GPU test checks the PTX.
    one = np.float32(1.0)
    x0 = np.float32(cuda.threadIdx.x)
    x1 = x0 + one
    x2 = x1 + one
    x3 = x2 + one
    x4 = x3 + one
    x5 = x4 + one
    x6 = x5 + one
    x7 = x6 + one
    for _ in range(FMA_ITERS // FMA_UNROLL):
        for _ in range(FMA_UNROLL):  # 8 independent chains hide the FMA latency
            x0 = cuda.fma(x0, a, b)
            x1 = cuda.fma(x1, a, b)
            x2 = cuda.fma(x2, a, b)
            x3 = cuda.fma(x3, a, b)
            x4 = cuda.fma(x4, a, b)
            x5 = cuda.fma(x5, a, b)
            x6 = cuda.fma(x6, a, b)
            x7 = cuda.fma(x7, a, b)
    out[cuda.grid(1)] = x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7  # keeps the chains alive


def time_ms(fn, reps):
    """Median milliseconds of ``reps`` calls, each bracketed by CUDA events."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def fp32_peak_tflops():
    """Measured FP32 CUDA-core peak: 2 · FMAs per second, in 10^12."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    blocks = sms * 16
    out = torch.empty(blocks * FMA_THREADS, device="cuda")
    arr = cuda.as_cuda_array(out)
    a, b = np.float32(0.9999), np.float32(0.0001)

    def launch():
        fma_kernel[blocks, FMA_THREADS](arr, a, b)

    launch()
    torch.cuda.synchronize()
    ms = time_ms(launch, 5)
    return 2 * FMA_CHAINS * FMA_ITERS * blocks * FMA_THREADS / (ms * 1e-3) / 1e12


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def tops(batch, heads, n, head_dim, ms):
    return 4 * batch * heads * n * n * head_dim / (ms * 1e-3) / 1e12


def render(data) -> str:
    """The markdown of docs/benchmarks-numba.md from a bench-numba.json: every number from the JSON."""
    lines = [
        "# Benchmarks: the Numba ladder",
        "",
        f"Measured on **{data['card']}** ({data['date'][:10]}), torch {data['torch']}, numba {data['numba']}, "
        f"numba-cuda {data['numba_cuda']}, with `python -m sage_fast.numba.bench` "
        "(raw numbers: `docs/results/bench-numba-*.json`).",
        f"{data['notes']}. FP32 CUDA-core peak measured in the same run by an FMA microbenchmark: "
        f"{data['fp32_peak_tflops']:.1f} TFLOPS (2 operations per FMA).",
        "",
    ]
    for head_dim in sorted({r["head_dim"] for r in data["results"]}):
        lines += [f"## head_dim {head_dim}", "", "| rung | N | ms | TOPS | of FP32 peak | vs previous rung |", "|---|---|---|---|---|---|"]
        for r in data["results"]:
            if r["head_dim"] == head_dim:
                speedup = r["speedup_over_previous_rung"]
                lines.append(
                    f"| {r['rung']} | {r['n']} | {r['ms']:.2f} | {r['tops']:.2f} | {100 * r['fraction_of_fp32_peak']:.1f} % | "
                    + ("–" if speedup is None else f"{speedup:.2f}×") + " |"
                )
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--sizes", default="1024,2048,4096,8192")
    parser.add_argument("--report", metavar="JSON", help="print the markdown page of a bench-numba.json and exit")
    args = parser.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            print(render(json.load(f)))
        return 0
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure (the simulator is for correctness only)")
        return 0
    from . import RUNGS, max_head_dim

    peak = fp32_peak_tflops()
    card = torch.cuda.get_device_name(0)
    print(f"{card}: measured FP32 CUDA-core peak {peak:.1f} TFLOPS", flush=True)
    batch, heads = 1, 8
    results = []
    for head_dim in (64, 128):
        prev = {}
        for rung in RUNGS:
            if head_dim > max_head_dim(rung):
                continue
            for n in map(int, args.sizes.split(",")):
                gen = torch.Generator(device="cuda").manual_seed(n + head_dim)
                q = torch.randn(batch, heads, n, head_dim, device="cuda", generator=gen).half()
                k = (torch.randn(batch, heads, n, head_dim, device="cuda", generator=gen) + 3).half()
                v = torch.randn(batch, heads, n, head_dim, device="cuda", generator=gen).half()

                def call(rung=rung, q=q, k=k, v=v):
                    return rung.forward(q, k, v)

                first = time_ms(call, 1)  # compiles on the first size
                second = time_ms(call, 1)
                ms = time_ms(call, max(1, min(5, int(2000 / second)))) if second < 2000 else second
                t = tops(batch, heads, n, head_dim, ms)
                row = {
                    "rung": rung.name, "head_dim": head_dim, "n": n, "batch": batch, "heads": heads, "ms": ms,
                    "tops": t, "fraction_of_fp32_peak": t / peak, "first_call_ms": first,
                }  # fmt: skip
                below = prev.get(n)
                row["speedup_over_previous_rung"] = None if below is None else below / ms
                results.append(row)
                print(
                    f"hd{head_dim:<4} N={n:<5} {rung.name:<15} {ms:9.2f} ms {t:7.3f} TOPS "
                    f"{100 * t / peak:5.1f}% of peak"
                    + ("" if below is None else f"  x{below / ms:.2f} vs previous rung"),
                    flush=True,
                )
                if 4 * ms > 6000:  # attention is quadratic: the next N would take over ~6 s a call
                    print(f"  {rung.name}: {ms / 1000:.1f} s per call, skipping larger N", flush=True)
                    break
            # the next rung compares with this one at every N it measured
            prev = {r["n"]: r["ms"] for r in results if r["rung"] == rung.name and r["head_dim"] == head_dim}
    report = {
        "card": card,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "numba_cuda": package_version("numba-cuda"),
        "python": platform.python_version(),
        "fp32_peak_tflops": peak,
        "results": results,
        "notes": "TOPS = 4·B·H·N²·D / (one whole forward call), non-causal, fp16 inputs, B=1, H=8",
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / "bench-numba.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
