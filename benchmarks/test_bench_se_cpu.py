"""CPU squeeze-and-excitation and drop-path benchmark (pytest-benchmark): our ``cpu`` backend vs the
PyTorch composition torchvision runs (adaptive_avg_pool2d, conv1x1, act, conv1x1, gate, x * scale;
``residual + x * noise`` for drop path).

Not part of the test suite (pyproject's testpaths is ``tests``); run it explicitly:

    pytest benchmarks/test_bench_se_cpu.py --benchmark-group-by=group --benchmark-columns=min,median,rounds

EfficientNet-B0's SE blocks at batch 16 and a 64x64 input (the issue's CPU setting), float32, NCHW and
channels_last, with SiLU / sigmoid as there:
  ``fwd``    forward only (no grad);
  ``train``  forward + backward (autograd.grad of x, w1, b1, w2, b2).
drop path: ``residual + stochastic_depth(x, 0.2, "row")`` vs ``ops.drop_path_add``, forward + backward.
Each (layer, layout, pass) is one group so ours and torch's print side by side; ``extra_info`` carries
the minimum bytes (fwd: x read twice + y written, 3 * 4 * Q; train: + grad, x, grad read and
grad_input written, 7 * 4 * Q). Both use the same OpenMP thread count; on a machine shared with other
jobs compare the ``min`` column.
"""
import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import ops

BATCH = 16
# (name, C, R, H, W): EfficientNet-B0 SE blocks at a 64x64 input
LAYERS = [
    ("b0-stage1-32x32", 32, 8, 32, 32),
    ("b0-stage3-144x16", 144, 6, 16, 16),
    ("b0-stage5-480x4", 480, 20, 4, 4),
    ("b0-stage7-1152x2", 1152, 48, 2, 2),
]


def _torch_se(x, w1, b1, w2, b2):
    s = F.adaptive_avg_pool2d(x, 1)
    s = F.silu(F.conv2d(s, w1, b1))
    return x * torch.sigmoid(F.conv2d(s, w2, b2))


@pytest.mark.parametrize("provider", ["pyimgcls-cpu", "torch"])
@pytest.mark.parametrize("pass_", ["fwd", "train"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_se_cpu(benchmark, layer, layout, pass_, provider):
    name, C, R, H, W = layer
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(BATCH, C, H, W, generator=g).contiguous(memory_format=fmt)
    params = [torch.randn(R, C, 1, 1, generator=g) * C ** -0.5, torch.randn(R, generator=g),
              torch.randn(C, R, 1, 1, generator=g) * R ** -0.5, torch.randn(C, generator=g)]
    train = pass_ == "train"
    ins = [t.requires_grad_(train) for t in (x, *params)]
    go = torch.randn(x.shape, generator=g).contiguous(memory_format=fmt)

    def ours():
        return ops.squeeze_excitation(*ins, activation="silu", gate="sigmoid")

    fn = ours if provider == "pyimgcls-cpu" else (lambda: _torch_se(*ins))
    with pyimgcls.use_backend("cpu"):
        torch.testing.assert_close(ours(), _torch_se(*ins), rtol=1e-4, atol=1e-4)
        if train:
            def step():
                return torch.autograd.grad(fn(), ins, go)
        else:
            def step():
                with torch.no_grad():
                    return fn()
        benchmark.group = f"se {name} {layout} {pass_}"
        Q = x.numel()
        benchmark.extra_info["min_bytes"] = (7 if train else 3) * 4 * Q
        benchmark(step)


@pytest.mark.parametrize("provider", ["pyimgcls-cpu", "torch"])
@pytest.mark.parametrize("layer", LAYERS[:2], ids=[layer[0] for layer in LAYERS[:2]])
def test_drop_path_add_cpu(benchmark, layer, provider):
    name, C, _R, H, W = layer
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, C, H, W, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    r = torch.randn(BATCH, C, H, W, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    go = torch.randn(x.shape, generator=g)

    def ours():
        torch.manual_seed(0)
        return ops.drop_path_add(x, r, 0.2, "row")

    def theirs():
        torch.manual_seed(0)
        noise = torch.empty([BATCH, 1, 1, 1]).bernoulli_(0.8).div_(0.8)
        return r + x * noise

    fn = ours if provider == "pyimgcls-cpu" else theirs
    torch.testing.assert_close(ours(), theirs(), rtol=1e-6, atol=1e-6)
    benchmark.group = f"drop_path_add {name}"
    benchmark.extra_info["min_bytes"] = (3 + 3) * 4 * x.numel()  # fwd: x, r, out; bwd: grad, gx (+ gr = grad)
    benchmark(lambda: torch.autograd.grad(fn(), (x, r), go))
