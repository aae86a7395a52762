"""Helpers shared by the model files."""
from __future__ import annotations

import torch

from .. import nn


def is_batchnorm(m: torch.nn.Module) -> bool:
    """True for torch.nn.BatchNorm2d and pyimgcls.nn.BatchNorm2d (whether or not ours subclasses torch's)."""
    return isinstance(m, (torch.nn.BatchNorm2d, nn.BatchNorm2d))
