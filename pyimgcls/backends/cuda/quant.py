"""Quantised (int8) family on our CUDA kernels (csrc/cuda/quant.cu: the requantising GEMM on the IMMA
tensor cores, mma.sync m16n8k32 u8 x s8, sm_80+). Entry points and their contracts:
pyimgcls/backends/cpu/quant.py; results are the cpu backend's bit for bit.

Convolutions go through im2col + gemm (pyimgcls/ops/quant.py does that for a backend without
``conv_gemm``; 1x1 stride-1 convs on channels_last inputs read the input in place).
The packed weight is int8 [O, packed_k(K)] (K rounded up to the kernel's K tile, zero-filled: whole
16-byte chunks for cp.async) with its int32 column sums, built once on the weight's device."""
from __future__ import annotations

import torch

from ... import _native
from ...errors import BackendError
from . import launch_args


def _launcher(name):
    fn = getattr(_native.C, name, None)
    if fn is None:
        raise BackendError(f"{name.removesuffix('_cuda')}: backend 'cuda' is unavailable: pyimgcls was built "
                           "without nvcc")
    return fn


def _check_cuda(t, name, op):
    if t.device.type != "cuda":
        raise BackendError(f"{op}: backend 'cuda' runs on CUDA tensors only, got argument '{name}' on {t.device}")


def pack_weight(w):
    """(int8 [O, packed_k(K)] zero past K, int32 colsum [O], O) on w's device."""
    O, K = w.shape
    packed = torch.zeros((O, _native.C.quant_packed_k_cuda(K)), dtype=torch.int8, device=w.device)
    packed[:, :K] = w
    colsum = w.to(torch.int32).sum(1, dtype=torch.int32)
    return packed, colsum, O


def gemm(a, a_zero, packed, K, bias, mult, res, res_zero, res_mult, out_zero, qmin, qmax, act, out):
    fn = _launcher("quant_gemm_cuda")
    _check_cuda(a, "input", "quant_gemm")
    w, colsum, O = packed
    if w.device != a.device:
        raise BackendError(f"quant_gemm: the packed weight is on {w.device}, the input on {a.device}")
    M = a.shape[0]
    mult = mult.contiguous()
    bias = None if bias is None else bias.contiguous()
    fn(a.data_ptr(), M, K, a.stride(0), a_zero, w.data_ptr(), colsum.data_ptr(), O,
       bias.data_ptr() if bias is not None else 0, mult.data_ptr(),
       res.data_ptr() if res is not None else 0, res.stride(0) if res is not None else 0, res_zero, res_mult,
       out_zero, qmin, qmax, out.dtype == torch.float32, act, out.data_ptr(), out.stride(0), *launch_args(a))


def plan_gemm(a, a_zero, packed, K, bias, mult, res, res_zero, res_mult, out_zero, qmin, qmax, act, out):
    """What ``gemm`` launches (``_C.quant_gemm_plan_cuda``, the launcher's own decision)."""
    vec_a = a.data_ptr() % 16 == 0 and a.stride(0) % 16 == 0
    return _native.C.quant_gemm_plan_cuda(a.shape[0], packed[2], K, vec_a)


def im2col(x, c0, cg, kh, kw, stride, padding, dilation, oh, ow, pad, col):
    fn = _launcher("quant_im2col_cuda")
    _check_cuda(x, "input", "quant_im2col")
    N, C, H, W = x.shape
    fn(x.data_ptr(), N, H, W, *x.stride(), c0, cg, kh, kw, *stride, *padding, *dilation, oh, ow, pad, col.data_ptr(),
       *launch_args(x))


def max_pool2d(x, kernel, stride, padding, dilation, oh, ow, out):
    fn = _launcher("quant_max_pool2d_cuda")
    _check_cuda(x, "input", "quantized_max_pool2d")
    N, C, H, W = x.shape
    fn(x.data_ptr(), N, C, H, W, *x.stride(), *kernel, *stride, *padding, *dilation, oh, ow, out.data_ptr(),
       *launch_args(x))


def adaptive_avg_pool2d(x, oh, ow, in_zero, ratio, out_zero, out):
    fn = _launcher("quant_adaptive_avg_pool2d_cuda")
    _check_cuda(x, "input", "quantized_adaptive_avg_pool2d")
    N, C, H, W = x.shape
    fn(x.data_ptr(), N, C, H, W, *x.stride(), oh, ow, in_zero, ratio, out_zero, out.data_ptr(), *launch_args(x))


def quantize(x, inv_scale, zero_point, out):
    fn = _launcher("quant_quantize_cuda")
    _check_cuda(x, "x", "quantize_per_tensor")
    fn(x.data_ptr(), x.numel(), inv_scale, zero_point, out.data_ptr(), *launch_args(x))


# pyimgcls.explain: the launchers (pyimgcls._C) each entry point calls (gemm has plan_gemm).
LAUNCHERS = {
    "im2col": "quant_im2col_cuda",
    "max_pool2d": "quant_max_pool2d_cuda",
    "adaptive_avg_pool2d": "quant_adaptive_avg_pool2d_cuda",
    "quantize": "quant_quantize_cuda",
}
