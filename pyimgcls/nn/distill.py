"""nn.DistillationLoss on the fused distillation-loss kernels (ops.distillation_loss)."""
from __future__ import annotations

import torch

from .. import ops


class DistillationLoss(torch.nn.Module):
    """``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * cross_entropy(student,
    target)`` per sample (see ``pyimgcls.ops.distillation_loss``); forward(student_logits, teacher_logits,
    target). The teacher receives no gradient. Arguments are checked at the first call, as the op does."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.5, reduction: str = "mean",
                 label_smoothing: float = 0.0, ignore_index: int = -100):
        super().__init__()
        self.temperature = temperature
        self.alpha = alpha
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ops.distillation_loss(student_logits, teacher_logits, target, temperature=self.temperature,
                                     alpha=self.alpha, reduction=self.reduction,
                                     label_smoothing=self.label_smoothing, ignore_index=self.ignore_index)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, alpha={self.alpha}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index}")
