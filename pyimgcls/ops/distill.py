"""Distillation-loss family: ``distillation_loss``, the knowledge-distillation loss of a student against
a teacher and the labels, fused (the sibling of ops/softmax_xent.py, whose semantics it shares for
the cross-entropy term: label_smoothing, ignore_index, reduction; no class weights).

Per row i, with T the temperature and a = alpha,
    loss_i = a T^2 KL(softmax(teacher_i / T) || softmax(student_i / T)) + (1 - a) CE(student_i, target_i)
with the KL summed over classes and CE = F.cross_entropy(..., label_smoothing, reduction="none"). Rows
whose target is ignore_index contribute to neither term and are not counted: "mean" divides the sum by
the number of counted rows (PyTorch's batchmean over them; NaN when every row is ignored, as
F.cross_entropy's mean), "sum" sums, "none" returns [N] (0 for ignored rows).

One forward custom op, ``pyimgcls::distillation_loss``, reads both logits once and returns
    (loss, grad, denom)
with ``grad`` [N, C] = d(sum_i loss_i)/d student (one kernel launch on every backend) and ``denom`` the
mean's denominator. Its backward is the cross-entropy's own backward op,
``pyimgcls::softmax_cross_entropy_backward``: the same per-row scaling of a saved gradient (by the
incoming gradient, / denom for "mean", 0 for ignored rows), so a training step runs one launch per pass.

The teacher gets no gradient: it is detached (``teacher_logits.detach()``) before the op, as a teacher
is in distillation, so a teacher that requires grad is read but never receives a gradient. fp16/bf16
logits are computed in float32 (autocast: float32, PyTorch's AMP rule for log_softmax, kl_div and
cross_entropy); the teacher is converted to the student's dtype. Out-of-range targets: as
ops.softmax_cross_entropy (TargetOutOfRangeError on CPU tensors; NaN rows on CUDA tensors unless
PYIMGCLS_CHECK_TARGETS=1). Beyond first order (create_graph=True) the gradient is rebuilt from
differentiable PyTorch operations, as the cross-entropy does (_graph_grad).
"""
from __future__ import annotations

import math
import numbers

import torch

from .. import _backend, backends
from ..errors import ArgumentTypeError, ArgumentValueError
from . import _eager, reference
from . import softmax_xent as _sx
from ._checks import autocast_dtype, check_backend_dtype, check_float, check_same_device, check_tensor

_OP = "distillation_loss"
_FAMILY = "distill"
_NONE, _MEAN, _SUM = _sx._NONE, _sx._MEAN, _sx._SUM
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_TARGET_DTYPES = (torch.int64, torch.int32, torch.uint8)


def _raise_bad_target(target: torch.Tensor, row: int, C: int, ignore_index: int):
    value = int(target[row])
    raise _sx.TargetOutOfRangeError(
        f"{_OP}: argument 'target' has value {value} at index {row}, out of range for {C} classes "
        f"(expected 0 <= target < {C}, or target == ignore_index ({ignore_index})): Target {value} is out of bounds.")


# ----------------------------------------------------------------------------- backend kernels
# The kernels live in pyimgcls/backends/<backend>/distill.py (entry point ``forward``; contract in the
# cpu module's docstring). The backward is the softmax_xent family's.
def _forward(student, teacher, target, ignore_index, reduction, eps, temperature, alpha, need_grad, backend):
    """(loss, grad or empty, denom or empty) for logits [N, C] with unit class stride."""
    return backends.kernels(backend, _FAMILY).forward(student, teacher, target, ignore_index, reduction, eps,
                                                      temperature, alpha, need_grad)


@torch.library.custom_op("pyimgcls::distillation_loss", mutates_args=())
def _distill_op(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, ignore_index: int,
                reduction: int, label_smoothing: float, temperature: float, alpha: float, need_grad: bool,
                backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(student, teacher, target, ignore_index, reduction, label_smoothing, temperature, alpha,
                    need_grad, backend)


@_distill_op.register_fake
def _(student, teacher, target, ignore_index, reduction, label_smoothing, temperature, alpha, need_grad, backend):
    return _sx._fake_forward_outputs(student, reduction, need_grad, backend)


def _setup_context(ctx, inputs, output):
    _, grad, denom = output
    _eager.mark_auxiliary(ctx, grad, denom)
    ctx.save_for_backward(grad, inputs[2], denom)
    ctx.args, ctx.x_version = inputs, inputs[0]._version


def _backward(ctx, grad_loss, _grad_grad=None, _grad_denom=None):
    saved, target, denom = ctx.saved_tensors
    if saved.dim() != 2:
        raise RuntimeError(f"{_OP}: the forward ran without gradient tracking, so no gradient was saved")
    nones = (None,) * 9
    if not ctx.needs_input_grad[0]:
        return (None,) + nones
    s, t, _, ignore_index, reduction, eps, temperature, alpha, _, backend = ctx.args
    backward = _eager.pick(ctx, _sx._xent_backward_op, _sx._backward, _sx._backward_in_place)
    grad = backward(grad_loss, saved, target, denom, ignore_index, reduction, backend)
    if _eager.graph_mode(grad_loss, s):
        grad = _graph_grad(s, ctx.x_version, t, grad_loss, grad, target, ignore_index, reduction, eps, temperature,
                           alpha, denom)
    return (grad,) + nones


def _graph_grad(s, s_version, t, grad_loss, first_order, target, ignore_index, reduction, eps, temperature, alpha,
                denom):
    """``first_order`` (our kernels' values) carrying a graph for create_graph=True: per row
        g = a T (softmax(s/T) - softmax(t/T)) + (1 - a) (softmax(s) - (1-eps) onehot(y) - eps/C)
    times the reduction's scale, 0 for ignored rows, rebuilt from differentiable PyTorch operations and
    added as ``g - g.detach()`` (zero in value, exact in every derivative), as softmax_xent._graph_grad."""
    if s._version != s_version:
        raise RuntimeError(
            f"{_OP}: one of the variables needed for gradient computation has been modified by an inplace "
            "operation: argument 'student_logits' was changed in place after the forward pass")
    N, C = s.shape
    acc = torch.float64 if s.dtype == torch.float64 else torch.float32
    sa = s.to(acc)
    _, a, b = _sx._target_terms(target, None, ignore_index, eps, C, acc, s.device)
    valid = (target != ignore_index).to(acc)[:, None]
    g = (alpha * temperature * (torch.softmax(sa / temperature, 1) - torch.softmax(t.to(acc) / temperature, 1)) * valid
         + (1.0 - alpha) * (a[:, None] * torch.softmax(sa, 1) - b))
    go = grad_loss.to(acc)
    g = g * (go[:, None] if reduction == _NONE else (go / denom.to(acc) if reduction == _MEAN else go))
    g = g.to(first_order.dtype)
    return first_order.detach() + (g - g.detach())


_distill_op.register_autograd(_backward, setup_context=_setup_context)
# Plain eager mode (ops/_eager.py): only the student can require grad (inputs=1), the loss is the only
# result (results=1), as for the cross-entropy.
_EagerDistill = _eager.function(_forward, _setup_context, _backward, inputs=1, results=1, name=_OP)


# ----------------------------------------------------------------------------- public API
def _real(value, name: str) -> float:
    """A Python / NumPy real or a 0-D real tensor as float; anything else (bool included) is refused."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not (value.is_complex() or value.dtype == torch.bool):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{_OP}: argument '{name}' must be a float, got {type(value).__name__}")
    return float(value)


def _check_args(student, teacher, target, temperature, alpha, reduction, label_smoothing, ignore_index):
    """Every argument error, each naming the argument; returns the parsed scalars."""
    op = _OP
    check_tensor(student, "student_logits", op)
    check_tensor(teacher, "teacher_logits", op)
    check_tensor(target, "target", op)
    check_float(student, "student_logits", op)
    check_float(teacher, "teacher_logits", op)
    if target.dtype not in _TARGET_DTYPES:
        raise ArgumentTypeError(
            f"{op}: argument 'target' must hold class indices as int64 or int32, got {target.dtype}")
    if not isinstance(reduction, str) or reduction not in _sx.REDUCTIONS:
        raise ArgumentValueError(
            f"{op}: {reduction!r} is not a valid value for reduction: argument 'reduction' must be "
            "'none', 'mean' or 'sum'")
    if isinstance(ignore_index, torch.Tensor) and ignore_index.dim() == 0 and not ignore_index.is_floating_point():
        ignore_index = int(ignore_index.item())
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise ArgumentTypeError(f"{op}: argument 'ignore_index' must be an int, got {type(ignore_index).__name__}")
    temperature = _real(temperature, "temperature")
    alpha = _real(alpha, "alpha")
    label_smoothing = _real(label_smoothing, "label_smoothing")
    if not (temperature > 0.0 and math.isfinite(temperature)):
        raise ArgumentValueError(f"{op}: argument 'temperature' must be a finite number > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ArgumentValueError(f"{op}: argument 'alpha' must be between 0.0 and 1.0, got {alpha}")
    if label_smoothing > 1.0:   # as F.cross_entropy: the upper bound only, a negative value means none
        raise ArgumentValueError(
            f"{op}: argument 'label_smoothing' must be between 0.0 and 1.0, got {label_smoothing}")
    if student.dim() != 2:
        raise ArgumentValueError(
            f"{op}: argument 'student_logits' must be 2-D logits [N, C], got shape {tuple(student.shape)}")
    N, C = student.shape
    if C == 0:
        raise ArgumentValueError(f"{op}: argument 'student_logits' has no classes (shape {tuple(student.shape)})")
    if teacher.dim() != 2 or teacher.shape[1] != C:
        got = teacher.shape[1] if teacher.dim() == 2 else f"shape {tuple(teacher.shape)}"
        raise ArgumentValueError(
            f"{op}: argument 'teacher_logits' must have the student's class count {C} (logits [N, {C}]), "
            f"got {got}; teacher and student must be trained on the same classes")
    if teacher.shape[0] != N:
        raise ArgumentValueError(
            f"{op}: argument 'teacher_logits' has batch size {teacher.shape[0]} but 'student_logits' has {N}")
    if target.dim() != 1 or target.shape[0] != N:
        raise ArgumentValueError(
            f"{op}: argument 'target' has shape {tuple(target.shape)} but 'student_logits' of shape "
            f"{tuple(student.shape)} needs target shape ({N},)")
    check_same_device(student, "student_logits", teacher, "teacher_logits", op)
    check_same_device(student, "student_logits", target, "target", op)
    return int(ignore_index), temperature, alpha, max(label_smoothing, 0.0)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, *,
                      temperature: float = 4.0, alpha: float = 0.5, reduction: str = "mean",
                      label_smoothing: float = 0.0, ignore_index: int = -100) -> torch.Tensor:
    """Knowledge-distillation loss ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) +
    (1 - alpha) * cross_entropy(student, target, label_smoothing=..., ignore_index=...)`` for logits
    [N, C] and class-index targets [N] (see the module docstring for the reduction and ignored rows).
    Loss and gradient (w.r.t. the student only) come from one fused kernel per pass."""
    ignore_index, temperature, alpha, label_smoothing = _check_args(
        student_logits, teacher_logits, target, temperature, alpha, reduction, label_smoothing, ignore_index)
    student = student_logits
    teacher = teacher_logits.detach()
    device = student.device
    if autocast_dtype(device.type) is not None and student.dtype in _LOW_PRECISION:
        student = student.float()   # PyTorch's AMP rule for log_softmax / kl_div / cross_entropy: float32
    if teacher.dtype != student.dtype:
        teacher = teacher.to(student.dtype)
    backend = _backend.resolve(device, _OP)
    check_backend_dtype(backend, student, "student_logits", _OP)
    if backends.TABLE[backend].yardstick:
        return reference.distillation_loss(student, teacher, target, temperature, alpha, reduction,
                                           label_smoothing, ignore_index)
    if student.stride(1) != 1:
        student = student.contiguous()
    if teacher.stride(1) != 1:
        teacher = teacher.contiguous()
    t = target.to(torch.int32) if target.dtype == torch.uint8 else target
    if not t.is_contiguous():
        t = t.contiguous()
    need_grad = torch.is_grad_enabled() and student.requires_grad
    return _eager.call(_distill_op, _EagerDistill, _forward,
                       (student, teacher, t, ignore_index, _sx.REDUCTIONS[reduction], label_smoothing, temperature,
                        alpha, need_grad, backend), (student, teacher, t))
