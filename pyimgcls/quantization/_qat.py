"""Quantisation-aware training: ``prepare_qat`` (fake-quantised float model to fine-tune) and ``convert``.

    qat = pyimgcls.quantization.prepare_qat(model)      # a new trainable module; model is unchanged
    ... train qat as any model (its forward sees int8 weights and uint8 activations, simulated) ...
    qmodel = pyimgcls.quantization.convert(qat)         # the same kind of module quantize() returns

BatchNorm: folded before training (the graph is ``fuse_for_inference``'s, the one ``quantize`` works
on), not kept as PyTorch's QAT keeps it (ConvBn modules that re-fold the BN every step). Why: the
fake-quantised graph is then node for node the graph ``convert`` runs on our integer kernels (every
weight that is fake-quantised is the weight that will be quantised, every fake-quantised activation
is an activation the int8 model requantises, with the same rounding), so what QAT optimises is what
runs afterwards; the cost is that fine-tuning runs without batch statistics, which is what PyTorch's
recipe converges to anyway (it freezes the BN statistics after the first few epochs) and is stable at
the small learning rates of QAT fine-tuning from a trained model.

Fake quantisation (plain torch ops; the integer kernels run only after ``convert``):

* weights of every quantised convolution / linear layer: symmetric int8, one scale per output channel
  (``per_channel=True``) or per layer, scale = max|w| / 127 recomputed every forward, exactly as
  ``ops.quantize_weight`` (same rounding, in float64); the gradient passes straight through
  (nothing is clamped: the range is the weight's own max);
* activations where the int8 model (un)quantises them: the input of each quantised layer that comes
  from a float value (the image, a layer kept in float), the output of every quantised convolution /
  linear layer but the last, the output of average pooling. uint8 affine, the range from a
  moving-average min / max observer (``MovingAverageMinMax``: the first batch's range, then
  ``range += 0.01 * (batch range - range)`` while training; frozen in eval mode), the scale and zero
  point from that range as the PTQ observers make them. Forward = ``dequantize(quantize_per_tensor(x))``
  bit for bit; backward = the straight-through estimator clipped to the representable range (the
  gradient is zero where the value was clamped to 0 or 255, as torch.ao's FakeQuantize).
Max pooling, relu, flatten and views of a quantised value keep its grid and are not fake-quantised
again (as in the int8 model). A layer with a quantised residual (ResNet's skip connections) takes the
int8 epilogue's two roundings in its forward value, ``clamp(rne(conv / s) + rne(residual / s) + zp)``
on its output's grid (an extra convolution without the residual, no gradient), and the float path's
gradient; the converted model then differs from the QAT forward by rounding ties only.
"""
from __future__ import annotations

import math

import torch

from .. import ops
from ..errors import ArgumentTypeError, ArgumentValueError
from ..ops import quant as qops
from ._ptq import QuantizedModel, _fused_graph
from .observers import _affine

__all__ = ["prepare_qat", "convert", "QATModel", "fake_quantize_per_tensor", "fake_quantize_weight",
           "MovingAverageMinMax"]

_ALIAS_KINDS = ("maxpool", "pass", "reshape", "relu")


# ----------------------------------------------------------------------------- fake quantisation
class _FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float, zero_point: int):
        # the arithmetic of ops.quantize_per_tensor then ops.dequantize: one fp32 multiply by the fp32
        # reciprocal, round half to even, NaN -> 0, clamp; then float32 (q - zp) * scale
        inv = torch.tensor(1.0 / scale, dtype=torch.float32)
        v = torch.nan_to_num(x.to(torch.float32) * inv, nan=0.0).clamp(-256, 512).round() + zero_point
        ctx.save_for_backward((v >= 0) & (v <= 255))
        q = v.clamp(0, 255)
        return ((q - zero_point) * scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


def fake_quantize_per_tensor(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``dequantize(quantize_per_tensor(x, scale, zero_point))`` as a differentiable float op: the
    gradient is 1 where x lies in the uint8 range [(0 - zp) * scale, (255 - zp) * scale], else 0."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ArgumentTypeError(f"fake_quantize_per_tensor: x must be a float tensor, got {type(x).__name__}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ArgumentValueError(f"fake_quantize_per_tensor: scale must be a positive finite float, got {scale!r}")
    if isinstance(zero_point, bool) or not isinstance(zero_point, int) or not 0 <= zero_point <= 255:
        raise ArgumentValueError(f"fake_quantize_per_tensor: zero_point must be an int in [0, 255], got {zero_point!r}")
    return _FakeQuantize.apply(x, float(scale), int(zero_point))


def fake_quantize_weight(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """``q * scale`` of ``ops.quantize_weight(w, per_channel=...)`` (symmetric int8, scale = max|w| / 127
    per output channel or per tensor, an all-zero channel scale 1), with an identity gradient."""
    with torch.no_grad():
        wd = w.detach().double()
        amax = wd.abs().reshape(wd.shape[0], -1).amax(1) if per_channel else wd.abs().amax().expand(wd.shape[0])
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).to(torch.float32).double()
        scale = scale.reshape([-1] + [1] * (wd.dim() - 1))
        fq = (torch.round(wd / scale).clamp(-127, 127) * scale).to(w.dtype)
    return w + (fq - w).detach()


class _FakeQuantLayer(torch.nn.Module):
    """A quantised convolution / linear layer of the QAT model: the layer's own forward, run with its
    weight fake-quantised (``torch.func.functional_call``, so any Conv2d / Linear flavour works)."""

    def __init__(self, layer: torch.nn.Module, per_channel: bool):
        super().__init__()
        self.layer, self.per_channel = layer, per_channel
        self._out_fq = None      # the fake-quant of this layer's output, set when it has a quantised residual

    def forward(self, *args, **kwargs):
        w = fake_quantize_weight(self.layer.weight, self.per_channel)
        y = torch.func.functional_call(self.layer, {"weight": w}, args, kwargs)
        out_fq, r = self._out_fq, kwargs.get("residual")
        if out_fq is None or r is None or int(out_fq.seen) == 0:
            return y
        # The int8 epilogue rounds the convolution and the residual separately, each to the output grid:
        # q = clamp(rne(conv / s) + rne(r / s) + zp) (activation as the clamp); the forward value is that,
        # the gradient the float path's (straight through).
        m = self.layer
        with torch.no_grad():
            s, z = out_fq.qparams()
            conv = ops.conv2d(args[0], w.detach(), None if m.bias is None else m.bias.detach(), m.stride, m.padding,
                              m.dilation, m.groups)
            lo, hi = qops.activation_bounds(m.activation, s, z)
            inv = torch.tensor(1.0 / s, dtype=torch.float32)
            q = (torch.round(conv.float() * inv) + torch.round(r.detach().float() * inv) + z).clamp(lo, hi)
            sim = ((q - z) * s).to(y.dtype)
        return y + (sim - y).detach()


def _set_submodule(root: torch.nn.Module, target: str, module: torch.nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


class MovingAverageMinMax(torch.nn.Module):
    """Fake-quantises an activation with a moving-average min / max range (see the module docstring).
    The range is updated in training mode, and on the first batch it ever sees in any mode."""

    def __init__(self, name: str, averaging_constant: float = 0.01):
        super().__init__()
        self.name, self.c = name, averaging_constant
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def qparams(self) -> tuple[float, int]:
        if int(self.seen) == 0:
            raise ArgumentValueError(f"convert: activation '{self.name}' was never observed: run the QAT model on "
                                     "data (training or one forward) before convert")
        return _affine(float(self.lo), float(self.hi))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or int(self.seen) == 0:
            with torch.no_grad():
                lo, hi = x.detach().min().float(), x.detach().max().float()
                if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
                    raise ValueError(f"prepare_qat: NaN or infinite values at '{self.name}'")
                if int(self.seen) == 0:
                    self.lo.copy_(lo)
                    self.hi.copy_(hi)
                else:
                    self.lo.add_(self.c * (lo - self.lo))
                    self.hi.add_(self.c * (hi - self.hi))
                self.seen.add_(1)
        return _FakeQuantize.apply(x, *_affine(float(self.lo), float(self.hi)))


# ----------------------------------------------------------------------------- the QAT graph
def _fake_quant_points(gm: torch.fx.GraphModule):
    """Where the int8 model of ``gm`` (QuantizedModel) (un)quantises: (quantised conv / linear nodes,
    nodes whose output is requantised, {consumer node: [(position, float source node)]} where a float
    value is quantised on its way into a quantised layer). Mirrors QuantizedModel's plan."""
    modules = dict(gm.named_modules())
    produces_q, layers, outputs, edges = set(), [], [], {}
    for n in gm.graph.nodes:
        kind = QuantizedModel._classify(n, modules)
        src = n.args[0] if n.args and isinstance(n.args[0], torch.fx.Node) else None
        last = all(u.op == "output" for u in n.users)
        if kind in ("conv", "linear"):
            layers.append(n)
            ins = [("input", src)]
            res = n.kwargs.get("residual") if kind == "conv" else None
            if res is not None and not last:     # the last layer adds its residual in float
                ins.append(("residual", res))
            edges[n] = [(pos, s) for pos, s in ins if s.name not in produces_q]
            if not last:
                produces_q.add(n.name)
                outputs.append(n)
        elif kind == "avgpool" and src is not None and src.name in produces_q:
            produces_q.add(n.name)
            outputs.append(n)
        elif kind in _ALIAS_KINDS and src is not None and src.name in produces_q:
            produces_q.add(n.name)
    return layers, outputs, edges


class QATModel(torch.nn.Module):
    """The fake-quantised float model built by :func:`prepare_qat`; train it, then :func:`convert`."""

    def __init__(self, gm: torch.fx.GraphModule, per_channel: bool):
        super().__init__()
        self.per_channel = per_channel
        modules = dict(gm.named_modules())
        layers, outputs, edges = _fake_quant_points(gm)
        for n in layers:
            _set_submodule(gm, n.target, _FakeQuantLayer(modules[n.target], per_channel))
        self.fake_quant_nodes: dict[str, str] = {}      # fake-quant submodule -> the node whose qparams it makes
        made: dict = {}

        def fq_after(src: torch.fx.Node) -> torch.fx.Node:
            if src.name not in made:
                target = f"fq_{src.name}"
                gm.add_submodule(target, MovingAverageMinMax(src.name))
                self.fake_quant_nodes[target] = src.name
                with gm.graph.inserting_after(src):
                    made[src.name] = gm.graph.call_module(target, (src,))
            return made[src.name]

        for n in outputs:
            fq = fq_after(n)
            n.replace_all_uses_with(fq, delete_user_cb=lambda u: u is not fq)
            if n.kwargs.get("residual") is not None:       # a plain attribute, not a second registration
                object.__setattr__(gm.get_submodule(n.target), "_out_fq", gm.get_submodule(fq.target))
        for n, ins in edges.items():
            for pos, src in ins:
                fq = fq_after(src)
                if pos == "input":
                    n.args = (fq,) + tuple(n.args[1:])
                else:
                    n.kwargs = dict(n.kwargs, residual=fq)
        gm.graph.lint()
        gm.recompile()
        self.graph_module = gm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph_module(x)


def prepare_qat(model: torch.nn.Module, per_channel: bool = True) -> QATModel:
    """A new trainable copy of ``model`` with BatchNorm folded, fake-quantised int8 weights and uint8
    activations (straight-through gradients), in training mode; ``model`` is not modified. Fine-tune
    it, then :func:`convert` it. Layers without a quantised kernel stay in float."""
    if not isinstance(model, torch.nn.Module):
        raise ArgumentTypeError(f"prepare_qat: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, (QATModel, QuantizedModel)):
        raise ArgumentTypeError(f"prepare_qat: model is already a {type(model).__name__}; give the float model")
    if not isinstance(per_channel, bool):
        raise ArgumentTypeError(f"prepare_qat: per_channel must be a bool, got {type(per_channel).__name__}")
    return QATModel(_fused_graph(model, "prepare_qat"), per_channel).train()


def convert(qat_model: QATModel) -> QuantizedModel:
    """The int8 model (our integer kernels; the same kind of module ``quantize`` returns) of a trained
    :class:`QATModel`: its weights quantised as they were fake-quantised, each activation's scale and
    zero point from its observer. ``qat_model`` is not modified."""
    if not isinstance(qat_model, QATModel):
        raise ArgumentTypeError("convert: qat_model must be a QATModel from pyimgcls.quantization.prepare_qat, "
                                f"got {type(qat_model).__name__}")
    import copy
    gm = copy.deepcopy(qat_model.graph_module)
    qparams = {}
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and n.target in qat_model.fake_quant_nodes:
            qparams[qat_model.fake_quant_nodes[n.target]] = gm.get_submodule(n.target).qparams()
            n.replace_all_uses_with(n.args[0])
            gm.graph.erase_node(n)
            gm.delete_submodule(n.target)
    for name, m in list(gm.named_modules()):
        if isinstance(m, _FakeQuantLayer):
            _set_submodule(gm, name, m.layer)
    gm.graph.lint()
    gm.recompile()
    return QuantizedModel(gm.eval(), qparams, qat_model.per_channel).eval()
