"""Squeeze-and-excitation family on our C++ CPU kernels (csrc/cpu/se.cpp).

Entry points (same signature in every backend folder; the ops are described in pyimgcls/ops/se.py):
    se_fwd(x, w1, b1, w2, b2, act, gate, channels_last) -> (y, pooled, hidden, z)
        x [N, C, H, W]; w1 [R, C], b1 [R] | None, w2 [C, R], b2 [C] | None in the accumulation dtype;
        act 0 relu / 1 silu, gate 0 sigmoid / 1 hardsigmoid; y in x's dtype and the kernels' layout
        (channels_last or contiguous), pooled [N, C], hidden [N, R], z [N, C] in the accumulation dtype
    se_bwd(grad, x, w1, w2, pooled, hidden, z, act, gate, channels_last, needs_input, needs_w1, needs_b1,
           needs_w2, needs_b2) -> (grad_input, gw1, gb1, gw2, gb2)       empty when not asked
    drop_path(x, scale, residual, channels_last) -> out
        out[n] = x[n] * scale[n] (+ residual[n]), x viewed as [len(scale), M] in the kernels' layout;
        scale in the accumulation dtype
Layouts and allocation are shared by every backend (ops/se.py: se_fwd_outputs, se_bwd_outputs,
drop_path_outputs); float16/bfloat16 inputs are computed in float32 and returned in their dtype
(pooled / hidden / z and the weight gradients are float32 anyway)."""
from __future__ import annotations

import torch

from ... import _native
from ...ops import se as op

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_ptr = op.ptr


def se_fwd(x, w1, b1, w2, b2, act, gate, channels_last):
    if x.dtype in _LOW_PRECISION:
        y, pooled, hidden, z = se_fwd(x.float(), w1, b1, w2, b2, act, gate, channels_last)
        return y.to(x.dtype), pooled, hidden, z
    x, (N, C, HW, R), y, pooled, hidden, z = op.se_fwd_outputs(x, w1, channels_last)
    _native.C.se_fwd_cpu(_native.dtype_code(x.dtype), x.data_ptr(), w1.data_ptr(), _ptr(b1), w2.data_ptr(), _ptr(b2),
                         y.data_ptr(), pooled.data_ptr(), hidden.data_ptr(), z.data_ptr(), N, C, HW, R, channels_last,
                         act, gate)
    return y, pooled, hidden, z


def se_bwd(grad, x, w1, w2, pooled, hidden, z, act, gate, channels_last, needs_input, needs_w1, needs_b1, needs_w2,
           needs_b2):
    if x.dtype in _LOW_PRECISION:
        gx, gw1, gb1, gw2, gb2 = se_bwd(grad.float(), x.float(), w1, w2, pooled, hidden, z, act, gate, channels_last,
                                        needs_input, needs_w1, needs_b1, needs_w2, needs_b2)
        return gx.to(x.dtype), gw1, gb1, gw2, gb2
    grad, x, (N, C, HW, R), gx, gw1, gb1, gw2, gb2 = op.se_bwd_outputs(grad, x, w1, channels_last, needs_input,
                                                                      needs_w1, needs_b1, needs_w2, needs_b2)
    _native.C.se_bwd_cpu(_native.dtype_code(x.dtype), grad.data_ptr(), x.data_ptr(), w1.data_ptr(), w2.data_ptr(),
                         pooled.data_ptr(), hidden.data_ptr(), z.data_ptr(), _ptr(gx), _ptr(gw1), _ptr(gb1),
                         _ptr(gw2), _ptr(gb2), N, C, HW, R, channels_last, act, gate)
    return op.se_bwd_result(x, w1, gx, gw1, gb1, gw2, gb2)


def drop_path(x, scale, residual, channels_last):
    if x.dtype in _LOW_PRECISION:
        return drop_path(x.float(), scale, None if residual is None else residual.float(), channels_last).to(x.dtype)
    x, residual, (N, M), out = op.drop_path_outputs(x, scale, residual, channels_last)
    if out.numel():
        scale = scale.to(x.dtype).contiguous()  # kept alive across the call
        _native.C.drop_path_cpu(_native.dtype_code(x.dtype), x.data_ptr(), scale.data_ptr(),
                                _ptr(residual), out.data_ptr(), N, M)
    return out
