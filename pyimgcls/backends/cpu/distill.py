"""Distillation-loss family on our C++ CPU kernels (csrc/cpu/distill.cpp).

Entry points (same signature in every backend folder; reduction is 0 "none", 1 "mean", 2 "sum"):
    forward(s, t, target, ignore_index, reduction, eps, temperature, alpha, need_grad) -> (loss, grad, denom)
        s, t [N, C] student / teacher logits in one dtype, each with unit class stride (any row
        stride); target [N] contiguous int64 or int32 class indices; eps the label smoothing (>= 0),
        temperature > 0, alpha in [0, 1]. loss: [N] for "none" (0 for ignored rows), else 0-D, in s's
        dtype. grad: d(sum_i loss_i)/ds [N, C] with rows of C elements when need_grad (ignored rows 0),
        else an empty [0] tensor. denom: the number of counted rows, 0-D in the dtype
        ops/softmax_xent.py::_acc_dtype gives, for "mean", else an empty [0] tensor. A target neither
        ignore_index nor in [0, C) raises TargetOutOfRangeError on CPU tensors (on CUDA tensors only
        under PYIMGCLS_CHECK_TARGETS=1; otherwise that row's loss and gradient are NaN).
    backward(grad_loss, saved, target, denom, ignore_index, reduction, in_place) -> grad_input
        the softmax_xent family's backward (pyimgcls/backends/cpu/softmax_xent.py): the same scaling.
float16/bfloat16 inputs are computed in float32: the loss is returned in their dtype, the saved
gradient stays float32 (as for softmax_xent)."""
from __future__ import annotations

import torch

from ... import _native
from ...ops import _alloc
from ...ops.distill import _raise_bad_target
from ...ops.softmax_xent import _MEAN, _NONE
from .softmax_xent import backward  # noqa: F401  (the family's backward: one scaling pass)

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def forward(s, t, target, ignore_index, reduction, eps, temperature, alpha, need_grad):
    dtype = s.dtype
    if dtype in _LOW_PRECISION:
        loss, grad, denom = forward(s.float(), t.float(), target, ignore_index, reduction, eps, temperature, alpha,
                                    need_grad)
        return loss.to(dtype), grad, denom
    N, C = s.shape
    loss = _alloc.new_empty(s, (N,) if reduction == _NONE else ())
    grad = _alloc.new_empty(s, (N, C)) if need_grad else s.new_empty((0,))
    denom = _alloc.new_empty(s, ()) if reduction == _MEAN else s.new_empty((0,))
    bad = _native.C.distill_fwd_cpu(
        _native.DTYPE_CODES[dtype], s.data_ptr(), s.stride(0), t.data_ptr(), t.stride(0), target.data_ptr(),
        target.dtype == torch.int32, N, C, ignore_index, eps, temperature, alpha, reduction, loss.data_ptr(),
        grad.data_ptr() if need_grad and N * C else 0, denom.data_ptr() if reduction == _MEAN else 0)
    if bad >= 0:
        _raise_bad_target(target, bad, C, ignore_index)
    return loss, grad, denom
