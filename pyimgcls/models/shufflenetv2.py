"""ShuffleNet V2 (Ma et al., 2018) on pyimgcls layers, as torchvision's ShuffleNetV2.

Each conv -> BN -> ReLU is our Conv2d then ``BatchNorm2d(activation="relu")``; the depthwise 3x3
convolutions are ``groups=C`` convolutions followed by a BN without activation. A stride-1 unit passes
the first half of its channels through and transforms the second half; a stride-2 unit transforms the
whole input in two branches. The halves are concatenated (``torch.cat``) and the channels shuffled with
two groups, a plain reshape / transpose / reshape of the [N, C, H, W] tensor. torchvision's parameter-free
ReLU modules are absent from the Sequentials, whose other children keep torchvision's indices (``branch2.3``
is the depthwise conv), so state_dict keys are unchanged. Smallest input: 1x1 (torchvision's ``min_size``;
padded convolutions and pools keep every map at least 1x1)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch

from .. import nn, ops
from ._utils import set_fixed_kwarg

__all__ = ["ShuffleNetV2", "InvertedResidual", "channel_shuffle", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
           "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H, W], channel g * (C / groups) + i moved to i * groups + g (one copy of x;
    the output keeps x's memory format): the input's channels viewed as [groups, C / groups] are copied
    transposed into the output's channels viewed as [C / groups, groups]."""
    out = torch.empty_like(x)
    out.unflatten(1, (-1, groups)).copy_(x.unflatten(1, (groups, -1)).transpose(1, 2))
    return out


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, bias=False, groups=channels)


class InvertedResidual(torch.nn.Module):
    """ShuffleNet V2 unit: inp -> oup channels, spatial size divided by ``stride``."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        if not (1 <= stride <= 3):
            raise ValueError("illegal stride value")
        self.stride = stride
        branch_features = oup // 2
        if stride == 1 and inp != branch_features << 1:
            raise ValueError(f"Invalid combination of stride {stride}, inp {inp} and oup {oup} values. If stride == 1 "
                             f"then inp should be equal to oup // 2 << 1.")
        self.branch_features = branch_features
        if stride > 1:
            self.branch1 = torch.nn.Sequential(OrderedDict([
                ("0", _depthwise(inp, stride)),
                ("1", nn.BatchNorm2d(inp)),
                ("2", nn.Conv2d(inp, branch_features, 1, 1, 0, bias=False)),
                ("3", nn.BatchNorm2d(branch_features, activation="relu")),
            ]))
        else:
            self.branch1 = torch.nn.Sequential()
        self.branch2 = torch.nn.Sequential(OrderedDict([
            ("0", nn.Conv2d(inp if stride > 1 else branch_features, branch_features, 1, 1, 0, bias=False)),
            ("1", nn.BatchNorm2d(branch_features, activation="relu")),
            ("3", _depthwise(branch_features, stride)),
            ("4", nn.BatchNorm2d(branch_features)),
            ("5", nn.Conv2d(branch_features, branch_features, 1, 1, 0, bias=False)),
            ("6", nn.BatchNorm2d(branch_features, activation="relu")),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            c = self.branch_features
            out = torch.cat((x[:, :c], self.branch2(x[:, c:])), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(torch.nn.Module):
    """Arguments as torchvision's ShuffleNetV2 (stages_repeats, stages_out_channels, num_classes);
    ``inverted_residual`` must be this module's InvertedResidual (the default)."""

    def __init__(self, stages_repeats: list[int], stages_out_channels: list[int], num_classes: int = 1000,
                 inverted_residual: Optional[type] = None) -> None:
        super().__init__()
        if inverted_residual not in (None, InvertedResidual):
            raise ValueError("ShuffleNetV2: argument 'inverted_residual' is not supported (pyimgcls's "
                             "InvertedResidual is always used)")
        if len(stages_repeats) != 3:
            raise ValueError("expected stages_repeats as list of 3 positive ints")
        if len(stages_out_channels) != 5:
            raise ValueError("expected stages_out_channels as list of 5 positive ints")
        self._stage_out_channels = stages_out_channels
        input_channels = 3
        output_channels = stages_out_channels[0]
        self.conv1 = torch.nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(output_channels, activation="relu"),
        )
        input_channels = output_channels
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for name, repeats, output_channels in zip(("stage2", "stage3", "stage4"), stages_repeats,
                                                  stages_out_channels[1:]):
            seq = [InvertedResidual(input_channels, output_channels, 2)]
            seq += [InvertedResidual(output_channels, output_channels, 1) for _ in range(repeats - 1)]
            setattr(self, name, torch.nn.Sequential(*seq))
            input_channels = output_channels
        output_channels = stages_out_channels[-1]
        self.conv5 = torch.nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(output_channels, activation="relu"),
        )
        self.fc = nn.Linear(output_channels, num_classes)
        # torchvision leaves PyTorch's default initialisation in place.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x)
        x = torch.flatten(ops.adaptive_avg_pool2d(x, (1, 1)), 1)  # torchvision: x.mean([2, 3])
        return self.fc(x)


def _shufflenetv2(name: str, channels: list[int], kwargs: dict) -> ShuffleNetV2:
    set_fixed_kwarg(kwargs, "stages_repeats", [4, 8, 4], name)
    set_fixed_kwarg(kwargs, "stages_out_channels", channels, name)
    return ShuffleNetV2(**kwargs)


def shufflenet_v2_x0_5(**kwargs) -> ShuffleNetV2:
    """torchvision.models.shufflenet_v2_x0_5; kwargs: num_classes=1000."""
    return _shufflenetv2("shufflenet_v2_x0_5", [24, 48, 96, 192, 1024], kwargs)


def shufflenet_v2_x1_0(**kwargs) -> ShuffleNetV2:
    """torchvision.models.shufflenet_v2_x1_0; kwargs: num_classes=1000."""
    return _shufflenetv2("shufflenet_v2_x1_0", [24, 116, 232, 464, 1024], kwargs)


def shufflenet_v2_x1_5(**kwargs) -> ShuffleNetV2:
    """torchvision.models.shufflenet_v2_x1_5; kwargs: num_classes=1000."""
    return _shufflenetv2("shufflenet_v2_x1_5", [24, 176, 352, 704, 1024], kwargs)


def shufflenet_v2_x2_0(**kwargs) -> ShuffleNetV2:
    """torchvision.models.shufflenet_v2_x2_0; kwargs: num_classes=1000."""
    return _shufflenetv2("shufflenet_v2_x2_0", [24, 244, 488, 976, 2048], kwargs)
