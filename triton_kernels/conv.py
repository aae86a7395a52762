"""Convolution family in Triton: implicit-GEMM conv2d forward (fused bias + residual + activation),
dgrad and wgrad, a direct depthwise forward, and the epilogue backward.

Every kernel addresses its tensors through (n, c, h, w) element strides, so NCHW, channels_last and
strided views all run without a layout copy (channels_last is the fast layout: the reduction axis
is the channel axis, contiguous in NHWC, so the gathered tiles are coalesced).

Forward, ``_conv2d_fwd_kernel`` (implicit GEMM, nothing materialised):
    C[m, o] = sum_k A[m, k] * B[k, o],  m = (n, oh, ow) output pixel, o = output channel in the group,
    k = (i, j, c) kernel tap and input channel; A[m, k] = x[n, g*Cg + c, oh*sh - ph + i*dh, ...]
    (0 outside the image) is gathered straight from the input per (tap, BLOCK_K channels) step;
    B[k, o] = w[g*Og + o, c, i, j]. One BLOCK_M x BLOCK_N tile per program, grouped ordering over
    (pixel tile, channel tile), groups folded into the same grid axis. Epilogue on the fp32 (fp64)
    accumulator: + bias[o] + residual[n, o, oh, ow], relu/relu6 (NaN propagates), cast, store.
    FLOPs 2*N*O*OH*OW*Cg*KH*KW; min bytes (|x| + |w| + |out| (+ |res| + O)) * itemsize.
Depthwise forward, ``_conv2d_dw_fwd_kernel`` (groups == C == O): a direct per-channel stencil,
    BLOCK_M pixels x BLOCK_C channels per program, the same epilogue. FLOPs 2*N*C*OH*OW*KH*KW.
Dgrad, ``_conv2d_bwd_data_kernel``: dx[m = (n, ih, iw), c] = sum over taps (i, j) and out channels o of
    g[n, o, oh, ow] * w[o, c, i, j] where oh = (ih + ph - i*dh) / sh must be an integer in [0, OH):
    an implicit GEMM with K = (i, j, o), gathering g on the fly. Every element of dx is written once.
Wgrad, ``_conv2d_bwd_weight_kernel``: dw[o, c, i, j] = sum_m g[m, o] * A[m, (i, j, c)], one program per
    (o tile, c tile, tap, group, K split); the pixel axis (N*OH*OW) is the reduction. With SPLIT_K > 1
    partial sums go to a scratch buffer and ``common.split_reduce_kernel`` adds them in a fixed
    order (deterministic, no atomics).
Epilogue backward: ``common.bias_act_bwd`` (grad_pre = grad * act'(out), grad_bias[o] = sum, split
    over rows with a fixed-order reduction).
fp32 operands use input_precision="ieee" (no TF32: float32 means IEEE float32).

Test: pytest tests/test_conv.py -k triton   Benchmark: python benchmarks/bench_conv.py
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import common
from ._config import INTERPRET, autotune_configs, cfg
from .common import apply_act, split_reduce_kernel

_IGEMM_CONFIGS = autotune_configs(
    [
        cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
        cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
        cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
        cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=4),
        cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=4),
        cfg(BLOCK_M=128, BLOCK_N=32, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=4),
        cfg(BLOCK_M=64, BLOCK_N=16, BLOCK_K=16, GROUP_M=8, num_warps=2, num_stages=3),
    ],
    cfg(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=4, num_warps=4, num_stages=1),
)

_WGRAD_CONFIGS = autotune_configs(
    [
        cfg(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
        cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=4),
        cfg(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=4),
        cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4),
        cfg(BLOCK_M=32, BLOCK_N=32, BLOCK_K=64, num_warps=4, num_stages=3),
    ],
    cfg(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=1),
)

_DW_CONFIGS = autotune_configs(
    [
        cfg(BLOCK_M=32, BLOCK_C=64, num_warps=4, num_stages=1),
        cfg(BLOCK_M=64, BLOCK_C=32, num_warps=4, num_stages=1),
        cfg(BLOCK_M=16, BLOCK_C=128, num_warps=4, num_stages=1),
        cfg(BLOCK_M=128, BLOCK_C=8, num_warps=4, num_stages=1),
    ],
    cfg(BLOCK_M=16, BLOCK_C=8, num_warps=4, num_stages=1),
)


@triton.jit
def _mma(a, b, acc, IS_FP32: tl.constexpr, ACC_FP64: tl.constexpr, UPCAST_DOT: tl.constexpr):
    if UPCAST_DOT:
        # Interpreter only: numpy has no bfloat16, so its tl.dot misreads bf16 operands; the values are
        # exact in fp32, so the product equals a bf16 x bf16 -> fp32 tensor-core dot.
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if ACC_FP64:
        acc = tl.dot(a, b, acc, input_precision="ieee", out_dtype=tl.float64)
    elif IS_FP32:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _epilogue_store(acc, n_idx, oh, ow, ch, mask_m, mask_n, bias_ptr, res_ptr, out_ptr,
                    srn, src, srh, srw, son, soc, soh, sow,
                    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr):
    # acc [BLOCK_M, BLOCK_N] on the accumulator dtype; rows = pixels (n, oh, ow), columns = channels ch.
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_n, other=0.0).to(acc.dtype)
        acc += bias[None, :]
    if HAS_RES:
        r_off = (n_idx * srn + oh * srh + ow * srw)[:, None] + (ch * src)[None, :]
        acc += tl.load(res_ptr + r_off, mask=mask, other=0.0).to(acc.dtype)
    acc = apply_act(acc, ACT)
    o_off = (n_idx * son + oh * soh + ow * sow)[:, None] + (ch * soc)[None, :]
    tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_IGEMM_CONFIGS, key=["M", "Og", "Cg", "KH", "KW", "IS_FP32", "ACC_FP64"])
@triton.jit
def _conv2d_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, res_ptr, out_ptr,
    M, H, W, OH, OW, Cg, Og, KH, KW, GROUPS,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sxn, sxc, sxh, sxw, swo, swc, swh, sww, srn, src, srh, srw, son, soc, soh, sow,
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr, IS_FP32: tl.constexpr,
    ACC_FP64: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # 1. Program -> (group, pixel tile, channel tile), grouped ordering inside each conv group.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(Og, BLOCK_N)
    tiles = num_pid_m * num_pid_n
    g = pid // tiles
    pid = pid % tiles
    num_in_group = GROUP_M * num_pid_n
    first_m = (pid // num_in_group) * GROUP_M
    group_size = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % num_in_group) % group_size)
    pid_n = (pid % num_in_group) // group_size

    # 2. Output pixel coordinates of the BLOCK_M rows (int64: tensors may exceed 2**31 elements).
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)        # [BLOCK_M]
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)        # [BLOCK_N] channel in group
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)                          # [BLOCK_K] channel step
    mask_m = offs_m < M
    mask_n = offs_n < Og
    n_idx = offs_m // (OH * OW)
    rem = offs_m % (OH * OW)
    oh = rem // OW
    ow = rem % OW
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    x_base = x_ptr + n_idx * sxn + (g * Cg) * sxc                        # [BLOCK_M] pointers
    ch = g * Og + offs_n                                                 # [BLOCK_N] global out channel
    w_base = w_ptr + ch * swo                                            # [BLOCK_N] pointers

    if ACC_FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # 3. K loop: for each kernel tap, BLOCK_K input channels at a time; padding reads as 0.
    for r in range(0, KH * KW):
        i = r // KW
        j = r % KW
        ih = ih0 + i * dil_h
        iw = iw0 + j * dil_w
        row_ok = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a_row = x_base + ih * sxh + iw * sxw                             # [BLOCK_M]
        b_col = w_base + i * swh + j * sww                               # [BLOCK_N]
        for c0 in range(0, Cg, BLOCK_K):
            c = c0 + offs_k
            k_ok = c < Cg
            a = tl.load(a_row[:, None] + (c * sxc)[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_col[None, :] + (c * swc)[:, None], mask=k_ok[:, None] & mask_n[None, :], other=0.0)
            acc = _mma(a, b, acc, IS_FP32, ACC_FP64, UPCAST_DOT)

    # 4. Fused epilogue: + bias + residual, activation, cast, store through the output strides.
    _epilogue_store(acc, n_idx, oh, ow, ch, mask_m, mask_n, bias_ptr, res_ptr, out_ptr,
                    srn, src, srh, srw, son, soc, soh, sow, HAS_BIAS, HAS_RES, ACT)


@triton.autotune(configs=_DW_CONFIGS, key=["M", "C", "KH", "KW", "ACC_FP64"])
@triton.jit
def _conv2d_dw_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, res_ptr, out_ptr,
    M, C, H, W, OH, OW, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sxn, sxc, sxh, sxw, swo, swh, sww, srn, src, srh, srw, son, soc, soh, sow,
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Depthwise (groups == C == O): out[m, c] = sum_{i, j} x[n, c, ih, iw] * w[c, 0, i, j]. Each program
    # owns BLOCK_M pixels x BLOCK_C channels; a tap is an elementwise multiply-add of a
    # [BLOCK_M, BLOCK_C] gathered tile (coalesced along c for channels_last) by a [BLOCK_C] weight row.
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_c.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = offs_m < M
    mask_c = offs_c < C
    n_idx = offs_m // (OH * OW)
    rem = offs_m % (OH * OW)
    oh = rem // OW
    ow = rem % OW
    x_base = x_ptr + n_idx * sxn
    if ACC_FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for r in range(0, KH * KW):
        i = r // KW
        j = r % KW
        ih = oh * stride_h - pad_h + i * dil_h
        iw = ow * stride_w - pad_w + j * dil_w
        row_ok = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xv = tl.load((x_base + ih * sxh + iw * sxw)[:, None] + (offs_c * sxc)[None, :],
                     mask=row_ok[:, None] & mask_c[None, :], other=0.0).to(acc.dtype)
        wv = tl.load(w_ptr + offs_c * swo + i * swh + j * sww, mask=mask_c, other=0.0).to(acc.dtype)
        acc += xv * wv[None, :]
    _epilogue_store(acc, n_idx, oh, ow, offs_c, mask_m, mask_c, bias_ptr, res_ptr, out_ptr,
                    srn, src, srh, srw, son, soc, soh, sow, HAS_BIAS, HAS_RES, ACT)


@triton.autotune(configs=_IGEMM_CONFIGS, key=["M", "Og", "Cg", "KH", "KW", "IS_FP32", "ACC_FP64"])
@triton.jit
def _conv2d_bwd_data_kernel(
    g_ptr, w_ptr, dx_ptr,
    M, H, W, OH, OW, Cg, Og, KH, KW, GROUPS,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sgn, sgc, sgh, sgw, swo, swc, swh, sww, sdn, sdc, sdh, sdw,
    IS_FP32: tl.constexpr, ACC_FP64: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Rows m = input pixels (n, ih, iw), columns = input channels of the group, K = (tap, out channel).
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(Cg, BLOCK_N)
    tiles = num_pid_m * num_pid_n
    grp = pid // tiles
    pid = pid % tiles
    num_in_group = GROUP_M * num_pid_n
    first_m = (pid // num_in_group) * GROUP_M
    group_size = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % num_in_group) % group_size)
    pid_n = (pid % num_in_group) // group_size

    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)        # [BLOCK_M] input pixels
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)        # [BLOCK_N] channel in group
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)                          # [BLOCK_K] out-channel step
    mask_m = offs_m < M
    mask_n = offs_n < Cg
    n_idx = offs_m // (H * W)
    rem = offs_m % (H * W)
    ih = rem // W
    iw = rem % W
    g_base = g_ptr + n_idx * sgn + (grp * Og) * sgc                      # [BLOCK_M]
    w_base = w_ptr + (grp * Og) * swo + offs_n * swc                     # [BLOCK_N]

    if ACC_FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r in range(0, KH * KW):
        i = r // KW
        j = r % KW
        # Output pixel this tap maps to: ih = oh*sh - ph + i*dh  =>  oh = (ih + ph - i*dh) / sh, which
        # must be a non-negative integer below OH. Clamp before dividing (no negative division).
        th = ih + pad_h - i * dil_h
        tw = iw + pad_w - j * dil_w
        thc = tl.maximum(th, 0)
        twc = tl.maximum(tw, 0)
        oh = thc // stride_h
        ow = twc // stride_w
        row_ok = (mask_m & (th >= 0) & (tw >= 0) & (thc % stride_h == 0) & (twc % stride_w == 0)
                  & (oh < OH) & (ow < OW))
        a_row = g_base + oh * sgh + ow * sgw
        b_col = w_base + i * swh + j * sww
        for o0 in range(0, Og, BLOCK_K):
            o = o0 + offs_k
            k_ok = o < Og
            a = tl.load(a_row[:, None] + (o * sgc)[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_col[None, :] + (o * swo)[:, None], mask=k_ok[:, None] & mask_n[None, :], other=0.0)
            acc = _mma(a, b, acc, IS_FP32, ACC_FP64, UPCAST_DOT)

    d_off = (n_idx * sdn + ih * sdh + iw * sdw)[:, None] + ((grp * Cg + offs_n) * sdc)[None, :]
    tl.store(dx_ptr + d_off, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.autotune(configs=_WGRAD_CONFIGS, key=["P", "Og", "Cg", "KH", "KW", "SPLIT_K", "IS_FP32", "ACC_FP64"])
@triton.jit
def _conv2d_bwd_weight_kernel(
    g_ptr, x_ptr, dst_ptr,
    P, H, W, OH, OW, Cg, Og, KH, KW, GROUPS, O, CHUNK,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
    SPLIT_K: tl.constexpr, IS_FP32: tl.constexpr, ACC_FP64: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # dst[s, o, c, i, j] (SPLIT_K > 1: fp32/fp64 partials; else dw itself, contiguous) for rows
    # o (out channel in group), columns c (in channel in group), one tap (i, j) per program; the
    # reduction runs over pixels m = (n, oh, ow) in [s*CHUNK, (s+1)*CHUNK).
    pid = tl.program_id(0)
    tap = tl.program_id(1)
    s = tl.program_id(2)
    num_pid_m = tl.cdiv(Og, BLOCK_M)
    num_pid_n = tl.cdiv(Cg, BLOCK_N)
    tiles = num_pid_m * num_pid_n
    grp = pid // tiles
    pid = pid % tiles
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
    i = tap // KW
    j = tap % KW

    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)        # [BLOCK_M] out channel
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)        # [BLOCK_N] in channel
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)                          # [BLOCK_K] pixels
    mask_m = offs_m < Og
    mask_n = offs_n < Cg
    g_ch = (grp * Og + offs_m) * sgc                                     # [BLOCK_M]
    x_ch = (grp * Cg + offs_n) * sxc                                     # [BLOCK_N]

    if ACC_FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_begin = s.to(tl.int64) * CHUNK
    k_end = tl.minimum(k_begin + CHUNK, P)
    for k0 in range(k_begin, k_end, BLOCK_K):
        m = k0 + offs_k
        k_ok = m < k_end
        n_idx = m // (OH * OW)
        rem = m % (OH * OW)
        oh = rem // OW
        ow = rem % OW
        ih = oh * stride_h - pad_h + i * dil_h
        iw = ow * stride_w - pad_w + j * dil_w
        x_ok = k_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(g_ptr + g_ch[:, None] + (n_idx * sgn + oh * sgh + ow * sgw)[None, :],
                    mask=mask_m[:, None] & k_ok[None, :], other=0.0)     # [BLOCK_M, BLOCK_K]
        b = tl.load(x_ptr + (n_idx * sxn + ih * sxh + iw * sxw)[:, None] + x_ch[None, :],
                    mask=x_ok[:, None] & mask_n[None, :], other=0.0)     # [BLOCK_K, BLOCK_N]
        acc = _mma(a, b, acc, IS_FP32, ACC_FP64, UPCAST_DOT)

    # dst is contiguous [SPLIT_K, O, Cg, KH, KW]
    o_glob = grp * Og + offs_m
    d_off = s.to(tl.int64) * O * Cg * KH * KW + (o_glob * (Cg * KH * KW))[:, None] \
        + (offs_n * (KH * KW))[None, :] + tap
    tl.store(dst_ptr + d_off, acc.to(dst_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# ----------------------------------------------------------------------------- host functions
def _flags(t: torch.Tensor):
    return dict(IS_FP32=t.dtype == torch.float32, ACC_FP64=t.dtype == torch.float64,
                UPCAST_DOT=INTERPRET and t.dtype == torch.bfloat16)


def _s(t: torch.Tensor | None):
    return tuple(t.stride()) if t is not None else (0, 0, 0, 0)


def conv2d_fwd(x, w, bias, res, out, stride, padding, dilation, groups, act) -> None:
    """out = act(conv2d(x, w) + bias + residual); padding = [top, left, bottom, right]."""
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    OH, OW = out.shape[2], out.shape[3]
    M = N * OH * OW
    common = (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
    tail = dict(HAS_BIAS=bias is not None, HAS_RES=res is not None, ACT=act)
    bias_arg = bias if bias is not None else out
    res_arg = res if res is not None else out
    if groups == C and O == C and Cg == 1:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(C, meta["BLOCK_C"]))  # noqa: E731
        _conv2d_dw_fwd_kernel[grid](
            x, w, bias_arg, res_arg, out, M, C, H, W, OH, OW, KH, KW, *common,
            *_s(x), w.stride(0), w.stride(2), w.stride(3), *_s(res), *_s(out),
            ACC_FP64=x.dtype == torch.float64, **tail)
        return
    Og = O // groups
    grid = lambda meta: (groups * triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(Og, meta["BLOCK_N"]),)  # noqa: E731
    _conv2d_fwd_kernel[grid](
        x, w, bias_arg, res_arg, out, M, H, W, OH, OW, Cg, Og, KH, KW, groups, *common,
        *_s(x), *_s(w), *_s(res), *_s(out), **tail, **_flags(x))


def conv2d_bwd_data(gp, w, dx, stride, padding, dilation, groups) -> None:
    """dx = conv2d's input gradient for the output gradient gp (every element of dx written)."""
    N, C, H, W = dx.shape
    O, Cg, KH, KW = w.shape
    OH, OW = gp.shape[2], gp.shape[3]
    Og = O // groups
    M = N * H * W
    grid = lambda meta: (groups * triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(Cg, meta["BLOCK_N"]),)  # noqa: E731
    _conv2d_bwd_data_kernel[grid](
        gp, w, dx, M, H, W, OH, OW, Cg, Og, KH, KW, groups,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        *_s(gp), *_s(w), *_s(dx), **_flags(gp))


def _split_k(tiles: int, P: int, device: torch.device) -> int:
    """K splits for wgrad so that small weight grids still fill the GPU (1 under the interpreter)."""
    if INTERPRET or device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = triton.cdiv(2 * sms, max(tiles, 1))
    return max(1, min(want, 32, triton.cdiv(P, 1024)))


def conv2d_bwd_weight(gp, x, dw, stride, padding, dilation, groups) -> None:
    """dw (contiguous) = conv2d's weight gradient for the output gradient gp."""
    N, C, H, W = x.shape
    O, Cg, KH, KW = dw.shape
    OH, OW = gp.shape[2], gp.shape[3]
    Og = O // groups
    P = N * OH * OW
    # tiles estimated with the smallest GPU config (64 x 64) to size the split
    split = _split_k(groups * triton.cdiv(Og, 64) * triton.cdiv(Cg, 64) * KH * KW, P, x.device)
    chunk = triton.cdiv(P, split)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    dst = dw if split == 1 else torch.empty((split, O, Cg, KH, KW), dtype=acc_dtype, device=x.device)
    grid = lambda meta: (groups * triton.cdiv(Og, meta["BLOCK_M"]) * triton.cdiv(Cg, meta["BLOCK_N"]),  # noqa: E731
                         KH * KW, split)
    _conv2d_bwd_weight_kernel[grid](
        gp, x, dst, P, H, W, OH, OW, Cg, Og, KH, KW, groups, O, chunk,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        *_s(gp), *_s(x), SPLIT_K=split, **_flags(x))
    if split > 1:
        numel = dw.numel()
        block = 1024
        split_reduce_kernel[(triton.cdiv(numel, block),)](dst, dw, numel, SPLITS=split, BLOCK=block)


def conv2d_bias_act_bwd(grad, out, grad_pre, grad_bias, act) -> None:
    """grad_pre = grad * act'(out) (when act != 0); grad_bias = per-channel sum. grad, out and grad_pre
    share strides; the spatial dims must be collapsible (stride_h == W * stride_w)."""
    N, O, OH, OW = grad.shape
    common.bias_act_bwd(grad, out, grad_pre, grad_bias, act, N, O, OH * OW, grad.stride(0), grad.stride(1),
                        grad.stride(3))
