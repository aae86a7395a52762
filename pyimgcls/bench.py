"""Benchmark machinery shared by ``benchmarks/bench_*.py``, ``pyimgcls bench`` and the GPU check.

What lives here:

- :func:`time_ms` -- one timing primitive. On CUDA it is ``triton.testing.do_bench`` (CUDA events,
  L2 flushed before every repetition, median); on CPU a wall-clock median over ``time.perf_counter``
  after a warm-up.
- :func:`measure_peaks` -- the two ceilings the roofline is drawn against, measured in the same run
  as the cases (never datasheet numbers): device-to-device copy bandwidth and cuBLAS GEMM throughput
  at 8192^3 (fp16, plus bf16 and IEEE fp32 so each dtype is judged against its own ceiling).
- :class:`Case` and :func:`make_row` -- one row of the results schema (docs/architecture.md, "Benchmarks").
- :func:`write_results` / :func:`merge_results` -- ``benchmarks/results/<date>_<gpu>_<shortsha>.json``
  with the full schema; rows of the same run are merged into the existing file.
- :func:`print_table` and :func:`summary_table` -- tabulate-formatted reports.
- :func:`run_cpu_gemm_bench` -- the quick CPU GEMM comparison behind ``pyimgcls bench`` on a
  machine without a GPU.

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

The module imports only the standard library at load time (torch, triton and pyimgcls are imported
where used), so the GPU check can run its report step with ``python -P pyimgcls/bench.py`` even when
the package failed to build.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

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
# Run metadata and results files
# --------------------------------------------------------------------------------------------

def _run(cmd: Sequence[str], cwd: str | None = None) -> str | None:
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_commit(repo: str = REPO_ROOT) -> str:
    """Full sha: ``PYIMGCLS_COMMIT`` when set (the GPU machine's copy has no .git), else
    ``git rev-parse HEAD``, else ``"unknown"``."""
    env = os.environ.get("PYIMGCLS_COMMIT", "").strip()
    if env:
        return env
    return _run(["git", "rev-parse", "HEAD"], cwd=repo) or "unknown"


def _git_dirty(repo: str = REPO_ROOT) -> bool | None:
    if os.environ.get("PYIMGCLS_COMMIT", "").strip():
        return None
    out = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
    return None if out is None else bool(out)


def device_name(device="auto") -> str:
    import torch
    if _resolve_device(device) == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        model = ""
    return f"CPU {model or platform.processor() or platform.machine()}"


def gpu_slug(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"h100-80gb-hbm3"`` (file-name safe, vendor dropped)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    slug = re.sub(r"^nvidia-", "", slug)
    return slug or "unknown"


def versions() -> dict:
    """torch / triton / CUDA / pyimgcls versions, plus nvcc and driver where found."""
    v = {"torch": None, "triton": None, "cuda": None, "pyimgcls": None}
    try:
        import torch
        v["torch"] = torch.__version__
        v["cuda"] = torch.version.cuda
    except ImportError:
        pass
    try:
        import triton
        v["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version
        v["pyimgcls"] = version("pyimgcls")
    except Exception:  # noqa: BLE001 -- not installed: fall back to the package attribute
        try:
            import pyimgcls
            v["pyimgcls"] = getattr(pyimgcls, "__version__", None)
        except Exception:  # noqa: BLE001 -- a broken build must not stop the report
            pass
    nvcc = shutil.which("nvcc")
    if nvcc:
        out = _run([nvcc, "--version"]) or ""
        m = re.search(r"release ([0-9.]+)", out)
        v["nvcc"] = m.group(1) if m else None
    if shutil.which("nvidia-smi"):
        out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        v["driver"] = out.splitlines()[0].strip() if out else None
    return v


def new_results(device="auto", *, peaks: dict | None = None, cases: Iterable[dict] = (),
                name: str | None = None) -> dict:
    """A results object with every schema key present (unknowns as null)."""
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    res = {
        "schema": SCHEMA,
        "date": now.isoformat(),
        "commit": git_commit(),
        "device": name or device_name(device),
        "versions": versions(),
        "peaks": {"copy_gbps": None, "cublas_fp16_tflops": None, **(peaks or {})},
        "tests": {"passed": None, "failed": None, "skipped": None},
        "sanitizer": {"memcheck_errors": None, "racecheck_errors": None},
        "cases": list(cases),
    }
    dirty = _git_dirty()
    if dirty is not None:
        res["dirty"] = dirty
    return res


def gpu_bench_parser(doc: str, quick_help: str,
                     providers_help: str = "comma-separated backends of ours (those not available here are skipped)"
                     ) -> argparse.ArgumentParser:
    """The options every benchmarks/bench_<family>.py shares: --out, --quick, --providers."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results"),
                   help="folder for the results JSON (default: benchmarks/results)")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--providers", default="cuda,triton", help=providers_help)
    return p


def select_providers(spec: str, available: Sequence[str]) -> list[str]:
    """The backends of the comma-separated ``spec`` that ``available`` has, in order; the others are
    reported as skipped."""
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    for name in wanted:
        if name not in available:
            print(f"backend {name!r} not available here (available: {list(available)}): skipped")
    return [name for name in wanted if name in available]


def finish_results(results: dict, failures: list, out_dir: str, title: str, t_start: float) -> str:
    """Record benchmark failures, write the results JSON and print where it went: the common tail of
    every GPU benchmark's run(). Returns the path written."""
    if failures:
        results["bench_failures"] = failures
    path = write_results(results, out_dir)
    print(f"\n{title} on {results['device']} in {time.perf_counter() - t_start:.0f} s; results: {path}")
    return path


def results_filename(results: dict) -> str:
    date = str(results.get("date", ""))[:10] or _dt.date.today().isoformat()
    sha = str(results.get("commit") or "unknown")
    short = sha[:7] if re.fullmatch(r"[0-9a-fA-F]{7,40}", sha) else "unknown"
    return f"{date}_{gpu_slug(str(results.get('device', 'unknown')))}_{short}.json"


def _merge_counts(old: dict | None, new: dict | None) -> dict:
    merged = dict(old or {})
    for k, v in (new or {}).items():
        if v is not None or k not in merged:
            merged[k] = v
    return merged


def merge_results(base: dict, new: dict) -> dict:
    """Merge ``new`` into ``base`` (both results objects of the same device and commit).

    Rows are keyed by (family, op, pass, shape, dtype, layout, provider): a row in ``new`` replaces
    the matching row of ``base``, other rows are kept in order. ``tests``, ``sanitizer``, ``peaks``
    and ``versions`` take ``new``'s non-null values and lists such as ``notes`` are concatenated, so
    partial files from separate stages (tests, sanitizer, bench) combine into one. ``date`` becomes
    the later of the two.
    """
    out = dict(base)
    for key, value in new.items():
        if key in ("cases",):
            continue
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = _merge_counts(base[key], value)
        elif isinstance(value, list) and isinstance(base.get(key), list):
            out[key] = base[key] + [v for v in value if v not in base[key]]
        elif value is not None:
            out[key] = value
    out["date"] = max(str(base.get("date") or ""), str(new.get("date") or "")) or None
    rows = {}
    for row in list(base.get("cases", [])) + list(new.get("cases", [])):
        rows[tuple(row.get(k) for k in ROW_IDENTITY)] = row
    out["cases"] = list(rows.values())
    return out


def write_results(results: dict, out_dir: str, *, merge: bool = True) -> str:
    """Write ``results`` to ``out_dir/<date>_<gpu>_<shortsha>.json`` and return the path.

    With ``merge`` an existing file of that name (same day, device and commit: the same run, e.g.
    several ``bench_*.py`` scripts or the GPU check's stages) is merged with :func:`merge_results`.
    """
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, results_filename(results))
    if merge and os.path.exists(path):
        with open(path) as f:
            results = merge_results(json.load(f), results)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_results(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema is {data.get('schema')!r}, expected {SCHEMA!r}")
    return data


# --------------------------------------------------------------------------------------------
# Test and sanitizer counts
# --------------------------------------------------------------------------------------------

def counts_from_junit(path: str) -> dict:
    """``{"passed", "failed", "skipped"}`` from a pytest junit XML (errors count as failed;
    xfail is reported by pytest as skipped)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tests = failures = errors = skipped = 0
    for s in suites:
        tests += int(s.get("tests", 0))
        failures += int(s.get("failures", 0))
        errors += int(s.get("errors", 0))
        skipped += int(s.get("skipped", 0))
    return {"passed": tests - failures - errors - skipped, "failed": failures + errors,
            "skipped": skipped}


_SUMMARY_WORD = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)")


def counts_from_pytest_output(text: str) -> dict | None:
    """Counts from pytest's closing line (``"3 failed, 120 passed, 4 skipped in 9.1s"``), or None
    when the output has none (the run was killed)."""
    for line in reversed(text.splitlines()):
        if not re.search(r"\bin [0-9.]+s\b", line):
            continue
        words = _SUMMARY_WORD.findall(line)
        if not words and "no tests ran" not in line:
            continue
        n = {}
        for count, word in words:
            n[word.rstrip("s") if word.startswith("error") else word] = int(count)
        return {"passed": n.get("passed", 0) + n.get("xpassed", 0),
                "failed": n.get("failed", 0) + n.get("error", 0),
                "skipped": n.get("skipped", 0) + n.get("xfailed", 0)}
    return None


def sanitizer_errors(log_text: str) -> int | None:
    """Sum of ``ERROR SUMMARY: N errors`` lines in a compute-sanitizer log (one per process it
    followed), or None when the log has no such line (the tool did not run or was killed)."""
    found = re.findall(r"ERROR SUMMARY:\s*(\d+) error", log_text)
    return sum(int(n) for n in found) if found else None


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------

def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:.0f}"
    return str(v)


TABLE_COLUMNS = (("op", "op"), ("shape", "shape"), ("dtype", "dtype"), ("provider", "provider"),
                 ("ms", "ms"), ("ref_ms", "ref ms"), ("speedup", "speedup"),
                 ("tflops", "TFLOP/s"), ("gbps", "GB/s"), ("roofline_pct", "% roofline"))


def table_rows(rows: Iterable[dict]) -> list[list[str]]:
    return [[_fmt(r.get(k)) for k, _ in TABLE_COLUMNS] for r in rows]


def print_table(rows: Iterable[dict], tablefmt: str = "simple", file=None) -> None:
    """Print result rows as a table (op, shape, dtype, provider, ms, ref ms, speedup, TFLOP/s, GB/s,
    % roofline)."""
    from tabulate import tabulate
    print(tabulate(table_rows(rows), headers=[h for _, h in TABLE_COLUMNS], tablefmt=tablefmt,
                   disable_numparse=True), file=file or sys.stdout, flush=True)


def geomean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def geomean_speedups(rows: Iterable[dict], by_op: bool = False
                     ) -> list[tuple[str, str, str, float, int]]:
    """``[(group, provider, ref_provider, geomean speedup, number of cases)]``, sorted; the group is
    the family, or ``family/op`` with ``by_op``."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        if r.get("speedup"):
            group = f"{r['family']}/{r['op']}" if by_op else r["family"]
            groups.setdefault((group, r["provider"], r.get("ref_provider") or "-"),
                              []).append(r["speedup"])
    return [(g, p, ref, geomean(v), len(v)) for (g, p, ref), v in sorted(groups.items())]


def speedup_lines(rows: Sequence[dict]) -> list[tuple[str, str, str, float, int]]:
    """Per-family geomeans, followed by per-op ones for families benchmarked with several ops."""
    lines = geomean_speedups(rows)
    ops_per_family: dict[str, set] = {}
    for r in rows:
        ops_per_family.setdefault(r["family"], set()).add(r["op"])
    multi = {f for f, o in ops_per_family.items() if len(o) > 1}
    lines += [ln for ln in geomean_speedups(rows, by_op=True) if ln[0].split("/")[0] in multi]
    return lines


def summary_table(results: dict, tablefmt: str = "simple") -> str:
    """The GPU check's closing table: test counts, sanitizer errors, per-family geomean speedups."""
    from tabulate import tabulate
    t = results.get("tests") or {}
    s = results.get("sanitizer") or {}
    lines = [
        ["tests passed / failed / skipped",
         f"{_fmt(t.get('passed'))} / {_fmt(t.get('failed'))} / {_fmt(t.get('skipped'))}"],
        ["memcheck errors", _fmt(s.get("memcheck_errors"))],
        ["racecheck errors", _fmt(s.get("racecheck_errors"))],
    ]
    peaks = results.get("peaks") or {}
    if peaks.get("copy_gbps"):
        lines.append(["peak copy GB/s | cuBLAS fp16 TFLOP/s",
                      f"{_fmt(peaks.get('copy_gbps'))} | {_fmt(peaks.get('cublas_fp16_tflops'))}"])
    for group, prov, ref, gm, n in speedup_lines(results.get("cases", [])):
        lines.append([f"{group}: {prov} vs {ref} (geomean of {n})", f"{gm:.3f}x"])
    for note in results.get("notes") or []:
        lines.append(["note", note])
    for failure in results.get("bench_failures") or []:
        lines.append(["benchmark failure", failure])
    head = (f"{results.get('device')} | commit {str(results.get('commit'))[:12]} | "
            f"{results.get('date')}")
    return head + "\n" + tabulate(lines, headers=["check", "result"], tablefmt=tablefmt,
                                  disable_numparse=True)


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
        return runpy.run_path(script)["main"](argv)
    run_cpu_gemm_bench((256, 512) if getattr(args, "quick", False) else (256, 512, 1024))
    return 0


# --------------------------------------------------------------------------------------------
# Command line: the GPU check's report steps
# --------------------------------------------------------------------------------------------

def _finalize(args) -> int:
    """Combine the results written by this run's benchmarks with test and sanitizer counts."""
    parts = sorted(glob.glob(os.path.join(args.results_dir, "*.json"))) if args.results_dir else []
    if parts:
        results = load_results(parts[0])
        for p in parts[1:]:
            results = merge_results(results, load_results(p))
    else:
        results = new_results(args.device)
    if args.junit and os.path.exists(args.junit):
        try:
            results["tests"] = counts_from_junit(args.junit)
        except ET.ParseError as e:
            print(f"finalize: unreadable junit xml {args.junit}: {e}", file=sys.stderr)
    if results["tests"].get("passed") is None and args.pytest_log and os.path.exists(args.pytest_log):
        with open(args.pytest_log, errors="replace") as f:
            counts = counts_from_pytest_output(f.read())
        if counts:
            results["tests"] = counts
    for key, log in (("memcheck_errors", args.memcheck_log), ("racecheck_errors", args.racecheck_log)):
        if log and os.path.exists(log):
            with open(log, errors="replace") as f:
                results["sanitizer"][key] = sanitizer_errors(f.read())
    if args.note:
        results.setdefault("notes", []).extend(args.note)
    paths = [write_results(results, d) for d in args.write]
    if results.get("cases") and args.publish:
        paths.append(write_results(results, args.publish))
    for p in paths:
        print(f"results: {p}")
    return 0


def _summary(args) -> int:
    print(summary_table(load_results(args.file)))
    return 0


def _merge(args) -> int:
    results = load_results(args.files[0])
    for p in args.files[1:]:
        results = merge_results(results, load_results(p))
    print(write_results(results, args.out_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyimgcls.bench",
                                description="pyimgcls benchmark results: finalize, merge, summarize")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("finalize", help="merge bench JSONs with test/sanitizer counts and write them")
    f.add_argument("--results-dir", help="folder the bench_*.py scripts wrote their JSON into")
    f.add_argument("--junit", help="pytest junit XML of the test stage")
    f.add_argument("--pytest-log", help="pytest output, used when the junit XML is missing")
    f.add_argument("--memcheck-log")
    f.add_argument("--racecheck-log")
    f.add_argument("--device", default="auto")
    f.add_argument("--note", action="append", help="free-text note stored under 'notes'")
    f.add_argument("--write", action="append", default=[], help="folder to write the JSON into")
    f.add_argument("--publish", help="also write here, but only when the results have cases")
    f.set_defaults(func=_finalize)
    s = sub.add_parser("summary", help="print the summary table of a results JSON")
    s.add_argument("file")
    s.set_defaults(func=_summary)
    m = sub.add_parser("merge", help="merge results JSONs of one run (e.g. separate stages)")
    m.add_argument("files", nargs="+")
    m.add_argument("--out-dir", default=os.path.join(REPO_ROOT, "benchmarks", "results"))
    m.set_defaults(func=_merge)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
