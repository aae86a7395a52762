"""Plain-PyTorch reference implementations (ATen / cuBLAS / cuDNN): the yardstick every kernel is
compared against. Selected only explicitly, with backend "torch"; never a silent fallback."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._native import ACT_NAMES


def activation(x: torch.Tensor, act: int) -> torch.Tensor:
    name = ACT_NAMES[act]
    if name is None:
        return x
    return _ACT_FUNCS[name](x)


_ACT_FUNCS = {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "hardswish": F.hardswish, "sigmoid": torch.sigmoid,
              "hardsigmoid": F.hardsigmoid}


def gemm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, act: int) -> torch.Tensor:
    out = a @ b
    if bias is not None:
        out = out + bias
    return activation(out, act).contiguous()


def activation_backward(grad: torch.Tensor, saved: torch.Tensor | None, act: int) -> torch.Tensor:
    """grad through the activation from the tensor saved for it: the output for relu / relu6 / sigmoid,
    the pre-activation for silu / hardswish / hardsigmoid (ATen's backward ops)."""
    name = ACT_NAMES[act]
    # Select semantics, as ATen's threshold_backward / hardtanh_backward.
    if name == "relu":
        return torch.where(saved <= 0, 0, grad)
    if name == "relu6":
        return torch.where((saved <= 0) | (saved >= 6), 0, grad)
    if name == "sigmoid":
        return torch.ops.aten.sigmoid_backward(grad, saved)
    if name == "silu":
        return torch.ops.aten.silu_backward(grad, saved)
    if name == "hardswish":
        return torch.ops.aten.hardswish_backward(grad, saved)
    if name == "hardsigmoid":
        return torch.ops.aten.hardsigmoid_backward(grad, saved)
    return grad


def activation_backward_differentiable(grad: torch.Tensor, saved: torch.Tensor, act: int) -> torch.Tensor:
    """activation_backward's values from plain differentiable torch ops (aten.silu_backward and
    hardswish_backward have no derivative of their own), for gradients built under create_graph=True."""
    name = ACT_NAMES[act]
    if name == "sigmoid":
        return grad * (1 - saved) * saved
    if name == "silu":
        sig = torch.sigmoid(saved)
        return grad * sig * (1 + saved * (1 - sig))
    if name == "hardswish":
        return torch.where(saved <= -3, 0, torch.where(saved < 3, grad * (saved / 3 + 0.5), grad))
    if name == "hardsigmoid":
        return torch.where((saved > -3) & (saved < 3), grad / 6, 0)
    return activation_backward(grad, saved, act)


# ----------------------------------------------------------------------------- pooling
def _pool_format(channels_last: bool):
    return torch.channels_last if channels_last else torch.contiguous_format


def max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, channels_last, with_indices):
    out, idx = torch.ops.aten.max_pool2d_with_indices(x.contiguous(memory_format=_pool_format(channels_last)),
                                                      kernel, stride, padding, dilation, ceil_mode)
    return out, (idx if with_indices else idx.new_empty((0,)))


def max_pool2d_backward(grad, indices, height, width, channels_last):
    N, C, OH, OW = grad.shape
    gx = grad.new_zeros((N, C, height * width))
    # explicit sizes: with N or C == 0 a -1 could be any value, which reshape refuses
    gx.scatter_add_(2, indices.reshape(N, C, OH * OW), grad.reshape(N, C, OH * OW))
    return gx.reshape(N, C, height, width).contiguous(memory_format=_pool_format(channels_last))


def avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, channels_last):
    return F.avg_pool2d(x.contiguous(memory_format=_pool_format(channels_last)), kernel, stride, padding,
                        ceil_mode, count_include_pad, divisor_override)


def avg_pool2d_backward(grad, height, width, kernel, stride, padding, ceil_mode, count_include_pad,
                        divisor_override, channels_last):
    fmt = _pool_format(channels_last)
    shape_of = grad.new_empty((grad.shape[0], grad.shape[1], height, width)).contiguous(memory_format=fmt)
    return torch.ops.aten.avg_pool2d_backward(grad.contiguous(memory_format=fmt), shape_of, kernel, stride, padding,
                                              ceil_mode, count_include_pad, divisor_override)


def adaptive_avg_pool2d(x, output_height, output_width, channels_last):
    fmt = _pool_format(channels_last)
    if output_height == 1 and output_width == 1:  # ATen's own global-mean path (also for empty planes)
        return x.mean((-2, -1), keepdim=True).contiguous(memory_format=fmt)
    return torch.ops.aten._adaptive_avg_pool2d(x.contiguous(memory_format=fmt), [output_height, output_width])


def adaptive_avg_pool2d_backward(grad, height, width, channels_last):
    fmt = _pool_format(channels_last)
    shape_of = grad.new_empty((grad.shape[0], grad.shape[1], height, width)).contiguous(memory_format=fmt)
    return torch.ops.aten._adaptive_avg_pool2d_backward(grad.contiguous(memory_format=fmt), shape_of).contiguous(
        memory_format=fmt)


def _conv2d_padded(x, w, bias, stride, padding, dilation, groups):
    """F.conv2d with padding [top, left, bottom, right]; asymmetric padding ("same" with an even
    kernel) pads explicitly first, as PyTorch itself does for that case."""
    import torch.nn.functional as F
    top, left, bottom, right = padding
    if top == bottom and left == right:
        return F.conv2d(x, w, bias, stride, (top, left), dilation, groups)
    return F.conv2d(F.pad(x, (left, right, top, bottom)), w, bias, stride, 0, dilation, groups)


def conv2d(x, w, bias, residual, stride, padding, dilation, groups, act: int) -> torch.Tensor:
    out = _conv2d_padded(x, w, bias, stride, padding, dilation, groups)
    if residual is not None:
        out = out + residual
    return activation(out, act)


def _conv2d_backward(grad_pre, x, w, stride, padding, dilation, groups, want_input: bool):
    """ATen's convolution_backward called directly: this runs inside the backward custom op, below the
    autograd dispatch key, where re-deriving the gradient with torch.autograd.grad records nothing."""
    top, left, bottom, right = padding
    symmetric = top == bottom and left == right
    xp = x if symmetric else F.pad(x, (left, right, top, bottom))
    pad = [top, left] if symmetric else [0, 0]
    gi, gw, _ = torch.ops.aten.convolution_backward(grad_pre, xp, w, None, list(stride), pad, list(dilation), False,
                                                    [0, 0], groups, [want_input, not want_input, False])
    if not want_input:
        return gw
    return gi if symmetric else gi[..., top:top + x.shape[-2], left:left + x.shape[-1]]


def conv2d_input_grad(grad_pre, x, w, stride, padding, dilation, groups) -> torch.Tensor:
    return _conv2d_backward(grad_pre, x, w, stride, padding, dilation, groups, True)


def conv2d_weight_grad(grad_pre, x, w, stride, padding, dilation, groups) -> torch.Tensor:
    return _conv2d_backward(grad_pre, x, w, stride, padding, dilation, groups, False)


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
                  reduction: str, label_smoothing: float) -> torch.Tensor:
    """F.cross_entropy with class-index targets (int32 / uint8 targets widened to int64 first)."""
    return F.cross_entropy(input, target.long(), weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)


def cross_entropy_prob(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: str,
                       label_smoothing: float) -> torch.Tensor:
    """F.cross_entropy with class-probability targets (target of the logits' shape, same dtype)."""
    return F.cross_entropy(input, target, weight, reduction=reduction, label_smoothing=label_smoothing)


# ----------------------------------------------------------------------------- batch norm
def _bn_format(x, channels_last):
    return torch.channels_last if (channels_last and x.dim() == 4) else torch.contiguous_format


def batch_norm(x, weight, bias, residual, mean_in, var_in, training, eps, act: int, channels_last):
    """(out, save_mean, save_invstd, batch_var) as pyimgcls::batch_norm returns them, from ATen's
    native_batch_norm (statistics in float32, float64 for float64 input)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    dims = [0] + list(range(2, x.dim()))
    fmt = _bn_format(x, channels_last)
    if training:
        var, mean = torch.var_mean(x.to(acc), dims, correction=0)
    else:
        mean, var = mean_in.to(acc).clone(), var_in.to(acc)
    invstd = torch.rsqrt(var + eps)
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x.to(acc) - mean.reshape(shape)) * invstd.reshape(shape)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    if residual is not None:
        y = y + residual.to(acc)
    out = activation(y, act).to(x.dtype).contiguous(memory_format=fmt)
    return out, mean, invstd, (var if training else var.new_empty((0,)))


def batch_norm_update_stats(running_mean, running_var, mean, var, momentum, count):
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            running_var.mul_(1 - momentum).add_((var * (count / (count - 1))).to(running_var.dtype), alpha=momentum)


def batch_norm_backward(grad, x, weight, out, mean, invstd, training, act: int, channels_last, has_residual,
                        needs_input, needs_weight, needs_bias):
    acc = mean.dtype
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    fmt = _bn_format(x, channels_last)
    gp = activation_backward(grad, out, act)
    g = gp.to(acc)
    xhat = (x.to(acc) - mean.reshape(shape)) * invstd.reshape(shape)
    M = x.numel() // x.shape[1] if x.shape[1] else 0
    sum_dy, sum_dyx = g.sum(dims), (g * xhat).sum(dims)
    empty = x.new_empty((0,))
    gx = empty
    if needs_input:
        scale = invstd if weight is None else invstd * weight
        gi = g - (sum_dy.reshape(shape) + xhat * sum_dyx.reshape(shape)) / M if training else g
        gx = (gi * scale.reshape(shape)).to(x.dtype).contiguous(memory_format=fmt)
    gw = sum_dyx if needs_weight else mean.new_empty((0,))
    gb = sum_dy if needs_bias else mean.new_empty((0,))
    gr = gp.contiguous(memory_format=fmt).clone() if (has_residual and act != 0) else empty
    return gx, gw, gb, gr


# ----------------------------------------------------------------------------- quantised (int8) family
# The integer yardstick of pyimgcls/ops/quant.py (semantics: csrc/cpu/quant.cpp). Sums in int64
# (checked to fit int32, as the kernels' accumulators must); the requantisation as float32 tensor
# multiplies and torch.round (half to even).
_Q_CLAMP = float(2 ** 22)


def _rne_term(v):
    return v.clamp(-_Q_CLAMP, _Q_CLAMP).round().to(torch.int64)


def quant_requantise(acc, mult, res, res_zero, res_mult, out_zero, qmin, qmax, act, float_out):
    """acc int64 [M, O] (the full sum with bias) -> uint8 [M, O] or float32 [M, O]."""
    if acc.numel() and int(acc.abs().max()) > 2 ** 31 - 1:
        raise OverflowError("quantised accumulator exceeds int32")
    v = acc.to(torch.int32).to(torch.float32) * mult.to(torch.float32)
    if float_out:
        return activation(v, act)
    q = _rne_term(v) + out_zero
    if res is not None:
        q = q + _rne_term((res.to(torch.int64) - res_zero).to(torch.float32)
                          * torch.tensor(res_mult, dtype=torch.float32))
    return q.clamp(qmin, qmax).to(torch.uint8)


def quant_gemm(a, a_zero, w, bias, mult, res, res_zero, res_mult, out_zero, qmin, qmax, act, float_out):
    """uint8 a [M, K] x int8 w [O, K] in int64, then quant_requantise."""
    acc = (a.to(torch.int64) - a_zero) @ w.to(torch.int64).T
    if bias is not None:
        acc = acc + bias.to(torch.int64)
    return quant_requantise(acc, mult, res, res_zero, res_mult, out_zero, qmin, qmax, act, float_out)


def quant_im2col(x, c0, cg, kh, kw, stride, padding, dilation, oh, ow, pad):
    """uint8 [N * OH * OW, KH * KW * CG] (taps outer, channels inner); out-of-image taps = pad."""
    N = x.shape[0]
    xp = torch.nn.functional.pad(x[:, c0:c0 + cg].to(torch.int16), (padding[1], padding[1], padding[0], padding[0]),
                                 value=pad)
    taps = []
    for i in range(kh):
        for j in range(kw):
            h0, w0 = i * dilation[0], j * dilation[1]
            t = xp[:, :, h0:h0 + (oh - 1) * stride[0] + 1:stride[0], w0:w0 + (ow - 1) * stride[1] + 1:stride[1]]
            taps.append(t.permute(0, 2, 3, 1))                      # [N, OH, OW, CG]
    return torch.stack(taps, 3).reshape(N * oh * ow, kh * kw * cg).to(torch.uint8)


def quantized_conv2d(x, a_zero, w, groups, bias, mult, stride, padding, dilation, res, res_zero, res_mult, out_zero,
                     qmin, qmax, act, float_out):
    """The whole quantised convolution, independent of the im2col / GEMM split: the integer sum is a
    float64 convolution of integer-valued tensors (every product and partial sum is an integer below
    2^53, so float64 is exact), taken back to int64. x uint8 [N, C, H, W], w int8 [O, C/g, KH, KW];
    returns [N, O, OH, OW] uint8 or float32."""
    xc = x.to(torch.float64) - a_zero          # real 0 = the zero point: padding with 0 after the shift
    acc = torch.nn.functional.conv2d(xc, w.to(torch.float64), None, stride, padding, dilation, groups)
    N, O, OH, OW = acc.shape
    acc = acc.round().to(torch.int64).permute(0, 2, 3, 1).reshape(-1, O)
    if bias is not None:
        acc = acc + bias.to(torch.int64)
    r = None if res is None else res.permute(0, 2, 3, 1).reshape(-1, O)
    out = quant_requantise(acc, mult, r, res_zero, res_mult, out_zero, qmin, qmax, act, float_out)
    return out.reshape(N, OH, OW, O).permute(0, 3, 1, 2)


def quant_max_pool2d(x, kernel, stride, padding, dilation, oh, ow):
    """uint8 max pooling: float32 holds every uint8 exactly, so torch's float max pooling is exact."""
    y = torch.nn.functional.max_pool2d(x.to(torch.float32), kernel, stride, padding, dilation, ceil_mode=True)
    return y[:, :, :oh, :ow].to(torch.uint8)


def quant_adaptive_avg_pool2d(x, oh, ow, in_zero, ratio, out_zero):
    """Integer window sums in int64 over PyTorch's adaptive windows, then one float32 multiply and rne."""
    N, C, H, W = x.shape
    out = torch.empty((N, C, oh, ow), dtype=torch.uint8)
    xi = x.to(torch.int64) - in_zero
    for i in range(oh):
        h0, h1 = i * H // oh, -(-(i + 1) * H // oh)
        for j in range(ow):
            w0, w1 = j * W // ow, -(-(j + 1) * W // ow)
            count = (h1 - h0) * (w1 - w0)
            s = xi[:, :, h0:h1, w0:w1].sum((2, 3)).to(torch.int32).to(torch.float32)
            v = s * torch.tensor(ratio / count, dtype=torch.float64).to(torch.float32)
            out[:, :, i, j] = (_rne_term(v) + out_zero).clamp(0, 255).to(torch.uint8)
    return out


def quant_quantize(x, inv_scale, zero_point):
    """uint8 clamp(rne(x * inv_scale) + zero_point, 0, 255) in float32 (inv_scale a float32 value), NaN -> 0."""
    v = x.to(torch.float32) * torch.tensor(inv_scale, dtype=torch.float32)
    v = torch.nan_to_num(v, nan=0.0).clamp(-256, 512).round()
    return (v + zero_point).clamp(0, 255).to(torch.uint8)

# ----------------------------------------------------------------------------- distillation loss
def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float,
                      alpha: float, reduction: str, label_smoothing: float, ignore_index: int) -> torch.Tensor:
    """The eager composition ops.distillation_loss fuses: alpha * T^2 * KL(softmax(t/T) || softmax(s/T))
    (KL summed over classes) + (1 - alpha) * F.cross_entropy(s, target, label_smoothing, ignore_index),
    per row, with rows whose target is ignore_index contributing to neither term; 'mean' divides by the
    number of counted rows (NaN when there is none). The teacher is detached (no gradient)."""
    T = float(temperature)
    target = target.long()
    log_p = F.log_softmax(student / T, dim=1)
    log_q = F.log_softmax(teacher.detach() / T, dim=1)
    kl = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(1)
    ce = F.cross_entropy(student, target, ignore_index=ignore_index, reduction="none",
                         label_smoothing=label_smoothing)
    valid = target != ignore_index
    rows = torch.where(valid, alpha * T * T * kl + (1.0 - alpha) * ce, torch.zeros_like(ce))
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / valid.sum()

# ----------------------------------------------------------------------------- squeeze-and-excitation
# act codes 0 relu / 1 silu, gate codes 0 sigmoid / 1 hardsigmoid (pyimgcls/ops/se.py); w1 [R, C],
# w2 [C, R] in the accumulation dtype (float32, float64 for float64 x), like pooled / hidden / z.
def _se_fmt(channels_last):
    return torch.channels_last if channels_last else torch.contiguous_format


def se_activation(h: torch.Tensor, act: int) -> torch.Tensor:
    return F.silu(h) if act == 1 else F.relu(h)


def se_gate(z: torch.Tensor, gate: int) -> torch.Tensor:
    return F.hardsigmoid(z) if gate == 1 else torch.sigmoid(z)


def squeeze_excitation(x, w1, b1, w2, b2, act: int, gate: int, channels_last):
    """(y, pooled, hidden, z) as pyimgcls::squeeze_excitation returns them: torchvision's
    SqueezeExcitation (adaptive_avg_pool2d, conv1x1, act, conv1x1, gate, x * scale) with the 1x1
    convolutions as F.linear on [N, C] in the accumulation dtype."""
    acc = w1.dtype
    pooled = x.to(acc).mean((2, 3))
    hidden = F.linear(pooled, w1, b1)
    z = F.linear(se_activation(hidden, act), w2, b2)
    y = (x * se_gate(z, gate).to(x.dtype)[:, :, None, None]).contiguous(memory_format=_se_fmt(channels_last))
    return y, pooled, hidden, z


def squeeze_excitation_backward(grad, x, w1, w2, pooled, hidden, z, act: int, gate: int, channels_last,
                                needs_input, needs_w1, needs_b1, needs_w2, needs_b2):
    """(grad_input, gw1, gb1, gw2, gb2) by ATen's own backward formulas (autograd through the composition
    from the saved pooled / hidden / z); an empty tensor for each gradient not asked for."""
    acc = w1.dtype
    with torch.enable_grad():
        zz = z.detach().requires_grad_()
        g = se_gate(zz, gate)
        gz, = torch.autograd.grad(g, zz, (grad.to(acc) * x.to(acc)).sum((2, 3)))
        hh = hidden.detach().requires_grad_()
        a = se_activation(hh, act)
        ga = gz @ w2
        gh, = torch.autograd.grad(a, hh, ga)
    empty = x.new_empty((0,))
    gx = empty
    if needs_input:
        gpool = (gh @ w1) / (x.shape[2] * x.shape[3])
        gx = (grad.to(acc) * g.detach()[:, :, None, None] + gpool[:, :, None, None]).to(x.dtype)
        gx = gx.contiguous(memory_format=_se_fmt(channels_last))
    gw1 = gh.t() @ pooled if needs_w1 else w1.new_empty((0,))
    gb1 = gh.sum(0) if needs_b1 else w1.new_empty((0,))
    gw2 = gz.t() @ a.detach() if needs_w2 else w1.new_empty((0,))
    gb2 = gz.sum(0) if needs_b2 else w1.new_empty((0,))
    return gx, gw1, gb1, gw2, gb2


def drop_path(x, scale, residual):
    """out[n] = x[n] * scale[n] (+ residual[n]) for x viewed as [N, M] (x's strides kept)."""
    out = x * scale.to(x.dtype).reshape([-1] + [1] * (x.dim() - 1))
    return out if residual is None else out + residual
