"""MobileNetV2 (Sandler et al., 2018) on pyimgcls layers.

Each of torchvision's ``Conv2dNormActivation`` (conv -> BN -> ReLU6) is a Sequential of our Conv2d and
``BatchNorm2d(activation="relu6")``; the ReLU6 that torchvision keeps at index 2 holds no parameters
and, being last, shifts no index, so it is omitted. Depthwise 3x3 convolutions are ``groups=C``
convolutions. An inverted-residual block with a shortcut computes its projection BN as
``bn(conv_out, residual=x)``, fusing the add. Parameter and buffer names are torchvision's.
Smallest input: 32x32 (total stride 32)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import nn, ops
from ._utils import init_mobile_weights

__all__ = ["MobileNetV2", "InvertedResidual", "mobilenet_v2"]


def _make_divisible(v: float, divisor: int, min_value: Optional[int] = None) -> int:
    """Round a channel count to a multiple of ``divisor``, not going down by more than 10% (as torchvision)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Conv2dNormActivation(torch.nn.Sequential):
    """conv (no bias) -> BatchNorm2d with the activation fused; names "0" (conv) and "1" (bn)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 activation: Optional[str] = "relu6") -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels, activation=activation),
        )
        self.out_channels = out_channels


class InvertedResidual(torch.nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        self.stride = stride
        if stride not in [1, 2]:
            raise ValueError(f"stride should be 1 or 2 instead of {stride}")
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = self.stride == 1 and inp == oup
        layers: list[torch.nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1))
        layers += [
            Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),  # depthwise
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),                                 # linear projection
            nn.BatchNorm2d(oup),
        ]
        self.conv = torch.nn.Sequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        last = len(self.conv) - 1
        for i, layer in enumerate(self.conv):
            if i == last:
                return layer(out, residual=x if self.use_res_connect else None)
            out = layer(out)
        raise AssertionError("unreachable: InvertedResidual.conv is never empty")


class MobileNetV2(torch.nn.Module):
    """Arguments as torchvision's MobileNetV2 (num_classes, width_mult, inverted_residual_setting,
    round_nearest, dropout); ``block``/``norm_layer`` must be None (pyimgcls layers are always used)."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0,
                 inverted_residual_setting: Optional[list[list[int]]] = None, round_nearest: int = 8,
                 block=None, norm_layer=None, dropout: float = 0.2) -> None:
        super().__init__()
        if block is not None or norm_layer is not None:
            raise ValueError("MobileNetV2: arguments 'block' and 'norm_layer' are not supported; leave them None")
        input_channel = 32
        last_channel = 1280
        if inverted_residual_setting is None:
            inverted_residual_setting = [
                [1, 16, 1, 1],
                [6, 24, 2, 2],
                [6, 32, 3, 2],
                [6, 64, 4, 2],
                [6, 96, 3, 1],
                [6, 160, 3, 2],
                [6, 320, 1, 1],
            ]
        if len(inverted_residual_setting) == 0 or len(inverted_residual_setting[0]) != 4:
            raise ValueError(f"inverted_residual_setting should be non-empty or a 4-element list, "
                             f"got {inverted_residual_setting}")
        input_channel = _make_divisible(input_channel * width_mult, round_nearest)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult), round_nearest)
        features: list[torch.nn.Module] = [Conv2dNormActivation(3, input_channel, stride=2)]
        for t, c, n, s in inverted_residual_setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, expand_ratio=t))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1))
        self.features = torch.nn.Sequential(*features)
        self.classifier = torch.nn.Sequential(
            torch.nn.Dropout(p=dropout),
            nn.Linear(self.last_channel, num_classes),
        )

        # torchvision's MobileNetV2 initialisation.
        init_mobile_weights(self, linear="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = ops.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v2(**kwargs) -> MobileNetV2:
    """torchvision.models.mobilenet_v2; kwargs: num_classes=1000, width_mult=1.0, dropout=0.2, ..."""
    return MobileNetV2(**kwargs)
