"""DenseNet-BC 121/161/169/201 (Huang et al., 2016) on pyimgcls layers.

DenseNet orders each unit norm -> relu -> conv: the ReLU is fused into the BatchNorm
(``BatchNorm2d(activation="relu")``) and the conv follows. The dense connectivity is a channel
concatenation (``torch.cat``) of every earlier layer's output. torchvision's parameter-free ``relu0``,
``relu1``/``relu2`` and transition ``relu`` attributes are absent (their names hold no parameters, so
state_dict keys are unchanged); the final ``F.relu`` is fused into ``features.norm5``. Every parameter
and buffer is named as in torchvision. Smallest input: 32x32 (the 7x7/2 stem, max pool and three
transitions reduce by 32)."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from .. import nn, ops
from ._utils import is_batchnorm

__all__ = ["DenseNet", "densenet121", "densenet161", "densenet169", "densenet201"]


class _DenseLayer(torch.nn.Module):
    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features, activation="relu")
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate, activation="relu")
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def bn_function(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.norm1(torch.cat(inputs, 1)))

    def forward(self, input) -> torch.Tensor:
        prev_features = [input] if isinstance(input, torch.Tensor) else list(input)
        if self.memory_efficient and torch.is_grad_enabled() and any(t.requires_grad for t in prev_features):
            # Recompute the concatenation and bottleneck in backward instead of storing them (as torchvision).
            bottleneck_output = cp.checkpoint(self.bn_function, *prev_features, use_reentrant=False)
        else:
            bottleneck_output = self.bn_function(*prev_features)
        new_features = self.conv2(self.norm2(bottleneck_output))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class _DenseBlock(torch.nn.ModuleDict):
    _version = 2

    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int, drop_rate: float,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate=growth_rate, bn_size=bn_size,
                                drop_rate=drop_rate, memory_efficient=memory_efficient)
            self.add_module("denselayer%d" % (i + 1), layer)

    def forward(self, init_features: torch.Tensor) -> torch.Tensor:
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(torch.nn.Sequential):
    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features, activation="relu")
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(torch.nn.Module):
    """Densenet-BC; arguments as torchvision's DenseNet (growth_rate, block_config, num_init_features,
    bn_size, drop_rate, num_classes, memory_efficient)."""

    def __init__(self, growth_rate: int = 32, block_config: tuple[int, int, int, int] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, drop_rate: float = 0, num_classes: int = 1000,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features, activation="relu")),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers=num_layers, num_input_features=num_features, bn_size=bn_size,
                                growth_rate=growth_rate, drop_rate=drop_rate, memory_efficient=memory_efficient)
            self.features.add_module("denseblock%d" % (i + 1), block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                trans = _Transition(num_input_features=num_features, num_output_features=num_features // 2)
                self.features.add_module("transition%d" % (i + 1), trans)
                num_features = num_features // 2
        # torchvision applies F.relu after norm5 in forward; fused here.
        self.features.add_module("norm5", nn.BatchNorm2d(num_features, activation="relu"))
        self.classifier = nn.Linear(num_features, num_classes)

        # torchvision's DenseNet initialisation.
        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
            elif is_batchnorm(m):
                torch.nn.init.constant_(m.weight, 1)
                torch.nn.init.constant_(m.bias, 0)
            elif isinstance(m, torch.nn.Linear):
                torch.nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        out = ops.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


def densenet121(**kwargs) -> DenseNet:
    """torchvision.models.densenet121; kwargs as DenseNet (num_classes, drop_rate, memory_efficient, ...)."""
    return DenseNet(32, (6, 12, 24, 16), 64, **kwargs)


def densenet161(**kwargs) -> DenseNet:
    """torchvision.models.densenet161; kwargs as DenseNet."""
    return DenseNet(48, (6, 12, 36, 24), 96, **kwargs)


def densenet169(**kwargs) -> DenseNet:
    """torchvision.models.densenet169; kwargs as DenseNet."""
    return DenseNet(32, (6, 12, 32, 32), 64, **kwargs)


def densenet201(**kwargs) -> DenseNet:
    """torchvision.models.densenet201; kwargs as DenseNet."""
    return DenseNet(32, (6, 12, 48, 32), 64, **kwargs)
