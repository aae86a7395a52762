"""CPU GEMM benchmark (pytest-benchmark): our ``cpu`` backend vs ``torch.matmul``.

Not part of the test suite (pyproject's testpaths is ``tests``); run it explicitly:

    pytest benchmarks/test_bench_gemm_cpu.py
    pytest benchmarks/test_bench_gemm_cpu.py --benchmark-group-by=group --benchmark-columns=min,median,mean,rounds

Each (size, dtype) is one benchmark group, so pytest-benchmark prints our kernel and torch's side by
side; ``extra_info`` carries GFLOP/s (2*n^3 / median). Both run with the same thread count
(``torch.get_num_threads()``; our kernels use OpenMP's, which defaults to the same core count).
"""
import pytest
import torch

import pyimgcls
from pyimgcls import ops

CASES = [(512, torch.float32), (1024, torch.float32), (2048, torch.float32), (1024, torch.float64)]


def _ours(a, b):
    with pyimgcls.use_backend("cpu"):
        return ops.matmul(a, b)


PROVIDERS = {"pyimgcls-cpu": _ours, "torch": torch.matmul}


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("n,dtype", CASES, ids=[f"{n}-{str(d).replace('torch.', '')}" for n, d in CASES])
def test_matmul_cpu(benchmark, n, dtype, provider):
    gen = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, dtype=dtype, generator=gen)
    b = torch.randn(n, n, dtype=dtype, generator=gen)
    fn = PROVIDERS[provider]

    # a benchmark of a wrong result is meaningless: check against float64 first
    ref = a.double() @ b.double()
    rel = float((fn(a, b).double() - ref).norm() / ref.norm())
    assert rel < (1e-5 if dtype == torch.float32 else 1e-12), rel

    benchmark.group = f"matmul {n}x{n}x{n} {str(dtype).replace('torch.', '')}"
    benchmark.extra_info.update(flops=2 * n ** 3, threads=torch.get_num_threads())
    benchmark(fn, a, b)
    benchmark.extra_info["gflops"] = 2 * n ** 3 / benchmark.stats.stats.median / 1e9
