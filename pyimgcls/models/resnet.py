"""ResNet 18/34/50/101/152 (He et al., 2015; torchvision's v1.5: stride on the 3x3 conv) on pyimgcls layers.

Each conv -> BN -> ReLU runs as Conv2d then BatchNorm2d(activation="relu"), and the block's closing
``relu(bn(conv(x)) + shortcut)`` is one call ``bn(conv_out, residual=shortcut)`` (after
``pyimgcls.fuse_for_inference`` folds BN into the conv, ``conv(x, residual=shortcut)``). torchvision's
parameter-free ``relu`` attributes are therefore absent; every parameter and buffer is named as in
torchvision, so state_dicts are interchangeable. ResNeXt (Xie et al., 2016) and Wide ResNet (Zagoruyko &
Komodakis, 2016) are the same network with a wider (``width_per_group``) and, for ResNeXt, grouped
(``groups``) 3x3 convolution in each Bottleneck. Smallest input: 32x32 (any size >= 1 after the
stride-32 stem and stages works; 32 keeps a 1x1 map at layer4)."""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from .. import nn
from ._utils import is_batchnorm, set_fixed_kwarg

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
           "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(torch.nn.Module):
    expansion: int = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[torch.nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, activation="relu")
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, activation="relu")  # relu(bn2(.) + identity), fused
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x))
        return self.bn2(self.conv2(out), residual=identity)


class Bottleneck(torch.nn.Module):
    expansion: int = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[torch.nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width, activation="relu")
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = nn.BatchNorm2d(width, activation="relu")
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, activation="relu")  # relu(bn3(.) + identity)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        return self.bn3(self.conv3(out), residual=identity)


class ResNet(torch.nn.Module):
    def __init__(self, block: type[Union[BasicBlock, Bottleneck]], layers: list[int], num_classes: int = 1000,
                 zero_init_residual: bool = False, groups: int = 1, width_per_group: int = 64,
                 replace_stride_with_dilation: Optional[list[bool]] = None,
                 norm_layer: Optional[Callable[..., torch.nn.Module]] = None) -> None:
        super().__init__()
        if norm_layer is not None:
            # The blocks fuse ReLU and the residual add into pyimgcls.nn.BatchNorm2d; another norm
            # layer would need its own fusion contract.
            raise ValueError("ResNet: argument 'norm_layer' is not supported (pyimgcls.nn.BatchNorm2d is always used)")
        self.inplanes = 64
        self.dilation = 1
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None "
                             f"or a 3-element tuple, got {replace_stride_with_dilation}")
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, activation="relu")
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        # torchvision's initialisation (fc keeps PyTorch's default Linear init there too).
        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif is_batchnorm(m):
                torch.nn.init.constant_(m.weight, 1)
                torch.nn.init.constant_(m.bias, 0)
        # Zero-initialise the last BN of each residual branch, so each block starts as the identity.
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    torch.nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    torch.nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1,
                    dilate: bool = False) -> torch.nn.Sequential:
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = torch.nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation))
        return torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def resnet18(**kwargs) -> ResNet:
    """torchvision.models.resnet18; kwargs as torchvision's ResNet (num_classes, zero_init_residual, ...)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs) -> ResNet:
    """torchvision.models.resnet34; kwargs as torchvision's ResNet."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50(**kwargs) -> ResNet:
    """torchvision.models.resnet50; kwargs as torchvision's ResNet."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def resnet101(**kwargs) -> ResNet:
    """torchvision.models.resnet101; kwargs as torchvision's ResNet."""
    return ResNet(Bottleneck, [3, 4, 23, 3], **kwargs)


def resnet152(**kwargs) -> ResNet:
    """torchvision.models.resnet152; kwargs as torchvision's ResNet."""
    return ResNet(Bottleneck, [3, 8, 36, 3], **kwargs)


def _variant(name: str, layers: list[int], groups: Optional[int], width_per_group: int, kwargs: dict) -> ResNet:
    if groups is not None:  # torchvision fixes groups for ResNeXt only; Wide ResNet leaves it to the caller
        set_fixed_kwarg(kwargs, "groups", groups, name)
    set_fixed_kwarg(kwargs, "width_per_group", width_per_group, name)
    return ResNet(Bottleneck, layers, **kwargs)


def resnext50_32x4d(**kwargs) -> ResNet:
    """torchvision.models.resnext50_32x4d: ResNet-50 with 32 groups of width 4 in each 3x3 conv (at 64 planes)."""
    return _variant("resnext50_32x4d", [3, 4, 6, 3], 32, 4, kwargs)


def resnext101_32x8d(**kwargs) -> ResNet:
    """torchvision.models.resnext101_32x8d: ResNet-101 with 32 groups of width 8."""
    return _variant("resnext101_32x8d", [3, 4, 23, 3], 32, 8, kwargs)


def resnext101_64x4d(**kwargs) -> ResNet:
    """torchvision.models.resnext101_64x4d: ResNet-101 with 64 groups of width 4."""
    return _variant("resnext101_64x4d", [3, 4, 23, 3], 64, 4, kwargs)


def wide_resnet50_2(**kwargs) -> ResNet:
    """torchvision.models.wide_resnet50_2: ResNet-50 with every Bottleneck's inner width doubled."""
    return _variant("wide_resnet50_2", [3, 4, 6, 3], None, 128, kwargs)


def wide_resnet101_2(**kwargs) -> ResNet:
    """torchvision.models.wide_resnet101_2: ResNet-101 with every Bottleneck's inner width doubled."""
    return _variant("wide_resnet101_2", [3, 4, 23, 3], None, 128, kwargs)
