"""Softmax-cross-entropy family in plain PyTorch (the yardstick). Entry points and their contracts:
pyimgcls/backends/cpu/softmax_xent.py.

The op (ops/softmax_xent.py) runs this backend whole through reference.cross_entropy with PyTorch's
own autograd and never reaches these entry points; they serve direct calls of the custom ops with
backend "torch": the loss is reference.cross_entropy's, the gradient the closed form of
ops/softmax_xent.py::_target_terms. Targets are checked on the host on every device (a bad target
would be a device-side assert on CUDA tensors here, not the kernels' NaN rows)."""
from __future__ import annotations

import torch

from ...ops import reference
from ...ops.softmax_xent import _MEAN, _NONE, _acc_dtype, _target_terms, _validate_targets_on_host

_REDUCTION_NAMES = ("none", "mean", "sum")   # by reduction code


def forward(x, target, weight, ignore_index, reduction, eps, need_grad):
    N, C = x.shape
    _validate_targets_on_host(target, C, ignore_index)
    acc = _acc_dtype(x.dtype)
    xa = x.to(acc)
    loss = reference.cross_entropy(xa, target, None if weight is None else weight.to(acc), ignore_index,
                                   _REDUCTION_NAMES[reduction], eps).to(x.dtype)
    grad = x.new_empty((0,))
    denom = x.new_empty((0,), dtype=acc)
    if need_grad or reduction == _MEAN:
        if C:
            wt, a, b = _target_terms(target, weight, ignore_index, eps, C, acc, x.device)
        else:   # no classes: every row is ignored
            wt = a = xa.new_zeros((N,))
            b = xa
        if need_grad:
            grad = (a[:, None] * torch.softmax(xa, dim=1) - b).to(x.dtype)
        if reduction == _MEAN:
            denom = wt.sum()
    return loss, grad, denom


def prob_forward(x, target, weight, reduction, eps, need_grad):
    N, C = x.shape
    acc = _acc_dtype(x.dtype)
    xa, w = x.to(acc), None if weight is None else weight.to(acc)
    loss = reference.cross_entropy_prob(xa, target.to(acc), w, _REDUCTION_NAMES[reduction], eps).to(x.dtype)
    grad = x.new_empty((0,))
    if need_grad:
        v = (1.0 - eps) * target.to(acc) + eps / C
        if w is not None:
            v = v * w
        grad = (v.sum(1, keepdim=True) * torch.softmax(xa, dim=1) - v).to(x.dtype)
    denom = xa.new_full((), float(N)) if reduction == _MEAN else x.new_empty((0,), dtype=acc)
    return loss, grad, denom


def backward(grad_loss, saved, target, denom, ignore_index, reduction, in_place):
    acc = _acc_dtype(saved.dtype)
    go = grad_loss.to(acc)
    scale = go[:, None] if reduction == _NONE else (go / denom if reduction == _MEAN else go)
    if target is None:   # probability targets: no ignored rows
        return (saved.to(acc) * scale).to(grad_loss.dtype)
    out = torch.where((target != ignore_index)[:, None], saved.to(acc) * scale, 0.0)
    return out.to(grad_loss.dtype)
