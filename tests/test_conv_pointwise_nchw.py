"""The CPU forward of NCHW 1x1 stride-1 convolutions on planes of >= 64 pixels (csrc/cpu/conv.cpp,
conv2d_fwd_t's in-place branch): one GEMM per image and group reading x's channel rows in place and
writing into the output, then bias / residual / activation in one pass. Checked against float64 with
every epilogue, groups, residuals in either layout, strided inputs (which take the copying path) and
2 threads (bit-identical to 1). Smaller planes take the batched GEMM over the chunk's images (with
im2col's one-run copy per channel and unit-stride scatter on contiguous planes): the 16px case.
Test: pytest tests/test_conv_pointwise_nchw.py"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import ops

from helpers import omp_threads

ACTS = [None, "relu", "relu6", "silu", "hardswish", "sigmoid", "hardsigmoid"]
REF_ACT = {None: lambda t: t, "relu": F.relu, "relu6": F.relu6, "silu": F.silu, "hardswish": F.hardswish,
           "sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid}


def _case(N, C, H, W, O, groups, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g).to(dtype)
    w = (torch.randn(O, C // groups, 1, 1, generator=g) / (C // groups) ** 0.5).to(dtype)
    b = torch.randn(O, generator=g).to(dtype)
    r = torch.randn(N, O, H, W, generator=g).to(dtype)
    return x, w, b, r


def _ref(x, w, b, r, groups, act):
    y = F.conv2d(x.double(), w.double(), None if b is None else b.double(), groups=groups)
    if r is not None:
        y = y + r.double()
    return REF_ACT[act](y)


@pytest.mark.parametrize("act", ACTS, ids=str)
@pytest.mark.parametrize("shape", [(2, 24, 9, 8, 40, 1), (3, 16, 8, 8, 12, 2), (1, 8, 7, 7, 5, 1),
                                   (9, 128, 4, 4, 72, 1)],
                         ids=["72px", "64px-groups2", "49px-small", "16px-batched"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("residual", [None, "nchw", "channels_last"], ids=str)
def test_matches_float64(shape, act, with_bias, residual):
    N, C, H, W, O, groups = shape
    # a seed per case: the kernels' scratch buffers are not poisoned, so a value left unwritten in them
    # would hold the previous case's, the right one if the inputs were the same
    seed = 1 + ACTS.index(act) + 10 * with_bias + 100 * [None, "nchw", "channels_last"].index(residual) + 1000 * N
    x, w, b, r = _case(N, C, H, W, O, groups, seed=seed)
    if residual == "channels_last":
        r = r.contiguous(memory_format=torch.channels_last)
    r = None if residual is None else r
    b = b if with_bias else None
    with pyimgcls.use_backend("cpu"):
        y = ops.conv2d(x, w, b, 1, 0, 1, groups, activation=act, residual=r)
    assert y.is_contiguous()
    torch.testing.assert_close(y.double(), _ref(x, w, b, r, groups, act), rtol=2e-5, atol=2e-5)


def test_strided_input_and_float64():
    # a cropped input (row stride != W) takes the copying path; float64 the in-place one
    x, w, b, r = _case(2, 16, 12, 11, 24, 1, seed=2)
    xs = x[:, :, 1:10, :]
    with pyimgcls.use_backend("cpu"):
        y = ops.conv2d(xs, w, b, activation="relu", residual=r[:, :, 1:10, :].contiguous())
        y64 = ops.conv2d(x.double(), w.double(), b.double(), activation="relu6", residual=r.double())
    torch.testing.assert_close(y.double(), _ref(xs, w, b, r[:, :, 1:10, :], 1, "relu"), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(y64, _ref(x, w, b, r, 1, "relu6"), rtol=1e-12, atol=1e-12)


def test_two_threads_bit_identical_to_one():
    x, w, b, r = _case(5, 32, 16, 16, 48, 1, seed=3)
    with pyimgcls.use_backend("cpu"):
        with omp_threads(1):
            one = ops.conv2d(x, w, b, activation="silu", residual=r)
        with omp_threads(2):
            two = ops.conv2d(x, w, b, activation="silu", residual=r)
    assert torch.equal(one, two)
    torch.testing.assert_close(one.double(), _ref(x, w, b, r, 1, "silu"), rtol=2e-5, atol=2e-5)


def test_backward_through_the_in_place_forward():
    x, w, b, r = _case(2, 8, 9, 9, 6, 1, seed=4, dtype=torch.float64)
    x.requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    with pyimgcls.use_backend("cpu"):
        assert torch.autograd.gradcheck(lambda x, w, b: ops.conv2d(x, w, b, activation="relu6"), (x, w, b))


@pytest.mark.parametrize("groups", [1, 2])
def test_backward_matches_the_copying_paths(groups, monkeypatch):
    """Forward, dgrad (in place: dx = w^T @ g per image) and wgrad against the copying paths
    (PYIMGCLS_CPU_CONV_INPLACE_1X1=0) and float64."""
    x, w, b, r = _case(3, 16, 10, 9, 24, groups, seed=5)

    def run():
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        with pyimgcls.use_backend("cpu"):
            y = ops.conv2d(xx, ww, None, 1, 0, 1, groups)
        y.backward(r)
        return y, xx.grad, ww.grad

    fast = run()
    monkeypatch.setenv("PYIMGCLS_CPU_CONV_INPLACE_1X1", "0")
    slow = run()
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    y64 = F.conv2d(x64, w64, groups=groups)
    y64.backward(r.double())
    for a, s, ref in zip(fast, slow, (y64, x64.grad, w64.grad)):
        torch.testing.assert_close(a.double(), ref.detach(), rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(a, s, rtol=2e-5, atol=2e-5)
