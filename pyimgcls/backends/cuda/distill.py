"""Distillation-loss family on our CUDA C++ kernels (csrc/cuda/distill.cu). Entry points and their
contracts: pyimgcls/backends/cpu/distill.py. The launcher takes raw pointers, sizes, the device index
and stream; out-of-range targets make NaN rows without a host synchronisation. The backward is the
softmax_xent family's (one scaling launch)."""
from __future__ import annotations

import torch

from ... import _native
from ...ops.softmax_xent import _MEAN, _NONE, _kernel_outputs
from . import launch_args
from .softmax_xent import backward  # noqa: F401  (the family's backward)

_COUNTERS: dict = {}


def _counter(device: torch.device) -> torch.Tensor:
    """The forward's last-block ticket word: one zeroed 8-byte word per (device, stream), left at zero by
    every complete launch and tagged per launch (csrc/cuda/distill.cu, kd_take_ticket)."""
    key = (device.index, torch.cuda.current_stream(device).cuda_stream)
    t = _COUNTERS.get(key)
    if t is None:
        t = _COUNTERS[key] = torch.zeros(1, dtype=torch.int64, device=device)
    return t


def forward(s, t, target, ignore_index, reduction, eps, temperature, alpha, need_grad):
    N, C = s.shape
    loss, grad, denom = _kernel_outputs(s, target, ignore_index, reduction, need_grad)
    reduces = reduction != _NONE
    dev = s.device
    scratch = torch.empty(2 * N if reduces else 0, dtype=torch.float32, device=dev)
    _native.C.distill_fwd_cuda(
        _native.dtype_code(s.dtype), s.data_ptr(), s.stride(0), t.data_ptr(), t.stride(0), target.data_ptr(),
        target.dtype == torch.int32, N, C, ignore_index, eps, temperature, alpha, reduction, loss.data_ptr(),
        grad.data_ptr() if need_grad and grad.numel() else 0, scratch.data_ptr() if reduces and N else 0,
        denom.data_ptr() if reduction == _MEAN else 0, _counter(dev).data_ptr() if reduces else 0, *launch_args(s))
    return loss, grad, denom


def plan_forward(s, t, target, ignore_index, reduction, eps, temperature, alpha, need_grad):
    """What ``forward`` launches for the same arguments (pyimgcls.explain)."""
    return _native.C.distill_fwd_plan_cuda(*s.shape)


# pyimgcls.explain: the launchers (pyimgcls._C) each entry point calls.
LAUNCHERS = {
    "forward": "distill_fwd_cuda",
    "backward": "softmax_xent_bwd_cuda",
}
