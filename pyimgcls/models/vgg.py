"""VGG 11/13/16/19 (Simonyan & Zisserman, 2014), with and without BatchNorm, on pyimgcls layers.

torchvision's ``features`` Sequential is [conv, relu] (or [conv, bn, relu]) per layer and a MaxPool
at each "M". We fuse the ReLU into the conv epilogue (no BN) or into the BatchNorm (``_bn``
variants), and keep a parameter-free ``torch.nn.Identity`` at the ReLU's index so every state_dict key
(features.<i>.weight, features.<i>.running_mean, ...) equals torchvision's. The classifier's ReLUs are
fused into the Linear layers the same way. Smallest input: 32x32."""
from __future__ import annotations

from typing import Union

import torch

from .. import nn
from ._utils import is_batchnorm

__all__ = ["VGG", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]

cfgs: dict[str, list[Union[str, int]]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_layers(cfg: list[Union[str, int]], batch_norm: bool = False) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif batch_norm:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1),
                       nn.BatchNorm2d(v, activation="relu"), torch.nn.Identity()]
            in_channels = v
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1, activation="relu"), torch.nn.Identity()]
            in_channels = v
    return torch.nn.Sequential(*layers)


class VGG(torch.nn.Module):
    def __init__(self, features: torch.nn.Module, num_classes: int = 1000, init_weights: bool = True,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = torch.nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096, activation="relu"),
            torch.nn.Identity(),
            torch.nn.Dropout(p=dropout),
            nn.Linear(4096, 4096, activation="relu"),
            torch.nn.Identity(),
            torch.nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        if init_weights:
            # torchvision's VGG initialisation.
            for m in self.modules():
                if isinstance(m, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        torch.nn.init.constant_(m.bias, 0)
                elif is_batchnorm(m):
                    torch.nn.init.constant_(m.weight, 1)
                    torch.nn.init.constant_(m.bias, 0)
                elif isinstance(m, torch.nn.Linear):
                    torch.nn.init.normal_(m.weight, 0, 0.01)
                    torch.nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _vgg(cfg: str, batch_norm: bool, **kwargs) -> VGG:
    return VGG(make_layers(cfgs[cfg], batch_norm=batch_norm), **kwargs)


def vgg11(**kwargs) -> VGG:
    """torchvision.models.vgg11; kwargs: num_classes=1000, init_weights=True, dropout=0.5."""
    return _vgg("A", False, **kwargs)


def vgg11_bn(**kwargs) -> VGG:
    """torchvision.models.vgg11_bn; kwargs: num_classes=1000, init_weights=True, dropout=0.5."""
    return _vgg("A", True, **kwargs)


def vgg13(**kwargs) -> VGG:
    """torchvision.models.vgg13; kwargs: num_classes=1000, init_weights=True, dropout=0.5."""
    return _vgg("B", False, **kwargs)


def vgg13_bn(**kwargs) -> VGG:
    """torchvision.models.vgg13_bn; kwargs: num_classes=1000, init_weights=True, dropout=0.5."""
    return _vgg("B", True, **kwargs)


def vgg16(**kwargs) -> VGG:
    """torchvision.models.vgg16; kwargs: num_classes=1000, init_weights=True, dropout=0.5."""
    return _vgg("D", False, **kwargs)


def vgg16_bn(**kwargs) -> VGG:
    """torchvision.models.vgg16_bn; kwargs: num_classes=1000, init_weights=True, dropout=0.5."""
    return _vgg("D", True, **kwargs)


def vgg19(**kwargs) -> VGG:
    """torchvision.models.vgg19; kwargs: num_classes=1000, init_weights=True, dropout=0.5."""
    return _vgg("E", False, **kwargs)


def vgg19_bn(**kwargs) -> VGG:
    """torchvision.models.vgg19_bn; kwargs: num_classes=1000, init_weights=True, dropout=0.5."""
    return _vgg("E", True, **kwargs)
