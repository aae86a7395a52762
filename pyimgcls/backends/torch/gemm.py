"""GEMM family in plain PyTorch (the yardstick). Entry points and their contracts:
pyimgcls/backends/cpu/gemm.py."""
from __future__ import annotations

from ...ops import reference


def gemm(a, b, bias, act):
    return reference.gemm(a, b, bias, act)


def bias_act_bwd(grad, out, act, has_bias):
    gp = reference.activation_backward(grad, out, act)
    return gp, (gp.sum(0) if has_bias else None)


def act_fwd(x, act):
    return reference.activation(x, act)


def act_bwd(grad, saved, act):
    return reference.activation_backward(grad, saved, act)
