"""Pooling family in plain PyTorch (the yardstick). Entry points and their contracts:
pyimgcls/backends/cpu/pool.py."""
from __future__ import annotations

from ...ops import reference


def max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, channels_last, with_indices):
    return reference.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, channels_last, with_indices)


def max_pool2d_backward(grad, indices, height, width, kernel, stride, padding, dilation, channels_last):
    return reference.max_pool2d_backward(grad, indices, height, width, channels_last)


def avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, channels_last):
    return reference.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override,
                                channels_last)


def avg_pool2d_backward(grad, height, width, kernel, stride, padding, ceil_mode, count_include_pad,
                        divisor_override, channels_last):
    return reference.avg_pool2d_backward(grad, height, width, kernel, stride, padding, ceil_mode, count_include_pad,
                                         divisor_override, channels_last)


def adaptive_avg_pool2d(x, output_height, output_width, channels_last):
    return reference.adaptive_avg_pool2d(x, output_height, output_width, channels_last)


def adaptive_avg_pool2d_backward(grad, height, width, channels_last):
    return reference.adaptive_avg_pool2d_backward(grad, height, width, channels_last)
