"""BatchNorm family in plain PyTorch (the yardstick). Entry points and their contracts:
pyimgcls/backends/cpu/batchnorm.py."""
from __future__ import annotations

from ...ops import reference


def batch_norm_fwd(x, weight, bias, residual, mean_in, var_in, training, eps, act, channels_last):
    return reference.batch_norm(x, weight, bias, residual, mean_in, var_in, training, eps, act, channels_last)


def update_stats(running_mean, running_var, mean, var, momentum, count):
    reference.batch_norm_update_stats(running_mean, running_var, mean, var, momentum, count)


def batch_norm_bwd(grad, x, weight, out, mean, invstd, training, act, channels_last, has_residual, needs_input,
                   needs_weight, needs_bias):
    return reference.batch_norm_backward(grad, x, weight, out, mean, invstd, training, act, channels_last,
                                         has_residual, needs_input, needs_weight, needs_bias)
