"""BatchNorm family: ``batch_norm`` with a fused residual add and activation, forward and backward.

    out = act(batch_norm(input) + residual)
    act: None | "relu" | "relu6" | "silu" | "hardswish" | "sigmoid" | "hardsigmoid" (ops/activation.py:
    silu / hardswish / hardsigmoid with a gradient recorded run as batch_norm then ops.activation)

as ``act(F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps) +
residual)``. Inputs are [N, C, *] (4-D NCHW or channels_last, 2-D [N, C], 3-D [N, C, L]); every
kernel sees a [N, C, S] view, S = the product of the spatial sizes, in NCHW or NHWC storage.

Custom ops (the backend is resolved in Python and passed as a string, as in the other families):
    pyimgcls::batch_norm(x, weight, bias, residual, mean_in, var_in, training, eps, activation,
                         channels_last, backend) -> (out, save_mean, save_invstd, batch_var)
        training: statistics of the batch (one-pass shifted sums in float64 on CPU, Welford partials
        merged in a fixed order on GPU); eval: mean_in / var_in (the running statistics).
        save_mean / save_invstd are what the backward needs (also in eval mode, so a later in-place
        update of the running buffers cannot change an eval-mode gradient); batch_var is the biased
        batch variance (training) for the running update, empty in eval.
    pyimgcls::batch_norm_update_stats_(running_mean!, running_var!, mean, var, momentum, count, backend)
        in place: rm = (1-m) rm + m mean, rv = (1-m) rv + m var * count / (count - 1); declared in
        ``mutates_args`` so opcheck and torch.compile see the mutation. It is its own op because a
        custom op with autograd must be functional.
    pyimgcls::batch_norm_backward(grad, x, weight, out, mean, invstd, ...) -> (gx, gw, gb, gr)
        gp = grad masked by act'(out) (select semantics, as ATen's threshold/hardtanh backward);
        gb = sum gp; gw = sum gp * xhat; gx = w*invstd*(gp - gb/M - xhat*gw/M) in training,
        w*invstd*gp in eval; gr = gp (the residual's gradient; ``grad`` itself without activation).

Per-channel tensors (weight, bias, statistics) are computed in the accumulation dtype: float32, or
float64 for float64 input. bfloat16 CPU activations are read and written as bfloat16 by the kernels
(float32 sums); float16 CPU inputs are computed in float32 and returned in their dtype
(docs/architecture.md, "Dtypes"). The running buffers keep their own dtype.
"""
from __future__ import annotations

import math
import numbers

import torch

from .. import _backend, backends
from .._native import ACT_CODES
from ..errors import ArgumentTypeError, ArgumentValueError
from . import _alloc, _eager
from .activation import with_activation
from ._checks import (check_activation, check_backend_dtype, check_float, check_same_device, check_same_dtype,
                      check_tensor)
from ._layout import match_format as _match_format, suggests_channels_last



def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fmt(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def _canonical(t: torch.Tensor | None, channels_last: bool) -> torch.Tensor | None:
    """The one layout the kernels read: channels_last (4-D only) or contiguous."""
    if t is None:
        return None
    if channels_last and t.dim() == 4:
        return _match_format(t, torch.channels_last)
    return _match_format(t, torch.contiguous_format)


def _ncs(x: torch.Tensor) -> tuple[int, int, int]:
    return x.shape[0], x.shape[1], math.prod(x.shape[2:])


def _ptr(t: torch.Tensor | None) -> int:
    return t.data_ptr() if t is not None else 0


def _vec(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A per-channel vector as the kernels read it: contiguous, in the accumulation dtype (the tensor
    itself when it already is: two no-op tensor calls cost ~1.5 us, and a batch norm makes four)."""
    if t is None or (t.dtype == dtype and t.is_contiguous()):
        return t
    return t.to(dtype).contiguous()


# ----------------------------------------------------------------------------- backend kernels
# What every backend's kernels share (pyimgcls/backends/<backend>/batchnorm.py call these): the
# canonical layouts, the [N, C, S] view and the outputs, allocated in the layout the kernels write.
def fwd_outputs(x, residual, mean_in, var_in, training, channels_last):
    """(x, residual in the kernels' layout, channels_last of the 4-D view, (N, C, S), out, mean, var,
    invstd): mean / var are fresh buffers to fill in training, the running statistics (mean
    copied: the backward keeps it) in eval."""
    acc = _acc_dtype(x.dtype)
    x = _canonical(x, channels_last)
    residual = _canonical(residual, channels_last)
    cl = channels_last and x.dim() == 4
    N, C, S = _ncs(x)
    out = _alloc.empty(x.shape, x.dtype, x.device, memory_format=_fmt(cl))
    invstd = _alloc.empty((C,), acc, x.device)
    if training:
        mean = _alloc.empty((C,), acc, x.device)
        var = _alloc.empty((C,), acc, x.device)
    else:
        mean, var = _vec(mean_in, acc).clone(), _vec(var_in, acc)
    return x, residual, cl, (N, C, S), out, mean, var, invstd


def fwd_result(out, mean, invstd, var, training):
    """The forward op's outputs: batch_var is empty in eval."""
    return out, mean, invstd, (var if training else var.new_empty((0,)))


def stats_work_buffers(running_mean, running_var, acc):
    """The kernels update contiguous buffers of the statistics' dtype; other buffers (float16 modules,
    strided views) go through a float copy that :func:`write_back` returns."""
    return [None if t is None else (t if t.dtype == acc and t.is_contiguous() else t.to(acc).contiguous())
            for t in (running_mean, running_var)]


def write_back(running_mean, running_var, rm, rv):
    for orig, w in ((running_mean, rm), (running_var, rv)):
        if orig is not None and w is not orig:
            orig.copy_(w)


def bwd_outputs(grad, x, out, mean, channels_last, has_residual, act, needs_input, needs_weight, needs_bias):
    """(grad, x, out in the kernels' layout, channels_last of the view, (N, C, S), gx, gw, gb, gp)
    with None for the gradients not asked for."""
    acc = mean.dtype
    cl = channels_last and x.dim() == 4
    x = _canonical(x, channels_last)
    grad = _canonical(grad, channels_last)
    out = _canonical(out, channels_last)
    N, C, S = _ncs(x)
    fmt = _fmt(cl)
    gx = _alloc.empty(x.shape, x.dtype, x.device, memory_format=fmt) if needs_input else None
    gw = _alloc.empty((C,), acc, x.device) if needs_weight else None
    gb = _alloc.empty((C,), acc, x.device) if needs_bias else None
    gp = _alloc.empty(x.shape, x.dtype, x.device, memory_format=fmt) if (has_residual and act != 0) else None
    return grad, x, out, cl, (N, C, S), gx, gw, gb, gp


def bwd_result(x, mean, gx, gw, gb, gp):
    """The backward op's outputs: an empty tensor for each gradient not asked for."""
    empty = x.new_empty((0,))
    return (gx if gx is not None else empty, gw if gw is not None else mean.new_empty((0,)),
            gb if gb is not None else mean.new_empty((0,)), gp if gp is not None else empty)


def _run_fwd(x, weight, bias, residual, mean_in, var_in, training, eps, act, channels_last, backend):
    """(out, save_mean, save_invstd, batch_var) — see the module docstring."""
    return backends.kernels(backend, "batchnorm").batch_norm_fwd(x, weight, bias, residual, mean_in, var_in,
                                                                 training, eps, act, channels_last)


def _run_update(running_mean, running_var, mean, var, momentum, count, backend):
    if count == 0:  # an empty batch leaves the running statistics untouched, as ATen's CPU kernel
        return
    backends.kernels(backend, "batchnorm").update_stats(running_mean, running_var, mean, var, momentum, count)


def _run_bwd(grad, x, weight, out, mean, invstd, training, act, channels_last, has_residual, needs_input,
             needs_weight, needs_bias, backend):
    return backends.kernels(backend, "batchnorm").batch_norm_bwd(
        grad, x, weight, out, mean, invstd, training, act, channels_last, has_residual, needs_input, needs_weight,
        needs_bias)


# ----------------------------------------------------------------------------- custom ops
def _fake_like(x: torch.Tensor, channels_last: bool, dtype=None) -> torch.Tensor:
    fmt = _fmt(channels_last and x.dim() == 4)
    return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device, memory_format=fmt)


@torch.library.custom_op("pyimgcls::batch_norm", mutates_args=())
def _batch_norm_op(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   residual: torch.Tensor | None, mean_in: torch.Tensor | None, var_in: torch.Tensor | None,
                   training: bool, eps: float, activation: int, channels_last: bool,
                   backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _run_fwd(x, weight, bias, residual, mean_in, var_in, training, eps, activation, channels_last, backend)


@_batch_norm_op.register_fake
def _(x, weight, bias, residual, mean_in, var_in, training, eps, activation, channels_last, backend):
    acc = _acc_dtype(x.dtype)
    C = x.shape[1]
    vec = x.new_empty((C,), dtype=acc)
    return (_fake_like(x, channels_last), vec, x.new_empty((C,), dtype=acc),
            x.new_empty((C,) if training else (0,), dtype=acc))


@torch.library.custom_op("pyimgcls::batch_norm_update_stats_", mutates_args=("running_mean", "running_var"))
def _batch_norm_update_stats_op(running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                                mean: torch.Tensor, var: torch.Tensor, momentum: float, count: int,
                                backend: str) -> None:
    _run_update(running_mean, running_var, mean, var, momentum, count, backend)


@_batch_norm_update_stats_op.register_fake
def _(running_mean, running_var, mean, var, momentum, count, backend):
    return None


@torch.library.custom_op("pyimgcls::batch_norm_backward", mutates_args=())
def _batch_norm_backward_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
                            out: torch.Tensor | None, mean: torch.Tensor, invstd: torch.Tensor, training: bool,
                            activation: int, channels_last: bool, has_residual: bool, needs_input: bool,
                            needs_weight: bool, needs_bias: bool,
                            backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _run_bwd(grad, x, weight, out, mean, invstd, training, activation, channels_last, has_residual,
                    needs_input, needs_weight, needs_bias, backend)


@_batch_norm_backward_op.register_fake
def _(grad, x, weight, out, mean, invstd, training, activation, channels_last, has_residual, needs_input,
      needs_weight, needs_bias, backend):
    C = x.shape[1]
    empty = x.new_empty((0,))
    gx = _fake_like(x, channels_last) if needs_input else empty
    gw = mean.new_empty((C,) if needs_weight else (0,))
    gb = mean.new_empty((C,) if needs_bias else (0,))
    gr = _fake_like(x, channels_last) if (has_residual and activation != 0) else empty
    return gx, gw, gb, gr


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, mean_in, var_in, training, eps, activation, channels_last, backend = inputs
    out, mean, invstd, var = output
    ctx.conf = (training, activation, channels_last, backend)
    ctx.has_bias, ctx.has_residual, ctx.has_weight = bias is not None, residual is not None, weight is not None
    ctx.mark_non_differentiable(mean, invstd, var)
    ctx.save_for_backward(x, weight, out if activation != 0 else None, mean, invstd)


def _backward(ctx, grad, _gm, _gi, _gv):
    x, weight, out, mean, invstd = ctx.saved_tensors
    training, activation, channels_last, backend = ctx.conf
    needs_input, needs_weight, needs_bias, needs_res = ctx.needs_input_grad[:4]
    needs_weight = needs_weight and ctx.has_weight
    needs_bias = needs_bias and ctx.has_bias
    has_res = needs_res and ctx.has_residual
    gx = gw = gb = gr = None
    if needs_input or needs_weight or needs_bias or (has_res and activation != 0):
        backward = _eager.pick(ctx, _batch_norm_backward_op, _run_bwd)
        gx, gw, gb, gr = backward(grad, x, weight, out, mean, invstd, training, activation, channels_last, has_res,
                                  needs_input, needs_weight, needs_bias, backend)
    if has_res and activation == 0:
        gr = grad
    grads = (gx if needs_input else None, gw if needs_weight else None, gb if needs_bias else None,
             gr if has_res else None)
    # Double backward is not supported here: under create_graph=True the gradients are tied to the real
    # inputs through a node that raises when differentiated (ops/_eager.py).
    grads = _eager.not_twice_differentiable("pyimgcls.batch_norm", grads, (grad, x, weight))
    return (*grads, None, None, None, None, None, None, None)


_batch_norm_op.register_autograd(_backward, setup_context=_setup_context)
# plain eager mode: the same kernels through a bare autograd.Function (ops/_eager.py has the numbers)
_EagerBatchNorm = _eager.function(_run_fwd, _setup_context, _backward)


# ----------------------------------------------------------------------------- public API
def _check_vector(t, name: str, C: int, input: torch.Tensor, op: str):
    if t is None:
        return
    check_tensor(t, name, op)
    if t.device != input.device:
        raise ArgumentValueError(f"{op}: argument '{name}' is on {t.device} but 'input' is on {input.device}; "
                                 "expected all tensors on the same device")
    if not t.is_floating_point():
        raise ArgumentTypeError(f"{op}: argument '{name}' must be a floating tensor, got {t.dtype}")
    if t.numel() != C:
        raise ArgumentValueError(f"{op}: argument '{name}' should contain {C} elements not {t.numel()} "
                                 f"(input has {C} channels, shape {tuple(input.shape)})")


def _check_number(v, name: str, op: str) -> float:
    """A float argument parsed as PyTorch's binding parses one (measured on torch 2.13): Python
    bool / int / float, NumPy bool / integer / floating scalars, or a 0-D tensor that does not
    require grad (its value; a complex one only with a zero imaginary part). Anything else
    (Fraction, Decimal, NumPy arrays, tensors with dimensions) is a TypeError naming the argument."""
    if isinstance(v, torch.Tensor):
        if v.dim() != 0 or v.requires_grad:
            raise ArgumentTypeError(f"{op}: argument '{name}' must be a float, got a {v.dim()}-D Tensor"
                                    + (" that requires grad" if v.requires_grad else ""))
        if v.is_complex():
            if v.imag.item() != 0:
                raise ArgumentValueError(f"{op}: argument '{name}' = {v.item()} cannot be converted to a float")
            v = v.real
        return float(v.item())
    if isinstance(v, (int, float)) or (type(v).__module__ == "numpy" and isinstance(v, numbers.Real)) or (
            type(v).__name__ == "bool" and type(v).__module__ == "numpy"):
        try:
            return float(v)
        except OverflowError:  # as PyTorch (an int beyond the float range), naming the argument
            raise OverflowError(f"{op}: argument '{name}' is too large to convert to a float") from None
    raise ArgumentTypeError(f"{op}: argument '{name}' must be a float, got {type(v).__name__}")


def _check_eps(eps, training: bool, op: str) -> float:
    """F.batch_norm's rule: eps > 0 in training, eps >= 0 in eval (ValueError), compared before the
    binding parses the value; NaN compares false and is accepted, as there."""
    if isinstance(eps, torch.Tensor) and eps.is_complex():
        # PyTorch's comparison fails first: NotImplementedError ("le_cpu" not implemented for complex)
        raise NotImplementedError(f"{op}: argument 'eps' must be real, got a {eps.dtype} tensor")
    try:
        bad = bool(eps <= 0.0) if training else bool(eps < 0.0)
    except Exception:  # not comparable with a float: the parse below names it
        bad = False
    if bad:
        got = eps.detach().item() if isinstance(eps, torch.Tensor) else float(eps)
        raise ArgumentValueError(f"{op}: argument 'eps' must be " + ("positive during training" if training
                                 else "non-negative") + f", got {got}")
    return _check_number(eps, "eps", op)


def _values_per_channel(shape) -> int:
    """F.batch_norm's _verify_batch_size count: the product of every size except dim 1 (channels),
    so [1, 0] counts 1 (refused in training) and [0] counts 0."""
    return math.prod(shape[:1]) * math.prod(shape[2:])


def _empty_batch_norm(input, running_mean, running_var, weight, bias, residual, op):
    """ATen returns an empty input before any other check (running statistics of any size or dtype,
    an input of any dtype, rank >= 1) as ``input.clone() * weight[0] + bias[0]``, and leaves the
    running statistics untouched; the same here, so values, dtype, strides and autograd agree."""
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if t is not None:
            check_tensor(t, name, op)
    out = input.clone()
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dim() == 0 or t.shape[0] == 0):
            # PyTorch fails here too (IndexError from t[0]); say which argument
            raise ArgumentValueError(f"{op}: argument '{name}' of shape {tuple(t.shape)} has no element [0], "
                                     "which PyTorch reads for an empty input")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            try:
                out = out * t[0] if name == "weight" else out + t[0]
            except RuntimeError as e:  # a [0] row that does not broadcast: PyTorch fails the same way
                raise ArgumentValueError(f"{op}: argument '{name}' of shape {tuple(t.shape)}: {e}") from None
    if residual is not None:
        check_tensor(residual, "residual", op)
        if residual.shape != input.shape:
            raise ArgumentValueError(f"{op}: argument 'residual' has shape {tuple(residual.shape)} but argument "
                                     f"'input' has shape {tuple(input.shape)}; they must match")
        out = out + residual
    return out


def batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, activation: str | None = None,
               residual: torch.Tensor | None = None) -> torch.Tensor:
    """``act(F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps) +
    residual)`` with the normalisation, residual add and activation in one pass.

    input [N, C, *] (4-D NCHW or channels_last, 2-D [N, C], ...); running_mean / running_var / weight /
    bias [C] or None; residual: input's shape or None; activation None | "relu" | "relu6" | "silu" |
    "hardswish" | "sigmoid" | "hardsigmoid".
    training=True normalises with the batch statistics (biased variance) and, when running_mean /
    running_var are given, updates them in place with ``momentum`` and the unbiased variance;
    training=False normalises with the running statistics (which must then be given, as in PyTorch).
    The output has the input's memory format (channels_last stays channels_last)."""
    op = "batch_norm"
    check_tensor(input, "input", op)
    check_activation(activation, op)
    if not isinstance(training, bool):
        raise ArgumentTypeError(f"{op}: argument 'training' must be bool, got {type(training).__name__}")
    # F.batch_norm's order: the values-per-channel check (training), eps's range, then the binding's
    # parse of momentum / eps, then ATen's early return of an empty input.
    if training and _values_per_channel(input.shape) == 1:
        raise ArgumentValueError(f"{op}: Expected more than 1 value per channel when training, got input size "
                                 f"{input.shape} (argument 'input')")
    eps = _check_eps(eps, training, op)
    momentum = _check_number(momentum, "momentum", op)
    if input.dim() >= 1 and input.numel() == 0:
        return _empty_batch_norm(input, running_mean, running_var, weight, bias, residual, op)
    if input.dim() < 2:
        raise ArgumentValueError(f"{op}: argument 'input' must have at least 2 dimensions [N, C, *], got "
                                 f"{input.dim()}-D of shape {tuple(input.shape)}")
    C = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        _check_vector(t, name, C, input, op)
    if not training:
        if running_mean is None:
            raise ArgumentValueError(f"{op}: argument 'running_mean' must be defined in evaluation mode "
                                     "(training=False)")
        if running_var is None:
            raise ArgumentValueError(f"{op}: argument 'running_var' must be defined in evaluation mode "
                                     "(training=False)")
    # No autocast cast: under AMP PyTorch runs batch_norm in the input's dtype (it is on no cast list).
    check_float(input, "input", op)
    if residual is not None:
        check_tensor(residual, "residual", op)
        check_float(residual, "residual", op)
        check_same_device(input, "input", residual, "residual", op)
        check_same_dtype(input, "input", residual, "residual", op)
    backend = _backend.resolve(input.device, op)
    check_backend_dtype(backend, input, "input", op)
    if residual is not None and residual.shape != input.shape:
        raise ArgumentValueError(f"{op}: argument 'residual' has shape {tuple(residual.shape)} but argument 'input' "
                                 f"has shape {tuple(input.shape)}; they must match")
    acc = _acc_dtype(input.dtype)
    channels_last = input.dim() == 4 and suggests_channels_last(input)
    # (a dtype test first: a no-op .to() costs ~0.8 us, and DenseNet-121 has 120 batch norms a pass)
    w = weight if weight is None or weight.dtype == acc else weight.to(acc)
    b = bias if bias is None or bias.dtype == acc else bias.to(acc)
    mean_in = None if training else running_mean.detach()
    var_in = None if training else running_var.detach()
    tensors = (input, w, b, residual)
    stats = []

    def layer(code):
        args = (input, w, b, residual, mean_in, var_in, training, eps, code, channels_last, backend)
        y, m, _invstd, v = _eager.call(_batch_norm_op, _EagerBatchNorm, _run_fwd, args, tensors)
        stats.extend((m, v))
        return y
    out = with_activation(layer, ACT_CODES[activation], backend, tensors)
    mean, var = stats
    if training and (running_mean is not None or running_var is not None):
        count = input.numel() // C if C else 0
        if _eager.plain_eager(input, running_mean, running_var):
            with torch.no_grad():
                _run_update(running_mean, running_var, mean, var, momentum, count, backend)
        else:
            _batch_norm_update_stats_op(running_mean, running_var, mean, var, momentum, count, backend)
    return out
