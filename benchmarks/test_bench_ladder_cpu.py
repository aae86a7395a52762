"""CPU study-ladder benchmark (pytest-benchmark): every CPU GEMM and conv ladder step next to torch.

Not part of the test suite (pyproject's testpaths is ``tests``); run it explicitly:

    pytest benchmarks/test_bench_ladder_cpu.py --benchmark-group-by=group

The side-by-side table with % of torch and % of peak, the results JSON and the README table come
from ``python benchmarks/bench_ladder.py`` (``pyimgcls bench ladder``); this file is the
pytest-benchmark view of the same cases at a smaller size (512^3 GEMM, a [2, 64, 56, 56] conv), so
the naive steps take well under a second. Every step's output is checked against float64 first.
"""
import pytest
import torch
import torch.nn.functional as F

from pyimgcls import ladder

N_GEMM = 512
CONV = (2, 64, 56, 56, 64, 3, 1)  # N, C, H, W, O, K, padding
GEMM_STEPS = [s.number for s in ladder.steps("gemm", "cpu")]
CONV_STEPS = [s.number for s in ladder.steps("conv", "cpu")]


@pytest.mark.parametrize("step", GEMM_STEPS + ["torch"])
def test_ladder_gemm_cpu(benchmark, step):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(N_GEMM, N_GEMM, generator=gen)
    b = torch.randn(N_GEMM, N_GEMM, generator=gen)
    fn = (lambda: torch.matmul(a, b)) if step == "torch" else (lambda: ladder.matmul(a, b, step=step))
    ref = a.double() @ b.double()
    assert float((fn().double() - ref).norm() / ref.norm()) < 1e-5
    benchmark.group = f"ladder gemm {N_GEMM}^3 float32"
    benchmark.extra_info.update(flops=2 * N_GEMM ** 3, threads=torch.get_num_threads())
    benchmark.pedantic(fn, rounds=3 if step == 1 else 10, warmup_rounds=1)
    benchmark.extra_info["gflops"] = 2 * N_GEMM ** 3 / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("step", CONV_STEPS + ["torch"])
def test_ladder_conv_cpu(benchmark, step):
    n, c, h, w_, o, k, pad = CONV
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, c, h, w_, generator=gen)
    w = torch.randn(o, c, k, k, generator=gen)
    if step != "torch" and ladder.steps("conv")[step - 1].layout == "nhwc":
        x = x.to(memory_format=torch.channels_last)  # the step's own layout: no conversion timed
    fn = (lambda: F.conv2d(x, w, padding=pad)) if step == "torch" else (
        lambda: ladder.conv2d(x, w, padding=pad, step=step))
    ref = F.conv2d(x.double(), w.double(), padding=pad)
    assert float((fn().double() - ref).norm() / ref.norm()) < 1e-5
    flops = 2 * n * o * h * w_ * c * k * k
    benchmark.group = f"ladder conv {n}x{c}x{h}x{w_} * {o}x{c}x{k}x{k} float32"
    benchmark.extra_info.update(flops=flops, threads=torch.get_num_threads())
    benchmark.pedantic(fn, rounds=3 if step == 1 else 10, warmup_rounds=1)
    benchmark.extra_info["gflops"] = flops / benchmark.stats.stats.median / 1e9
