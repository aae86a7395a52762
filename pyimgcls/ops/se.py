"""Squeeze-and-excitation family: the SE block as one op, and stochastic depth (drop path).

    squeeze_excitation:  y = x * gate(W2 act(W1 mean_hw(x) + b1) + b2)
        = torchvision.ops.SqueezeExcitation's x * scale_activation(fc2(activation(fc1(avgpool(x))))),
        act "relu" | "silu", gate "sigmoid" | "hardsigmoid"; x [N, C, H, W] (NCHW or channels_last),
        w1 [R, C, 1, 1] (or [R, C]), b1 [R] | None, w2 [C, R, 1, 1] (or [C, R]), b2 [C] | None.
    stochastic_depth:    torchvision.ops.stochastic_depth(input, p, mode, training)
    drop_path_add:       residual + stochastic_depth(x, p, mode, training), in one pass

Custom ops (the backend is resolved in Python and passed as a string, as in the other families):
    pyimgcls::squeeze_excitation(x, w1, b1, w2, b2, act, gate, channels_last, backend)
        -> (y, pooled, hidden, z)
        pooled [N, C] = mean of x over H, W; hidden [N, R] = fc1's output before the activation; z [N, C] =
        fc2's output before the gate: the backward's inputs (non-differentiable outputs). Weights, pooled,
        hidden and z are in the accumulation dtype (float32; float64 for float64 x): the public function
        casts the weights (a differentiable cast, so their gradients reach the parameters in their dtype).
    pyimgcls::squeeze_excitation_backward(grad, x, w1, w2, pooled, hidden, z, act, gate, channels_last,
                                          needs_input, needs_w1, needs_b1, needs_w2, needs_b2, backend)
        -> (grad_input, gw1, gb1, gw2, gb2)     (empty tensors for the gradients not asked for)
        gz = (sum_hw grad * x) gate'(z); gh = (gz W2) act'(hidden); grad_input = grad gate(z) + (gh W1) / HW;
        gW2 = gz^T act(hidden), gb2 = sum_n gz; gW1 = gh^T pooled, gb1 = sum_n gh.
        Double backward raises (ops/_eager.py: not_twice_differentiable).
    pyimgcls::drop_path(x, scale, residual, channels_last, backend) -> out
        out[n] = x[n] * scale[n] (+ residual[n]) on x viewed as [len(scale), M]; its backward is the same
        op on the gradient (grad_x = drop_path(grad, scale)), grad_residual = grad, so it is
        differentiable to any order.

Stochastic depth draws its noise exactly as torchvision does (``torch.empty(size, dtype, device)
.bernoulli_(1 - p)``, divided by 1 - p when that is > 0; size [N, 1, ...] for "row", [1, ...] for
"batch"), so for the same torch seed it drops the same samples and returns the same values; the kernel
receives that per-sample scale vector. drop_path_add rounds once (x * s + residual in float32 for
float16 / bfloat16) where torchvision's two ops round twice.

Autocast: the op runs in x's dtype (the scale is applied to x as torchvision's ``x * scale`` does, whose
result has x's dtype when x is already in the autocast dtype, as after an autocast convolution); the
weights are cast to the accumulation dtype. Outside autocast the weights must have x's dtype.
"""
from __future__ import annotations

import numbers

import torch

from .. import _backend, backends
from ..errors import ArgumentTypeError, ArgumentValueError
from . import _alloc, _eager
from ._checks import autocast_dtype, check_backend_dtype, check_float, check_same_device, check_same_dtype, check_tensor
from ._layout import match_format, suggests_channels_last

SE_ACT_CODES = {"relu": 0, "silu": 1}
SE_GATE_CODES = {"sigmoid": 0, "hardsigmoid": 1}


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fmt(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def ptr(t: torch.Tensor | None) -> int:
    return t.data_ptr() if t is not None else 0


# ----------------------------------------------------------------------------- backend kernels
# What every backend's kernels share (pyimgcls/backends/<backend>/se.py call these): the canonical
# layout, the sizes and the outputs, allocated in the layout the kernels write.
def se_fwd_outputs(x, w1, channels_last):
    """(x in the kernels' layout, (N, C, HW, R), y, pooled, hidden, z)."""
    x = match_format(x, _fmt(channels_last))
    N, C, H, W = x.shape
    R = w1.shape[0]
    acc = w1.dtype
    y = _alloc.empty(x.shape, x.dtype, x.device, memory_format=_fmt(channels_last))
    pooled = _alloc.empty((N, C), acc, x.device)
    hidden = _alloc.empty((N, R), acc, x.device)
    z = _alloc.empty((N, C), acc, x.device)
    return x, (N, C, H * W, R), y, pooled, hidden, z


def se_bwd_outputs(grad, x, w1, channels_last, needs_input, needs_w1, needs_b1, needs_w2, needs_b2):
    """(grad, x in the kernels' layout, (N, C, HW, R), gx, gw1, gb1, gw2, gb2) with None for the
    gradients not asked for."""
    fmt = _fmt(channels_last)
    x = match_format(x, fmt)
    grad = match_format(grad, fmt)
    N, C, H, W = x.shape
    R = w1.shape[0]
    acc = w1.dtype
    gx = _alloc.empty(x.shape, x.dtype, x.device, memory_format=fmt) if needs_input else None
    gw1 = _alloc.empty((R, C), acc, x.device) if needs_w1 else None
    gb1 = _alloc.empty((R,), acc, x.device) if needs_b1 else None
    gw2 = _alloc.empty((C, R), acc, x.device) if needs_w2 else None
    gb2 = _alloc.empty((C,), acc, x.device) if needs_b2 else None
    return grad, x, (N, C, H * W, R), gx, gw1, gb1, gw2, gb2


def se_bwd_result(x, w1, gx, gw1, gb1, gw2, gb2):
    """The backward op's outputs: a fresh empty tensor for each gradient not asked for (outputs of a
    custom op must not alias each other)."""
    return (gx if gx is not None else x.new_empty((0,)),
            *(g if g is not None else w1.new_empty((0,)) for g in (gw1, gb1, gw2, gb2)))


def drop_path_outputs(x, scale, residual, channels_last):
    """(x, residual in the kernels' layout, (N, M) rows, out): N = len(scale), M = x.numel() // N."""
    fmt = _fmt(channels_last)
    x = match_format(x, fmt)
    residual = match_format(residual, fmt)
    N = scale.shape[0]
    M = x.numel() // N if N else 0
    out = _alloc.empty(x.shape, x.dtype, x.device, memory_format=fmt)
    return x, residual, (N, M), out


def _run_fwd(x, w1, b1, w2, b2, act, gate, channels_last, backend):
    return backends.kernels(backend, "se").se_fwd(x, w1, b1, w2, b2, act, gate, channels_last)


def _run_bwd(grad, x, w1, w2, pooled, hidden, z, act, gate, channels_last, needs_input, needs_w1, needs_b1, needs_w2,
             needs_b2, backend):
    return backends.kernels(backend, "se").se_bwd(grad, x, w1, w2, pooled, hidden, z, act, gate, channels_last,
                                                  needs_input, needs_w1, needs_b1, needs_w2, needs_b2)


def _run_drop_path(x, scale, residual, channels_last, backend):
    return backends.kernels(backend, "se").drop_path(x, scale, residual, channels_last)


# ----------------------------------------------------------------------------- custom ops
def _fake_like(x, channels_last):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_fmt(channels_last))


@torch.library.custom_op("pyimgcls::squeeze_excitation", mutates_args=())
def _se_op(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None,
           act: int, gate: int, channels_last: bool,
           backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _run_fwd(x, w1, b1, w2, b2, act, gate, channels_last, backend)


@_se_op.register_fake
def _(x, w1, b1, w2, b2, act, gate, channels_last, backend):
    N, C = x.shape[:2]
    R = w1.shape[0]
    return (_fake_like(x, channels_last), w1.new_empty((N, C)), w1.new_empty((N, R)), w1.new_empty((N, C)))


@torch.library.custom_op("pyimgcls::squeeze_excitation_backward", mutates_args=())
def _se_backward_op(grad: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, pooled: torch.Tensor,
                    hidden: torch.Tensor, z: torch.Tensor, act: int, gate: int, channels_last: bool,
                    needs_input: bool, needs_w1: bool, needs_b1: bool, needs_w2: bool, needs_b2: bool,
                    backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _run_bwd(grad, x, w1, w2, pooled, hidden, z, act, gate, channels_last, needs_input, needs_w1, needs_b1,
                    needs_w2, needs_b2, backend)


@_se_backward_op.register_fake
def _(grad, x, w1, w2, pooled, hidden, z, act, gate, channels_last, needs_input, needs_w1, needs_b1, needs_w2,
      needs_b2, backend):
    R, C = w1.shape
    return (_fake_like(x, channels_last) if needs_input else x.new_empty((0,)),
            w1.new_empty((R, C) if needs_w1 else (0,)), w1.new_empty((R,) if needs_b1 else (0,)),
            w1.new_empty((C, R) if needs_w2 else (0,)), w1.new_empty((C,) if needs_b2 else (0,)))


def _se_setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, act, gate, channels_last, backend = inputs
    _y, pooled, hidden, z = output
    ctx.conf = (act, gate, channels_last, backend)
    ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
    _eager.mark_auxiliary(ctx, pooled, hidden, z)
    ctx.save_for_backward(x, w1, w2, pooled, hidden, z)


def _se_backward(ctx, grad, _gp=None, _gh=None, _gz=None):
    x, w1, w2, pooled, hidden, z = ctx.saved_tensors
    act, gate, channels_last, backend = ctx.conf
    ni, nw1, nb1, nw2, nb2 = ctx.needs_input_grad[:5]
    nb1, nb2 = nb1 and ctx.has_b1, nb2 and ctx.has_b2
    grads = (None,) * 5
    if ni or nw1 or nb1 or nw2 or nb2:
        backward = _eager.pick(ctx, _se_backward_op, _run_bwd)
        gx, gw1, gb1, gw2, gb2 = backward(grad, x, w1, w2, pooled, hidden, z, act, gate, channels_last, ni, nw1, nb1,
                                          nw2, nb2, backend)
        grads = (gx if ni else None, gw1 if nw1 else None, gb1 if nb1 else None, gw2 if nw2 else None,
                 gb2 if nb2 else None)
    # Double backward is not supported: under create_graph=True the gradients are tied to the real inputs
    # through a node that raises when differentiated (ops/_eager.py).
    grads = _eager.not_twice_differentiable("pyimgcls.squeeze_excitation", grads, (grad, x, w1, w2))
    return (*grads, None, None, None, None)


_se_op.register_autograd(_se_backward, setup_context=_se_setup_context)
# plain eager mode: the same kernels through a bare autograd.Function (ops/_eager.py has the numbers);
# the eager Function returns y only (pooled / hidden / z are kept out of autograd)
_EagerSE = _eager.function(_run_fwd, _se_setup_context, _se_backward, results=1)


@torch.library.custom_op("pyimgcls::drop_path", mutates_args=())
def _drop_path_op(x: torch.Tensor, scale: torch.Tensor, residual: torch.Tensor | None, channels_last: bool,
                  backend: str) -> torch.Tensor:
    return _run_drop_path(x, scale, residual, channels_last, backend)


@_drop_path_op.register_fake
def _(x, scale, residual, channels_last, backend):
    return _fake_like(x, channels_last)


def _dp_setup_context(ctx, inputs, output):
    x, scale, residual, channels_last, backend = inputs
    ctx.conf = (channels_last, backend)
    ctx.has_residual = residual is not None
    ctx.save_for_backward(scale)


def _dp_backward(ctx, grad):
    scale, = ctx.saved_tensors
    channels_last, backend = ctx.conf
    gx = gr = None
    if ctx.needs_input_grad[0]:
        # the same op on the gradient: differentiable again (through grad) under create_graph=True
        gx = _drop_path_call(grad, scale, None, channels_last, backend)
    if ctx.has_residual and ctx.needs_input_grad[2]:
        gr = grad
    return gx, None, gr, None, None


_drop_path_op.register_autograd(_dp_backward, setup_context=_dp_setup_context)
_EagerDropPath = _eager.function(_run_drop_path, _dp_setup_context, _dp_backward)


def _drop_path_call(x, scale, residual, channels_last, backend):
    return _eager.call(_drop_path_op, _EagerDropPath, _run_drop_path, (x, scale, residual, channels_last, backend),
                       (x, scale, residual))


# ----------------------------------------------------------------------------- public API: SE
def _check_choice(v, name, choices, op):
    if not isinstance(v, str) or v not in choices:
        raise ArgumentValueError(f"{op}: argument '{name}' must be one of {tuple(choices)}, got {v!r}")
    return choices[v]


def _check_weight(t, name, rows, cols, op, rows_what, cols_what):
    """[rows, cols, 1, 1] (a 1x1 convolution's weight) or [rows, cols]; returns the [rows, cols] view."""
    check_tensor(t, name, op)
    check_float(t, name, op)
    if tuple(t.shape) not in ((rows, cols, 1, 1), (rows, cols)):
        raise ArgumentValueError(f"{op}: argument '{name}' must have shape [{rows_what}, {cols_what}, 1, 1] = "
                                 f"[{rows}, {cols}, 1, 1] (or [{rows}, {cols}]), got {tuple(t.shape)}")
    return t.reshape(rows, cols)


def _check_bias(t, name, n, op, what):
    if t is None:
        return None
    check_tensor(t, name, op)
    check_float(t, name, op)
    if tuple(t.shape) != (n,):
        raise ArgumentValueError(f"{op}: argument '{name}' must have shape [{what}] = [{n}], got {tuple(t.shape)}")
    return t


def squeeze_excitation(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                       b2: torch.Tensor | None, activation: str = "relu", gate: str = "sigmoid") -> torch.Tensor:
    """``x * gate(conv1x1(act(conv1x1(adaptive_avg_pool2d(x, 1), w1, b1)), w2, b2))`` as one op with its
    own backward (torchvision.ops.SqueezeExcitation's computation; module docstring).

    x [N, C, H, W] (NCHW or channels_last; the output has x's format as PyTorch's ``x * scale``),
    w1 [R, C, 1, 1], b1 [R] or None, w2 [C, R, 1, 1], b2 [C] or None, activation "relu" | "silu",
    gate "sigmoid" | "hardsigmoid"."""
    op = "squeeze_excitation"
    check_tensor(x, "x", op)
    check_float(x, "x", op)
    act = _check_choice(activation, "activation", SE_ACT_CODES, op)
    gate_code = _check_choice(gate, "gate", SE_GATE_CODES, op)
    if x.dim() != 4:
        raise ArgumentValueError(f"{op}: argument 'x' must be 4-D [N, C, H, W], got {x.dim()}-D of shape "
                                 f"{tuple(x.shape)}")
    N, C, H, W = x.shape
    if C == 0 or H == 0 or W == 0:
        raise ArgumentValueError(f"{op}: argument 'x' of shape {tuple(x.shape)} has an empty channel or spatial "
                                 "dimension (the average pool needs at least one value per channel)")
    check_tensor(w1, "w1", op)
    if w1.dim() not in (2, 4) or w1.shape[0] == 0:
        raise ArgumentValueError(f"{op}: argument 'w1' must have shape [squeeze_channels, {C}, 1, 1] with "
                                 f"squeeze_channels > 0, got {tuple(w1.shape)}")
    R = w1.shape[0]
    w1m = _check_weight(w1, "w1", R, C, op, "squeeze_channels", "C")
    w2m = _check_weight(w2, "w2", C, R, op, "C", "squeeze_channels")
    b1 = _check_bias(b1, "b1", R, op, "squeeze_channels")
    b2 = _check_bias(b2, "b2", C, op, "C")
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if t is not None:
            check_same_device(x, "x", t, name, op)
    if autocast_dtype(x.device.type) is None:
        for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
            if t is not None:
                check_same_dtype(x, "x", t, name, op)
    backend = _backend.resolve(x.device, op)
    check_backend_dtype(backend, x, "x", op)
    acc = acc_dtype(x.dtype)
    # the kernels read contiguous [R, C] / [C, R] / [R] / [C] arrays (a sliced weight is a strided view)
    w1m, w2m = w1m.to(acc).contiguous(), w2m.to(acc).contiguous()
    b1 = None if b1 is None else b1.to(acc).contiguous()
    b2 = None if b2 is None else b2.to(acc).contiguous()
    channels_last = suggests_channels_last(x)
    if N == 0:  # nothing to pool: an empty result of x's format, connected to the inputs for autograd
        return x.clone(memory_format=_fmt(channels_last))
    args = (x, w1m, b1, w2m, b2, act, gate_code, channels_last, backend)
    return _eager.call(_se_op, _EagerSE, _run_fwd, args, (x, w1m, b1, w2m, b2))


# ----------------------------------------------------------------------------- public API: stochastic depth
def _check_p_mode(p, mode, op):
    """torchvision's checks, in its order and with its messages (ValueError), naming the argument."""
    if isinstance(p, bool) or not isinstance(p, (numbers.Real, torch.Tensor)):
        raise ArgumentTypeError(f"{op}: argument 'p' must be a float, got {type(p).__name__}")
    if p < 0.0 or p > 1.0:
        raise ArgumentValueError(f"drop probability has to be between 0 and 1, but got {p} (argument 'p' of {op})")
    if mode not in ["batch", "row"]:
        raise ArgumentValueError(f"mode has to be either 'batch' or 'row', but got {mode} (argument 'mode' of {op})")


def _noise_scale(x, p, mode):
    """The per-sample scale as torchvision draws it (same generator calls, so the same values for
    the same seed): [N] for "row", [1] for "batch"."""
    survival_rate = 1.0 - p
    size = [x.shape[0]] + [1] * (x.ndim - 1) if mode == "row" else [1] * x.ndim
    noise = torch.empty(size, dtype=x.dtype, device=x.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return noise.reshape(-1).to(acc_dtype(x.dtype))


def _drop_path_run(x, scale, residual, op):
    backend = _backend.resolve(x.device, op)
    check_backend_dtype(backend, x, "input" if residual is None else "x", op)
    shape = x.shape
    if x.dim() == 0:  # a 0-D input is one sample
        x = x.reshape(1)
        residual = None if residual is None else residual.reshape(1)
    # the kernels read rows of x as it lies in memory: channels_last stays, anything else is made contiguous
    channels_last = suggests_channels_last(x)
    out = _drop_path_call(x, scale, residual, channels_last, backend)
    return out.reshape(shape) if out.shape != shape else out


def stochastic_depth(input: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """``torchvision.ops.stochastic_depth``: each sample ("row") or the whole batch ("batch") is zeroed
    with probability ``p`` and the survivors are scaled by 1 / (1 - p). Identity (``input`` itself) when
    not training or p == 0; zeros (``input * 0``) when p == 1. The random draw is torchvision's, from
    torch's default generator, so ``torch.manual_seed`` reproduces it; the scaling runs in our kernel."""
    op = "stochastic_depth"
    _check_p_mode(p, mode, op)
    check_tensor(input, "input", op)
    if not training or p == 0.0:
        return input
    check_float(input, "input", op)
    if mode == "row" and input.dim() == 0:
        raise ArgumentValueError(f"{op}: argument 'input' must have a batch dimension in mode 'row', got a 0-D tensor")
    scale = _noise_scale(input, p, mode)
    return _drop_path_run(input, scale, None, op)


def drop_path_add(x: torch.Tensor, residual: torch.Tensor, p: float, mode: str = "row",
                  training: bool = True) -> torch.Tensor:
    """``residual + stochastic_depth(x, p, mode, training)`` in one kernel pass (the residual block's
    ``out = shortcut + drop_path(branch)``), with the same random draw as :func:`stochastic_depth`.
    When not training or p == 0 it is ``x + residual`` (one pass, scale 1). The output has x's format."""
    op = "drop_path_add"
    _check_p_mode(p, mode, op)
    check_tensor(x, "x", op)
    check_tensor(residual, "residual", op)
    check_float(x, "x", op)
    check_float(residual, "residual", op)
    check_same_device(x, "x", residual, "residual", op)
    check_same_dtype(x, "x", residual, "residual", op)
    if residual.shape != x.shape:
        raise ArgumentValueError(f"{op}: argument 'residual' has shape {tuple(residual.shape)} but argument 'x' has "
                                 f"shape {tuple(x.shape)}; they must match")
    if mode == "row" and x.dim() == 0:
        raise ArgumentValueError(f"{op}: argument 'x' must have a batch dimension in mode 'row', got a 0-D tensor")
    if not training or p == 0.0:
        scale = torch.ones((1,), dtype=acc_dtype(x.dtype), device=x.device)
    else:
        scale = _noise_scale(x, p, mode)
    return _drop_path_run(x, scale, residual, op)
