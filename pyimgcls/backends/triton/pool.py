"""Pooling family on our Triton kernels (triton_kernels/pool.py). Entry points and their contracts:
pyimgcls/backends/cpu/pool.py."""
from __future__ import annotations

from ...ops import pool as op
from . import on_tensor_device


@on_tensor_device
def max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, channels_last, with_indices):
    x, out, idx, sizes = op.max_pool2d_buffers(x, kernel, stride, padding, dilation, ceil_mode, channels_last,
                                               with_indices)
    if sizes is not None:
        from ...triton_kernels import pool as tk
        tk.max_pool2d_fwd(x, out, idx if with_indices else None, kernel, stride, padding, dilation)
    return out, idx


@on_tensor_device
def max_pool2d_backward(grad, indices, height, width, kernel, stride, padding, dilation, channels_last):
    grad, indices, gx, sizes = op.max_pool2d_backward_buffers(grad, indices, height, width, channels_last)
    if sizes is not None:
        from ...triton_kernels import pool as tk
        tk.max_pool2d_bwd(grad, indices, gx, kernel, stride, padding, dilation)
    return gx


@on_tensor_device
def avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, channels_last):
    x, out, sizes = op.avg_pool2d_buffers(x, kernel, stride, padding, ceil_mode, channels_last)
    if sizes is not None:
        from ...triton_kernels import pool as tk
        tk.avg_pool2d_fwd(x, out, kernel, stride, padding, count_include_pad, divisor_override or 0)
    return out


@on_tensor_device
def avg_pool2d_backward(grad, height, width, kernel, stride, padding, ceil_mode, count_include_pad,
                        divisor_override, channels_last):
    grad, gx, sizes = op.buffers(grad, height, width, channels_last)
    if sizes is not None:
        from ...triton_kernels import pool as tk
        tk.avg_pool2d_bwd(grad, gx, kernel, stride, padding, count_include_pad, divisor_override or 0)
    return gx


@on_tensor_device
def adaptive_avg_pool2d(x, output_height, output_width, channels_last):
    x, out, sizes = op.buffers(x, output_height, output_width, channels_last)
    if sizes is not None:
        from ...triton_kernels import pool as tk
        tk.adaptive_avg_pool2d_fwd(x, out)
    return out


@on_tensor_device
def adaptive_avg_pool2d_backward(grad, height, width, channels_last):
    grad, gx, sizes = op.adaptive_avg_pool2d_backward_buffers(grad, height, width, channels_last)
    if sizes is not None:
        from ...triton_kernels import pool as tk
        tk.adaptive_avg_pool2d_bwd(grad, gx)
    return gx


# pyimgcls.explain: the triton_kernels host function each entry point calls (it picks the kernel).
LAUNCHERS = {
    "max_pool2d": "max_pool2d_fwd",
    "max_pool2d_backward": "max_pool2d_bwd",
    "avg_pool2d": "avg_pool2d_fwd",
    "avg_pool2d_backward": "avg_pool2d_bwd",
    "adaptive_avg_pool2d": "adaptive_avg_pool2d_fwd",
    "adaptive_avg_pool2d_backward": "adaptive_avg_pool2d_bwd",
}
