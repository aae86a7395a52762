"""One small call per CUDA kernel path, forward and backward, checked against PyTorch: the selection
`benchmarks/gpu_check.sh` runs under compute-sanitizer (memcheck and racecheck), where the whole suite
would not fit the GPU budget. Shapes are small but not tile multiples, so partial tiles, masks and
zero-fill run. Needs a CUDA GPU (skipped otherwise: the "cuda" keyword, see conftest.py)."""
import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import ops

pytestmark = pytest.mark.cuda

DEV = "cuda"


def _tol(dtype):
    return {torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 8e-2}[dtype]


def _check(out, ref, dtype):
    torch.testing.assert_close(out.double(), ref.double(), atol=_tol(dtype), rtol=_tol(dtype))


def _grads(fn, ref_fn, tensors, dtype):
    """Forward and backward of ``fn`` on our cuda backend and ``ref_fn`` in float64 PyTorch on the CPU.
    Not PyTorch on the GPU: its float32 convs run TF32 by default (cudnn.allow_tf32; ~1e-3 off, while
    ours are IEEE float32), and on the first H200 run (torch 2.11+cu130) its channels_last float32
    avg_pool2d backward gave a column-shifted gradient that the window structure rules out."""
    ours = [t.detach().clone().requires_grad_(True) for t in tensors]
    refs = [t.detach().cpu().double().requires_grad_(True) for t in tensors]
    with pyimgcls.use_backend("cuda"):
        out = fn(*ours)
    ref = ref_fn(*refs)
    _check(out.cpu(), ref, dtype)
    g = torch.randn_like(ref)
    out.backward(g.to(out.device, out.dtype))
    ref.backward(g)
    for a, b in zip(ours, refs):
        _check(a.grad.cpu(), b.grad, dtype)


CONV_CASES = {
    # name: (N, C, H, W, O, k, stride, pad, groups, channels_last)
    "tc_vectorised_3x3": (2, 16, 9, 11, 24, 3, 1, 1, 1, True),
    "tc_vectorised_1x1_nchw": (2, 32, 7, 7, 40, 1, 1, 0, 1, False),
    "tc_scalar_odd_channels": (2, 5, 9, 8, 7, 3, 2, 1, 1, False),
    "grouped": (2, 16, 8, 8, 16, 3, 1, 1, 4, True),
    "depthwise": (2, 24, 10, 9, 24, 3, 2, 1, 24, True),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["half", "float"])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_path(case, dtype):
    N, C, H, W, O, k, s, p, g, cl = CONV_CASES[case]
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(N, C, H, W, device=DEV, dtype=dtype).contiguous(memory_format=fmt)
    w = (torch.randn(O, C // g, k, k, device=DEV, dtype=dtype) / (C // g * k * k) ** 0.5).contiguous(memory_format=fmt)
    b = torch.randn(O, device=DEV, dtype=dtype)
    _grads(lambda x, w, b: ops.conv2d(x, w, b, s, p, 1, g, activation="relu"),
           lambda x, w, b: F.relu(F.conv2d(x, w, b, s, p, 1, g)), [x, w, b], dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["half", "float"])
@pytest.mark.parametrize("M,N,K", [(37, 29, 70), (64, 1000, 2048)], ids=["small", "classifier_head_split_k"])
def test_linear_path(M, N, K, dtype):
    x = torch.randn(M, K, device=DEV, dtype=dtype)
    w = torch.randn(N, K, device=DEV, dtype=dtype) / K ** 0.5
    b = torch.randn(N, device=DEV, dtype=dtype)
    _grads(lambda x, w, b: ops.linear(x, w, b), F.linear, [x, w, b], dtype)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("op", ["max", "avg", "adaptive"])
def test_pool_path(op, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 12, 11, 9, device=DEV, dtype=torch.float16).contiguous(memory_format=fmt)
    fns = {"max": (lambda x: ops.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1)),
           "avg": (lambda x: ops.avg_pool2d(x, 3, 2, 1), lambda x: F.avg_pool2d(x, 3, 2, 1)),
           "adaptive": (lambda x: ops.adaptive_avg_pool2d(x, (3, 2)), lambda x: F.adaptive_avg_pool2d(x, (3, 2)))}
    ours, ref = fns[op]
    _grads(ours, ref, [x], torch.float16)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_batch_norm_path(training, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(3, 10, 7, 5, device=DEV) * 3 + 100).contiguous(memory_format=fmt)
    w, b = torch.rand(10, device=DEV) + 0.5, torch.randn(10, device=DEV)
    rm, rv = torch.randn(10, device=DEV), torch.rand(10, device=DEV) + 0.5
    rm2, rv2 = rm.cpu().double(), rv.cpu().double()
    _grads(lambda x, w, b: ops.batch_norm(x, rm, rv, w, b, training=training),
           lambda x, w, b: F.batch_norm(x, rm2, rv2, w, b, training=training), [x, w, b], torch.float32)
    torch.testing.assert_close(rm.cpu().double(), rm2, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(rv.cpu().double(), rv2, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("target", ["index", "prob"])
@pytest.mark.parametrize("C", [10, 5000], ids=["one_tile", "tiled"])
def test_cross_entropy_path(C, target):
    x = torch.randn(33, C, device=DEV)
    t = (torch.randint(0, C, (33,), device=DEV) if target == "index"
         else torch.softmax(torch.randn(33, C, device=DEV), 1))
    t64 = t.cpu() if target == "index" else t.cpu().double()
    _grads(lambda x: ops.cross_entropy(x, t, label_smoothing=0.1),
           lambda x: F.cross_entropy(x, t64, label_smoothing=0.1), [x], torch.float32)
