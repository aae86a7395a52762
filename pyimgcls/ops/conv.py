"""Convolution family: ``conv2d`` with a fused bias + residual + activation epilogue, and
``conv2d_bias_relu``.

    out = act(conv2d(input, weight) + bias + residual)
    act: None | "relu" | "relu6" | "silu" | "hardswish" | "sigmoid" | "hardsigmoid" (ops/activation.py:
    silu / hardswish / hardsigmoid with a gradient recorded run as conv2d then ops.activation)

One custom op, ``pyimgcls::conv2d``, computes the whole expression in one kernel (the epilogue runs on
the fp32 accumulator, before rounding). Its backward is its own custom op,
``pyimgcls::conv2d_backward``:
    grad_pre      = grad * act'(out)          (from the saved output: relu out>0, relu6 0<out<6, sigmoid)
    grad_residual = grad_pre
    grad_bias     = grad_pre.sum((0, 2, 3))   (deterministic, fused with the mask)
    grad_input    = dgrad(grad_pre, weight)   (implicit GEMM / GEMM + col2im)
    grad_weight   = wgrad(grad_pre, input)    (implicit GEMM / im2col + GEMM)

Semantics follow ``torch.nn.functional.conv2d``: int or pair stride / padding / dilation,
``padding="same"`` (asymmetric for even kernels, like PyTorch; an error with stride > 1) or
``"valid"``, any ``groups``, 3-D unbatched input, and the output memory format PyTorch gives for the
same call (channels_last when the input or the weight suggests channels_last). Padding travels to the
kernels as [top, left, bottom, right].

The backend is resolved in Python before the custom op is called and passed to it as a string, so
torch.compile traces a fixed choice.
"""
from __future__ import annotations

import numbers
from typing import NamedTuple

import torch

from .. import backends
from .._native import ACT_CODES
from ..errors import ArgumentTypeError, ArgumentValueError
from . import _alloc, _eager, reference
from ._checks import check_activation, check_tensor, prepare
from .activation import with_activation
from ._layout import format_of as _format_of, match_format as _match_format  # noqa: F401 (backends)
from ._layout import output_memory_format, suggests_channels_last  # noqa: F401  (public names)

_LOW_PRECISION = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- shapes
def _out_shape(x_shape, w_shape, stride, padding, dilation):
    N, _, H, W = x_shape
    O, _, KH, KW = w_shape
    OH = (H + padding[0] + padding[2] - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    OW = (W + padding[1] + padding[3] - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    return (N, O, OH, OW)


class ConvGeometry(NamedTuple):
    """The one description of a convolution that every kernel receives, field for field the C++
    ``ConvGeometry`` (csrc/conv_geometry.h) the bindings build from it (a tuple of 16 ints on the
    wire).
    Padding here is top / left; the bottom / right padding of "same" follows from OH / OW."""
    N: int
    C: int
    H: int
    W: int
    O: int
    KH: int
    KW: int
    OH: int
    OW: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dil_h: int
    dil_w: int
    groups: int


def _geometry(x_shape, w_shape, out_shape, stride, padding, dilation, groups) -> ConvGeometry:
    N, C, H, W = x_shape
    O, _, KH, KW = w_shape
    return ConvGeometry(N, C, H, W, O, KH, KW, out_shape[2], out_shape[3], stride[0], stride[1], padding[0],
                        padding[1], dilation[0], dilation[1], groups)


# ----------------------------------------------------------------------------- shared by the backend modules
# backends/<backend>/conv.py (the kernel entry points; contracts in backends/cpu/conv.py) allocate their
# outputs through these, so the output layouts, the empty-tensor early returns and the 16-int geometry
# list of the C++ launchers are written once.
def fwd_outputs(x, w, res, stride, padding, dilation, groups):
    """(out, res, geom) for a forward kernel: ``out`` allocated in the canonical layout of PyTorch's
    output format for the call, ``res`` (or None) matched to it, the geometry list; geom is None when
    the output is empty (nothing to compute)."""
    shape = _out_shape(x.shape, w.shape, stride, padding, dilation)
    fmt = output_memory_format(x, w)
    out = _alloc.empty(shape, x.dtype, x.device, memory_format=fmt)
    if out.numel() == 0:
        return out, res, None
    return out, _match_format(res, fmt), _geometry(x.shape, w.shape, shape, stride, padding, dilation, groups)


def dgrad_output(gp, x, w, stride, padding, dilation, groups):
    """(dx, geom) for an input-gradient kernel: dx like ``x`` in its format's canonical layout; geom
    None when dx is empty."""
    dx = _alloc.empty(x.shape, x.dtype, x.device, memory_format=_format_of(x))
    if dx.numel() == 0:
        return dx, None
    return dx, _geometry(x.shape, w.shape, gp.shape, stride, padding, dilation, groups)


def wgrad_output(gp, x, w, stride, padding, dilation, groups):
    """(dw, geom) for a weight-gradient kernel: dw contiguous like ``w``; geom None when dw is empty."""
    dw = _alloc.empty(w.shape, w.dtype, w.device)
    if dw.numel() == 0:
        return dw, None
    return dw, _geometry(x.shape, w.shape, gp.shape, stride, padding, dilation, groups)


def bias_act_outputs(grad, out, act, has_bias, fmt):
    """(grad_pre, grad_bias or None) for a bias/activation-backward kernel. grad and out arrive in the
    canonical output layout ``fmt`` (_match_format), so grad_pre shares their strides; grad_pre is
    ``grad`` itself without an activation. For an empty grad grad_bias is zeroed (nothing to compute)."""
    gp = _alloc.empty(grad.shape, grad.dtype, grad.device, memory_format=fmt) if act != 0 else grad
    assert gp.stride() == grad.stride() and (out is None or out.stride() == grad.stride())
    gb = _alloc.empty((grad.shape[1],), grad.dtype, grad.device) if has_bias else None
    if gb is not None and grad.numel() == 0:
        gb.zero_()
    return gp, gb


def strides(t: torch.Tensor | None):
    return list(t.stride()) if t is not None else [0, 0, 0, 0]


def pixel_strides(t: torch.Tensor | None):
    """[n, c, 0, w] strides of an output-shaped tensor read as [N, O, OH*OW] (canonical layouts only)."""
    return [t.stride(0), t.stride(1), 0, t.stride(3)] if t is not None else [0, 0, 0, 0]


def ptr(t: torch.Tensor | None) -> int:
    return t.data_ptr() if t is not None else 0


def _to_float(t):
    return None if t is None else t.float()


# ----------------------------------------------------------------------------- backend kernels
def _run_fwd(x, w, bias, res, stride, padding, dilation, groups, act, backend) -> torch.Tensor:
    return backends.kernels(backend, "conv").conv2d(x, w, bias, res, stride, padding, dilation, groups, act)


# ----------------------------------------------------------------------------- custom ops
@torch.library.custom_op("pyimgcls::conv2d", mutates_args=())
def _conv2d_op(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
               stride: list[int], padding: list[int], dilation: list[int], groups: int, activation: int,
               backend: str) -> torch.Tensor:
    return _run_fwd(input, weight, bias, residual, stride, padding, dilation, groups, activation, backend)


@_conv2d_op.register_fake
def _(input, weight, bias, residual, stride, padding, dilation, groups, activation, backend):
    shape = _out_shape(input.shape, weight.shape, stride, padding, dilation)
    return torch.empty(shape, dtype=input.dtype, device=input.device,
                       memory_format=output_memory_format(input, weight))


def _backward_impl(grad, input, weight, out, stride, padding, dilation, groups, activation, has_bias, has_residual,
                   backend, needs_input, needs_weight):
    """(grad_input, grad_weight, grad_bias, grad_residual); an unrequested gradient is an empty tensor."""
    kernels = backends.kernels(backend, "conv")
    dtype = input.dtype
    if (dtype in _LOW_PRECISION and backends.TABLE[backend].upcasts_low_precision
            and dtype not in getattr(kernels, "NATIVE_LOW_PRECISION", ())):
        # docs/architecture.md "Dtypes": the whole backward runs in float32 (grad_pre stays float32 between the kernels)
        gi, gw, gb, gr = _backward_impl(grad.float(), input.float(), weight.float(), _to_float(out), stride,
                                        padding, dilation, groups, activation, has_bias, has_residual, backend,
                                        needs_input, needs_weight)
        return gi.to(dtype), gw.to(dtype), gb.to(dtype), gr.to(dtype)
    fmt = output_memory_format(input, weight)
    grad = _match_format(grad, fmt)
    out = _match_format(out, fmt)
    if activation != 0 or has_bias:
        gp, gb = kernels.bias_act_bwd(grad, out, activation, has_bias, fmt)
    else:
        gp, gb = grad, None  # grad_pre is grad itself
    empty = grad.new_empty((0,))
    gi = kernels.dgrad(gp, input, weight, stride, padding, dilation, groups) if needs_input else empty
    gw = kernels.wgrad(gp, input, weight, stride, padding, dilation, groups) if needs_weight else empty
    # With an activation grad_pre is a fresh tensor and is the residual's gradient; without one the
    # residual's gradient is the incoming grad itself, returned by the autograd function instead
    # (a custom op's output may not alias its input).
    gr = gp if (has_residual and activation != 0) else grad.new_empty((0,))
    return gi, gw, (gb if gb is not None else grad.new_empty((0,))), gr


@torch.library.custom_op("pyimgcls::conv2d_backward", mutates_args=())
def _conv2d_backward_op(grad: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None,
                        stride: list[int], padding: list[int], dilation: list[int], groups: int, activation: int,
                        has_bias: bool, has_residual: bool, backend: str, needs_input: bool,
                        needs_weight: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward_impl(grad, input, weight, out, stride, padding, dilation, groups, activation, has_bias,
                          has_residual, backend, needs_input, needs_weight)


@_conv2d_backward_op.register_fake
def _(grad, input, weight, out, stride, padding, dilation, groups, activation, has_bias, has_residual, backend,
      needs_input, needs_weight):
    def empty(shape, fmt=torch.contiguous_format):
        return torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=fmt)
    gi = empty(input.shape, _format_of(input)) if needs_input else empty((0,))
    gw = empty(weight.shape) if needs_weight else empty((0,))
    gb = empty((weight.shape[0],)) if has_bias else empty((0,))
    gr = empty(grad.shape, output_memory_format(input, weight)) if (has_residual and activation != 0) else empty((0,))
    return gi, gw, gb, gr


def _conv2d_setup_context(ctx, inputs, output):
    input, weight, bias, residual, stride, padding, dilation, groups, activation, backend = inputs
    ctx.conf = (stride, padding, dilation, groups, activation, backend)
    ctx.has_bias, ctx.has_residual = bias is not None, residual is not None
    ctx.save_for_backward(input, weight, output if activation != 0 else None)


def _conv2d_backward(ctx, grad):
    input, weight, out = ctx.saved_tensors
    stride, padding, dilation, groups, activation, backend = ctx.conf
    needs_input, needs_weight, needs_bias, needs_res = ctx.needs_input_grad[:4]
    has_bias = ctx.has_bias and needs_bias
    has_res = ctx.has_residual and needs_res
    if _eager.graph_mode(grad, input, weight):
        return _conv2d_backward_graph(grad, input, weight, out, ctx.conf, needs_input, needs_weight, has_bias,
                                      has_res)
    backward_fn = _eager.pick(ctx, _conv2d_backward_op, _backward_impl)
    gi = gw = gb = gr = None
    if needs_input or needs_weight or has_bias or (has_res and activation != 0):
        gi, gw, gb, gr = backward_fn(grad, input, weight, out, stride, padding, dilation, groups, activation,
                                     has_bias, has_res, backend, needs_input, needs_weight)
    if has_res and activation == 0:
        gr = grad
    return (gi if needs_input else None, gw if needs_weight else None, gb if has_bias else None,
            gr if has_res else None, None, None, None, None, None, None)


# ----------------------------------------------------------------------------- higher order
# Under create_graph=True the backward returns differentiable gradients built from our own kernels:
#   grad_pre = select(act'(out), grad)            (a mask: its own derivative is zero)
#   grad_input  = D(grad_pre, weight)              D = dgrad, linear in both arguments
#   grad_weight = G(grad_pre, input)               G = wgrad, linear in both arguments
# and since <u, D(g, w)> = <conv(u, w), g> and <v, G(g, x)> = <g, conv(x, v)>, the derivatives of D
# and G are again conv / D / G calls:
#   D(g, w):  d/dg = conv(u, w),  d/dw = G(g, u)
#   G(g, x):  d/dg = conv(x, v),  d/dx = D(g, v)
# so every order is computed by the conv kernels (forward, dgrad, wgrad) of the chosen backend.
def _conv_plain(x, w, conf):
    """conv(x, w) without bias or activation, through the op (so it records its own backward)."""
    stride, padding, dilation, groups, _, backend = conf
    args = (x, w, None, None, stride, padding, dilation, groups, 0, backend)
    return _eager.call(_conv2d_op, _EagerConv2d, _run_fwd, args, (x, w))


class _ConvGradPart(torch.autograd.Function):
    """One half of a conv's backward as a differentiable function of (g, t), for double backward.
    want_input: D(g, w), the input gradient (t = w, ``like`` = the forward input); else G(g, x), the
    weight gradient (t = x, ``like`` = the weight). ``like`` is detached, read only for its shape, dtype
    and memory format. Each half's derivative is a conv (w.r.t. g) plus the other half (w.r.t. t)."""

    @staticmethod
    def forward(g, t, like, conf, want_input):
        stride, padding, dilation, groups, _, backend = conf
        x, w = (like, t) if want_input else (t, like)
        grads = _backward_impl(g, x, w, None, stride, padding, dilation, groups, 0, False, False, backend,
                               want_input, not want_input)
        return grads[0] if want_input else grads[1]

    @staticmethod
    def setup_context(ctx, inputs, output):
        g, t, like, ctx.conf, ctx.want_input = inputs
        ctx.save_for_backward(g, t, like)

    @staticmethod
    def backward(ctx, u):
        g, t, like = ctx.saved_tensors
        x, w = (u, t) if ctx.want_input else (t, u)
        dg = _conv_plain(x, w, ctx.conf) if ctx.needs_input_grad[0] else None
        dt = _ConvGradPart.apply(g, u, t.detach(), ctx.conf, not ctx.want_input) if ctx.needs_input_grad[1] else None
        return dg, dt, None, None, None


def _conv2d_backward_graph(grad, input, weight, out, conf, needs_input, needs_weight, has_bias, has_res):
    activation = conf[4]
    # sigmoid's derivative depends on the output, so its gradient is differentiated through it too;
    # relu / relu6 are selects on the output (derivative zero there)
    saved = out if activation == ACT_CODES["sigmoid"] else (out.detach() if out is not None else None)
    gp = reference.activation_backward_differentiable(grad, saved, activation) if activation else grad
    gi = _ConvGradPart.apply(gp, weight, input.detach(), conf, True) if needs_input else None
    gw = _ConvGradPart.apply(gp, input, weight.detach(), conf, False) if needs_weight else None
    gb = gp.sum((0, 2, 3)) if has_bias else None
    gr = gp if has_res else None
    return gi, gw, gb, gr, None, None, None, None, None, None


_conv2d_op.register_autograd(_conv2d_backward, setup_context=_conv2d_setup_context)


_EagerConv2d = _eager.function(_run_fwd, _conv2d_setup_context, _conv2d_backward)


# ----------------------------------------------------------------------------- argument parsing
def _is_int(v) -> bool:
    # `type(v) is int` first: the numbers.Integral ABC check costs ~1 us and this runs per call
    return type(v) is int or (isinstance(v, numbers.Integral) and not isinstance(v, bool))


def _int_pair(value, name: str, op: str) -> tuple[int, int]:
    """int or a sequence of 1 or 2 ints (PyTorch expands a 1-element list) -> (h, w)."""
    if type(value) is int:
        return value, value
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return value
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        value = value.item()  # PyTorch's int-list arguments take a 0-D integer tensor
    if _is_int(value):
        return int(value), int(value)
    if isinstance(value, (tuple, list, torch.Size)):
        if not all(_is_int(v) for v in value):
            raise ArgumentTypeError(f"{op}: argument '{name}' must be an int or a tuple of ints, got {value!r}")
        if len(value) == 1:
            return int(value[0]), int(value[0])
        if len(value) == 2:
            return int(value[0]), int(value[1])
        raise ArgumentValueError(
            f"{op}: argument '{name}' must be a single integer value or a list of 2 values to match the "
            f"convolution dimensions, but got {name}={list(value)}")
    raise ArgumentTypeError(f"{op}: argument '{name}' must be an int or a tuple of ints, got {type(value).__name__}")


def _resolve_padding(padding, kernel, stride, dilation, op: str) -> list[int]:
    """[top, left, bottom, right] for int / pair / "same" / "valid" padding, as PyTorch computes it."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        if padding == "same":
            if stride != (1, 1):
                raise ArgumentValueError(
                    f"{op}: padding='same' is not supported for strided convolutions (argument 'padding' with "
                    f"stride={stride})")
            total = [dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)]
            # PyTorch puts the odd extra element of an even kernel's padding at the end (bottom / right)
            return [total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2]
        raise ArgumentValueError(f"{op}: argument 'padding': invalid padding string {padding!r}, "
                                 "expected 'same' or 'valid'")
    ph, pw = _int_pair(padding, "padding", op)
    if ph < 0 or pw < 0:
        raise ArgumentValueError(f"{op}: argument 'padding' must be non-negative, got {(ph, pw)} "
                                 "(negative padding is not supported)")
    return [ph, pw, ph, pw]


# ----------------------------------------------------------------------------- public API
def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1, activation: str | None = None,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """``act(F.conv2d(input, weight, bias, stride, padding, dilation, groups) + residual)`` in one kernel.

    input [N, C, H, W] or unbatched [C, H, W]; weight [O, C/groups, KH, KW]; bias [O] or None;
    residual: the output's shape ([N, O, OH, OW], or [O, OH, OW] for unbatched input) or None, added
    before the activation; activation None | "relu" | "relu6" | "silu" | "hardswish" | "sigmoid" | "hardsigmoid". stride / padding / dilation: int or
    pair; padding may be "same" or "valid". The output's memory format is the one PyTorch gives
    for the same call."""
    op = "conv2d"
    check_tensor(input, "input", op)
    check_tensor(weight, "weight", op)
    check_activation(activation, op)
    if bias is not None:
        check_tensor(bias, "bias", op)
    if residual is not None:
        check_tensor(residual, "residual", op)
    if input.dim() not in (3, 4):
        raise ArgumentValueError(f"{op}: argument 'input' must be 3-D (unbatched) or 4-D (batched), got "
                                 f"{input.dim()}-D of shape {tuple(input.shape)}")
    if weight.dim() != 4:
        raise ArgumentValueError(f"{op}: argument 'weight' must be 4-D [out_channels, in_channels/groups, kH, kW], "
                                 f"got {weight.dim()}-D of shape {tuple(weight.shape)}")
    if bias is not None and bias.dim() != 1:
        raise ArgumentValueError(f"{op}: argument 'bias' must be 1-D, got shape {tuple(bias.shape)}")
    stride = _int_pair(stride, "stride", op)
    dilation = _int_pair(dilation, "dilation", op)
    if not _is_int(groups):
        raise ArgumentTypeError(f"{op}: argument 'groups' must be an int, got {type(groups).__name__}")
    groups = int(groups)
    if min(stride) <= 0:
        raise ArgumentValueError(f"{op}: argument 'stride' must be positive, got {stride} "
                                 "(non-positive stride is not supported)")
    if min(dilation) <= 0:
        raise ArgumentValueError(f"{op}: argument 'dilation' must be positive, got {dilation} "
                                 "(non-positive dilation is not supported)")
    if groups <= 0:
        raise ArgumentValueError(f"{op}: argument 'groups' must be positive, got {groups}")
    kernel = (weight.shape[2], weight.shape[3])
    pads = _resolve_padding(padding, kernel, stride, dilation, op)

    backend, (input, weight, bias, residual) = prepare(
        op, [("input", input), ("weight", weight), ("bias", bias), ("residual", residual)])

    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()  # the kernels read the bias with unit stride
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    O, Cg, KH, KW = weight.shape
    if KH <= 0 or KW <= 0:
        raise ArgumentValueError(f"{op}: argument 'weight' has a non-positive kernel size {(KH, KW)} "
                                 f"(shape {tuple(weight.shape)})")
    if O < groups or O % groups != 0:
        raise ArgumentValueError(
            f"{op}: argument 'weight' has {O} output channels (shape {tuple(weight.shape)}), which "
            f"argument 'groups'={groups} does not divide (expected weight.shape[0] to be a positive multiple "
            "of groups)")
    if x.shape[1] != Cg * groups:
        raise ArgumentValueError(
            f"{op}: argument 'input' has {x.shape[1]} channels (shape {tuple(input.shape)}) but argument "
            f"'weight' of shape {tuple(weight.shape)} with groups={groups} expects {Cg * groups} "
            "(= weight.shape[1] * groups)")
    if bias is not None and bias.shape[0] != O:
        raise ArgumentValueError(f"{op}: argument 'bias' has {bias.shape[0]} elements but argument 'weight' has "
                                 f"out_channels={O} (shape {tuple(weight.shape)})")
    padded = (x.shape[2] + pads[0] + pads[2], x.shape[3] + pads[1] + pads[3])
    dilated = (dilation[0] * (KH - 1) + 1, dilation[1] * (KW - 1) + 1)
    if padded[0] < dilated[0] or padded[1] < dilated[1]:
        raise ArgumentValueError(
            f"{op}: the padded size of argument 'input' per channel ({padded[0]} x {padded[1]}) is smaller than "
            f"the dilated kernel of argument 'weight' ({dilated[0]} x {dilated[1]}): kernel size can't be "
            "greater than actual input size")
    out_shape = _out_shape(x.shape, weight.shape, stride, pads, dilation)
    if residual is not None:
        want = out_shape[1:] if unbatched else out_shape
        if tuple(residual.shape) != tuple(want):
            raise ArgumentValueError(f"{op}: argument 'residual' has shape {tuple(residual.shape)} but the "
                                     f"convolution output has shape {tuple(want)}")
        if unbatched:
            residual = residual.unsqueeze(0)
    tensors = (x, weight, bias, residual)

    def layer(code):
        args = (x, weight, bias, residual, list(stride), pads, list(dilation), groups, code, backend)
        return _eager.call(_conv2d_op, _EagerConv2d, _run_fwd, args, tensors)
    out = with_activation(layer, ACT_CODES[activation], backend, tensors)
    return out.squeeze(0) if unbatched else out


def conv2d_bias_relu(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride=1, padding=0,
                     dilation=1, groups: int = 1) -> torch.Tensor:
    """``relu(F.conv2d(input, weight, bias, stride, padding, dilation, groups))`` in one kernel."""
    return conv2d(input, weight, bias, stride, padding, dilation, groups, activation="relu")
