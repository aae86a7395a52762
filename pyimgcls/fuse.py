"""Inference-time folding of BatchNorm (and a following activation module or function) into the preceding convolution.

In eval mode ``bn(conv(x))`` is an affine map per output channel, so

    s      = gamma / sqrt(running_var + eps)          (gamma = 1 without affine)
    W'     = W * s[o]                                   per output channel o
    b'     = (b_conv - running_mean) * s + beta         (b_conv = 0, beta = 0 when absent)

and ``act(bn(conv(x), residual=r))`` becomes ``Conv2d(activation=act)(x, residual=r)`` — one kernel
with the residual add and activation in its epilogue.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from . import nn as pnn
from . import ops

__all__ = ["fuse_for_inference"]

_RELU_FUNCS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6", F.silu: "silu",
               F.hardswish: "hardswish", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
               F.hardsigmoid: "hardsigmoid"}
_RELU_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid"}
# activation modules (torch.nn or our subclasses) that fold into an epilogue
_ACT_MODULES = ((torch.nn.ReLU6, "relu6"), (torch.nn.ReLU, "relu"), (torch.nn.SiLU, "silu"),
                (torch.nn.Hardswish, "hardswish"), (torch.nn.Sigmoid, "sigmoid"), (torch.nn.Hardsigmoid, "hardsigmoid"))


def _act_module_kind(m) -> str | None:
    for cls, kind in _ACT_MODULES:
        if isinstance(m, cls):
            return kind
    return None


# ----------------------------------------------------------------------------- folding arithmetic
def _foldable_conv(m) -> bool:
    if not isinstance(m, torch.nn.Conv2d) or m.padding_mode != "zeros":
        return False
    return getattr(m, "activation", None) is None  # an activation already applied cannot precede the BN


def _foldable_bn(m) -> bool:
    return (isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None)


def _bn_act(bn) -> str | None:
    return getattr(bn, "activation", None)


def _fold(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d, activation: str | None) -> pnn.Conv2d:
    """A new pyimgcls Conv2d computing act(bn(conv(x)) + residual) with bn's running statistics."""
    if bn.num_features != conv.out_channels:
        raise ValueError(f"fuse_for_inference: BatchNorm2d has num_features={bn.num_features} but the convolution "
                         f"before it has out_channels={conv.out_channels}")
    w = conv.weight.detach()
    dtype, device = w.dtype, w.device
    # fold in float64, then round once to the parameters' dtype
    var = bn.running_var.detach().double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(var)
    shift = (b - bn.running_mean.detach().double()) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    fused = pnn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                       padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                       activation=activation, device=device, dtype=dtype)
    with torch.no_grad():
        fused.weight.copy_((w.double() * scale.reshape(-1, 1, 1, 1)).to(dtype))
        fused.bias.copy_(shift.to(dtype))
    fused.train(False)
    return fused


# ----------------------------------------------------------------------------- torch.fx path
class _Tracer(torch.fx.Tracer):
    """Keeps pyimgcls.nn modules as leaves (their forwards validate shapes, which proxies cannot
    answer) and treats pyimgcls.ops functions as opaque calls."""

    def __init__(self):
        super().__init__(autowrap_modules=(math, ops))

    def is_leaf_module(self, m, qualname) -> bool:
        if type(m).__module__.startswith("pyimgcls.nn"):
            return True
        return super().is_leaf_module(m, qualname)


def _set_module(root: torch.nn.Module, qualname: str, module: torch.nn.Module) -> None:
    parent, _, name = qualname.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _relu_kind(node: torch.fx.Node, modules) -> str | None:
    """The activation name ('relu', 'relu6', 'silu', 'hardswish', 'sigmoid', 'hardsigmoid') when ``node``
    applies one of them (module, function or method) to its first argument, else None."""
    if node.op == "call_module":
        return _act_module_kind(modules.get(node.target))
    if node.op == "call_function" and node.target in _RELU_FUNCS:
        return _RELU_FUNCS[node.target]
    if node.op == "call_method" and node.target in _RELU_METHODS:
        return _RELU_METHODS[node.target]
    return None


def _bn_residual(node: torch.fx.Node):
    if len(node.args) > 1:
        return node.args[1]
    return node.kwargs.get("residual")


def _fuse_graph(gm: torch.fx.GraphModule) -> int:
    modules = dict(gm.named_modules())
    fused = 0
    for bn_node in list(gm.graph.nodes):
        if bn_node.op != "call_module" or not _foldable_bn(modules.get(bn_node.target)):
            continue
        bn = modules[bn_node.target]
        if not bn_node.args or not isinstance(bn_node.args[0], torch.fx.Node):
            continue
        conv_node = bn_node.args[0]
        if conv_node.op != "call_module" or not _foldable_conv(modules.get(conv_node.target)):
            continue
        # the convolution's output must feed only this BN, and the convolution must not take a residual
        if len(conv_node.users) != 1 or len(conv_node.args) != 1 or conv_node.kwargs.get("residual") is not None:
            continue
        residual = _bn_residual(bn_node)
        activation, last = _bn_act(bn), bn_node
        if activation is None and len(bn_node.users) == 1:
            user = next(iter(bn_node.users))
            kind = _relu_kind(user, modules)
            if kind is not None and user.args and user.args[0] is bn_node:
                activation, last = kind, user
        conv = modules[conv_node.target]
        _set_module(gm, conv_node.target, _fold(conv, bn, activation))
        with gm.graph.inserting_after(last):
            kwargs = {"residual": residual} if residual is not None else {}
            new = gm.graph.call_module(conv_node.target, (conv_node.args[0],), kwargs)
        last.replace_all_uses_with(new)
        if last is not bn_node:
            gm.graph.erase_node(last)
        gm.graph.erase_node(bn_node)
        gm.graph.erase_node(conv_node)
        modules = dict(gm.named_modules())
        fused += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return fused


def _trace(model: torch.nn.Module) -> torch.fx.GraphModule:
    tracer = _Tracer()
    graph = tracer.trace(model)
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)


# ----------------------------------------------------------------------------- nn.Sequential fallback
def _fuse_sequential(model: torch.nn.Module) -> int:
    """Conv2d -> BatchNorm2d [-> ReLU / ReLU6] runs of adjacent children of every nn.Sequential."""
    fused = 0
    for container in list(model.modules()):
        if not isinstance(container, torch.nn.Sequential):
            continue
        names = list(container._modules)
        i = 0
        while i + 1 < len(names):
            conv, bn = container._modules[names[i]], container._modules[names[i + 1]]
            if not (_foldable_conv(conv) and _foldable_bn(bn)):
                i += 1
                continue
            activation = _bn_act(bn)
            drop = [names[i + 1]]
            if activation is None and i + 2 < len(names):
                activation = _act_module_kind(container._modules[names[i + 2]])
                if activation is not None:
                    drop.append(names[i + 2])
            container._modules[names[i]] = _fold(conv, bn, activation)
            for name in drop:
                container._modules[name] = torch.nn.Identity()
            fused += 1
            i += len(drop) + 1
    return fused


# ----------------------------------------------------------------------------- public API
def fuse_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` in eval mode with every Conv2d -> BatchNorm2d (-> ReLU / ReLU6) chain
    folded into one pyimgcls ``nn.Conv2d(activation=...)``; the caller's model is never modified.

    Chains are found by tracing the data flow with torch.fx (pyimgcls.nn modules are leaves and
    pyimgcls.ops calls are opaque): a BatchNorm2d whose input is a convolution's output used by
    nothing else folds into that convolution; ``bn(conv(x), residual=r)`` becomes
    ``conv(x, residual=r)``; a ReLU / ReLU6 that is the BN's only user (module, ``F.relu``,
    ``torch.relu``, ``F.relu6`` or ``.relu()``) and a BN's own ``activation=`` move into the
    convolution's epilogue. The result is then a ``torch.fx.GraphModule`` with the model's
    submodules (other methods and attributes of the model class are not kept).
    Models that do not trace fall back to adjacency: inside every ``nn.Sequential``, a Conv2d
    followed by a BatchNorm2d (and optionally ReLU / ReLU6) is folded, the BN and ReLU becoming
    ``nn.Identity``; the model keeps its class.

    Accepted layers: pyimgcls or torch.nn Conv2d (padding_mode="zeros", no activation of its own)
    and BatchNorm2d with running statistics (track_running_stats=True); the result uses pyimgcls
    modules. Limits: a BN without running statistics, a convolution whose output has other users,
    a convolution already given a residual, pre-activation order (BN -> ReLU -> Conv, as in
    DenseNet: the BN precedes the convolution, so there is no conv to fold it into), and additions
    written as ``relu(bn(conv(x)) + r)`` (use ``bn(conv(x), residual=r)``) are left as they are. Eval outputs match the unfused model up to
    rounding of the folded weights in their dtype (float32: ~1e-6 relative)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"fuse_for_inference: argument 'model' must be a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    try:
        gm = _trace(model)
    except Exception:  # data-dependent control flow, unsupported calls: use the nn.Sequential rule
        _fuse_sequential(model)
        return model.eval()
    _fuse_graph(gm)
    return gm.eval()

