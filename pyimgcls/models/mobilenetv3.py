"""MobileNetV3 small / large (Howard et al., 2019) on pyimgcls layers, as torchvision's MobileNetV3.

Each of torchvision's ``Conv2dNormActivation`` (conv -> BN -> ReLU or hardswish) is a Sequential of our
Conv2d and ``BatchNorm2d(activation="relu" | "hardswish")``; the parameter-free activation module
torchvision keeps at index 2, being last, shifts no index, so it is omitted. Squeeze-and-excitation is our
one-op ``nn.SqueezeExcitation`` (ReLU, hardsigmoid gate, squeeze channels = expanded // 4 rounded to a
multiple of 8). A block with a shortcut adds its input in the projection BN's epilogue
(``bn(conv_out, residual=input)``; MobileNetV3 has no stochastic depth). The classifier's hardswish runs
in the first Linear's epilogue; the Sequential keeps torchvision's indices without the parameter-free
module at "1" ("0" Linear, "2" Dropout, "3" Linear), so state_dict keys are unchanged. BN eps 1e-3,
momentum 0.01, initialisation and kwargs (width_mult, reduced_tail, dilated, dropout) as torchvision.
Smallest input: 1x1 (every convolution is padded; torchvision's min_size)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch

from .. import nn
from ._utils import init_mobile_weights
from .mobilenet import _make_divisible

__all__ = ["MobileNetV3", "InvertedResidualConfig", "InvertedResidual", "mobilenet_v3_small", "mobilenet_v3_large"]

_BN = {"eps": 0.001, "momentum": 0.01}


class InvertedResidualConfig:
    """One block's settings (MobileNetV3 paper, Tables 1 and 2), channels scaled by ``width_mult``."""

    def __init__(self, input_channels: int, kernel: int, expanded_channels: int, out_channels: int, use_se: bool,
                 activation: str, stride: int, dilation: int, width_mult: float) -> None:
        self.input_channels = self.adjust_channels(input_channels, width_mult)
        self.kernel = kernel
        self.expanded_channels = self.adjust_channels(expanded_channels, width_mult)
        self.out_channels = self.adjust_channels(out_channels, width_mult)
        self.use_se = use_se
        self.use_hs = activation == "HS"
        self.stride = stride
        self.dilation = dilation

    @staticmethod
    def adjust_channels(channels: float, width_mult: float) -> int:
        return _make_divisible(channels * width_mult, 8)


class Conv2dNormActivation(torch.nn.Sequential):
    """conv (no bias) -> BatchNorm2d(eps 1e-3, momentum 0.01) with the activation fused; names "0", "1"."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 dilation: int = 1, activation: Optional[str] = None) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_channels, activation=activation, **_BN),
        )
        self.out_channels = out_channels


class InvertedResidual(torch.nn.Module):
    """1x1 expand (when expanded != input) -> kxk depthwise -> SE (optional) -> 1x1 project, with
    ReLU or hardswish after the first two."""

    def __init__(self, cnf: InvertedResidualConfig) -> None:
        super().__init__()
        if not (1 <= cnf.stride <= 2):
            raise ValueError("illegal stride value")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        act = "hardswish" if cnf.use_hs else "relu"
        layers: list[torch.nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(Conv2dNormActivation(cnf.input_channels, cnf.expanded_channels, 1, activation=act))
        stride = 1 if cnf.dilation > 1 else cnf.stride
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.expanded_channels, cnf.kernel, stride,
                                           groups=cnf.expanded_channels, dilation=cnf.dilation, activation=act))
        if cnf.use_se:
            squeeze_channels = _make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(nn.SqueezeExcitation(cnf.expanded_channels, squeeze_channels, activation=nn.ReLU,
                                               scale_activation=nn.Hardsigmoid))
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.out_channels, 1, activation=None))
        self.block = torch.nn.Sequential(*layers)
        self.out_channels = cnf.out_channels
        self._is_cn = cnf.stride > 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.use_res_connect:
            return self.block(input)
        out = input
        for layer in self.block[:-1]:
            out = layer(out)
        conv, bn = self.block[-1]
        return bn(conv(out), residual=input)


class MobileNetV3(torch.nn.Module):
    """Arguments as torchvision's MobileNetV3 (inverted_residual_setting, last_channel, num_classes,
    dropout); ``block`` / ``norm_layer`` must be None (pyimgcls layers, BN eps 1e-3 / momentum 0.01)."""

    def __init__(self, inverted_residual_setting: list[InvertedResidualConfig], last_channel: int,
                 num_classes: int = 1000, block=None, norm_layer=None, dropout: float = 0.2) -> None:
        super().__init__()
        if block is not None or norm_layer is not None:
            raise ValueError("MobileNetV3: arguments 'block' and 'norm_layer' are not supported; leave them None")
        if not inverted_residual_setting:
            raise ValueError("The inverted_residual_setting should not be empty")
        if not (isinstance(inverted_residual_setting, (list, tuple))
                and all(isinstance(s, InvertedResidualConfig) for s in inverted_residual_setting)):
            raise TypeError("The inverted_residual_setting should be List[InvertedResidualConfig]")
        layers: list[torch.nn.Module] = []
        firstconv_output_channels = inverted_residual_setting[0].input_channels
        layers.append(Conv2dNormActivation(3, firstconv_output_channels, 3, 2, activation="hardswish"))
        for cnf in inverted_residual_setting:
            layers.append(InvertedResidual(cnf))
        lastconv_input_channels = inverted_residual_setting[-1].out_channels
        lastconv_output_channels = 6 * lastconv_input_channels
        layers.append(Conv2dNormActivation(lastconv_input_channels, lastconv_output_channels, 1,
                                           activation="hardswish"))
        self.features = torch.nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = torch.nn.Sequential(OrderedDict([
            ("0", nn.Linear(lastconv_output_channels, last_channel, activation="hardswish")),
            ("2", torch.nn.Dropout(p=dropout, inplace=True)),
            ("3", nn.Linear(last_channel, num_classes)),
        ]))

        # torchvision's MobileNetV3 initialisation.
        init_mobile_weights(self, linear="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _mobilenet_v3_conf(arch: str, width_mult: float = 1.0, reduced_tail: bool = False, dilated: bool = False):
    reduce_divider = 2 if reduced_tail else 1
    dilation = 2 if dilated else 1

    def bneck(*args) -> InvertedResidualConfig:
        return InvertedResidualConfig(*args, width_mult=width_mult)

    if arch == "mobilenet_v3_large":
        setting = [
            bneck(16, 3, 16, 16, False, "RE", 1, 1),
            bneck(16, 3, 64, 24, False, "RE", 2, 1),
            bneck(24, 3, 72, 24, False, "RE", 1, 1),
            bneck(24, 5, 72, 40, True, "RE", 2, 1),
            bneck(40, 5, 120, 40, True, "RE", 1, 1),
            bneck(40, 5, 120, 40, True, "RE", 1, 1),
            bneck(40, 3, 240, 80, False, "HS", 2, 1),
            bneck(80, 3, 200, 80, False, "HS", 1, 1),
            bneck(80, 3, 184, 80, False, "HS", 1, 1),
            bneck(80, 3, 184, 80, False, "HS", 1, 1),
            bneck(80, 3, 480, 112, True, "HS", 1, 1),
            bneck(112, 3, 672, 112, True, "HS", 1, 1),
            bneck(112, 5, 672, 160 // reduce_divider, True, "HS", 2, dilation),
            bneck(160 // reduce_divider, 5, 960 // reduce_divider, 160 // reduce_divider, True, "HS", 1, dilation),
            bneck(160 // reduce_divider, 5, 960 // reduce_divider, 160 // reduce_divider, True, "HS", 1, dilation),
        ]
        last_channel = InvertedResidualConfig.adjust_channels(1280 // reduce_divider, width_mult)
    else:
        setting = [
            bneck(16, 3, 16, 16, True, "RE", 2, 1),
            bneck(16, 3, 72, 24, False, "RE", 2, 1),
            bneck(24, 3, 88, 24, False, "RE", 1, 1),
            bneck(24, 5, 96, 40, True, "HS", 2, 1),
            bneck(40, 5, 240, 40, True, "HS", 1, 1),
            bneck(40, 5, 240, 40, True, "HS", 1, 1),
            bneck(40, 5, 120, 48, True, "HS", 1, 1),
            bneck(48, 5, 144, 48, True, "HS", 1, 1),
            bneck(48, 5, 288, 96 // reduce_divider, True, "HS", 2, dilation),
            bneck(96 // reduce_divider, 5, 576 // reduce_divider, 96 // reduce_divider, True, "HS", 1, dilation),
            bneck(96 // reduce_divider, 5, 576 // reduce_divider, 96 // reduce_divider, True, "HS", 1, dilation),
        ]
        last_channel = InvertedResidualConfig.adjust_channels(1024 // reduce_divider, width_mult)
    return setting, last_channel


def _mobilenet_v3(arch: str, kwargs: dict) -> MobileNetV3:
    conf = {k: kwargs.pop(k) for k in ("width_mult", "reduced_tail", "dilated") if k in kwargs}
    setting, last_channel = _mobilenet_v3_conf(arch, **conf)
    return MobileNetV3(setting, last_channel, **kwargs)


def mobilenet_v3_large(**kwargs) -> MobileNetV3:
    """torchvision.models.mobilenet_v3_large; kwargs: num_classes=1000, dropout=0.2, width_mult=1.0,
    reduced_tail=False, dilated=False."""
    return _mobilenet_v3("mobilenet_v3_large", kwargs)


def mobilenet_v3_small(**kwargs) -> MobileNetV3:
    """torchvision.models.mobilenet_v3_small; kwargs: num_classes=1000, dropout=0.2, width_mult=1.0,
    reduced_tail=False, dilated=False."""
    return _mobilenet_v3("mobilenet_v3_small", kwargs)
