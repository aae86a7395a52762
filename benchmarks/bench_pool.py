"""GPU pooling benchmark: our ``cuda`` and ``triton`` backends against PyTorch's CUDA pooling.

Layers (batch 128), each in fp16 channels_last and fp32 NCHW, forward and backward:

- AlexNet:   max 3x3/2 on 64x55x55, 192x27x27, 256x13x13
- VGG-16:    max 2x2/2 on 64x224x224, 128x112x112, 256x56x56, 512x28x28, 512x14x14
- ResNet-50: max 3x3/2 pad 1 on 64x112x112; global average (adaptive 1x1) on 2048x7x7
- DenseNet-121 transitions: avg 2x2/2 on 128x56x56, 256x28x28, 512x14x14

Bytes (the compulsory traffic GB/s and % roofline are computed from):
  fwd = input read once + output written once (inference: no indices are written by us; PyTorch's
        CUDA max pooling writes its int64 indices regardless, which is part of what we beat);
  bwd = grad_output read once + grad_input written once (+ the int64 indices read, for max).
FLOPs are reported as null (pooling is memory-bound). The backward is timed as the backward op
alone on both sides (ours: pyimgcls::*_backward, PyTorch: aten::*_backward), not the autograd graph.
Every provider's output is checked against PyTorch before it is timed. Peaks (copy bandwidth) are
measured at the start of the same run; rows go to ``<out>/<date>_<gpu>_<shortsha>.json``.

Usage (repo root, package installed with ``pip install --no-build-isolation -e .``)::

    python benchmarks/bench_pool.py [--out DIR] [--quick] [--providers cuda,triton]

Without a CUDA device it prints a message and exits 0.

CPU, NCHW max pooling forward (issue #20)::

    OMP_NUM_THREADS=1 python benchmarks/bench_pool.py --cpu-nchw [--reps 7] [--cpu-out FILE]

times on one thread (time.thread_time, minimum of --reps, variants interleaved in one process) the
ResNet stem max pool 3x3/2 p1 on [16, 64, 32, 32] and [16, 64, 112, 112], float32 and bfloat16, with
and without indices: our vector body, our scalar walk (PYIMGCLS_CPU_POOL_NCHW=scalar) and PyTorch; then
the resnet18 eval forward (batch 16, 3x64x64, torch.no_grad, float32 and bf16 autocast) with our cpu
backend (vector / scalar pool) and the torch backend. Results go to FILE (JSON) when given.
"""
from __future__ import annotations

import os
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 128
# (network, kind, C, H, W, kernel, stride, padding)
LAYERS = [
    ("alexnet", "max", 64, 55, 55, 3, 2, 0),
    ("alexnet", "max", 192, 27, 27, 3, 2, 0),
    ("alexnet", "max", 256, 13, 13, 3, 2, 0),
    ("vgg16", "max", 64, 224, 224, 2, 2, 0),
    ("vgg16", "max", 128, 112, 112, 2, 2, 0),
    ("vgg16", "max", 256, 56, 56, 2, 2, 0),
    ("vgg16", "max", 512, 28, 28, 2, 2, 0),
    ("vgg16", "max", 512, 14, 14, 2, 2, 0),
    ("resnet50", "max", 64, 112, 112, 3, 2, 1),
    ("resnet50", "gap", 2048, 7, 7, None, None, None),
    ("densenet121", "avg", 128, 56, 56, 2, 2, 0),
    ("densenet121", "avg", 256, 28, 28, 2, 2, 0),
    ("densenet121", "avg", 512, 14, 14, 2, 2, 0),
]
QUICK = {0, 3, 8, 9, 10}
VARIANTS = [(torch.float16, "nhwc"), (torch.float32, "nchw")]


def _ops_for(kind, k, s, p):
    """(ours_fwd, torch_fwd, ours_bwd(go, x, out_aux), torch_bwd(go, x, aux), aux_fn)."""
    import torch.nn.functional as F

    from pyimgcls import ops

    def fmt(x):
        return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()

    if kind == "max":
        def ours_bwd(go, x, idx):
            return torch.ops.pyimgcls.max_pool2d_backward(go, idx, x.shape[2], x.shape[3], [k, k], [s, s], [p, p],
                                                          [1, 1], fmt(x), _backend())

        def torch_bwd(go, x, idx):
            return torch.ops.aten.max_pool2d_with_indices_backward(go, x, [k, k], [s, s], [p, p], [1, 1], False, idx)

        aux = lambda x: F.max_pool2d(x, k, s, p, return_indices=True)[1]  # noqa: E731
        return (lambda x: ops.max_pool2d(x, k, s, p), lambda x: F.max_pool2d(x, k, s, p), ours_bwd, torch_bwd, aux)
    if kind == "avg":
        def ours_bwd(go, x, _):
            return torch.ops.pyimgcls.avg_pool2d_backward(go, x.shape[2], x.shape[3], [k, k], [s, s], [p, p], False,
                                                          True, None, fmt(x), _backend())

        def torch_bwd(go, x, _):
            return torch.ops.aten.avg_pool2d_backward(go, x, [k, k], [s, s], [p, p], False, True, None)

        return (lambda x: ops.avg_pool2d(x, k, s, p), lambda x: F.avg_pool2d(x, k, s, p), ours_bwd, torch_bwd,
                lambda x: None)

    def ours_bwd(go, x, _):
        return torch.ops.pyimgcls.adaptive_avg_pool2d_backward(go, x.shape[2], x.shape[3], fmt(x), _backend())

    def torch_bwd(go, x, _):
        return torch.ops.aten._adaptive_avg_pool2d_backward(go, x)

    return (lambda x: ops.adaptive_avg_pool2d(x, 1), lambda x: F.adaptive_avg_pool2d(x, 1), ours_bwd, torch_bwd,
            lambda x: None)


def _backend():
    import pyimgcls
    return pyimgcls._backend.resolve(torch.device("cuda"), "bench")


def _check(out, ref, kind) -> float:
    if kind == "max":
        return 0.0 if torch.equal(out, ref) else float("inf")
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def run(providers, quick: bool, out_dir: str) -> int:
    import pyimgcls
    from pyimgcls.bench import Case, dtype_name, measure_peaks, time_ms
    from report import finish_results, new_results, print_table

    t_start = time.perf_counter()
    peaks = measure_peaks("cuda")
    rows, failures = [], []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for li, (net, kind, C, H, W, k, s, p) in enumerate(LAYERS):
        if quick and li not in QUICK:
            continue
        ours_fwd, torch_fwd, ours_bwd, torch_bwd, aux_fn = _ops_for(kind, k, s, p)
        for dtype, layout in VARIANTS:
            x = torch.randn(BATCH, C, H, W, device="cuda", dtype=dtype, generator=gen)
            if layout == "nhwc":
                x = x.contiguous(memory_format=torch.channels_last)
            ref = torch_fwd(x)
            go = torch.randn(ref.shape, device="cuda", dtype=dtype, generator=gen).contiguous(
                memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format)
            aux = aux_fn(x)
            ref_gx = torch_bwd(go, x, aux)
            elt = x.element_size()
            idx_bytes = 8 * ref.numel() if kind == "max" else 0
            what = f"{kind} {k}x{k}/{s} p{p}" if kind != "gap" else "global avg"
            shape = f"{net} {what} {BATCH}x{C}x{H}x{W}"
            cases = {
                "fwd": Case("pool", f"{kind}_pool2d" if kind != "gap" else "adaptive_avg_pool2d", shape,
                            dtype_name(dtype), None, float((x.numel() + ref.numel()) * elt), "fwd", layout),
                "bwd": Case("pool", f"{kind}_pool2d" if kind != "gap" else "adaptive_avg_pool2d", shape,
                            dtype_name(dtype), None, float((x.numel() + ref.numel()) * elt + idx_bytes), "bwd",
                            layout),
            }
            ref_ms = {"fwd": time_ms(lambda: torch_fwd(x)), "bwd": time_ms(lambda: torch_bwd(go, x, aux))}
            for prov in providers:
                with pyimgcls.use_backend(prov):
                    fns = {"fwd": (lambda: ours_fwd(x), ref), "bwd": (lambda: ours_bwd(go, x, aux), ref_gx)}
                    for pass_, (fn, expect) in fns.items():
                        case = cases[pass_]
                        try:
                            out = fn()  # first call outside the timer: Triton JIT happens here
                            torch.cuda.synchronize()
                            err = _check(out, expect, kind if pass_ == "fwd" else "sum")
                            ms = time_ms(fn)
                        except Exception as e:  # noqa: BLE001 -- report every failing case, keep going
                            failures.append(f"{prov} {pass_} {shape} {case.dtype}: {type(e).__name__}: {e}")
                            print(f"FAILED {failures[-1]}", flush=True)
                            continue
                        ok = err <= (1e-2 if dtype != torch.float32 else 1e-5)
                        if not ok:
                            failures.append(f"{prov} {pass_} {shape} {case.dtype}: rel_err {err:.2e}")
                            print(f"WRONG RESULT {failures[-1]}", flush=True)
                        row = case.row(prov, ms, "torch", ref_ms[pass_], peaks, rel_err=err, correct=ok)
                        rows.append(row)
                        print(f"{prov:6s} {pass_} {shape:44s} {case.dtype:8s} {layout} {ms:8.4f} ms  torch "
                              f"{ref_ms[pass_]:8.4f} ms  x{row['speedup']:.2f}  {row['gbps']:.0f} GB/s  "
                              f"{row['roofline_pct']:.1f}% of copy", flush=True)
            del x, ref, go, aux, ref_gx
        torch.cuda.empty_cache()

    results = new_results("cuda", peaks=peaks, cases=rows)
    finish_results(results, failures, out_dir, "pooling benchmark", t_start)
    print_table(rows)
    return 1 if failures else 0


def _tmin(fn, reps):
    """Minimum thread CPU time of fn over reps calls, in ms (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best * 1e3


def run_cpu_nchw(reps: int, out_file: str | None) -> int:
    import json

    import torch.nn.functional as F

    import pyimgcls
    from pyimgcls import models as zoo, ops
    from pyimgcls.training.loop import set_cpu_threads

    set_cpu_threads(1)
    rows = []

    def with_pool(mode, fn):
        os.environ["PYIMGCLS_CPU_POOL_NCHW"] = mode
        try:
            return fn()
        finally:
            os.environ.pop("PYIMGCLS_CPU_POOL_NCHW", None)

    for shape in ((16, 64, 32, 32), (16, 64, 112, 112)):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
            ref, ref_idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
            for mode in ("vector", "scalar"):
                with pyimgcls.use_backend("cpu"):
                    out, idx = with_pool(mode, lambda: ops.max_pool2d(x, 3, 2, 1, return_indices=True))
                if not (torch.equal(out, ref) and torch.equal(idx, ref_idx)):
                    raise RuntimeError(f"{mode} {shape} {dtype}: result differs from PyTorch")
            t = {}
            for _ in range(2):   # two interleaved rounds, minimum kept
                for mode in ("vector", "scalar"):
                    for idx_ in (False, True):
                        key = f"ours_{mode}_{'idx' if idx_ else 'noidx'}"
                        with pyimgcls.use_backend("cpu"):
                            ms = with_pool(mode, lambda: _tmin(lambda: ops.max_pool2d(x, 3, 2, 1, return_indices=idx_),
                                                               reps))
                        t[key] = min(t.get(key, float("inf")), ms)
                for idx_ in (False, True):
                    key = f"torch_{'idx' if idx_ else 'noidx'}"
                    t[key] = min(t.get(key, float("inf")),
                                 _tmin(lambda: F.max_pool2d(x, 3, 2, 1, return_indices=idx_), reps))
            row = {"op": "max_pool2d 3x3/2 p1", "shape": list(shape), "dtype": str(dtype).split(".")[-1],
                   "threads": 1, "ms": t}
            rows.append(row)
            print(f"{str(shape):20s} {row['dtype']:9s} " + "  ".join(f"{k} {v:.3f}" for k, v in t.items()), flush=True)

    torch.manual_seed(0)
    model = zoo.get_model("resnet18", num_classes=10).eval()
    x = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for bf16 in (False, True):
        def fwd(backend):
            with torch.no_grad(), pyimgcls.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16,
                                                                                enabled=bf16):
                return model(x)
        t = {}
        for _ in range(2):
            for mode in ("vector", "scalar"):
                t[f"ours_{mode}"] = min(t.get(f"ours_{mode}", float("inf")),
                                        with_pool(mode, lambda: _tmin(lambda: fwd("cpu"), reps)))
            t["torch"] = min(t.get("torch", float("inf")), _tmin(lambda: fwd("torch"), reps))
        row = {"op": "resnet18 eval forward", "shape": [16, 3, 64, 64], "dtype": "bf16" if bf16 else "float32",
               "threads": 1, "ms": t}
        rows.append(row)
        print(f"resnet18 fwd b16 64x64 {row['dtype']:8s} " + "  ".join(f"{k} {v:.2f}" for k, v in t.items()),
              flush=True)
    if out_file:
        with open(out_file, "w") as f:
            json.dump({"benchmark": "bench_pool.py --cpu-nchw", "clock": "time.thread_time, min of reps",
                       "reps": reps, "torch": torch.__version__, "rows": rows}, f, indent=1)
        print(f"wrote {out_file}")
    return 0


def main(argv=None) -> int:
    from report import gpu_bench_parser, gpu_providers

    p = gpu_bench_parser(__doc__, "one layer per network only",
                         "comma-separated backends to compare with PyTorch")
    p.add_argument("--cpu-nchw", action="store_true", help="CPU NCHW max pool forward and resnet18 (one thread)")
    p.add_argument("--reps", type=int, default=7, help="--cpu-nchw: timed calls per variant and round")
    p.add_argument("--cpu-out", default=None, help="--cpu-nchw: JSON results file")
    args = p.parse_args(argv)
    if args.cpu_nchw:
        return run_cpu_nchw(args.reps, args.cpu_out)
    providers, rc = gpu_providers(args.providers, "GPU pooling benchmark")
    if rc is not None:
        return rc
    return run(providers, args.quick, args.out)


if __name__ == "__main__":
    sys.exit(main())
