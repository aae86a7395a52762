"""nn.Conv2d on our convolution kernels, with a fused activation and an optional fused residual.

Subclasses torch.nn.Conv2d, so parameters are named and initialised exactly as there (``weight``
[out, in/groups, kH, kW], ``bias`` [out]) and state_dicts are interchangeable."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..ops._checks import check_activation


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` computed by ``pyimgcls.ops.conv2d``.

    ``activation`` (None | "relu" | "relu6") is fused into the convolution's epilogue, and
    ``forward(input, residual=None)`` adds ``residual`` before the activation, so a ResNet block's
    ``relu(bn(conv(x)) + shortcut)`` can run as one kernel after BatchNorm folding. ``padding_mode``
    "zeros" pads on the fly inside the kernels; "reflect" / "replicate" / "circular" pad the input
    first with ``torch.nn.functional.pad``, exactly as torch.nn.Conv2d does, then convolve unpadded."""

    # torch.nn.Conv2d's arguments in its order (positional calls bind as there), then ours, keyword-only
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 activation: str | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=bias, padding_mode=padding_mode, device=device, dtype=dtype)
        self.activation = check_activation(activation, "Conv2d")

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return ops.conv2d(input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups,
                          activation=self.activation, residual=residual)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", activation={self.activation!r}" if self.activation else "")
