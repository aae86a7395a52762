"""Quantised (int8) family on our CUDA kernels (csrc/cuda/quant.cu: the requantising GEMM on the IMMA
tensor cores, mma.sync m16n8k32 u8 x s8, sm_80+). Entry points and their contracts:
pyimgcls/backends/cpu/quant.py; results are the cpu backend's bit for bit.

Convolutions: groups = 1 ones through ``conv_gemm`` (one implicit-GEMM launch on NHWC-dense inputs with
C % 16 == 0, else im2col + gemm); grouped ones and 1x1 stride-1 convs on channels_last inputs through
pyimgcls/ops/quant.py's im2col / in-place views + ``gemm``.
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
    return _native.C.quant_gemm_plan_cuda(a.shape[0], packed[2], K, 1 if vec_a else 0)


def _implicit_ok(x):
    N, C, H, W = x.shape
    sN, sC, sH, sW = x.stride()
    return _native.C.quant_conv_gemm_ok_cuda(x.data_ptr(), C, sC if C > 1 else 1, sN, sH, sW)


def conv_gemm(x, a_zero, packed, kh, kw, stride, padding, dilation, oh, ow, bias, mult, res, res_zero, res_mult,
              out_zero, qmin, qmax, act, out):
    """groups = 1 conv: one implicit-GEMM launch (quant_gemm_fwd_kernel<kAConv>) for an NHWC-dense input with
    C % 16 == 0 and 16-byte aligned pixels (ResNet's convs past the stem on channels_last tensors); any
    other input goes through im2col into a scratch column matrix + gemm. Same bytes either way."""
    _check_cuda(x, "input", "quantized_conv2d")
    w, colsum, O = packed
    if w.device != x.device:
        raise BackendError(f"quantized_conv2d: the packed weight is on {w.device}, the input on {x.device}")
    N, C, H, W = x.shape
    if not _implicit_ok(x):
        from ...ops.quant import _col_buffer
        col = _col_buffer(N * oh * ow, kh * kw * C, x.device)
        im2col(x, 0, C, kh, kw, stride, padding, dilation, oh, ow, a_zero, col)
        gemm(col, a_zero, packed, kh * kw * C, bias, mult, res, res_zero, res_mult, out_zero, qmin, qmax, act, out)
        return
    fn = _launcher("quant_conv_gemm_cuda")
    mult = mult.contiguous()
    bias = None if bias is None else bias.contiguous()
    sN, _, sH, sW = x.stride()
    fn(x.data_ptr(), N, H, W, sN, 1, sH, sW, C, kh, kw, *stride, *padding, *dilation, oh, ow, a_zero, w.data_ptr(),
       colsum.data_ptr(), O, bias.data_ptr() if bias is not None else 0, mult.data_ptr(),
       res.data_ptr() if res is not None else 0, res.stride(0) if res is not None else 0, res_zero, res_mult,
       out_zero, qmin, qmax, out.dtype == torch.float32, act, out.data_ptr(), out.stride(0), *launch_args(x))


def plan_conv_gemm(x, a_zero, packed, kh, kw, stride, padding, dilation, oh, ow, *rest):
    """What ``conv_gemm`` launches: the implicit GEMM, or im2col + the GEMM on the (aligned, contiguous)
    column matrix: two launches."""
    N, C = x.shape[:2]
    K = kh * kw * C
    # meta tensors (pyimgcls.explain) have data_ptr() 0: the strides and the storage offset decide
    if _implicit_ok(x) and x.storage_offset() % 16 == 0:
        return _native.C.quant_gemm_plan_cuda(N * oh * ow, packed[2], K, 2)
    plan = _native.C.quant_gemm_plan_cuda(N * oh * ow, packed[2], K, 1 if K % 16 == 0 else 0)
    plan["launches"] = 2
    return plan


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
