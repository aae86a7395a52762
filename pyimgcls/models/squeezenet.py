"""SqueezeNet 1.0 / 1.1 (Iandola et al., 2016) on pyimgcls layers, as torchvision's SqueezeNet.

Every convolution is followed by a ReLU, fused into it (``Conv2d(activation="relu")``). A Fire module
squeezes with a 1x1 convolution and expands with a 1x1 and a 3x3 convolution side by side, concatenated
along the channels (``torch.cat``). torchvision's parameter-free ReLU modules are absent; the Sequentials
keep torchvision's indices (``features.0``, ``features.3`` ..., ``classifier.1``), so state_dict keys are
unchanged. The classifier is dropout -> 1x1 conv to num_classes (ReLU fused) -> global average pool, no
Linear layer. Smallest input: 21x21 (1.0) / 17x17 (1.1), torchvision's ``min_size``."""
from __future__ import annotations

from collections import OrderedDict

import torch

from .. import nn

__all__ = ["SqueezeNet", "Fire", "squeezenet1_0", "squeezenet1_1"]


class Fire(torch.nn.Module):
    """squeeze 1x1 (ReLU) -> [expand 1x1 (ReLU) | expand 3x3 (ReLU)]: expand1x1 + expand3x3 channels out."""

    def __init__(self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int) -> None:
        super().__init__()
        self.inplanes = inplanes
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1, activation="relu")
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1, activation="relu")
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1, activation="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], 1)


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


class SqueezeNet(torch.nn.Module):
    """Arguments as torchvision's SqueezeNet (version "1_0" | "1_1", num_classes, dropout)."""

    def __init__(self, version: str = "1_0", num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        # Indices as torchvision's Sequential; its ReLU at index 1 holds no parameters and is fused into "0".
        if version == "1_0":
            layers = [("0", nn.Conv2d(3, 96, kernel_size=7, stride=2, activation="relu")), ("2", _pool()),
                      ("3", Fire(96, 16, 64, 64)), ("4", Fire(128, 16, 64, 64)), ("5", Fire(128, 32, 128, 128)),
                      ("6", _pool()),
                      ("7", Fire(256, 32, 128, 128)), ("8", Fire(256, 48, 192, 192)),
                      ("9", Fire(384, 48, 192, 192)), ("10", Fire(384, 64, 256, 256)),
                      ("11", _pool()),
                      ("12", Fire(512, 64, 256, 256))]
        elif version == "1_1":
            layers = [("0", nn.Conv2d(3, 64, kernel_size=3, stride=2, activation="relu")), ("2", _pool()),
                      ("3", Fire(64, 16, 64, 64)), ("4", Fire(128, 16, 64, 64)),
                      ("5", _pool()),
                      ("6", Fire(128, 32, 128, 128)), ("7", Fire(256, 32, 128, 128)),
                      ("8", _pool()),
                      ("9", Fire(256, 48, 192, 192)), ("10", Fire(384, 48, 192, 192)),
                      ("11", Fire(384, 64, 256, 256)), ("12", Fire(512, 64, 256, 256))]
        else:
            raise ValueError(f"SqueezeNet: argument 'version' must be '1_0' or '1_1', got {version!r}")
        self.features = torch.nn.Sequential(OrderedDict(layers))
        final_conv = nn.Conv2d(512, self.num_classes, kernel_size=1, activation="relu")
        self.classifier = torch.nn.Sequential(OrderedDict([
            ("0", torch.nn.Dropout(p=dropout)), ("1", final_conv), ("3", nn.AdaptiveAvgPool2d((1, 1)))]))

        # torchvision's SqueezeNet initialisation.
        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d):
                if m is final_conv:
                    torch.nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    torch.nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    torch.nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet1_0(**kwargs) -> SqueezeNet:
    """torchvision.models.squeezenet1_0; kwargs: num_classes=1000, dropout=0.5."""
    return SqueezeNet("1_0", **kwargs)


def squeezenet1_1(**kwargs) -> SqueezeNet:
    """torchvision.models.squeezenet1_1 (2.4x fewer FLOPs than 1.0); kwargs: num_classes=1000, dropout=0.5."""
    return SqueezeNet("1_1", **kwargs)
