"""Squeeze-and-excitation and stochastic depth modules with torchvision's names, arguments and
parameters (``torchvision.ops.SqueezeExcitation``, ``torchvision.ops.StochasticDepth``), computed by
pyimgcls kernels (pyimgcls/ops/se.py)."""
from __future__ import annotations

import torch

from .. import ops
from ..errors import ArgumentTypeError, ArgumentValueError
from .conv import Conv2d
from .pool import AdaptiveAvgPool2d

# torch.nn activation classes -> the op's strings (subclasses too: pyimgcls.nn.ReLU is a torch.nn.ReLU)
_ACTIVATIONS = ((torch.nn.ReLU, "relu"), (torch.nn.SiLU, "silu"))
_GATES = ((torch.nn.Sigmoid, "sigmoid"), (torch.nn.Hardsigmoid, "hardsigmoid"))


def _code_of(cls, table, name):
    if isinstance(cls, type):
        for base, code in table:
            if issubclass(cls, base):
                return code
    allowed = ", ".join(f"torch.nn.{b.__name__}" for b, _ in table)
    raise ArgumentValueError(f"SqueezeExcitation: argument '{name}' must be one of the classes {allowed} (or a "
                             f"subclass), got {cls!r}")


class SqueezeExcitation(torch.nn.Module):
    """``torchvision.ops.SqueezeExcitation(input_channels, squeeze_channels, activation=torch.nn.ReLU,
    scale_activation=torch.nn.Sigmoid)``: ``x * scale_activation(fc2(activation(fc1(avgpool(x)))))`` as
    one op (:func:`pyimgcls.ops.squeeze_excitation`). Parameters ``fc1`` / ``fc2`` are 1x1 convolutions
    with torchvision's names, shapes and initialisation, so a torchvision state_dict loads with
    strict=True. ``activation``: torch.nn.ReLU or torch.nn.SiLU; ``scale_activation``: torch.nn.Sigmoid
    or torch.nn.Hardsigmoid (the classes, as torchvision takes them)."""

    def __init__(self, input_channels: int, squeeze_channels: int, activation=torch.nn.ReLU,
                 scale_activation=torch.nn.Sigmoid) -> None:
        super().__init__()
        for name, v in (("input_channels", input_channels), ("squeeze_channels", squeeze_channels)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ArgumentTypeError(f"SqueezeExcitation: argument '{name}' must be an int, got {type(v).__name__}")
            if v <= 0:
                raise ArgumentValueError(f"SqueezeExcitation: argument '{name}' must be positive, got {v}")
        self._act = _code_of(activation, _ACTIVATIONS, "activation")
        self._gate = _code_of(scale_activation, _GATES, "scale_activation")
        self.avgpool = AdaptiveAvgPool2d(1)   # torchvision's child (not called: the op pools)
        self.fc1 = Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.squeeze_excitation(input, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                                      activation=self._act, gate=self._gate)


class StochasticDepth(torch.nn.Module):
    """``torchvision.ops.StochasticDepth(p, mode)``: :func:`pyimgcls.ops.stochastic_depth` with the
    module's training flag."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.stochastic_depth(input, self.p, self.mode, self.training)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={self.p}, mode={self.mode})"
