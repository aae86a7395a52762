"""nn.Linear on our GEMM kernels, with an optional fused activation.

Parameters are named exactly as in torch.nn.Linear (``weight`` [out, in], ``bias`` [out]) and
initialised the same way, so state_dicts are interchangeable."""
from __future__ import annotations

import torch

from .. import ops
from ..ops._checks import check_activation


class Linear(torch.nn.Linear):
    """``torch.nn.Linear`` computed by ``pyimgcls.ops.linear``; ``activation`` (None | "relu" |
    "relu6") is fused into the GEMM epilogue."""

    # torch.nn.Linear's arguments in its order (positional calls bind as there), then ours, keyword-only
    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 activation: str | None = None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.activation = check_activation(activation, "Linear")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.linear(input, self.weight, self.bias, activation=self.activation)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", activation={self.activation!r}" if self.activation else "")
