"""pyimgcls.convert: swap a model's torch.nn layers for pyimgcls's, sharing parameters and buffers.

Replaced (exact torch.nn types only; a user subclass may override forward, so it is left alone):

    torch.nn.Conv2d            -> pyimgcls.nn.Conv2d            (padding modes it accepts)
    torch.nn.Linear            -> pyimgcls.nn.Linear
    torch.nn.MaxPool2d         -> pyimgcls.nn.MaxPool2d
    torch.nn.AvgPool2d         -> pyimgcls.nn.AvgPool2d
    torch.nn.AdaptiveAvgPool2d -> pyimgcls.nn.AdaptiveAvgPool2d
    torch.nn.BatchNorm2d       -> pyimgcls.nn.BatchNorm2d
    torch.nn.ReLU / ReLU6      -> pyimgcls.nn.ReLU / ReLU6
    torch.nn.SiLU / Hardswish / Sigmoid / Hardsigmoid -> pyimgcls.nn.SiLU / ... (on our kernels)
    torchvision.ops.SqueezeExcitation -> pyimgcls.nn.SqueezeExcitation (one op; relu / silu with a
                               sigmoid / hardsigmoid gate, others kept with a warning)
    torchvision.ops.StochasticDepth   -> pyimgcls.nn.StochasticDepth

The new layer holds the *same* Parameter and buffer objects as the old one (no copy: an optimizer
built on the original parameters keeps training the converted model, and state_dict keys are
unchanged). Its configuration attributes (stride, eps, momentum, training, hooks, ...) are copied;
the fusable layers get ``activation=None``, so outputs equal the original's up to kernel rounding.

A configuration our layers do not implement (a Conv2d padding_mode that pyimgcls.nn.Conv2d
rejects, a lazy module not yet initialised, a subclass of one of the types above) is kept as the PyTorch
layer and reported with a ``UserWarning`` naming the module, never converted into something that
computes a different result. Functional calls inside ``forward`` (``F.relu``, ``torch.flatten``,
``x + y``) are not modules and are not touched.

With ``inplace=False`` (the default) the input model is not modified: every container module on
the path to a replaced layer is shallow-copied (its own child/parameter/buffer dictionaries, same
Parameter and buffer objects), and a module that appears at several places in the tree maps to
one converted module. With ``inplace=True`` the children are replaced in the given model. Either
way the converted model is returned (when ``model`` itself is a replaceable layer, the return value
is the new layer). Plain Python attributes that hold modules outside ``_modules`` (e.g. a list) are
not followed.

``pyimgcls.fuse_for_inference(pyimgcls.convert(model).eval())`` then folds BatchNorm into the
convolutions and ReLU / ReLU6 / SiLU / Hardswish / Sigmoid / Hardsigmoid into the epilogues."""
from __future__ import annotations

import copy
import warnings

import torch

from . import nn as _nn

__all__ = ["convert"]

_CONVERSIONS = {
    torch.nn.Conv2d: _nn.Conv2d,
    torch.nn.Linear: _nn.Linear,
    torch.nn.MaxPool2d: _nn.MaxPool2d,
    torch.nn.AvgPool2d: _nn.AvgPool2d,
    torch.nn.AdaptiveAvgPool2d: _nn.AdaptiveAvgPool2d,
    torch.nn.BatchNorm2d: _nn.BatchNorm2d,
    torch.nn.ReLU: _nn.ReLU,
    torch.nn.ReLU6: _nn.ReLU6,
    torch.nn.SiLU: _nn.SiLU,
    torch.nn.Hardswish: _nn.Hardswish,
    torch.nn.Sigmoid: _nn.Sigmoid,
    torch.nn.Hardsigmoid: _nn.Hardsigmoid,
}
_OURS = tuple(_CONVERSIONS.values()) + (_nn.SqueezeExcitation, _nn.StochasticDepth)
_LAZY = (torch.nn.LazyConv2d, torch.nn.LazyLinear, torch.nn.LazyBatchNorm2d)


def _padding_mode_supported(mode: str) -> bool:
    """Whether pyimgcls.nn.Conv2d accepts ``padding_mode`` (its constructor rejects what it cannot run)."""
    try:
        _nn.Conv2d(1, 1, 1, padding_mode=mode, device="meta")
    except (ValueError, TypeError):
        return False
    return True


def _unsupported_reason(m: torch.nn.Module) -> str | None:
    if isinstance(m, torch.nn.Conv2d) and m.padding_mode != "zeros" and not _padding_mode_supported(m.padding_mode):
        return f"padding_mode={m.padding_mode!r} is not supported by pyimgcls.nn.Conv2d"
    if isinstance(m, torch.nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params():
        return "lazy module with uninitialised parameters (run one forward first)"
    return None


def _torchvision_twin(m: torch.nn.Module) -> type | None:
    """Our module for torchvision.ops' SqueezeExcitation / StochasticDepth (matched by module and class
    name, so convert never imports torchvision)."""
    t = type(m)
    if not t.__module__.startswith("torchvision.ops"):
        return None
    return {"SqueezeExcitation": _nn.SqueezeExcitation, "StochasticDepth": _nn.StochasticDepth}.get(t.__name__)


def _swap_torchvision(m: torch.nn.Module, ours_cls: type, path: str) -> torch.nn.Module | None:
    new = ours_cls.__new__(ours_cls)
    torch.nn.Module.__init__(new)
    new.__dict__.update(m.__dict__)
    new._parameters, new._buffers, new._modules = m._parameters.copy(), m._buffers.copy(), m._modules.copy()
    if ours_cls is _nn.SqueezeExcitation:
        from .nn.se import _ACTIVATIONS, _GATES, _code_of
        try:   # the one op runs relu / silu with a sigmoid / hardsigmoid gate; others stay torchvision's
            new._act = _code_of(type(m.activation), _ACTIVATIONS, "activation")
            new._gate = _code_of(type(m.scale_activation), _GATES, "scale_activation")
        except ValueError as e:
            warnings.warn(f"pyimgcls.convert: keeping {path or 'model'} (SqueezeExcitation) as a torchvision "
                          f"layer: {e}", UserWarning, stacklevel=4)
            return None
    return new


def _swap(m: torch.nn.Module, path: str) -> torch.nn.Module | None:
    """The pyimgcls layer replacing ``m`` (sharing its tensors), or None to keep ``m``."""
    if isinstance(m, _OURS):
        return None
    twin = _torchvision_twin(m)
    if twin is not None:
        return _swap_torchvision(m, twin, path)
    ours_cls = _CONVERSIONS.get(type(m))
    if ours_cls is None:
        if isinstance(m, tuple(_CONVERSIONS) + _LAZY):
            reason = _unsupported_reason(m) or "it subclasses a convertible torch.nn type and may change its behaviour"
            warnings.warn(f"pyimgcls.convert: keeping {path or 'model'} ({type(m).__qualname__}) as a PyTorch layer: "
                          f"{reason}", UserWarning, stacklevel=3)
        return None
    reason = _unsupported_reason(m)
    if reason is not None:
        warnings.warn(f"pyimgcls.convert: keeping {path or 'model'} ({type(m).__name__}) as a PyTorch layer: {reason}",
                      UserWarning, stacklevel=3)
        return None
    # Allocate no tensors: build an instance without running __init__, then take the old layer's state.
    new = ours_cls.__new__(ours_cls)
    torch.nn.Module.__init__(new)
    new.__dict__.update(m.__dict__)
    # Own dictionaries, same tensor objects.
    new._parameters = m._parameters.copy()
    new._buffers = m._buffers.copy()
    new._modules = m._modules.copy()
    new._non_persistent_buffers_set = set(m._non_persistent_buffers_set)
    if ours_cls in (_nn.Conv2d, _nn.Linear, _nn.BatchNorm2d):
        new.activation = None  # the one attribute our layers add to torch.nn's
    return new


def _shallow_copy(m: torch.nn.Module) -> torch.nn.Module:
    new = copy.copy(m)
    for k, v in m.__dict__.items():
        if isinstance(v, (dict, set)):  # _modules, _parameters, _buffers, hook dicts: own containers
            new.__dict__[k] = copy.copy(v)
    return new


def convert(model: torch.nn.Module, inplace: bool = False) -> torch.nn.Module:
    """Return ``model`` with its torch.nn Conv2d, Linear, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d,
    BatchNorm2d, ReLU, ReLU6, SiLU, Hardswish, Sigmoid and Hardsigmoid layers replaced by pyimgcls's, sharing parameters and buffers.
    ``inplace=False`` (default) leaves ``model`` untouched and returns a new container tree; see the
    module docstring for the exact rules."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"convert: argument 'model' must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"convert: argument 'inplace' must be bool, got {type(inplace).__name__}")
    memo: dict[int, torch.nn.Module] = {}

    def visit(m: torch.nn.Module, path: str) -> torch.nn.Module:
        if id(m) in memo:
            return memo[id(m)]
        new = _swap(m, path)
        if isinstance(new, _nn.SqueezeExcitation):   # from torchvision's: its fc1 / fc2 become ours too
            for name, child in new._modules.items():
                if child is not None:
                    new._modules[name] = visit(child, f"{path}.{name}" if path else name)
        if new is None:
            changed: dict[str, torch.nn.Module] = {}
            for name, child in m._modules.items():
                if child is None:
                    continue
                c = visit(child, f"{path}.{name}" if path else name)
                if c is not child:
                    changed[name] = c
            if changed and not inplace:
                m_out = _shallow_copy(m)
            else:
                m_out = m
            for name, c in changed.items():
                m_out._modules[name] = c
            new = m_out
        memo[id(m)] = new
        return new

    return visit(model, "")
