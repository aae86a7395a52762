"""BatchNorm family on our Triton kernels (triton_kernels/batchnorm.py). Entry points and their
contracts: pyimgcls/backends/cpu/batchnorm.py."""
from __future__ import annotations

from ...ops import batchnorm as bn
from . import on_tensor_device


@on_tensor_device
def batch_norm_fwd(x, weight, bias, residual, mean_in, var_in, training, eps, act, channels_last):
    from ...triton_kernels import batchnorm as tk
    x, residual, cl, (N, C, S), out, mean, var, invstd = bn.fwd_outputs(x, residual, mean_in, var_in, training,
                                                                         channels_last)
    w, b = bn._vec(weight, mean.dtype), bn._vec(bias, mean.dtype)
    if training:
        tk.batch_norm_stats(x, mean, var, N, C, S, cl)
    tk.batch_norm_fwd(x, mean, var, w, b, residual, out, invstd, N, C, S, cl, eps, act)
    return bn.fwd_result(out, mean, invstd, var, training)


@on_tensor_device
def update_stats(running_mean, running_var, mean, var, momentum, count):
    from ...triton_kernels import batchnorm as tk
    rm, rv = bn.stats_work_buffers(running_mean, running_var, mean.dtype)
    tk.batch_norm_update_stats(rm, rv, mean, var, momentum, count)
    bn.write_back(running_mean, running_var, rm, rv)


@on_tensor_device
def batch_norm_bwd(grad, x, weight, out, mean, invstd, training, act, channels_last, has_residual, needs_input,
                   needs_weight, needs_bias):
    from ...triton_kernels import batchnorm as tk
    grad, x, out, cl, (N, C, S), gx, gw, gb, gp = bn.bwd_outputs(grad, x, out, mean, channels_last, has_residual,
                                                                 act, needs_input, needs_weight, needs_bias)
    tk.batch_norm_bwd(grad, out, x, bn._vec(weight, mean.dtype), mean, invstd, gx, gw, gb, gp, N, C, S, cl, training,
                      act)
    return bn.bwd_result(x, mean, gx, gw, gb, gp)


# pyimgcls.explain: the triton_kernels host function each entry point calls (it picks the kernel).
LAUNCHERS = {
    "batch_norm_fwd": "batch_norm_stats (training) + batch_norm_fwd",
    "update_stats": "batch_norm_update_stats",
    "batch_norm_bwd": "batch_norm_bwd",
}
