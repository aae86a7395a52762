"""Plain-PyTorch reference implementations (ATen / cuBLAS / cuDNN): the yardstick every kernel is
compared against. Selected only explicitly, with backend "torch"; never a silent fallback."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._native import ACT_NAMES


def activation(x: torch.Tensor, act: int) -> torch.Tensor:
    name = ACT_NAMES[act]
    if name is None:
        return x
    return _ACT_FUNCS[name](x)


_ACT_FUNCS = {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "hardswish": F.hardswish, "sigmoid": torch.sigmoid,
              "hardsigmoid": F.hardsigmoid}


def gemm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, act: int) -> torch.Tensor:
    out = a @ b
    if bias is not None:
        out = out + bias
    return activation(out, act).contiguous()


def activation_backward(grad: torch.Tensor, saved: torch.Tensor | None, act: int) -> torch.Tensor:
    """grad through the activation from the tensor saved for it: the output for relu / relu6 / sigmoid,
    the pre-activation for silu / hardswish / hardsigmoid (ATen's backward ops)."""
    name = ACT_NAMES[act]
    # Select semantics, as ATen's threshold_backward / hardtanh_backward.
    if name == "relu":
        return torch.where(saved <= 0, 0, grad)
    if name == "relu6":
        return torch.where((saved <= 0) | (saved >= 6), 0, grad)
    if name == "sigmoid":
        return torch.ops.aten.sigmoid_backward(grad, saved)
    if name == "silu":
        return torch.ops.aten.silu_backward(grad, saved)
    if name == "hardswish":
        return torch.ops.aten.hardswish_backward(grad, saved)
    if name == "hardsigmoid":
        return torch.ops.aten.hardsigmoid_backward(grad, saved)
    return grad


def activation_backward_differentiable(grad: torch.Tensor, saved: torch.Tensor, act: int) -> torch.Tensor:
    """activation_backward's values from plain differentiable torch ops (aten.silu_backward and
    hardswish_backward have no derivative of their own), for gradients built under create_graph=True."""
    name = ACT_NAMES[act]
    if name == "sigmoid":
        return grad * (1 - saved) * saved
    if name == "silu":
        sig = torch.sigmoid(saved)
        return grad * sig * (1 + saved * (1 - sig))
    if name == "hardswish":
        return torch.where(saved <= -3, 0, torch.where(saved < 3, grad * (saved / 3 + 0.5), grad))
    if name == "hardsigmoid":
        return torch.where((saved > -3) & (saved < 3), grad / 6, 0)
    return activation_backward(grad, saved, act)


# ----------------------------------------------------------------------------- pooling
def _pool_format(channels_last: bool):
    return torch.channels_last if channels_last else torch.contiguous_format


def max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, channels_last, with_indices):
    out, idx = torch.ops.aten.max_pool2d_with_indices(x.contiguous(memory_format=_pool_format(channels_last)),
                                                      kernel, stride, padding, dilation, ceil_mode)
    return out, (idx if with_indices else idx.new_empty((0,)))


def max_pool2d_backward(grad, indices, height, width, channels_last):
    N, C, OH, OW = grad.shape
    gx = grad.new_zeros((N, C, height * width))
    # explicit sizes: with N or C == 0 a -1 could be any value, which reshape refuses
    gx.scatter_add_(2, indices.reshape(N, C, OH * OW), grad.reshape(N, C, OH * OW))
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


def _conv2d_backward(grad_pre, x, w, stride, padding, dilation, groups, want_input: bool):
    """ATen's convolution_backward called directly: this runs inside the backward custom op, below the
    autograd dispatch key, where re-deriving the gradient with torch.autograd.grad records nothing."""
    top, left, bottom, right = padding
    symmetric = top == bottom and left == right
    xp = x if symmetric else F.pad(x, (left, right, top, bottom))
    pad = [top, left] if symmetric else [0, 0]
    gi, gw, _ = torch.ops.aten.convolution_backward(grad_pre, xp, w, None, list(stride), pad, list(dilation), False,
                                                    [0, 0], groups, [want_input, not want_input, False])
    if not want_input:
        return gw
    return gi if symmetric else gi[..., top:top + x.shape[-2], left:left + x.shape[-1]]


def conv2d_input_grad(grad_pre, x, w, stride, padding, dilation, groups) -> torch.Tensor:
    return _conv2d_backward(grad_pre, x, w, stride, padding, dilation, groups, True)


def conv2d_weight_grad(grad_pre, x, w, stride, padding, dilation, groups) -> torch.Tensor:
    return _conv2d_backward(grad_pre, x, w, stride, padding, dilation, groups, False)


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
                  reduction: str, label_smoothing: float) -> torch.Tensor:
    """F.cross_entropy with class-index targets (int32 / uint8 targets widened to int64 first)."""
    return F.cross_entropy(input, target.long(), weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)


def cross_entropy_prob(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: str,
                       label_smoothing: float) -> torch.Tensor:
    """F.cross_entropy with class-probability targets (target of the logits' shape, same dtype)."""
    return F.cross_entropy(input, target, weight, reduction=reduction, label_smoothing=label_smoothing)


# ----------------------------------------------------------------------------- batch norm
def _bn_format(x, channels_last):
    return torch.channels_last if (channels_last and x.dim() == 4) else torch.contiguous_format


def batch_norm(x, weight, bias, residual, mean_in, var_in, training, eps, act: int, channels_last):
    """(out, save_mean, save_invstd, batch_var) as pyimgcls::batch_norm returns them, from ATen's
    native_batch_norm (statistics in float32, float64 for float64 input)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    dims = [0] + list(range(2, x.dim()))
    fmt = _bn_format(x, channels_last)
    if training:
        var, mean = torch.var_mean(x.to(acc), dims, correction=0)
    else:
        mean, var = mean_in.to(acc).clone(), var_in.to(acc)
    invstd = torch.rsqrt(var + eps)
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x.to(acc) - mean.reshape(shape)) * invstd.reshape(shape)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    if residual is not None:
        y = y + residual.to(acc)
    out = activation(y, act).to(x.dtype).contiguous(memory_format=fmt)
    return out, mean, invstd, (var if training else var.new_empty((0,)))


def batch_norm_update_stats(running_mean, running_var, mean, var, momentum, count):
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            running_var.mul_(1 - momentum).add_((var * (count / (count - 1))).to(running_var.dtype), alpha=momentum)


def batch_norm_backward(grad, x, weight, out, mean, invstd, training, act: int, channels_last, has_residual,
                        needs_input, needs_weight, needs_bias):
    acc = mean.dtype
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    fmt = _bn_format(x, channels_last)
    gp = activation_backward(grad, out, act)
    g = gp.to(acc)
    xhat = (x.to(acc) - mean.reshape(shape)) * invstd.reshape(shape)
    M = x.numel() // x.shape[1] if x.shape[1] else 0
    sum_dy, sum_dyx = g.sum(dims), (g * xhat).sum(dims)
    empty = x.new_empty((0,))
    gx = empty
    if needs_input:
        scale = invstd if weight is None else invstd * weight
        gi = g - (sum_dy.reshape(shape) + xhat * sum_dyx.reshape(shape)) / M if training else g
        gx = (gi * scale.reshape(shape)).to(x.dtype).contiguous(memory_format=fmt)
    gw = sum_dyx if needs_weight else mean.new_empty((0,))
    gb = sum_dy if needs_bias else mean.new_empty((0,))
    gr = gp.contiguous(memory_format=fmt).clone() if (has_residual and act != 0) else empty
    return gx, gw, gb, gr
