"""The helpers every benchmarks/bench_<family>.py shares (benchmarks/report.py) and the scripts' behaviour
on a machine without CUDA (exit 0 with a message, nothing written)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_report():
    # benchmarks/ is not a package: load its report module by path.
    spec = importlib.util.spec_from_file_location("_benchmarks_report",
                                                  os.path.join(REPO, "benchmarks", "report.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


report = _load_report()
GPU_BENCHES = ["gemm", "conv", "pool", "softmax_xent", "batchnorm", "models", "quant"]


def test_gpu_bench_parser_shared_options(tmp_path):
    args = report.gpu_bench_parser("doc line\nmore", "quick help").parse_args(
        ["--out", str(tmp_path), "--quick", "--providers", "triton"])
    assert (args.out, args.quick, args.providers) == (str(tmp_path), True, "triton")
    defaults = report.gpu_bench_parser("doc", "q").parse_args([])
    assert defaults.providers == "cuda,triton" and not defaults.quick
    assert defaults.out == os.path.join(REPO, "benchmarks", "results")


def test_select_providers_keeps_order_and_reports_skipped(capsys):
    assert report.select_providers(" triton, cuda ,,", ["cpu", "cuda", "triton"]) == ["triton", "cuda"]
    assert report.select_providers("cuda,triton", ["cpu", "torch"]) == []
    assert capsys.readouterr().out.count("skipped") == 2


def test_gpu_providers_exit_codes(monkeypatch, capsys):
    # no CUDA device: skipped (0); none of the backends available: 1; else the backends, no exit
    import pyimgcls
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert report.gpu_providers("cuda,triton", "demo benchmark") == ([], 0)
    assert "skipping demo benchmark" in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(pyimgcls, "available_backends", lambda: ["cpu", "torch"])
    assert report.gpu_providers("cuda,triton", "demo benchmark") == ([], 1)
    monkeypatch.setattr(pyimgcls, "available_backends", lambda: ["cpu", "cuda", "torch"])
    assert report.gpu_providers("cuda,triton", "demo benchmark") == (["cuda"], None)


def test_finish_results_records_failures_and_writes(tmp_path, capsys):
    res = report.new_results("cpu", name="test-device", cases=[])
    path = report.finish_results(res, ["case x: mismatch"], str(tmp_path), "demo benchmark", 0.0)
    data = json.loads(open(path).read())
    assert data["bench_failures"] == ["case x: mismatch"] and data["device"] == "test-device"
    assert "demo benchmark on test-device" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
@pytest.mark.parametrize("family", GPU_BENCHES)
def test_gpu_benchmark_exits_cleanly_without_cuda(family, tmp_path):
    r = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", f"bench_{family}.py"), "--quick",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "no CUDA device" in r.stdout and not os.listdir(tmp_path)


def test_sanitizer_error_counts_read_memcheck_and_racecheck_summaries():
    # the closing lines compute-sanitizer 2025.3 printed on the H200 (memcheck, then racecheck, whose
    # summary has its own wording: a log without an "ERROR SUMMARY" line is not a cut-off run)
    assert report.sanitizer_errors("========= ERROR SUMMARY: 0 errors\n") == 0
    assert report.sanitizer_errors("========= ERROR SUMMARY: 2 errors\n========= ERROR SUMMARY: 1 error\n") == 3
    assert report.sanitizer_errors(
        "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n") == 0
    assert report.sanitizer_errors(
        "========= RACECHECK SUMMARY: 3 hazards displayed (2 errors, 1 warnings)\n") == 2
    assert report.sanitizer_errors("3 failed, 25 passed in 9.10s\n") is None
