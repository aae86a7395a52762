"""2:4 sparse family on our Triton kernels (triton_kernels/sparse.py). Entry points and their
contracts: pyimgcls/backends/cpu/sparse.py."""
from __future__ import annotations

from ...ops import _alloc
from . import on_tensor_device


@on_tensor_device
def sparse_linear(x, values, metadata, bias):
    from ...triton_kernels import sparse as tk
    out = _alloc.empty((x.shape[0], values.shape[0]), x.dtype, x.device)
    return tk.sparse_linear(x, values, metadata, bias, out)
