"""Convolution family on our CUDA C++ kernels (csrc/cuda/conv*.cu). Entry points and their contracts:
pyimgcls/backends/cpu/conv.py. Launchers take raw pointers, strides, the geometry list, the device
index and the stream; split-reduction scratch is allocated here (PyTorch's caching allocator)."""
from __future__ import annotations

import torch

from ... import _native
from ...ops.conv import (bias_act_outputs, dgrad_output, fwd_outputs, pixel_strides, ptr, strides,
                         wgrad_output)
from . import launch_args, sm_count

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def conv2d(x, w, bias, res, stride, padding, dilation, groups, act):
    out, res, geom = fwd_outputs(x, w, res, stride, padding, dilation, groups)
    if geom is None:
        return out
    if x.dtype in _LOW_PRECISION and geom.groups != geom.C:
        # NCHW policy: the tensor-core fast path gathers 8 channels of one tap per 16-byte cp.async, so
        # it needs channels_last activations. NCHW input is converted here, explicitly (one extra read
        # + write of the input; benchmarks/bench_conv.py measures the NCHW rows with it included), and
        # the weight is laid out as [O, KH, KW, C/groups] (small). The output is still written in the
        # layout PyTorch returns for the call. Depthwise and fp32 kernels read any layout in place.
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
    _native.C.conv2d_fwd_cuda(_native.dtype_code(x.dtype), geom, x.data_ptr(), strides(x), w.data_ptr(),
                              strides(w), ptr(bias), ptr(res), strides(res), out.data_ptr(), strides(out), act,
                              *launch_args(x))
    return out


def bias_act_bwd(grad, out, act, has_bias, fmt):
    gp, gb = bias_act_outputs(grad, out, act, has_bias, fmt)
    if grad.numel() == 0:
        return gp, gb
    N, O, OH, OW = grad.shape
    rows = N * OH * OW
    # row splits so that ~4 blocks per SM run even for few channels; >= 256 rows each
    splits = max(1, min(-(-rows // 256), -(-4 * sm_count(grad.device.index) // -(-O // 32)), 65535))
    scratch = torch.empty(splits * O, dtype=torch.float32, device=grad.device) if gb is not None else None
    _native.C.conv2d_bias_act_bwd_cuda(_native.dtype_code(grad.dtype), N, O, OH * OW, grad.data_ptr(),
                                       pixel_strides(grad), ptr(out), pixel_strides(out), gp.data_ptr(), ptr(gb),
                                       ptr(scratch), splits, act, *launch_args(grad))
    return gp, gb


def dgrad(gp, x, w, stride, padding, dilation, groups):
    dx, geom = dgrad_output(gp, x, w, stride, padding, dilation, groups)
    if geom is None:
        return dx
    if gp.dtype in _LOW_PRECISION and geom.groups != geom.C:
        # dgrad's GEMM-K axis is (tap, out channel): channels_last gradient and an out-channel-contiguous
        # weight view (a weight-sized copy) make every K chunk a 16-byte load. The depthwise kernel
        # (groups == C) reads any layout in place, as in the forward.
        gp = gp.contiguous(memory_format=torch.channels_last)
        w = w.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)
    _native.C.conv2d_bwd_data_cuda(_native.dtype_code(gp.dtype), geom, gp.data_ptr(), strides(gp), w.data_ptr(),
                                   strides(w), dx.data_ptr(), strides(dx), *launch_args(gp))
    return dx


def wgrad(gp, x, w, stride, padding, dilation, groups):
    dw, geom = wgrad_output(gp, x, w, stride, padding, dilation, groups)
    if geom is None:
        return dw
    code = _native.dtype_code(x.dtype)
    splits = _native.C.conv2d_wgrad_splits_cuda(code, geom, sm_count(x.device.index))
    # fp32 partial sums per K split, reduced in split order by the kernel (deterministic, no atomics)
    scratch = torch.empty(splits * dw.numel(), dtype=torch.float32, device=x.device)
    _native.C.conv2d_bwd_weight_cuda(code, geom, gp.data_ptr(), strides(gp), x.data_ptr(), strides(x),
                                     dw.data_ptr(), scratch.data_ptr(), splits, *launch_args(x))
    return dw
