"""Pooling family: ``max_pool2d``, ``avg_pool2d`` and ``adaptive_avg_pool2d`` (with the global
1x1 case as a plain reduction), forward and backward, as torch.nn.functional computes them.

Custom ops (the backend is resolved in Python and passed as a string, as in the GEMM family; each
implementation is one lookup of pyimgcls/backends/<backend>/pool.py, whose entry points take the
op's arguments less ``backend``):
    pyimgcls::max_pool2d(x, ...)            -> (out, indices)   indices: int64 flat h*W+w per plane
    pyimgcls::max_pool2d_backward(grad, indices, ...)            grad_in[n, c, idx] += grad
    pyimgcls::avg_pool2d(x, ...)            -> out
    pyimgcls::avg_pool2d_backward(grad, ...)                      grad_in = sum of grad / divisor
    pyimgcls::adaptive_avg_pool2d(x, ...)   -> out
    pyimgcls::adaptive_avg_pool2d_backward(grad, ...)

Semantics copied from ATen (aten/src/ATen/native/Pool.h, MaxPoolKernel.cpp, AvgPoolKernel.cpp):
- output size = floor_or_ceil((H + 2p - d(k-1) - 1) / s) + 1; in ceil mode a last window that
  would start inside the right padding is dropped.
- max: padding counts as -inf; windows are scanned row-major and a value replaces the running
  maximum when it is strictly greater or NaN, so among ties the first maximum wins and, when the
  window holds NaN, the output is NaN and the index is the last NaN's. An all -inf window returns
  -inf and the first in-bounds position.
- avg: the divisor is divisor_override when given, else the window clipped to the padded input
  (count_include_pad=True) or to the input (False).
- adaptive: window of output o over an input of size I is [floor(o*I/O), ceil((o+1)*I/O)).
- memory format: the output (and grad_input) take input.suggest_memory_format(): channels_last
  for 4-D inputs whose strides look channels-last (c10's is_channels_last_strides_2d heuristic,
  reproduced in ``_layout.suggests_channels_last``), contiguous otherwise (3-D inputs included).

Why the argmax is saved rather than recomputed: return_indices must hand out PyTorch's int64 flat
indices anyway, and with them the backward never re-reads the input or re-evaluates the NaN/tie
rules. Without return_indices and without autograd the indices are not written at all.
"""
from __future__ import annotations

import math
import operator

import torch

from .. import _backend, backends
from ..errors import ArgumentTypeError, ArgumentValueError
from . import _alloc, _eager
from ._checks import check_backend_dtype, check_float, check_tensor
from ._layout import suggests_channels_last


# ----------------------------------------------------------------------------- shape helpers
def _memory_format(channels_last: bool):
    return torch.channels_last if channels_last else torch.contiguous_format


def pool_output_size(size: int, kernel: int, pad: int, stride: int, dilation: int, ceil_mode: bool) -> int:
    """ATen's pooling_output_shape (floor division rounds toward -inf, as div_rtn does)."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _int_like(v, name: str, op: str) -> int:
    if isinstance(v, bool) or isinstance(v, float):
        raise ArgumentTypeError(f"{op}: argument '{name}' must be an int or a tuple of ints, got {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise ArgumentTypeError(
            f"{op}: argument '{name}' must be an int or a tuple of ints, got {type(v).__name__}") from None


def _pair(value, name: str, op: str, default=None) -> tuple[int, int]:
    """int -> (v, v); sequence of 1 or 2 ints -> pair; None / empty -> ``default`` when allowed."""
    if default is not None and (value is None or (isinstance(value, (tuple, list, torch.Size)) and len(value) == 0)):
        return default
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        value = value.item()
    if isinstance(value, (tuple, list, torch.Size)):
        if len(value) not in (1, 2):
            extra = "omitted, " if default is not None else ""
            raise ArgumentValueError(
                f"{op}: argument '{name}' must either be {extra}a single int, or a tuple of two ints, got {tuple(value)}")
        vals = tuple(_int_like(v, name, op) for v in value)
        return (vals[0], vals[0]) if len(vals) == 1 else vals
    v = _int_like(value, name, op)
    return (v, v)


def _check_bool(v, name: str, op: str) -> bool:
    if not isinstance(v, bool):
        raise ArgumentTypeError(f"{op}: argument '{name}' must be bool, got {type(v).__name__}")
    return v


def _check_input(input, op: str) -> None:
    """3-D (C, H, W) or 4-D (N, C, H, W) float tensor; only the batch may be empty (as ATen)."""
    check_tensor(input, "input", op)
    check_float(input, "input", op)
    if input.dim() not in (3, 4):
        raise ArgumentValueError(
            f"{op}: argument 'input' must be a 3-D (C, H, W) or 4-D (N, C, H, W) tensor, got "
            f"{input.dim()}-D of shape {tuple(input.shape)}")
    if any(s == 0 for s in input.shape[-3:]):
        raise ArgumentValueError(
            f"{op}: argument 'input' may be empty only in the batch dimension, got shape {tuple(input.shape)}")


def _check_window(op, shape, kernel, stride, padding, dilation, ceil_mode):
    """ATen's pool2d_shape_check; returns (OH, OW)."""
    for name, val, low in (("kernel_size", kernel, 1), ("stride", stride, 1), ("dilation", dilation, 1),
                           ("padding", padding, 0)):
        if min(val) < low:
            what = "greater than zero" if low == 1 else "non-negative"
            raise ArgumentValueError(f"{op}: argument '{name}' must be {what}, got {val}")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ArgumentValueError(
            f"{op}: argument 'padding' must be at most half of kernel_size, got padding={padding} "
            f"for kernel_size={kernel}")
    H, W = shape[-2], shape[-1]
    oh = pool_output_size(H, kernel[0], padding[0], stride[0], dilation[0], ceil_mode)
    ow = pool_output_size(W, kernel[1], padding[1], stride[1], dilation[1], ceil_mode)
    if oh < 1 or ow < 1:
        raise ArgumentValueError(
            f"{op}: the pooling window (argument 'kernel_size'={kernel}, dilation={dilation}) does not fit "
            f"the padded input: argument 'input' has spatial size ({H}, {W}) and padding={padding}, giving "
            f"an output of size ({oh}, {ow}), which is too small")
    return oh, ow


def _resolve(input: torch.Tensor, op: str) -> str:
    backend = _backend.resolve(input.device, op)
    check_backend_dtype(backend, input, "input", op)
    return backend


# ----------------------------------------------------------------------------- kernel buffers
# Shared by the cpu, cuda and triton family modules (pyimgcls/backends/<backend>/pool.py), which add
# the launch. Each returns its tensor argument(s) in the memory format ``channels_last`` names, the
# result(s) allocated in that format, and the sizes (N, C, H, W, h, w) of the tensor passed and of the
# result, or None for the sizes when the result is empty (nothing to launch; the result is final).
# Written out rather than layered: every call of a pooling op runs one of them.
_CHANNELS_LAST, _CONTIGUOUS = torch.channels_last, torch.contiguous_format


def buffers(t, h, w, channels_last):
    """``t`` [N, C, H, W] and a new [N, C, h, w] tensor of its dtype and device."""
    fmt = _CHANNELS_LAST if channels_last else _CONTIGUOUS
    N, C, H, W = t.shape
    t = t.contiguous(memory_format=fmt)
    out = _alloc.empty((N, C, h, w), t.dtype, t.device, memory_format=fmt)
    return t, out, ((N, C, H, W, h, w) if out.numel() else None)


def max_pool2d_buffers(x, kernel, stride, padding, dilation, ceil_mode, channels_last, with_indices):
    """(x, out, indices, sizes): indices int64 like out when ``with_indices``, else an empty [0]."""
    fmt = _CHANNELS_LAST if channels_last else _CONTIGUOUS
    N, C, H, W = x.shape
    OH = pool_output_size(H, kernel[0], padding[0], stride[0], dilation[0], ceil_mode)
    OW = pool_output_size(W, kernel[1], padding[1], stride[1], dilation[1], ceil_mode)
    x = x.contiguous(memory_format=fmt)
    out = _alloc.empty((N, C, OH, OW), x.dtype, x.device, memory_format=fmt)
    idx = (_alloc.empty((N, C, OH, OW), torch.int64, x.device, memory_format=fmt) if with_indices
           else x.new_empty((0,), dtype=torch.int64))
    return x, out, idx, ((N, C, H, W, OH, OW) if out.numel() else None)


def max_pool2d_backward_buffers(grad, indices, H, W, channels_last):
    """(grad, indices, grad_input, sizes)."""
    fmt = _CHANNELS_LAST if channels_last else _CONTIGUOUS
    N, C, OH, OW = grad.shape
    grad = grad.contiguous(memory_format=fmt)
    indices = indices.contiguous(memory_format=fmt)
    gx = _alloc.empty((N, C, H, W), grad.dtype, grad.device, memory_format=fmt)
    return grad, indices, gx, ((N, C, OH, OW, H, W) if gx.numel() else None)


def avg_pool2d_buffers(x, kernel, stride, padding, ceil_mode, channels_last):
    """(x, out, sizes)."""
    fmt = _CHANNELS_LAST if channels_last else _CONTIGUOUS
    N, C, H, W = x.shape
    OH = pool_output_size(H, kernel[0], padding[0], stride[0], 1, ceil_mode)
    OW = pool_output_size(W, kernel[1], padding[1], stride[1], 1, ceil_mode)
    x = x.contiguous(memory_format=fmt)
    out = _alloc.empty((N, C, OH, OW), x.dtype, x.device, memory_format=fmt)
    return x, out, ((N, C, H, W, OH, OW) if out.numel() else None)


def adaptive_avg_pool2d_backward_buffers(grad, H, W, channels_last):
    """``buffers(grad, H, W, channels_last)``; an output of zero size has a zero gradient."""
    grad, gx, sizes = buffers(grad, H, W, channels_last)
    if sizes is not None and (sizes[2] == 0 or sizes[3] == 0):
        # nothing was pooled: no input element reaches the output
        return grad, gx.zero_(), None
    return grad, gx, sizes


# ----------------------------------------------------------------------------- kernels (backend grid)
# The custom ops' implementations: one lookup of the backend's family module (pyimgcls/backends/
# <backend>/pool.py, entry points documented in the cpu one), whose entry points take the op's
# arguments less ``backend``.
def _run_max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, channels_last, with_indices, backend):
    return backends.kernels(backend, "pool").max_pool2d(x, kernel, stride, padding, dilation, ceil_mode,
                                                        channels_last, with_indices)


def _run_max_pool2d_backward(grad, indices, H, W, kernel, stride, padding, dilation, channels_last, backend):
    return backends.kernels(backend, "pool").max_pool2d_backward(grad, indices, H, W, kernel, stride, padding,
                                                                 dilation, channels_last)


def _run_avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, channels_last,
                    backend):
    return backends.kernels(backend, "pool").avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad,
                                                        divisor_override, channels_last)


def _run_avg_pool2d_backward(grad, H, W, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override,
                             channels_last, backend):
    return backends.kernels(backend, "pool").avg_pool2d_backward(grad, H, W, kernel, stride, padding, ceil_mode,
                                                                 count_include_pad, divisor_override, channels_last)


def _run_adaptive_avg_pool2d(x, OH, OW, channels_last, backend):
    return backends.kernels(backend, "pool").adaptive_avg_pool2d(x, OH, OW, channels_last)


def _run_adaptive_avg_pool2d_backward(grad, H, W, channels_last, backend):
    return backends.kernels(backend, "pool").adaptive_avg_pool2d_backward(grad, H, W, channels_last)


# ----------------------------------------------------------------------------- custom ops: max
def _empty_like_pool(x, shape, channels_last, dtype=None):
    return x.new_empty(shape, dtype=dtype or x.dtype).contiguous(memory_format=_memory_format(channels_last))


@torch.library.custom_op("pyimgcls::max_pool2d", mutates_args=())
def _max_pool2d_op(x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
                   dilation: list[int], ceil_mode: bool, channels_last: bool, with_indices: bool,
                   backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _run_max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, channels_last, with_indices,
                           backend)


@_max_pool2d_op.register_fake
def _(x, kernel_size, stride, padding, dilation, ceil_mode, channels_last, with_indices, backend):
    N, C, H, W = x.shape
    shape = (N, C, pool_output_size(H, kernel_size[0], padding[0], stride[0], dilation[0], ceil_mode),
             pool_output_size(W, kernel_size[1], padding[1], stride[1], dilation[1], ceil_mode))
    out = _empty_like_pool(x, shape, channels_last)
    idx = _empty_like_pool(x, shape, channels_last, torch.int64) if with_indices else x.new_empty((0,), dtype=torch.int64)
    return out, idx


@torch.library.custom_op("pyimgcls::max_pool2d_backward", mutates_args=())
def _max_pool2d_backward_op(grad: torch.Tensor, indices: torch.Tensor, height: int, width: int,
                            kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int],
                            channels_last: bool, backend: str) -> torch.Tensor:
    return _run_max_pool2d_backward(grad, indices, height, width, kernel_size, stride, padding, dilation,
                                    channels_last, backend)


@_max_pool2d_backward_op.register_fake
def _(grad, indices, height, width, kernel_size, stride, padding, dilation, channels_last, backend):
    return _empty_like_pool(grad, (grad.shape[0], grad.shape[1], height, width), channels_last)


def _max_pool2d_setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding, dilation, ceil_mode, channels_last, with_indices, backend = inputs
    ctx.geometry = (x.shape[2], x.shape[3], kernel_size, stride, padding, dilation, channels_last, backend)
    ctx.with_indices = with_indices
    ctx.save_for_backward(output[1])


def _max_pool2d_backward(ctx, grad, _grad_indices):
    (indices,) = ctx.saved_tensors
    if not ctx.with_indices:
        raise RuntimeError("max_pool2d: backward needs the argmax indices, which were not kept because the "
                           "input did not require grad when the forward ran")
    H, W, kernel_size, stride, padding, dilation, channels_last, backend = ctx.geometry
    if _eager.graph_mode(grad):
        return _MaxPoolBackward.apply(grad, indices, ctx.geometry), None, None, None, None, None, None, None, None
    backward = _eager.pick(ctx, _max_pool2d_backward_op, _run_max_pool2d_backward)
    gx = backward(grad, indices, H, W, kernel_size, stride, padding, dilation, channels_last, backend)
    return gx, None, None, None, None, None, None, None, None


# Higher order (create_graph=True). Both pooling backwards are linear in the incoming gradient, so a
# differentiable backward is an autograd Function whose own backward is the adjoint map: for max
# pooling a gather of the input-sized gradient at the saved argmax indices, for average pooling the
# average pooling forward itself (our kernel, through the op, so it is differentiable again).
class _MaxPoolBackward(torch.autograd.Function):
    @staticmethod
    def forward(grad, indices, geometry):
        return _run_max_pool2d_backward(grad, indices, *geometry)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, gg):
        (indices,) = ctx.saved_tensors
        N, C = indices.shape[:2]
        # indices are flat h*W+w within each (n, c) plane, whatever the memory format
        picked = gg.reshape(N, C, -1).gather(2, indices.reshape(N, C, -1)).reshape(indices.shape)
        return picked, None, None


_max_pool2d_op.register_autograd(_max_pool2d_backward, setup_context=_max_pool2d_setup_context)
_EagerMaxPool2d = _eager.function(_run_max_pool2d, _max_pool2d_setup_context, _max_pool2d_backward)


# ----------------------------------------------------------------------------- custom ops: avg
@torch.library.custom_op("pyimgcls::avg_pool2d", mutates_args=())
def _avg_pool2d_op(x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
                   ceil_mode: bool, count_include_pad: bool, divisor_override: int | None, channels_last: bool,
                   backend: str) -> torch.Tensor:
    return _run_avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                           channels_last, backend)


@_avg_pool2d_op.register_fake
def _(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, channels_last, backend):
    N, C, H, W = x.shape
    shape = (N, C, pool_output_size(H, kernel_size[0], padding[0], stride[0], 1, ceil_mode),
             pool_output_size(W, kernel_size[1], padding[1], stride[1], 1, ceil_mode))
    return _empty_like_pool(x, shape, channels_last)


@torch.library.custom_op("pyimgcls::avg_pool2d_backward", mutates_args=())
def _avg_pool2d_backward_op(grad: torch.Tensor, height: int, width: int, kernel_size: list[int],
                            stride: list[int], padding: list[int], ceil_mode: bool, count_include_pad: bool,
                            divisor_override: int | None, channels_last: bool, backend: str) -> torch.Tensor:
    return _run_avg_pool2d_backward(grad, height, width, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                    divisor_override, channels_last, backend)


@_avg_pool2d_backward_op.register_fake
def _(grad, height, width, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
      channels_last, backend):
    return _empty_like_pool(grad, (grad.shape[0], grad.shape[1], height, width), channels_last)


def _avg_pool2d_setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, channels_last, backend = inputs
    ctx.geometry = (x.shape[2], x.shape[3], kernel_size, stride, padding, ceil_mode, count_include_pad,
                    divisor_override, channels_last, backend)


class _AvgPoolBackward(torch.autograd.Function):
    @staticmethod
    def forward(grad, geometry):
        return _run_avg_pool2d_backward(grad, *geometry)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.geometry = inputs[1]

    @staticmethod
    def backward(ctx, gg):
        args = (gg, *ctx.geometry[2:])
        return _eager.call(_avg_pool2d_op, _EagerAvgPool2d, _run_avg_pool2d, args, (gg,)), None


def _avg_pool2d_backward(ctx, grad):
    if _eager.graph_mode(grad):
        return _AvgPoolBackward.apply(grad, ctx.geometry), None, None, None, None, None, None, None, None
    gx = _eager.pick(ctx, _avg_pool2d_backward_op, _run_avg_pool2d_backward)(grad, *ctx.geometry)
    return gx, None, None, None, None, None, None, None, None


_avg_pool2d_op.register_autograd(_avg_pool2d_backward, setup_context=_avg_pool2d_setup_context)
_EagerAvgPool2d = _eager.function(_run_avg_pool2d, _avg_pool2d_setup_context, _avg_pool2d_backward)


# ----------------------------------------------------------------------------- custom ops: adaptive avg
@torch.library.custom_op("pyimgcls::adaptive_avg_pool2d", mutates_args=())
def _adaptive_avg_pool2d_op(x: torch.Tensor, output_height: int, output_width: int, channels_last: bool,
                            backend: str) -> torch.Tensor:
    return _run_adaptive_avg_pool2d(x, output_height, output_width, channels_last, backend)


@_adaptive_avg_pool2d_op.register_fake
def _(x, output_height, output_width, channels_last, backend):
    return _empty_like_pool(x, (x.shape[0], x.shape[1], output_height, output_width), channels_last)


@torch.library.custom_op("pyimgcls::adaptive_avg_pool2d_backward", mutates_args=())
def _adaptive_avg_pool2d_backward_op(grad: torch.Tensor, height: int, width: int, channels_last: bool,
                                     backend: str) -> torch.Tensor:
    return _run_adaptive_avg_pool2d_backward(grad, height, width, channels_last, backend)


@_adaptive_avg_pool2d_backward_op.register_fake
def _(grad, height, width, channels_last, backend):
    return _empty_like_pool(grad, (grad.shape[0], grad.shape[1], height, width), channels_last)


def _adaptive_setup_context(ctx, inputs, output):
    x, output_height, output_width, channels_last, backend = inputs
    ctx.geometry = (x.shape[2], x.shape[3], channels_last, backend)


class _AdaptiveBackward(torch.autograd.Function):
    @staticmethod
    def forward(grad, geometry):
        return _run_adaptive_avg_pool2d_backward(grad, *geometry)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.out_hw, ctx.geometry = tuple(inputs[0].shape[2:]), inputs[1]

    @staticmethod
    def backward(ctx, gg):
        _, _, channels_last, backend = ctx.geometry
        return _adaptive_call(gg, *ctx.out_hw, channels_last, backend), None


def _adaptive_backward(ctx, grad):
    if _eager.graph_mode(grad):
        return _AdaptiveBackward.apply(grad, ctx.geometry), None, None, None, None
    backward = _eager.pick(ctx, _adaptive_avg_pool2d_backward_op, _run_adaptive_avg_pool2d_backward)
    return backward(grad, *ctx.geometry), None, None, None, None


_adaptive_avg_pool2d_op.register_autograd(_adaptive_backward, setup_context=_adaptive_setup_context)
_EagerAdaptiveAvgPool2d = _eager.function(_run_adaptive_avg_pool2d, _adaptive_setup_context, _adaptive_backward)


def _adaptive_call(x, OH, OW, channels_last, backend):
    return _eager.call(_adaptive_avg_pool2d_op, _EagerAdaptiveAvgPool2d, _run_adaptive_avg_pool2d,
                       (x, OH, OW, channels_last, backend), (x,))


# ----------------------------------------------------------------------------- public API
def _batched(input: torch.Tensor):
    """(4-D view, channels_last, unbatched?) — a 3-D input is one image with a contiguous result."""
    if input.dim() == 3:
        return input.unsqueeze(0), False, True
    return input, suggests_channels_last(input), False


def max_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """``torch.nn.functional.max_pool2d``: 3-D (C, H, W) or 4-D (N, C, H, W) input, NCHW or
    channels_last (kept). With ``return_indices`` also returns int64 flat indices h*W+w into each
    input plane (PyTorch's, usable by max_unpool2d)."""
    op = "max_pool2d"
    _check_input(input, op)
    kernel = _pair(kernel_size, "kernel_size", op)
    stride_ = _pair(stride, "stride", op, default=kernel)
    padding_ = _pair(padding, "padding", op)
    dilation_ = _pair(dilation, "dilation", op)
    _check_bool(ceil_mode, "ceil_mode", op)
    _check_window(op, input.shape, kernel, stride_, padding_, dilation_, ceil_mode)
    backend = _resolve(input, op)
    x, channels_last, unbatched = _batched(input)
    with_indices = bool(return_indices) or (torch.is_grad_enabled() and input.requires_grad)
    args = (x, list(kernel), list(stride_), list(padding_), list(dilation_), ceil_mode, channels_last, with_indices,
            backend)
    out, idx = _eager.call(_max_pool2d_op, _EagerMaxPool2d, _run_max_pool2d, args, (x,))
    if unbatched:
        out = out.squeeze(0)
        idx = idx.squeeze(0) if with_indices else idx
    return (out, idx) if return_indices else out


def avg_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> torch.Tensor:
    """``torch.nn.functional.avg_pool2d``: 3-D or 4-D input, NCHW or channels_last (kept)."""
    op = "avg_pool2d"
    _check_input(input, op)
    kernel = _pair(kernel_size, "kernel_size", op)
    stride_ = _pair(stride, "stride", op, default=kernel)
    padding_ = _pair(padding, "padding", op)
    _check_bool(ceil_mode, "ceil_mode", op)
    _check_bool(count_include_pad, "count_include_pad", op)
    if divisor_override is not None:
        divisor_override = _int_like(divisor_override, "divisor_override", op)
        if divisor_override == 0:
            raise ArgumentValueError(f"{op}: argument 'divisor_override' must not be zero")
    _check_window(op, input.shape, kernel, stride_, padding_, (1, 1), ceil_mode)
    backend = _resolve(input, op)
    x, channels_last, unbatched = _batched(input)
    args = (x, list(kernel), list(stride_), list(padding_), ceil_mode, count_include_pad, divisor_override,
            channels_last, backend)
    out = _eager.call(_avg_pool2d_op, _EagerAvgPool2d, _run_avg_pool2d, args, (x,))
    return out.squeeze(0) if unbatched else out


def _adaptive_output_size(output_size, input: torch.Tensor, op: str) -> tuple[int, int]:
    """torch.nn.functional's _list_with_default (None keeps the input size) + ATen's checks."""
    if isinstance(output_size, (tuple, list, torch.Size)):
        if len(output_size) != 2:
            raise ArgumentValueError(f"{op}: argument 'output_size' must be an int or a pair, got {tuple(output_size)}")
        if input.dim() < 3:
            raise ArgumentValueError(f"{op}: argument 'input' must have at least 3 dimensions for a pair "
                                     f"output_size, got shape {tuple(input.shape)}")
        size = tuple(input.shape[-2 + i] if v is None else _int_like(v, "output_size", op)
                     for i, v in enumerate(output_size))
    elif output_size is None or not isinstance(output_size, int):
        # as _list_with_default: a bare size must be a Python int (not a NumPy int or a 0-D tensor)
        raise ArgumentTypeError(f"{op}: argument 'output_size' must be an int or a pair of ints/None, got "
                                f"{type(output_size).__name__}")
    else:
        v = _int_like(output_size, "output_size", op)
        size = (v, v)
    if size[0] < 0 or size[1] < 0:
        raise ArgumentValueError(f"{op}: argument 'output_size' must be non-negative, got {size}")
    return size


def adaptive_avg_pool2d(input: torch.Tensor, output_size) -> torch.Tensor:
    """``torch.nn.functional.adaptive_avg_pool2d``. ``output_size`` is an int or a pair whose
    entries may be None (keep that input size). An output of 1x1 is a global average: as in ATen it
    then accepts any input with at least 2 dimensions (the last two are averaged)."""
    op = "adaptive_avg_pool2d"
    check_tensor(input, "input", op)
    check_float(input, "input", op)
    OH, OW = _adaptive_output_size(output_size, input, op)
    global_mean = OH == 1 and OW == 1
    if global_mean:
        if input.dim() < 2:
            raise ArgumentValueError(f"{op}: argument 'input' must have at least 2 dimensions, got shape "
                                     f"{tuple(input.shape)}")
    else:
        if input.dim() not in (3, 4):
            raise ArgumentValueError(f"{op}: argument 'input' must be a 3-D (C, H, W) or 4-D (N, C, H, W) "
                                     f"tensor, got {input.dim()}-D of shape {tuple(input.shape)}")
        # ATen checks only the spatial sizes here: empty batch or channel dimensions are accepted
        if any(s == 0 for s in input.shape[-2:]):
            raise ArgumentValueError(f"{op}: argument 'input' must have non-empty spatial dimensions (H, W), "
                                     f"got shape {tuple(input.shape)}")
    backend = _resolve(input, op)
    if input.dim() == 4:
        return _adaptive_call(input, OH, OW, suggests_channels_last(input), backend)
    # 3-D (and, for the global mean, any other rank): the leading dims become channels of one image.
    lead = input.shape[:-2]
    x = input.reshape(1, math.prod(lead), input.shape[-2], input.shape[-1])
    out = _adaptive_call(x, OH, OW, False, backend)
    return out.reshape(*lead, OH, OW)
