"""Study-ladder family on the CPU (csrc/cpu/ladder/, csrc/cpu/ladder.cpp; docs/ladder.md).

Entry points (same signature in every backend folder that has a ladder):
    step_records(kind) -> list[dict]     the steps of ladder ``kind`` ("gemm" | "conv"): dicts with
                                         step, name, description, dtypes, channels_last[, weight_oihw,
                                         needs_sm90a]
    gemm(step, a, b, out) -> out         a [M, K] @ b [K, N] into the contiguous [M, N] ``out``
    conv2d(step, x, w, bias, out, geom, stride, padding, act) -> None
                                         ``x``/``w``/``out`` contiguous in the step's layouts,
                                         geom = (N, C, H, W, O, KH, KW, OH, OW); scratch is allocated
                                         here from the step's own byte count"""
from __future__ import annotations

import torch

from ... import _native


def step_records(kind):
    return _native.C.ladder_steps_cpu(kind)


def gemm(step, a, b, out):
    M, K = a.shape
    a, b = a.contiguous(), b.contiguous()
    _native.C.ladder_gemm_cpu(step, _native.dtype_code(a.dtype), a.data_ptr(), b.data_ptr(), out.data_ptr(), M,
                              b.shape[1], K)
    return out


def conv2d(step, x, w, bias, out, geom, stride, padding, act):
    code = _native.dtype_code(x.dtype)
    nbytes = _native.C.ladder_conv_scratch_bytes_cpu(step, code, *geom)
    scratch = torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device=x.device)
    _native.C.ladder_conv2d_cpu(step, code, x.data_ptr(), w.data_ptr(), bias.data_ptr() if bias is not None else 0,
                                out.data_ptr(), scratch.data_ptr(), *geom, *stride, *padding, act)
