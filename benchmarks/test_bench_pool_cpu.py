"""CPU pooling benchmark (pytest-benchmark): our ``cpu`` backend vs PyTorch's CPU pooling.

Not part of the test suite (pyproject's testpaths is ``tests``); run it explicitly:

    pytest benchmarks/test_bench_pool_cpu.py --benchmark-group-by=group --benchmark-columns=min,median,rounds

The layers of bench_pool.py at batch 8, float32, NCHW and channels_last, forward (inference, no
indices) and backward (the backward op alone on both sides: pyimgcls::*_backward vs
aten::*_backward). Each (layer, layout, pass) is one group, so ours and torch's print side by side;
``extra_info`` carries GB/s (input + output bytes / median). Both use the same OpenMP thread count.
The issue's bar is ours >= 0.7x torch. On a machine shared with other jobs compare the ``min``
column, or pin OMP_NUM_THREADS=1 for a stable single-core comparison.
"""
import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import ops

BATCH = 8
# (name, kind, C, H, W, kernel, stride, padding)
LAYERS = [
    ("alexnet-max3s2", "max", 64, 55, 55, 3, 2, 0),
    ("vgg16-max2s2", "max", 128, 112, 112, 2, 2, 0),
    ("resnet50-max3s2p1", "max", 64, 112, 112, 3, 2, 1),
    ("resnet50-gap", "gap", 2048, 7, 7, None, None, None),
    ("densenet-avg2s2", "avg", 256, 28, 28, 2, 2, 0),
]


def _fns(kind, k, s, p, cl):
    """(ours_fwd, torch_fwd, ours_bwd, torch_bwd) taking (x) / (go, x, idx)."""
    if kind == "max":
        return (lambda x: ops.max_pool2d(x, k, s, p), lambda x: F.max_pool2d(x, k, s, p),
                lambda go, x, idx: torch.ops.pyimgcls.max_pool2d_backward(
                    go, idx, x.shape[2], x.shape[3], [k, k], [s, s], [p, p], [1, 1], cl, "cpu"),
                lambda go, x, idx: torch.ops.aten.max_pool2d_with_indices_backward(
                    go, x, [k, k], [s, s], [p, p], [1, 1], False, idx))
    if kind == "avg":
        return (lambda x: ops.avg_pool2d(x, k, s, p), lambda x: F.avg_pool2d(x, k, s, p),
                lambda go, x, idx: torch.ops.pyimgcls.avg_pool2d_backward(
                    go, x.shape[2], x.shape[3], [k, k], [s, s], [p, p], False, True, None, cl, "cpu"),
                lambda go, x, idx: torch.ops.aten.avg_pool2d_backward(go, x, [k, k], [s, s], [p, p], False, True, None))
    return (lambda x: ops.adaptive_avg_pool2d(x, 1), lambda x: F.adaptive_avg_pool2d(x, 1),
            lambda go, x, idx: torch.ops.pyimgcls.adaptive_avg_pool2d_backward(go, x.shape[2], x.shape[3], cl, "cpu"),
            lambda go, x, idx: torch.ops.aten._adaptive_avg_pool2d_backward(go, x))


@pytest.mark.parametrize("provider", ["pyimgcls-cpu", "torch"])
@pytest.mark.parametrize("pass_", ["fwd", "bwd"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_pool_cpu(benchmark, layer, layout, pass_, provider):
    name, kind, C, H, W, k, s, p = layer
    cl = layout == "nhwc"
    x = torch.randn(BATCH, C, H, W, generator=torch.Generator().manual_seed(0))
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    ours_fwd, torch_fwd, ours_bwd, torch_bwd = _fns(kind, k, s, p, cl)
    ref = torch_fwd(x)
    idx = F.max_pool2d(x, k, s, p, return_indices=True)[1] if kind == "max" else None
    go = torch.randn_like(ref)
    with pyimgcls.use_backend("cpu"):
        # a benchmark of a wrong result is meaningless: check against PyTorch first
        torch.testing.assert_close(ours_fwd(x), ref)
        torch.testing.assert_close(ours_bwd(go, x, idx), torch_bwd(go, x, idx))
    if pass_ == "fwd":
        fn, args = (ours_fwd if provider == "pyimgcls-cpu" else torch_fwd), (x,)
    else:
        fn, args = (ours_bwd if provider == "pyimgcls-cpu" else torch_bwd), (go, x, idx)
    nbytes = (x.numel() + ref.numel()) * x.element_size() + (8 * ref.numel() if pass_ == "bwd" and idx is not None else 0)
    benchmark.group = f"{name} {layout} {pass_}"
    benchmark.extra_info.update(bytes=nbytes, threads=torch.get_num_threads())
    with pyimgcls.use_backend("cpu"):
        benchmark(fn, *args)
    benchmark.extra_info["gbps"] = nbytes / benchmark.stats.stats.median / 1e9
