"""GEMM family on our Triton kernels (triton_kernels/gemm.py). Entry points and their contracts:
pyimgcls/backends/cpu/gemm.py."""
from __future__ import annotations

from ...ops import gemm as g
from ...ops.activation import act_dense_output
from . import on_tensor_device


@on_tensor_device
def gemm(a, b, bias, act):
    from ...triton_kernels import gemm as tk
    out, work = g.gemm_output(a, b)
    if work:
        tk.gemm(a, b, bias, act, out)
    return out


@on_tensor_device
def bias_act_bwd(grad, out, act, has_bias):
    from ...triton_kernels import gemm as tk
    gp, gb, work = g.bias_act_outputs(grad, act, has_bias)
    if work:
        tk.bias_act_bwd(grad, out, act, gp, gb)
    return gp, gb


@on_tensor_device
def act_fwd(x, act):
    from ...triton_kernels import gemm as tk
    y = act_dense_output(x)
    tk.act_fwd(x, act, y)
    return y


@on_tensor_device
def act_bwd(grad, saved, act):
    from ...triton_kernels import gemm as tk
    gx = act_dense_output(saved)
    tk.act_bwd(grad, saved, act, gx)
    return gx


def plan_gemm(a, b, bias, act):
    """pyimgcls.explain: the one Triton GEMM kernel (tl.dot main loop)."""
    from ...triton_kernels import gemm as tk
    from . import kernel_plan
    return kernel_plan(tk._gemm_fwd_kernel, a.dtype, dot=True)


# pyimgcls.explain: the triton_kernels host function each entry point calls (it picks the kernel).
LAUNCHERS = {
    "bias_act_bwd": "bias_act_bwd",
}
