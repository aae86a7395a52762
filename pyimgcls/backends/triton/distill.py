"""Distillation-loss family on our Triton kernels (triton_kernels/distill.py). Entry points and their
contracts: pyimgcls/backends/cpu/distill.py."""
from __future__ import annotations

import torch

from ...ops.softmax_xent import _MEAN, _NONE, _acc_dtype, _kernel_outputs
from . import on_tensor_device
from .softmax_xent import backward  # noqa: F401  (the family's backward: one scaling launch)

_COUNTERS: dict = {}


def _counter(device: torch.device) -> torch.Tensor:
    """The forward's last-program ticket word: one zeroed int32 per (device, stream), reset to zero by
    the program that reduces, so it is allocated and cleared once (no memset launch per call)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device.type, device.index, stream)
    t = _COUNTERS.get(key)
    if t is None:
        t = _COUNTERS[key] = torch.zeros(1, dtype=torch.int32, device=device)
    return t


@on_tensor_device
def forward(s, t, target, ignore_index, reduction, eps, temperature, alpha, need_grad):
    from ...triton_kernels import distill as tk
    loss, grad, denom = _kernel_outputs(s, target, ignore_index, reduction, need_grad)
    reduces = reduction != _NONE
    rows = torch.empty(2 * s.shape[0], dtype=_acc_dtype(s.dtype), device=s.device) if reduces else None
    tk.distill_fwd(s, t, target, ignore_index, reduction, eps, temperature, alpha, loss,
                   grad if need_grad else None, denom if reduction == _MEAN else None, rows,
                   _counter(s.device) if reduces else None)
    return loss, grad, denom


# pyimgcls.explain: the triton_kernels host function each entry point calls.
LAUNCHERS = {
    "forward": "distill_fwd",
    "backward": "softmax_xent_bwd",
}
