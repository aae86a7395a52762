"""CPU BatchNorm benchmark (pytest-benchmark): our ``cpu`` backend vs PyTorch's CPU batch norm.

Not part of the test suite (pyproject's testpaths is ``tests``); run it explicitly:

    pytest benchmarks/test_bench_batchnorm_cpu.py --benchmark-group-by=group --benchmark-columns=min,median,rounds

ResNet-ish layers at batch 8, float32, NCHW and channels_last, each with a fused ReLU:
  ``eval``  inference forward: ours ops.batch_norm(training=False, activation="relu") vs
            relu(F.batch_norm(training=False));
  ``train`` training forward + backward (autograd.grad of input, weight and bias): ours vs
            relu(F.batch_norm(training=True)).
Each (layer, layout, pass) is one group, so ours and torch's print side by side; ``extra_info``
carries GB/s (eval: x read + y written; train: 7 Q elements, as in bench_batchnorm.py). Both use
the same OpenMP thread count. The issue's bar is ours >= 0.7x torch; on a machine shared with other
jobs compare the ``min`` column, or pin OMP_NUM_THREADS=1.
"""
import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import ops

BATCH = 8
# (name, C, H, W)
LAYERS = [
    ("stem-64x112", 64, 112, 112),
    ("layer1-256x56", 256, 56, 56),
    ("layer3-1024x14", 1024, 14, 14),
    ("layer4-512x7", 512, 7, 7),
]


@pytest.mark.parametrize("provider", ["pyimgcls-cpu", "torch"])
@pytest.mark.parametrize("pass_", ["eval", "train"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_batchnorm_cpu(benchmark, layer, layout, pass_, provider):
    name, C, H, W = layer
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, C, H, W, generator=g)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(pass_ == "train")
    w = (torch.rand(C, generator=g) + 0.5).requires_grad_(pass_ == "train")
    b = torch.randn(C, generator=g).requires_grad_(pass_ == "train")
    rm, rv = torch.zeros(C), torch.ones(C)
    go = torch.randn(x.shape, generator=g).contiguous(memory_format=torch.channels_last if layout == "nhwc"
                                                      else torch.contiguous_format)
    training = pass_ == "train"

    def ours():
        return ops.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, activation="relu")

    def theirs():
        return F.relu(F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5))

    with pyimgcls.use_backend("cpu"):
        # a benchmark of a wrong result is meaningless: check against PyTorch first
        torch.testing.assert_close(ours(), theirs(), rtol=1e-4, atol=1e-4)
    fn = ours if provider == "pyimgcls-cpu" else theirs
    if training:
        step = lambda: torch.autograd.grad(fn(), (x, w, b), go)  # noqa: E731
        nbytes = 7 * x.numel() * x.element_size()
    else:
        def step():
            with torch.no_grad():
                return fn()
        nbytes = 2 * x.numel() * x.element_size()
    benchmark.group = f"{name} {layout} {pass_}"
    benchmark.extra_info.update(bytes=nbytes, threads=torch.get_num_threads())
    with pyimgcls.use_backend("cpu"):
        benchmark(step)
    benchmark.extra_info["gbps"] = nbytes / benchmark.stats.stats.median / 1e9
