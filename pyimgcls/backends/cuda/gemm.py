"""GEMM family on our CUDA C++ kernels (csrc/cuda/gemm.cu). Entry points and their contracts:
pyimgcls/backends/cpu/gemm.py. Launchers take raw pointers, strides, the device index and stream."""
from __future__ import annotations

from ... import _native
from ...ops import _alloc


def gemm(a, b, bias, act):
    M, K = a.shape
    N = b.shape[1]
    out = _alloc.empty((M, N), a.dtype, a.device)
    if M == 0 or N == 0:
        return out
    _native.C.gemm_cuda(
        _native.dtype_code(a.dtype), a.data_ptr(), a.stride(0), a.stride(1),
        b.data_ptr(), b.stride(0), b.stride(1), bias.data_ptr() if bias is not None else 0,
        out.data_ptr(), out.stride(0), M, N, K, act, a.device.index, _native.cuda_stream(a))
    return out


def bias_act_bwd(grad, out, act, has_bias):
    M, N = grad.shape
    gp = _alloc.empty((M, N), grad.dtype, grad.device) if act != 0 else grad
    gb = _alloc.empty((N,), grad.dtype, grad.device) if has_bias else None
    if N == 0:
        return gp, gb
    _native.C.bias_act_bwd_cuda(_native.dtype_code(grad.dtype), grad.data_ptr(),
                                out.data_ptr() if out is not None else 0, gp.data_ptr(),
                                gb.data_ptr() if gb is not None else 0, M, N, act, grad.device.index,
                                _native.cuda_stream(grad))
    return gp, gb
