"""Convolution family in plain PyTorch (the yardstick). Entry points and their contracts:
pyimgcls/backends/cpu/conv.py; results are copied into the contract's canonical layouts only where
PyTorch's strides differ."""
from __future__ import annotations

from ...ops import reference
from ...ops._layout import format_of as _format_of, match_format as _match_format, output_memory_format


def conv2d(x, w, bias, res, stride, padding, dilation, groups, act):
    return _match_format(reference.conv2d(x, w, bias, res, stride, padding, dilation, groups, act),
                         output_memory_format(x, w))


def bias_act_bwd(grad, out, act, has_bias, fmt):
    gp = reference.activation_backward(grad, out, act)
    return gp, (gp.sum((0, 2, 3)) if has_bias else None)


def dgrad(gp, x, w, stride, padding, dilation, groups):
    return _match_format(reference.conv2d_input_grad(gp, x, w, stride, padding, dilation, groups), _format_of(x))


def wgrad(gp, x, w, stride, padding, dilation, groups):
    return reference.conv2d_weight_grad(gp, x, w, stride, padding, dilation, groups).contiguous()
