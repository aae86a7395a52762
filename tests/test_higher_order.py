"""Autograd beyond first order (README "Autograd beyond first order", ops/_eager.py).

Every op either computes correct higher-order derivatives (gemm/linear/matmul, conv2d, the three
poolings, cross-entropy: gradgradcheck in float64 and values against PyTorch's own second
derivatives) or raises the moment a gradient through it is differentiated again (batch norm).
Forward-mode AD is refused with a clear error on every op. Both the eager fast path and the custom-op
path are exercised (``_eager.ENABLED``); tests/test_eager.py compares the two paths bit for bit."""
from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.autograd import gradgradcheck

from pyimgcls import ops
from pyimgcls.ops import _eager

from helpers import backend_ctx, device_for

PATHS = [pytest.param(True, id="eager-fast-path"), pytest.param(False, id="custom-op")]
D = torch.float64


def _t(*shape, seed=0, requires_grad=True, dtype=D):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(requires_grad)


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    monkeypatch.setattr(_eager, "ENABLED", request.param)
    return request.param


# ----------------------------------------------------------------------------- gradgradcheck per op
CONV_CASES = {
    "plain": dict(),
    "bias-relu-stride2-pad1": dict(bias=True, activation="relu", stride=2, padding=1),
    "relu6-residual": dict(bias=True, activation="relu6", residual=True, padding=1),
    "groups2-dilation2": dict(groups=2, dilation=2, padding=2),
    "depthwise": dict(groups=4, padding=1, bias=True),
    "residual-no-act": dict(residual=True, stride=(2, 1)),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_conv2d_gradgradcheck(case, channels_last, path):
    kw = dict(CONV_CASES[case])
    groups = kw.get("groups", 1)
    x = _t(2, 4, 6, 5, seed=1)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = _t(4, 4 // groups, 3, 3, seed=2)
    b = _t(4, seed=3) if kw.pop("bias", False) else None
    with_res = kw.pop("residual", False)
    out_shape = F.conv2d(x.detach(), w.detach(), None, kw.get("stride", 1), kw.get("padding", 0),
                         kw.get("dilation", 1), groups).shape
    r = _t(*out_shape, seed=4) if with_res else None
    inputs = [t for t in (x, w, b, r) if t is not None]

    def f(*args):
        it = iter(args)
        xx, ww = next(it), next(it)
        bb = next(it) if b is not None else None
        rr = next(it) if r is not None else None
        return ops.conv2d(xx, ww, bb, residual=rr, **kw)

    with backend_ctx("cpu"):
        assert gradgradcheck(f, inputs)


@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
def test_linear_and_matmul_gradgradcheck(activation, path):
    x, w, b = _t(5, 7, seed=1), _t(3, 7, seed=2), _t(3, seed=3)
    with backend_ctx("cpu"):
        assert gradgradcheck(lambda x, w, b: ops.linear(x, w, b, activation=activation), (x, w, b))
        assert gradgradcheck(lambda a, c: ops.matmul(a, c), (x, _t(7, 4, seed=4)))
        assert gradgradcheck(lambda a, c: ops.matmul(a, c), (_t(2, 3, 4, seed=5), _t(2, 4, 2, seed=6)))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_pooling_gradgradcheck(channels_last, path):
    x = _t(2, 3, 7, 6, seed=1)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    with backend_ctx("cpu"):
        assert gradgradcheck(lambda x: ops.max_pool2d(x, 3, 2, 1, dilation=1, ceil_mode=True), (x,))
        assert gradgradcheck(lambda x: ops.max_pool2d(x, 2), (x,))
        assert gradgradcheck(lambda x: ops.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), (x,))
        assert gradgradcheck(lambda x: ops.avg_pool2d(x, 2, divisor_override=3), (x,))
        assert gradgradcheck(lambda x: ops.adaptive_avg_pool2d(x, (3, 4)), (x,))
        assert gradgradcheck(lambda x: ops.max_pool2d(x[0], 2), (x,))  # unbatched


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_gradgradcheck(reduction, weighted, smoothing, path):
    t = torch.tensor([0, 3, -100, 1, 2, 3])
    w = torch.rand(4, generator=torch.Generator().manual_seed(9), dtype=D) + 0.5 if weighted else None
    x = _t(6, 4, seed=1)
    with backend_ctx("cpu"):
        assert gradgradcheck(lambda x: ops.cross_entropy(x, t, w, reduction=reduction, label_smoothing=smoothing),
                             (x,))
        # spatial logits [N, C, d] go through the same [rows, C] kernel
        assert gradgradcheck(lambda x: ops.cross_entropy(x, t[:4].clamp(min=0).view(2, 2), w, reduction=reduction,
                                                         label_smoothing=smoothing), (_t(2, 4, 2, seed=2),))


def test_cross_entropy_hessian_matches_pytorch(path):
    x = _t(4, 5, seed=3, requires_grad=False)
    t = torch.tensor([1, 4, 0, 2])
    for kw in (dict(), dict(label_smoothing=0.1), dict(reduction="sum"), dict(weight=torch.rand(5, dtype=D))):
        with backend_ctx("cpu"):
            ours = torch.autograd.functional.hessian(lambda z: ops.cross_entropy(z, t, **kw), x)
        ref = torch.autograd.functional.hessian(lambda z: F.cross_entropy(z, t, **kw), x)
        assert ours.abs().max() > 1e-3
        torch.testing.assert_close(ours, ref)


# ----------------------------------------------------------------------------- the cases, values
def _leaves_on(backend, *ts):
    """Fresh leaves with the values of ``ts`` on the backend's device (triton: CUDA when there is a GPU);
    the PyTorch references keep the CPU originals."""
    dev = device_for(backend)
    return [t.detach().to(dev).requires_grad_() for t in ts]


def _conv_second_order(conv, x, w):
    gx, gw = torch.autograd.grad((conv(x, w, padding=1) ** 2).sum(), (x, w), create_graph=True)
    return torch.autograd.grad(gx.pow(2).sum() + gw.sum(), (x, w), allow_unused=True)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_conv_second_derivative_matches_pytorch(backend, path):
    x, w = _t(2, 3, 6, 6, seed=1), _t(4, 3, 3, 3, seed=2)
    with backend_ctx(backend):
        ours = _conv_second_order(ops.conv2d, *_leaves_on(backend, x, w))
    ref = _conv_second_order(F.conv2d, x, w)
    for a, b in zip(ours, ref):
        assert a is not None and b.abs().max() > 1.0
        torch.testing.assert_close(a.cpu(), b)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_gradient_penalty_keeps_weight_gradient(backend, path):
    """WGAN-GP style: penalty = (||d out / d x|| - 1)^2, backpropagated to the weights."""

    def penalty(conv, lin, pool, x, w, v):
        h = pool(conv(x, w, padding=1), 2)
        out = lin(h.flatten(1), v).sum()
        (gx,) = torch.autograd.grad(out, x, create_graph=True)
        return ((gx.flatten(1).norm(dim=1) - 1) ** 2).mean()

    x, w, v = _t(2, 3, 6, 6, seed=1), _t(4, 3, 3, 3, seed=2), _t(5, 36, seed=3)
    grads = []
    for conv, lin, pool, leaves in ((ops.conv2d, ops.linear, ops.avg_pool2d, _leaves_on(backend, x, w, v)),
                                    (F.conv2d, F.linear, F.avg_pool2d, (x, w, v))):
        xx, ww, vv = leaves
        with backend_ctx(backend):
            penalty(conv, lin, pool, xx, ww, vv).backward()
        assert ww.grad is not None and vv.grad is not None
        grads.append((ww.grad.cpu(), vv.grad.cpu()))
    for a, b in zip(*grads):
        assert b.abs().max() > 1e-3
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_second_order_through_pooling_and_loss_matches_pytorch(backend, path):
    x, w = _t(2, 3, 6, 6, seed=1), _t(4, 3, 3, 3, seed=2)
    t = torch.tensor([1, 3])

    def model(conv, mp, aap, xent, x, w, t):
        h = aap(mp(conv(x, w, padding=1), 2), 1).flatten(1)
        (gw,) = torch.autograd.grad(xent(h, t), w, create_graph=True)
        return torch.autograd.grad(gw.pow(2).sum(), (x, w))

    with backend_ctx(backend):
        ours = model(ops.conv2d, ops.max_pool2d, ops.adaptive_avg_pool2d, ops.cross_entropy,
                     *_leaves_on(backend, x, w), t.to(device_for(backend)))
    ref = model(F.conv2d, F.max_pool2d, F.adaptive_avg_pool2d, F.cross_entropy, x, w, t)
    for a, b in zip(ours, ref):
        assert b.abs().max() > 1e-6
        torch.testing.assert_close(a.cpu(), b)


# ----------------------------------------------------------------------------- batch norm: refused
def _bn(x, w, b, training=True):
    return ops.batch_norm(x, torch.zeros(3, dtype=D), torch.ones(3, dtype=D), w, b, training=training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_double_backward_raises(training, path):
    x, w, b = _t(4, 3, 2, 2, seed=1), _t(3, seed=2), _t(3, seed=3)
    out = _bn(x, w, b, training)
    gx, gw = torch.autograd.grad(out.pow(2).sum(), (x, w), create_graph=True)
    # first order is still right under create_graph
    ref = F.batch_norm(x, torch.zeros(3, dtype=D), torch.ones(3, dtype=D), w, b, training=training)
    rgx, rgw = torch.autograd.grad(ref.pow(2).sum(), (x, w))
    torch.testing.assert_close(gx, rgx)
    torch.testing.assert_close(gw, rgw)
    for target, wrt in ((gx.pow(2).sum(), (x,)), (gw.sum(), (w,)), (gx.sum() + gw.sum(), (x, w, b))):
        with pytest.raises(RuntimeError, match="pyimgcls.batch_norm: double backward"):
            torch.autograd.grad(target, wrt, retain_graph=True, allow_unused=True)
    with pytest.raises(RuntimeError, match="double backward"):
        (gx.pow(2).sum() + gw.sum()).backward()


def test_batch_norm_module_gradient_penalty_raises(path):
    from pyimgcls import nn
    bn = nn.BatchNorm2d(3).double()
    x = _t(4, 3, 2, 2, seed=1)
    (gx,) = torch.autograd.grad(bn(x).pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.norm().backward()


# ----------------------------------------------------------------------------- forward mode: refused
OPS_FWD = {
    "conv2d": lambda x: ops.conv2d(x, torch.ones(2, 3, 3, 3, dtype=D)),
    "linear": lambda x: ops.linear(x.flatten(1), torch.ones(2, 48, dtype=D)),
    "matmul": lambda x: ops.matmul(x.flatten(1), torch.ones(48, 2, dtype=D)),
    "max_pool2d": lambda x: ops.max_pool2d(x, 2),
    "avg_pool2d": lambda x: ops.avg_pool2d(x, 2),
    "adaptive_avg_pool2d": lambda x: ops.adaptive_avg_pool2d(x, 1),
    "batch_norm": lambda x: ops.batch_norm(x, None, None, training=True),
    "cross_entropy": lambda x: ops.cross_entropy(x.flatten(1), torch.tensor([0, 1])),
    "squeeze_excitation": lambda x: ops.squeeze_excitation(x, torch.ones(2, 3, 1, 1, dtype=D), None,
                                                           torch.ones(3, 2, 1, 1, dtype=D), None),
    "drop_path_add": lambda x: ops.drop_path_add(x, x, 0.0, "row"),   # p = 0: still one kernel pass
}


@pytest.mark.parametrize("op", list(OPS_FWD))
def test_forward_mode_ad_is_refused(op, path):
    x = _t(2, 3, 4, 4, seed=1, requires_grad=False)
    with backend_ctx("cpu"):
        with fwAD.dual_level():
            dual = fwAD.make_dual(x, torch.ones_like(x))
            with pytest.raises(NotImplementedError, match="forward-mode automatic differentiation"):
                OPS_FWD[op](dual)
            # inside a dual level, a call without tangents is ordinary
            torch.testing.assert_close(OPS_FWD[op](x), OPS_FWD[op](x.clone()))
        with pytest.raises(NotImplementedError, match="forward-mode automatic differentiation"):
            torch.func.jvp(OPS_FWD[op], (x,), (torch.ones_like(x),))
