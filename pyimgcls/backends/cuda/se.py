"""Squeeze-and-excitation family on our CUDA C++ kernels (csrc/cuda/se.cu). Entry points and their
contracts: pyimgcls/backends/cpu/se.py. The backward's scratch (gz, gpooled, gh) is allocated here."""
from __future__ import annotations

import torch

from ... import _native
from ...ops import se as op
from . import launch_args

_ptr = op.ptr


def se_fwd(x, w1, b1, w2, b2, act, gate, channels_last):
    x, (N, C, HW, R), y, pooled, hidden, z = op.se_fwd_outputs(x, w1, channels_last)
    _native.C.se_fwd_cuda(_native.dtype_code(x.dtype), x.data_ptr(), w1.data_ptr(), _ptr(b1), w2.data_ptr(), _ptr(b2),
                          y.data_ptr(), pooled.data_ptr(), hidden.data_ptr(), z.data_ptr(), N, C, HW, R,
                          channels_last, act, gate, *launch_args(x))
    return y, pooled, hidden, z


def se_bwd(grad, x, w1, w2, pooled, hidden, z, act, gate, channels_last, needs_input, needs_w1, needs_b1, needs_w2,
           needs_b2):
    grad, x, (N, C, HW, R), gx, gw1, gb1, gw2, gb2 = op.se_bwd_outputs(grad, x, w1, channels_last, needs_input,
                                                                      needs_w1, needs_b1, needs_w2, needs_b2)
    scratch = torch.empty(2 * N * C + N * R, dtype=torch.float32, device=x.device)  # gz, gpooled, gh
    _native.C.se_bwd_cuda(_native.dtype_code(x.dtype), grad.data_ptr(), x.data_ptr(), w1.data_ptr(), w2.data_ptr(),
                          pooled.data_ptr(), hidden.data_ptr(), z.data_ptr(), _ptr(gx), _ptr(gw1), _ptr(gb1),
                          _ptr(gw2), _ptr(gb2), scratch.data_ptr(), N, C, HW, R, channels_last, act, gate,
                          *launch_args(x))
    return op.se_bwd_result(x, w1, gx, gw1, gb1, gw2, gb2)


def drop_path(x, scale, residual, channels_last):
    x, residual, (N, M), out = op.drop_path_outputs(x, scale, residual, channels_last)
    if out.numel():
        scale = scale.float().contiguous()  # kept alive across the launch
        _native.C.drop_path_cuda(_native.dtype_code(x.dtype), x.data_ptr(), scale.data_ptr(),
                                 _ptr(residual), out.data_ptr(), N, M, *launch_args(x))
    return out


# pyimgcls.explain: the launchers (pyimgcls._C) each entry point calls; the kernels are chosen inside.
LAUNCHERS = {
    "se_fwd": "se_fwd_cuda (se_reduce + 2x se_fc + se_apply)",
    "se_bwd": "se_bwd_cuda (se_reduce + se_fc + 2x se_wgrad + se_fc + se_apply)",
    "drop_path": "drop_path_cuda",
}
