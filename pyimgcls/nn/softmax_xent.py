"""nn.CrossEntropyLoss on the fused softmax-cross-entropy kernels.

A subclass of torch.nn.CrossEntropyLoss that keeps its constructor, so the arguments, their order and
defaults are torch.nn's exactly (weight=None, size_average=None, ignore_index=-100, reduce=None,
reduction="mean", label_smoothing=0.0; the deprecated size_average / reduce map onto reduction as
there), and the class weights are the buffer ``weight`` exactly as in torch.nn, so state_dicts are
interchangeable. Targets are class indices or class probabilities of the logits' shape (MixUp /
CutMix); unbatched 1-D logits raise a clear error, as ops.softmax_cross_entropy does."""
from __future__ import annotations

import torch

from .. import ops


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` computed by ``pyimgcls.ops.softmax_cross_entropy``: logits
    [N, C] (or [N, C, d1, ...]) with class-index or class-probability targets, loss and gradient from
    one fused pass."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ops.softmax_cross_entropy(input, target, self.weight, ignore_index=self.ignore_index,
                                         reduction=self.reduction, label_smoothing=self.label_smoothing)
