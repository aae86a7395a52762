"""Softmax-cross-entropy family: ``softmax_cross_entropy`` (alias ``cross_entropy``), matching
``torch.nn.functional.cross_entropy`` for class-index targets.

One forward custom op, ``pyimgcls::softmax_cross_entropy``, reads the logits once and returns
    (loss, grad, denom)
where ``grad`` [N, C] is d(sum_i loss_i)/d logits in the input dtype (not written under no_grad) and
``denom`` is the weighted-mean denominator (mean only). Its backward, the custom op
``pyimgcls::softmax_cross_entropy_backward``, only scales ``grad``: row i by the incoming gradient
(per row for reduction "none", one scalar for "sum", scalar / denom for "mean"), 0 for ignored rows.
The backend is resolved in Python and passed to both ops as a string, so torch.compile traces a fixed
choice. In plain eager mode the same two kernels run through the eager autograd.Function that
``ops/_eager.py`` builds from the op's own setup_context and backward, as for every op family.

Out-of-range targets (neither ignore_index nor in [0, C)): on CPU tensors every backend raises
``TargetOutOfRangeError`` (an IndexError, as PyTorch raises, and a ValueError/RuntimeError like the
other argument errors). On CUDA tensors the kernels never dereference such a target and make that
row's loss and gradient NaN -- so a mean or sum is NaN -- without synchronising with the host; set
``PYIMGCLS_CHECK_TARGETS=1`` to validate targets on the host first and raise the same error instead
(one device-to-host synchronisation per call).

Class-probability targets (a floating target of the logits' shape, as for MixUp / CutMix) run through
a second pair of ops, ``pyimgcls::softmax_cross_entropy_prob`` and its backward: with
t' = (1 - eps) t + eps / C and class weights w (1 without weights), per row
    loss_n = -sum_c w_c t'_nc log_softmax(x_n)_c,   d loss_n / d x_n = (sum_c w_c t'_nc) softmax(x_n) - w t'_n
and "mean" divides the sum by N (not by a weight sum), as PyTorch does. The forward kernel writes the
loss and the logits' gradient in one pass, the backward scales it (the index-target backward kernels
with no ignored rows). The target's gradient, -(1 - eps) w_c log_softmax(x_n)_c per unit of loss, is
computed in PyTorch in the backward (only when the target requires grad). ignore_index must stay
negative (PyTorch: "ignore_index is not supported for floating point target"); input, target and weight
are promoted to their common dtype, as PyTorch's arithmetic does. Unbatched 1-D logits are not
supported and raise a clear error naming the argument; class weights cannot require grad.
"""
from __future__ import annotations

import math
import numbers
import os

import torch

from .. import _backend, backends
from ..errors import ArgumentTypeError, ArgumentValueError
from . import _alloc, _eager, reference
from ._checks import autocast_dtype, check_backend_dtype, check_float, check_same_device, check_same_dtype, check_tensor

REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_NONE, _MEAN, _SUM = 0, 1, 2
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_TARGET_DTYPES = (torch.int64, torch.int32, torch.uint8)
_OP = "softmax_cross_entropy"
_FAMILY = "softmax_xent"


class TargetOutOfRangeError(ArgumentValueError, IndexError):
    """A target is neither ignore_index nor a class index in [0, C). PyTorch raises IndexError here;
    this is also a ValueError and a RuntimeError like pyimgcls' other argument errors."""


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic dtype: float64 for float64 inputs, float32 otherwise (also the denominator's)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _raise_bad_target(target: torch.Tensor, row: int, C: int, ignore_index: int):
    value = int(target[row])
    raise TargetOutOfRangeError(
        f"{_OP}: argument 'target' has value {value} at index {row}, out of range for {C} classes "
        f"(expected 0 <= target < {C}, or target == ignore_index ({ignore_index})): Target {value} is out of bounds.")


def _validate_targets_on_host(target: torch.Tensor, C: int, ignore_index: int) -> None:
    if target.device.type == "meta":   # shapes only (pyimgcls.explain): no values to check
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= C))
    if bool(bad.any()):
        _raise_bad_target(target.cpu(), int(bad.nonzero()[0, 0]), C, ignore_index)


# ----------------------------------------------------------------------------- backend kernels
# The kernels live in pyimgcls/backends/<backend>/softmax_xent.py (entry points ``forward`` and
# ``backward``, contract in the cpu module's docstring); _forward / _backward are the one lookup.
def _forward(x, target, weight, ignore_index, reduction, eps, need_grad, backend):
    """(loss, grad or empty, denom or empty) for logits x [N, C] with unit class stride."""
    return backends.kernels(backend, _FAMILY).forward(x, target, weight, ignore_index, reduction, eps, need_grad)


def _backward(grad_loss, saved, target, denom, ignore_index, reduction, backend, in_place=False):
    """grad_input = saved scaled per row. ``in_place``: the caller owns ``saved`` and drops it afterwards,
    so a backend may write into it and return it (the cpu one does; see _xent_backward)."""
    return backends.kernels(backend, _FAMILY).backward(grad_loss, saved, target, denom, ignore_index, reduction,
                                                       in_place)


def _backward_in_place(grad_loss, saved, target, denom, ignore_index, reduction, backend):
    return backends.kernels(backend, _FAMILY).backward(grad_loss, saved, target, denom, ignore_index, reduction,
                                                       True)


# Shared by the backend modules (backend-independent parts of the kernel contract).
def _kernel_outputs(x, target, ignore_index, reduction, need_grad):
    """(loss, grad or empty, denom or empty) allocated for a kernel writing them, after the host-side
    target check where the contract asks for one (CPU tensors, or PYIMGCLS_CHECK_TARGETS=1)."""
    N, C = x.shape
    dtype = x.dtype
    dev = x.device
    loss = _alloc.empty((N,) if reduction == _NONE else (), dtype, dev)
    grad = _alloc.empty((N, C), dtype, dev) if need_grad else x.new_empty((0,))
    denom = (_alloc.empty((), _acc_dtype(dtype), dev) if reduction == _MEAN
             else x.new_empty((0,), dtype=_acc_dtype(dtype)))
    if dev.type == "cpu" or os.environ.get("PYIMGCLS_CHECK_TARGETS", "0") == "1":
        _validate_targets_on_host(target, C, ignore_index)
    return loss, grad, denom


def _backward_output(saved, in_place=False):
    """(the input gradient's buffer: ``saved`` itself when ``in_place``, else a new one like it,
    whether there is anything to compute)."""
    out = saved if in_place else _alloc.empty_like(saved)
    return out, out.numel() > 0


def _target_terms(target, weight, ignore_index, eps, C, acc, device):
    """(wt, a, b) of a loss with targets ``target`` [N] (in range or ignored), in dtype ``acc``: per row,
    with w the class weights (1 without weights) and v = 0 for an ignored row, 1 otherwise,

        wt = v w[t],   a = (1-eps) wt + eps/C * sum(w) v,   b = (1-eps) wt onehot(t) + eps/C w v

    so that the row's loss is -sum(b * log_softmax(x)) and its gradient a * softmax(x) - b."""
    valid = target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target)).long()
    w = weight.to(acc) if weight is not None else torch.ones(C, dtype=acc, device=device)
    vf = valid.to(acc)
    wt = w[t] * vf
    a = (1.0 - eps) * wt + (eps / C) * w.sum() * vf
    b = ((1.0 - eps) * wt)[:, None] * torch.nn.functional.one_hot(t, C).to(acc) + (eps / C) * w[None, :] * vf[:, None]
    return wt, a, b


# ----------------------------------------------------------------------------- custom ops
@torch.library.custom_op("pyimgcls::softmax_cross_entropy", mutates_args=())
def _xent_op(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
             reduction: int, label_smoothing: float, need_grad: bool,
             backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(input, target, weight, ignore_index, reduction, label_smoothing, need_grad, backend)


def _fake_forward_outputs(input, reduction, need_grad, backend):
    """(loss, saved gradient, denominator) of either forward op (index or probability targets), as
    register_fake describes them."""
    N, C = input.shape
    loss = input.new_empty((N,) if reduction == _NONE else ())
    # a backend computing float16/bfloat16 in float32 saves the gradient in float32 (its forward)
    grad_dtype = (torch.float32 if input.dtype in _LOW_PRECISION and backends.TABLE[backend].upcasts_low_precision
                  else input.dtype)
    grad = input.new_empty((N, C), dtype=grad_dtype) if need_grad else input.new_empty((0,))
    acc = _acc_dtype(input.dtype)
    denom = input.new_empty((), dtype=acc) if reduction == _MEAN else input.new_empty((0,), dtype=acc)
    return loss, grad, denom


@_xent_op.register_fake
def _(input, target, weight, ignore_index, reduction, label_smoothing, need_grad, backend):
    return _fake_forward_outputs(input, reduction, need_grad, backend)


@torch.library.custom_op("pyimgcls::softmax_cross_entropy_backward", mutates_args=())
def _xent_backward_op(grad_loss: torch.Tensor, saved_grad: torch.Tensor, target: torch.Tensor,
                      denom: torch.Tensor, ignore_index: int, reduction: int, backend: str) -> torch.Tensor:
    return _backward(grad_loss, saved_grad, target, denom, ignore_index, reduction, backend)


@_xent_backward_op.register_fake
def _(grad_loss, saved_grad, target, denom, ignore_index, reduction, backend):
    return saved_grad.new_empty(saved_grad.shape, dtype=grad_loss.dtype)


def _xent_setup_context(ctx, inputs, output):
    _, grad, denom = output
    _eager.mark_auxiliary(ctx, grad, denom)
    # the target goes through save_for_backward for its in-place check (PyTorch's error if it changes
    # before the backward); the other arguments ride on ctx in one tuple, with the logits (and their
    # version) for a backward under create_graph=True (_graph_grad)
    ctx.save_for_backward(grad, inputs[1], denom)
    ctx.args, ctx.x_version = inputs, inputs[0]._version


def _xent_backward(ctx, grad_loss, _grad_grad=None, _grad_denom=None):
    saved, target, denom = ctx.saved_tensors
    if saved.dim() != 2:
        raise RuntimeError(f"{_OP}: the forward ran without gradient tracking, so no gradient was saved")
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None, None, None
    x, _, weight, ignore_index, reduction, eps, _, backend = ctx.args
    # eager path, graph not kept: the saved gradient (an auxiliary output nobody else holds) is scaled
    # in place and handed on -- no [N, C] allocation, half the memory traffic
    backward = _eager.pick(ctx, _xent_backward_op, _backward, _backward_in_place)
    grad_input = backward(grad_loss, saved, target, denom, ignore_index, reduction, backend)
    if _eager.graph_mode(grad_loss, x):
        grad_input = _graph_grad(x, ctx.x_version, grad_loss, grad_input, target, weight, ignore_index, reduction,
                                 eps, denom)
    return grad_input, None, None, None, None, None, None, None


def _graph_grad(x, x_version, grad_loss, first_order, target, weight, ignore_index, reduction, eps, denom):
    """The gradient ``first_order`` (our kernel's values, unchanged) carrying a graph for
    create_graph=True, so that it can be differentiated again to any order (Hessians, gradient
    penalties). Per row, with p = softmax(x) and w the class weights (1 without weights),

        grad_x = scale * (a * p - b),   a = (1-eps) w[t] + eps/C * sum(w),   b = (1-eps) w[t] onehot(t) + eps/C w

    (ignored rows: a = b = 0; scale: grad_loss / denom for "mean", grad_loss (per row for "none")).
    That expression is rebuilt from differentiable PyTorch operations (softmax, index, products) and
    added as ``expr - expr.detach()``: zero in value, exact in every derivative. This runs only when a
    graph of the gradient is asked for; ordinary training never reaches it."""
    if x._version != x_version:
        raise RuntimeError(
            f"{_OP}: one of the variables needed for gradient computation has been modified by an inplace "
            "operation: argument 'input' was changed in place after the forward pass")
    N, C = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    p = torch.softmax(x.to(acc), dim=1)
    _, a, b = _target_terms(target, weight, ignore_index, eps, C, acc, x.device)
    g = a[:, None] * p - b
    go = grad_loss.to(acc)
    if reduction == _NONE:
        g = g * go[:, None]
    elif reduction == _MEAN:
        g = g * (go / denom.to(acc))
    else:
        g = g * go
    g = g.to(first_order.dtype)
    return first_order.detach() + (g - g.detach())


_xent_op.register_autograd(_xent_backward, setup_context=_xent_setup_context)


# Plain eager mode (ops/_eager.py): the same forward implementation, setup_context and backward through
# the eager Function. Only the logits can require grad (inputs=1: the other seven arguments travel as
# one tuple) and the loss is the only result (results=1: the saved gradient and the denominator stay
# out of autograd's output processing); both matter at classification sizes.
_EagerXent = _eager.function(_forward, _xent_setup_context, _xent_backward, inputs=1, results=1,
                             name=_OP)


# ----------------------------------------------------------------------------- probability targets
def _prob_forward(x, target, weight, reduction, eps, need_grad, backend):
    """(loss, grad or empty, denom or empty) for logits x [N, C] and probability targets [N, C], both
    with unit class stride, in one dtype; denom is N for "mean"."""
    return backends.kernels(backend, _FAMILY).prob_forward(x, target, weight, reduction, eps, need_grad)


def _prob_backward(grad_loss, saved, denom, reduction, backend, in_place=False):
    """grad_input = saved scaled per row: the index-target backward with no ignored row (target None)."""
    return backends.kernels(backend, _FAMILY).backward(grad_loss, saved, None, denom, -100, reduction, in_place)


def _prob_backward_in_place(grad_loss, saved, denom, reduction, backend):
    return _prob_backward(grad_loss, saved, denom, reduction, backend, True)


@torch.library.custom_op("pyimgcls::softmax_cross_entropy_prob", mutates_args=())
def _prob_op(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: int,
             label_smoothing: float, need_grad: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _prob_forward(input, target, weight, reduction, label_smoothing, need_grad, backend)


@_prob_op.register_fake
def _(input, target, weight, reduction, label_smoothing, need_grad, backend):
    return _fake_forward_outputs(input, reduction, need_grad, backend)


@torch.library.custom_op("pyimgcls::softmax_cross_entropy_prob_backward", mutates_args=())
def _prob_backward_op(grad_loss: torch.Tensor, saved_grad: torch.Tensor, denom: torch.Tensor, reduction: int,
                      backend: str) -> torch.Tensor:
    return _prob_backward(grad_loss, saved_grad, denom, reduction, backend)


@_prob_backward_op.register_fake
def _(grad_loss, saved_grad, denom, reduction, backend):
    return saved_grad.new_empty(saved_grad.shape, dtype=grad_loss.dtype)


def _prob_setup_context(ctx, inputs, output):
    _, grad, denom = output
    _eager.mark_auxiliary(ctx, grad, denom)
    ctx.save_for_backward(grad, inputs[1], denom)
    ctx.args, ctx.x_version = inputs, inputs[0]._version


def _prob_scale(grad_loss, reduction, N, acc):
    """The per-row factor [N, 1] (or a scalar) of the reduction, in dtype ``acc``."""
    go = grad_loss.to(acc)
    if reduction == _NONE:
        return go[:, None]
    return go / N if reduction == _MEAN else go


def _prob_backward_fn(ctx, grad_loss, _grad_grad=None, _grad_denom=None):
    saved, target, denom = ctx.saved_tensors
    x, _, weight, reduction, eps, _, backend = ctx.args
    grad_x = grad_t = None
    graph = _eager.graph_mode(grad_loss, x, target)
    if graph and x._version != ctx.x_version:
        raise RuntimeError(
            f"{_OP}: one of the variables needed for gradient computation has been modified by an inplace "
            "operation: argument 'input' was changed in place after the forward pass")
    N, C = x.shape
    acc = _acc_dtype(x.dtype)
    w = weight.to(acc) if weight is not None else None
    if ctx.needs_input_grad[0]:
        if saved.dim() != 2:
            raise RuntimeError(f"{_OP}: the forward ran without gradient tracking, so no gradient was saved")
        backward = _eager.pick(ctx, _prob_backward_op, _prob_backward, _prob_backward_in_place)
        grad_x = backward(grad_loss, saved, denom, reduction, backend)
        if graph:
            # the same value rebuilt from differentiable operations, as _graph_grad does for index targets
            v = (1.0 - eps) * target.to(acc) + eps / C
            if w is not None:
                v = v * w
            g = (v.sum(1, keepdim=True) * torch.softmax(x.to(acc), dim=1) - v) * _prob_scale(grad_loss, reduction,
                                                                                            N, acc)
            g = g.to(grad_x.dtype)
            grad_x = grad_x.detach() + (g - g.detach())
    if ctx.needs_input_grad[1]:
        # d loss_n / d t_nc = -(1 - eps) w_c log_softmax(x_n)_c: PyTorch operations, differentiable under
        # create_graph=True; only computed when the target requires grad
        lp = torch.log_softmax(x.to(acc), dim=1)
        if w is not None:
            lp = lp * w
        grad_t = (lp * (-(1.0 - eps)) * _prob_scale(grad_loss, reduction, N, acc)).to(target.dtype)
    return grad_x, grad_t, None, None, None, None, None


_prob_op.register_autograd(_prob_backward_fn, setup_context=_prob_setup_context)
# logits and target can require grad (inputs=2); the loss is the only result
_EagerProb = _eager.function(_prob_forward, _prob_setup_context, _prob_backward_fn, inputs=2, results=1,
                             name=_OP + "_prob")


def _prob_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing):
    """softmax_cross_entropy for a floating ``target`` (class probabilities): checks, then the prob op."""
    op = _OP
    check_float(input, "input", op)
    if target.dtype not in _FLOAT_TARGET_DTYPES:
        raise ArgumentTypeError(
            f"{op}: argument 'target' has dtype {target.dtype}: expected class indices (int64) or class "
            "probabilities (float32, float64, float16, bfloat16)")
    if (reduction.__class__ is not str and not isinstance(reduction, str)) or reduction not in REDUCTIONS:
        raise ArgumentValueError(
            f"{op}: {reduction!r} is not a valid value for reduction: argument 'reduction' must be "
            "'none', 'mean' or 'sum'")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ArgumentTypeError(f"{op}: argument 'ignore_index' must be an int, got {type(ignore_index).__name__}")
    if ignore_index >= 0:
        raise ArgumentValueError(
            f"{op}: argument 'ignore_index' ({ignore_index}) must stay negative with class-probability "
            "targets: ignore_index is not supported for floating point target")
    if not isinstance(label_smoothing, (int, float)):
        raise ArgumentTypeError(
            f"{op}: argument 'label_smoothing' must be a float, got {type(label_smoothing).__name__}")
    if label_smoothing > 1.0:
        raise ArgumentValueError(
            f"{op}: argument 'label_smoothing' must be between 0.0 and 1.0, got {label_smoothing}")
    shape, tshape = input.shape, target.shape
    if input.dim() < 2:
        raise ArgumentValueError(
            f"{op}: argument 'input' must be 2-D logits [N, C] (or [N, C, d1, ...]); got shape {tuple(shape)} "
            "-- unbatched logits are not supported, use input[None] and target[None]")
    if tshape != shape:
        if tshape == (shape[0],) + tuple(shape[2:]):
            raise ArgumentTypeError(
                f"{op}: argument 'target' has the shape of class indices {tuple(tshape)} but dtype {target.dtype}; "
                "class indices must be int64 (or int32 / uint8), class probabilities must have the shape of "
                f"'input' {tuple(shape)}")
        if len(tshape) >= 1 and tshape[0] != shape[0]:
            raise ArgumentValueError(
                f"{op}: argument 'target' has shape {tuple(tshape)} but 'input' has shape {tuple(shape)} "
                f"(Expected input batch_size ({shape[0]}) to match target batch_size ({tshape[0]}))")
        raise ArgumentValueError(
            f"{op}: argument 'target' has shape {tuple(tshape)}; class-probability targets must have the "
            f"shape of 'input' {tuple(shape)} (class indices have shape {(shape[0],) + tuple(shape[2:])})")
    device = input.device
    check_same_device(input, "input", target, "target", op)
    dtype = torch.promote_types(input.dtype, target.dtype)
    if weight is not None:
        _check_weight(input, weight, shape[1], op,
                      "; gradients with respect to the class weights are not supported")
        dtype = torch.promote_types(dtype, weight.dtype)
    if dtype in _LOW_PRECISION and autocast_dtype(device.type) is not None:
        dtype = torch.float32   # PyTorch's AMP rule for cross_entropy: run in float32
    # PyTorch's arithmetic promotes logits, target and weight to one dtype (and differentiates the casts)
    if input.dtype != dtype:
        input = input.to(dtype)
    if target.dtype != dtype:
        target = target.to(dtype)
    if weight is not None and weight.dtype != dtype:
        weight = weight.to(dtype)
    backend = _backend.resolve(device, _OP)
    check_backend_dtype(backend, input, "input", _OP)
    label_smoothing = max(float(label_smoothing), 0.0)
    if backends.TABLE[backend].yardstick:
        return reference.cross_entropy_prob(input, target, weight, reduction, label_smoothing)
    if input.dim() > 2:
        rows = input.numel() // shape[1] if shape[1] else shape[0] * math.prod(shape[2:])   # explicit: C may be 0
        x = input.movedim(1, -1).reshape(rows, shape[1])
        t = target.movedim(1, -1).reshape(rows, shape[1])
    else:
        x, t = input, target
    if x.stride(1) != 1:
        x = x.contiguous()
    if t.stride(1) != 1:
        t = t.contiguous()
    if weight is not None and not weight.is_contiguous():
        weight = weight.contiguous()
    red = REDUCTIONS[reduction]
    if x.shape[1] == 0:
        # PyTorch: -sum over no classes = -0. per row ('mean': NaN), label smoothing or not
        loss = _no_classes(x, "negzero", red)
        return loss.reshape((shape[0],) + tuple(shape[2:])) if red == _NONE and input.dim() > 2 else loss
    need_grad = torch.is_grad_enabled() and input.requires_grad
    loss = _eager.call(_prob_op, _EagerProb, _prob_forward, (x, t, weight, red, label_smoothing, need_grad, backend),
                       (x, t, weight))
    if red == _NONE and input.dim() > 2:
        loss = loss.reshape((shape[0],) + tuple(shape[2:]))
    return loss


def _no_classes(x, fill: str, red: int):
    """The loss of C == 0 logits (x is [rows, 0]), PyTorch's values: per row ``fill`` ("zero": 0.,
    "negzero": -0., "nan"), for 'sum' their sum, for 'mean' NaN (0 / 0). Built on x (an empty sum is
    0.) so autograd gives the (empty) gradient."""
    rows = x.sum(1)
    if fill == "nan":
        rows = rows + float("nan")
    if red == _NONE:
        return -rows if fill == "negzero" else rows
    total = rows.sum()   # negated after the sum: a sum of -0. terms starts from +0.
    total = -total if fill == "negzero" else total
    return total + float("nan") if red == REDUCTIONS["mean"] else total


_FLOAT_TARGET_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- public API
def _check_weight(input, weight, C: int, op: str, why_no_grad: str) -> None:
    """The class weights: a floating [C] tensor on the input's device that does not require grad
    (``why_no_grad`` ends the message when it does)."""
    check_tensor(weight, "weight", op)
    check_float(weight, "weight", op)
    check_same_device(input, "input", weight, "weight", op)
    if weight.dim() != 1 or weight.shape[0] != C:
        raise ArgumentValueError(
            f"{op}: argument 'weight' must have one entry per class ({C}), got shape {tuple(weight.shape)}")
    if weight.requires_grad and torch.is_grad_enabled():
        raise ArgumentValueError(f"{op}: argument 'weight' requires grad{why_no_grad}")


def _check_args(input, target, weight, ignore_index, reduction, label_smoothing):
    """Every argument error, each naming the argument. Ordered so the common, valid call runs few
    tensor attribute lookups (this function is a measurable share of a small loss call)."""
    op = _OP
    if not isinstance(input, torch.Tensor):
        check_tensor(input, "input", op)
    if not isinstance(target, torch.Tensor):
        check_tensor(target, "target", op)
    check_float(input, "input", op)
    tdtype = target.dtype
    if tdtype not in _TARGET_DTYPES:
        raise ArgumentTypeError(f"{op}: argument 'target' must hold class indices as int64 or int32, got {tdtype}")
    if (reduction.__class__ is not str and not isinstance(reduction, str)) or reduction not in REDUCTIONS:
        raise ArgumentValueError(
            f"{op}: {reduction!r} is not a valid value for reduction: argument 'reduction' must be "
            "'none', 'mean' or 'sum'")
    if ignore_index.__class__ is not int:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ArgumentTypeError(f"{op}: argument 'ignore_index' must be an int, got {type(ignore_index).__name__}")
    if label_smoothing.__class__ is not float and not isinstance(label_smoothing, (int, float)):
        # bool included, as PyTorch's float argument
        raise ArgumentTypeError(
            f"{op}: argument 'label_smoothing' must be a float, got {type(label_smoothing).__name__}")
    # PyTorch checks the upper bound only (a negative value means no smoothing)
    if label_smoothing > 1.0:
        raise ArgumentValueError(
            f"{op}: argument 'label_smoothing' must be between 0.0 and 1.0, got {label_smoothing}")
    shape = input.shape
    nd = len(shape)
    if nd == 1:
        raise ArgumentValueError(
            f"{op}: argument 'input' must be 2-D logits [N, C] (or [N, C, d1, ...]); got 1-D of shape "
            f"{tuple(shape)} -- unbatched logits are not supported, use input[None] and target[None]")
    if nd == 0:
        raise ArgumentValueError(f"{op}: argument 'input' must be 2-D logits [N, C], got a 0-D tensor")
    if tdtype == torch.uint8 and (nd > 2 or (float(label_smoothing) > 0.0 and weight is not None
                                             and reduction == "mean" and target.numel() > 0)):
        # PyTorch's nll_loss2d and its weighted, mean-reduced label-smoothing path take int64 targets only
        raise ArgumentTypeError(
            f"{op}: argument 'target' has dtype torch.uint8, which PyTorch accepts only for [N, C] logits "
            "and not with weight + label_smoothing + reduction='mean'; use int64 class indices")
    tshape = target.shape
    if len(tshape) != nd - 1 or tshape[0] != shape[0] or (nd > 2 and tshape[1:] != shape[2:]):
        expected = (shape[0],) + tuple(shape[2:])
        if tshape == shape:
            raise ArgumentTypeError(
                f"{op}: argument 'target' has the shape of 'input' {tuple(shape)} and dtype {tdtype}: class "
                "probabilities must be floating (Expected floating point type for target with class "
                "probabilities), class indices have shape [N]")
        raise ArgumentValueError(
            f"{op}: argument 'target' has shape {tuple(tshape)} but 'input' of shape {tuple(shape)} "
            f"needs target shape {expected} (Expected input batch_size ({shape[0]}) to match target "
            f"batch_size ({tshape[0] if len(tshape) else 'scalar'}))")
    device = input.device
    if target.device != device:
        check_same_device(input, "input", target, "target", op)
    if weight is not None:
        _check_weight(input, weight, shape[1], op, ", but cross entropy is not differentiable with respect to the "
                      "class weights (as in PyTorch)")
    return device


def _scalar_args(ignore_index, label_smoothing):
    """PyTorch's parsing of the int / float arguments: Python and NumPy numbers and 0-D tensors are
    accepted (a bool is refused as ignore_index, accepted as label_smoothing); anything else is left
    for the type checks to reject."""
    if isinstance(ignore_index, torch.Tensor):
        if ignore_index.dim() == 0 and not (ignore_index.is_floating_point() or ignore_index.is_complex()
                                             or ignore_index.dtype == torch.bool):
            ignore_index = int(ignore_index.item())
    elif isinstance(ignore_index, numbers.Integral) and not isinstance(ignore_index, bool):
        ignore_index = int(ignore_index)
    if isinstance(label_smoothing, torch.Tensor):
        if label_smoothing.dim() == 0 and not label_smoothing.is_complex():
            label_smoothing = float(label_smoothing.item())
    elif isinstance(label_smoothing, numbers.Real):
        label_smoothing = float(label_smoothing)
    return ignore_index, label_smoothing


_Tensor = torch.Tensor
_CPU_DTYPES = (torch.float32, torch.float64)


def _common_cpu_call(input, target, ignore_index, reduction, label_smoothing):
    """The common call -- CPU float32/float64 logits [N, C] with unit class stride, contiguous int64
    targets [N], no class weights, a valid reduction and 0 <= label_smoothing <= 1, the "auto" or
    "cpu" backend -- with the checks that decide it and nothing else; returns None for anything else,
    which the general path then checks and runs. It enters the one op mechanism (_eager.call) with the
    arguments the general path would pass (tests compare them); it exists because every Python
    operation counts at classification sizes (~10 us of checks and dispatch against a ~60 us
    forward + backward at N = 256, C = 100, where the bar is PyTorch's own C++ path)."""
    red = REDUCTIONS.get(reduction) if reduction.__class__ is str else None
    if (red is None or input.dtype not in _CPU_DTYPES or target.dtype != torch.int64 or input.dim() != 2
            or target.dim() != 1 or not input.is_cpu or not target.is_cpu or not 0.0 <= label_smoothing <= 1.0):
        return None
    if (target.shape[0] != input.shape[0] or input.shape[1] == 0 or input.stride(1) != 1 or not target.is_contiguous()
            or _backend.get_backend() not in _SHORTCUT_CHOICES):
        return None
    need_grad = input.requires_grad and torch.is_grad_enabled()
    return _eager.call(_xent_op, _EagerXent, _forward,
                       (input, target, None, ignore_index, red, label_smoothing, need_grad, _SHORTCUT_BACKEND),
                       (input, target))


def _shortcut_backend():
    """The backend _common_cpu_call runs, and the user choices that select it (read once, at import):
    the one "auto" picks for CPU tensors (the table's priority), if it takes float32 and float64 and
    is not the yardstick (the shortcut skips the dtype check and the yardstick's own path)."""
    name = backends.resolve("auto", torch.device("cpu"), _OP)
    row = backends.TABLE[name]
    if row.yardstick or not all(d in row.dtypes for d in _CPU_DTYPES):
        return name, ()
    return name, ("auto", name)


_SHORTCUT_BACKEND, _SHORTCUT_CHOICES = _shortcut_backend()


def softmax_cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
                          ignore_index: int = -100, reduction: str = "mean",
                          label_smoothing: float = 0.0) -> torch.Tensor:
    """``torch.nn.functional.cross_entropy(input, target, weight, ignore_index=..., reduction=...,
    label_smoothing=...)`` for logits [N, C] (also [N, C, d1, ...]) and class-index targets [N]
    (int64; int32 and uint8 accepted) or class-probability targets of the logits' shape (floating; see
    the module docstring). Unbatched 1-D logits are not supported and raise a clear error.

    Loss and gradient come from one fused pass over the logits in float32 arithmetic (float64 for
    float64 inputs); under autocast the logits are computed in float32, as PyTorch does."""
    if (weight is None and ignore_index.__class__ is int and label_smoothing.__class__ is float
            and input.__class__ is _Tensor and target.__class__ is _Tensor):
        loss = _common_cpu_call(input, target, ignore_index, reduction, label_smoothing)
        if loss is not None:
            return loss
    if type(ignore_index) is not int or type(label_smoothing) is not float:
        ignore_index, label_smoothing = _scalar_args(ignore_index, label_smoothing)
    if (isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor)
            and (target.is_floating_point() or target.is_complex())):
        return _prob_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing)
    device = _check_args(input, target, weight, ignore_index, reduction, label_smoothing)
    if input.dtype in _LOW_PRECISION and autocast_dtype(device.type) is not None:
        # PyTorch's AMP rule for cross_entropy: run in float32.
        input = input.float()
        if weight is not None and weight.dtype in _LOW_PRECISION:
            weight = weight.float()
    if weight is not None:
        check_same_dtype(input, "input", weight, "weight", _OP)
    backend = _backend.resolve(device, _OP)
    check_backend_dtype(backend, input, "input", _OP)
    if label_smoothing.__class__ is not float:
        label_smoothing = float(label_smoothing)
    if label_smoothing < 0.0:
        label_smoothing = 0.0
    if backends.TABLE[backend].yardstick:
        return reference.cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing)
    if input.dim() > 2:
        # [N, C, d1, ...] -> [N * d1 * ..., C]: one row per position.
        t = target.reshape(-1)
        x = input.movedim(1, -1).reshape(t.shape[0], input.shape[1])   # explicit: C may be 0
    else:
        x, t = input, target
    if x.stride(1) != 1:
        x = x.contiguous()
    if t.dtype == torch.uint8:
        t = t.to(torch.int32)
    if not t.is_contiguous():
        t = t.contiguous()
    if weight is not None and not weight.is_contiguous():
        weight = weight.contiguous()
    red = REDUCTIONS[reduction]
    if x.shape[1] == 0:
        # Every target must be ignore_index (any class index is out of range). PyTorch: 0 per row
        # without smoothing; with smoothing its uniform term divides by C = 0: NaN.
        _validate_targets_on_host(t, 0, int(ignore_index))
        loss = _no_classes(x, "nan" if label_smoothing > 0.0 else "zero", red)
        return loss.reshape(target.shape) if red == _NONE and input.dim() > 2 else loss
    need_grad = torch.is_grad_enabled() and input.requires_grad
    loss = _eager.call(_xent_op, _EagerXent, _forward,
                       (x, t, weight, int(ignore_index), red, label_smoothing, need_grad, backend), (x, t, weight))
    if red == _NONE and input.dim() > 2:
        loss = loss.reshape(target.shape)
    return loss


cross_entropy = softmax_cross_entropy
