"""Study-ladder family on CUDA (csrc/cuda/ladder/, csrc/cuda/ladder.cu). Entry points and their
contracts: pyimgcls/backends/cpu/ladder.py."""
from __future__ import annotations

import torch

from ... import _native
from ...errors import BackendError


def step_records(kind):
    if not _native.cuda_kernels_compiled():
        raise BackendError("backend 'cuda': pyimgcls was built without the CUDA kernels (nvcc not found "
                           "at build time), so the CUDA ladder is unavailable")
    return _native.C.ladder_steps_cuda(kind)


def _device_index(t):
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


def gemm(step, a, b, out):
    M, K = a.shape
    a, b = a.contiguous(), b.contiguous()
    _native.C.ladder_gemm_cuda(step, _native.dtype_code(a.dtype), a.data_ptr(), b.data_ptr(), out.data_ptr(), M,
                               b.shape[1], K, _device_index(a), _native.cuda_stream(a))
    return out


def conv2d(step, x, w, bias, out, geom, stride, padding, act):
    code = _native.dtype_code(x.dtype)
    nbytes = _native.C.ladder_conv_scratch_bytes_cuda(step, code, *geom)
    scratch = torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device=x.device)  # caching allocator
    _native.C.ladder_conv2d_cuda(step, code, x.data_ptr(), w.data_ptr(), bias.data_ptr() if bias is not None else 0,
                                 out.data_ptr(), scratch.data_ptr(), *geom, *stride, *padding, act,
                                 _device_index(x), _native.cuda_stream(x))
