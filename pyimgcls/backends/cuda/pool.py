"""Pooling family on our CUDA C++ kernels (csrc/cuda/pool.cu). Entry points and their contracts:
pyimgcls/backends/cpu/pool.py. Launchers take raw pointers, the sizes (as separate arguments, see the
cpu module), the device index and the stream."""
from __future__ import annotations

from ... import _native
from ...ops import pool as op
from . import launch_args


def max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, channels_last, with_indices):
    x, out, idx, sizes = op.max_pool2d_buffers(x, kernel, stride, padding, dilation, ceil_mode, channels_last,
                                               with_indices)
    if sizes is not None:
        N, C, H, W, OH, OW = sizes
        (KH, KW), (SH, SW), (PH, PW), (DH, DW) = kernel, stride, padding, dilation
        device, stream = launch_args(x)
        _native.C.max_pool2d_fwd_cuda(_native.dtype_code(x.dtype), x.data_ptr(), out.data_ptr(),
                                      idx.data_ptr() if with_indices else 0, N, C, H, W, OH, OW, KH, KW, SH, SW,
                                      PH, PW, DH, DW, channels_last, device, stream)
    return out, idx


def max_pool2d_backward(grad, indices, height, width, kernel, stride, padding, dilation, channels_last):
    grad, indices, gx, sizes = op.max_pool2d_backward_buffers(grad, indices, height, width, channels_last)
    if sizes is not None:
        N, C, OH, OW, H, W = sizes
        (KH, KW), (SH, SW), (PH, PW), (DH, DW) = kernel, stride, padding, dilation
        device, stream = launch_args(grad)
        _native.C.max_pool2d_bwd_cuda(_native.dtype_code(grad.dtype), grad.data_ptr(), indices.data_ptr(),
                                      gx.data_ptr(), N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW,
                                      channels_last, device, stream)
    return gx


def avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, channels_last):
    x, out, sizes = op.avg_pool2d_buffers(x, kernel, stride, padding, ceil_mode, channels_last)
    if sizes is not None:
        N, C, H, W, OH, OW = sizes
        (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
        device, stream = launch_args(x)
        _native.C.avg_pool2d_fwd_cuda(_native.dtype_code(x.dtype), x.data_ptr(), out.data_ptr(),
                                      N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
                                      count_include_pad, divisor_override or 0, channels_last, device, stream)
    return out


def avg_pool2d_backward(grad, height, width, kernel, stride, padding, ceil_mode, count_include_pad,
                        divisor_override, channels_last):
    grad, gx, sizes = op.buffers(grad, height, width, channels_last)
    if sizes is not None:
        N, C, OH, OW, H, W = sizes
        (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
        device, stream = launch_args(grad)
        _native.C.avg_pool2d_bwd_cuda(_native.dtype_code(grad.dtype), grad.data_ptr(), gx.data_ptr(),
                                      N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
                                      count_include_pad, divisor_override or 0, channels_last, device, stream)
    return gx


def adaptive_avg_pool2d(x, output_height, output_width, channels_last):
    x, out, sizes = op.buffers(x, output_height, output_width, channels_last)
    if sizes is not None:
        N, C, H, W, OH, OW = sizes
        device, stream = launch_args(x)
        _native.C.adaptive_avg_pool2d_fwd_cuda(_native.dtype_code(x.dtype), x.data_ptr(), out.data_ptr(),
                                               N, C, H, W, OH, OW, channels_last, device, stream)
    return out


def adaptive_avg_pool2d_backward(grad, height, width, channels_last):
    grad, gx, sizes = op.adaptive_avg_pool2d_backward_buffers(grad, height, width, channels_last)
    if sizes is not None:
        N, C, OH, OW, H, W = sizes
        device, stream = launch_args(grad)
        _native.C.adaptive_avg_pool2d_bwd_cuda(_native.dtype_code(grad.dtype), grad.data_ptr(), gx.data_ptr(),
                                               N, C, H, W, OH, OW, channels_last, device, stream)
    return gx


# pyimgcls.explain: the launchers (pyimgcls._C) each entry point calls; the kernel variant is chosen
# inside the launcher.
LAUNCHERS = {
    "max_pool2d": "max_pool2d_fwd_cuda",
    "max_pool2d_backward": "max_pool2d_bwd_cuda",
    "avg_pool2d": "avg_pool2d_fwd_cuda",
    "avg_pool2d_backward": "avg_pool2d_bwd_cuda",
    "adaptive_avg_pool2d": "adaptive_avg_pool2d_fwd_cuda",
    "adaptive_avg_pool2d_backward": "adaptive_avg_pool2d_bwd_cuda",
}
