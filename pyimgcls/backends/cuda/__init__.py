"""cuda backend: our CUDA C++ kernels (csrc/cuda/), one module per op family with the same entry
points as every other backend folder (pyimgcls/backends/__init__.py). Launchers are torch-free: they
take raw pointers, sizes, strides, the device index and the stream as integers; scratch space is a
torch tensor allocated here (PyTorch's caching allocator)."""
from __future__ import annotations

import functools

import torch

from ... import _native


@functools.lru_cache(maxsize=None)
def sm_count(index: int) -> int:
    """Streaming multiprocessors of CUDA device ``index`` (grid sizing of split reductions)."""
    return torch.cuda.get_device_properties(index).multi_processor_count


def launch_args(t: torch.Tensor) -> tuple[int, int]:
    """(device index, stream) for a launcher working on ``t``'s device."""
    return t.device.index, _native.cuda_stream(t)
