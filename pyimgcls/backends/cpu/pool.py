"""Pooling family on our C++ CPU kernels (csrc/cpu/pool.cpp).

Entry points (same signature in every backend folder): the arguments of the custom ops
``pyimgcls::<entry point>`` less ``backend``. ``x`` and ``grad`` are 4-D [N, C, *, *] with any
strides; kernel, stride, padding and dilation are pairs; every result is allocated by the entry point
with the dtype and device of ``x`` / ``grad`` in the memory format ``channels_last`` names
(channels_last or contiguous). OH, OW follow ``pyimgcls.ops.pool.pool_output_size``.
    max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, channels_last, with_indices)
        -> (out, indices)       out [N, C, OH, OW]; indices int64 flat h*W+w within each (n, c)
                                plane, shaped and laid out as out, or an empty int64 [0] tensor when
                                not with_indices (then not computed)
    max_pool2d_backward(grad, indices, height, width, kernel, stride, padding, dilation, channels_last)
        -> grad_input           [N, C, height, width]: grad_input[n, c, indices[n, c]] += grad[n, c]
    avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, channels_last)
        -> out                  [N, C, OH, OW]; divisor_override None or non-zero
    avg_pool2d_backward(grad, height, width, kernel, stride, padding, ceil_mode, count_include_pad,
                        divisor_override, channels_last)
        -> grad_input           [N, C, height, width]
    adaptive_avg_pool2d(x, output_height, output_width, channels_last) -> out [N, C, output_height, output_width]
    adaptive_avg_pool2d_backward(grad, height, width, channels_last) -> grad_input [N, C, height, width]
The cpu, cuda and triton modules share the memory formats, allocations and early returns on empty
results (``pyimgcls.ops.pool``'s ``*buffers`` helpers) and only add the launch; the torch module
wraps ``pyimgcls.ops.reference``.
bfloat16 tensors go to the kernels as they are (csrc/cpu/pool.cpp stages them through float32 blocks
in cache: the float32 kernels' results, rounded once); float16 inputs are computed in float32 and
returned in their dtype (docs/architecture.md, "Dtypes").
The launchers get the sizes as separate arguments, not ``*sizes``: a star call into the pybind11
module costs 0.1-0.2 us more, which counts for small layers."""
from __future__ import annotations

import functools

import torch

from ... import _native
from . import in_float32
from ...ops import pool as op


def _float16_in_float32(fn):
    """in_float32 for float16 only: the kernels take bfloat16 themselves."""
    upcast = in_float32(fn)

    @functools.wraps(fn)
    def run(first, *args):
        return upcast(first, *args) if first.dtype == torch.float16 else fn(first, *args)

    return run


@_float16_in_float32
def max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, channels_last, with_indices):
    x, out, idx, sizes = op.max_pool2d_buffers(x, kernel, stride, padding, dilation, ceil_mode, channels_last,
                                               with_indices)
    if sizes is not None:
        N, C, H, W, OH, OW = sizes
        (KH, KW), (SH, SW), (PH, PW), (DH, DW) = kernel, stride, padding, dilation
        _native.C.max_pool2d_fwd_cpu(_native.dtype_code(x.dtype), x.data_ptr(), out.data_ptr(),
                                     idx.data_ptr() if with_indices else 0, N, C, H, W, OH, OW, KH, KW, SH, SW,
                                     PH, PW, DH, DW, channels_last)
    return out, idx


@_float16_in_float32
def max_pool2d_backward(grad, indices, height, width, kernel, stride, padding, dilation, channels_last):
    grad, indices, gx, sizes = op.max_pool2d_backward_buffers(grad, indices, height, width, channels_last)
    if sizes is not None:
        N, C, OH, OW, H, W = sizes
        (KH, KW), (SH, SW), (PH, PW), (DH, DW) = kernel, stride, padding, dilation
        _native.C.max_pool2d_bwd_cpu(_native.dtype_code(grad.dtype), grad.data_ptr(), indices.data_ptr(),
                                     gx.data_ptr(), N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW,
                                     channels_last)
    return gx


@_float16_in_float32
def avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, channels_last):
    x, out, sizes = op.avg_pool2d_buffers(x, kernel, stride, padding, ceil_mode, channels_last)
    if sizes is not None:
        N, C, H, W, OH, OW = sizes
        (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
        _native.C.avg_pool2d_fwd_cpu(_native.dtype_code(x.dtype), x.data_ptr(), out.data_ptr(),
                                     N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
                                     count_include_pad, divisor_override or 0, channels_last)
    return out


@_float16_in_float32
def avg_pool2d_backward(grad, height, width, kernel, stride, padding, ceil_mode, count_include_pad,
                        divisor_override, channels_last):
    grad, gx, sizes = op.buffers(grad, height, width, channels_last)
    if sizes is not None:
        N, C, OH, OW, H, W = sizes
        (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
        _native.C.avg_pool2d_bwd_cpu(_native.dtype_code(grad.dtype), grad.data_ptr(), gx.data_ptr(),
                                     N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
                                     count_include_pad, divisor_override or 0, channels_last)
    return gx


@_float16_in_float32
def adaptive_avg_pool2d(x, output_height, output_width, channels_last):
    x, out, sizes = op.buffers(x, output_height, output_width, channels_last)
    if sizes is not None:
        N, C, H, W, OH, OW = sizes
        _native.C.adaptive_avg_pool2d_fwd_cpu(_native.dtype_code(x.dtype), x.data_ptr(), out.data_ptr(),
                                              N, C, H, W, OH, OW, channels_last)
    return out


@_float16_in_float32
def adaptive_avg_pool2d_backward(grad, height, width, channels_last):
    grad, gx, sizes = op.adaptive_avg_pool2d_backward_buffers(grad, height, width, channels_last)
    if sizes is not None:
        N, C, OH, OW, H, W = sizes
        _native.C.adaptive_avg_pool2d_bwd_cpu(_native.dtype_code(grad.dtype), grad.data_ptr(), gx.data_ptr(),
                                              N, C, H, W, OH, OW, channels_last)
    return gx
