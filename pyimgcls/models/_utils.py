"""Helpers shared by the model files."""
from __future__ import annotations

import math

import torch

from .. import nn


def is_batchnorm(m: torch.nn.Module) -> bool:
    """True for torch.nn.BatchNorm2d and pyimgcls.nn.BatchNorm2d (whether or not ours subclasses torch's)."""
    return isinstance(m, (torch.nn.BatchNorm2d, nn.BatchNorm2d))


def set_fixed_kwarg(kwargs: dict, name: str, value, model: str) -> None:
    """Set ``kwargs[name] = value`` for a named variant (e.g. resnext50_32x4d's groups=32), refusing a
    different value from the caller, as torchvision's ``_ovewrite_named_param`` does."""
    if name in kwargs and kwargs[name] != value:
        raise ValueError(f"{model}: argument '{name}' is fixed to {value!r} for this model, got {kwargs[name]!r}")
    kwargs[name] = value


def init_mobile_weights(model: torch.nn.Module, linear: str) -> None:
    """torchvision's MobileNetV2 / V3 / EfficientNet initialisation, in module order (the same random
    draws as torchvision): convolutions kaiming-normal (fan_out) with zero bias, batch norms (1, 0), and
    Linear layers N(0, 0.01) (``linear="normal"``: MobileNets) or U(+-1/sqrt(out_features))
    (``linear="uniform"``: EfficientNet), zero bias."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
        elif is_batchnorm(m):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
        elif isinstance(m, torch.nn.Linear):
            if linear == "normal":
                torch.nn.init.normal_(m.weight, 0, 0.01)
            else:
                bound = 1.0 / math.sqrt(m.out_features)
                torch.nn.init.uniform_(m.weight, -bound, bound)
            torch.nn.init.zeros_(m.bias)
