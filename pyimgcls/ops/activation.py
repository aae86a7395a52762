"""Standalone activations, and the training path of the smooth activations fused elsewhere.

    activation(x, name) = act(x)        name: "relu" | "relu6" | "silu" | "hardswish" | "sigmoid" |
                                        "hardsigmoid" (ATen's formulas and NaN semantics)

One custom op, ``pyimgcls::activation``, with its backward ``pyimgcls::activation_backward``:
    grad_x = act'(saved) * grad         saved = the output for relu / relu6 / sigmoid (what ATen's
                                        threshold / hardtanh / sigmoid backward read), the input for
                                        silu / hardswish / hardsigmoid (silu_backward,
                                        hardswish_backward, hardsigmoid_backward)
Elementwise kernels over a dense buffer (the gemm family's ``act_fwd`` / ``act_bwd`` entry points);
the input is read in its own layout when contiguous or channels_last (which the output keeps), any
other is copied to contiguous first.

Why conv2d / linear / batch_norm call this op (``with_activation``): their epilogues apply every
activation, fused, whenever no gradient is recorded. When one is, relu / relu6 / sigmoid stay fused
(their backward needs only the saved output), while silu / hardswish / hardsigmoid need the
pre-activation: the layer then runs without an activation, its output IS the pre-activation, and this
op applies the activation and saves that tensor for its backward -- so the pre-activation is the one
tensor kept (never the output too: issue #21 "SiLU backward recomputes from the pre-activation"), at
the cost of one more elementwise pass in training.

Beyond first order (create_graph=True) the gradient is the backward formula on the saved tensor in
differentiable torch ops (reference.activation_backward_differentiable), so it can be differentiated
again.
"""
from __future__ import annotations

import torch

from .. import _backend, backends
from .._native import ACT_CODES, ACT_NAMES
from ..errors import ArgumentValueError
from . import _alloc, _eager, reference
from ._checks import ACT_GRAD_READS_INPUT, check_float, check_tensor


def _dense(t: torch.Tensor) -> torch.Tensor:
    """t when it is contiguous or (4-D) channels_last-contiguous, else a contiguous copy: the kernels
    run over the dense buffer in storage order."""
    if t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.contiguous()


def _same_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t (shaped like ``like``) with exactly like's strides, copied only when they differ."""
    if t.stride() == like.stride():
        return t
    out = torch.empty_like(like)
    out.copy_(t)
    return out


def _run_fwd(x, act, backend):
    return backends.kernels(backend, "gemm").act_fwd(_dense(x), act)


def _run_bwd(grad, saved, act, backend):
    return backends.kernels(backend, "gemm").act_bwd(_same_layout(grad, saved), saved, act)


@torch.library.custom_op("pyimgcls::activation", mutates_args=())
def _activation_op(x: torch.Tensor, activation: int, backend: str) -> torch.Tensor:
    return _run_fwd(x, activation, backend)


@_activation_op.register_fake
def _(x, activation, backend):
    return torch.empty_like(_dense(x))


@torch.library.custom_op("pyimgcls::activation_backward", mutates_args=())
def _activation_backward_op(grad: torch.Tensor, saved: torch.Tensor, activation: int,
                            backend: str) -> torch.Tensor:
    return _run_bwd(grad, saved, activation, backend)


@_activation_backward_op.register_fake
def _(grad, saved, activation, backend):
    return torch.empty_like(saved)


def _setup_context(ctx, inputs, output):
    x, activation, backend = inputs
    ctx.conf = (activation, backend)
    ctx.save_for_backward(_dense(x) if ACT_NAMES[activation] in ACT_GRAD_READS_INPUT else output)


def _backward(ctx, grad):
    (saved,) = ctx.saved_tensors
    activation, backend = ctx.conf
    if _eager.graph_mode(grad, saved):
        return reference.activation_backward_differentiable(grad, saved, activation), None, None
    backward_fn = _eager.pick(ctx, _activation_backward_op, _run_bwd)
    return backward_fn(grad, saved, activation, backend), None, None


_activation_op.register_autograd(_backward, setup_context=_setup_context)
_EagerActivation = _eager.function(_run_fwd, _setup_context, _backward)


def _call(x, code, backend):
    return _eager.call(_activation_op, _EagerActivation, _run_fwd, (x, code, backend), (x,))


def activation(input: torch.Tensor, activation: str) -> torch.Tensor:
    """``act(input)`` for activation "relu" | "relu6" | "silu" | "hardswish" | "sigmoid" | "hardsigmoid",
    as ``F.relu`` ... ``torch.sigmoid`` / ``F.hardsigmoid`` compute it (same NaN and inf results, same
    gradients); any shape and strides, the output in input's layout when it is dense."""
    op = "activation"
    check_tensor(input, "input", op)
    check_float(input, "input", op)
    if activation not in ACT_CODES or activation is None:
        names = tuple(k for k in ACT_CODES if k is not None)
        raise ArgumentValueError(f"{op}: argument 'activation' must be one of {names}, got {activation!r}")
    backend = _backend.resolve(input.device, op)
    backends.check_dtype(backend, input, "input", op)
    return _call(input, ACT_CODES[activation], backend)


def with_activation(layer, code: int, backend: str, tensors):
    """A layer's forward with a fused activation ``code``: ``layer(code)`` (the layer's op called with that
    activation code), except for silu / hardswish / hardsigmoid while a gradient is recorded, where it
    is ``activation(layer(0))`` (module docstring: the pre-activation is then the one tensor saved)."""
    if code != 0 and ACT_NAMES[code] in ACT_GRAD_READS_INPUT and _eager.needs_grad(*tensors):
        return _call(layer(0), code, backend)
    return layer(code)


def act_dense_output(x: torch.Tensor) -> torch.Tensor:
    """The output of an elementwise activation kernel: x's strides (x is dense), poisoned in tests."""
    return _alloc.empty_like(x)
