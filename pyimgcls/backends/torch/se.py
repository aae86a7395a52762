"""Squeeze-and-excitation family in plain PyTorch (the yardstick). Entry points and their contracts:
pyimgcls/backends/cpu/se.py."""
from __future__ import annotations

from ...ops import reference
from ...ops import se as op


def se_fwd(x, w1, b1, w2, b2, act, gate, channels_last):
    return reference.squeeze_excitation(x, w1, b1, w2, b2, act, gate, channels_last)


def se_bwd(grad, x, w1, w2, pooled, hidden, z, act, gate, channels_last, needs_input, needs_w1, needs_b1, needs_w2,
           needs_b2):
    return reference.squeeze_excitation_backward(grad, x, w1, w2, pooled, hidden, z, act, gate, channels_last,
                                                 needs_input, needs_w1, needs_b1, needs_w2, needs_b2)


def drop_path(x, scale, residual, channels_last):
    fmt = op._fmt(channels_last)
    return reference.drop_path(x, scale, residual).contiguous(memory_format=fmt)
