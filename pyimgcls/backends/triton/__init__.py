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


_TENSOR_CORE_DTYPES = (torch.float16, torch.bfloat16)


def kernel_plan(kernel, dtype: torch.dtype, dot: bool) -> dict:
    """What pyimgcls.explain reports for a launch of ``kernel`` (a Triton JIT function or autotuner,
    as the entry point chose it) on ``dtype`` operands. The tile and grid are the autotuner's choice
    on the GPU, so they are not known here (None); ``configs`` counts the rows it may choose from on
    sm_90 (triton_kernels/_config.py). ``dot``: the kernel's main loop is ``tl.dot``, which runs on
    tensor cores for float16/bfloat16 (float32 and float64 dots are IEEE, on CUDA cores)."""
    from ...triton_kernels import _config
    fn = getattr(kernel, "base_fn", None) or getattr(kernel, "fn", kernel)
    configs = getattr(kernel, "configs", None)
    if configs is not None and all(hasattr(c, "dtypes") for c in configs):
        configs = _config.DtypeArchPrune().select(configs, str(dtype).removeprefix("torch."), 90)
    return {"kernel": fn.__name__, "tensor_cores": dot and dtype in _TENSOR_CORE_DTYPES, "vectorized": None,
            "tile": None, "ctas": None, "splits": None, "launches": 1,
            "configs": len(configs) if configs is not None else 1}
