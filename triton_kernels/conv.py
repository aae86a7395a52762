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
Depthwise backward (groups == C, one input channel per group, O = C * MULT), direct instead of the
    implicit GEMMs below (which would run N = 1 / M = 1 GEMMs per channel):
    ``_conv2d_depthwise_dgrad_kernel``: dx[m, c] = sum over taps and the MULT out channels of c of
    g * w, BLOCK_M pixels x BLOCK_C channels per program; ``_conv2d_depthwise_wgrad_kernel``: per
    (channel tile, tap, pixel split) elementwise products summed over pixels, split partials reduced in
    a fixed order by ``common.split_reduce_kernel``. Dispatch: ``is_depthwise``.
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
from ._config import FP16, FP32, FP64, INTERPRET, tuned_table
from .common import acc_zeros, apply_act, grouped_tile, mma, tile_offsets

# Rows per dtype: the meta-parameters named first, then num_warps, num_stages; the last tuple is the
# interpreter's. _config.DtypeArchPrune keeps the rows of the launch's dtype whose operand pipeline
# fits the device's shared memory. The gathered (implicit-GEMM) loads keep int64 address and mask
# tiles live per pipeline stage, so fp32 (FMA) and fp64 rows use small K steps, 2 stages and 8 warps
# on big tiles: the 4-stage 128-wide rows spill at 255 registers there, and so do 128 x 128 in fp32
# and 32 x 32 (4 warps) in fp64 even at 2 stages, as does the fp32 wgrad at 128 x 64 x 32 (8 warps,
# 3 stages) while 64 x 128 does not (sm_90, ptxas of Triton 3.6). fp16/bf16: 128 x 128 x 32 on 4 warps
# and 64 x 16 x 16 on 2 warps spill in the fwd / dgrad kernels; the BLOCK_K = 64 rows and 128 x 32 x 32
# spill on sm_80 (mma.sync holds its operands in registers, wgmma reads them from shared memory):
# sm_90 only. sm_80 keeps the one 64 x 64 x 32 row until new rows are measured there. tools/check_gpu_build.py
# compiles every row for sm_80 and sm_90.
_MNK = ("BLOCK_M", "BLOCK_N", "BLOCK_K")
_IGEMM = tuned_table(_MNK + ("GROUP_M",), {
    FP16: [(64, 64, 32, 8, 4, 4)],
    FP16 + (90,): [(128, 128, 64, 8, 8, 3), (128, 64, 64, 8, 4, 4), (64, 128, 64, 8, 4, 4), (128, 32, 32, 8, 4, 4)],
    FP32: [(128, 64, 32, 8, 8, 2), (64, 128, 32, 8, 8, 2), (64, 64, 32, 8, 8, 2), (64, 32, 32, 8, 4, 2),
           (32, 64, 32, 8, 4, 2)],
    FP64: [(64, 64, 16, 8, 8, 2), (64, 32, 16, 8, 4, 2), (32, 64, 16, 8, 4, 2), (64, 16, 16, 8, 2, 2)],
}, (16, 16, 16, 4, 4, 1))
_WGRAD = tuned_table(_MNK, {
    FP16: [(128, 128, 32, 8, 3), (64, 128, 32, 4, 4), (128, 64, 32, 4, 4), (64, 64, 64, 4, 4), (32, 32, 64, 4, 3)],
    FP32: [(128, 128, 32, 8, 3), (64, 128, 32, 8, 3), (64, 64, 64, 4, 4), (32, 32, 64, 4, 3)],
    FP64: [(64, 64, 32, 8, 2), (64, 32, 32, 4, 2), (32, 32, 64, 4, 3), (32, 32, 32, 4, 3)],
}, (16, 16, 16, 4, 1))
# The depthwise kernel has no K pipeline (num_stages 1, no shared memory): one table for every dtype.
_DW = tuned_table(("BLOCK_M", "BLOCK_C"), {
    FP16 + FP32 + FP64: [(32, 64, 4, 1), (64, 32, 4, 1), (16, 128, 4, 1), (128, 8, 4, 1)],
}, (16, 8, 4, 1))


@triton.jit
def _group_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # Program id -> (conv group, pid_m, pid_n): the groups are folded into grid axis 0, one run of
    # cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N) tiles each, in grouped order inside the run.
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = grouped_tile(pid % tiles, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    return pid // tiles, pid_m, pid_n


@triton.jit
def _pixels(m, OH, OW):
    # Flat pixel index m = (n * OH + oh) * OW + ow -> (n, oh, ow).
    n = m // (OH * OW)
    rem = m % (OH * OW)
    return n, rem // OW, rem % OW


@triton.jit
def _dgrad_tap(ih, iw, i, j, mask_m, OH, OW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    # Output pixel (oh, ow) that tap (i, j) of input pixel (ih, iw) came from, and whether there is
    # one: ih = oh*sh - ph + i*dh  =>  oh = (ih + ph - i*dh) / sh must be a non-negative integer below
    # OH (ow likewise). Clamped before dividing (no negative division). Shared by the dgrad kernels.
    th = ih + pad_h - i * dil_h
    tw = iw + pad_w - j * dil_w
    thc = tl.maximum(th, 0)
    twc = tl.maximum(tw, 0)
    oh = thc // stride_h
    ow = twc // stride_w
    row_ok = (mask_m & (th >= 0) & (tw >= 0) & (thc % stride_h == 0) & (twc % stride_w == 0)
              & (oh < OH) & (ow < OW))
    return oh, ow, row_ok


@triton.jit
def _gather_mma(acc, a_row, row_ok, a_sk, b_col, b_sk, mask_n, offs_k, K,
                IS_FP32: tl.constexpr, ACC_FP64: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_K: tl.constexpr):
    # acc += A @ B over k in [0, K), BLOCK_K at a time, with A[m, k] at a_row[m] + k * a_sk (rows with
    # row_ok false read 0: padding / no matching output) and B[k, n] at b_col[n] + k * b_sk.
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_ok = k < K
        a = tl.load(a_row[:, None] + (k * a_sk)[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_col[None, :] + (k * b_sk)[:, None], mask=k_ok[:, None] & mask_n[None, :], other=0.0)
        acc = mma(a, b, acc, IS_FP32, ACC_FP64, UPCAST_DOT)
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


@triton.autotune(configs=_IGEMM.configs, key=["M", "Og", "Cg", "KH", "KW", "IS_FP32", "ACC_FP64"],
                 prune_configs_by=_IGEMM.prune)
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
    g, pid_m, pid_n = _group_tile(tl.program_id(0), M, Og, BLOCK_M, BLOCK_N, GROUP_M)

    # 2. Output pixel coordinates of the BLOCK_M rows (int64: tensors may exceed 2**31 elements);
    # columns are the BLOCK_N channels in the group.
    offs_m, offs_n, mask_m, mask_n = tile_offsets(pid_m, pid_n, M, Og, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)                          # [BLOCK_K] channel step
    n_idx, oh, ow = _pixels(offs_m, OH, OW)
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    x_base = x_ptr + n_idx * sxn + (g * Cg) * sxc                        # [BLOCK_M] pointers
    ch = g * Og + offs_n                                                 # [BLOCK_N] global out channel
    w_base = w_ptr + ch * swo                                            # [BLOCK_N] pointers

    acc = acc_zeros(BLOCK_M, BLOCK_N, ACC_FP64)
    # 3. K loop: for each kernel tap, BLOCK_K input channels at a time; padding reads as 0.
    for r in range(0, KH * KW):
        i = r // KW
        j = r % KW
        ih = ih0 + i * dil_h
        iw = iw0 + j * dil_w
        row_ok = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a_row = x_base + ih * sxh + iw * sxw                             # [BLOCK_M]
        b_col = w_base + i * swh + j * sww                               # [BLOCK_N]
        acc = _gather_mma(acc, a_row, row_ok, sxc, b_col, swc, mask_n, offs_k, Cg,
                          IS_FP32, ACC_FP64, UPCAST_DOT, BLOCK_K)

    # 4. Fused epilogue: + bias + residual, activation, cast, store through the output strides.
    _epilogue_store(acc, n_idx, oh, ow, ch, mask_m, mask_n, bias_ptr, res_ptr, out_ptr,
                    srn, src, srh, srw, son, soc, soh, sow, HAS_BIAS, HAS_RES, ACT)


@triton.autotune(configs=_DW.configs, key=["M", "C", "KH", "KW", "ACC_FP64"], prune_configs_by=_DW.prune)
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
    offs_m, offs_c, mask_m, mask_c = tile_offsets(tl.program_id(0), tl.program_id(1), M, C, BLOCK_M, BLOCK_C)
    n_idx, oh, ow = _pixels(offs_m, OH, OW)
    x_base = x_ptr + n_idx * sxn
    acc = acc_zeros(BLOCK_M, BLOCK_C, ACC_FP64)
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


# Depthwise backward (groups == C, one input channel per group, O = C * MULT): direct kernels. The
# implicit-GEMM kernels above would run one GEMM per channel with N = 1 (dgrad) / M = 1 (wgrad).
# Their tiles are the depthwise forward's (_DW: BLOCK_M pixels x BLOCK_C channels, per dtype and arch).


@triton.autotune(configs=_DW.configs, key=["M", "C", "MULT", "KH", "KW", "ACC_FP64"], prune_configs_by=_DW.prune)
@triton.jit
def _conv2d_depthwise_dgrad_kernel(
    g_ptr, w_ptr, dx_ptr,
    M, C, MULT, H, W, OH, OW, KH, KW,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sgn, sgc, sgh, sgw, swo, swh, sww, sdn, sdc, sdh, sdw,
    ACC_FP64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # dx[m = (n, ih, iw), c] = sum_{i, j, q < MULT} g[n, c*MULT + q, oh, ow] * w[c*MULT + q, 0, i, j] with
    # oh = (ih + ph - i*dh) / sh an exact quotient in [0, OH) (ow likewise). BLOCK_M input pixels x
    # BLOCK_C channels per program; a tap is an elementwise multiply-add of a gathered [BLOCK_M, BLOCK_C]
    # tile of g (coalesced along c for channels_last) by a [BLOCK_C] weight row. Every dx element is
    # written once. FLOPs 2*N*O*H*W*KH*KW / (sh*sw); min bytes (|g| + |dx| + |w|) * itemsize.
    offs_m, offs_c, mask_m, mask_c = tile_offsets(tl.program_id(0), tl.program_id(1), M, C, BLOCK_M, BLOCK_C)
    n_idx, ih, iw = _pixels(offs_m, H, W)
    g_base = g_ptr + n_idx * sgn                                         # [BLOCK_M]
    acc = acc_zeros(BLOCK_M, BLOCK_C, ACC_FP64)
    for r in range(0, KH * KW):
        i = r // KW
        j = r % KW
        oh, ow, row_ok = _dgrad_tap(ih, iw, i, j, mask_m, OH, OW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
        g_row = g_base + oh * sgh + ow * sgw                             # [BLOCK_M]
        for q in range(0, MULT):
            o = offs_c * MULT + q                                        # [BLOCK_C] out channels
            gv = tl.load(g_row[:, None] + (o * sgc)[None, :], mask=row_ok[:, None] & mask_c[None, :],
                         other=0.0).to(acc.dtype)
            wv = tl.load(w_ptr + o * swo + i * swh + j * sww, mask=mask_c, other=0.0).to(acc.dtype)
            acc += gv * wv[None, :]
    d_off = (n_idx * sdn + ih * sdh + iw * sdw)[:, None] + (offs_c * sdc)[None, :]
    tl.store(dx_ptr + d_off, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_c[None, :])


@triton.autotune(configs=_DW.configs, key=["P", "O", "MULT", "KH", "KW", "ACC_FP64"], prune_configs_by=_DW.prune)
@triton.jit
def _conv2d_depthwise_wgrad_kernel(
    g_ptr, x_ptr, dst_ptr,
    P, O, MULT, H, W, OH, OW, KH, KW, CHUNK,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
    ACC_FP64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # dst[s, o, tap] = sum over pixels m = (n, oh, ow) in [s*CHUNK, (s+1)*CHUNK) of
    # g[n, o, oh, ow] * x[n, o // MULT, oh*sh - ph + i*dh, ow*sw - pw + j*dw], tap = i*KW + j: one program
    # per (BLOCK_C channel tile, tap, split). The [BLOCK_M, BLOCK_C] products accumulate elementwise and
    # are summed over the pixel axis once at the end (a fixed tree: deterministic). dst is dw itself
    # (contiguous [O, 1, KH, KW]) for one split, else a [SPLITS, O, KH*KW] scratch reduced in split
    # order by common.split_reduce. FLOPs 2*N*O*OH*OW*KH*KW; min bytes (|g| + |x|) * itemsize.
    offs_c = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < O
    tap = tl.program_id(1)
    s = tl.program_id(2).to(tl.int64)
    i = tap // KW
    j = tap % KW
    offs_k = tl.arange(0, BLOCK_M).to(tl.int64)                          # [BLOCK_M] pixels
    g_ch = offs_c * sgc                                                  # [BLOCK_C]
    x_ch = (offs_c // MULT) * sxc                                        # [BLOCK_C]
    acc = acc_zeros(BLOCK_M, BLOCK_C, ACC_FP64)
    k_begin = s * CHUNK
    k_end = tl.minimum(k_begin + CHUNK, P)
    for k0 in range(k_begin, k_end, BLOCK_M):
        m = k0 + offs_k
        n_idx, oh, ow = _pixels(m, OH, OW)
        ih = oh * stride_h - pad_h + i * dil_h
        iw = ow * stride_w - pad_w + j * dil_w
        ok = (m < k_end) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # padding taps contribute 0
        mask = ok[:, None] & mask_c[None, :]
        gv = tl.load(g_ptr + (n_idx * sgn + oh * sgh + ow * sgw)[:, None] + g_ch[None, :], mask=mask, other=0.0)
        xv = tl.load(x_ptr + (n_idx * sxn + ih * sxh + iw * sxw)[:, None] + x_ch[None, :], mask=mask, other=0.0)
        acc += gv.to(acc.dtype) * xv.to(acc.dtype)
    col = tl.sum(acc, axis=0)                                            # [BLOCK_C]
    tl.store(dst_ptr + s * O * KH * KW + offs_c * (KH * KW) + tap, col.to(dst_ptr.dtype.element_ty), mask=mask_c)


@triton.autotune(configs=_IGEMM.configs, key=["M", "Og", "Cg", "KH", "KW", "IS_FP32", "ACC_FP64"],
                 prune_configs_by=_IGEMM.prune)
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
    grp, pid_m, pid_n = _group_tile(tl.program_id(0), M, Cg, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m, offs_n, mask_m, mask_n = tile_offsets(pid_m, pid_n, M, Cg, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)                          # [BLOCK_K] out-channel step
    n_idx, ih, iw = _pixels(offs_m, H, W)
    g_base = g_ptr + n_idx * sgn + (grp * Og) * sgc                      # [BLOCK_M]
    w_base = w_ptr + (grp * Og) * swo + offs_n * swc                     # [BLOCK_N]

    acc = acc_zeros(BLOCK_M, BLOCK_N, ACC_FP64)
    for r in range(0, KH * KW):
        i = r // KW
        j = r % KW
        oh, ow, row_ok = _dgrad_tap(ih, iw, i, j, mask_m, OH, OW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
        a_row = g_base + oh * sgh + ow * sgw
        b_col = w_base + i * swh + j * sww
        acc = _gather_mma(acc, a_row, row_ok, sgc, b_col, swo, mask_n, offs_k, Og,
                          IS_FP32, ACC_FP64, UPCAST_DOT, BLOCK_K)

    d_off = (n_idx * sdn + ih * sdh + iw * sdw)[:, None] + ((grp * Cg + offs_n) * sdc)[None, :]
    tl.store(dx_ptr + d_off, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.autotune(configs=_WGRAD.configs, key=["P", "Og", "Cg", "KH", "KW", "SPLIT_K", "IS_FP32", "ACC_FP64"],
                 prune_configs_by=_WGRAD.prune)
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

    # rows: out channels, columns: in channels (of the group)
    offs_m, offs_n, mask_m, mask_n = tile_offsets(pid_m, pid_n, Og, Cg, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)                          # [BLOCK_K] pixels
    g_ch = (grp * Og + offs_m) * sgc                                     # [BLOCK_M]
    x_ch = (grp * Cg + offs_n) * sxc                                     # [BLOCK_N]

    acc = acc_zeros(BLOCK_M, BLOCK_N, ACC_FP64)
    k_begin = s.to(tl.int64) * CHUNK
    k_end = tl.minimum(k_begin + CHUNK, P)
    for k0 in range(k_begin, k_end, BLOCK_K):
        m = k0 + offs_k
        k_ok = m < k_end
        n_idx, oh, ow = _pixels(m, OH, OW)
        ih = oh * stride_h - pad_h + i * dil_h
        iw = ow * stride_w - pad_w + j * dil_w
        x_ok = k_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(g_ptr + g_ch[:, None] + (n_idx * sgn + oh * sgh + ow * sgw)[None, :],
                    mask=mask_m[:, None] & k_ok[None, :], other=0.0)     # [BLOCK_M, BLOCK_K]
        b = tl.load(x_ptr + (n_idx * sxn + ih * sxh + iw * sxw)[:, None] + x_ch[None, :],
                    mask=x_ok[:, None] & mask_n[None, :], other=0.0)     # [BLOCK_K, BLOCK_N]
        acc = mma(a, b, acc, IS_FP32, ACC_FP64, UPCAST_DOT)

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


def _dims(x, w, out):
    """(N, C, H, W), (O, Cg, KH, KW), (OH, OW): the sizes of a conv's input, weight and output (or of
    their gradients)."""
    return tuple(x.shape), tuple(w.shape), tuple(out.shape[2:])


def _geom(stride, padding, dilation):
    """The kernels' stride_h, stride_w, pad_h, pad_w, dil_h, dil_w (padding: [top, left, bottom, right])."""
    return stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1]


def conv2d_fwd(x, w, bias, res, out, stride, padding, dilation, groups, act) -> None:
    """out = act(conv2d(x, w) + bias + residual); padding = [top, left, bottom, right]."""
    (N, C, H, W), (O, Cg, KH, KW), (OH, OW) = _dims(x, w, out)
    M = N * OH * OW
    geom = _geom(stride, padding, dilation)
    tail = dict(HAS_BIAS=bias is not None, HAS_RES=res is not None, ACT=act)
    bias_arg = bias if bias is not None else out
    res_arg = res if res is not None else out
    if fwd_kernel(C, O, Cg, groups) is _conv2d_dw_fwd_kernel:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(C, meta["BLOCK_C"]))  # noqa: E731
        _conv2d_dw_fwd_kernel[grid](
            x, w, bias_arg, res_arg, out, M, C, H, W, OH, OW, KH, KW, *geom,
            *_s(x), w.stride(0), w.stride(2), w.stride(3), *_s(res), *_s(out),
            ACC_FP64=x.dtype == torch.float64, **tail)
        return
    Og = O // groups
    grid = lambda meta: (groups * triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(Og, meta["BLOCK_N"]),)  # noqa: E731
    _conv2d_fwd_kernel[grid](
        x, w, bias_arg, res_arg, out, M, H, W, OH, OW, Cg, Og, KH, KW, groups, *geom,
        *_s(x), *_s(w), *_s(res), *_s(out), **tail, **_flags(x))


def is_depthwise(C: int, Cg: int, groups: int) -> bool:
    """True when the backward runs the direct depthwise kernels: groups == C with one input channel per
    group (O = C * multiplier)."""
    return groups == C and Cg == 1


# The kernel each entry point launches (the entry points below dispatch on these; pyimgcls.explain
# reports them through the backend's plan_* functions).
def fwd_kernel(C: int, O: int, Cg: int, groups: int):
    """conv2d_fwd: the direct depthwise kernel (groups == C == O) or the implicit GEMM."""
    return _conv2d_dw_fwd_kernel if groups == C and O == C and Cg == 1 else _conv2d_fwd_kernel


def bwd_data_kernel(C: int, Cg: int, groups: int):
    return _conv2d_depthwise_dgrad_kernel if is_depthwise(C, Cg, groups) else _conv2d_bwd_data_kernel


def bwd_weight_kernel(C: int, Cg: int, groups: int):
    return _conv2d_depthwise_wgrad_kernel if is_depthwise(C, Cg, groups) else _conv2d_bwd_weight_kernel


def conv2d_bwd_data(gp, w, dx, stride, padding, dilation, groups) -> None:
    """dx = conv2d's input gradient for the output gradient gp (every element of dx written)."""
    (N, C, H, W), (O, Cg, KH, KW), (OH, OW) = _dims(dx, w, gp)
    if bwd_data_kernel(C, Cg, groups) is _conv2d_depthwise_dgrad_kernel:
        M = N * H * W
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(C, meta["BLOCK_C"]))  # noqa: E731
        _conv2d_depthwise_dgrad_kernel[grid](
            gp, w, dx, M, C, O // C, H, W, OH, OW, KH, KW, *_geom(stride, padding, dilation),
            *_s(gp), w.stride(0), w.stride(2), w.stride(3), *_s(dx), ACC_FP64=dx.dtype == torch.float64)
        return
    Og = O // groups
    M = N * H * W
    grid = lambda meta: (groups * triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(Cg, meta["BLOCK_N"]),)  # noqa: E731
    _conv2d_bwd_data_kernel[grid](
        gp, w, dx, M, H, W, OH, OW, Cg, Og, KH, KW, groups, *_geom(stride, padding, dilation),
        *_s(gp), *_s(w), *_s(dx), **_flags(gp))


def _split_k(tiles: int, P: int, device: torch.device) -> int:
    """K splits for wgrad so that small weight grids still fill the GPU (1 under the interpreter)."""
    if INTERPRET or device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = triton.cdiv(2 * sms, max(tiles, 1))
    return max(1, min(want, 32, triton.cdiv(P, 1024)))


def _depthwise_splits(O: int, taps: int, P: int, device: torch.device) -> int:
    """Pixel splits of the depthwise wgrad: ~8 programs per SM in all (channel tiles of 32 counted), each
    split >= 256 pixels so the per-program tree sum stays small against the loop, <= 256 splits."""
    programs = triton.cdiv(O, 32) * taps
    return max(1, min(triton.cdiv(8 * common.sm_count(device), programs), P // 256, 256))


def conv2d_bwd_weight(gp, x, dw, stride, padding, dilation, groups) -> None:
    """dw (contiguous) = conv2d's weight gradient for the output gradient gp."""
    (N, C, H, W), (O, Cg, KH, KW), (OH, OW) = _dims(x, dw, gp)
    if bwd_weight_kernel(C, Cg, groups) is _conv2d_depthwise_wgrad_kernel:
        P = N * OH * OW
        split = _depthwise_splits(O, KH * KW, P, x.device)
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        dst = dw if split == 1 else torch.empty((split, O, KH * KW), dtype=acc_dtype, device=x.device)
        grid = lambda meta: (triton.cdiv(O, meta["BLOCK_C"]), KH * KW, split)  # noqa: E731
        _conv2d_depthwise_wgrad_kernel[grid](
            gp, x, dst, P, O, O // C, H, W, OH, OW, KH, KW, triton.cdiv(P, split),
            *_geom(stride, padding, dilation), *_s(gp), *_s(x), ACC_FP64=x.dtype == torch.float64)
        if split > 1:
            common.split_reduce(dst, dw, dw.numel(), split)
        return
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
        gp, x, dst, P, H, W, OH, OW, Cg, Og, KH, KW, groups, O, chunk, *_geom(stride, padding, dilation),
        *_s(gp), *_s(x), SPLIT_K=split, **_flags(x))
    if split > 1:
        common.split_reduce(dst, dw, dw.numel(), split)


def conv2d_bias_act_bwd(grad, out, grad_pre, grad_bias, act) -> None:
    """grad_pre = grad * act'(out) (when act != 0); grad_bias = per-channel sum. grad, out and grad_pre
    share strides; the spatial dims must be collapsible (stride_h == W * stride_w)."""
    N, O, OH, OW = grad.shape
    common.bias_act_bwd(grad, out, grad_pre, grad_bias, act, N, O, OH * OW, grad.stride(0), grad.stride(1),
                        grad.stride(3))
