"""triton backend: one module per op family, with the same entry points as every other backend folder
(pyimgcls/backends/__init__.py).

Every entry point that launches a kernel is wrapped by ``on_tensor_device``: Triton launches on the
*current* CUDA device (the stream and the compiled module are looked up for it), so a call with
tensors on cuda:1 while cuda:0 is current would launch on the wrong device. The guard makes the
device of the first CUDA tensor argument current for the call and restores the previous one after,
as ATen's DeviceGuard does for its own ops. Without a CUDA tensor (CPU tensors under
TRITON_INTERPRET=1) it does nothing."""
from __future__ import annotations

import functools

import torch


def _cuda_device(args, kwargs):
    """The device of the first CUDA tensor among the arguments, or None."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor) and a.device.type == "cuda":
            return a.device
    return None


def on_tensor_device(fn):
    """Run ``fn`` with its first CUDA tensor argument's device current (restored on return)."""
    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        device = _cuda_device(args, kwargs)
        if device is None:
            return fn(*args, **kwargs)
        with torch.cuda.device(device):
            return fn(*args, **kwargs)
    guarded.device_guarded = True
    return guarded
