"""GPU softmax-cross-entropy benchmark: forward + backward of our ``cuda`` and ``triton`` backends
against ``F.cross_entropy`` in eager PyTorch and under ``torch.compile``.

Cases: classification shapes N in {256, 1024, 4096} x C in {10, 100, 1000}, plus one large C
(N=256, C=32768), in float32 and bfloat16, reduction "mean". One step is
``loss = cross_entropy(x, t); torch.autograd.grad(loss, x)`` (no gradient accumulation, so every
provider does exactly the forward and the backward).
  FLOPs: ~ 6*N*C (max, sub, exp, sum, scale, sub), reported as null (memory-bound op).
  Minimum bytes per step: N*C*itemsize (logits read once) + N*C*itemsize (gradient written once)
  + 8*N (targets); a fused forward+backward cannot move less, so GB/s and % roofline are against that.
  Our path moves 2x that (the forward writes the saved gradient, the backward reads it and writes
  the scaled one); PyTorch's eager path moves more.
Each row also records kernel launches per step counted with torch.profiler (CUDA kernels and
memsets of one step after warm-up) for us, eager and compiled PyTorch, and the launches of our
forward alone (the issue's bar: one).

Correctness is checked against eager PyTorch (loss and gradient, fp32 reference) before timing;
timings are ``triton.testing.do_bench`` medians with L2 flushed. Rows go to
``<out>/<date>_<gpu>_<shortsha>.json`` and a table is printed last.

Usage (repo root, package installed)::

    python benchmarks/bench_softmax_xent.py [--out DIR] [--quick] [--providers cuda,triton]

About 1-2 minutes on an H100 (torch.compile of each shape dominates). Without a CUDA device it
prints a message and exits 0.
"""
from __future__ import annotations

import os
import sys
import time

import torch
import torch.nn.functional as F

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [(n, c) for n in (256, 1024, 4096) for c in (10, 100, 1000)] + [(256, 32768)]
QUICK_SHAPES = [(256, 10), (4096, 1000), (256, 32768)]
DTYPES = [torch.float32, torch.bfloat16]
# Relative error of our loss / gradient against eager fp32 beyond which the kernel is wrong.
MAX_REL_ERR = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def count_launches(fn) -> tuple[int, int]:
    """(kernels, memsets) launched on the GPU by one call of ``fn`` (after a warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = memsets = 0
    for evt in prof.events():
        if evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = evt.name.lower()
        if "memset" in name:
            memsets += 1
        elif "memcpy" not in name:
            kernels += 1
    return kernels, memsets


def run(providers, quick: bool, out_dir: str) -> int:
    import pyimgcls
    from pyimgcls import ops
    from pyimgcls.bench import Case, dtype_name, measure_peaks, time_ms
    from report import finish_results, new_results, print_table

    t_start = time.perf_counter()
    peaks = measure_peaks("cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows, failures = [], []
    compiled_ce = torch.compile(lambda x, t: F.cross_entropy(x, t), dynamic=False)
    for dtype in DTYPES:
        for n, c in (QUICK_SHAPES if quick else SHAPES):
            es = torch.tensor([], dtype=dtype).element_size()
            case = Case("softmax_xent", "cross_entropy", f"N={n} C={c}", dtype_name(dtype), None,
                        float(2 * n * c * es + 8 * n), pass_="fwd+bwd")
            x = (torch.randn(n, c, device="cuda", generator=gen) * 3).to(dtype).requires_grad_()
            t = torch.randint(0, c, (n,), device="cuda", generator=gen)

            def step(loss_fn):
                loss = loss_fn(x, t)
                return loss, torch.autograd.grad(loss, x)[0]

            eager_fn = lambda: step(F.cross_entropy)  # noqa: E731
            compiled_fn = lambda: step(compiled_ce)  # noqa: E731
            ref_loss, ref_grad = step(lambda a, b: F.cross_entropy(a.float(), b))
            ref_ms = time_ms(eager_fn)
            compiled_fn()
            compile_ms = time_ms(compiled_fn)
            ref_launches, ref_memsets = count_launches(eager_fn)
            comp_launches, comp_memsets = count_launches(compiled_fn)
            for prov in providers:
                try:
                    with pyimgcls.use_backend(prov):
                        ours_fn = lambda: step(ops.cross_entropy)  # noqa: E731
                        loss, grad = ours_fn()
                        torch.cuda.synchronize()
                        err = max(_rel_err(loss, ref_loss), _rel_err(grad, ref_grad))
                        ms = time_ms(ours_fn)
                        launches, memsets = count_launches(ours_fn)
                        with torch.no_grad():
                            fwd_launches, _ = count_launches(lambda: ops.cross_entropy(x, t))
                except Exception as e:  # noqa: BLE001 -- report every failing case, keep benchmarking
                    failures.append(f"{prov} {case.shape} {case.dtype}: {type(e).__name__}: {e}")
                    print(f"FAILED {failures[-1]}", flush=True)
                    continue
                ok = err <= MAX_REL_ERR[dtype]
                if not ok:
                    failures.append(f"{prov} {case.shape} {case.dtype}: rel_err {err:.2e}")
                    print(f"WRONG RESULT {failures[-1]}", flush=True)
                row = case.row(prov, ms, "torch", ref_ms, peaks, rel_err=err, correct=ok,
                               compile_ms=compile_ms, speedup_vs_compile=compile_ms / ms,
                               launches=launches, memsets=memsets, fwd_launches=fwd_launches,
                               ref_launches=ref_launches, ref_memsets=ref_memsets,
                               compile_launches=comp_launches, compile_memsets=comp_memsets)
                rows.append(row)
                print(f"{prov:6s} {case.shape:16s} {case.dtype:8s} {ms * 1e3:8.1f} us  eager {ref_ms * 1e3:8.1f} us "
                      f"(x{row['speedup']:.2f})  compile {compile_ms * 1e3:8.1f} us (x{compile_ms / ms:.2f})  "
                      f"{row['gbps']:7.1f} GB/s  launches {launches}+{memsets}m (fwd {fwd_launches}) "
                      f"vs eager {ref_launches}+{ref_memsets}m, compile {comp_launches}+{comp_memsets}m  "
                      f"err {err:.1e}", flush=True)
            del x, t
    torch.cuda.empty_cache()

    results = new_results("cuda", peaks=peaks, cases=rows)
    finish_results(results, failures, out_dir, "softmax-xent benchmark", t_start)
    print_table(rows)
    return 1 if failures else 0


def main(argv=None) -> int:
    from report import gpu_bench_parser, gpu_providers

    p = gpu_bench_parser(__doc__, "a few representative cases only",
                         "comma-separated backends to compare with PyTorch (those not available here are skipped)")
    args = p.parse_args(argv)

    providers, rc = gpu_providers(args.providers, "GPU softmax-cross-entropy benchmark")
    if rc is not None:
        return rc
    return run(providers, args.quick, args.out)


if __name__ == "__main__":
    sys.exit(main())
