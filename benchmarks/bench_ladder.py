"""Study-ladder benchmark: every step of the GEMM and conv ladders side by side with the reference.

    python benchmarks/bench_ladder.py [--device cpu|cuda|auto] [--quick] [--out DIR] [--update-readme]
    pyimgcls bench ladder [--quick]                      (same, from a source checkout)

CPU (default without a GPU): our CPU ladder against torch on CPU (oneDNN/MKL), float32:
  - GEMM C = A @ B at M = N = K = 1024: FLOPs 2*1024^3 = 2.15 GFLOP, compulsory bytes 3*1024^2*4.
  - conv y = F.conv2d(x, w, padding=1), x [4, 64, 56, 56], w [64, 64, 3, 3] (a ResNet stage-1
    layer): FLOPs 2*4*64*56*56*64*9 = 0.92 GFLOP, bytes (|x| + |w| + |y|) * 4.
  Each step is timed right next to torch in the same process (interleaved), so the "% of torch"
  ratio stays fair when other processes load the machine; the naive steps (seconds per call) are
  timed once. Peak: the best of torch.matmul and our production GEMM at 2048^3 fp32, measured in the
  same run (the attainable peak; the theoretical one is stated in docs/ladder.md). Whole run: ~1-2
  minutes on a 2-core machine.
GPU (CUDA visible): the CUDA ladder (when compiled) and the Triton ladder against cuBLAS / cuDNN
  (torch.matmul / F.conv2d) at M = N = K = 4096 (fp16 where the step takes it, else fp32) and
  x [32, 64, 56, 56], w [64, 64, 3, 3] (the layer the CUDA step headers predict for);
  CUDA-event timings with L2 flushed (pyimgcls.bench).

Results: family "ladder" rows (pyimgcls/bench.py schema) with extra keys step, step_name, backend,
gflops, pct_ref, pct_peak; CPU files go to benchmarks/results/cpu/<date>_<cpu>_<sha>_ladder.json,
GPU files to benchmarks/results/. --update-readme regenerates the README table between
<!-- ladder-table:start --> and <!-- ladder-table:end --> from the newest results (never by hand).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO_ROOT, "README.md")
START, END = "<!-- ladder-table:start -->", "<!-- ladder-table:end -->"
DEFAULT_OUT = os.path.join(REPO_ROOT, "benchmarks", "results")

CPU_GEMM = 1024
CPU_CONV = (4, 64, 56, 56, 64, 3, 3, 1)      # N, C, H, W, O, KH, KW, padding
GPU_GEMM = 4096
GPU_CONV = (32, 64, 56, 56, 64, 3, 3, 1)        # the CUDA ladder headers' benchmark layer


def _bench_module():
    sys.path.insert(0, REPO_ROOT)
    from pyimgcls import bench
    return bench


def _report_module():
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:  # `pyimgcls bench ladder` runs this file with runpy
        sys.path.insert(0, here)
    import report
    return report


# --------------------------------------------------------------------------------------------- CPU
def _cpu_time(fn, reps: int) -> float:
    """Median wall time (ms) of ``reps`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _interleaved(ours, ref, reps: int) -> tuple[float, float]:
    """Medians of ours and ref, alternating call by call (fair under a varying load)."""
    ours()
    ref()
    t_ours, t_ref = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        ours()
        t_ours.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        ref()
        t_ref.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(t_ours), statistics.median(t_ref)


def _reps_for(fn, budget_ms: float, cap: int) -> int:
    t0 = time.perf_counter()
    fn()
    one = (time.perf_counter() - t0) * 1e3
    return 1 if one > 1000 else max(3, min(cap, int(budget_ms / max(one, 1e-3))))


def cpu_peak_gflops(n: int = 2048) -> dict:
    """Best-of GFLOP/s of torch.matmul and our production GEMM (ops.matmul on the cpu backend)."""
    import torch

    import pyimgcls
    from pyimgcls import ops

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    flops = 2.0 * n ** 3
    best = {"torch": 0.0, "pyimgcls": 0.0}
    with pyimgcls.use_backend("cpu"):
        for _ in range(5):
            for name, fn in (("torch", lambda: torch.matmul(a, b)), ("pyimgcls", lambda: ops.matmul(a, b))):
                t0 = time.perf_counter()
                fn()
                best[name] = max(best[name], flops / (time.perf_counter() - t0) / 1e9)
    return {"cpu_peak_gflops": max(best.values()), "peak_source": "best GFLOP/s of torch.matmul / pyimgcls "
            "production GEMM at 2048^3 fp32 and of every case of this run", "torch_fp32_gflops_2048": best["torch"],
            "pyimgcls_fp32_gflops_2048": best["pyimgcls"], "peak_gemm_size": n,
            "torch_fp32_tflops": best["torch"] / 1e3}


def run_cpu(quick: bool = False) -> tuple[list[dict], dict]:
    import torch
    import torch.nn.functional as F

    from pyimgcls import ladder

    bench = _bench_module()
    peaks = cpu_peak_gflops()
    peak = peaks["cpu_peak_gflops"]
    print(f"CPU peak (best of torch.matmul / our production GEMM at 2048^3 fp32): {peak:.1f} GFLOP/s, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    g = torch.Generator().manual_seed(0)
    n = 512 if quick else CPU_GEMM
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    ref64 = a.double() @ b.double()
    case = bench.Case("ladder", "gemm", f"{n}x{n}x{n}", "float32", 2.0 * n ** 3, 3.0 * n * n * 4)
    for s in ladder.steps("gemm", "cpu"):
        ours = lambda s=s: ladder.matmul(a, b, step=s.number, backend="cpu")  # noqa: E731
        out = ours()
        err = float((out.double() - ref64).norm() / ref64.norm())
        reps = _reps_for(ours, 1500 if not quick else 300, 15)
        ms, ref_ms = _interleaved(ours, lambda: torch.matmul(a, b), reps)
        rows.append(_row(case, "cpu", s, ms, ref_ms, peak, err, reps))
        _print_row(rows[-1])
    N, C, H, W, O, KH, KW, pad = (2, 32, 28, 28, 32, 3, 3, 1) if quick else CPU_CONV
    x = torch.randn(N, C, H, W, generator=g)
    w = torch.randn(O, C, KH, KW, generator=g)
    flops = 2.0 * N * O * H * W * C * KH * KW
    nbytes = 4.0 * (x.numel() + w.numel() + N * O * H * W)
    ref64 = F.conv2d(x.double(), w.double(), padding=pad)
    for s in ladder.steps("conv", "cpu"):
        layout = s.layout
        xs = x.to(memory_format=torch.channels_last) if layout == "nhwc" else x
        case = bench.Case("ladder", "conv", f"{N}x{C}x{H}x{W}*{O}x{C}x{KH}x{KW} p{pad}", "float32", flops, nbytes,
                          layout=layout)
        ours = lambda s=s, xs=xs: ladder.conv2d(xs, w, padding=pad, step=s.number, backend="cpu")  # noqa: E731
        out = ours()
        err = float((out.double() - ref64).norm() / ref64.norm())
        reps = _reps_for(ours, 1500 if not quick else 300, 15)
        ms, ref_ms = _interleaved(ours, lambda xs=xs: F.conv2d(xs, w, padding=pad), reps)
        rows.append(_row(case, "cpu", s, ms, ref_ms, peak, err, reps))
        _print_row(rows[-1])
    # The attainable peak is the best rate any GEMM/conv (ours or torch's) reached in this run: a
    # loaded machine can make the 2048^3 probe alone look slower than the cases that follow it.
    best = max([peak] + [r["gflops"] for r in rows] + [r["flops"] / (r["ref_ms"] * 1e-3) / 1e9 for r in rows])
    if best > peak:
        print(f"attainable peak raised to {best:.1f} GFLOP/s (best rate seen in this run)")
        peaks["cpu_peak_gflops"] = best
        for r in rows:
            r["pct_peak"] = 100.0 * r["gflops"] / best
    return rows, peaks


def _row(case, backend, step, ms, ref_ms, peak_gflops, err, reps, ref_provider="torch") -> dict:
    bench = _bench_module()
    gflops = case.flops / (ms * 1e-3) / 1e9
    return bench.make_row(
        case, f"{backend}-ladder", ms, ref_provider, ref_ms, None,
        step=step.number, step_name=step.name, backend=backend, gflops=gflops,
        pct_ref=100.0 * ref_ms / ms, pct_peak=(100.0 * gflops / peak_gflops) if peak_gflops else None,
        rel_err=err, reps=reps, threads=_threads(), load_avg=round(os.getloadavg()[0], 2))


def _threads() -> int:
    import torch
    return torch.get_num_threads()


def _print_row(r: dict) -> None:
    pct_peak = f"{r['pct_peak']:6.1f}" if r.get("pct_peak") is not None else "   n/a"
    rate = f"{r['gflops']:9.1f} GFLOP/s" if r["gflops"] < 1000 else f"{r['gflops'] / 1e3:9.2f} TFLOP/s"
    print(f"{r['backend']:6s} {r['op']:4s} step {r['step']:2d} {r['step_name']:20s} {r['ms']:10.3f} ms {rate}  "
          f"{r['ref_provider']} {r['ref_ms']:8.3f} ms  {r['pct_ref']:6.1f}% of ref  {pct_peak}% of peak  "
          f"(rel err {r['rel_err']:.1e}, {r['reps']} reps)", flush=True)


# --------------------------------------------------------------------------------------------- GPU
def run_gpu(quick: bool = False) -> tuple[list[dict], dict]:
    import torch
    import torch.nn.functional as F

    from pyimgcls import _native, ladder

    bench = _bench_module()
    peaks = bench.measure_peaks("cuda")
    rows = []
    backends = (["cuda"] if _native.cuda_kernels_compiled() else []) + ["triton"]
    n = 2048 if quick else GPU_GEMM
    major, _ = torch.cuda.get_device_capability()
    for backend in backends:
        for s in ladder.steps("gemm", backend):
            if s.needs_sm90a and major != 9:
                continue
            dtype = torch.float16 if "float16" in s.dtypes else torch.float32
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)
            case = bench.Case("ladder", "gemm", f"{n}x{n}x{n}", bench.dtype_name(dtype), 2.0 * n ** 3,
                              3.0 * n * n * a.element_size())
            out = ladder.matmul(a, b, step=s.number, backend=backend)
            ref = torch.matmul(a, b)
            err = float((out.float() - ref.float()).norm() / ref.float().norm())
            ms = bench.time_ms(lambda: ladder.matmul(a, b, step=s.number, backend=backend), device="cuda")
            ref_ms = bench.time_ms(lambda: torch.matmul(a, b), device="cuda")
            peak = (bench._peak_tflops(peaks, bench.dtype_name(dtype)) or 0.0) * 1e3
            rows.append(_row(case, backend, s, ms, ref_ms, peak, err, 0, "cublas"))
            _print_row(rows[-1])
    if _native.cuda_kernels_compiled():
        N, C, H, W, O, KH, KW, pad = (8, 64, 56, 56, 64, 3, 3, 1) if quick else GPU_CONV
        for s in ladder.steps("conv", "cuda"):
            if s.needs_sm90a and major != 9:
                continue
            dtype = torch.float16 if "float16" in s.dtypes else torch.float32
            x = torch.randn(N, C, H, W, device="cuda", dtype=dtype)
            if s.layout == "nhwc":
                x = x.to(memory_format=torch.channels_last)
            w = torch.randn(O, C, KH, KW, device="cuda", dtype=dtype)
            case = bench.Case("ladder", "conv", f"{N}x{C}x{H}x{W}*{O}x{C}x{KH}x{KW} p{pad}", bench.dtype_name(dtype),
                              2.0 * N * O * H * W * C * KH * KW,
                              x.element_size() * (x.numel() + w.numel() + N * O * H * W), layout=s.layout)
            out = ladder.conv2d(x, w, padding=pad, step=s.number, backend="cuda")
            ref = F.conv2d(x, w, padding=pad)
            err = float((out.float() - ref.float()).norm() / ref.float().norm())
            ms = bench.time_ms(lambda: ladder.conv2d(x, w, padding=pad, step=s.number, backend="cuda"), device="cuda")
            ref_ms = bench.time_ms(lambda: F.conv2d(x, w, padding=pad), device="cuda")
            peak = (bench._peak_tflops(peaks, bench.dtype_name(dtype)) or 0.0) * 1e3
            rows.append(_row(case, "cuda", s, ms, ref_ms, peak, err, 0, "cudnn"))
            _print_row(rows[-1])
    return rows, peaks


# ----------------------------------------------------------------------------------- results, README
def write(rows: list[dict], peaks: dict, device: str, out_dir: str) -> str:
    report = _report_module()
    results = report.new_results(device, peaks=peaks, cases=rows)
    load = os.getloadavg()[0]
    loaded = device == "cpu" and load > 0.5 * (os.cpu_count() or 1)
    results["notes"] = [f"ladder benchmark, load average {load:.1f} on {os.cpu_count()} CPUs"
                        + (" (measured under load)" if loaded else "")]
    if device == "cpu":
        out_dir = os.path.join(out_dir, "cpu")
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, report.results_filename(results).replace(".json", "_ladder.json"))
        if os.path.exists(path):
            with open(path) as f:
                results = report.merge_results(json.load(f), results)
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
        return path
    return report.write_results(results, out_dir)


def _newest_ladder_results(results_dir: str) -> list[dict]:
    """The newest results file with ladder rows per device (CPU files under cpu/)."""
    newest: dict[str, dict] = {}
    paths = (glob.glob(os.path.join(results_dir, "*.json"))
             + glob.glob(os.path.join(results_dir, "cpu", "*ladder*.json")))
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or not any(r.get("family") == "ladder" for r in data.get("cases", [])):
            continue
        dev = str(data.get("device"))
        if dev not in newest or str(data.get("date")) > str(newest[dev].get("date")):
            newest[dev] = data
    return [newest[k] for k in sorted(newest)]


def ladder_table(results_dir: str) -> str:
    """Markdown tables of the newest ladder results (GPU: 'unmeasured' when there are none)."""
    out = []
    found = _newest_ladder_results(results_dir)
    if not any("CPU" not in str(d.get("device")) for d in found):
        out.append("**GPU (CUDA / Triton ladders): unmeasured** -- no GPU results file with ladder rows yet "
                   "(run `python benchmarks/bench_ladder.py` on a GPU machine).\n")
    for data in found:
        peaks = data.get("peaks", {})
        notes = "; ".join(data.get("notes", []))
        peak = peaks.get("cpu_peak_gflops")
        out.append(f"**{data.get('device')}** -- {str(data.get('date'))[:10]}, commit "
                   f"`{str(data.get('commit'))[:7]}`" + (f", peak {peak:.1f} GFLOP/s (measured)" if peak else "")
                   + (f"; {notes}" if notes else "") + "\n")
        out.append("| backend | op | step | name | shape | dtype | ms | GFLOP/s | reference ms | % of reference "
                   "| % of peak |")
        out.append("|---|---|---:|---|---|---|---:|---:|---:|---:|---:|")
        for r in data.get("cases", []):
            if r.get("family") != "ladder":
                continue
            pct_peak = f"{r['pct_peak']:.1f}" if r.get("pct_peak") is not None else "-"
            out.append(f"| {r.get('backend')} | {r['op']} | {r.get('step')} | `{r.get('step_name')}` | {r['shape']} "
                       f"| {r['dtype']} | {r['ms']:.3f} | {r.get('gflops', 0):.1f} | {r['ref_ms']:.3f} "
                       f"({r['ref_provider']}) | {r.get('pct_ref', 0):.1f} | {pct_peak} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def update_readme(results_dir: str, readme: str = README) -> None:
    with open(readme) as f:
        text = f.read()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} / {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    generated = ("\n<!-- generated by `python benchmarks/bench_ladder.py --update-readme`; do not edit -->\n"
                 + ladder_table(results_dir))
    with open(readme, "w") as f:
        f.write(head + START + generated + END + tail)
    print(f"updated {readme}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quick", action="store_true", help="smaller sizes (not for the README table)")
    p.add_argument("--out", default=None,
                   help="results folder (default benchmarks/results; CPU files go to its cpu/ subfolder). "
                        "--quick runs write a file only when --out is given")
    p.add_argument("--no-write", action="store_true", help="print only, write no results file")
    p.add_argument("--update-readme", action="store_true",
                   help="regenerate README's ladder table from the newest results (after the run, if any)")
    p.add_argument("--readme-only", action="store_true", help="only regenerate the README table, run nothing")
    args = p.parse_args(argv)
    if not args.readme_only:
        import torch
        device = args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        rows, peaks = run_gpu(args.quick) if device == "cuda" else run_cpu(args.quick)
        if not args.no_write and (args.out is not None or not args.quick):
            print(f"results: {write(rows, peaks, device, args.out or DEFAULT_OUT)}")
    if args.update_readme or args.readme_only:
        update_readme(args.out or DEFAULT_OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
