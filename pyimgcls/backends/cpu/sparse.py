"""2:4 sparse family on our C++ CPU kernels (csrc/cpu/sparse.cpp).

Entry points (same signature in every backend folder that has the family):
    sparse_linear(x, values, metadata, bias) -> out
        x [M, K] contiguous, values [N, K/2] contiguous (x's dtype), metadata [N, ceil(K/16)] int16
        contiguous (format: pyimgcls/ops/sparse.py), bias [N] or None; out [M, N] contiguous =
        x @ W^T + bias.
float16 / bfloat16 are computed in float32 and returned in their dtype (docs/architecture.md, "Dtypes")."""
from __future__ import annotations

from ... import _native
from ...ops import _alloc
from . import in_float32


@in_float32
def sparse_linear(x, values, metadata, bias):
    M, K = x.shape
    N = values.shape[0]
    out = _alloc.empty((M, N), x.dtype, x.device)
    if M and N:
        _native.C.sparse_linear_cpu(_native.dtype_code(x.dtype), x.data_ptr(), K, values.data_ptr(), values.shape[1],
                                    metadata.data_ptr(), metadata.shape[1], bias.data_ptr() if bias is not None else 0,
                                    out.data_ptr(), N, M, N, K)
    return out
