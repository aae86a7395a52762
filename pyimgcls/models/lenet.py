"""LeNet-5 (LeCun et al., 1998) in its modern form: ReLU activations and max pooling.

Input: [N, in_channels, 32, 32]. Layout of the parameters (torchvision has no LeNet, so the names
below are ours and stable):

    features.0  Conv2d(in_channels, 6, 5)  + ReLU (fused)  -> [N, 6, 28, 28]
    features.1  MaxPool2d(2)                               -> [N, 6, 14, 14]
    features.2  Conv2d(6, 16, 5)           + ReLU (fused)  -> [N, 16, 10, 10]
    features.3  MaxPool2d(2)                               -> [N, 16, 5, 5]
    flatten                                                -> [N, 400]
    classifier.0  Linear(400, 120) + ReLU (fused)
    classifier.1  Linear(120, 84)  + ReLU (fused)
    classifier.2  Linear(84, num_classes)

61,706 parameters for in_channels=1, num_classes=10."""
from __future__ import annotations

import torch

from .. import nn

__all__ = ["LeNet5", "lenet5"]


class LeNet5(torch.nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, activation="relu"),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5, activation="relu"),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = torch.nn.Sequential(
            nn.Linear(16 * 5 * 5, 120, activation="relu"),
            nn.Linear(120, 84, activation="relu"),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def lenet5(num_classes: int = 10, in_channels: int = 1, **kwargs) -> LeNet5:
    """LeNet-5 for 32x32 inputs (pad 28x28 MNIST by 2). ``in_channels=3`` for CIFAR-10."""
    if kwargs:
        raise TypeError(f"lenet5() got unexpected keyword arguments {sorted(kwargs)}")
    return LeNet5(num_classes=num_classes, in_channels=in_channels)
