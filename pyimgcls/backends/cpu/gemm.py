"""GEMM family on our C++ CPU kernels (csrc/cpu/gemm.cpp).

Entry points (same signature in every backend folder):
    gemm(a, b, bias, act) -> out                 act(a @ b + bias); a [M, K], b [K, N] any strides;
                                                 out [M, N] contiguous
    bias_act_bwd(grad, out, act, has_bias) -> (grad_pre, grad_bias | None)
                                                 grad [M, N] contiguous; grad_pre = grad * act'(out),
                                                 grad_bias = grad_pre.sum(0)
Outputs are allocated by ops/gemm.py (gemm_output, bias_act_outputs) for every backend. float16
inputs are computed in float32 and returned in their dtype (docs/architecture.md, "Dtypes"); bfloat16
goes to the bf16 GEMM as it is (bf16 operands, float32 accumulation, bias and activation on the float32
sum, one rounding to bf16: csrc/cpu/gemm.cpp), as do bfloat16 convolutions (backends/cpu/conv.py); the
epilogue backward (bias_act_bwd, act_*) still runs bfloat16 in float32."""
from __future__ import annotations

import functools

import torch

from ... import _native
from . import in_float32
from ...ops import gemm as g
from ...ops.activation import act_dense_output

# Low-precision dtypes these kernels compute natively (ops/conv.py reads the conv module's copy to keep
# a bfloat16 backward in bfloat16).
NATIVE_LOW_PRECISION = (torch.bfloat16,)


def bf16_native(fn):
    """in_float32 for float16; a bfloat16 first argument goes to ``fn`` as it is (its kernel takes bf16)."""
    upcast = in_float32(fn)

    @functools.wraps(fn)
    def run(first, *args):
        return fn(first, *args) if first.dtype == torch.bfloat16 else upcast(first, *args)

    return run


@bf16_native
def gemm(a, b, bias, act):
    out, work = g.gemm_output(a, b)
    if work:
        M, K = a.shape
        _native.C.gemm_cpu(
            _native.dtype_code(a.dtype), a.data_ptr(), a.stride(0), a.stride(1),
            b.data_ptr(), b.stride(0), b.stride(1), bias.data_ptr() if bias is not None else 0,
            out.data_ptr(), out.stride(0), out.stride(1), M, b.shape[1], K, act)
    return out


@in_float32
def bias_act_bwd(grad, out, act, has_bias):
    gp, gb, work = g.bias_act_outputs(grad, act, has_bias)
    if work:
        M, N = grad.shape
        _native.C.bias_act_bwd_cpu(_native.dtype_code(grad.dtype), grad.data_ptr(),
                                   out.data_ptr() if out is not None else 0, gp.data_ptr(),
                                   gb.data_ptr() if gb is not None else 0, M, N, act)
    return gp, gb


@in_float32
def act_fwd(x, act):
    y = act_dense_output(x)
    if x.numel():
        _native.C.act_fwd_cpu(_native.dtype_code(x.dtype), x.data_ptr(), y.data_ptr(), x.numel(), act)
    return y


@in_float32
def act_bwd(grad, saved, act):
    gx = act_dense_output(saved)
    if grad.numel():
        _native.C.act_bwd_cpu(_native.dtype_code(grad.dtype), grad.data_ptr(), saved.data_ptr(), gx.data_ptr(),
                              grad.numel(), act)
    return gx
