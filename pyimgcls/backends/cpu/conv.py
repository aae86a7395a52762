"""Convolution family on our C++ CPU kernels (csrc/cpu/conv.cpp).

Entry points (same signature in every backend folder). x [N, C, H, W] and w [O, C/groups, KH, KW]
with any strides; stride, dilation: [h, w]; padding: [top, left, bottom, right]; act: ACT_CODES.
    conv2d(x, w, bias, res, stride, padding, dilation, groups, act) -> out
        act(conv2d(x, w) + bias + res); bias [O] contiguous or None; res output-shaped, any strides,
        or None; out in the canonical layout (pyimgcls.ops.conv._match_format) of PyTorch's output
        format for the call (ops.conv.output_memory_format)
    bias_act_bwd(grad, out, act, has_bias, fmt) -> (grad_pre, grad_bias | None)
        grad, out (the saved output, None without an activation): output-shaped in the canonical
        layout of ``fmt``; grad_pre = grad * act'(out) with grad's strides (``grad`` itself when
        act == 0), grad_bias = grad_pre.sum((0, 2, 3)). Not called when act == 0 and not has_bias.
    dgrad(gp, x, w, stride, padding, dilation, groups) -> grad_input
        gp: grad_pre (output-shaped); grad_input like x, in the canonical layout of x's suggested format
    wgrad(gp, x, w, stride, padding, dilation, groups) -> grad_weight     contiguous, like w
Outputs are allocated through the helpers in pyimgcls/ops/conv.py (shapes, layouts, empty tensors,
the geometry list). float16 inputs are computed in float32 and returned in their dtype
(docs/architecture.md, "Dtypes"); the op file runs a float16 backward in float32 as a whole (upcasts_low_precision
in the backend table), so grad_pre stays float32 between bias_act_bwd and dgrad / wgrad. bfloat16 is native
(NATIVE_LOW_PRECISION): conv2d, dgrad and wgrad take bf16 tensors (im2col and the GEMM read bf16, every GEMM in
bf16 with float32 accumulation, bias / residual / activation in float32 and one rounding of the result:
csrc/cpu/conv.cpp "bfloat16, native path"; depthwise and LeNet-sized convs through float32 copies, section
"bfloat16"), and the backward stays bf16 (bias_act_bwd computes it in float32 and returns bf16)."""
from __future__ import annotations

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from ... import _native
from . import in_float32
from .gemm import NATIVE_LOW_PRECISION, bf16_native  # noqa: F401  (NATIVE_LOW_PRECISION: read by ops/conv.py)
from ...ops.conv import (bias_act_outputs, dgrad_output, fwd_outputs, pixel_strides, ptr, strides,
                         wgrad_output)


# Weight-transform cache (csrc/cpu/conv.cpp conv2d_fwd_cached): per weight tensor, held weakly (freed with
# the weight), [data_ptr, _version, U or None, fingerprint, misses]. U (the Winograd filter transform,
# [16][C][O rounded up to 16] float32, or a 2x2 tiny map's Weff: both 16/9 x the weight) is allocated on the second call that finds the weight unchanged
# (same storage, same version: inference, frozen layers), so a training run, whose weights change
# between calls, never pays for it. Once allocated, the kernel compares a fingerprint of the weight's
# bytes on every call and rebuilds U when it changed (also after edits through ``.data`` that the
# version counter misses); two rebuilds in a row (training resumed) drop U again.
_WINOGRAD_CACHE = WeakTensorKeyDictionary()


def _winograd_cache(w, geom):
    """(entry, valid) for a cached forward of float32 ``w`` (valid: entry's U was built by an earlier call,
    to be checked against the weight's fingerprint), or None for the uncached path."""
    if w.requires_grad and torch.is_grad_enabled():
        return None  # a differentiable call (functional use outside our autograd function)
    n = _native.C.conv2d_winograd_cache_floats_cpu(_native.dtype_code(w.dtype), geom)
    if n == 0:
        return None
    entry = _WINOGRAD_CACHE.get(w)
    ptr, version = w.data_ptr(), w._version
    if entry is None or (entry[2] is not None and entry[2].numel() != n):
        _WINOGRAD_CACHE[w] = [ptr, version, None, 0, 0]
        return None
    if entry[2] is None:
        if entry[0] != ptr or entry[1] != version:
            entry[0], entry[1] = ptr, version
            return None
        entry[2] = torch.empty(n, dtype=torch.float32)
        return entry, False
    return entry, True


@bf16_native
def conv2d(x, w, bias, res, stride, padding, dilation, groups, act):
    out, res, geom = fwd_outputs(x, w, res, stride, padding, dilation, groups)
    if geom is None:
        return out
    cached = _winograd_cache(w, geom) if x.dtype == torch.float32 and w.is_contiguous() else None
    if cached is not None:
        entry, valid = cached
        fp = _native.C.conv2d_fwd_cached_cpu(geom, x.data_ptr(), strides(x), w.data_ptr(), ptr(bias), ptr(res),
                                             strides(res), out.data_ptr(), strides(out), act, entry[2].data_ptr(),
                                             entry[3], valid)
        if valid and fp != entry[3]:
            entry[4] += 1
            if entry[4] >= 2:
                entry[2] = None  # rebuilt twice in a row: the weight is being trained, free U
        else:
            entry[4] = 0
        entry[0], entry[1], entry[3] = w.data_ptr(), w._version, fp
        return out
    w = w.contiguous()
    _native.C.conv2d_fwd_cpu(_native.dtype_code(x.dtype), geom, x.data_ptr(), strides(x), w.data_ptr(),
                             ptr(bias), ptr(res), strides(res), out.data_ptr(), strides(out), act)
    return out


@in_float32
def bias_act_bwd(grad, out, act, has_bias, fmt):
    gp, gb = bias_act_outputs(grad, out, act, has_bias, fmt)
    if grad.numel() == 0:
        return gp, gb
    N, O, OH, OW = grad.shape
    _native.C.conv2d_bias_act_bwd_cpu(_native.dtype_code(grad.dtype), N, O, OH * OW, grad.data_ptr(),
                                      pixel_strides(grad), ptr(out), pixel_strides(out), gp.data_ptr(), ptr(gb),
                                      act)
    return gp, gb


@bf16_native
def dgrad(gp, x, w, stride, padding, dilation, groups):
    dx, geom = dgrad_output(gp, x, w, stride, padding, dilation, groups)
    if geom is None:
        return dx
    w = w.contiguous()
    _native.C.conv2d_bwd_data_cpu(_native.dtype_code(x.dtype), geom, gp.data_ptr(), strides(gp), w.data_ptr(),
                                  dx.data_ptr(), strides(dx))
    return dx


@bf16_native
def wgrad(gp, x, w, stride, padding, dilation, groups):
    dw, geom = wgrad_output(gp, x, w, stride, padding, dilation, groups)
    if geom is None:
        return dw
    _native.C.conv2d_bwd_weight_cpu(_native.dtype_code(x.dtype), geom, gp.data_ptr(), strides(gp), x.data_ptr(),
                                    strides(x), dw.data_ptr())
    return dw
