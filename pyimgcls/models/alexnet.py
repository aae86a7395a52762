"""AlexNet, torchvision's variant ("One weird trick", Krizhevsky 2014), on pyimgcls layers.

Every ReLU is fused into the preceding Conv2d/Linear epilogue. torchvision's Sequential has a ReLU at
features.1, .4, .7, .9, .11 and classifier.2, .5; a parameter-free ``torch.nn.Identity`` holds each of
those indices, so the state_dict keys (features.0.weight, features.3.weight, classifier.1.weight, ...)
are torchvision's exactly. Smallest input: 63x63 (as torchvision's ``min_size``)."""
from __future__ import annotations

import torch

from .. import nn

__all__ = ["AlexNet", "alexnet"]


class AlexNet(torch.nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2, activation="relu"),
            torch.nn.Identity(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2, activation="relu"),
            torch.nn.Identity(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1, activation="relu"),
            torch.nn.Identity(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, activation="relu"),
            torch.nn.Identity(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1, activation="relu"),
            torch.nn.Identity(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = torch.nn.Sequential(
            torch.nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096, activation="relu"),
            torch.nn.Identity(),
            torch.nn.Dropout(p=dropout),
            nn.Linear(4096, 4096, activation="relu"),
            torch.nn.Identity(),
            nn.Linear(4096, num_classes),
        )
        # torchvision's AlexNet keeps PyTorch's default layer initialisation; so do we.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def alexnet(num_classes: int = 1000, dropout: float = 0.5) -> AlexNet:
    """torchvision.models.alexnet (without pretrained weights: load a torchvision state_dict instead)."""
    return AlexNet(num_classes=num_classes, dropout=dropout)
