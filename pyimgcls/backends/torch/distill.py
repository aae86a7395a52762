"""Distillation-loss family in plain PyTorch (the yardstick). Entry points and their contracts:
pyimgcls/backends/cpu/distill.py.

The op (ops/distill.py) runs this backend whole through reference.distillation_loss with PyTorch's own
autograd and never reaches these entry points; they serve direct calls of the custom op with backend
"torch": the loss is reference.distillation_loss's, the gradient its closed form (ops/distill.py::
_graph_grad without the scale). Targets are checked on the host on every device."""
from __future__ import annotations

import torch

from ...ops import reference
from ...ops.softmax_xent import _MEAN, _acc_dtype, _target_terms, _validate_targets_on_host
from .softmax_xent import backward  # noqa: F401  (the family's backward)

_REDUCTION_NAMES = ("none", "mean", "sum")


def forward(s, t, target, ignore_index, reduction, eps, temperature, alpha, need_grad):
    N, C = s.shape
    _validate_targets_on_host(target, C, ignore_index)
    acc = _acc_dtype(s.dtype)
    sa, ta = s.to(acc), t.to(acc)
    loss = reference.distillation_loss(sa, ta, target, temperature, alpha, _REDUCTION_NAMES[reduction], eps,
                                       ignore_index).to(s.dtype)
    grad = s.new_empty((0,))
    valid = (target != ignore_index).to(acc)
    if need_grad:
        _, a, b = _target_terms(target, None, ignore_index, eps, C, acc, s.device)
        g = (alpha * temperature * (torch.softmax(sa / temperature, 1) - torch.softmax(ta / temperature, 1))
             * valid[:, None] + (1.0 - alpha) * (a[:, None] * torch.softmax(sa, 1) - b))
        grad = g.to(s.dtype)
    denom = valid.sum() if reduction == _MEAN else s.new_empty((0,), dtype=acc)
    return loss, grad, denom
