"""GEMM family: ``matmul`` and ``linear`` with a fused bias + activation epilogue.

Both lower to one custom op, ``pyimgcls::gemm`` (C = act(A @ B + bias), A [M, K], B [K, N] with any
strides), whose backward is its own custom op ``pyimgcls::gemm_backward``:
    grad_pre = grad * act'(out)       (from the saved output: relu out>0, relu6 0<out<6, sigmoid)
    grad_A   = grad_pre @ B^T         (B^T is a strided view: no transpose copy)
    grad_B   = A^T @ grad_pre
    grad_bias = grad_pre.sum(0)       (fused into the mask kernel, deterministic)
The backend is resolved in Python before the custom op is called and passed to it as a string, so
torch.compile traces a fixed choice.
"""
from __future__ import annotations

import math

import torch

from .. import backends
from .._native import ACT_CODES
from ..errors import ArgumentValueError
from . import _alloc, _eager, reference
from ._checks import check_activation, check_dim, check_tensor, prepare
from .activation import with_activation


# ----------------------------------------------------------------------------- backend kernels
# Shared by backends/<backend>/gemm.py: the outputs every backend writes, allocated once here.
def gemm_output(a, b):
    """The contiguous [M, N] result of a [M, K] @ b [K, N], or None as the second value when there is
    nothing to compute (M or N is 0)."""
    M, N = a.shape[0], b.shape[1]
    out = _alloc.empty((M, N), a.dtype, a.device)
    return out, (M > 0 and N > 0)


def bias_act_outputs(grad, act, has_bias):
    """(grad_pre, grad_bias or None, anything to compute?) for a contiguous [M, N] grad; grad_pre is
    ``grad`` itself when there is no activation."""
    M, N = grad.shape
    gp = _alloc.empty((M, N), grad.dtype, grad.device) if act != 0 else grad
    gb = _alloc.empty((N,), grad.dtype, grad.device) if has_bias else None
    return gp, gb, N > 0


def _run_gemm(a, b, bias, act, backend) -> torch.Tensor:
    """act(a @ b + bias) on ``backend``; a [M, K], b [K, N] any strides; returns contiguous [M, N]."""
    return backends.kernels(backend, "gemm").gemm(a, b, bias, act)


def _run_bias_act_bwd(grad, out, act, has_bias, backend):
    """(grad_pre, grad_bias or None) for a contiguous [M, N] grad; grad_pre is ``grad`` itself when
    there is neither an activation nor a bias."""
    if act == 0 and not has_bias:
        return grad, None
    return backends.kernels(backend, "gemm").bias_act_bwd(grad, out, act, has_bias)


# ----------------------------------------------------------------------------- custom ops
@torch.library.custom_op("pyimgcls::gemm", mutates_args=())
def _gemm_op(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, activation: int,
             backend: str) -> torch.Tensor:
    return _run_gemm(a, b, bias, activation, backend)


@_gemm_op.register_fake
def _(a, b, bias, activation, backend):
    return a.new_empty((a.shape[0], b.shape[1]))


@torch.library.custom_op("pyimgcls::gemm_backward", mutates_args=())
def _gemm_backward_op(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None,
                      has_bias: bool, activation: int, backend: str,
                      needs_a: bool, needs_b: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _gemm_backward_impl(grad, a, b, out, has_bias, activation, backend, needs_a, needs_b)


def _gemm_backward_impl(grad, a, b, out, has_bias, activation, backend, needs_a, needs_b):
    grad = grad.contiguous()
    gp, gb = _run_bias_act_bwd(grad, out, activation, has_bias, backend)
    ga = _run_gemm(gp, b.t(), None, 0, backend) if needs_a else a.new_empty((0,))
    gw = _run_gemm(a.t(), gp, None, 0, backend) if needs_b else b.new_empty((0,))
    return ga, gw, (gb if gb is not None else grad.new_empty((0,)))


@_gemm_backward_op.register_fake
def _(grad, a, b, out, has_bias, activation, backend, needs_a, needs_b):
    ga = a.new_empty(a.shape) if needs_a else a.new_empty((0,))
    gw = b.new_empty(b.shape) if needs_b else b.new_empty((0,))
    gb = grad.new_empty((b.shape[1],)) if has_bias else grad.new_empty((0,))
    return ga, gw, gb


def _gemm_setup_context(ctx, inputs, output):
    a, b, bias, activation, backend = inputs
    ctx.activation, ctx.backend, ctx.has_bias = activation, backend, bias is not None
    ctx.save_for_backward(a, b, output if activation != 0 else None)


def _gemm_backward(ctx, grad):
    a, b, out = ctx.saved_tensors
    needs_a, needs_b, needs_bias = ctx.needs_input_grad[:3]
    if _eager.graph_mode(grad, a, b):
        return _gemm_backward_graph(ctx, grad, a, b, out, needs_a, needs_b, needs_bias)
    backward = _eager.pick(ctx, _gemm_backward_op, _gemm_backward_impl)
    ga, gw, gb = backward(grad, a, b, out, ctx.has_bias and needs_bias, ctx.activation, ctx.backend, needs_a, needs_b)
    return (ga if needs_a else None, gw if needs_b else None,
            gb if (ctx.has_bias and needs_bias) else None, None, None)


def _gemm_backward_graph(ctx, grad, a, b, out, needs_a, needs_b, needs_bias):
    """create_graph=True: the same gradients as differentiable expressions, so they can be
    differentiated again to any order. grad_A = grad_pre @ B^T and grad_B = A^T @ grad_pre are GEMMs
    through this op itself (our kernels, with their own backward); the activation mask is a select on
    the saved output (piecewise constant: its own derivative is zero; sigmoid's is differentiated through
    the output) and the bias gradient a sum."""
    backend = ctx.backend
    # sigmoid's derivative depends on the output, so its gradient is differentiated through it too
    saved = out if ctx.activation == ACT_CODES["sigmoid"] else (out.detach() if out is not None else None)
    gp = reference.activation_backward_differentiable(grad, saved, ctx.activation) if ctx.activation else grad
    ga = _gemm_call(gp, b.t(), None, 0, backend) if needs_a else None
    gw = _gemm_call(a.t(), gp, None, 0, backend) if needs_b else None
    gb = gp.sum(0) if (ctx.has_bias and needs_bias) else None
    return ga, gw, gb, None, None


_gemm_op.register_autograd(_gemm_backward, setup_context=_gemm_setup_context)
_EagerGemm = _eager.function(_run_gemm, _gemm_setup_context, _gemm_backward)


def _gemm_call(a, b, bias, activation, backend):
    return _eager.call(_gemm_op, _EagerGemm, _run_gemm, (a, b, bias, activation, backend), (a, b, bias))


# ----------------------------------------------------------------------------- public API
def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.matmul(a, b)``: ``a`` [M, K] @ ``b`` [K, N] is one GEMM; float16/bfloat16 accumulate in
    float32 and return the input dtype. Any strides (transposed views are read in place). As in
    torch.matmul, a 1-D operand is a vector (a row of ``a`` / a column of ``b``, squeezed from the
    result), leading dimensions of ``a`` fold into M when ``b`` is 1-D or 2-D, and batched operands
    broadcast their batch dimensions (one GEMM per batch entry)."""
    op = "matmul"
    check_tensor(a, "a", op)
    check_tensor(b, "b", op)
    if a.dim() == 0 or b.dim() == 0:
        raise ArgumentValueError(f"matmul: both arguments to matmul need to be at least 1-D, but argument 'a' is "
                                 f"{a.dim()}-D and argument 'b' is {b.dim()}-D")
    backend, (a, b) = prepare(op, [("a", a), ("b", b)])
    a2 = a.unsqueeze(0) if a.dim() == 1 else a
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ArgumentValueError(
            f"matmul: inner dimensions differ: argument 'a' is {tuple(a.shape)} and argument 'b' is "
            f"{tuple(b.shape)} (the last dimension of 'a' must equal the "
            f"{'only' if b.dim() == 1 else 'second-to-last'} dimension of 'b')")
    M, K, N = a2.shape[-2], a2.shape[-1], b2.shape[-1]
    if a2.dim() == 2 and b2.dim() == 2:
        out = _gemm_call(a2, b2, None, 0, backend)
    elif b2.dim() == 2:
        lead = a2.shape[:-2]
        out = _gemm_call(a2.reshape(math.prod(lead) * M, K), b2, None, 0, backend).reshape(*lead, M, N)
    else:
        try:
            batch = torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        except RuntimeError as e:
            raise ArgumentValueError(f"matmul: the batch dimensions of argument 'a' {tuple(a.shape)} and argument "
                                     f"'b' {tuple(b.shape)} do not broadcast: {e}") from None
        count = math.prod(batch)
        ab = a2.expand(*batch, M, K).reshape(count, M, K)
        bb = b2.expand(*batch, K, N).reshape(count, K, N)
        if count == 0:
            out = a2.new_empty((*batch, M, N))
        else:
            out = torch.stack([_gemm_call(ab[i], bb[i], None, 0, backend) for i in range(count)]).reshape(*batch, M, N)
    if b.dim() == 1:
        out = out.squeeze(-1)
    if a.dim() == 1:
        out = out.squeeze(-2 if b.dim() > 1 else -1)
    return out


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           activation: str | None = None) -> torch.Tensor:
    """``act(input @ weight.T + bias)`` as ``torch.nn.functional.linear`` plus a fused activation.

    input [*, in_features], weight [out_features, in_features], bias [out_features] or None,
    activation None | "relu" | "relu6" | "silu" | "hardswish" | "sigmoid" | "hardsigmoid" (applied on the
    fp32 accumulator before rounding; ops/activation.py for silu / hardswish / hardsigmoid in training)."""
    op = "linear"
    check_tensor(input, "input", op)
    check_tensor(weight, "weight", op)
    check_activation(activation, op)
    if input.dim() < 1:
        raise ArgumentValueError(f"linear: argument 'input' must have at least 1 dimension, got a 0-D tensor")
    if weight.dim() == 1:
        # F.linear takes a 1-D weight (without a bias) as one output feature whose dimension is dropped
        if bias is not None:
            raise ArgumentValueError(f"linear: argument 'weight' is 1-D {tuple(weight.shape)}, which PyTorch "
                                     "accepts only without a bias; pass weight of shape [out_features, in_features]")
        return linear(input, weight.unsqueeze(0), None, activation).squeeze(-1)
    check_dim(weight, "weight", op, 2)
    if bias is not None:
        check_tensor(bias, "bias", op)
    backend, (input, weight, bias) = prepare(op, [("input", input), ("weight", weight), ("bias", bias)])
    out_features, in_features = weight.shape
    if bias is not None and tuple(bias.shape) != (out_features,):
        # F.linear broadcasts the bias into the output like addmm (a 1-D input as one row); the shapes that
        # broadcast to [out_features] ([], [1], [1, ..., 1, out_features], no more dimensions than that
        # output) become a [out_features] bias.
        if (bias.dim() > max(input.dim(), 2) or any(s != 1 for s in bias.shape[:-1])
                or (bias.dim() and bias.shape[-1] not in (1, out_features))):
            raise ArgumentValueError(
                f"linear: argument 'bias' has shape {tuple(bias.shape)} but argument 'weight' has "
                f"out_features={out_features}: the bias must be 1-D [out_features] (or broadcast to it, such as "
                "[1, out_features] or a scalar)")
        bias = bias.reshape(-1).expand(out_features)
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()  # the kernels read the bias with unit stride
    if input.shape[-1] != in_features:
        raise ArgumentValueError(
            f"linear: argument 'input' has {input.shape[-1]} features in its last dimension "
            f"(shape {tuple(input.shape)}) but argument 'weight' expects in_features={in_features} "
            f"(shape {tuple(weight.shape)})")
    lead = input.shape[:-1]
    x2d = input.reshape(math.prod(lead), in_features)  # not -1: in_features may be 0
    out = with_activation(lambda code: _gemm_call(x2d, weight.t(), bias, code, backend), ACT_CODES[activation],
                          backend, (x2d, weight, bias))
    return out.reshape(*lead, out_features)
