"""BatchNorm family on our C++ CPU kernels (csrc/cpu/batchnorm.cpp).

Entry points (same signature in every backend folder; the op is described in
pyimgcls/ops/batchnorm.py):
    batch_norm_fwd(x, weight, bias, residual, mean_in, var_in, training, eps, act, channels_last)
        -> (out, save_mean, save_invstd, batch_var)     batch_var empty in eval
    update_stats(running_mean, running_var, mean, var, momentum, count) -> None    in place, count > 0
    batch_norm_bwd(grad, x, weight, out, mean, invstd, training, act, channels_last, has_residual,
                   needs_input, needs_weight, needs_bias) -> (gx, gw, gb, gr)     empty when not asked
Layouts and allocation are shared by every backend (ops/batchnorm.py: fwd_outputs, bwd_outputs);
bfloat16 activations (x, residual, out, grad, grad_input, grad_residual) are read and written as bfloat16 by
the kernels, with float32 per-channel vectors and sums (PyTorch's mixed batch_norm under autocast: output
and grad_input bfloat16, statistics and grad_weight / grad_bias float32); float16 inputs are computed
in float32 and returned in their dtype (docs/architecture.md, "Dtypes")."""
from __future__ import annotations

import torch

from ... import _native
from ...ops import batchnorm as bn

_UPCAST = (torch.float16,)  # bfloat16 runs natively
_ptr = bn._ptr


def _float(t):
    return None if t is None else t.float()


def batch_norm_fwd(x, weight, bias, residual, mean_in, var_in, training, eps, act, channels_last):
    if x.dtype in _UPCAST:
        out, m, i, v = batch_norm_fwd(x.float(), weight, bias, _float(residual), mean_in, var_in, training, eps, act,
                                      channels_last)
        return out.to(x.dtype), m, i, v
    x, residual, cl, (N, C, S), out, mean, var, invstd = bn.fwd_outputs(x, residual, mean_in, var_in, training,
                                                                         channels_last)
    w, b = bn._vec(weight, mean.dtype), bn._vec(bias, mean.dtype)
    code = _native.dtype_code(x.dtype)
    if training:
        _native.C.batch_norm_stats_cpu(code, x.data_ptr(), mean.data_ptr(), var.data_ptr(), N, C, S, cl)
    _native.C.batch_norm_fwd_cpu(code, x.data_ptr(), mean.data_ptr(), var.data_ptr(), _ptr(w), _ptr(b),
                                 _ptr(residual), out.data_ptr(), invstd.data_ptr(), N, C, S, cl, eps, act)
    return bn.fwd_result(out, mean, invstd, var, training)


def update_stats(running_mean, running_var, mean, var, momentum, count):
    rm, rv = bn.stats_work_buffers(running_mean, running_var, mean.dtype)
    _native.C.batch_norm_update_stats_cpu(_native.dtype_code(mean.dtype), _ptr(rm), _ptr(rv), mean.data_ptr(),
                                          var.data_ptr(), mean.shape[0], momentum, count)
    bn.write_back(running_mean, running_var, rm, rv)


def batch_norm_bwd(grad, x, weight, out, mean, invstd, training, act, channels_last, has_residual, needs_input,
                   needs_weight, needs_bias):
    if x.dtype in _UPCAST:
        gx, gw, gb, gr = batch_norm_bwd(grad.float(), x.float(), weight, _float(out), mean, invstd, training, act,
                                        channels_last, has_residual, needs_input, needs_weight, needs_bias)
        return gx.to(x.dtype), gw, gb, gr.to(x.dtype)
    grad, x, out, cl, (N, C, S), gx, gw, gb, gp = bn.bwd_outputs(grad, x, out, mean, channels_last, has_residual,
                                                                 act, needs_input, needs_weight, needs_bias)
    w = bn._vec(weight, mean.dtype)
    _native.C.batch_norm_bwd_cpu(_native.dtype_code(x.dtype), grad.data_ptr(), _ptr(out), x.data_ptr(), _ptr(w),
                                 mean.data_ptr(), invstd.data_ptr(), _ptr(gx), _ptr(gw), _ptr(gb), _ptr(gp), N, C, S,
                                 cl, training, act)
    return bn.bwd_result(x, mean, gx, gw, gb, gp)
