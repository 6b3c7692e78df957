"""Benchmark: every Triton rung, the whole ``sageattn`` call, kernel-only, torch SDPA and PyPI sageattention 1.0.6.

    python -m sage_fast.bench [--quick | --sweep | --breakdown | --decode] [--out DIR]

TOPS = 4·B·H·N²·D / time (halved for causal), inputs fp16 Gaussian [B, H, N, D] with
B·N = 16k tokens and H = 32, timed with ``triton.testing.do_bench`` (median). Accuracy
columns compare with an fp32 SDPA of the same inputs (cosine similarity, relative L1).
Writes ``bench.json`` (card, versions, date, every number) and ``bench.png`` into --out,
prints a table. Without a GPU it says so and runs a small CPU sanity pass.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
from pathlib import Path

import torch
import torch.nn.functional as F

import sage_ref

SDPA_BACKENDS = ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION")


def tops(batch, heads, n, head_dim, causal, ms):
    """4·B·H·N²·D operations (half for causal) per second, in 10^12."""
    flops = 4 * batch * heads * n * n * head_dim * (0.5 if causal else 1.0)
    return flops / (ms * 1e-3) / 1e12


def peer_106():
    """PyPI sageattention 1.0.6's sageattn, or None when it is not installed."""
    try:
        from sageattention import sageattn  # type: ignore[import-not-found]
    except ImportError:
        return None
    return sageattn


def implementations(causal):
    """name -> fn(q, k, v) for everything timed; whole calls, quantization included."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sage_fast.triton import RUNGS

    impls = {}
    for backend in SDPA_BACKENDS:

        def sdpa(q, k, v, backend=getattr(SDPBackend, backend)):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        impls["sdpa-" + backend.split("_")[0].lower()] = sdpa
    for rung in RUNGS:
        impls["rung" + rung.name] = lambda q, k, v, rung=rung: rung.forward(q, k, v, is_causal=causal)
    try:
        from sage_fast import sageattn
    except ImportError:
        sageattn = None
    if sageattn is not None:
        impls["sageattn-fp16"] = lambda q, k, v: sageattn(q, k, v, is_causal=causal, pv="fp16")
        impls["sageattn-fp8"] = lambda q, k, v: sageattn(q, k, v, is_causal=causal, pv="fp8")
    old = peer_106()
    if old is not None:
        # 1.0.6 subtracts K's mean in place: give it a copy (its cost is subtracted below).
        impls["sageattention-1.0.6"] = lambda q, k, v: old(q, k.clone(), v, is_causal=causal)
    return impls


def kernel_only(q, k, v, causal, v_fp8, tiles=None):
    """The attention kernel of rungs 3-6 on inputs quantized beforehand (quantization excluded)."""
    from sage_fast.triton import attn_gluon, attn_int8, rung3_fused_quant, rung5_tma
    from sage_fast.triton.launch import INT8_MIN_HEAD_DIM, head_dim_block
    from sage_fast.triton.quant import quantize_kv, quantize_q

    tiles = tiles or (rung5_tma.TILES if v_fp8 else rung3_fused_quant.TILES)
    block_m, block_n = tiles.block_m, tiles.block_n
    dp = head_dim_block(q.shape[-1], INT8_MIN_HEAD_DIM)
    kv = quantize_kv(k, v, block_n=block_n, head_dim_padded=dp, smooth_k=True, v_fp8=v_fp8)
    q8, qs, _ = quantize_q(q, sm_scale=q.shape[-1] ** -0.5, block_m=block_m, head_dim_padded=dp)
    vv = kv["v_fp8_t"] if v_fp8 else v
    if tiles.gluon:
        return lambda: attn_gluon.launch(
            q8, qs, kv["k_int8"], kv["k_scale"], vv, kv["v_scale"], out_like=q, head_dim=q.shape[-1], is_causal=causal,
            block_m=block_m, block_n=block_n, num_stages=tiles.num_stages,
        )  # fmt: skip
    return lambda: attn_int8.launch(
        q8, qs, kv["k_int8"], kv["k_scale"], vv, v_scale=kv["v_scale"], out_like=q, head_dim=q.shape[-1],
        is_causal=causal, block_m=block_m, block_n=block_n, num_warps=tiles.warps(dp), num_stages=tiles.num_stages,
        maxnreg=tiles.maxnreg(dp, causal), tma=tiles.tma,
    )  # fmt: skip


def sweep_tiles():
    """Kernel-only TOPS over tile shapes, warps and pipeline depth (tile = quantization block)."""
    from triton.testing import do_bench

    from sage_fast.triton.launch import Tiles

    rows = []
    for head_dim, n, causal in ((128, 8192, False), (128, 8192, True), (64, 8192, False)):
        batch, heads = 2, 32
        q, k, v = (torch.randn(batch, heads, n, head_dim, device="cuda", dtype=torch.float16) for _ in range(3))
        for v_fp8 in (False, True):
            for bm, bn, warps, stages in (
                (128, 64, 8, 3), (128, 64, 4, 3), (64, 128, 4, 3), (64, 128, 4, 4), (64, 64, 4, 3),
                (128, 128, 8, 3), (128, 128, 8, 2), (64, 128, 8, 3),
            ):  # fmt: skip
                try:
                    fn = kernel_only(q, k, v, causal, v_fp8, Tiles(bm, bn, warps, stages))
                    ms = do_bench(fn, warmup=25, rep=100)
                except Exception as exc:  # noqa: BLE001 - a config that does not fit is reported
                    print(f"hd{head_dim} causal={causal} fp8={v_fp8} {bm}x{bn} w{warps} s{stages}: {repr(exc)[:80]}")
                    continue
                t = tops(batch, heads, n, head_dim, causal, ms)
                rows.append(dict(head_dim=head_dim, causal=causal, v_fp8=v_fp8, bm=bm, bn=bn, warps=warps, stages=stages, tops=t))
                print(f"hd{head_dim} causal={causal!s:5} fp8={v_fp8!s:5} {bm:3d}x{bn:<3d} w{warps} s{stages}: {t:6.1f} TOPS")
    return rows


def run_gpu(quick):
    from triton.testing import do_bench

    lengths = (1024, 4096) if quick else (1024, 2048, 4096, 8192, 16384, 32768)
    rows = []
    for head_dim in (64, 128):
        for causal in (False, True):
            impls = implementations(causal)
            for n in lengths:
                batch, heads = max(1, 16384 // n), 32
                gen = torch.Generator(device="cuda").manual_seed(n + head_dim)
                q, k, v = (
                    torch.randn(batch, heads, n, head_dim, device="cuda", dtype=torch.float16, generator=gen)
                    for _ in range(3)
                )
                truth = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
                clone_ms = do_bench(lambda k=k: k.clone(), warmup=25, rep=100, return_mode="median")
                timed = dict(impls)
                timed["kernel-only-fp16"] = kernel_only(q, k, v, causal, v_fp8=False)
                timed["kernel-only-fp8"] = kernel_only(q, k, v, causal, v_fp8=True)
                for name, fn in timed.items():
                    call = fn if name.startswith("kernel-only") else (lambda fn=fn, q=q, k=k, v=v: fn(q, k, v))
                    try:
                        out = call()
                        ms = do_bench(call, warmup=25, rep=100, return_mode="median")
                    except Exception as exc:  # noqa: BLE001 - a peer that can't run a shape is reported, not fatal
                        rows.append(dict(name=name, n=n, head_dim=head_dim, causal=causal, error=repr(exc)[:200]))
                        continue
                    if name == "sageattention-1.0.6":
                        ms -= clone_ms
                    rows.append(
                        dict(
                            name=name, n=n, batch=batch, heads=heads, head_dim=head_dim, causal=causal, ms=ms,
                            tops=tops(batch, heads, n, head_dim, causal, ms),
                            cos=sage_ref.cosine_similarity(out, truth), rel_l1=sage_ref.relative_l1(out, truth),
                        )  # fmt: skip
                    )
                    print(f"{name:22s} hd{head_dim} causal={causal!s:5} N={n:6d} {rows[-1].get('tops', 0):7.1f} TOPS")
                del q, k, v, truth
                torch.cuda.empty_cache()
    return rows


def quant_breakdown():
    """Where the whole call's time goes: each launch of the fp8 pipeline, timed alone (N = 1k and 8k, hd128)."""
    from triton.testing import do_bench

    from sage_fast.triton import rung5_tma as r5
    from sage_fast.triton.launch import INT8_MIN_HEAD_DIM, head_dim_block
    from sage_fast.triton.quant import quantize_kv, quantize_q

    rows = []
    for n in (1024, 8192):
        batch, heads, head_dim = 16384 // n, 32, 128
        q, k, v = (torch.randn(batch, heads, n, head_dim, device="cuda", dtype=torch.float16) for _ in range(3))
        dp = head_dim_block(head_dim, INT8_MIN_HEAD_DIM)
        parts = {
            "quantize_kv": lambda: quantize_kv(k, v, block_n=r5.BLOCK_N, head_dim_padded=dp, smooth_k=True, v_fp8=True),
            "quantize_q": lambda: quantize_q(q, sm_scale=head_dim**-0.5, block_m=r5.BLOCK_M, head_dim_padded=dp),
            "attention kernel": kernel_only(q, k, v, False, v_fp8=True),
            "rung 5 whole call": lambda: r5.forward(q, k, v),
            "copy of q, k and v": lambda: (q.clone(), k.clone(), v.clone()),
        }
        for name, fn in parts.items():
            ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
            rows.append(dict(n=n, part=name, ms=ms))
            print(f"N={n:5d} {name:20s} {ms * 1e3:8.1f} us")
    return rows


DECODE_SHAPES = (  # batch, heads, kv heads, queries, cached keys, head_dim: decode steps and short chunks (GQA 4:1)
    (1, 32, 8, 1, 4096, 128), (1, 32, 8, 1, 32768, 128), (8, 32, 8, 1, 4096, 128), (8, 32, 8, 1, 32768, 128),
    (32, 32, 8, 1, 8192, 128), (1, 32, 8, 16, 8192, 128), (1, 32, 8, 64, 8192, 128), (1, 32, 8, 256, 8192, 128),
    (4, 32, 8, 512, 8192, 128), (1, 32, 32, 1, 4096, 64), (16, 32, 32, 1, 4096, 64),
)  # fmt: skip


def decode_steps():
    """Calls with few queries over a KV cache (bottom-right causal): µs per whole call of torch SDPA (its own
    backend choice) and sageattn fp8/fp16, host time included where the host is slower than the GPU. What the
    integrations' "auto" rule (``variants.AUTO_MIN_QUERIES``) rests on."""
    from triton.testing import do_bench

    from sage_fast import sageattn

    rows = []
    for batch, heads, kv_heads, q_len, kv_len, head_dim in DECODE_SHAPES:
        q = torch.randn(batch, heads, q_len, head_dim, device="cuda", dtype=torch.float16)
        k, v = (torch.randn(batch, kv_heads, kv_len, head_dim, device="cuda", dtype=torch.float16) for _ in range(2))
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device="cuda").tril(kv_len - q_len) if q_len > 1 else None
        calls = {
            "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True),
            "sageattn-fp8": lambda: sageattn(q, k, v, is_causal=True, pv="fp8"),
            "sageattn-fp16": lambda: sageattn(q, k, v, is_causal=True, pv="fp16"),
        }
        for name, call in calls.items():
            us = do_bench(call, warmup=25, rep=100, return_mode="median") * 1e3
            rows.append(dict(name=name, batch=batch, heads=heads, kv_heads=kv_heads, q_len=q_len, kv_len=kv_len,
                             head_dim=head_dim, us=us))  # fmt: skip
            print(f"{name:14s} B={batch:2d} Hkv={kv_heads:2d} q={q_len:4d} kv={kv_len:6d} D={head_dim:3d} {us:8.1f} us")
    return rows


def accuracy_vs_fp64():
    """cos / rel L1 against an fp64 truth on Gaussian inputs (the issue's accuracy criteria), with 1.0.6."""
    from sage_fast import sageattn

    gen = torch.Generator(device="cuda").manual_seed(7)
    q, k, v = (torch.randn(2, 16, 2048, 128, device="cuda", dtype=torch.float16, generator=gen) for _ in range(3))
    truth = sage_ref.naive_attention(q.double(), k.double(), v.double())
    outs = {"sageattn pv=fp16": sageattn(q, k, v, pv="fp16"), "sageattn pv=fp8": sageattn(q, k, v, pv="fp8")}
    old = peer_106()
    if old is not None:
        outs["sageattention 1.0.6"] = old(q, k.clone(), v)
    rows = []
    for name, out in outs.items():
        rows.append(dict(name=name, cos=sage_ref.cosine_similarity(out, truth), rel_l1=sage_ref.relative_l1(out, truth), rmse=sage_ref.rmse(out, truth)))
        print(f"{name:22s} cos {rows[-1]['cos']:.6f}  rel L1 {rows[-1]['rel_l1']:.5f}  RMSE {rows[-1]['rmse']:.3e}")
    return rows


def environment():
    """Card, versions and date, recorded next to every number."""
    import triton

    return dict(
        card=torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        torch=torch.__version__,
        triton=triton.__version__,
        cuda=torch.version.cuda,
        date=datetime.date.today().isoformat(),
    )


def plot(rows, path):
    """TOPS against N, one panel per (head_dim, causal)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    panels = sorted({(r["head_dim"], r["causal"]) for r in rows if "tops" in r})
    names = sorted({r["name"] for r in rows if "tops" in r})
    colors = plt.cm.tab20.colors
    cols = 2  # a 2-column grid stays readable at a docs page's width
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(11, 4.2 * rows_n + 1.2), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (hd, causal) in zip(axes.flat, panels):
        for i, name in enumerate(names):
            pts = [(r["n"], r["tops"]) for r in rows if r["name"] == name and r["head_dim"] == hd and r["causal"] == causal and "tops" in r]
            if pts:
                style = "--" if name.startswith(("sdpa", "sageattention")) else "-"
                ax.plot(*zip(*sorted(pts)), style, marker="o", markersize=3, color=colors[i % len(colors)], label=name)
        ax.set_xscale("log", base=2)
        ax.set_title(f"head_dim {hd}, {'causal' if causal else 'non-causal'}")
        ax.set_xlabel("N")
        ax.set_ylabel("TOPS")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9)
    fig.tight_layout(rect=(0, 1.1 / (4.2 * rows_n + 1.2), 1, 1))
    fig.savefig(path, dpi=110)


def table(rows):
    """Ratios that matter, per shape: whole-call sageattn vs cuDNN and vs 1.0.6."""
    by = {}
    for r in rows:
        if "tops" in r:
            by.setdefault((r["head_dim"], r["causal"], r["n"]), {})[r["name"]] = r
    columns = ("cudnn", "1.0.6", "sage fp16", "sage fp8", "kern-fp8", "fp8/cudnn", "fp8/1.0.6")
    lines = [f"{'shape':24s} " + " ".join(f"{c:>10s}" for c in columns)]
    for (hd, causal, n), d in sorted(by.items()):
        get = lambda name: d.get(name, {}).get("tops", math.nan)  # noqa: E731
        cud, old, f16, f8, kf = (
            get(name) for name in ("sdpa-cudnn", "sageattention-1.0.6", "sageattn-fp16", "sageattn-fp8", "kernel-only-fp8")
        )
        lines.append(
            f"hd{hd} {'causal' if causal else 'full':6s} N={n:<7d}    "
            + " ".join(f"{x:10.1f}" for x in (cud, old, f16, f8, kf))
            + f" {f8 / cud:10.2f} {f8 / old:10.2f}"
        )
    return "\n".join(lines)


def run_cpu():
    """No GPU: a small sanity pass of the reference path (and its accuracy against fp64)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 256, 64, generator=gen) for _ in range(3))
    truth = sage_ref.naive_attention(q.double(), k.double(), v.double())
    rows = []
    for pv in ("fp16", "fp8"):
        out = sage_ref.sage_attention(q, k, v, pv=pv)
        rows.append(dict(name=f"sage_ref-{pv}", cos=sage_ref.cosine_similarity(out, truth), rel_l1=sage_ref.relative_l1(out, truth)))
        print(f"{rows[-1]['name']:16s} cos {rows[-1]['cos']:.6f}  rel L1 {rows[-1]['rel_l1']:.4f}")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two lengths only")
    parser.add_argument("--sweep", action="store_true", help="only sweep the kernel's tile configurations")
    parser.add_argument("--breakdown", action="store_true", help="only time each launch of the fp8 pipeline")
    parser.add_argument("--decode", action="store_true", help="only time decode-shaped calls against torch SDPA")
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for bench.json and bench.png")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    if args.sweep:
        (out / "sweep.json").write_text(json.dumps(dict(environment=env, rows=sweep_tiles()), indent=1))
        return
    if args.breakdown:
        (out / "breakdown.json").write_text(json.dumps(dict(environment=env, rows=quant_breakdown()), indent=1))
        return
    if args.decode:
        if not torch.cuda.is_available():
            parser.error("--decode times GPU calls: no CUDA GPU here")
        (out / "decode.json").write_text(json.dumps(dict(environment=env, rows=decode_steps()), indent=1))
        return
    if not torch.cuda.is_available():
        print("No CUDA GPU here: running a small CPU sanity pass instead of the benchmark.")
        rows = run_cpu()
    else:
        accuracy = accuracy_vs_fp64()
        rows = run_gpu(args.quick)
        plot(rows, out / "bench.png")
        env["accuracy_vs_fp64"] = accuracy
    (out / "bench.json").write_text(json.dumps(dict(environment=env, rows=rows), indent=1))
    print(json.dumps(env))
    if torch.cuda.is_available():
        print(table(rows))


if __name__ == "__main__":
    main()
