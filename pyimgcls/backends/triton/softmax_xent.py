"""Softmax-cross-entropy family on our Triton kernels (triton_kernels/softmax_xent.py). Entry points and
their contracts: pyimgcls/backends/cpu/softmax_xent.py."""
from __future__ import annotations

from ...ops import _alloc
from ...ops.softmax_xent import _MEAN, _NONE, _acc_dtype, _backward_output, _kernel_outputs
from . import on_tensor_device


@on_tensor_device
def forward(x, target, weight, ignore_index, reduction, eps, need_grad):
    from ...triton_kernels import softmax_xent as tk
    loss, grad, denom = _kernel_outputs(x, target, ignore_index, reduction, need_grad)
    tk.softmax_xent_fwd(x, target, weight, ignore_index, reduction, eps, loss, grad if need_grad else None,
                        denom if reduction == _MEAN else None)
    return loss, grad, denom


@on_tensor_device
def prob_forward(x, target, weight, reduction, eps, need_grad):
    from ...triton_kernels import softmax_xent as tk
    N, C = x.shape
    loss = _alloc.empty((N,) if reduction == _NONE else (), x.dtype, x.device)
    grad = _alloc.empty((N, C), x.dtype, x.device) if need_grad else x.new_empty((0,))
    acc = _acc_dtype(x.dtype)
    denom = _alloc.empty((), acc, x.device) if reduction == _MEAN else x.new_empty((0,), dtype=acc)
    tk.softmax_xent_prob_fwd(x, target, weight, reduction, eps, loss, grad if need_grad else None,
                             denom if reduction == _MEAN else None)
    return loss, grad, denom


@on_tensor_device
def backward(grad_loss, saved, target, denom, ignore_index, reduction, in_place):
    from ...triton_kernels import softmax_xent as tk
    out, work = _backward_output(saved)
    if work:
        tk.softmax_xent_bwd(saved, target, grad_loss, denom if reduction == _MEAN else None, ignore_index,
                            reduction == _NONE, out)
    return out


# pyimgcls.explain: the triton_kernels host function each entry point calls (it picks the kernel).
LAUNCHERS = {
    "forward": "softmax_xent_fwd",
    "prob_forward": "softmax_xent_prob_fwd",
    "backward": "softmax_xent_bwd",
}
