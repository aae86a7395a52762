"""GEMM family on our Triton kernels (triton_kernels/gemm.py). Entry points and their contracts:
pyimgcls/backends/cpu/gemm.py."""
from __future__ import annotations

from ...ops import _alloc


def gemm(a, b, bias, act):
    from ...triton_kernels import gemm as tk
    M, N = a.shape[0], b.shape[1]
    out = _alloc.empty((M, N), a.dtype, a.device)
    if M == 0 or N == 0:
        return out
    tk.gemm(a, b, bias, act, out)
    return out


def bias_act_bwd(grad, out, act, has_bias):
    from ...triton_kernels import gemm as tk
    M, N = grad.shape
    gp = _alloc.empty((M, N), grad.dtype, grad.device) if act != 0 else grad
    gb = _alloc.empty((N,), grad.dtype, grad.device) if has_bias else None
    if N == 0:
        return gp, gb
    tk.bias_act_bwd(grad, out, act, gp, gb)
    return gp, gb
