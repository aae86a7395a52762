"""Quantised (int8) family on plain PyTorch integer math (pyimgcls/ops/reference.py): the yardstick.
Entry points and their contracts: pyimgcls/backends/cpu/quant.py."""
from __future__ import annotations

import torch

from ...ops import reference as ref


def pack_weight(w):
    return w.contiguous(), w.shape[0]


def gemm(a, a_zero, packed, K, bias, mult, res, res_zero, res_mult, out_zero, qmin, qmax, act, out):
    w, _ = packed
    out.copy_(ref.quant_gemm(a, a_zero, w, bias, mult, res, res_zero, res_mult, out_zero, qmin, qmax, act,
                             out.dtype == torch.float32))


def im2col(x, c0, cg, kh, kw, stride, padding, dilation, oh, ow, pad, col):
    col.copy_(ref.quant_im2col(x, c0, cg, kh, kw, stride, padding, dilation, oh, ow, pad))


def max_pool2d(x, kernel, stride, padding, dilation, oh, ow, out):
    out.copy_(ref.quant_max_pool2d(x, kernel, stride, padding, dilation, oh, ow))


def adaptive_avg_pool2d(x, oh, ow, in_zero, ratio, out_zero, out):
    out.copy_(ref.quant_adaptive_avg_pool2d(x, oh, ow, in_zero, ratio, out_zero))


def quantize(x, inv_scale, zero_point, out):
    out.copy_(ref.quant_quantize(x, inv_scale, zero_point))
