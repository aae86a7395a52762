"""CPU model benchmark matrix (issue #20): every model x pass x threads x batch in float32, and bfloat16
autocast for resnet18 / resnet50, our ``cpu`` backend against PyTorch's kernels on the same model object,
timed interleaved in one process (see ``benchmarks/bench_models_cpu.py`` for the method).

Not part of the test suite (pyproject's testpaths is ``tests``); run it explicitly:

    pytest benchmarks/test_bench_models_cpu.py -s [-k resnet18]

Each case first checks our eval forward against the torch backend's (a wrong result fails the case; a
slow one does not: tests never assert timings) and appends its row to a results file (schema
pyimgcls-bench/1), ``benchmarks/results/cpu/<date>_cpu-models.json`` unless ``PYIMGCLS_MODELS_OUT``
names another file; ``python benchmarks/make_benchmarks_md.py`` turns the newest one into BENCHMARKS.md rows.
"""
import datetime as dt
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_models_cpu as bmc  # noqa: E402
import report  # noqa: E402

CASES = list(bmc.matrix())


@pytest.fixture(scope="module")
def results():
    res = report.new_results("cpu")
    res["peaks"]["cpu_fp32_gflops_by_threads"] = {}
    yield res
    if not res["cases"]:
        return
    res["geomean_speedup"] = report.geomean(r["speedup"] for r in res["cases"])
    out = os.environ.get("PYIMGCLS_MODELS_OUT") or os.path.join(
        report.REPO_ROOT, "benchmarks", "results", "cpu", f"{dt.date.today().isoformat()}_cpu-models.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"\nwrote {out}: {len(res['cases'])} cases, geometric mean ratio {res['geomean_speedup']:.3f}")


@pytest.mark.parametrize("name,pass_,threads,batch,dtype", CASES,
                         ids=[f"{n}-{p}-t{t}-N{b}-{d}" for n, p, t, b, d in CASES])
def test_model_cpu(results, name, pass_, threads, batch, dtype):
    peaks = results["peaks"]["cpu_fp32_gflops_by_threads"]
    if threads not in peaks:
        peaks[threads] = bmc.peak_gflops(threads)
    row = bmc.run_case(name, pass_, threads, batch, dtype, rounds=5, peak=peaks[threads])
    row["load_avg"] = os.getloadavg()[0]
    results["cases"].append(row)
    print(f"  ours {row['ms']:.2f} ms, torch {row['ref_ms']:.2f} ms, ratio {row['speedup']:.2f}", end="")


def test_forward_flops_counts_the_whole_batch():
    """The roofline column divides these FLOPs by the measured time of the whole batch: a per-sample
    count (bench_prune.macs's unit) would understate every batch-16 roofline 16x."""
    import torch
    import pyimgcls.nn as pnn

    model = torch.nn.Sequential(pnn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(), pnn.Linear(8 * 5 * 5, 4))
    x = torch.randn(3, 3, 5, 5)
    per_sample_macs = 8 * 5 * 5 * 3 * 9 + 4 * 200
    assert bmc.forward_flops(model, x) == 2.0 * 3 * per_sample_macs
