"""Softmax-cross-entropy family on our Triton kernels (triton_kernels/softmax_xent.py). Entry points and
their contracts: pyimgcls/backends/cpu/softmax_xent.py."""
from __future__ import annotations

from ...errors import BackendError
from ...ops.softmax_xent import _MEAN, _NONE, _backward_output, _kernel_outputs


def forward(x, target, weight, ignore_index, reduction, eps, need_grad):
    from ...triton_kernels import softmax_xent as tk
    loss, grad, denom = _kernel_outputs(x, target, ignore_index, reduction, need_grad)
    tk.softmax_xent_fwd(x, target, weight, ignore_index, reduction, eps, loss, grad if need_grad else None,
                        denom if reduction == _MEAN else None)
    return loss, grad, denom


def prob_forward(x, target, weight, reduction, eps, need_grad):
    raise BackendError("softmax_cross_entropy: backend 'triton' has no kernel for class-probability targets yet; "
                       "use backend 'cpu' or 'torch' for them")


def backward(grad_loss, saved, target, denom, ignore_index, reduction, in_place):
    from ...triton_kernels import softmax_xent as tk
    out, work = _backward_output(saved)
    if work:
        tk.softmax_xent_bwd(saved, target, grad_loss, denom if reduction == _MEAN else None, ignore_index,
                            reduction == _NONE, out)
    return out
