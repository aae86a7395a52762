"""Benchmark machinery shared by ``benchmarks/bench_*.py``, ``pyimgcls bench`` and the GPU check.

What lives here:

- :func:`time_ms` -- one timing primitive. On CUDA it is ``triton.testing.do_bench`` (CUDA events,
  L2 flushed before every repetition, median); on CPU a wall-clock median over ``time.perf_counter``
  after a warm-up.
- :func:`measure_peaks` -- the two ceilings the roofline is drawn against, measured in the same run
  as the cases (never datasheet numbers): device-to-device copy bandwidth and cuBLAS GEMM throughput
  at 8192^3 (fp16, plus bf16 and IEEE fp32 so each dtype is judged against its own ceiling).
- :class:`Case` and :func:`make_row` -- one row of the results schema (docs/architecture.md, "Benchmarks").
- :func:`run_cpu_gemm_bench` and :func:`main_cli` -- the quick CPU GEMM comparison behind
  ``pyimgcls bench`` on a machine without a GPU (with a GPU it runs ``benchmarks/bench_gemm.py``).

Results files, run metadata, JUnit/sanitizer counts, report tables and the GPU check's
``finalize|summary|merge`` steps are not part of the library: they live in ``benchmarks/report.py``.

How ``roofline_pct`` is computed
--------------------------------
For a case that performs ``F`` floating-point operations and must move at least ``B`` bytes through
device memory (each input read once, each output written once), with measured peaks ``P`` (FLOP/s
of cuBLAS at 8192^3 in the case's dtype) and ``W`` (copy bandwidth, bytes read + bytes written per
second), the attainable rate is the classic roofline ``min(P, AI * W)`` with ``AI = F / B``::

    roofline_pct = 100 * (F / t) / min(P, AI * W) = 100 * max(F / P, B / W) / t

i.e. the time the better of the two ceilings allows, over the time measured. A compute-bound GEMM
is therefore scored as a percentage of measured cuBLAS-peak TFLOP/s, a memory-bound case as a
percentage of measured copy bandwidth. A case without FLOPs (a pure copy) uses ``B / W`` alone. When
a needed peak is missing (e.g. on CPU) ``roofline_pct`` is ``None``; nothing is ever estimated.

The module imports only the standard library at load time (torch, triton, tabulate and pyimgcls are
imported where used): ``benchmarks/report.py`` loads it from its file, so the GPU check's report step
works even when the package failed to build.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

SCHEMA = "pyimgcls-bench/1"
ROW_KEYS = ("family", "op", "pass", "shape", "dtype", "layout", "provider", "ms", "ref_provider",
            "ref_ms", "speedup", "tflops", "gbps", "roofline_pct")
# Rows with equal values here describe the same measurement; a newer one replaces an older one.
ROW_IDENTITY = ("family", "op", "pass", "shape", "dtype", "layout", "provider")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

def _resolve_device(device) -> str:
    if device is None or str(device) == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = str(device).split(":")[0]
    if kind not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda', 'cpu' or 'auto', got {device!r}")
    return kind


def time_ms(fn: Callable[[], object], *, device="auto", warmup_ms: float = 25.0,
            rep_ms: float = 100.0, min_reps: int = 5, max_reps: int = 10_000) -> float:
    """Median run time of ``fn()`` in milliseconds.

    CUDA: ``triton.testing.do_bench(return_mode="median")``; it times with CUDA events, flushes L2
    before each repetition (so weights do not stay cache-resident between calls, which would flatter
    small shapes) and sizes the warm-up and repetition counts from ``warmup_ms`` / ``rep_ms``.
    The first call of ``fn`` (Triton JIT, autotuning, cuBLAS handle creation) happens inside that
    warm-up, but callers with autotuned kernels should call ``fn`` once beforehand anyway so that
    autotuning never overlaps the estimate do_bench makes of one call's time. These are device
    times: the L2-flush kernel queued before each repetition keeps the GPU busy while the host
    issues ``fn``, so host-side dispatch overhead (tens of microseconds for a Python custom op) is
    mostly hidden, for our ops and the reference alike.

    CPU: calls ``fn`` for at least one call and ``warmup_ms``, estimates one call's time, then
    repeats ``rep_ms / estimate`` times (clamped to ``[min_reps, max_reps]``) and returns the median
    of the individual wall-clock times.
    """
    if _resolve_device(device) == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))

    start = time.perf_counter()
    fn()
    while (time.perf_counter() - start) * 1e3 < warmup_ms:
        fn()
    t0 = time.perf_counter()
    fn()
    estimate_ms = max((time.perf_counter() - t0) * 1e3, 1e-6)
    reps = int(min(max(rep_ms / estimate_ms, min_reps), max_reps))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


# --------------------------------------------------------------------------------------------
# Peaks
# --------------------------------------------------------------------------------------------

def measure_peaks(device="auto", *, copy_bytes: int | None = None, gemm_size: int | None = None,
                  verbose: bool = True) -> dict:
    """Measure the roofline ceilings on ``device`` in this process.

    Returns ``{"copy_gbps", "cublas_fp16_tflops", "cublas_bf16_tflops", "cublas_fp32_tflops",
    "gemm_size", "copy_bytes"}`` on CUDA. Copy bandwidth is ``dst.copy_(src)`` of a 1 GiB buffer
    (20x the H100's 50 MB L2, so it streams from HBM), counted as bytes read + bytes written. The GEMM
    ceilings are ``torch.matmul`` (cuBLAS) at ``gemm_size``^3 on random normal data -- zeros run
    measurably faster on Hopper -- with PyTorch's TF32 setting left at its default; the fp32 figure
    is reported as measured, and the ``"tf32"`` key records whether cuBLAS was allowed to use TF32.

    On CPU the same two measurements use ``torch.matmul`` in float32 at 2048^3 and a 256 MiB copy,
    reported as ``copy_gbps`` and ``torch_fp32_tflops`` (there is no cuBLAS).
    """
    import torch

    dev = _resolve_device(device)
    if dev == "cuda":
        copy_bytes = copy_bytes or (1 << 30)
        gemm_size = gemm_size or 8192
    else:
        copy_bytes = copy_bytes or (256 << 20)
        gemm_size = gemm_size or 2048

    gen = torch.Generator(device=dev).manual_seed(0)
    peaks = {"copy_gbps": _copy_gbps(dev, copy_bytes, gen), "copy_bytes": copy_bytes,
             "gemm_size": gemm_size}
    dtypes = ({"cublas_fp16_tflops": torch.float16, "cublas_bf16_tflops": torch.bfloat16,
               "cublas_fp32_tflops": torch.float32} if dev == "cuda"
              else {"torch_fp32_tflops": torch.float32})
    for key, dtype in dtypes.items():
        peaks[key] = _gemm_tflops(dev, gemm_size, dtype, gen)
    if dev == "cuda":
        peaks["tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        torch.cuda.empty_cache()
    if verbose:
        print("peaks measured: " + ", ".join(
            f"{k}={v:.1f}" for k, v in peaks.items() if isinstance(v, float)), flush=True)
    return peaks


def _copy_gbps(dev: str, nbytes: int, gen) -> float:
    import torch
    src = torch.randn(nbytes // 4, device=dev, dtype=torch.float32, generator=gen)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device=dev)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def _gemm_tflops(dev: str, n: int, dtype, gen) -> float:
    import torch
    a = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
    out = torch.empty(n, n, device=dev, dtype=dtype)
    ms = time_ms(lambda: torch.matmul(a, b, out=out), device=dev)
    return 2.0 * n ** 3 / (ms * 1e-3) / 1e12


def _peak_tflops(peaks: dict | None, dtype: str) -> float | None:
    if not peaks:
        return None
    short = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}.get(dtype)
    if short is None:
        return None
    return peaks.get(f"cublas_{short}_tflops") or peaks.get(f"torch_{short}_tflops")


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------

def dtype_name(dtype) -> str:
    """``torch.float16`` -> ``"float16"``; strings pass through."""
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class Case:
    """One benchmark case: what is computed and how much work and traffic it needs at minimum.

    ``flops`` counts multiply and add separately (2MNK for a GEMM); ``bytes`` is the compulsory
    device-memory traffic: every input read once and every output written once.
    """

    family: str
    op: str
    shape: str
    dtype: str
    flops: float | None
    bytes: float
    pass_: str = "fwd"
    layout: str = "-"

    def row(self, provider: str, ms: float, ref_provider: str | None, ref_ms: float | None,
            peaks: dict | None = None, **extra) -> dict:
        return make_row(self, provider, ms, ref_provider, ref_ms, peaks, **extra)


def roofline_pct(flops: float | None, nbytes: float | None, ms: float, dtype: str,
                 peaks: dict | None) -> float | None:
    """Percent of the attainable rate; see the module docstring for the formula."""
    if not peaks or not ms or ms <= 0:
        return None
    bw = peaks.get("copy_gbps")
    floor_s = []
    if flops:
        peak = _peak_tflops(peaks, dtype)
        if peak is None:
            return None
        floor_s.append(flops / (peak * 1e12))
    if nbytes:
        if not bw:
            return None
        floor_s.append(nbytes / (bw * 1e9))
    if not floor_s:
        return None
    return 100.0 * max(floor_s) / (ms * 1e-3)


def make_row(case: Case, provider: str, ms: float, ref_provider: str | None, ref_ms: float | None,
             peaks: dict | None = None, **extra) -> dict:
    """A results row in the results schema of docs/architecture.md (key order as documented), plus ``flops``/``bytes``
    and any ``extra`` keys (the schema welcomes extra keys)."""
    row = {
        "family": case.family,
        "op": case.op,
        "pass": case.pass_,
        "shape": case.shape,
        "dtype": dtype_name(case.dtype),
        "layout": case.layout,
        "provider": provider,
        "ms": ms,
        "ref_provider": ref_provider,
        "ref_ms": ref_ms,
        "speedup": (ref_ms / ms) if (ref_ms and ms) else None,
        "tflops": (case.flops / (ms * 1e-3) / 1e12) if case.flops else None,
        "gbps": (case.bytes / (ms * 1e-3) / 1e9) if case.bytes else None,
        "roofline_pct": roofline_pct(case.flops, case.bytes, ms, dtype_name(case.dtype), peaks),
        "flops": case.flops,
        "bytes": case.bytes,
    }
    row.update(extra)
    return row


# --------------------------------------------------------------------------------------------
# CPU GEMM quick comparison (``pyimgcls bench`` without a GPU)
# --------------------------------------------------------------------------------------------

def run_cpu_gemm_bench(sizes: Sequence[int] = (256, 512, 1024), *, dtype=None,
                       print_results: bool = True) -> list[dict]:
    """Our ``cpu`` backend's ``ops.matmul`` against ``torch.matmul`` on square float32 inputs.

    Prints ms, GFLOP/s and the ratio torch_ms / ours_ms (> 1 means ours is faster) and returns the
    schema rows (``roofline_pct`` is null: no peaks are measured in this quick run). Takes a few
    seconds at the default sizes.
    """
    import torch
    import pyimgcls
    from pyimgcls import ops
    from tabulate import tabulate

    dtype = dtype or torch.float32
    gen = torch.Generator().manual_seed(0)
    rows, table = [], []
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, generator=gen)
        b = torch.randn(n, n, dtype=dtype, generator=gen)
        elt = a.element_size()
        case = Case("gemm", "matmul", f"{n}x{n}x{n}", dtype_name(dtype), 2.0 * n ** 3,
                    3.0 * n * n * elt)
        with pyimgcls.use_backend("cpu"):
            ours = ops.matmul(a, b)
            ref = torch.matmul(a, b)
            err = float((ours.double() - ref.double()).norm() / ref.double().norm())
            ms = time_ms(lambda: ops.matmul(a, b), device="cpu")
        ref_ms = time_ms(lambda: torch.matmul(a, b), device="cpu")
        row = case.row("cpu", ms, "torch", ref_ms, rel_err=err)
        rows.append(row)
        table.append([row["shape"], row["dtype"], f"{ms:.3f}", f"{case.flops / ms / 1e6:.1f}",
                      f"{ref_ms:.3f}", f"{case.flops / ref_ms / 1e6:.1f}", f"{row['speedup']:.2f}",
                      f"{err:.1e}"])
    if print_results:
        print(f"CPU GEMM: pyimgcls cpu backend vs torch.matmul ({torch.get_num_threads()} threads)")
        print(tabulate(table, headers=["M x N x K", "dtype", "ours ms", "ours GFLOP/s", "torch ms",
                                       "torch GFLOP/s", "torch/ours", "rel err"],
                       disable_numparse=True), flush=True)
    return rows


def main_cli(args) -> int:
    """``pyimgcls bench [--out DIR] [--quick]``: the GPU GEMM benchmark when a GPU is visible (from a
    source checkout, where ``benchmarks/bench_gemm.py`` lives), else the quick CPU comparison."""
    import torch

    if torch.cuda.is_available():
        script = os.path.join(REPO_ROOT, "benchmarks", "bench_gemm.py")
        if not os.path.exists(script):
            print(f"GPU benchmark script not found at {script}: run it from a source checkout")
            return 1
        import runpy
        argv = (["--out", args.out] if getattr(args, "out", None) else []) + (
            ["--quick"] if getattr(args, "quick", False) else [])
        # As `python benchmarks/bench_gemm.py` would: the script imports benchmarks/report.py.
        if os.path.dirname(script) not in sys.path:
            sys.path.insert(0, os.path.dirname(script))
        return runpy.run_path(script)["main"](argv)
    run_cpu_gemm_bench((256, 512) if getattr(args, "quick", False) else (256, 512, 1024))
    return 0
