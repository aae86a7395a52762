"""GEMM family on our CUDA C++ kernels (csrc/cuda/gemm.cu). Entry points and their contracts:
pyimgcls/backends/cpu/gemm.py. Launchers take raw pointers, strides, the device index and stream."""
from __future__ import annotations

from ... import _native
from ...ops import gemm as g
from . import launch_args


def gemm(a, b, bias, act):
    out, work = g.gemm_output(a, b)
    if work:
        M, K = a.shape
        _native.C.gemm_cuda(
            _native.dtype_code(a.dtype), a.data_ptr(), a.stride(0), a.stride(1),
            b.data_ptr(), b.stride(0), b.stride(1), bias.data_ptr() if bias is not None else 0,
            out.data_ptr(), out.stride(0), M, b.shape[1], K, act, *launch_args(a))
    return out


def bias_act_bwd(grad, out, act, has_bias):
    gp, gb, work = g.bias_act_outputs(grad, act, has_bias)
    if work:
        M, N = grad.shape
        _native.C.bias_act_bwd_cuda(_native.dtype_code(grad.dtype), grad.data_ptr(),
                                    out.data_ptr() if out is not None else 0, gp.data_ptr(),
                                    gb.data_ptr() if gb is not None else 0, M, N, act, *launch_args(grad))
    return gp, gb
