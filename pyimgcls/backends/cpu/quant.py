"""Quantised (int8) family on our C++ CPU kernels (csrc/cpu/quant.cpp).

Entry points (same signature in every backend folder; pyimgcls/ops/quant.py calls them and defines
the quantised representation and the requantisation semantics):
    pack_weight(w) -> packed          w int8 [O, K], any strides; the backend's packed form, built once
                                      and kept by QuantizedWeight
    gemm(a, a_zero, packed, K, bias, mult, res, res_zero, res_mult, out_zero, qmin, qmax, act, out)
                                      out[m, o] = requantise(sum_k (a[m, k] - a_zero) w[o, k] + bias[o]);
                                      a uint8 [M, K] with unit column stride; out [M, O] uint8 (or float32:
                                      float(acc) * mult[o], then act) with unit column stride; bias int32
                                      [O] or None; mult float32 [O]; res uint8 [M, O] (unit column stride)
                                      or None, added in the quantised domain
    conv_gemm(x, a_zero, packed, kh, kw, stride, padding, dilation, oh, ow, bias, mult, res, res_zero, res_mult,
              out_zero, qmin, qmax, act, out)
                                      optional (cpu): gemm(im2col(x), ...) of a groups=1 conv, no column matrix
    im2col(x, c0, cg, kh, kw, stride, padding, dilation, oh, ow, pad, col)
                                      col uint8 [N * OH * OW, KH * KW * CG] of channels c0 .. c0 + cg of
                                      x uint8 [N, C, H, W] (any strides), out-of-image taps = pad
    max_pool2d(x, kernel, stride, padding, dilation, oh, ow, out)
                                      out uint8 [N, C, OH, OW] channels_last: window maxima (padding -inf)
    adaptive_avg_pool2d(x, oh, ow, in_zero, ratio, out_zero, out)
                                      out uint8 channels_last: rne(sum(x - in_zero) * float32(ratio / count))
                                      + out_zero, clamped to [0, 255]
    quantize(x, inv_scale, zero_point, out)
    quantize_nhwc(x, inv_scale, zero_point, out)
                                      optional (cpu): x float32 [N, C, H, W] (H, W dense) into a channels_last out
                                      out uint8 = clamp(rne(x * inv_scale) + zero_point, 0, 255), NaN -> 0;
                                      x float32 dense (any dense strides), out with x's strides
    bind_layer(x, a_zero, res, out, packed, conv, bias, mult, res_zero, res_mult, out_zero, qmin, qmax, act)
                                      optional (cpu): the native call conv_gemm / gemm would make for these
                                      tensors, with every argument but the data pointers fixed: returns
                                      run(x_ptr, res_ptr, out_ptr) (ops/quant.py's BoundQuantizedLayer)
Nothing is returned by gemm / im2col / the pools / quantize: they fill the outputs ops/quant.py allocated."""
from __future__ import annotations

import torch

from ... import _native


def pack_weight(w):
    O, K = w.shape
    packed = torch.empty(_native.C.quant_packed_bytes(O, K), dtype=torch.int8)
    colsum = torch.empty(O, dtype=torch.int32)
    _native.C.quant_pack_weight_cpu(w.data_ptr(), O, K, w.stride(0), w.stride(1), packed.data_ptr(),
                                    colsum.data_ptr())
    return packed, colsum, O, {}      # the last: _tap_sums per conv geometry, filled on first use


def _tap_sums(packed, kh, kw, C, padding):
    """int32 [KH * KW, O]: the weight's sum over each tap's channels, with which quant_conv_gemm skips
    the padding's taps instead of multiplying them with the zero point (same results); None where it
    would not (no padding, a 1x1 kernel, C % 4 != 0). Computed once per weight and geometry."""
    pw, _, O, cache = packed
    if not any(padding) or kh * kw == 1 or C % 4:
        return None
    t = cache.get((kh, kw, C))
    if t is None:
        t = torch.empty(kh * kw, O, dtype=torch.int32)
        _native.C.quant_tap_sums_cpu(pw.data_ptr(), O, kh, kw, C, t.data_ptr())
        cache[(kh, kw, C)] = t
    return t


def gemm(a, a_zero, packed, K, bias, mult, res, res_zero, res_mult, out_zero, qmin, qmax, act, out):
    pw, colsum, O, _ = packed
    M = a.shape[0]
    mult = mult.contiguous()
    _native.C.quant_gemm_cpu(
        a.data_ptr(), M, K, a.stride(0), a_zero, pw.data_ptr(), colsum.data_ptr(), O,
        bias.data_ptr() if bias is not None else 0, mult.data_ptr(),
        res.data_ptr() if res is not None else 0, res.stride(0) if res is not None else 0, res_zero, res_mult,
        out_zero, qmin, qmax, out.dtype == torch.float32, act, out.data_ptr(), out.stride(0))


def conv_gemm(x, a_zero, packed, kh, kw, stride, padding, dilation, oh, ow, bias, mult, res, res_zero, res_mult,
              out_zero, qmin, qmax, act, out):
    """groups=1 conv: gemm(im2col(x), ...) without materialising the column matrix (optional entry:
    ops/quant.py uses it where a backend has it)."""
    pw, colsum, O, _ = packed
    N, C, H, W = x.shape
    mult = mult.contiguous()
    taps = _tap_sums(packed, kh, kw, C, padding)
    _native.C.quant_conv_gemm_cpu(
        x.data_ptr(), N, H, W, *x.stride(), C, kh, kw, *stride, *padding, *dilation, oh, ow, a_zero, pw.data_ptr(),
        colsum.data_ptr(), taps.data_ptr() if taps is not None else 0, O,
        bias.data_ptr() if bias is not None else 0, mult.data_ptr(),
        res.data_ptr() if res is not None else 0, res.stride(0) if res is not None else 0, res_zero, res_mult,
        out_zero, qmin, qmax, out.dtype == torch.float32, act, out.data_ptr(), out.stride(0))


def im2col(x, c0, cg, kh, kw, stride, padding, dilation, oh, ow, pad, col):
    N, C, H, W = x.shape
    _native.C.quant_im2col_cpu(x.data_ptr(), N, H, W, *x.stride(), c0, cg, kh, kw, *stride, *padding, *dilation,
                               oh, ow, pad, col.data_ptr())


def max_pool2d(x, kernel, stride, padding, dilation, oh, ow, out):
    """out uint8 [N, C, OH, OW] channels_last = max over each window of x uint8 [N, C, H, W] (any strides)."""
    N, C, H, W = x.shape
    _native.C.quant_max_pool2d_cpu(x.data_ptr(), N, C, H, W, *x.stride(), *kernel, *stride, *padding, *dilation,
                                   oh, ow, out.data_ptr())


def adaptive_avg_pool2d(x, oh, ow, in_zero, ratio, out_zero, out):
    """out uint8 [N, C, OH, OW] channels_last = requantised window means (ops/quant.py)."""
    N, C, H, W = x.shape
    _native.C.quant_adaptive_avg_pool2d_cpu(x.data_ptr(), N, C, H, W, *x.stride(), oh, ow, in_zero, ratio, out_zero,
                                            out.data_ptr())


def quantize_nhwc(x, inv_scale, zero_point, out):
    """quantize() of x float32 [N, C, H, W] with H and W dense (x.stride(2) == W, x.stride(3) == 1) into
    out uint8 channels_last, in one pass (optional entry: ops/quant.py uses it where a backend has it).
    ``out`` may have more channels than x: those are set to zero_point (real 0)."""
    N, C, H, W = x.shape
    _native.C.quant_quantize_nhwc_cpu(x.data_ptr(), N, C, H * W, x.stride(0), x.stride(1), inv_scale, zero_point,
                                      out.data_ptr(), out.shape[1])


def quantize(x, inv_scale, zero_point, out):
    """out uint8 = clamp(rne(x * inv_scale) + zero_point, 0, 255); x float32 dense, out with x's strides."""
    _native.C.quant_quantize_cpu(x.data_ptr(), x.numel(), inv_scale, zero_point, out.data_ptr())


def bind_layer(x, a_zero, res, out, packed, conv, bias, mult, res_zero, res_mult, out_zero, qmin, qmax, act):
    """One layer's native call with its arguments fixed, for tensors laid out as ``x`` / ``res`` / ``out``
    are (the caller keys the result on their shapes and strides). ``conv``: None for a GEMM (``x`` the
    uint8 [M, K] matrix with unit column stride, ``out`` / ``res`` [M, O]), else (kh, kw, stride, padding,
    dilation, oh, ow) of a groups = 1 convolution (``x`` [N, C, H, W], ``out`` / ``res`` the [M, O] views
    of the channels_last output / residual). Returns run(x_ptr, res_ptr, out_ptr): one call into _C, the
    arguments those of conv_gemm / gemm above, so the results are theirs bit for bit."""
    pw, colsum, O, _ = packed
    mult = mult.contiguous()
    keep = [pw, colsum, mult, bias]         # the pointers below stay valid while run lives
    bias_p = bias.data_ptr() if bias is not None else 0
    ldr = res.stride(0) if res is not None else 0
    float_out = out.dtype == torch.float32
    if conv is None:
        fn = _native.C.quant_gemm_cpu
        head = (x.shape[0], x.shape[1], x.stride(0), a_zero, pw.data_ptr(), colsum.data_ptr(), O, bias_p,
                mult.data_ptr())
        tail = (ldr, res_zero, res_mult, out_zero, qmin, qmax, float_out, act)
        ldo = out.stride(0)

        def run(xp, rp, op, keep=keep):
            fn(xp, *head, rp, *tail, op, ldo)
        run.native = ("gemm", head, tail, ldo, keep)       # for QuantProgram.add_gemm(xp, *head, rp, *tail, op, ldo)
        return run
    kh, kw, stride, padding, dilation, oh, ow = conv
    N, C, H, W = x.shape
    fn = _native.C.quant_conv_gemm_cpu
    taps = _tap_sums(packed, kh, kw, C, padding)
    keep.append(taps)
    head = (N, H, W, *x.stride(), C, kh, kw, *stride, *padding, *dilation, oh, ow, a_zero, pw.data_ptr(),
            colsum.data_ptr(), taps.data_ptr() if taps is not None else 0, O, bias_p, mult.data_ptr())
    tail = (ldr, res_zero, res_mult, out_zero, qmin, qmax, float_out, act)
    ldo = out.stride(0)

    def run(xp, rp, op, keep=keep):
        fn(xp, *head, rp, *tail, op, ldo)
    run.native = ("conv", head, tail, ldo, keep)           # for QuantProgram.add_conv(xp, *head, rp, *tail, op, ldo)
    return run
