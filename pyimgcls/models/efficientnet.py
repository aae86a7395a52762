"""EfficientNet B0-B7 (Tan & Le, 2019) and EfficientNetV2 S/M/L (Tan & Le, 2021) on pyimgcls layers, as
torchvision's EfficientNet.

Each of torchvision's ``Conv2dNormActivation`` (conv -> BN -> SiLU) is a Sequential of our Conv2d and
``BatchNorm2d(activation="silu")``: the SiLU runs in the BN's epilogue, and the parameter-free SiLU
module torchvision keeps at index 2, being last, shifts no index, so it is omitted. The depthwise
convolution is a ``groups=C`` convolution; squeeze-and-excitation is our one-op ``nn.SqueezeExcitation``
(torchvision's ``fc1`` / ``fc2`` names). A block with a shortcut adds its input after stochastic depth
(``input + stochastic_depth(block(input))``): in training with a nonzero drop probability that is one
``ops.drop_path_add`` pass over the projection BN's output; otherwise (eval, or p = 0, the network's
first block) the add is fused into the projection BN (``bn(conv_out, residual=input)``), which is also
what ``fuse_for_inference`` folds into the convolution. The ``stochastic_depth`` module is kept (no
parameters) so the module tree and its repr are torchvision's; its ``p`` and ``mode`` are what the
block uses. Parameter and buffer names, their order, initialisation, BN eps / momentum per variant,
dropout and stochastic-depth defaults are torchvision's.

Smallest input: 1x1 (every convolution is padded, so each stride-2 stage leaves at least a 1x1 map;
torchvision documents min_size 1 for B0-B7 and 33 for V2, whose weights were trained at >= 33, but
the V2 graph is the same padded-conv chain and runs at 1x1 as well)."""
from __future__ import annotations

import copy
import math
from typing import Optional, Sequence, Union

import torch

from .. import nn, ops
from ._utils import init_mobile_weights
from .mobilenet import _make_divisible

__all__ = ["EfficientNet", "MBConvConfig", "FusedMBConvConfig", "MBConv", "FusedMBConv",
           "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
           "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_s", "efficientnet_v2_m",
           "efficientnet_v2_l"]


class _MBConvConfig:
    def __init__(self, expand_ratio: float, kernel: int, stride: int, input_channels: int, out_channels: int,
                 num_layers: int, block: type) -> None:
        self.expand_ratio = expand_ratio
        self.kernel = kernel
        self.stride = stride
        self.input_channels = input_channels
        self.out_channels = out_channels
        self.num_layers = num_layers
        self.block = block

    @staticmethod
    def adjust_channels(channels: float, width_mult: float, min_value: Optional[int] = None) -> int:
        return _make_divisible(channels * width_mult, 8, min_value)


class MBConvConfig(_MBConvConfig):
    """One stage of MBConv blocks (EfficientNet paper, Table 1; EfficientNetV2, Table 4), channels scaled
    by ``width_mult`` (rounded to multiples of 8) and depth by ``depth_mult`` (rounded up)."""

    def __init__(self, expand_ratio: float, kernel: int, stride: int, input_channels: int, out_channels: int,
                 num_layers: int, width_mult: float = 1.0, depth_mult: float = 1.0) -> None:
        super().__init__(expand_ratio, kernel, stride, self.adjust_channels(input_channels, width_mult),
                         self.adjust_channels(out_channels, width_mult),
                         int(math.ceil(num_layers * depth_mult)), MBConv)


class FusedMBConvConfig(_MBConvConfig):
    """One stage of Fused-MBConv blocks (EfficientNetV2, Table 4)."""

    def __init__(self, expand_ratio: float, kernel: int, stride: int, input_channels: int, out_channels: int,
                 num_layers: int) -> None:
        super().__init__(expand_ratio, kernel, stride, input_channels, out_channels, num_layers, FusedMBConv)


class Conv2dNormActivation(torch.nn.Sequential):
    """conv (no bias) -> BatchNorm2d with the activation fused; names "0" (conv) and "1" (bn)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 activation: Optional[str] = "silu", bn_kwargs: Optional[dict] = None) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels, activation=activation, **(bn_kwargs or {})),
        )
        self.out_channels = out_channels


class _ResidualBlock(torch.nn.Module):
    """``block`` (a Sequential ending in a Conv2dNormActivation without activation), then
    ``input + stochastic_depth(result)`` when the block keeps shape and stride."""

    block: torch.nn.Sequential
    stochastic_depth: nn.StochasticDepth
    use_res_connect: bool

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.use_res_connect:
            return self.block(input)
        out = input
        for layer in self.block[:-1]:
            out = layer(out)
        conv, bn = self.block[-1]
        out = conv(out)
        sd = self.stochastic_depth
        if self.training and sd.p > 0.0:
            # the survivors' scale applies to the branch only, so the add cannot sit in the BN's epilogue
            return ops.drop_path_add(bn(out), input, sd.p, sd.mode, True)
        return bn(out, residual=input)


class MBConv(_ResidualBlock):
    """Inverted residual: 1x1 expand (SiLU) -> kxk depthwise (SiLU) -> squeeze-and-excitation (SiLU,
    sigmoid gate, squeeze = input_channels // 4) -> 1x1 project (no activation)."""

    def __init__(self, cnf: MBConvConfig, stochastic_depth_prob: float, bn_kwargs: Optional[dict] = None) -> None:
        super().__init__()
        if not (1 <= cnf.stride <= 2):
            raise ValueError("illegal stride value")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        layers: list[torch.nn.Module] = []
        expanded_channels = cnf.adjust_channels(cnf.input_channels, cnf.expand_ratio)
        if expanded_channels != cnf.input_channels:
            layers.append(Conv2dNormActivation(cnf.input_channels, expanded_channels, 1, bn_kwargs=bn_kwargs))
        layers.append(Conv2dNormActivation(expanded_channels, expanded_channels, cnf.kernel, cnf.stride,
                                           groups=expanded_channels, bn_kwargs=bn_kwargs))
        squeeze_channels = max(1, cnf.input_channels // 4)
        layers.append(nn.SqueezeExcitation(expanded_channels, squeeze_channels, activation=nn.SiLU))
        layers.append(Conv2dNormActivation(expanded_channels, cnf.out_channels, 1, activation=None,
                                           bn_kwargs=bn_kwargs))
        self.block = torch.nn.Sequential(*layers)
        self.stochastic_depth = nn.StochasticDepth(stochastic_depth_prob, "row")
        self.out_channels = cnf.out_channels


class FusedMBConv(_ResidualBlock):
    """EfficientNetV2's fused block: kxk expand conv (SiLU) -> 1x1 project, or, at expand ratio 1, one
    kxk conv (SiLU)."""

    def __init__(self, cnf: FusedMBConvConfig, stochastic_depth_prob: float,
                 bn_kwargs: Optional[dict] = None) -> None:
        super().__init__()
        if not (1 <= cnf.stride <= 2):
            raise ValueError("illegal stride value")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        layers: list[torch.nn.Module] = []
        expanded_channels = cnf.adjust_channels(cnf.input_channels, cnf.expand_ratio)
        if expanded_channels != cnf.input_channels:
            layers.append(Conv2dNormActivation(cnf.input_channels, expanded_channels, cnf.kernel, cnf.stride,
                                               bn_kwargs=bn_kwargs))
            layers.append(Conv2dNormActivation(expanded_channels, cnf.out_channels, 1, activation=None,
                                               bn_kwargs=bn_kwargs))
        else:
            layers.append(Conv2dNormActivation(cnf.input_channels, cnf.out_channels, cnf.kernel, cnf.stride,
                                               bn_kwargs=bn_kwargs))
        self.block = torch.nn.Sequential(*layers)
        self.stochastic_depth = nn.StochasticDepth(stochastic_depth_prob, "row")
        self.out_channels = cnf.out_channels

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect and self.block[-1][1].activation is not None:
            # expand ratio 1 with a shortcut: the SiLU comes before the add, so the BN cannot take the
            # residual (it adds before its activation)
            out = self.block(input)
            return ops.drop_path_add(out, input, self.stochastic_depth.p, self.stochastic_depth.mode,
                                     self.training)
        return super().forward(input)


class EfficientNet(torch.nn.Module):
    """Arguments as torchvision's EfficientNet (inverted_residual_setting, dropout, stochastic_depth_prob,
    num_classes, norm_layer, last_channel). ``norm_layer`` may be None (BatchNorm2d with PyTorch's
    eps / momentum), a dict of BatchNorm2d keyword arguments (``{"eps": 1e-3, "momentum": 0.01}``) or
    ``functools.partial(torch.nn.BatchNorm2d or pyimgcls.nn.BatchNorm2d, eps=..., momentum=...)``, the
    form torchvision's builders pass; our BatchNorm2d is always the layer built."""

    def __init__(self, inverted_residual_setting: Sequence[Union[MBConvConfig, FusedMBConvConfig]], dropout: float,
                 stochastic_depth_prob: float = 0.2, num_classes: int = 1000, norm_layer=None,
                 last_channel: Optional[int] = None) -> None:
        super().__init__()
        if not inverted_residual_setting:
            raise ValueError("The inverted_residual_setting should not be empty")
        if not (isinstance(inverted_residual_setting, Sequence)
                and all(isinstance(s, _MBConvConfig) for s in inverted_residual_setting)):
            raise TypeError("The inverted_residual_setting should be List[MBConvConfig]")
        bn_kwargs = _bn_kwargs(norm_layer)
        layers: list[torch.nn.Module] = []
        firstconv_output_channels = inverted_residual_setting[0].input_channels
        layers.append(Conv2dNormActivation(3, firstconv_output_channels, 3, 2, bn_kwargs=bn_kwargs))
        total_stage_blocks = sum(cnf.num_layers for cnf in inverted_residual_setting)
        stage_block_id = 0
        for cnf in inverted_residual_setting:
            stage: list[torch.nn.Module] = []
            for _ in range(cnf.num_layers):
                block_cnf = copy.copy(cnf)
                if stage:
                    block_cnf.input_channels = block_cnf.out_channels
                    block_cnf.stride = 1
                # drop probability grows linearly with depth, from 0 at the first block
                sd_prob = stochastic_depth_prob * float(stage_block_id) / total_stage_blocks
                stage.append(block_cnf.block(block_cnf, sd_prob, bn_kwargs))
                stage_block_id += 1
            layers.append(torch.nn.Sequential(*stage))
        lastconv_input_channels = inverted_residual_setting[-1].out_channels
        lastconv_output_channels = last_channel if last_channel is not None else 4 * lastconv_input_channels
        layers.append(Conv2dNormActivation(lastconv_input_channels, lastconv_output_channels, 1, bn_kwargs=bn_kwargs))
        self.features = torch.nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = torch.nn.Sequential(
            torch.nn.Dropout(p=dropout, inplace=True),
            nn.Linear(lastconv_output_channels, num_classes),
        )

        # torchvision's EfficientNet initialisation.
        init_mobile_weights(self, linear="uniform")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _bn_kwargs(norm_layer) -> dict:
    """eps / momentum from ``norm_layer`` (None, a dict, or a partial of a BatchNorm2d class)."""
    if norm_layer is None:
        return {}
    if isinstance(norm_layer, dict):
        kw = dict(norm_layer)
    else:
        func = getattr(norm_layer, "func", None)
        if not (isinstance(func, type) and issubclass(func, torch.nn.BatchNorm2d)) or getattr(norm_layer, "args", ()):
            raise ValueError("EfficientNet: argument 'norm_layer' must be None, a dict of BatchNorm2d keyword "
                             "arguments or functools.partial(BatchNorm2d, eps=..., momentum=...), got "
                             f"{norm_layer!r}")
        kw = dict(norm_layer.keywords)
    bad = set(kw) - {"eps", "momentum"}
    if bad:
        raise ValueError(f"EfficientNet: argument 'norm_layer' may set only eps and momentum, got {sorted(bad)}")
    return kw


# (width_mult, depth_mult, dropout, BatchNorm keyword arguments) of torchvision's B0-B7 builders
_B_PARAMS = {
    "efficientnet_b0": (1.0, 1.0, 0.2, None),
    "efficientnet_b1": (1.0, 1.1, 0.2, None),
    "efficientnet_b2": (1.1, 1.2, 0.3, None),
    "efficientnet_b3": (1.2, 1.4, 0.3, None),
    "efficientnet_b4": (1.4, 1.8, 0.4, None),
    "efficientnet_b5": (1.6, 2.2, 0.4, {"eps": 0.001, "momentum": 0.01}),
    "efficientnet_b6": (1.8, 2.6, 0.5, {"eps": 0.001, "momentum": 0.01}),
    "efficientnet_b7": (2.0, 3.1, 0.5, {"eps": 0.001, "momentum": 0.01}),
}
# (dropout, stage table) of torchvision's V2 builders; their BatchNorm eps is 1e-3 (momentum 0.1)
_V2_PARAMS = {
    "efficientnet_v2_s": (0.2, [(FusedMBConvConfig, 1, 3, 1, 24, 24, 2), (FusedMBConvConfig, 4, 3, 2, 24, 48, 4),
                                (FusedMBConvConfig, 4, 3, 2, 48, 64, 4), (MBConvConfig, 4, 3, 2, 64, 128, 6),
                                (MBConvConfig, 6, 3, 1, 128, 160, 9), (MBConvConfig, 6, 3, 2, 160, 256, 15)]),
    "efficientnet_v2_m": (0.3, [(FusedMBConvConfig, 1, 3, 1, 24, 24, 3), (FusedMBConvConfig, 4, 3, 2, 24, 48, 5),
                                (FusedMBConvConfig, 4, 3, 2, 48, 80, 5), (MBConvConfig, 4, 3, 2, 80, 160, 7),
                                (MBConvConfig, 6, 3, 1, 160, 176, 14), (MBConvConfig, 6, 3, 2, 176, 304, 18),
                                (MBConvConfig, 6, 3, 1, 304, 512, 5)]),
    "efficientnet_v2_l": (0.4, [(FusedMBConvConfig, 1, 3, 1, 32, 32, 4), (FusedMBConvConfig, 4, 3, 2, 32, 64, 7),
                                (FusedMBConvConfig, 4, 3, 2, 64, 96, 7), (MBConvConfig, 4, 3, 2, 96, 192, 10),
                                (MBConvConfig, 6, 3, 1, 192, 224, 19), (MBConvConfig, 6, 3, 2, 224, 384, 25),
                                (MBConvConfig, 6, 3, 1, 384, 640, 7)]),
}


def _efficientnet_b(name: str, kwargs: dict) -> EfficientNet:
    width_mult, depth_mult, dropout, bn = _B_PARAMS[name]
    setting = [MBConvConfig(*row, width_mult=width_mult, depth_mult=depth_mult) for row in (
        (1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
        (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))]
    kwargs.setdefault("dropout", dropout)
    if bn is not None:
        kwargs.setdefault("norm_layer", bn)
    return EfficientNet(setting, last_channel=None, **kwargs)


def _efficientnet_v2(name: str, kwargs: dict) -> EfficientNet:
    dropout, rows = _V2_PARAMS[name]
    setting = [cls(*row) for cls, *row in rows]
    kwargs.setdefault("dropout", dropout)
    kwargs.setdefault("norm_layer", {"eps": 1e-3})
    return EfficientNet(setting, last_channel=1280, **kwargs)


def efficientnet_b0(**kwargs) -> EfficientNet:
    """torchvision.models.efficientnet_b0; kwargs: num_classes=1000, dropout=0.2, stochastic_depth_prob=0.2."""
    return _efficientnet_b("efficientnet_b0", kwargs)


def efficientnet_b1(**kwargs) -> EfficientNet:
    """torchvision.models.efficientnet_b1; kwargs: num_classes=1000, dropout=0.2, stochastic_depth_prob=0.2."""
    return _efficientnet_b("efficientnet_b1", kwargs)


def efficientnet_b2(**kwargs) -> EfficientNet:
    """torchvision.models.efficientnet_b2; kwargs: num_classes=1000, dropout=0.3, stochastic_depth_prob=0.2."""
    return _efficientnet_b("efficientnet_b2", kwargs)


def efficientnet_b3(**kwargs) -> EfficientNet:
    """torchvision.models.efficientnet_b3; kwargs: num_classes=1000, dropout=0.3, stochastic_depth_prob=0.2."""
    return _efficientnet_b("efficientnet_b3", kwargs)


def efficientnet_b4(**kwargs) -> EfficientNet:
    """torchvision.models.efficientnet_b4; kwargs: num_classes=1000, dropout=0.4, stochastic_depth_prob=0.2."""
    return _efficientnet_b("efficientnet_b4", kwargs)


def efficientnet_b5(**kwargs) -> EfficientNet:
    """torchvision.models.efficientnet_b5 (BN eps 1e-3, momentum 0.01); kwargs: num_classes, dropout=0.4, ..."""
    return _efficientnet_b("efficientnet_b5", kwargs)


def efficientnet_b6(**kwargs) -> EfficientNet:
    """torchvision.models.efficientnet_b6 (BN eps 1e-3, momentum 0.01); kwargs: num_classes, dropout=0.5, ..."""
    return _efficientnet_b("efficientnet_b6", kwargs)


def efficientnet_b7(**kwargs) -> EfficientNet:
    """torchvision.models.efficientnet_b7 (BN eps 1e-3, momentum 0.01); kwargs: num_classes, dropout=0.5, ..."""
    return _efficientnet_b("efficientnet_b7", kwargs)


def efficientnet_v2_s(**kwargs) -> EfficientNet:
    """torchvision.models.efficientnet_v2_s (BN eps 1e-3); kwargs: num_classes=1000, dropout=0.2, ..."""
    return _efficientnet_v2("efficientnet_v2_s", kwargs)


def efficientnet_v2_m(**kwargs) -> EfficientNet:
    """torchvision.models.efficientnet_v2_m (BN eps 1e-3); kwargs: num_classes=1000, dropout=0.3, ..."""
    return _efficientnet_v2("efficientnet_v2_m", kwargs)


def efficientnet_v2_l(**kwargs) -> EfficientNet:
    """torchvision.models.efficientnet_v2_l (BN eps 1e-3); kwargs: num_classes=1000, dropout=0.4, ..."""
    return _efficientnet_v2("efficientnet_v2_l", kwargs)
