"""Quantised (int8) inference ops: ``quantized_linear`` and ``quantized_conv2d``.

Representation of quantised tensors: plain torch tensors plus scale / zero-point arguments.

* Activations: ``torch.uint8`` tensors with a per-tensor affine map ``real = scale * (q - zero_point)``
  (``scale`` a positive finite Python float, ``zero_point`` an int in [0, 255]). Images [N, C, H, W]
  in any memory format (channels_last is read without a copy); outputs are channels_last.
* Weights: :class:`QuantizedWeight` — int8 values, symmetric per output channel
  (``real = scale[o] * q``, zero point 0, q in [-127, 127]), packed once per backend and kept by the
  object (:func:`quantize_weight` builds one from a float weight).
* Bias: float (quantised here to int32 in the accumulator's scale ``input_scale * weight.scale[o]``,
  round half to even) or int32 already in that scale.

Output: ``output_scale`` / ``output_zero_point`` given -> uint8; ``output_scale=None`` -> float32
(the last layer). Requantisation and its rounding are defined in csrc/cpu/quant.cpp ("Semantics"):
one fp32 multiply by ``input_scale * weight.scale[o] / output_scale`` (computed in float64, rounded
once to float32), round half to even, + output zero point, clamp to [0, 255]; ``activation`` relu /
relu6 is a clamp in the quantised domain (to [zp, 255] / [zp, zp + rne(6 / output_scale)]); a
``residual`` (uint8, its own scale and zero point, same shape as the output) is added in the
quantised domain before the clamp: + rne((r - residual_zero_point) * residual_scale / output_scale).
Every backend gives these results bit for bit (tests/test_quant.py against the int64 reference).
"""
from __future__ import annotations

import math
import threading

import torch

from .. import _backend
from .. import backends as _grid
from ..errors import ArgumentTypeError, ArgumentValueError, BackendError
from . import _alloc

__all__ = ["QuantizedWeight", "quantize_weight", "quantize_per_tensor", "dequantize", "quantized_linear",
           "quantized_conv2d", "activation_bounds"]

_ACTS = {None: 0, "relu": 1, "relu6": 2}
_MAX_ACC = 2 ** 31 - 1
_BIAS_LIMIT = 2 ** 30


# im2col scratch, one per thread (a server runs models in worker threads) and device, grown to the
# largest call and kept up to _COL_KEEP bytes: a fresh multi-MiB buffer per conv costs a page fault
# per 4 KiB touched (~600 for ResNet-18's stem at batch 16, ~0.3 ms against a 1.1 ms GEMM).
_COL_KEEP = 64 << 20
_col_local = threading.local()


def _col_buffer(M: int, K: int, device) -> torch.Tensor:
    """uint8 [M, K] scratch for im2col (poisoned like any output when poisoning is on)."""
    n = M * K
    if n > _COL_KEEP:
        return _alloc.empty((M, K), torch.uint8, device)
    cache = getattr(_col_local, "bufs", None)
    if cache is None:
        cache = _col_local.bufs = {}
    buf = cache.get(device)
    if buf is None or buf.numel() < n:
        buf = cache[device] = torch.empty(n, dtype=torch.uint8, device=device)
    return _alloc._poisoned(buf[:n].view(M, K))


# ----------------------------------------------------------------------------- representation
class QuantizedWeight:
    """int8 weight, symmetric per output channel, with its packed forms (one per backend, built on
    first use and kept).

    ``q``: int8 [O, K] (linear) or [O, C/groups, KH, KW] (conv), values in [-127, 127];
    ``scale``: float32 [O], positive and finite; ``groups`` (conv)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, groups: int = 1):
        if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
            raise ArgumentTypeError(f"QuantizedWeight: q must be an int8 tensor, got {_desc(q)}")
        if q.dim() not in (2, 4):
            raise ArgumentValueError("QuantizedWeight: q must be 2-D [O, K] or 4-D [O, C/groups, KH, KW], "
                                     f"got shape {tuple(q.shape)}")
        if not isinstance(scale, torch.Tensor) or not scale.is_floating_point():
            raise ArgumentTypeError(f"QuantizedWeight: scale must be a float tensor, got {_desc(scale)}")
        scale = scale.detach().to(torch.float32).reshape(-1)
        if scale.numel() != q.shape[0]:
            raise ArgumentValueError(f"QuantizedWeight: scale has {scale.numel()} values for {q.shape[0]} "
                                     "output channels")
        if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
            raise ArgumentValueError("QuantizedWeight: scale must be positive and finite in every channel")
        if not isinstance(groups, int) or groups < 1 or q.shape[0] % groups:
            raise ArgumentValueError(f"QuantizedWeight: groups must be a positive divisor of {q.shape[0]}, "
                                     f"got {groups!r}")
        if q.dim() == 2 and groups != 1:
            raise ArgumentValueError("QuantizedWeight: a 2-D (linear) weight takes groups=1")
        self.q = q.detach()
        self.scale = scale.to(q.device)
        self.groups = groups
        self._packed: dict = {}
        self._mult: dict = {}       # (input_scale, output_scale) -> float32 [O] requantisation factors
        self._bias_checked = None   # (int32 bias tensor, its version) last found within +-2^30

    @property
    def out_features(self) -> int:
        return self.q.shape[0]

    def gemm_matrix(self, g: int) -> torch.Tensor:
        """int8 [O / groups, K] of group g, K in (kh, kw, c) order: the GEMM's B matrix (a strided view)."""
        og = self.q.shape[0] // self.groups
        w = self.q[g * og:(g + 1) * og]
        if w.dim() == 4:
            w = w.permute(0, 2, 3, 1).reshape(og, -1)
        return w

    def packed(self, backend: str, g: int):
        key = (backend, g)
        p = self._packed.get(key)
        if p is None:
            p = self._packed[key] = _grid.kernels(backend, "quant").pack_weight(self.gemm_matrix(g))
        return p

    def state(self) -> dict:
        """Plain tensors and ints (a weights_only checkpoint)."""
        return {"q": self.q, "scale": self.scale, "groups": self.groups}


def _resolve(device, op: str) -> str:
    """The backend for this call (the user's choice), which must have the quant family."""
    backend = _backend.resolve(device, op)
    if not _grid.implements(backend, "quant"):
        raise BackendError(f"{op}: backend '{backend}' has no quantised kernels; use 'cpu', 'triton', 'cuda' or 'torch'")
    return backend


def _desc(x) -> str:
    return f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__


def quantize_weight(weight: torch.Tensor, groups: int = 1, per_channel: bool = True) -> QuantizedWeight:
    """Symmetric int8 quantisation of a float weight (scale = max|w| / 127 per output channel, or one
    scale for the whole tensor with ``per_channel=False``); an all-zero channel gets scale 1."""
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise ArgumentTypeError(f"quantize_weight: weight must be a float tensor, got {_desc(weight)}")
    w = weight.detach().double()
    if not bool(torch.isfinite(w).all()):
        raise ArgumentValueError("quantize_weight: weight has NaN or infinite values")
    amax = w.abs().reshape(w.shape[0], -1).amax(1) if per_channel else w.abs().amax().expand(w.shape[0])
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).to(torch.float32)
    s = scale.double().reshape([-1] + [1] * (w.dim() - 1))
    q = torch.round(w / s).clamp(-127, 127).to(torch.int8)
    return QuantizedWeight(q, scale, groups)


def _check_qparams(scale, zero_point, sname: str, zname: str, op: str) -> tuple[float, int]:
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ArgumentValueError(f"{op}: {sname} must be one number (per-tensor), got {scale.numel()} values")
        scale = scale.item()
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ArgumentTypeError(f"{op}: {sname} must be a float, got {type(scale).__name__}")
    if not math.isfinite(scale) or scale <= 0:
        raise ArgumentValueError(f"{op}: {sname} must be positive and finite, got {scale}")
    if isinstance(zero_point, torch.Tensor):
        zero_point = zero_point.item()
    if isinstance(zero_point, bool) or not isinstance(zero_point, int):
        raise ArgumentTypeError(f"{op}: {zname} must be an int, got {type(zero_point).__name__}")
    if not 0 <= zero_point <= 255:
        raise ArgumentValueError(f"{op}: {zname} must be in [0, 255] (uint8), got {zero_point}")
    return float(scale), int(zero_point)


def quantize_per_tensor(x: torch.Tensor, scale: float, zero_point: int, channels_last: bool = False) -> torch.Tensor:
    """uint8 q = clamp(rne(x * float32(1 / scale)) + zero_point, 0, 255) (one fp32 multiply, round half
    to even; NaN reads as 0), same memory format as x (contiguous or channels_last; others are made
    contiguous), or channels_last for a 4-D x with ``channels_last=True`` (what the quantised convs read
    fastest: one pass from an NCHW float image where the backend can, no separate uint8 copy).
    float16 / bfloat16 / float64 inputs are converted to float32 first."""
    return _quantize(x, scale, zero_point, channels_last)


def _inv_scale(scale: float) -> float:
    """float32(1 / scale), the one multiplier every backend's quantisation uses."""
    return float(torch.tensor(1.0 / scale, dtype=torch.float32))


def _quantize(x, scale, zero_point, channels_last: bool, channels: int | None = None) -> torch.Tensor:
    """quantize_per_tensor; ``channels`` (4-D, channels_last): the output padded to that many channels of
    real 0 (the zero point), written in the same pass where the backend can (QuantizedModel's RGB stem
    bound to a zero-padded weight)."""
    scale, zero_point = _check_qparams(scale, zero_point, "scale", "zero_point", "quantize_per_tensor")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ArgumentTypeError(f"quantize_per_tensor: x must be a float tensor, got {_desc(x)}")
    if not isinstance(channels_last, bool):
        raise ArgumentTypeError("quantize_per_tensor: channels_last must be a bool, got "
                                f"{type(channels_last).__name__}")
    x = x.detach().to(torch.float32)
    cl = torch.channels_last
    if not (x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=cl))):
        x = x.contiguous()
    backend = _resolve(x.device, "quantize_per_tensor")
    kern = _grid.kernels(backend, "quant")
    inv = _inv_scale(scale)
    pad = channels_last and x.dim() == 4 and channels is not None and channels > x.shape[1]
    if (channels_last and x.dim() == 4 and not x.is_contiguous(memory_format=cl) and hasattr(kern, "quantize_nhwc")
            and x.numel()):
        shape = (x.shape[0], channels, *x.shape[2:]) if pad else x.shape
        out = _alloc.empty(shape, torch.uint8, x.device, memory_format=cl)
        kern.quantize_nhwc(x, inv, zero_point, out)      # x is contiguous NCHW here; extra channels: zero_point
        return out
    out = _alloc._poisoned(torch.empty_like(x, dtype=torch.uint8))     # x's strides: dense either way
    if x.numel():
        kern.quantize(x, inv, zero_point, out)
    if channels_last and out.dim() == 4:
        out = out.contiguous(memory_format=cl)
    if pad:
        padded = _alloc.empty((out.shape[0], channels, *out.shape[2:]), torch.uint8, out.device, memory_format=cl)
        padded[:, :out.shape[1]] = out
        padded[:, out.shape[1]:] = zero_point
        out = padded
    return out


def dequantize(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """float32 scale * (q - zero_point)."""
    scale, zero_point = _check_qparams(scale, zero_point, "scale", "zero_point", "dequantize")
    if not isinstance(q, torch.Tensor) or q.dtype != torch.uint8:
        raise ArgumentTypeError(f"dequantize: q must be a uint8 tensor, got {_desc(q)}")
    return (q.to(torch.float32) - zero_point) * scale


def activation_bounds(activation, output_scale: float, output_zero_point: int) -> tuple[int, int]:
    """(qmin, qmax): the activation as a clamp in the quantised domain."""
    if activation is None:
        return 0, 255
    if activation == "relu":
        return output_zero_point, 255
    six = int(torch.round(torch.tensor(6.0 / output_scale, dtype=torch.float64)).item())
    return output_zero_point, min(255, output_zero_point + six)


# ----------------------------------------------------------------------------- shared argument work
def _prepare(op, input, input_scale, input_zero_point, weight, bias, output_scale, output_zero_point, activation,
             residual, residual_scale, residual_zero_point, out_shape_fn):
    if not isinstance(input, torch.Tensor) or input.dtype != torch.uint8:
        raise ArgumentTypeError(f"{op}: input must be a uint8 tensor, got {_desc(input)}")
    if not isinstance(weight, QuantizedWeight):
        raise ArgumentTypeError(f"{op}: weight must be a pyimgcls.ops.QuantizedWeight (see quantize_weight), "
                                f"got {type(weight).__name__}")
    if weight.q.device != input.device:
        raise ArgumentValueError(f"{op}: weight is on {weight.q.device} but input is on {input.device}")
    s_in, z_in = _check_qparams(input_scale, input_zero_point, "input_scale", "input_zero_point", op)
    if activation not in _ACTS:
        raise ArgumentValueError(f"{op}: activation must be None, 'relu' or 'relu6' for quantised ops, "
                                 f"got {activation!r}")
    float_out = output_scale is None
    if float_out:
        if output_zero_point not in (None, 0):
            raise ArgumentValueError(f"{op}: output_zero_point needs output_scale (float output has no zero point)")
        if residual is not None:
            raise ArgumentValueError(f"{op}: residual needs a quantised output (give output_scale)")
        s_out, z_out = 1.0, 0
    else:
        s_out, z_out = _check_qparams(output_scale, 0 if output_zero_point is None else output_zero_point,
                                      "output_scale", "output_zero_point", op)
    O = weight.out_features
    K = weight.q[0].numel()
    if K * 255 * 128 + _BIAS_LIMIT > _MAX_ACC:
        raise ArgumentValueError(f"{op}: the weight's reduction length {K} is too long for int32 accumulation "
                                 f"(at most {(_MAX_ACC - _BIAS_LIMIT) // (255 * 128)})")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise ArgumentTypeError(f"{op}: bias must be a tensor or None, got {type(bias).__name__}")
        if bias.shape != (O,):
            raise ArgumentValueError(f"{op}: bias must have shape ({O},), got {tuple(bias.shape)}")
        if bias.dtype == torch.int32:
            bias_q = bias.contiguous()
            # checked once per (tensor, version): a model passes the same bias on every call, and the
            # reduction costs ~15 us (half a batch-1 conv). The reference held keeps the identity unique.
            seen = weight._bias_checked
            if seen is None or seen[0] is not bias_q or seen[1] != bias_q._version:
                if int(bias_q.abs().max()) > _BIAS_LIMIT:
                    raise ArgumentValueError(f"{op}: int32 bias values must be within +-2^30")
                weight._bias_checked = (bias_q, bias_q._version)
        elif bias.is_floating_point():
            if not bool(torch.isfinite(bias).all()):
                raise ArgumentValueError(f"{op}: bias has NaN or infinite values")
            bias_q = torch.round(bias.detach().double() / (s_in * weight.scale.double()))
            bias_q = bias_q.clamp(-_BIAS_LIMIT, _BIAS_LIMIT).to(torch.int32)
        else:
            raise ArgumentTypeError(f"{op}: bias must be float or int32, got {bias.dtype}")
    else:
        bias_q = None
    mult = weight._mult.get((s_in, s_out))
    if mult is None:
        mult = (s_in * weight.scale.double() / s_out).to(torch.float32)
        if not bool(torch.isfinite(mult).all()) or not bool((mult > 0).all()):
            raise ArgumentValueError(f"{op}: input_scale * weight.scale / output_scale is not a positive finite "
                                     "float32")
        if len(weight._mult) >= 16:      # a model uses one or two (input, output) scale pairs per layer
            weight._mult.clear()
        weight._mult[(s_in, s_out)] = mult = mult.to(input.device)
    out_shape = out_shape_fn()
    res = None
    r_zero, r_mult = 0, 0.0
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or residual.dtype != torch.uint8:
            raise ArgumentTypeError(f"{op}: residual must be a uint8 tensor, got {_desc(residual)}")
        if tuple(residual.shape) != tuple(out_shape):
            raise ArgumentValueError(f"{op}: residual must have the output's shape {tuple(out_shape)}, "
                                     f"got {tuple(residual.shape)}")
        s_r, r_zero = _check_qparams(residual_scale, 0 if residual_zero_point is None else residual_zero_point,
                                     "residual_scale", "residual_zero_point", op)
        r_mult = float(torch.tensor(s_r / s_out, dtype=torch.float32))
        res = residual
    qmin, qmax = (0, 255) if float_out else activation_bounds(activation, s_out, z_out)
    backend = _resolve(input.device, op)
    ep = dict(bias=bias_q, mult=mult, res_zero=r_zero, res_mult=r_mult, out_zero=z_out, qmin=qmin,
              qmax=qmax, act=_ACTS[activation] if float_out else 0)
    return backend, z_in, float_out, ep, res, out_shape


def _slice(t, c0, c1):
    return None if t is None else t[c0:c1]


# ----------------------------------------------------------------------------- public ops
def quantized_linear(input: torch.Tensor, input_scale: float, input_zero_point: int, weight: QuantizedWeight,
                     bias: torch.Tensor | None = None, output_scale: float | None = None,
                     output_zero_point: int | None = None, activation: str | None = None,
                     residual: torch.Tensor | None = None, residual_scale: float | None = None,
                     residual_zero_point: int | None = None) -> torch.Tensor:
    """uint8 [*, K] x int8 weight [O, K] -> uint8 [*, O] (or float32 with ``output_scale=None``)."""
    op = "quantized_linear"
    if isinstance(weight, QuantizedWeight) and weight.q.dim() != 2:
        raise ArgumentValueError(f"{op}: weight must be a 2-D (linear) QuantizedWeight, "
                                 f"got shape {tuple(weight.q.shape)}")
    if isinstance(input, torch.Tensor) and isinstance(weight, QuantizedWeight) and (
            input.dim() < 1 or input.shape[-1] != weight.q.shape[1]):
        raise ArgumentValueError(f"{op}: input's last dimension must be {weight.q.shape[1]} (weight in_features), "
                                 f"got shape {tuple(input.shape)}")
    backend, z_in, float_out, ep, res, out_shape = _prepare(
        op, input, input_scale, input_zero_point, weight, bias, output_scale, output_zero_point, activation, residual,
        residual_scale, residual_zero_point, lambda: (*input.shape[:-1], weight.q.shape[0]))
    K, O = weight.q.shape[1], weight.q.shape[0]
    a = input.reshape(-1, K)
    if a.stride(-1) != 1 or (a.shape[0] > 1 and a.stride(0) < K):
        a = a.contiguous()
    M = a.shape[0]
    out = _alloc.empty((M, O), torch.float32 if float_out else torch.uint8, input.device)
    if M and O:
        r2 = None if res is None else res.reshape(M, O).contiguous()
        _grid.kernels(backend, "quant").gemm(a, z_in, weight.packed(backend, 0), K, ep["bias"], ep["mult"], r2,
                                             ep["res_zero"], ep["res_mult"], ep["out_zero"], ep["qmin"], ep["qmax"],
                                             ep["act"], out)
    return out.reshape(out_shape)


def _pair(v, name, op, min_value):
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    ints = isinstance(v, (tuple, list)) and all(isinstance(e, int) and not isinstance(e, bool) for e in v)
    if not (ints and len(v) == 2):
        raise ArgumentTypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    if any(e < min_value for e in v):
        raise ArgumentValueError(f"{op}: {name} must be >= {min_value}, got {tuple(v)}")
    return tuple(v)


def quantized_conv2d(input: torch.Tensor, input_scale: float, input_zero_point: int, weight: QuantizedWeight,
                     bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1,
                     output_scale: float | None = None, output_zero_point: int | None = None,
                     activation: str | None = None, residual: torch.Tensor | None = None,
                     residual_scale: float | None = None, residual_zero_point: int | None = None) -> torch.Tensor:
    """uint8 [N, C, H, W] x int8 weight [O, C/groups, KH, KW] -> uint8 [N, O, OH, OW] channels_last (or
    float32 with ``output_scale=None``). Groups (depthwise included) come from ``weight.groups``;
    padding reads as real 0 (the input zero point)."""
    op = "quantized_conv2d"
    if isinstance(weight, QuantizedWeight) and weight.q.dim() != 4:
        raise ArgumentValueError(f"{op}: weight must be a 4-D (conv) QuantizedWeight, "
                                 f"got shape {tuple(weight.q.shape)}")
    if isinstance(input, torch.Tensor) and input.dim() != 4:
        raise ArgumentValueError(f"{op}: input must be 4-D [N, C, H, W], got shape {tuple(input.shape)}")
    stride, padding, dilation = (_pair(stride, "stride", op, 1), _pair(padding, "padding", op, 0),
                                 _pair(dilation, "dilation", op, 1))
    if isinstance(input, torch.Tensor) and isinstance(weight, QuantizedWeight):
        cg = weight.q.shape[1]
        if input.shape[1] != cg * weight.groups:
            raise ArgumentValueError(f"{op}: input has {input.shape[1]} channels but the weight expects "
                                     f"{cg * weight.groups} ({cg} per group x {weight.groups} groups)")
    N, C, H, W = input.shape if isinstance(input, torch.Tensor) else (0, 0, 0, 0)
    O, CG, KH, KW = weight.q.shape if isinstance(weight, QuantizedWeight) else (0, 0, 0, 0)
    OH = (H + 2 * padding[0] - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    OW = (W + 2 * padding[1] - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    if isinstance(input, torch.Tensor) and (OH < 1 or OW < 1):
        raise ArgumentValueError(f"{op}: the kernel ({KH}x{KW}, dilation {dilation}) does not fit the padded input "
                                 f"{H}x{W} (padding {padding})")
    backend, z_in, float_out, ep, res, out_shape = _prepare(
        op, input, input_scale, input_zero_point, weight, bias, output_scale, output_zero_point, activation, residual,
        residual_scale, residual_zero_point, lambda: (N, O, OH, OW))
    G, OG, K, M = weight.groups, O // weight.groups, CG * KH * KW, N * OH * OW
    out = _alloc.empty((N, O, OH, OW), torch.float32 if float_out else torch.uint8, input.device,
                       memory_format=torch.channels_last)
    if M == 0:
        return out
    kern = _grid.kernels(backend, "quant")
    out2 = out.permute(0, 2, 3, 1).reshape(M, O)          # a view: channels_last is [M, O] row-major
    r2 = None if res is None else res.permute(0, 2, 3, 1).contiguous().reshape(M, O)
    direct = (KH == KW == 1 and stride == (1, 1) and padding == (0, 0)
              and input.is_contiguous(memory_format=torch.channels_last))
    if G == 1 and not direct and hasattr(kern, "conv_gemm"):
        # im2col fused into the GEMM's row tasks: no [M, K] column matrix through memory
        kern.conv_gemm(input, z_in, weight.packed(backend, 0), KH, KW, stride, padding, dilation, OH, OW, ep["bias"],
                       ep["mult"], r2, ep["res_zero"], ep["res_mult"], ep["out_zero"], ep["qmin"], ep["qmax"],
                       ep["act"], out2)
        return out
    col = None
    for g in range(G):
        c0, n0 = g * CG, g * OG
        if direct:
            a = input.permute(0, 2, 3, 1).reshape(M, C)
            if G > 1:
                a = a[:, c0:c0 + CG]
        else:
            if col is None:
                col = _col_buffer(M, K, input.device)
            kern.im2col(input, c0, CG, KH, KW, stride, padding, dilation, OH, OW, z_in, col)
            a = col
        if G == 1:      # no per-group views: ~10 us of tensor slicing per call, a third of a batch-1 conv
            kern.gemm(a, z_in, weight.packed(backend, 0), K, ep["bias"], ep["mult"], r2, ep["res_zero"],
                      ep["res_mult"], ep["out_zero"], ep["qmin"], ep["qmax"], ep["act"], out2)
            continue
        kern.gemm(a, z_in, weight.packed(backend, g), K, _slice(ep["bias"], n0, n0 + OG), ep["mult"][n0:n0 + OG],
                  None if r2 is None else r2[:, n0:n0 + OG], ep["res_zero"], ep["res_mult"], ep["out_zero"],
                  ep["qmin"], ep["qmax"], ep["act"], out2[:, n0:n0 + OG])
    return out


# ----------------------------------------------------------------------------- bound layers
_UNBOUND = object()      # a layout the backend cannot bind: every call runs the op


class BoundQuantizedLayer:
    """``quantized_conv2d`` (4-D weight) or ``quantized_linear`` (2-D weight) with every argument but the
    activations fixed, as a quantised model's layer: ``layer(input, residual=None)`` returns what the op
    returns for these arguments, bit for bit.

    Why: at batch 1 the op's per-call argument work (type and range checks, backend resolution, the
    output's and the residual's [M, O] views, the kernel wrapper's pointer and stride gathering) cost
    20-35 us per layer on this machine, as much as a small layer's kernel (ResNet-18 64x64: ~0.55 ms of
    a 1.9 ms forward). The first call for a layout (input and residual shape, strides, dtype and device,
    the backend in force, the bias's version) runs the op itself, so every check and error is the op's,
    and asks the backend to bind the native call it made (``bind_layer``: the cpu backend, groups = 1
    convolutions and linear layers with dense inputs); later calls with that layout allocate the output
    and make that one call. Layouts the backend cannot bind keep running the op."""

    def __init__(self, weight: QuantizedWeight, bias=None, stride=1, padding=0, dilation=1, *, input_scale,
                 input_zero_point, output_scale=None, output_zero_point=None, activation=None, residual_scale=None,
                 residual_zero_point=None):
        if not isinstance(weight, QuantizedWeight):
            raise ArgumentTypeError("BoundQuantizedLayer: weight must be a QuantizedWeight, got "
                                    f"{type(weight).__name__}")
        self.conv = weight.q.dim() == 4
        op = "quantized_conv2d" if self.conv else "quantized_linear"
        self.weight, self.bias, self.activation = weight, bias, activation
        self.stride, self.padding, self.dilation = (_pair(stride, "stride", op, 1), _pair(padding, "padding", op, 0),
                                                    _pair(dilation, "dilation", op, 1))
        self.input_scale, self.input_zero_point = input_scale, input_zero_point
        self.output_scale, self.output_zero_point = output_scale, output_zero_point
        self.residual_scale, self.residual_zero_point = residual_scale, residual_zero_point
        self._bound: dict = {}
        self._spare: dict = {}

    def __getstate__(self):
        # copies and pickles drop the bindings (closures over this object's packed tensors): the copy
        # binds its own on its first calls; and the spare outputs (buffers, not state)
        state = dict(self.__dict__)
        state["_bound"], state["_spare"] = {}, {}
        return state

    def give_back(self, out: torch.Tensor) -> None:
        """Hand back an output of this layer that nothing references any more: the next call with the
        same output layout writes into it instead of allocating. Why: an activation of a few MB is a
        fresh mapping whenever glibc's dynamic threshold sends that size to mmap, and its pages are
        then faulted in on every forward (ResNet-50 224x224 batch 16 at 2 threads: 9.4 K faults per
        forward, in the stem and two 1x1 expansions). QuantizedModel gives back the activations all of
        whose consumers are quantised layers or pools (which keep no reference), after their last use."""
        if type(out) is torch.Tensor and out.device.type == "cpu" and len(self._spare) < 2:
            self._spare[(tuple(out.shape), out.stride(), out.dtype)] = out

    def _op(self, input, residual):
        kw = dict(output_scale=self.output_scale, output_zero_point=self.output_zero_point, activation=self.activation,
                  residual=residual, residual_scale=self.residual_scale, residual_zero_point=self.residual_zero_point)
        if self.conv:
            return quantized_conv2d(input, self.input_scale, self.input_zero_point, self.weight, self.bias,
                                    self.stride, self.padding, self.dilation, **kw)
        return quantized_linear(input, self.input_scale, self.input_zero_point, self.weight, self.bias, **kw)

    def _bind(self, input, residual, out):
        """(run, output shape, output strides, dtype) for this layout, or _UNBOUND."""
        if input.device.type != "cpu" or out.numel() == 0 or _grid._recorder is not None:
            return _UNBOUND
        op = "quantized_conv2d" if self.conv else "quantized_linear"
        backend, z_in, float_out, ep, res, out_shape = _prepare(
            op, input, self.input_scale, self.input_zero_point, self.weight, self.bias, self.output_scale,
            self.output_zero_point, self.activation, residual, self.residual_scale, self.residual_zero_point,
            lambda: tuple(out.shape))
        kern = _grid.kernels(backend, "quant")
        if not hasattr(kern, "bind_layer"):
            return _UNBOUND
        w = self.weight
        O = w.out_features
        if self.conv:
            N, C, H, W = input.shape
            _, _, KH, KW = w.q.shape
            OH, OW = out.shape[2], out.shape[3]
            M = N * OH * OW
            cl = torch.channels_last
            if w.groups != 1 or (res is not None and not res.is_contiguous(memory_format=cl)):
                return _UNBOUND
            out2 = out.permute(0, 2, 3, 1).reshape(M, O)
            r2 = None if res is None else res.permute(0, 2, 3, 1).reshape(M, O)
            if (KH == KW == 1 and self.stride == (1, 1) and self.padding == (0, 0)
                    and input.is_contiguous(memory_format=cl)):
                x, conv = input.permute(0, 2, 3, 1).reshape(M, C), None       # the op's "direct" GEMM
            else:
                x, conv = input, (KH, KW, self.stride, self.padding, self.dilation, OH, OW)
            shape = (N, O, OH, OW)
        else:
            K = w.q.shape[1]
            if not input.is_contiguous() or (res is not None and not res.is_contiguous()):
                return _UNBOUND
            x, conv = input.reshape(-1, K), None
            out2 = out.reshape(-1, O)
            r2 = None if res is None else res.reshape(-1, O)
            shape = tuple(out.shape)
        run = kern.bind_layer(x, z_in, r2, out2, w.packed(backend, 0), conv, ep["bias"], ep["mult"], ep["res_zero"],
                              ep["res_mult"], ep["out_zero"], ep["qmin"], ep["qmax"], ep["act"])
        # the output is made with empty_strided (the strides of `out`): ~1.5 us cheaper per call than
        # empty(memory_format=channels_last), a tenth of a bound call
        return run, shape, out.stride(), out.dtype

    def __call__(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if type(input) is not torch.Tensor or (residual is not None and type(residual) is not torch.Tensor):
            return self._op(input, residual)
        key = (_backend.get_backend(), input.dtype, input.device, input.shape, input.stride(),
               None if residual is None else (residual.dtype, residual.device, residual.shape, residual.stride()),
               self.bias._version if isinstance(self.bias, torch.Tensor) else None)
        b = self._bound.get(key)
        if b is None:
            out = self._op(input, residual)
            if len(self._bound) >= 8:        # a model sees one or two layouts per layer (batch sizes)
                self._bound.clear()
            self._bound[key] = self._bind(input, residual, out)
            return out
        if b is _UNBOUND:
            return self._op(input, residual)
        run, shape, strides, dtype = b
        out = self._spare.pop((shape, strides, dtype), None) if self._spare else None   # dict.pop: atomic
        if out is None:
            out = torch.empty_strided(shape, strides, dtype=dtype)       # bound layers are on the CPU
        out = _alloc._poisoned(out)
        run(input.data_ptr(), 0 if residual is None else residual.data_ptr(), out.data_ptr())
        return out


# ----------------------------------------------------------------------------- pooling
def _uint8_image(x, op):
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
        raise ArgumentTypeError(f"{op}: input must be a uint8 tensor, got {_desc(x)}")
    if x.dim() != 4:
        raise ArgumentValueError(f"{op}: input must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")


def _pool_out(size, k, s, p, d, ceil_mode):
    eff = d * (k - 1) + 1
    num = size + 2 * p - eff
    out = (num + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:   # the last window must start inside the image or left padding
        out -= 1
    return out


def quantized_max_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
                         ceil_mode: bool = False) -> torch.Tensor:
    """Max pooling of uint8 activations: max commutes with the (monotone) affine map, so the output
    keeps the input's scale and zero point. Arguments as torch.nn.functional.max_pool2d; the output
    is channels_last."""
    op = "quantized_max_pool2d"
    _uint8_image(input, op)
    k = _pair(kernel_size, "kernel_size", op, 1)
    s = k if stride is None or stride == [] else _pair(stride, "stride", op, 1)
    p, d = _pair(padding, "padding", op, 0), _pair(dilation, "dilation", op, 1)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ArgumentValueError(f"{op}: padding must be at most half the kernel size, got padding={p}, "
                                 f"kernel_size={k}")
    N, C, H, W = input.shape
    OH, OW = _pool_out(H, k[0], s[0], p[0], d[0], ceil_mode), _pool_out(W, k[1], s[1], p[1], d[1], ceil_mode)
    if OH < 1 or OW < 1:
        raise ArgumentValueError(f"{op}: the pooling window does not fit the {H}x{W} input")
    backend = _resolve(input.device, op)
    out = _alloc.empty((N, C, OH, OW), torch.uint8, input.device, memory_format=torch.channels_last)
    if out.numel():
        _grid.kernels(backend, "quant").max_pool2d(input, k, s, p, d, OH, OW, out)
    return out


def quantized_adaptive_avg_pool2d(input: torch.Tensor, output_size, input_scale: float, input_zero_point: int,
                                  output_scale: float, output_zero_point: int) -> torch.Tensor:
    """Adaptive average pooling of uint8 activations, requantised to (output_scale, output_zero_point):
    out = clamp(rne(float(sum(q - zp_in)) * float32(s_in / (s_out * count))) + zp_out, 0, 255), with
    PyTorch's windows [floor(o * I / O), ceil((o + 1) * I / O)). Output channels_last."""
    op = "quantized_adaptive_avg_pool2d"
    _uint8_image(input, op)
    s_in, z_in = _check_qparams(input_scale, input_zero_point, "input_scale", "input_zero_point", op)
    s_out, z_out = _check_qparams(output_scale, output_zero_point, "output_scale", "output_zero_point", op)
    OH, OW = _pair(output_size, "output_size", op, 1)
    N, C, H, W = input.shape
    backend = _resolve(input.device, op)
    out = _alloc.empty((N, C, OH, OW), torch.uint8, input.device, memory_format=torch.channels_last)
    if out.numel():
        if H == 0 or W == 0:
            raise ArgumentValueError(f"{op}: input has an empty spatial size {H}x{W}")
        _grid.kernels(backend, "quant").adaptive_avg_pool2d(input, OH, OW, z_in, s_in / s_out, z_out, out)
    return out


__all__ += ["quantized_max_pool2d", "quantized_adaptive_avg_pool2d", "BoundQuantizedLayer"]
