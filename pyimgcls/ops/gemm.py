"""GEMM family: ``matmul`` and ``linear`` with a fused bias + activation epilogue.

Both lower to one custom op, ``pyimgcls::gemm`` (C = act(A @ B + bias), A [M, K], B [K, N] with any
strides), whose backward is its own custom op ``pyimgcls::gemm_backward``:
    grad_pre = grad * act'(out)       (mask from the saved output: relu out>0, relu6 0<out<6)
    grad_A   = grad_pre @ B^T         (B^T is a strided view: no transpose copy)
    grad_B   = A^T @ grad_pre
    grad_bias = grad_pre.sum(0)       (fused into the mask kernel, deterministic)
The backend is resolved in Python before the custom op is called and passed to it as a string, so
torch.compile traces a fixed choice.
"""
from __future__ import annotations

import math

import torch

from .. import _backend, _native
from .._native import ACT_CODES
from ..errors import ArgumentValueError
from . import _alloc, _eager, reference
from ._checks import (autocast_dtype, check_activation, check_backend_dtype, check_dim, check_float,
                      check_same_device, check_same_dtype, check_tensor)

_LOW_PRECISION = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- backend kernels
def _cpu_gemm(a, b, bias, act, out):
    M, K = a.shape
    N = b.shape[1]
    _native.C.gemm_cpu(
        _native.dtype_code(a.dtype), a.data_ptr(), a.stride(0), a.stride(1),
        b.data_ptr(), b.stride(0), b.stride(1), bias.data_ptr() if bias is not None else 0,
        out.data_ptr(), out.stride(0), out.stride(1), M, N, K, act)


def _cuda_gemm(a, b, bias, act, out):
    M, K = a.shape
    N = b.shape[1]
    _native.C.gemm_cuda(
        _native.dtype_code(a.dtype), a.data_ptr(), a.stride(0), a.stride(1),
        b.data_ptr(), b.stride(0), b.stride(1), bias.data_ptr() if bias is not None else 0,
        out.data_ptr(), out.stride(0), M, N, K, act, a.device.index, _native.cuda_stream(a))


def _run_gemm(a, b, bias, act, backend) -> torch.Tensor:
    """act(a @ b + bias) on ``backend``; a [M, K], b [K, N] any strides; returns contiguous [M, N]."""
    M, N = a.shape[0], b.shape[1]
    if backend == "torch":
        return reference.gemm(a, b, bias, act)
    if backend == "cpu" and a.dtype in _LOW_PRECISION:
        # DESIGN.md: float16/bfloat16 CPU inputs are computed in float32, returned in their dtype.
        f = lambda t: None if t is None else t.float()  # noqa: E731
        return _run_gemm(f(a), f(b), f(bias), act, backend).to(a.dtype)
    out = _alloc.empty((M, N), a.dtype, a.device)
    if M == 0 or N == 0:
        return out
    if backend == "cpu":
        _cpu_gemm(a, b, bias, act, out)
    elif backend == "cuda":
        _cuda_gemm(a, b, bias, act, out)
    elif backend == "triton":
        from ..triton_kernels import gemm as tk
        tk.gemm(a, b, bias, act, out)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    return out


def _run_bias_act_bwd(grad, out, act, has_bias, backend):
    """(grad_pre, grad_bias or None) for a contiguous [M, N] grad."""
    if act == 0 and not has_bias:
        return grad, None
    if backend == "torch":
        gp = reference.activation_backward(grad, out, act)
        return gp, (gp.sum(0) if has_bias else None)
    if backend == "cpu" and grad.dtype in _LOW_PRECISION:
        gp, gb = _run_bias_act_bwd(grad.float(), None if out is None else out.float(), act, has_bias, backend)
        return gp.to(grad.dtype), (None if gb is None else gb.to(grad.dtype))
    M, N = grad.shape
    gp = _alloc.empty((M, N), grad.dtype, grad.device) if act != 0 else grad
    gb = _alloc.empty((N,), grad.dtype, grad.device) if has_bias else None
    if N == 0:
        return gp, gb
    out_ptr = out.data_ptr() if out is not None else 0
    gb_ptr = gb.data_ptr() if gb is not None else 0
    if backend == "cpu":
        _native.C.bias_act_bwd_cpu(_native.dtype_code(grad.dtype), grad.data_ptr(), out_ptr, gp.data_ptr(),
                                   gb_ptr, M, N, act)
    elif backend == "cuda":
        _native.C.bias_act_bwd_cuda(_native.dtype_code(grad.dtype), grad.data_ptr(), out_ptr, gp.data_ptr(),
                                    gb_ptr, M, N, act, grad.device.index, _native.cuda_stream(grad))
    elif backend == "triton":
        from ..triton_kernels import gemm as tk
        tk.bias_act_bwd(grad, out, act, gp, gb)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    return gp, gb


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
    backward = _eager.pick(ctx, _gemm_backward_op, _gemm_backward_impl)
    ga, gw, gb = backward(grad, a, b, out, ctx.has_bias and needs_bias, ctx.activation, ctx.backend, needs_a, needs_b)
    return (ga if needs_a else None, gw if needs_b else None,
            gb if (ctx.has_bias and needs_bias) else None, None, None)


_gemm_op.register_autograd(_gemm_backward, setup_context=_gemm_setup_context)
_EagerGemm = _eager.function(_run_gemm, _gemm_setup_context, _gemm_backward)


def _gemm_call(a, b, bias, activation, backend):
    return _eager.call(_gemm_op, _EagerGemm, _run_gemm, (a, b, bias, activation, backend), (a, b, bias))


# ----------------------------------------------------------------------------- public API
def _prepare(op, tensors):
    """Validate dtype/device of (name, tensor-or-None) pairs, apply autocast, pick the backend."""
    first_name, first = tensors[0]
    for name, t in tensors:
        if t is None:
            continue
        check_tensor(t, name, op)
        check_float(t, name, op)
    for name, t in tensors[1:]:
        if t is not None:
            check_same_device(first, first_name, t, name, op)
    cast = autocast_dtype(first.device.type)
    if cast is not None:
        tensors = [(n, None if t is None else t.to(cast)) for n, t in tensors]
        first = tensors[0][1]
    for name, t in tensors[1:]:
        if t is not None:
            check_same_dtype(first, first_name, t, name, op)
    backend = _backend.resolve(first.device, op)
    for name, t in tensors:
        if t is not None:
            check_backend_dtype(backend, t, name, op)
    return backend, [t for _, t in tensors]


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D ``a`` [M, K] and ``b`` [K, N]; float16/bfloat16 accumulate in float32 and
    return the input dtype. Any strides (transposed views are read in place)."""
    op = "matmul"
    check_tensor(a, "a", op)
    check_tensor(b, "b", op)
    check_dim(a, "a", op, 2)
    check_dim(b, "b", op, 2)
    backend, (a, b) = _prepare(op, [("a", a), ("b", b)])
    if a.shape[1] != b.shape[0]:
        raise ArgumentValueError(
            f"matmul: inner dimensions differ: argument 'a' is {tuple(a.shape)} and argument 'b' is "
            f"{tuple(b.shape)} (a.shape[1] must equal b.shape[0])")
    return _gemm_call(a, b, None, 0, backend)


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           activation: str | None = None) -> torch.Tensor:
    """``act(input @ weight.T + bias)`` as ``torch.nn.functional.linear`` plus a fused activation.

    input [*, in_features], weight [out_features, in_features], bias [out_features] or None,
    activation None | "relu" | "relu6" (applied on the fp32 accumulator before rounding)."""
    op = "linear"
    check_tensor(input, "input", op)
    check_tensor(weight, "weight", op)
    check_activation(activation, op)
    if input.dim() < 1:
        raise ArgumentValueError(f"linear: argument 'input' must have at least 1 dimension, got a 0-D tensor")
    check_dim(weight, "weight", op, 2)
    if bias is not None:
        check_tensor(bias, "bias", op)
        check_dim(bias, "bias", op, 1)
    backend, (input, weight, bias) = _prepare(op, [("input", input), ("weight", weight), ("bias", bias)])
    out_features, in_features = weight.shape
    if input.shape[-1] != in_features:
        raise ArgumentValueError(
            f"linear: argument 'input' has {input.shape[-1]} features in its last dimension "
            f"(shape {tuple(input.shape)}) but argument 'weight' expects in_features={in_features} "
            f"(shape {tuple(weight.shape)})")
    if bias is not None and bias.shape[0] != out_features:
        raise ArgumentValueError(
            f"linear: argument 'bias' has {bias.shape[0]} elements but argument 'weight' has "
            f"out_features={out_features}")
    lead = input.shape[:-1]
    x2d = input.reshape(math.prod(lead), in_features)  # not -1: in_features may be 0
    out = _gemm_call(x2d, weight.t(), bias, ACT_CODES[activation], backend)
    return out.reshape(*lead, out_features)
