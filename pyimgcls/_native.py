"""Access to the torch-free native module ``pyimgcls._C`` and the shared integer codes.

The module takes raw pointers and integer codes only; this file is the single place that maps
torch dtypes / activation names to those codes (they must match csrc/common.h).
"""
from __future__ import annotations

import functools

import torch

from . import _C as C  # noqa: N812  (the native module is conventionally called _C)

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
ACT_CODES = {None: 0, "relu": 1, "relu6": 2, "silu": 3, "hardswish": 4, "sigmoid": 5, "hardsigmoid": 6}
ACT_NAMES = {v: k for k, v in ACT_CODES.items()}


def dtype_code(dtype: torch.dtype) -> int:
    return DTYPE_CODES[dtype]


@functools.lru_cache(maxsize=None)
def cuda_kernels_compiled() -> bool:
    return bool(getattr(C, "cuda_compiled", False))


def cuda_device_count() -> int:
    """GPUs our CUDA kernels can see (0 when not compiled or when no driver is present)."""
    if not cuda_kernels_compiled():
        return 0
    return int(C.cuda_device_count())


def cuda_stream(tensor: torch.Tensor) -> int:
    """The raw cudaStream_t of the current stream on ``tensor``'s device, as an int."""
    return torch.cuda.current_stream(tensor.device).cuda_stream
