"""GoogLeNet / Inception v1 (Szegedy et al., 2014) on pyimgcls layers, as torchvision's GoogLeNet.

torchvision's ``BasicConv2d`` (conv without bias -> BatchNorm(eps=1e-3) -> ReLU) is our Conv2d followed by
``BatchNorm2d(eps=1e-3, activation="relu")`` under the same names ``conv`` / ``bn``. An Inception block
runs its four branches and concatenates them along the channels (``torch.cat``); the third branch uses a
3x3 convolution where the paper has 5x5, as torchvision does (pytorch/vision#906), so that its weights
load. The auxiliary heads' ``F.relu(fc1(x))`` is ``Linear(activation="relu")``.

Defaults that differ from torchvision's ``GoogLeNet`` class: ``aux_logits=False`` (the issue's
6,624,904-parameter model, which is what torchvision's pretrained ``googlenet()`` returns), and
``init_weights=None`` initialises as ``True`` without torchvision's FutureWarning. With ``aux_logits=True``
a training-mode forward returns ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``, as torchvision.
Smallest input: 15x15 (torchvision's ``min_size``)."""
from __future__ import annotations

from collections import namedtuple
from typing import Any, Optional

import torch

from .. import nn, ops
from ._utils import is_batchnorm

__all__ = ["GoogLeNet", "GoogLeNetOutputs", "googlenet"]

GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])


def transform_input(x: torch.Tensor) -> torch.Tensor:
    """Re-normalise ImageNet-normalised RGB input to the [-1, 1] scaling of the original Google weights
    (torchvision's ``_transform_input``, shared with inception.py): channel c becomes
    x_c * std_c / 0.5 + (mean_c - 0.5) / 0.5, elementwise on the [N, 3, H, W] input."""
    x0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
    x1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
    x2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
    return torch.cat((x0, x1, x2), 1)


class BasicConv2d(torch.nn.Module):
    """conv (no bias) -> BatchNorm2d(eps=1e-3) with the ReLU fused; kwargs go to the Conv2d."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001, activation="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Inception(torch.nn.Module):
    """Four branches concatenated: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | 3x3/1 max pool -> 1x1; output channels
    ch1x1 + ch3x3 + ch5x5 + pool_proj at the input's spatial size."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int, conv_block=None) -> None:
        super().__init__()
        if conv_block is not None:
            raise ValueError("Inception: argument 'conv_block' is not supported (BasicConv2d is always used)")
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = torch.nn.Sequential(BasicConv2d(in_channels, ch3x3red, kernel_size=1),
                                           BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
        self.branch3 = torch.nn.Sequential(BasicConv2d(in_channels, ch5x5red, kernel_size=1),
                                           BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = torch.nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                                           BasicConv2d(in_channels, pool_proj, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(torch.nn.Module):
    """Auxiliary classifier on a [N, C, 14, 14] map: adaptive 4x4 average pool -> 1x1 conv to 128 ->
    fc 2048 -> 1024 (ReLU fused) -> dropout -> fc to num_classes."""

    def __init__(self, in_channels: int, num_classes: int, conv_block=None, dropout: float = 0.7) -> None:
        super().__init__()
        if conv_block is not None:
            raise ValueError("InceptionAux: argument 'conv_block' is not supported (BasicConv2d is always used)")
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024, activation="relu")
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = torch.nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(ops.adaptive_avg_pool2d(x, (4, 4)))
        x = self.fc1(torch.flatten(x, 1))
        return self.fc2(self.dropout(x))


class GoogLeNet(torch.nn.Module):
    """Arguments as torchvision's GoogLeNet (num_classes, aux_logits, transform_input, init_weights,
    dropout, dropout_aux); ``blocks`` must be None (pyimgcls blocks are always used)."""

    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, transform_input: bool = False,
                 init_weights: Optional[bool] = None, blocks=None, dropout: float = 0.2,
                 dropout_aux: float = 0.7) -> None:
        super().__init__()
        if blocks is not None:
            raise ValueError("GoogLeNet: argument 'blocks' is not supported; leave it None")
        if init_weights is None:
            init_weights = True
        self.aux_logits = aux_logits
        self.transform_input = transform_input

        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)

        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)

        if aux_logits:
            self.aux1 = InceptionAux(512, num_classes, dropout=dropout_aux)
            self.aux2 = InceptionAux(528, num_classes, dropout=dropout_aux)
        else:
            self.aux1 = None
            self.aux2 = None

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = torch.nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)

        if init_weights:  # torchvision's GoogLeNet initialisation
            for m in self.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                    torch.nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                elif is_batchnorm(m):
                    torch.nn.init.constant_(m.weight, 1)
                    torch.nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor):
        if self.transform_input:
            x = transform_input(x)
        x = self.maxpool1(self.conv1(x))                       # N x 64 x H/4 x W/4 (ceil)
        x = self.maxpool2(self.conv3(self.conv2(x)))           # N x 192 x H/8
        x = self.maxpool3(self.inception3b(self.inception3a(x)))  # N x 480 x H/16
        x = self.inception4a(x)                                # N x 512
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # N x 528
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.maxpool4(self.inception4e(x))                 # N x 832 x H/32
        x = self.inception5b(self.inception5a(x))              # N x 1024
        x = torch.flatten(self.avgpool(x), 1)
        x = self.fc(self.dropout(x))
        if self.training and self.aux_logits:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x


def googlenet(**kwargs) -> GoogLeNet:
    """torchvision.models.googlenet (without weights); kwargs: num_classes=1000, aux_logits=False,
    transform_input=False, init_weights=None (= True), dropout=0.2, dropout_aux=0.7."""
    return GoogLeNet(**kwargs)
