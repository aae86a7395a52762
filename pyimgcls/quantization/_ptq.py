"""Post-training static quantisation onto pyimgcls's int8 ops (pyimgcls/ops/quant.py).

quantize(model, calibration_batches, observer, per_channel):
  1. ``fuse_for_inference`` on a copy (BatchNorm folded into the convolutions, ReLU / ReLU6 and
     residual adds moved into their epilogues); the data flow traced with torch.fx;
  2. calibration: the float graph runs on every batch while an observer per node records the range
     of that node's float output;
  3. the result, :class:`QuantizedModel`, runs the same graph with uint8 activations: convolutions and
     linear layers on ``quantized_conv2d`` / ``quantized_linear`` (weights int8 per output channel,
     activation and residual in the epilogue, each output requantised to its observed range; the
     last layer returns float), max / adaptive average pooling on the uint8 pools, flatten / view /
     identity / dropout / relu on the uint8 tensor directly. Anything else runs in float on the
     dequantised values and is listed in a warning (``QuantizedModel.float_layers``).
"""
from __future__ import annotations

import operator
import os
import warnings

import torch
import torch.nn.functional as F

from .. import _backend
from .. import backends as _grid
from .. import fuse as _fuse
from .. import ops
from ..errors import ArgumentTypeError, ArgumentValueError
from ..ops import quant as q
from . import _program
from .observers import OBSERVERS

_UNSEEN, _NO_PROGRAM = object(), object()       # QuantizedModel._programs: layout not seen / no program

__all__ = ["quantize", "QuantizedModel", "QTensor"]


class QTensor:
    """A uint8 activation with its per-tensor affine map: real = scale * (data - zero_point)."""
    __slots__ = ("data", "scale", "zero_point")

    def __init__(self, data: torch.Tensor, scale: float, zero_point: int):
        self.data, self.scale, self.zero_point = data, scale, zero_point

    def dequantize(self) -> torch.Tensor:
        return ops.dequantize(self.data, self.scale, self.zero_point)


_FLATTEN = {torch.flatten}
_RESHAPE_METHODS = {"flatten", "view", "reshape"}
_PASS_MODULES = (torch.nn.Identity, torch.nn.Dropout, torch.nn.Flatten)
_RELU_FUNCS = {F.relu, torch.relu}
_STRUCTURAL = {operator.getitem, getattr}


def _conv_ok(m) -> bool:
    return (isinstance(m, torch.nn.Conv2d) and m.padding_mode == "zeros" and isinstance(m.padding, tuple)
            and getattr(m, "activation", None) in (None, "relu", "relu6"))


def _linear_ok(m) -> bool:
    return isinstance(m, torch.nn.Linear) and getattr(m, "activation", None) in (None, "relu", "relu6")


def _batches(calibration_batches):
    if isinstance(calibration_batches, torch.Tensor):
        raise ArgumentTypeError("quantize: calibration_batches must be an iterable of batches (e.g. a list or a "
                                "DataLoader), not a tensor; wrap a single batch as [x]")
    try:
        it = iter(calibration_batches)
    except TypeError:
        raise ArgumentTypeError(f"quantize: calibration_batches must be an iterable of tensors or (input, target) "
                                f"pairs, got {type(calibration_batches).__name__}") from None
    for i, b in enumerate(it):
        if isinstance(b, (tuple, list)) and b:
            b = b[0]
        if not isinstance(b, torch.Tensor) or not b.is_floating_point() or b.dim() != 4:
            got = (f"a {b.dtype} tensor of shape {tuple(b.shape)}" if isinstance(b, torch.Tensor)
                   else type(b).__name__)
            raise ArgumentValueError(f"quantize: calibration batch {i} must be a float tensor [N, C, H, W] or an "
                                     f"(input, target) pair, got {got}")
        yield b


class _Calibrator(torch.fx.Interpreter):
    def __init__(self, gm, observers, make):
        super().__init__(gm)
        self.observers, self.make = observers, make

    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            obs = self.observers.get(n.name)
            if obs is None:
                obs = self.observers[n.name] = self.make(n.name)
            obs.observe(out)
        return out


def _fetch_attr(root, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


class QuantizedModel(torch.nn.Module):
    """The int8 model: takes float images, returns float logits. Built by :func:`quantize`."""

    def __init__(self, gm: torch.fx.GraphModule, qparams: dict, per_channel: bool, saved: dict | None = None):
        """``saved`` (from :meth:`state`, e.g. a checkpoint): the int8 weights and int32 biases to use
        instead of quantising the float weights of ``gm``'s convolutions and linear layers."""
        super().__init__()
        self.graph_module = gm
        self.per_channel = per_channel
        self.qparams = qparams                      # node name -> (scale, zero point) of its output
        self.weights: dict[str, q.QuantizedWeight] = {}
        self.biases: dict[str, torch.Tensor] = {}
        self.float_layers: list[str] = []
        modules = dict(gm.named_modules())
        self._plan = []
        produces_q: set = set()           # nodes whose value is a QTensor when the model runs
        for n in gm.graph.nodes:
            kind = self._classify(n, modules)
            src = n.args[0] if n.args and isinstance(n.args[0], torch.fx.Node) else None
            if kind in ("conv", "linear") and not self._last(n):
                produces_q.add(n.name)
            elif kind == "avgpool" and src is not None and src.name in produces_q:
                produces_q.add(n.name)
            elif kind in ("maxpool", "pass", "reshape", "relu") and src is not None and src.name in produces_q:
                # these run on the uint8 values and keep their scale and zero point (not the range observed
                # on this node's float output)
                produces_q.add(n.name)
                self.qparams[n.name] = self.qparams[src.name]
            if kind == "float" and n.op in ("call_module", "call_function", "call_method"):
                self.float_layers.append(self._describe(n, modules))
            if kind in ("conv", "linear"):
                m = modules[n.target]
                if saved is not None:
                    w = saved["weights"][n.target]
                    w = q.QuantizedWeight(w["q"], w["scale"], int(w["groups"]))
                else:
                    w = q.quantize_weight(m.weight.detach().float(), groups=m.groups if kind == "conv" else 1,
                                          per_channel=per_channel)
                self.weights[n.target] = w
                if saved is not None:
                    if n.target in saved["biases"]:
                        self.biases[n.target] = saved["biases"][n.target]
                elif m.bias is not None:      # int32 in the accumulator's scale, once (ops/quant.py's rounding)
                    s_in = self.qparams[n.args[0].name][0]
                    self.biases[n.target] = torch.round(m.bias.detach().double() / (s_in * w.scale.double())).clamp(
                        -2 ** 30, 2 ** 30).to(torch.int32)
                safe = n.target.replace(".", "_")
                self.register_buffer(f"{safe}_weight_q", w.q)
                self.register_buffer(f"{safe}_weight_scale", w.scale)
            self._plan.append((n, kind))
        self._modules_by_name = modules
        # Convolutions on a float input (the image) of 3 channels get it quantised into 4 (the 4th real 0)
        # and a weight with a zero 4th input channel: kernel rows of 4 * KW bytes, a multiple of 4, which
        # the VNNI path reads in place instead of gathering 3 * KW-byte rows (ResNet's 7x7 stem at 224x224
        # batch 16: 10.7 -> 7.5 ms, the same bytes; 33 % more multiply-adds, none of the gather).
        # PYIMGCLS_QUANT_PAD_INPUT=0 turns it off (A/B timing).
        self._pad_in = {}
        if os.environ.get("PYIMGCLS_QUANT_PAD_INPUT", "1") != "0":
            for n, kind in self._plan:
                if kind == "conv" and n.args[0].name not in produces_q:
                    m = modules[n.target]
                    if m.groups == 1 and m.in_channels == 3:
                        self._pad_in[n.name] = 4
        # The values each step uses for the last time, dropped from the interpreter's environment right
        # after it. Keeping every activation until the forward returned held them all at once, and glibc
        # could hand that memory back to the system at the end of a forward, so the next one faulted its
        # pages in afresh (ResNet-50 224x224 batch 16 after batch-1 calls: 42.7 K page faults and ~245 ms
        # per forward, against 0-2.4 K and ~170 ms now: the few live ones reuse the blocks freed before).
        last_use: dict = {}
        for n, _ in self._plan:
            for u in n.all_input_nodes:
                last_use[u.name] = n.name
        dead: dict = {}
        for name, user in last_use.items():
            dead.setdefault(user, []).append(name)
        self._dead_after = [tuple(dead.get(n.name, ())) for n, _ in self._plan]
        self._layers = {n.name: self._bind_layer(n, kind, modules) for n, kind in self._plan
                        if kind in ("conv", "linear")}
        # Layer outputs none of whose consumers can alias them: quantised layers and pools read the uint8
        # tensor, relu and float ops make new tensors from it (a clamp, a dequantised copy), and none keeps
        # a reference; "pass", "reshape" and "structural" nodes may hand on the tensor or a view of it. Such
        # an output, once dead, goes back to its layer for the next forward (BoundQuantizedLayer.give_back).
        kinds = {n.name: kind for n, kind in self._plan}
        consumers = ("conv", "linear", "maxpool", "avgpool", "relu", "float")
        self._recycle = {n.name: self._layers[n.name][3] for n, kind in self._plan
                         if kind in ("conv", "linear") and not self._layers[n.name][2] and n.users
                         and all(kinds.get(u.name) in consumers for u in n.users)}
        if self.float_layers:
            warnings.warn("quantize: these layers are kept in float (no quantised kernel for them): "
                          + ", ".join(self.float_layers), stacklevel=3)

    def _bind_layer(self, n, kind, modules):
        """(source node, residual node, last, bound op) of a quantised layer: its arguments fixed once
        (ops.quant.BoundQuantizedLayer), since at batch 1 the op's per-call argument work cost as much as
        a small layer's kernel. Its input is quantised with the source node's (scale, zero point)
        (``_q``), its residual with the residual node's."""
        m = modules[n.target]
        src = n.args[0]
        res_node = n.kwargs.get("residual") if kind == "conv" else None
        last = self._last(n)
        s_in, z_in = self.qparams[src.name]
        kw = {}
        if not last:
            kw["output_scale"], kw["output_zero_point"] = self.qparams[n.name]
            if res_node is not None:
                kw["residual_scale"], kw["residual_zero_point"] = self.qparams[res_node.name]
        if kind == "conv":
            kw.update(stride=m.stride, padding=m.padding, dilation=m.dilation)
        w = self.weights[n.target]
        if n.name in self._pad_in:
            # zero weights for the padding channels: their products are 0, so the same integer sums
            w = q.QuantizedWeight(torch.cat([w.q, w.q.new_zeros(w.q.shape[0], self._pad_in[n.name] - w.q.shape[1],
                                                                *w.q.shape[2:])], 1), w.scale, w.groups)
        layer = q.BoundQuantizedLayer(w, self.biases.get(n.target), input_scale=s_in,
                                      input_zero_point=z_in, activation=getattr(m, "activation", None), **kw)
        return src, res_node, last, layer

    def state(self) -> dict:
        """Everything the int8 model needs beyond its float architecture, as plain tensors, numbers and
        strings (a ``torch.load(weights_only=True)`` file): the int8 weights and scales, the int32
        biases, the (scale, zero point) of every activation, and the float parameters and buffers of
        the layers kept in float (the float weights of the quantised layers are not stored)."""
        quantised = set(self.weights)
        float_state = {k: v for k, v in self.graph_module.state_dict().items()
                       if k.rpartition(".")[0] not in quantised}
        return {"per_channel": self.per_channel,
                "qparams": {k: [float(s), int(z)] for k, (s, z) in self.qparams.items()},
                "weights": {k: w.state() for k, w in self.weights.items()},
                "biases": dict(self.biases), "float_state": float_state}

    @classmethod
    def from_state(cls, gm: torch.fx.GraphModule, state: dict) -> "QuantizedModel":
        """The model :meth:`state` describes, on ``gm``: the fused float graph of the same architecture
        (``_fused_graph`` of a freshly built model; its quantised layers' float weights are unused)."""
        unexpected = gm.load_state_dict(state["float_state"], strict=False).unexpected_keys
        if unexpected:
            raise ArgumentValueError(f"quantised state: float tensors {unexpected[:3]} do not fit the model")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # the float layers were listed when the model was quantised
            qm = cls(gm, {k: (float(s), int(z)) for k, (s, z) in state["qparams"].items()},
                     bool(state["per_channel"]), saved=state)
        if set(qm.weights) != set(state["weights"]):
            raise ArgumentValueError("quantised state: its quantised layers "
                                     f"{sorted(set(state['weights']) ^ set(qm.weights))[:3]} do not match the model")
        for target in qm.weights:      # the fresh float weights of the quantised layers are never used
            m = gm.get_submodule(target)
            m.weight = None
            if m.bias is not None:
                m.bias = None
        return qm.eval()

    @staticmethod
    def _describe(n, modules) -> str:
        if n.op == "call_module":
            return f"{n.target} ({type(modules[n.target]).__name__})"
        return f"{n.name} ({getattr(n.target, '__name__', n.target)})"

    @staticmethod
    def _classify(n, modules) -> str:
        if n.op in ("placeholder", "output", "get_attr"):
            return n.op
        if n.op == "call_module":
            m = modules[n.target]
            if _conv_ok(m):
                return "conv"
            if _linear_ok(m):
                return "linear"
            if isinstance(m, torch.nn.MaxPool2d) and not m.return_indices:
                return "maxpool"
            if isinstance(m, torch.nn.AdaptiveAvgPool2d):
                return "avgpool"
            if isinstance(m, _PASS_MODULES):
                return "pass"
            if type(m) is torch.nn.ReLU:
                return "relu"
            return "float"
        if n.op == "call_function" and n.target in _FLATTEN:
            return "reshape"
        if n.op == "call_method" and n.target in _RESHAPE_METHODS:
            return "reshape"
        if n.op == "call_function" and n.target in _RELU_FUNCS:
            return "relu"
        if n.op == "call_function" and n.target in _STRUCTURAL:
            return "structural"
        return "float"

    # ------------------------------------------------------------------ running
    def _q(self, v, node, channels: int | None = None) -> QTensor:
        """``v`` quantised with ``node``'s (scale, zero point), NHWC; ``channels``: padded to that many
        channels of real 0 (the zero point), for a layer bound to a padded weight (``_pad_in``)."""
        if isinstance(v, QTensor):
            return v
        s, z = self.qparams[node.name]
        # NHWC uint8 (a quarter of the float bytes to move): the convs' im2col then copies whole kernel
        # rows (the 7x7 stem on 3 channels: 21-byte runs instead of 3-byte gathers)
        return QTensor(q._quantize(v, s, z, v.dim() == 4, channels), s, z)

    @staticmethod
    def _f(v):
        return v.dequantize() if isinstance(v, QTensor) else v

    def _last(self, n) -> bool:
        """Whether the node's value is only returned (the last layer gives float output)."""
        return all(u.op == "output" for u in n.users)

    def __getstate__(self):
        # copies and pickles drop the native programs (buffers and addresses, not state)
        state = dict(self.__dict__)
        state["_programs"] = {}
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # CPU inputs of a layout seen before run as one native call (quantization/_program.py): built on
        # the second forward of a layout (one-off shapes keep the interpreter), for up to 8 layouts at a time
        if type(x) is torch.Tensor and x.device.type == "cpu" and _grid._recorder is None:
            key = (_backend.get_backend(), x.dtype, x.shape, x.stride(),
                   tuple(b._version for b in self.biases.values()))
            programs = self.__dict__.setdefault("_programs", {})
            prog = programs.get(key, _UNSEEN)
            if prog is _UNSEEN:
                if len(programs) >= 8:
                    programs.clear()
                programs[key] = None
            elif prog is None:
                outputs, env = self._run(x, keep=True)
                programs[key] = _program.build(self, x, env) or _NO_PROGRAM
                return outputs
            elif prog is not _NO_PROGRAM:
                y = prog(x)
                if y is not None:
                    return y
        return self._run(x)[0]

    def _run(self, x: torch.Tensor, keep: bool = False):
        """(outputs, environment) of the layer-by-layer forward; ``keep``: no value dropped (the
        environment then holds every node's value, for _program.build)."""
        env: dict = {}
        outputs = None

        def load(a):
            return torch.fx.node.map_arg(a, lambda m: env[m.name])

        for (n, kind), dead in zip(self._plan, self._dead_after):
            if kind == "placeholder":
                env[n.name] = x
            elif kind == "get_attr":
                env[n.name] = _fetch_attr(self.graph_module, n.target)
            elif kind == "output":
                outputs = torch.fx.node.map_aggregate(load(n.args[0]), self._f)
            elif kind in ("conv", "linear"):
                src, res_node, last, layer = self._layers[n.name]
                xin = self._q(env[src.name], src, self._pad_in.get(n.name))
                r = None if last or res_node is None else self._q(env[res_node.name], res_node).data
                y = layer(xin.data, r)
                if last:
                    if res_node is not None:
                        act = layer.activation
                        y = y + self._f(env[res_node.name])
                        y = F.relu(y) if act == "relu" else (F.relu6(y) if act == "relu6" else y)
                    env[n.name] = y
                else:
                    env[n.name] = QTensor(y, *self.qparams[n.name])
            elif kind == "maxpool" and isinstance(env[n.args[0].name], QTensor):
                m, v = self._modules_by_name[n.target], env[n.args[0].name]
                env[n.name] = QTensor(q.quantized_max_pool2d(v.data, m.kernel_size, m.stride, m.padding, m.dilation,
                                                             m.ceil_mode), v.scale, v.zero_point)
            elif kind == "avgpool" and isinstance(env[n.args[0].name], QTensor):
                m, v = self._modules_by_name[n.target], env[n.args[0].name]
                s, z = self.qparams[n.name]
                size = m.output_size
                size = (size, size) if isinstance(size, int) else tuple(
                    d if o is None else o for o, d in zip(size, v.data.shape[-2:]))
                env[n.name] = QTensor(q.quantized_adaptive_avg_pool2d(v.data, size, v.scale, v.zero_point, s, z), s, z)
            elif kind == "pass" and isinstance(env[n.args[0].name], QTensor):
                m, v = self._modules_by_name[n.target], env[n.args[0].name]
                env[n.name] = QTensor(torch.flatten(v.data, m.start_dim, m.end_dim), v.scale, v.zero_point) \
                    if isinstance(m, torch.nn.Flatten) else v
            elif kind == "reshape" and isinstance(env[n.args[0].name], QTensor):
                v = env[n.args[0].name]
                rest = load(n.args[1:])
                data = torch.flatten(v.data, *rest, **n.kwargs) if n.op == "call_function" else \
                    getattr(v.data, n.target)(*rest, **n.kwargs)
                env[n.name] = QTensor(data, v.scale, v.zero_point)
            elif kind == "relu" and isinstance(env[n.args[0].name], QTensor):
                v = env[n.args[0].name]
                env[n.name] = QTensor(v.data.clamp(min=v.zero_point), v.scale, v.zero_point)
            else:  # float: dequantised inputs, the original op
                args = torch.fx.node.map_aggregate(load(n.args), self._f)
                kwargs = torch.fx.node.map_aggregate(load(n.kwargs), self._f)
                if n.op == "call_module":
                    env[n.name] = self._modules_by_name[n.target](*args, **kwargs)
                elif n.op == "call_function":
                    env[n.name] = n.target(*args, **kwargs)
                else:
                    env[n.name] = getattr(args[0], n.target)(*args[1:], **kwargs)
            if keep:
                continue
            for name in dead:
                layer = self._recycle.get(name)
                if layer is None:
                    del env[name]
                else:
                    layer.give_back(env.pop(name).data)      # a conv / linear output: always a QTensor
        return outputs, env


def _fused_graph(model: torch.nn.Module, op: str) -> torch.fx.GraphModule:
    """A copy of ``model`` with BN folded and activations / residual adds in the conv epilogues, as an
    fx GraphModule in eval mode (the graph both quantize and prepare_qat work on)."""
    fused = _fuse.fuse_for_inference(model)
    if not isinstance(fused, torch.fx.GraphModule):
        try:
            fused = _fuse._trace(fused)
        except Exception as e:
            raise ArgumentValueError(f"{op}: the model could not be traced with torch.fx ({e}); {op} needs "
                                     "a traceable forward") from e
    return fused.eval()


def quantize(model: torch.nn.Module, calibration_batches, observer: str = "minmax",
             per_channel: bool = True) -> QuantizedModel:
    """Post-training static int8 quantisation of ``model`` on pyimgcls's quantised kernels.

    ``calibration_batches``: an iterable of float inputs [N, C, H, W] or of (input, target) pairs
    (a DataLoader works); ``observer``: "minmax", "percentile" or "mse" (pyimgcls.quantization.observers);
    ``per_channel``: one weight scale per output channel (else one per layer).
    Returns a new module taking float images and returning float logits; ``model`` is not modified.
    Layers without a quantised kernel stay in float (a warning lists them)."""
    if not isinstance(model, torch.nn.Module):
        raise ArgumentTypeError(f"quantize: model must be a torch.nn.Module, got {type(model).__name__}")
    if observer not in OBSERVERS:
        raise ArgumentValueError(f"quantize: observer must be one of {sorted(OBSERVERS)}, got {observer!r}")
    if not isinstance(per_channel, bool):
        raise ArgumentTypeError(f"quantize: per_channel must be a bool, got {type(per_channel).__name__}")
    fused = _fused_graph(model, "quantize")
    observers: dict = {}
    calib = _Calibrator(fused, observers, OBSERVERS[observer])
    seen = 0
    with torch.no_grad():
        for b in _batches(calibration_batches):
            calib.run(b.float())
            seen += 1
    if seen == 0:
        raise ArgumentValueError("quantize: calibration_batches yielded no batches (give at least one)")
    qparams = {name: obs.qparams() for name, obs in observers.items()}
    return QuantizedModel(fused, qparams, per_channel).eval()
