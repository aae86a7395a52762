"""A model's layer widths as plain data, and rebuilding a model to those widths.

``architecture(model)`` lists, for every Conv2d, BatchNorm2d and Linear, its channel counts
(``{"layers": {name: {"kind": "conv2d", "in_channels": .., "out_channels": .., "groups": ..}, ...}}``):
ints and strings only, so a checkpoint holding it stays loadable with ``torch.load(weights_only=True)``.
``apply_architecture(model, arch)`` resizes a freshly built model of the same family to those widths
(parameters re-allocated with the new shapes, their values to be filled by ``load_state_dict``); no
code of the pruning run is needed to load a pruned model."""
from __future__ import annotations

import torch

from ..errors import ArgumentValueError
from ._trace import CONV_TYPES, LINEAR_TYPES, NORM_TYPES


def architecture(model: torch.nn.Module) -> dict:
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, CONV_TYPES):
            layers[name] = {"kind": "conv2d", "in_channels": int(m.in_channels), "out_channels": int(m.out_channels),
                            "groups": int(m.groups)}
        elif isinstance(m, NORM_TYPES):
            layers[name] = {"kind": "batchnorm2d", "num_features": int(m.num_features)}
        elif isinstance(m, LINEAR_TYPES):
            layers[name] = {"kind": "linear", "in_features": int(m.in_features), "out_features": int(m.out_features)}
    return {"layers": layers}


def sync_widths(model: torch.nn.Module) -> torch.nn.Module:
    """Set the widths a model keeps outside its layers from the layers' (new) widths. ShuffleNetV2 units
    split their input at ``branch_features`` and concatenate that pass-through half with the branch's
    output before a 2-group shuffle; pruning keeps the two concatenated halves equal (the shuffle tie,
    ``_trace``), so the pass-through width is the branch's last convolution's output width."""
    from ..models.shufflenetv2 import InvertedResidual   # late: the models import the nn layers

    for m in model.modules():
        if isinstance(m, InvertedResidual):
            last = [c for c in m.branch2.modules() if isinstance(c, CONV_TYPES)][-1]
            m.branch_features = int(last.out_channels)
    return model


def _empty(p, shape):
    if p is None:
        return None
    return torch.nn.Parameter(p.new_empty(shape), requires_grad=p.requires_grad)


def apply_architecture(model: torch.nn.Module, arch: dict, what: str = "architecture") -> torch.nn.Module:
    """Resize ``model``'s layers in place to the widths in ``arch`` (see :func:`architecture`); returns it."""
    if not isinstance(arch, dict) or not isinstance(arch.get("layers"), dict):
        raise ArgumentValueError(f"{what}: not a layer-width table (a dict with 'layers')")
    mods = dict(model.named_modules())
    for name, spec in arch["layers"].items():
        m = mods.get(name)
        kind = spec.get("kind") if isinstance(spec, dict) else None
        ok = (kind == "conv2d" and isinstance(m, CONV_TYPES)) or (kind == "batchnorm2d" and isinstance(m, NORM_TYPES)) \
            or (kind == "linear" and isinstance(m, LINEAR_TYPES))
        if not ok:
            raise ArgumentValueError(f"{what}: layer {name!r} ({kind}) does not exist in the model "
                                     f"{type(model).__name__}")
        try:
            if kind == "conv2d":
                cin, cout, groups = int(spec["in_channels"]), int(spec["out_channels"]), int(spec["groups"])
                if min(cin, cout, groups) < 1 or cin % groups or cout % groups:
                    raise ArgumentValueError(f"{what}: layer {name!r} has impossible widths {spec}")
                m.in_channels, m.out_channels, m.groups = cin, cout, groups
                m.weight = _empty(m.weight, (cout, cin // groups, *m.kernel_size))
                m.bias = _empty(m.bias, (cout,))
            elif kind == "batchnorm2d":
                c = int(spec["num_features"])
                if c < 1:
                    raise ArgumentValueError(f"{what}: layer {name!r} has impossible widths {spec}")
                m.num_features = c
                m.weight, m.bias = _empty(m.weight, (c,)), _empty(m.bias, (c,))
                if m.running_mean is not None:
                    m.running_mean = torch.zeros(c, dtype=m.running_mean.dtype, device=m.running_mean.device)
                    m.running_var = torch.ones(c, dtype=m.running_var.dtype, device=m.running_var.device)
            else:
                fin, fout = int(spec["in_features"]), int(spec["out_features"])
                if min(fin, fout) < 1:
                    raise ArgumentValueError(f"{what}: layer {name!r} has impossible widths {spec}")
                m.in_features, m.out_features = fin, fout
                m.weight = _empty(m.weight, (fout, fin))
                m.bias = _empty(m.bias, (fout,))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ArgumentValueError):
                raise
            raise ArgumentValueError(f"{what}: layer {name!r}: malformed entry {spec!r}") from None
    return sync_widths(model)
