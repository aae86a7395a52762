"""nn.CrossEntropyLoss on the fused softmax-cross-entropy kernels.

Same constructor arguments and defaults as DESIGN.md gives them (weight=None, ignore_index=-100,
reduction="mean", label_smoothing=0.0) and a subclass of torch.nn.CrossEntropyLoss, so the class
weights are the buffer ``weight`` exactly as in torch.nn and state_dicts are interchangeable.
Only class-index targets are supported."""
from __future__ import annotations

import torch

from .. import ops


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` computed by ``pyimgcls.ops.softmax_cross_entropy``: logits
    [N, C], class-index targets [N]; loss and gradient come from one fused pass."""

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0):
        super().__init__(weight=weight, ignore_index=ignore_index, reduction=reduction,
                         label_smoothing=label_smoothing)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ops.softmax_cross_entropy(input, target, self.weight, ignore_index=self.ignore_index,
                                         reduction=self.reduction, label_smoothing=self.label_smoothing)
