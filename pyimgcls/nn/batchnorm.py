"""nn.BatchNorm2d on our batch-norm kernels, with a fused activation and an optional fused residual.

Subclasses torch.nn.BatchNorm2d, so parameters and buffers are named, initialised and stored exactly
as there (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``) and
state_dicts load both ways."""
from __future__ import annotations

import inspect

import torch

from .. import ops
from ..errors import ArgumentValueError
from ..ops._checks import check_activation

# torch.nn.BatchNorm2d took ``bias`` only from torch 2.12; on older versions (2.11 is the GPU machines'
# torch) the keyword is kept out of its __init__ and bias=False is applied here, with the same result
_TORCH_BN_TAKES_BIAS = "bias" in inspect.signature(torch.nn.BatchNorm2d.__init__).parameters


class BatchNorm2d(torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` computed by ``pyimgcls.ops.batch_norm``.

    ``activation`` (None | "relu" | "relu6") is applied in the same pass, and
    ``forward(input, residual=None)`` adds ``residual`` before it, so a ResNet block's
    ``relu(bn(conv(x)) + shortcut)`` is one kernel. ``momentum=None`` is the cumulative average
    (factor 1 / num_batches_tracked), as in PyTorch. Input must be 4-D [N, C, H, W] (NCHW or
    channels_last; the output keeps the input's memory format)."""

    # torch.nn.BatchNorm2d's arguments in its order and kinds (``bias`` keyword-only, as there: bias=False
    # keeps the weight and registers ``bias`` as None), then ours, keyword-only
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True,
                 activation: str | None = None):
        kw = {"bias": bias} if _TORCH_BN_TAKES_BIAS else {}
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, device=device, dtype=dtype, **kw)
        if not _TORCH_BN_TAKES_BIAS and not bias:
            self.register_parameter("bias", None)
        self.activation = check_activation(activation, "BatchNorm2d")

    def _check_input_dim(self, input) -> None:
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"BatchNorm2d: argument 'input' must be a Tensor, got {type(input).__name__}")
        if input.dim() != 4:
            raise ArgumentValueError(f"BatchNorm2d: expected 4D input (got {input.dim()}D input) for argument "
                                     f"'input' of shape {tuple(input.shape)}")
        if input.shape[1] != self.num_features:
            raise ArgumentValueError(f"BatchNorm2d: argument 'input' has {input.shape[1]} channels (shape "
                                     f"{tuple(input.shape)}) but the module has num_features={self.num_features}")

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            # momentum=None: cumulative moving average over the batches seen so far
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        # Batch statistics in training, and in eval when there are no running buffers (as PyTorch).
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return ops.batch_norm(input, self.running_mean if track else None, self.running_var if track else None,
                              self.weight, self.bias, bn_training, factor, self.eps, activation=self.activation,
                              residual=residual)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", activation={self.activation!r}" if self.activation else "")
