"""CPU convolution benchmark (pytest-benchmark): our ``cpu`` backend's fused conv2d + bias + ReLU vs
torch's CPU ``F.conv2d`` (conv + bias alone: the issue's bar is ours >= 0.4x torch's conv), batch 8,
float32, on LeNet-5 and ResNet-18 (224 x 224) layer shapes, NCHW and channels_last.

Not part of the test suite (pyproject's testpaths is ``tests``); run it explicitly:

    pytest benchmarks/test_bench_conv_cpu.py --benchmark-group-by=group --benchmark-columns=median,rounds

Each layer is one benchmark group, so pytest-benchmark prints ours and torch's side by side;
``extra_info`` carries GFLOP/s (2*N*O*OH*OW*C*KH*KW / median). Both use the same thread count.
"""
import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import ops

BATCH = 8
# (name, C_in, C_out, kernel, stride, padding, H_in)
LAYERS = [
    ("lenet.conv1", 1, 6, 5, 1, 0, 32), ("lenet.conv2", 6, 16, 5, 1, 0, 14),
    ("resnet18.conv1", 3, 64, 7, 2, 3, 224), ("resnet18.layer1", 64, 64, 3, 1, 1, 56),
    ("resnet18.layer2.0", 64, 128, 3, 2, 1, 56), ("resnet18.layer2.ds", 64, 128, 1, 2, 0, 56),
    ("resnet18.layer2", 128, 128, 3, 1, 1, 28), ("resnet18.layer3.0", 128, 256, 3, 2, 1, 28),
    ("resnet18.layer3", 256, 256, 3, 1, 1, 14), ("resnet18.layer4.0", 256, 512, 3, 2, 1, 14),
    ("resnet18.layer4", 512, 512, 3, 1, 1, 7),
]


def _ours(x, w, b, s, p):
    with pyimgcls.use_backend("cpu"):
        return ops.conv2d_bias_relu(x, w, b, s, p)


def _torch(x, w, b, s, p):
    return F.conv2d(x, w, b, s, p)


PROVIDERS = {"pyimgcls-cpu": _ours, "torch": _torch}


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_conv2d_cpu(benchmark, layer, layout, provider):
    name, cin, cout, k, s, p, h = layer
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, cin, h, h, generator=gen)
    w = torch.randn(cout, cin, k, k, generator=gen) / (cin * k * k) ** 0.5
    b = torch.randn(cout, generator=gen)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    fn = PROVIDERS[provider]
    ref = F.relu(F.conv2d(x.double(), w.double(), b.double(), s, p))
    got = fn(x, w, b, s, p)
    got = F.relu(got) if provider == "torch" else got
    assert float((got.double() - ref).norm() / ref.norm()) < 1e-5

    oh = (h + 2 * p - k) // s + 1
    flops = 2 * BATCH * cout * oh * oh * cin * k * k
    benchmark.group = f"conv {name} N={BATCH} {layout}"
    benchmark.extra_info.update(flops=flops, threads=torch.get_num_threads())
    benchmark(fn, x, w, b, s, p)
    benchmark.extra_info["gflops"] = flops / benchmark.stats.stats.median / 1e9
