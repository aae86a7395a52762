"""Quantised (int8) family on our Triton kernels (triton_kernels/quant.py). Entry points and their
contracts: pyimgcls/backends/cpu/quant.py."""
from __future__ import annotations

import torch

from . import on_tensor_device


@on_tensor_device
def pack_weight(w):
    w = w.contiguous()
    return w, w.to(torch.int32).sum(1, dtype=torch.int32), w.shape[0]


@on_tensor_device
def gemm(a, a_zero, packed, K, bias, mult, res, res_zero, res_mult, out_zero, qmin, qmax, act, out):
    from ...triton_kernels import quant as tk
    w, colsum, _ = packed
    tk.quant_gemm(a, a_zero, w, colsum, bias, mult.contiguous(), res, res_zero, res_mult, out_zero, qmin, qmax,
                  act, out)


@on_tensor_device
def im2col(x, c0, cg, kh, kw, stride, padding, dilation, oh, ow, pad, col):
    from ...triton_kernels import quant as tk
    tk.quant_im2col(x, c0, cg, kh, kw, stride, padding, dilation, oh, ow, pad, col)


@on_tensor_device
def max_pool2d(x, kernel, stride, padding, dilation, oh, ow, out):
    from ...triton_kernels import quant as tk
    tk.quant_max_pool2d(x, kernel, stride, padding, dilation, oh, ow, out)


@on_tensor_device
def adaptive_avg_pool2d(x, oh, ow, in_zero, ratio, out_zero, out):
    from ...triton_kernels import quant as tk
    tk.quant_adaptive_avg_pool2d(x, oh, ow, in_zero, ratio, out_zero, out)


@on_tensor_device
def quantize(x, inv_scale, zero_point, out):
    from ...triton_kernels import quant as tk
    tk.quant_quantize(x, inv_scale, zero_point, out)
