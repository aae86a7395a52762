"""Inception v3 (Szegedy et al., 2015) on pyimgcls layers, as torchvision's Inception3.

torchvision's ``BasicConv2d`` (conv without bias -> BatchNorm(eps=1e-3) -> ReLU) is our Conv2d followed by
``BatchNorm2d(eps=1e-3, activation="relu")`` under the same names ``conv`` / ``bn``; the blocks' pooling
branches call ``pyimgcls.ops.avg_pool2d`` / ``max_pool2d`` where torchvision calls ``F.avg_pool2d`` /
``F.max_pool2d``, and branches are concatenated along the channels with ``torch.cat``. Every parameter
and buffer is named and ordered as in torchvision (``AuxLogits`` between ``Mixed_6e`` and ``Mixed_7a``).

Defaults that differ from torchvision's ``Inception3`` class: ``aux_logits=False`` (the issue's
23,834,568-parameter model), and ``init_weights=None`` initialises as ``True`` without torchvision's
FutureWarning. With ``aux_logits=True`` a training-mode forward returns ``InceptionOutputs(logits,
aux_logits)``; the auxiliary head needs the 17x17 Mixed_6e map of a 299x299 input (its 5x5/3 average pool
then 5x5 convolution), so aux training takes inputs of at least 299x299. Smallest input otherwise: 75x75
(torchvision's ``min_size``: Mixed_7a's stride-2 3x3 convolutions then see a 3x3 map)."""
from __future__ import annotations

from collections import namedtuple
from typing import Optional

import torch

from .. import nn, ops
from ._utils import is_batchnorm
from .googlenet import BasicConv2d, transform_input

__all__ = ["Inception3", "InceptionOutputs", "inception_v3"]

InceptionOutputs = namedtuple("InceptionOutputs", ["logits", "aux_logits"])


def _no_custom_block(conv_block, name: str) -> None:
    if conv_block is not None:
        raise ValueError(f"{name}: argument 'conv_block' is not supported (BasicConv2d is always used)")


class InceptionA(torch.nn.Module):
    """35x35 block: 1x1 (64) | 1x1 -> 5x5 (64) | 1x1 -> 3x3 -> 3x3 (96) | 3x3/1 avg pool -> 1x1
    (pool_features); output 224 + pool_features channels."""

    def __init__(self, in_channels: int, pool_features: int, conv_block=None) -> None:
        super().__init__()
        _no_custom_block(conv_block, "InceptionA")
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(ops.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(torch.nn.Module):
    """Grid reduction 35 -> 17: 3x3/2 (384) | 1x1 -> 3x3 -> 3x3/2 (96) | 3x3/2 max pool (in_channels)."""

    def __init__(self, in_channels: int, conv_block=None) -> None:
        super().__init__()
        _no_custom_block(conv_block, "InceptionB")
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = ops.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(torch.nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 then 7x1) of width channels_7x7; 4 x 192 out."""

    def __init__(self, in_channels: int, channels_7x7: int, conv_block=None) -> None:
        super().__init__()
        _no_custom_block(conv_block, "InceptionC")
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(bd))))
        bp = self.branch_pool(ops.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(torch.nn.Module):
    """Grid reduction 17 -> 8: 1x1 -> 3x3/2 (320) | 1x1 -> 1x7 -> 7x1 -> 3x3/2 (192) | 3x3/2 max pool."""

    def __init__(self, in_channels: int, conv_block=None) -> None:
        super().__init__()
        _no_custom_block(conv_block, "InceptionD")
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = ops.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(torch.nn.Module):
    """8x8 block with expanded filter banks (1x3 and 3x1 side by side); 320 + 768 + 768 + 192 = 2048 out."""

    def __init__(self, in_channels: int, conv_block=None) -> None:
        super().__init__()
        _no_custom_block(conv_block, "InceptionE")
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(ops.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionAux(torch.nn.Module):
    """Auxiliary classifier on the [N, 768, 17, 17] Mixed_6e map: 5x5/3 avg pool (-> 5x5) -> 1x1 (128)
    -> 5x5 (768, -> 1x1) -> global average -> fc."""

    def __init__(self, in_channels: int, num_classes: int, conv_block=None) -> None:
        super().__init__()
        _no_custom_block(conv_block, "InceptionAux")
        self.conv0 = BasicConv2d(in_channels, 128, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        self.fc = nn.Linear(768, num_classes)
        self.fc.stddev = 0.001  # read by Inception3's initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(ops.avg_pool2d(x, kernel_size=5, stride=3)))
        x = ops.adaptive_avg_pool2d(x, (1, 1))
        return self.fc(torch.flatten(x, 1))


class Inception3(torch.nn.Module):
    """Arguments as torchvision's Inception3 (num_classes, aux_logits, transform_input, init_weights,
    dropout); ``inception_blocks`` must be None (pyimgcls blocks are always used)."""

    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, transform_input: bool = False,
                 inception_blocks=None, init_weights: Optional[bool] = None, dropout: float = 0.5) -> None:
        super().__init__()
        if inception_blocks is not None:
            raise ValueError("Inception3: argument 'inception_blocks' is not supported; leave it None")
        if init_weights is None:
            init_weights = True
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits: Optional[torch.nn.Module] = InceptionAux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = torch.nn.Dropout(p=dropout)
        self.fc = nn.Linear(2048, num_classes)
        if init_weights:
            # torchvision's initialisation: truncated normal with std 0.1, or a module's ``stddev``
            # attribute; only AuxLogits.fc has one on a Conv2d/Linear (torchvision also sets
            # ``AuxLogits.conv1.stddev = 0.01`` on the BasicConv2d, which its loop never reads).
            for m in self.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                    stddev = float(getattr(m, "stddev", 0.1))
                    torch.nn.init.trunc_normal_(m.weight, mean=0.0, std=stddev, a=-2, b=2)
                elif is_batchnorm(m):
                    torch.nn.init.constant_(m.weight, 1)
                    torch.nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor):
        if self.transform_input:
            x = transform_input(x)
        # shapes at 299x299 input
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))   # N x 64 x 147 x 147
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(self.maxpool1(x)))        # N x 192 x 71 x 71
        x = self.maxpool2(x)                                                # N x 192 x 35 x 35
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))                  # N x 288 x 35 x 35
        x = self.Mixed_6a(x)                                                # N x 768 x 17 x 17
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))   # N x 768 x 17 x 17
        aux = self.AuxLogits(x) if self.AuxLogits is not None and self.training else None
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))                  # N x 2048 x 8 x 8
        x = self.dropout(self.avgpool(x))
        x = self.fc(torch.flatten(x, 1))
        if self.training and self.aux_logits:
            return InceptionOutputs(x, aux)
        return x


def inception_v3(**kwargs) -> Inception3:
    """torchvision.models.inception_v3 (without weights); kwargs: num_classes=1000, aux_logits=False,
    transform_input=False, init_weights=None (= True), dropout=0.5."""
    return Inception3(**kwargs)
