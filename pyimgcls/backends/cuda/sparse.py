"""2:4 sparse family on our CUDA kernels (csrc/cuda/sparse.cu: mma.sp on the sparse tensor cores).
Entry points: pyimgcls/backends/cpu/sparse.py. float16 / bfloat16 only: the sparse tensor cores
have no IEEE float32 mode (their float32 path is TF32), so float32 is refused, not computed in TF32."""
from __future__ import annotations

import torch

from ... import _native
from ...errors import BackendError
from ...ops import _alloc
from . import launch_args

_DTYPES = (torch.float16, torch.bfloat16)


def _check(x):
    if x.dtype not in _DTYPES:
        raise BackendError(f"sparse_linear: backend 'cuda' takes float16 or bfloat16 (argument 'input' is "
                           f"{str(x.dtype).replace('torch.', '')}); the sparse tensor cores have no IEEE float32 mode")


def sparse_linear(x, values, metadata, bias):
    _check(x)
    M, K = x.shape
    N = values.shape[0]
    out = _alloc.empty((M, N), x.dtype, x.device)
    if M and N:
        _native.C.sparse_linear_cuda(_native.dtype_code(x.dtype), x.data_ptr(), K, values.data_ptr(),
                                     values.shape[1], metadata.data_ptr(), metadata.shape[1],
                                     bias.data_ptr() if bias is not None else 0, out.data_ptr(), N, M, N, K,
                                     *launch_args(x))
    return out


def plan_sparse_linear(x, values, metadata, bias):
    """What ``sparse_linear`` launches (``_C.sparse_linear_plan_cuda``)."""
    _check(x)
    return _native.C.sparse_linear_plan_cuda(_native.dtype_code(x.dtype), x.shape[0], values.shape[0], x.shape[1])
