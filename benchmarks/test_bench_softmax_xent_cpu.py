"""CPU softmax-cross-entropy benchmark (pytest-benchmark): our ``cpu`` backend vs
``F.cross_entropy``, forward + backward.

Not part of the test suite (pyproject's testpaths is ``tests``); run it explicitly:

    pytest benchmarks/test_bench_softmax_xent_cpu.py --benchmark-group-by=group --benchmark-columns=min,median,rounds

One step is ``loss = cross_entropy(x, t); torch.autograd.grad(loss, x)`` in float32, reduction
"mean"; each (N, C) is one benchmark group so both providers print side by side. ``extra_info``
carries GB/s against the minimum traffic of a fused step (logits read once, gradient written
once). Both run with the same thread count (torch's intra-op threads vs OpenMP's default, which
is the core count for both).
"""
import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import _backend, ops

SHAPES = [(n, c) for n in (256, 1024, 4096) for c in (10, 100, 1000)] + [(256, 32768)]


def _ours(x, t):
    # The default backend, as a user calls it: "auto" runs our C++ CPU kernels on CPU tensors
    # (checked in the test below), without a use_backend() context around every call.
    loss = ops.cross_entropy(x, t)
    return loss, torch.autograd.grad(loss, x)[0]


def _torch(x, t):
    loss = F.cross_entropy(x, t)
    return loss, torch.autograd.grad(loss, x)[0]


PROVIDERS = {"pyimgcls-cpu": _ours, "torch": _torch}


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("n,c", SHAPES, ids=[f"N{n}-C{c}" for n, c in SHAPES])
def test_cross_entropy_fwd_bwd_cpu(benchmark, n, c, provider):
    gen = torch.Generator().manual_seed(n * c)
    x = (torch.randn(n, c, generator=gen) * 3).requires_grad_()
    t = torch.randint(0, c, (n,), generator=gen)
    fn = PROVIDERS[provider]
    assert pyimgcls.get_backend() == "auto" and _backend.resolve(x.device, "bench") == "cpu"

    # a benchmark of a wrong result is meaningless: check against float64 first
    x64 = x.detach().double().requires_grad_()
    ref_loss, ref_grad = _torch(x64, t)
    loss, grad = fn(x, t)
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * max(1.0, abs(ref_loss.item()))
    assert (grad.double() - ref_grad).abs().max().item() < 1e-6

    benchmark.group = f"cross_entropy fwd+bwd N={n} C={c} float32"
    nbytes = 2 * n * c * 4 + 8 * n
    benchmark.extra_info.update(bytes=nbytes, threads=torch.get_num_threads())
    benchmark(fn, x, t)
    benchmark.extra_info["gbps"] = nbytes / benchmark.stats.stats.median / 1e9
