"""GEMM family on our Triton kernels (triton_kernels/gemm.py). Entry points and their contracts:
pyimgcls/backends/cpu/gemm.py."""
from __future__ import annotations

from ...ops import gemm as g
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


def plan_gemm(a, b, bias, act):
    """pyimgcls.explain: the one Triton GEMM kernel (tl.dot main loop)."""
    from ...triton_kernels import gemm as tk
    from . import kernel_plan
    return kernel_plan(tk._gemm_fwd_kernel, a.dtype, dot=True)


# pyimgcls.explain: the triton_kernels host function each entry point calls (it picks the kernel).
LAUNCHERS = {
    "bias_act_bwd": "bias_act_bwd",
}
