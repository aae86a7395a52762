"""The eager fast path (ops/_eager.py) and the registered custom ops run the same kernels: both paths
must give bit-identical outputs and gradients, and gradcheck must pass through each."""
from __future__ import annotations

import pytest
import torch

from pyimgcls import ops
from pyimgcls.ops import _eager

from helpers import BACKENDS, backend_ctx, device_for


def _conv(x, w, b, r):
    return ops.conv2d(x, w, b, stride=(2, 1), padding=1, activation="relu", residual=r)


def _linear(x, w, b, r):
    return ops.linear(x.flatten(1)[:, :6], w[:, 0, 0, :].repeat(1, 2)[:, :6], b, activation="relu6") + r.sum()


def _max(x, w, b, r):
    return ops.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True) * b.sum()


def _avg(x, w, b, r):
    return ops.avg_pool2d(x, 2, count_include_pad=False, padding=1) * b.sum()


def _adaptive(x, w, b, r):
    return ops.adaptive_avg_pool2d(x, (3, 2)) * b.sum()


CASES = {"conv2d": _conv, "linear": _linear, "max_pool2d": _max, "avg_pool2d": _avg, "adaptive": _adaptive}


def _inputs(dtype, dev, channels_last=False):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 7, 5, generator=g, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=dtype)
    b = torch.randn(4, generator=g, dtype=dtype)
    r = torch.randn(2, 4, 4, 5, generator=g, dtype=dtype)
    return [t.to(dev).requires_grad_() for t in (x, w, b, r)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_eager_path_matches_custom_op(backend, case, channels_last, monkeypatch):
    dev = device_for(backend)
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(_eager, "ENABLED", enabled)
        ins = _inputs(torch.float32, dev, channels_last)
        with backend_ctx(backend):
            out = CASES[case](*ins)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(dev)
        out.backward(g)
        results.append((out.detach(), out.stride(), [t.grad for t in ins]))
    (o1, s1, g1), (o2, s2, g2) = results
    assert torch.equal(o1, o2) and s1 == s2
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("enabled", [True, False], ids=["eager-fast-path", "custom-op"])
def test_gradcheck_both_paths(case, enabled, monkeypatch):
    monkeypatch.setattr(_eager, "ENABLED", enabled)
    ins = _inputs(torch.float64, "cpu")
    with backend_ctx("cpu"):
        assert torch.autograd.gradcheck(CASES[case], ins)


def test_eager_path_is_taken_and_compile_mode_is_not(monkeypatch):
    """Plain eager calls must not enter the custom op; under a dispatch mode they must."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from pyimgcls.ops import conv

    calls = []
    real = conv._conv2d_op
    monkeypatch.setattr(conv, "_conv2d_op", lambda *a: calls.append(1) or real(*a))
    x, w, b, _ = _inputs(torch.float32, "cpu")
    with backend_ctx("cpu"):
        ops.conv2d(x, w, b)
        assert calls == []

        class Passthrough(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return func(*args, **(kwargs or {}))

        with Passthrough():
            ops.conv2d(x, w, b)
    assert calls == [1]


def _xent(x, w, b, r):
    return ops.cross_entropy(x.flatten(2).mean(2), torch.tensor([0, 2]), label_smoothing=0.1) * b.sum()


def _bn(x, w, b, r):
    return ops.batch_norm(x, None, None, w[:3, 0, 0, 0], b[:3], training=True)


SECOND_ORDER = {**CASES, "cross_entropy": _xent}


@pytest.mark.parametrize("case", list(SECOND_ORDER))
def test_second_order_identical_on_both_paths(case, monkeypatch):
    """create_graph=True then differentiate again: both paths build the same differentiable backward
    (ops/_eager.py), so second derivatives agree bit for bit and are not all zero."""
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(_eager, "ENABLED", enabled)
        ins = _inputs(torch.float64, "cpu")
        with backend_ctx("cpu"):
            out = SECOND_ORDER[case](*ins)
            firsts = torch.autograd.grad(out.pow(2).sum(), ins, create_graph=True, allow_unused=True)
            total = sum(g.pow(2).sum() for g in firsts if g is not None and g.requires_grad)
            results.append(torch.autograd.grad(total, ins, allow_unused=True))
    for a, b in zip(*results):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)
    assert any(a is not None and a.abs().max() > 0 for a in results[0])


@pytest.mark.parametrize("enabled", [True, False], ids=["eager-fast-path", "custom-op"])
def test_batch_norm_second_order_refused_on_both_paths(enabled, monkeypatch):
    monkeypatch.setattr(_eager, "ENABLED", enabled)
    ins = _inputs(torch.float64, "cpu")
    with backend_ctx("cpu"):
        gx, gw = torch.autograd.grad(_bn(*ins).pow(2).sum(), ins[:2], create_graph=True)
        with pytest.raises(RuntimeError, match="pyimgcls.batch_norm: double backward"):
            torch.autograd.grad(gx.pow(2).sum() + gw.sum(), ins[:2])


@pytest.mark.parametrize("case", list(SECOND_ORDER) + ["batch_norm"])
@pytest.mark.parametrize("enabled", [True, False], ids=["eager-fast-path", "custom-op"])
def test_forward_mode_refused_on_both_paths(case, enabled, monkeypatch):
    import torch.autograd.forward_ad as fwAD
    monkeypatch.setattr(_eager, "ENABLED", enabled)
    fn = {**SECOND_ORDER, "batch_norm": _bn}[case]
    x, w, b, r = (t.detach() for t in _inputs(torch.float64, "cpu"))
    with backend_ctx("cpu"), fwAD.dual_level():
        with pytest.raises(NotImplementedError, match="forward-mode"):
            fn(fwAD.make_dual(x, torch.ones_like(x)), w, b, r)
