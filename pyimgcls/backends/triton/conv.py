"""Convolution family on our Triton kernels (triton_kernels/conv.py). Entry points and their contracts:
pyimgcls/backends/cpu/conv.py."""
from __future__ import annotations

from ...ops.conv import bias_act_outputs, dgrad_output, fwd_outputs, wgrad_output
from . import on_tensor_device


@on_tensor_device
def conv2d(x, w, bias, res, stride, padding, dilation, groups, act):
    from ...triton_kernels import conv as tk
    out, res, geom = fwd_outputs(x, w, res, stride, padding, dilation, groups)
    if geom is None:
        return out
    tk.conv2d_fwd(x, w, bias, res, out, stride, padding, dilation, groups, act)
    return out


@on_tensor_device
def bias_act_bwd(grad, out, act, has_bias, fmt):
    from ...triton_kernels import conv as tk
    gp, gb = bias_act_outputs(grad, out, act, has_bias, fmt)
    if grad.numel() == 0:
        return gp, gb
    tk.conv2d_bias_act_bwd(grad, out, gp, gb, act)
    return gp, gb


@on_tensor_device
def dgrad(gp, x, w, stride, padding, dilation, groups):
    from ...triton_kernels import conv as tk
    dx, geom = dgrad_output(gp, x, w, stride, padding, dilation, groups)
    if geom is None:
        return dx
    tk.conv2d_bwd_data(gp, w, dx, stride, padding, dilation, groups)
    return dx


@on_tensor_device
def wgrad(gp, x, w, stride, padding, dilation, groups):
    from ...triton_kernels import conv as tk
    dw, geom = wgrad_output(gp, x, w, stride, padding, dilation, groups)
    if geom is None:
        return dw
    tk.conv2d_bwd_weight(gp, x, dw, stride, padding, dilation, groups)
    return dw


# pyimgcls.explain: the kernel each entry point would launch (triton_kernels/conv.py's own choice).
def _w_dims(w):
    O, Cg = w.shape[0], w.shape[1]
    return O, Cg


def plan_conv2d(x, w, bias, res, stride, padding, dilation, groups, act):
    from ...triton_kernels import conv as tk
    from . import kernel_plan
    O, Cg = _w_dims(w)
    k = tk.fwd_kernel(x.shape[1], O, Cg, groups)
    return kernel_plan(k, x.dtype, dot=k is not tk._conv2d_dw_fwd_kernel)


def plan_dgrad(gp, x, w, stride, padding, dilation, groups):
    from ...triton_kernels import conv as tk
    from . import kernel_plan
    O, Cg = _w_dims(w)
    k = tk.bwd_data_kernel(x.shape[1], Cg, groups)
    return kernel_plan(k, gp.dtype, dot=k is not tk._conv2d_depthwise_dgrad_kernel)


def plan_wgrad(gp, x, w, stride, padding, dilation, groups):
    from ...triton_kernels import conv as tk
    from . import kernel_plan
    O, Cg = _w_dims(w)
    k = tk.bwd_weight_kernel(x.shape[1], Cg, groups)
    return kernel_plan(k, gp.dtype, dot=k is not tk._conv2d_depthwise_wgrad_kernel)


# pyimgcls.explain: the triton_kernels host function each entry point calls (it picks the kernel).
LAUNCHERS = {
    "bias_act_bwd": "conv2d_bias_act_bwd",
}
