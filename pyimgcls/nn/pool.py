"""Pooling modules on pyimgcls kernels. Each subclasses its torch.nn counterpart, so the
constructor arguments, defaults, attributes and repr are torch.nn's exactly; only forward differs."""
from __future__ import annotations

import torch

from .. import ops


class MaxPool2d(torch.nn.MaxPool2d):
    """``torch.nn.MaxPool2d(kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
    ceil_mode=False)`` computed by ``pyimgcls.ops.max_pool2d``."""

    def forward(self, input: torch.Tensor):
        return ops.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                              ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    """``torch.nn.AvgPool2d(kernel_size, stride=None, padding=0, ceil_mode=False,
    count_include_pad=True, divisor_override=None)`` computed by ``pyimgcls.ops.avg_pool2d``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                              self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    """``torch.nn.AdaptiveAvgPool2d(output_size)`` computed by ``pyimgcls.ops.adaptive_avg_pool2d``
    (a 1x1 output is a global-mean reduction)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.adaptive_avg_pool2d(input, self.output_size)
