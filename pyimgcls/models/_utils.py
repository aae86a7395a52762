"""Helpers shared by the model files."""
from __future__ import annotations

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
