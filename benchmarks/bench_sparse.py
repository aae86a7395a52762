"""GPU 2:4 sparse GEMM benchmark: ``ops.sparse_linear`` (compressed 2:4 weight) against the dense
``ops.linear`` of the same backend on the same (decompressed) weight, side by side, and cuBLAS.

The target of issue #23 is the ``cuda`` row's ``speedup`` (sparse / our dense kernel) >= 1.3.

Cases (FLOPs stated dense-equivalent, 2*M*N*K, so TFLOP/s compare with the dense rows; bytes = x,
values, metadata, bias and output each moved once: (M*K + N*K/2 + M*N + N) * element size +
N*ceil(K/16)*2): fp16 and bf16, classifier heads x [M, K], w [N, K] with bias at M in {256, 1024,
4096} x (N, K) in {(4096, 4096), (4096, 9216), (1000, 2048)}, and 1x1 convolutions of ResNet-50 as
GEMMs at batch 16 (M = 16 * H * W): (M, N, K) = (12544, 512, 256), (50176, 256, 64), (3136, 1024, 512).
Each sparse output is checked against cuBLAS on the decompressed weight (relative Frobenius error,
``rel_err``) before it is timed; timings are ``pyimgcls.bench.time_ms`` medians with L2 flushed.

Usage (repo root, package installed)::

    python benchmarks/bench_sparse.py [--out DIR] [--quick] [--providers cuda,triton]

Without a CUDA device it prints a message and exits 0. Unmeasured so far (no GPU lent yet).
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

HEADS_M = [256, 1024, 4096]
HEADS_NK = [(4096, 4096), (4096, 9216), (1000, 2048)]
CONV1X1 = [(16 * 28 * 28, 512, 256), (16 * 56 * 56, 256, 64), (16 * 14 * 14, 1024, 512)]
QUICK_M = [1024]
QUICK_NK = [(4096, 4096)]
DTYPES = [torch.float16, torch.bfloat16]
MAX_REL_ERR = {torch.float16: 1e-2, torch.bfloat16: 2e-2}


def _rel_err(out, ref) -> float:
    ref = ref.float()
    return float((out.float() - ref).norm() / ref.norm().clamp_min(1e-30))


def cases(quick: bool):
    from pyimgcls.bench import Case, dtype_name

    shapes = [(m, n, k) for m in (QUICK_M if quick else HEADS_M) for n, k in (QUICK_NK if quick else HEADS_NK)]
    shapes += [] if quick else CONV1X1
    for dtype in ([torch.float16] if quick else DTYPES):
        elt = torch.tensor([], dtype=dtype).element_size()
        for m, n, k in shapes:
            nbytes = (m * k + n * k / 2 + m * n + n) * elt + n * -(-k // 16) * 2
            yield Case("sparse", "sparse_linear", f"M={m} N={n} K={k} +bias", dtype_name(dtype), 2.0 * m * n * k,
                       float(nbytes)), (m, n, k, dtype)


def make(m, n, k, dtype):
    from pyimgcls import ops, pruning
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=dtype, generator=gen)
    w = torch.randn(n, k, device="cuda", dtype=dtype, generator=gen) / k ** 0.5
    w = w * pruning.mask_2_4(w)
    b = torch.randn(n, device="cuda", dtype=dtype, generator=gen)
    v, meta = ops.compress_2_4(w)
    return x, w, b, v, meta


def run(providers, quick: bool, out_dir: str) -> int:
    import pyimgcls
    from pyimgcls import ops
    from pyimgcls.bench import measure_peaks, time_ms
    from report import finish_results, new_results, print_table

    t_start = time.perf_counter()
    rep_ms = 50 if quick else 100
    peaks = measure_peaks("cuda")
    rows, failures = [], []
    for case, shape in cases(quick):
        x, w, b, v, meta = make(*shape)
        ref = torch.nn.functional.linear(x, w, b)
        cublas_ms = time_ms(lambda: torch.nn.functional.linear(x, w, b), rep_ms=rep_ms)
        for prov in providers:
            try:
                with pyimgcls.use_backend(prov), torch.no_grad():
                    out = ops.sparse_linear(x, v, meta, b)
                    dense = ops.linear(x, w, b)
                    torch.cuda.synchronize()
                    err = _rel_err(out, ref)
                    ms = time_ms(lambda: ops.sparse_linear(x, v, meta, b), rep_ms=rep_ms)
                    dense_ms = time_ms(lambda: ops.linear(x, w, b), rep_ms=rep_ms)
            except Exception as e:  # noqa: BLE001 -- report every failing case, keep benchmarking
                failures.append(f"{prov} {case.shape} {case.dtype}: {type(e).__name__}: {e}")
                print(f"FAILED {failures[-1]}", flush=True)
                continue
            ok = err <= MAX_REL_ERR[shape[3]]
            if not ok:
                failures.append(f"{prov} {case.shape} {case.dtype}: rel_err {err:.2e}")
                print(f"WRONG RESULT {failures[-1]}", flush=True)
            del dense
            rows.append(case.row(f"{prov}-sparse", ms, prov, dense_ms, peaks, rel_err=err, correct=ok,
                                 cublas_ms=cublas_ms))
            print(f"{prov:6s} {case.shape:28s} {case.dtype:8s} sparse {ms:8.4f} ms  dense {dense_ms:8.4f} ms  "
                  f"x{dense_ms / ms:.3f}  cuBLAS {cublas_ms:8.4f} ms  err {err:.1e}", flush=True)
        torch.cuda.empty_cache()
    results = new_results("cuda", peaks=peaks, cases=rows)
    finish_results(results, failures, out_dir, "2:4 sparse GEMM benchmark", t_start)
    print_table(rows)
    return 1 if failures else 0


def main(argv=None) -> int:
    from report import gpu_bench_parser, gpu_providers

    p = gpu_bench_parser(__doc__, "one case only")
    args = p.parse_args(argv)
    providers, rc = gpu_providers(args.providers, "GPU 2:4 sparse benchmark")
    if rc is not None:
        return rc
    return run(providers, args.quick, args.out)


if __name__ == "__main__":
    sys.exit(main())
