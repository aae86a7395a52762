"""Softmax-cross-entropy family on our CUDA C++ kernels (csrc/cuda/softmax_xent.cu). Entry points and
their contracts: pyimgcls/backends/cpu/softmax_xent.py. Launchers take raw pointers, sizes, the device
index and stream; out-of-range targets make NaN rows without a host synchronisation. Class-probability
targets: prob_forward (softmax_xent_prob_fwd_cuda); their backward is backward with target None."""
from __future__ import annotations

import torch

from ... import _native
from ...ops import _alloc
from ...ops.softmax_xent import _MEAN, _NONE, _backward_output, _kernel_outputs
from . import launch_args

_COUNTERS: dict = {}


def _counter(device: torch.device) -> torch.Tensor:
    """The forward's last-block ticket word: one zeroed 8-byte word per (device, stream), left at zero
    by every complete launch and tagged per launch (csrc/cuda/softmax_xent.cu, take_ticket), so it is
    allocated and cleared once (no memset launch per call) and an incomplete launch cannot poison it."""
    key = (device.index, torch.cuda.current_stream(device).cuda_stream)
    t = _COUNTERS.get(key)
    if t is None:
        t = _COUNTERS[key] = torch.zeros(1, dtype=torch.int64, device=device)
    return t


def forward(x, target, weight, ignore_index, reduction, eps, need_grad):
    N, C = x.shape
    loss, grad, denom = _kernel_outputs(x, target, ignore_index, reduction, need_grad)
    reduces = reduction != _NONE
    dev = x.device
    scratch = torch.empty(2 * N if reduces else 0, dtype=torch.float32, device=dev)
    _native.C.softmax_xent_fwd_cuda(
        _native.dtype_code(x.dtype), x.data_ptr(), x.stride(0), target.data_ptr(), target.dtype == torch.int32,
        weight.data_ptr() if weight is not None else 0, N, C, ignore_index, eps, reduction, loss.data_ptr(),
        grad.data_ptr() if need_grad and grad.numel() else 0, scratch.data_ptr() if reduces else 0,
        denom.data_ptr() if reduction == _MEAN else 0, _counter(dev).data_ptr() if reduces else 0, *launch_args(x))
    return loss, grad, denom


def prob_forward(x, target, weight, reduction, eps, need_grad):
    N, C = x.shape
    dev = x.device
    loss = _alloc.empty((N,) if reduction == _NONE else (), x.dtype, dev)
    grad = _alloc.empty((N, C), x.dtype, dev) if need_grad else x.new_empty((0,))
    denom = (_alloc.empty((), torch.float32, dev) if reduction == _MEAN
             else x.new_empty((0,), dtype=torch.float32))
    scratch = torch.empty(N if reduction != _NONE else 0, dtype=torch.float32, device=dev)
    _native.C.softmax_xent_prob_fwd_cuda(
        _native.dtype_code(x.dtype), x.data_ptr(), x.stride(0), target.data_ptr(), target.stride(0),
        weight.data_ptr() if weight is not None else 0, N, C, eps, reduction, loss.data_ptr(),
        grad.data_ptr() if need_grad and grad.numel() else 0, scratch.data_ptr() if scratch.numel() else 0,
        denom.data_ptr() if reduction == _MEAN else 0, *launch_args(x))
    return loss, grad, denom


def backward(grad_loss, saved, target, denom, ignore_index, reduction, in_place):
    N, C = saved.shape
    out, work = _backward_output(saved)
    if not work:
        return out
    per_row = reduction == _NONE
    _native.C.softmax_xent_bwd_cuda(
        _native.dtype_code(saved.dtype), saved.data_ptr(), target.data_ptr() if target is not None else 0,
        target is not None and target.dtype == torch.int32,
        grad_loss.data_ptr(), grad_loss.stride(0) if per_row else 0, per_row,
        denom.data_ptr() if reduction == _MEAN else 0, N, C, ignore_index, out.data_ptr(), *launch_args(saved))
    return out


# pyimgcls.explain: the launchers (pyimgcls._C) each entry point calls; the kernel variant is chosen
# inside the launcher.
LAUNCHERS = {
    "forward": "softmax_xent_fwd_cuda",
    "prob_forward": "softmax_xent_prob_fwd_cuda",
    "backward": "softmax_xent_bwd_cuda",
}
