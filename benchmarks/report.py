"""Results reporting for ``benchmarks/bench_*.py`` and the GPU check (``benchmarks/gpu_check.sh``).

The run-time pieces -- timing, peaks, the case/row model and ``pyimgcls bench`` -- live in the
installed library (``pyimgcls/bench.py``); everything that only the benchmark scripts and the GPU
check need lives here:

- run metadata (:func:`git_commit`, :func:`device_name`, :func:`versions`) and :func:`new_results`,
  a results object with every schema key (docs/architecture.md, "Benchmarks");
- :func:`write_results` / :func:`merge_results` / :func:`load_results` --
  ``benchmarks/results/<date>_<gpu>_<shortsha>.json``; rows of the same run are merged into the
  existing file; :func:`finish_results`, the common tail of every GPU benchmark's run();
- :func:`gpu_bench_parser` / :func:`select_providers` -- the options every bench script shares;
- :func:`counts_from_junit`, :func:`counts_from_pytest_output`, :func:`sanitizer_errors` -- test and
  compute-sanitizer counts for the GPU check;
- :func:`print_table`, :func:`summary_table`, :func:`speedup_lines` -- tabulate-formatted reports
  (also used by ``benchmarks/make_benchmarks_md.py``);
- the GPU check's report steps::

      python -P benchmarks/report.py finalize|summary|merge ...

The scripts in this folder import it as ``report`` (``python benchmarks/bench_x.py`` puts the folder
on ``sys.path``). It imports only the standard library at load time (tabulate where used) and takes
``pyimgcls.bench`` from ``sys.modules`` when the package is already imported, else loads
``pyimgcls/bench.py`` from its file without importing the package, so the GPU check's report step
(and ``make_benchmarks_md.py``) work even when the package failed to build.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import glob
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from typing import Iterable, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
    """The run-time half, ``pyimgcls/bench.py``: ``pyimgcls.bench`` when the package is already imported
    (as in the bench scripts), else the file loaded on its own, without importing the package (whose
    native module may be unbuilt)."""
    mod = sys.modules.get("pyimgcls.bench") or sys.modules.get("_pyimgcls_bench")
    if mod is None:
        spec = importlib.util.spec_from_file_location(
            "_pyimgcls_bench", os.path.join(REPO_ROOT, "pyimgcls", "bench.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
    return mod


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
    if _bench()._resolve_device(device) == "cuda":
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
        "schema": _bench().SCHEMA,
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


def gpu_providers(spec: str, what: str) -> tuple[list[str], int | None]:
    """The GPU benchmarks' start: (providers, None) with the backends of ``spec`` available here, or ([],
    exit status) when there is nothing to run: 0 without a CUDA device (the benchmark is skipped, said
    with ``what``), 1 when none of the backends is available."""
    import torch

    if not torch.cuda.is_available():
        print(f"no CUDA device: skipping {what}")
        return [], 0
    import pyimgcls

    providers = select_providers(spec, pyimgcls.available_backends())
    if not providers:
        print("no GPU backend of ours is available: nothing to compare")
        return [], 1
    return providers, None


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
        rows[tuple(row.get(k) for k in _bench().ROW_IDENTITY)] = row
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


def write_cpu_results(results: dict, out: str | None, stem: str) -> str:
    """Write ``results`` to ``out``, or by default to ``benchmarks/results/cpu/<today>_cpu-<stem>.json``
    (the CPU benchmarks' naming), creating the folder; returns the path."""
    import datetime as dt
    out = out or os.path.join(REPO_ROOT, "benchmarks", "results", "cpu",
                              f"{dt.date.today().isoformat()}_cpu-{stem}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    return out


def load_results(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    schema = _bench().SCHEMA
    if data.get("schema") != schema:
        raise ValueError(f"{path}: schema is {data.get('schema')!r}, expected {schema!r}")
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
    """Sum of the error counts of a compute-sanitizer log's summary lines (one per process it followed):
    ``ERROR SUMMARY: N errors`` (memcheck and most tools), ``RACECHECK SUMMARY: H hazards displayed
    (N errors, W warnings)`` (racecheck, seen on the H200 with compute-sanitizer 2025.3); None when the
    log has no such line (the tool did not run or was killed)."""
    found = re.findall(r"ERROR SUMMARY:\s*(\d+) error", log_text)
    found += re.findall(r"RACECHECK SUMMARY:\s*\d+ hazards? displayed \((\d+) error", log_text)
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
    p = argparse.ArgumentParser(prog="python benchmarks/report.py",
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
