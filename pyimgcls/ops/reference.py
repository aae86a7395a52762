"""Plain-PyTorch reference implementations (ATen / cuBLAS / cuDNN): the yardstick every kernel is
compared against. Selected only explicitly, with backend "torch"; never a silent fallback."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._native import ACT_NAMES


def activation(x: torch.Tensor, act: int) -> torch.Tensor:
    name = ACT_NAMES[act]
    if name == "relu":
        return F.relu(x)
    if name == "relu6":
        return F.relu6(x)
    return x


def gemm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, act: int) -> torch.Tensor:
    out = a @ b
    if bias is not None:
        out = out + bias
    return activation(out, act).contiguous()


def activation_backward(grad: torch.Tensor, out: torch.Tensor | None, act: int) -> torch.Tensor:
    name = ACT_NAMES[act]
    # Select semantics, as ATen's threshold_backward / hardtanh_backward.
    if name == "relu":
        return torch.where(out <= 0, 0, grad)
    if name == "relu6":
        return torch.where((out <= 0) | (out >= 6), 0, grad)
    return grad


# ----------------------------------------------------------------------------- pooling
def _pool_format(channels_last: bool):
    return torch.channels_last if channels_last else torch.contiguous_format


def max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, channels_last, with_indices):
    out, idx = torch.ops.aten.max_pool2d_with_indices(x.contiguous(memory_format=_pool_format(channels_last)),
                                                      kernel, stride, padding, dilation, ceil_mode)
    return out, (idx if with_indices else idx.new_empty((0,)))


def max_pool2d_backward(grad, indices, height, width, channels_last):
    N, C = grad.shape[:2]
    gx = grad.new_zeros((N, C, height * width))
    gx.scatter_add_(2, indices.reshape(N, C, -1), grad.reshape(N, C, -1))
    return gx.reshape(N, C, height, width).contiguous(memory_format=_pool_format(channels_last))


def avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, channels_last):
    return F.avg_pool2d(x.contiguous(memory_format=_pool_format(channels_last)), kernel, stride, padding,
                        ceil_mode, count_include_pad, divisor_override)


def avg_pool2d_backward(grad, height, width, kernel, stride, padding, ceil_mode, count_include_pad,
                        divisor_override, channels_last):
    fmt = _pool_format(channels_last)
    shape_of = grad.new_empty((grad.shape[0], grad.shape[1], height, width)).contiguous(memory_format=fmt)
    return torch.ops.aten.avg_pool2d_backward(grad.contiguous(memory_format=fmt), shape_of, kernel, stride, padding,
                                              ceil_mode, count_include_pad, divisor_override)


def adaptive_avg_pool2d(x, output_height, output_width, channels_last):
    fmt = _pool_format(channels_last)
    if output_height == 1 and output_width == 1:  # ATen's own global-mean path (also for empty planes)
        return x.mean((-2, -1), keepdim=True).contiguous(memory_format=fmt)
    return torch.ops.aten._adaptive_avg_pool2d(x.contiguous(memory_format=fmt), [output_height, output_width])


def adaptive_avg_pool2d_backward(grad, height, width, channels_last):
    fmt = _pool_format(channels_last)
    shape_of = grad.new_empty((grad.shape[0], grad.shape[1], height, width)).contiguous(memory_format=fmt)
    return torch.ops.aten._adaptive_avg_pool2d_backward(grad.contiguous(memory_format=fmt), shape_of).contiguous(
        memory_format=fmt)


def _conv2d_padded(x, w, bias, stride, padding, dilation, groups):
    """F.conv2d with padding [top, left, bottom, right]; asymmetric padding ("same" with an even
    kernel) pads explicitly first, as PyTorch itself does for that case."""
    import torch.nn.functional as F
    top, left, bottom, right = padding
    if top == bottom and left == right:
        return F.conv2d(x, w, bias, stride, (top, left), dilation, groups)
    return F.conv2d(F.pad(x, (left, right, top, bottom)), w, bias, stride, 0, dilation, groups)


def conv2d(x, w, bias, residual, stride, padding, dilation, groups, act: int) -> torch.Tensor:
    out = _conv2d_padded(x, w, bias, stride, padding, dilation, groups)
    if residual is not None:
        out = out + residual
    return activation(out, act)


def conv2d_input_grad(grad_pre, x, w, stride, padding, dilation, groups) -> torch.Tensor:
    with torch.enable_grad():
        xr = x.detach().requires_grad_()
        out = _conv2d_padded(xr, w.detach(), None, stride, padding, dilation, groups)
        return torch.autograd.grad(out, xr, grad_pre)[0]


def conv2d_weight_grad(grad_pre, x, w, stride, padding, dilation, groups) -> torch.Tensor:
    with torch.enable_grad():
        wr = w.detach().requires_grad_()
        out = _conv2d_padded(x.detach(), wr, None, stride, padding, dilation, groups)
        return torch.autograd.grad(out, wr, grad_pre)[0]


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
                  reduction: str, label_smoothing: float) -> torch.Tensor:
    """F.cross_entropy with class-index targets (int32 / uint8 targets widened to int64 first)."""
    return F.cross_entropy(input, target.long(), weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
