"""Softmax-cross-entropy family on our C++ CPU kernels (csrc/cpu/softmax_xent.cpp).

Entry points (same signature in every backend folder; reduction is 0 "none", 1 "mean", 2 "sum"):
    forward(x, target, weight, ignore_index, reduction, eps, need_grad) -> (loss, grad, denom)
        x [N, C] logits with unit class stride; target [N] contiguous int64 or int32 class indices;
        weight [C] contiguous or None; eps the label smoothing (>= 0). loss: [N] for "none", else 0-D,
        in x's dtype. grad: d(sum_i loss_i)/dx [N, C] with rows of C elements when need_grad, else an
        empty [0] tensor. denom: the weighted-mean denominator, 0-D float32 (float64 for float64 x) for
        "mean", else an empty [0] tensor. A target neither ignore_index nor in [0, C) raises
        TargetOutOfRangeError on CPU tensors (on CUDA tensors only under PYIMGCLS_CHECK_TARGETS=1;
        otherwise that row's loss and gradient are NaN).
    backward(grad_loss, saved, target, denom, ignore_index, reduction, in_place) -> grad_input
        saved: forward's grad; grad_input [N, C] = saved with row i scaled by grad_loss[i] ("none"),
        grad_loss ("sum") or grad_loss / denom ("mean"), 0 for ignored rows, in grad_loss's dtype.
        in_place: the caller owns ``saved`` and drops it afterwards, so the backend may write into
        it and return it (this one does; the others allocate).
        target None: probability targets, no row is ignored (ignore_index unused).
    prob_forward(x, target, weight, reduction, eps, need_grad) -> (loss, grad, denom)
        class-probability targets: target [N, C] in x's dtype with unit class stride (any row stride);
        loss and grad as forward (grad_n = (sum_c w_c t'_nc) softmax(x_n) - w t'_n with
        t' = (1 - eps) t + eps / C); denom N for "mean" (same dtype as forward's), else empty. Its
        backward is backward(..., target=None, ...).
float16/bfloat16 inputs are computed in float32 (docs/architecture.md, "Dtypes"): the loss is returned in
their dtype, the saved gradient stays float32 and the backward returns grad_loss's dtype."""
from __future__ import annotations

import torch

from ... import _native
from ...ops import _alloc
from ...ops.softmax_xent import _MEAN, _NONE, _backward_output, _raise_bad_target

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _outputs(x, reduction, need_grad):
    """(loss, grad or empty, denom or empty) for a float32 / float64 forward of either target kind. The
    denominator shares the logits' dtype (ops/softmax_xent.py::_acc_dtype). x has unit class stride, so
    empty_like (which keeps a dense layout) gives rows of C elements."""
    loss = _alloc.new_empty(x, (x.shape[0],) if reduction == _NONE else ())
    grad = _alloc.empty_like(x) if need_grad else x.new_empty((0,))
    denom = _alloc.new_empty(x, ()) if reduction == _MEAN else x.new_empty((0,))
    return loss, grad, denom


def forward(x, target, weight, ignore_index, reduction, eps, need_grad):
    dtype = x.dtype
    if dtype in _LOW_PRECISION:
        loss, grad, denom = forward(x.float(), target, None if weight is None else weight.float(), ignore_index,
                                    reduction, eps, need_grad)
        return loss.to(dtype), grad, denom
    N, C = x.shape
    loss, grad, denom = _outputs(x, reduction, need_grad)
    bad = _native.C.softmax_xent_fwd_cpu(
        _native.DTYPE_CODES[dtype], x.data_ptr(), x.stride(0), target.data_ptr(), target.dtype == torch.int32,
        weight.data_ptr() if weight is not None else 0, N, C, ignore_index, eps, reduction, loss.data_ptr(),
        grad.data_ptr() if need_grad and N * C else 0, denom.data_ptr() if reduction == _MEAN else 0)
    if bad >= 0:
        _raise_bad_target(target, bad, C, ignore_index)
    return loss, grad, denom


def prob_forward(x, target, weight, reduction, eps, need_grad):
    dtype = x.dtype
    if dtype in _LOW_PRECISION:
        loss, grad, denom = prob_forward(x.float(), target.float(), None if weight is None else weight.float(),
                                         reduction, eps, need_grad)
        return loss.to(dtype), grad, denom
    N, C = x.shape
    loss, grad, denom = _outputs(x, reduction, need_grad)
    _native.C.softmax_xent_prob_fwd_cpu(
        _native.DTYPE_CODES[dtype], x.data_ptr(), x.stride(0), target.data_ptr(), target.stride(0),
        weight.data_ptr() if weight is not None else 0, N, C, eps, reduction, loss.data_ptr(),
        grad.data_ptr() if need_grad and N * C else 0, denom.data_ptr() if reduction == _MEAN else 0)
    return loss, grad, denom


def backward(grad_loss, saved, target, denom, ignore_index, reduction, in_place):
    out_dtype = grad_loss.dtype
    if saved.dtype != out_dtype:
        # float16/bfloat16: the saved gradient is float32 (see forward).
        return backward(grad_loss.float(), saved, target, denom, ignore_index, reduction, False).to(out_dtype)
    N, C = saved.shape
    out, work = _backward_output(saved, in_place)
    if not work:
        return out
    per_row = reduction == _NONE
    go_stride = grad_loss.stride(0) if per_row else 0
    t32 = target is not None and target.dtype == torch.int32
    t_ptr = target.data_ptr() if target is not None else 0
    d_ptr = denom.data_ptr() if reduction == _MEAN else 0
    _native.C.softmax_xent_bwd_cpu(_native.dtype_code(saved.dtype), saved.data_ptr(), t_ptr, t32,
                                   grad_loss.data_ptr(), go_stride, per_row, d_ptr, N, C, ignore_index,
                                   out.data_ptr())
    return out
