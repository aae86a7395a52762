"""cpu backend: one module per op family, with the same entry points as every other backend folder
(pyimgcls/backends/__init__.py)."""
from __future__ import annotations

import functools

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def in_float32(fn):
    """Runs an entry point on float16/bfloat16 tensors in float32 (the C++ kernels are float32/float64;
    docs/architecture.md, "Dtypes"): when the first argument is float16/bfloat16, every float16/bfloat16
    tensor argument is upcast and every floating-point tensor result is cast back to that dtype; integer
    results (pooling indices) and None pass through. Float32/float64 calls pay one dtype test."""

    def cast(r, dtype):
        return r.to(dtype) if isinstance(r, torch.Tensor) and r.is_floating_point() else r

    @functools.wraps(fn)
    def run(first, *args):
        dtype = first.dtype
        if dtype not in _LOW_PRECISION:
            return fn(first, *args)
        args = [a.float() if isinstance(a, torch.Tensor) and a.dtype in _LOW_PRECISION else a for a in args]
        result = fn(first.float(), *args)
        return tuple(cast(r, dtype) for r in result) if isinstance(result, tuple) else cast(result, dtype)

    return run
