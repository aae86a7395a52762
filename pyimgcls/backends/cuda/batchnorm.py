"""BatchNorm family on our CUDA C++ kernels (csrc/cuda/batchnorm.cu). Entry points and their
contracts: pyimgcls/backends/cpu/batchnorm.py. Scratch for the chunked statistics is allocated here."""
from __future__ import annotations

import torch

from ... import _native
from ...ops import batchnorm as bn
from . import launch_args, sm_count

_ptr = bn._ptr


def batch_norm_fwd(x, weight, bias, residual, mean_in, var_in, training, eps, act, channels_last):
    x, residual, cl, (N, C, S), out, mean, var, invstd = bn.fwd_outputs(x, residual, mean_in, var_in, training,
                                                                         channels_last)
    w, b = bn._vec(weight, mean.dtype), bn._vec(bias, mean.dtype)
    code = _native.dtype_code(x.dtype)
    dev, stream = launch_args(x)
    if training:
        chunks = _native.C.batch_norm_stats_chunks_cuda(N, C, S, cl, sm_count(dev))
        scratch = torch.empty(2 * chunks * C, dtype=torch.float32, device=x.device)
        _native.C.batch_norm_stats_cuda(code, x.data_ptr(), mean.data_ptr(), var.data_ptr(), scratch.data_ptr(),
                                        chunks, N, C, S, cl, dev, stream)
    scale = torch.empty(C, dtype=torch.float32, device=x.device)  # w * invstd
    _native.C.batch_norm_fwd_cuda(code, x.data_ptr(), mean.data_ptr(), var.data_ptr(), _ptr(w), _ptr(b),
                                  _ptr(residual), out.data_ptr(), invstd.data_ptr(), scale.data_ptr(), N, C, S, cl,
                                  eps, act, dev, stream)
    return bn.fwd_result(out, mean, invstd, var, training)


def update_stats(running_mean, running_var, mean, var, momentum, count):
    rm, rv = bn.stats_work_buffers(running_mean, running_var, mean.dtype)
    _native.C.batch_norm_update_stats_cuda(_native.dtype_code(mean.dtype), _ptr(rm), _ptr(rv), mean.data_ptr(),
                                           var.data_ptr(), mean.shape[0], momentum, count, *launch_args(mean))
    bn.write_back(running_mean, running_var, rm, rv)


def batch_norm_bwd(grad, x, weight, out, mean, invstd, training, act, channels_last, has_residual, needs_input,
                   needs_weight, needs_bias):
    grad, x, out, cl, (N, C, S), gx, gw, gb, gp = bn.bwd_outputs(grad, x, out, mean, channels_last, has_residual,
                                                                 act, needs_input, needs_weight, needs_bias)
    w = bn._vec(weight, mean.dtype)
    dev, stream = launch_args(x)
    chunks = _native.C.batch_norm_stats_chunks_cuda(N, C, S, cl, sm_count(dev))
    # level-1 partials (2 * chunks * C) + grad_input coefficients (3 * C)
    scratch = torch.empty(2 * chunks * C + 3 * C, dtype=torch.float32, device=x.device)
    _native.C.batch_norm_bwd_cuda(_native.dtype_code(x.dtype), grad.data_ptr(), _ptr(out), x.data_ptr(), _ptr(w),
                                  mean.data_ptr(), invstd.data_ptr(), _ptr(gx), _ptr(gw), _ptr(gb), _ptr(gp),
                                  scratch.data_ptr(), chunks, N, C, S, cl, training, act, dev, stream)
    return bn.bwd_result(x, mean, gx, gw, gb, gp)


# pyimgcls.explain: the launchers (pyimgcls._C) each entry point calls; the kernel variant is chosen
# inside the launcher.
LAUNCHERS = {
    "batch_norm_fwd": "batch_norm_stats_cuda (training) + batch_norm_fwd_cuda",
    "update_stats": "batch_norm_update_stats_cuda",
    "batch_norm_bwd": "batch_norm_bwd_cuda",
}
