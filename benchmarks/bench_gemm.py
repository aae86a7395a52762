"""GPU GEMM benchmark: our ``cuda`` and ``triton`` backends against cuBLAS (plain torch), side by side.

Cases (each states its FLOPs = 2*M*N*K and its compulsory bytes = inputs read once + output written
once):

- square ``ops.matmul(a, b)``: fp16 at 1024, 2048, 4096, 8192; bf16 and fp32 (IEEE, no TF32) at 4096;
  bytes = (M*K + K*N + M*N) * element size.
- CNN classifier heads ``ops.linear(x, w, b)`` in fp16, x [M, K], w [N, K] as nn.Linear, with bias:
  M (batch) in {32, 128, 256, 1024} x (N, K) in {(4096, 9216), (4096, 4096), (1000, 9216),
  (1000, 4096), (1000, 2048), (10, 512)} -- AlexNet/VGG fc6..fc8, ResNet-50/18 fc, a 1000-class head
  on AlexNet's 9216 pooled features, LeNet-like; and in fp32 (IEEE, the SIMT kernel) at M in
  {32, 256} x (1000, 2048); bytes = (M*K + N*K + M*N + N) * element size. At M <= 256, N = 1000 the
  CUDA GEMM splits K (split-K, csrc/cuda/gemm.cu); each cuda row records the launch plan it ran
  (``plan``: kernel, tile, CTAs, splits, from pyimgcls.backends.cuda.gemm.plan_gemm).

Every provider's output is checked against cuBLAS (relative Frobenius error, stored as ``rel_err``)
before it is timed; timings are ``triton.testing.do_bench`` medians with L2 flushed; the roofline
ceilings (copy bandwidth, cuBLAS 8192^3) are measured at the start of the same run. Rows go to
``<out>/<date>_<gpu>_<shortsha>.json`` (merged with an existing file of the same run) and a table
is printed last.

Usage (repo root, package installed with ``pip install --no-build-isolation -e .``)::

    python benchmarks/bench_gemm.py [--out DIR] [--quick] [--providers cuda,triton]

About 2-4 minutes on an H100, most of it Triton autotuning on the first call of each shape.
Without a CUDA device it prints a message and exits 0.
"""
from __future__ import annotations

import os
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SQUARE = [(1024, torch.float16), (2048, torch.float16), (4096, torch.float16),
          (8192, torch.float16), (4096, torch.bfloat16), (4096, torch.float32)]
CLASSIFIER_M = [32, 128, 256, 1024]
CLASSIFIER_NK = [(4096, 9216), (4096, 4096), (1000, 9216), (1000, 4096), (1000, 2048), (10, 512)]
CLASSIFIER_F32 = [(32, 1000, 2048), (256, 1000, 2048)]  # (M, N, K)
QUICK_SQUARE = [(1024, torch.float16), (4096, torch.float16)]
QUICK_M = [32, 256]
QUICK_NK = [(4096, 9216), (1000, 9216), (1000, 4096), (10, 512)]
QUICK_F32 = [(32, 1000, 2048)]
# ||ours - cuBLAS|| / ||cuBLAS|| above this means the kernel is wrong, not merely rounded
# differently: half-precision outputs round at ~5e-4 (fp16) / ~4e-3 (bf16); fp32 is IEEE on both.
MAX_REL_ERR = {torch.float16: 1e-2, torch.bfloat16: 2e-2, torch.float32: 1e-4}


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.float()
    return float((out.float() - ref).norm() / ref.norm().clamp_min(1e-30))


def gemm_cases(quick: bool):
    """Yield (Case, make_inputs, our_fn, ref_fn, gemm_operands) for every benchmark case;
    gemm_operands(*inputs) gives the (a, b, bias) of the GEMM our_fn runs (for the launch plan)."""
    from pyimgcls import ops
    from pyimgcls.bench import Case, dtype_name
    import torch.nn.functional as F

    gen = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, dtype):
        return torch.randn(*shape, device="cuda", dtype=dtype, generator=gen)

    for n, dtype in (QUICK_SQUARE if quick else SQUARE):
        elt = torch.tensor([], dtype=dtype).element_size()
        case = Case("gemm", "matmul", f"{n}x{n}x{n}", dtype_name(dtype), 2.0 * n ** 3,
                    3.0 * n * n * elt)

        def make(n=n, dtype=dtype):
            return randn(n, n, dtype=dtype), randn(n, n, dtype=dtype)

        yield case, make, ops.matmul, torch.matmul, lambda a, b: (a, b, None)

    heads = [(m, n, k, torch.float16) for m in (QUICK_M if quick else CLASSIFIER_M)
             for n, k in (QUICK_NK if quick else CLASSIFIER_NK)]
    heads += [(m, n, k, torch.float32) for m, n, k in (QUICK_F32 if quick else CLASSIFIER_F32)]
    for m, n, k, dtype in heads:
        elt = torch.tensor([], dtype=dtype).element_size()
        case = Case("gemm", "linear", f"M={m} N={n} K={k} +bias", dtype_name(dtype), 2.0 * m * n * k,
                    float((m * k + n * k + m * n + n) * elt))

        def make(m=m, n=n, k=k, dtype=dtype):
            # weights scaled as nn.Linear's init so activations stay O(1) for any K
            return (randn(m, k, dtype=dtype), randn(n, k, dtype=dtype) / k ** 0.5,
                    randn(n, dtype=dtype))

        # linear(x, w, b) = x @ w^T + b: the GEMM's B is the transposed view of w
        yield case, make, ops.linear, F.linear, lambda x, w, b: (x, w.t(), b)


def launch_plan(prov, operands) -> dict | None:
    """The cuda backend's launch plan for this case (what its kernels were asked to do), else None."""
    if prov != "cuda":
        return None
    from pyimgcls.backends.cuda.gemm import plan_gemm
    plan = plan_gemm(*operands)
    return {k: plan[k] for k in ("kernel", "tile", "ctas", "splits", "launches")}


def bench_case(case, make, our_fn, ref_fn, operands, providers, peaks, rep_ms, failures) -> list[dict]:
    """Time cuBLAS once, then each provider on the same inputs; return their rows."""
    import pyimgcls
    from pyimgcls.bench import time_ms

    args = make()
    ref = ref_fn(*args)
    ref_ms = time_ms(lambda: ref_fn(*args), rep_ms=rep_ms)
    rows = []
    for prov in providers:
        try:
            with pyimgcls.use_backend(prov):
                # first call outside the timer: JIT compilation and Triton autotuning happen here
                out = our_fn(*args)
                torch.cuda.synchronize()
                err = _rel_err(out, ref)
                ms = time_ms(lambda: our_fn(*args), rep_ms=rep_ms)
        except Exception as e:  # noqa: BLE001 -- report every failing case, keep benchmarking
            failures.append(f"{prov} {case.op} {case.shape} {case.dtype}: {type(e).__name__}: {e}")
            print(f"FAILED {failures[-1]}", flush=True)
            continue
        ok = err <= MAX_REL_ERR[getattr(torch, case.dtype)]
        if not ok:
            failures.append(f"{prov} {case.op} {case.shape} {case.dtype}: rel_err {err:.2e}")
            print(f"WRONG RESULT {failures[-1]}", flush=True)
        plan = launch_plan(prov, operands(*args))
        row = case.row(prov, ms, "cublas", ref_ms, peaks, rel_err=err, correct=ok,
                       **({"plan": plan} if plan else {}))
        rows.append(row)
        print(f"{prov:6s} {case.op:6s} {case.shape:28s} {case.dtype:8s} {ms:8.4f} ms  "
              f"cuBLAS {ref_ms:8.4f} ms  x{row['speedup']:.3f}  {row['tflops']:6.1f} TFLOP/s  "
              f"{row['roofline_pct']:5.1f}% roofline  err {err:.1e}"
              + (f"  splits {plan['splits']} ctas {plan['ctas']}" if plan else ""), flush=True)
    return rows


def run(providers, quick: bool, out_dir: str) -> int:
    from pyimgcls.bench import measure_peaks
    from report import finish_results, new_results, print_table

    t_start = time.perf_counter()
    rep_ms = 50 if quick else 100
    peaks = measure_peaks("cuda")
    rows, failures = [], []
    for case, make, our_fn, ref_fn, operands in gemm_cases(quick):
        rows += bench_case(case, make, our_fn, ref_fn, operands, providers, peaks, rep_ms, failures)
        torch.cuda.empty_cache()

    results = new_results("cuda", peaks=peaks, cases=rows)
    finish_results(results, failures, out_dir, "GEMM benchmark", t_start)
    print_table(rows)
    return 1 if failures else 0


def main(argv=None) -> int:
    from report import gpu_bench_parser, gpu_providers

    p = gpu_bench_parser(__doc__, "a few representative cases only",
                         "comma-separated backends to compare with cuBLAS (those not available here are skipped)")
    args = p.parse_args(argv)

    providers, rc = gpu_providers(args.providers, "GPU GEMM benchmark")
    if rc is not None:
        return rc
    return run(providers, args.quick, args.out)


if __name__ == "__main__":
    sys.exit(main())
