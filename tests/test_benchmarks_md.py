"""benchmarks/make_benchmarks_md.py: the CPU whole-model section (issue #20) takes the newest model-matrix
file per thread count and renders each case's speedup and the geometric mean; GPU sections are unchanged."""
import importlib.util
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
    path = os.path.join(REPO, "benchmarks", "make_benchmarks_md.py")
    spec = importlib.util.spec_from_file_location("make_benchmarks_md_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(model, threads, ms, ref_ms):
    return {"family": "model", "op": model, "pass": "fwd", "shape": "16x3x64x64", "dtype": "float32",
            "provider": "cpu", "ms": ms, "ref_provider": "torch", "ref_ms": ref_ms, "speedup": ref_ms / ms,
            "threads": threads, "batch": 16, "roofline_pct": 50.0, "load_avg": 0.5}


def _write(d, name, date, rows):
    res = {"schema": "pyimgcls-bench/1", "date": date, "commit": "abcdef0123", "device": "CPU test",
           "dirty": False, "cases": rows}
    with open(os.path.join(d, name), "w") as f:
        json.dump(res, f)


def test_models_section_newest_per_thread_count(tmp_path):
    mod = _load()
    cpu = tmp_path / "cpu"
    cpu.mkdir()
    _write(cpu, "2026-01-01_cpu-models-old.json", "2026-01-01T00:00:00",
           [_row("resnet18", 1, 10.0, 5.0), _row("resnet18", 2, 10.0, 5.0)])
    _write(cpu, "2026-01-02_cpu-models-1t.json", "2026-01-02T00:00:00",
           [_row("resnet18", 1, 10.0, 20.0), _row("vgg11_bn", 1, 10.0, 5.0)])
    (cpu / "2026-01-03_cpu-models_pytest-benchmark.json").write_text('{"benchmarks": []}')  # other schema
    text = mod.models_section(str(tmp_path))
    one = text.split("### 1 thread")[1].split("### 2 threads")[0]
    two = text.split("### 2 threads")[1]
    assert "2026-01-02_cpu-models-1t.json" in one and "vgg11_bn" in one
    assert "**1.000x** (n=2)" in one  # geomean of 2.0 and 0.5
    assert "2026-01-01_cpu-models-old.json" in two and "**0.500x** (n=1)" in two
    assert "CPU whole models" in mod.render(str(tmp_path))


def test_models_section_empty_without_files(tmp_path):
    assert _load().models_section(str(tmp_path)) == ""
