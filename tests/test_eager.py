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


def _xent(x, w, b, r):
    return ops.cross_entropy(x.flatten(2).mean(2), torch.tensor([0, 2], device=x.device), label_smoothing=0.1) * b.sum()


CASES = {"conv2d": _conv, "linear": _linear, "max_pool2d": _max, "avg_pool2d": _avg, "adaptive": _adaptive,
         "cross_entropy": _xent}


def _se(x, w, b, r):
    return ops.squeeze_excitation(x, w[:2, :, :1, :1], b[:2], w[:3, :2, 1:2, 1:2], b[1:], activation="silu",
                                  gate="hardsigmoid")


def _drop_path(x, w, b, r):
    torch.manual_seed(0)  # the same draw on both paths and in every gradcheck evaluation
    return ops.drop_path_add(x, x.flip(0), 0.5, "row") * b.sum()


CASES["squeeze_excitation"] = _se
CASES["drop_path_add"] = _drop_path


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


def _bn(x, w, b, r):
    return ops.batch_norm(x, None, None, w[:3, 0, 0, 0], b[:3], training=True)


SECOND_ORDER = {k: v for k, v in CASES.items() if k != "squeeze_excitation"}  # SE refuses, like batch norm


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


# ----------------------------------------------------------------------------- the options of _eager.function
@torch.library.custom_op("pyimgcls_test::mul_aux", mutates_args=())
def _mul_aux_op(a: torch.Tensor, b: torch.Tensor, scale: float, tag: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _mul_aux(a, b, scale, tag)


def _mul_aux(a, b, scale, tag):
    """result a * b * scale, and an auxiliary output (a * scale, the gradient w.r.t. b) for the backward."""
    return a * b * scale, a * scale


@_mul_aux_op.register_fake
def _(a, b, scale, tag):
    return a.new_empty(a.shape), a.new_empty(a.shape)


def _mul_aux_setup(ctx, inputs, output):
    _eager.mark_auxiliary(ctx, output[1])
    ctx.save_for_backward(inputs[1], output[1])
    ctx.scale = inputs[2]


def _mul_aux_backward(ctx, grad, _grad_aux):    # no default: the eager Function pads the auxiliary's gradient
    b, aux = ctx.saved_tensors
    needs_a, needs_b = ctx.needs_input_grad[:2]
    return (grad * b * ctx.scale if needs_a else None), (grad * aux if needs_b else None), None, None


_mul_aux_op.register_autograd(_mul_aux_backward, setup_context=_mul_aux_setup)
_EagerMulAux = _eager.function(_mul_aux, _mul_aux_setup, _mul_aux_backward, inputs=2, results=1, name="mul_aux")


def _mul_aux_call(a, b):
    return _eager.call(_mul_aux_op, _EagerMulAux, _mul_aux, (a, b, 1.5, "t"), (a, b))


@pytest.mark.parametrize("which", ["both", "a", "b"])
def test_function_inputs_and_results_options(which, monkeypatch):
    """inputs=k (the first k arguments as tensors, the rest as one tuple) and results=k (auxiliary outputs
    kept out of autograd, the backward's missing gradients padded): the same values and gradients as the
    custom op, the results only from every route, ctx.needs_input_grad as on the custom-op path."""
    g = torch.Generator().manual_seed(7)
    a0, b0 = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(_eager, "ENABLED", enabled)
        a, b = a0.clone().requires_grad_(which in ("both", "a")), b0.clone().requires_grad_(which in ("both", "b"))
        out = _mul_aux_call(a, b)
        assert isinstance(out, torch.Tensor)
        assert (type(out.grad_fn).__name__ == "Eager_mul_auxBackward") == enabled
        out.backward(torch.ones_like(out))
        with torch.no_grad():
            nograd = _mul_aux_call(a, b)
        assert isinstance(nograd, torch.Tensor) and nograd.grad_fn is None
        results.append((out.detach(), a.grad, b.grad, nograd))
    for x, y in zip(*results):
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.equal(x, y)
    assert (results[0][1] is not None) == (which != "b") and (results[0][2] is not None) == (which != "a")
    monkeypatch.setattr(_eager, "ENABLED", True)
    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    assert torch.autograd.gradcheck(_mul_aux_call, (a, b))


def test_non_differentiable_outputs_get_no_materialised_gradient(monkeypatch):
    """The eager Function hands the backward None, not an allocated zero tensor, as the gradient of a
    non-differentiable output (max_pool2d's indices); the values are those of the custom-op path."""
    from pyimgcls.ops import pool
    seen = []
    real = pool._max_pool2d_backward

    def spy(ctx, grad, grad_indices):
        seen.append(grad_indices)
        return real(ctx, grad, grad_indices)

    monkeypatch.setattr(pool, "_EagerMaxPool2d", _eager.function(pool._run_max_pool2d, pool._max_pool2d_setup_context,
                                                                 spy))
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    with backend_ctx("cpu"):
        out, idx = ops.max_pool2d(x, 2, return_indices=True)
    assert not idx.requires_grad
    out.sum().backward()
    assert seen == [None]
