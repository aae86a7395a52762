"""Squeeze-and-excitation family on our Triton kernels (triton_kernels/se.py). Entry points and their
contracts: pyimgcls/backends/cpu/se.py."""
from __future__ import annotations

from ...ops import se as op
from . import on_tensor_device


@on_tensor_device
def se_fwd(x, w1, b1, w2, b2, act, gate, channels_last):
    from ...triton_kernels import se as tk
    x, (N, C, HW, R), y, pooled, hidden, z = op.se_fwd_outputs(x, w1, channels_last)
    tk.se_fwd(x, w1, b1, w2, b2, y, pooled, hidden, z, N, C, HW, R, channels_last, act, gate)
    return y, pooled, hidden, z


@on_tensor_device
def se_bwd(grad, x, w1, w2, pooled, hidden, z, act, gate, channels_last, needs_input, needs_w1, needs_b1, needs_w2,
           needs_b2):
    from ...triton_kernels import se as tk
    grad, x, (N, C, HW, R), gx, gw1, gb1, gw2, gb2 = op.se_bwd_outputs(grad, x, w1, channels_last, needs_input,
                                                                      needs_w1, needs_b1, needs_w2, needs_b2)
    tk.se_bwd(grad, x, w1, w2, pooled, hidden, z, gx, gw1, gb1, gw2, gb2, N, C, HW, R, channels_last, act, gate)
    return op.se_bwd_result(x, w1, gx, gw1, gb1, gw2, gb2)


@on_tensor_device
def drop_path(x, scale, residual, channels_last):
    from ...triton_kernels import se as tk
    x, residual, (N, M), out = op.drop_path_outputs(x, scale, residual, channels_last)
    if out.numel():
        tk.drop_path(x, scale, residual, out, N, M)
    return out


# pyimgcls.explain: the triton_kernels host function each entry point calls (it picks the kernels).
LAUNCHERS = {
    "se_fwd": "se_fwd (_se_reduce + 2x _se_fc + _se_apply)",
    "se_bwd": "se_bwd (_se_reduce + _se_fc + _se_wgrad + _se_fc + _se_apply)",
    "drop_path": "drop_path",
}
