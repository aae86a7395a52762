"""Pooling family in Triton: max, average and adaptive average pooling, forward and backward.

What is computed (per (n, c) plane; the semantics are ATen's, see pyimgcls/ops/pool.py):
  max fwd:       y = max over the window (padding = -inf), idx = flat ih*W+iw of the maximum;
                 row-major scan, a value wins when it is > the running max or NaN.
  max bwd:       gx[i] = sum of gy[o] over outputs o whose window contains i and idx[o] == i.
  avg fwd / bwd: y = window sum / divisor;  gx[i] = sum over windows containing i of gy[o] / divisor(o).
  adaptive:      windows [floor(o*I/O), ceil((o+1)*I/O)); 1x1 is a dedicated global-mean reduction.

Algorithm: every kernel works on a [BLOCK_P positions x BLOCK_C channels] tile addressed through
the four element strides of NCHW or NHWC storage; Triton specialises the unit stride, so the tile is
loaded coalesced along W (NCHW) or along C (NHWC). The host picks the tile shape per layout.
Forward kernels walk the window with a compile-time unrolled (kh, kw) loop (adaptive: a runtime loop
bounded by the largest window). Backward kernels are gathers over input positions: each input
element visits the few outputs whose windows can contain it (at most ceil(k_eff / s) per axis) in
row-major output order and sums their contributions in registers — no atomics, deterministic, and
in the same order as ATen's CPU scatter. Accumulation is fp32 (fp64 for float64 inputs); values are
upcast on load, which also keeps bfloat16 correct under the interpreter (numpy has no bfloat16).
NaN: Triton's max drops NaN, so the update test is written out: (v > best) | (v != v).

Cost (S = element size, P outputs, Q inputs, K = kh*kw): max fwd P*K compares, bytes S*(Q + P)
(+ 8P indices); max bwd bytes S*(P + Q) + 8P (each idx/gy element is re-read by the <= ceil(k/s)^2
inputs that consider it, from cache); avg fwd P*K adds, S*(Q + P); global mean S*(Q + N*C).

Test: pytest tests/test_pool.py -k triton   Benchmark: python benchmarks/bench_pool.py
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._config import INTERPRET


# ----------------------------------------------------------------------------- shared tile helpers
@triton.jit
def _tile_coords(pid, C, P, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program id -> (n, offs_p [BLOCK_P] int64, offs_c [BLOCK_C] int64); positions vary fastest."""
    num_pb = tl.cdiv(P, BLOCK_P)
    num_cb = tl.cdiv(C, BLOCK_C)
    pb = pid % num_pb
    rest = pid // num_pb
    cb = rest % num_cb
    n = (rest // num_cb).to(tl.int64)
    offs_p = pb.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = cb.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    return n, offs_p, offs_c


# ----------------------------------------------------------------------------- max pooling
@triton.jit
def _max_pool2d_fwd_kernel(
    x_ptr, y_ptr, idx_ptr,
    C, H, W, OH, OW,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_yn, stride_yc, stride_yh, stride_yw,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, WITH_IDX: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # 1. Tile: BLOCK_P output positions of one image x BLOCK_C channels.
    n, offs_p, offs_c = _tile_coords(tl.program_id(0), C, OH * OW, BLOCK_P, BLOCK_C)
    mask_p = offs_p < OH * OW
    mask_c = offs_c < C
    oh = offs_p // OW
    ow = offs_p % OW
    hs = oh * SH - PH
    ws = ow * SW - PW
    # 2. ATen's initial argmax: the first in-bounds lattice position of the window.
    h0 = tl.where(hs < 0, hs + ((DH - 1 - hs) // DH) * DH, hs)
    w0 = tl.where(ws < 0, ws + ((DW - 1 - ws) // DW) * DW, ws)
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    best = tl.full((BLOCK_P, BLOCK_C), float("-inf"), acc_ty)                      # [P, C]
    arg = tl.broadcast_to((h0 * W + w0)[:, None], (BLOCK_P, BLOCK_C))              # [P, C] int64
    x_base = x_ptr + n * stride_xn + offs_c[None, :] * stride_xc
    # 3. Row-major window scan; out-of-bounds taps read -inf, which never wins (strict >).
    for kh in tl.static_range(KH):
        ih = hs + kh * DH
        ok_h = (ih >= 0) & (ih < H) & mask_p
        for kw in tl.static_range(KW):
            iw = ws + kw * DW
            ok = ok_h & (iw >= 0) & (iw < W)
            v = tl.load(x_base + (ih * stride_xh + iw * stride_xw)[:, None],
                        mask=ok[:, None] & mask_c[None, :], other=float("-inf")).to(acc_ty)
            # tl.maximum would drop NaN: PyTorch's rule is "greater, or NaN" (NaN wins, last one kept).
            up = (v > best) | (v != v)
            best = tl.where(up, v, best)
            if WITH_IDX:
                arg = tl.where(up, (ih * W + iw)[:, None], arg)
    # 4. Store in the output's layout.
    out_off = n * stride_yn + offs_c[None, :] * stride_yc + (oh * stride_yh + ow * stride_yw)[:, None]
    mask = mask_p[:, None] & mask_c[None, :]
    tl.store(y_ptr + out_off, best.to(y_ptr.dtype.element_ty), mask=mask)
    if WITH_IDX:
        tl.store(idx_ptr + out_off, arg, mask=mask)


@triton.jit
def _max_pool2d_bwd_kernel(
    gy_ptr, idx_ptr, gx_ptr,
    C, H, W, OH, OW,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    SH, SW, PH, PW, EKH, EKW,
    NOH: tl.constexpr, NOW: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # 1. Tile: BLOCK_P input positions x BLOCK_C channels; gather from the outputs that can see them.
    n, offs_p, offs_c = _tile_coords(tl.program_id(0), C, H * W, BLOCK_P, BLOCK_C)
    mask_p = offs_p < H * W
    mask_c = offs_c < C
    ih = offs_p // W
    iw = offs_p % W
    # 2. Outputs whose (dilated, extent EKH) window covers ih: [ph0, ph1) — at most NOH of them.
    ph0 = tl.where(ih + PH < EKH, 0, (ih + PH - EKH) // SH + 1)
    ph1 = tl.minimum((ih + PH) // SH + 1, OH)
    pw0 = tl.where(iw + PW < EKW, 0, (iw + PW - EKW) // SW + 1)
    pw1 = tl.minimum((iw + PW) // SW + 1, OW)
    me = (ih * W + iw)[:, None]
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    acc = tl.zeros((BLOCK_P, BLOCK_C), acc_ty)
    g_base = n * stride_gn + offs_c[None, :] * stride_gc
    # 3. Row-major over outputs (ATen's scatter order): add gy where that output's argmax is me.
    for i in tl.static_range(NOH):
        oh = ph0 + i
        ok_h = (oh < ph1) & mask_p
        for j in tl.static_range(NOW):
            ow = pw0 + j
            ok = (ok_h & (ow < pw1))[:, None] & mask_c[None, :]
            off = g_base + (oh * stride_gh + ow * stride_gw)[:, None]
            arg = tl.load(idx_ptr + off, mask=ok, other=-1)
            g = tl.load(gy_ptr + off, mask=ok & (arg == me), other=0.0).to(acc_ty)
            acc += g
    out_off = n * stride_xn + offs_c[None, :] * stride_xc + (ih * stride_xh + iw * stride_xw)[:, None]
    tl.store(gx_ptr + out_off, acc.to(gx_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


# ----------------------------------------------------------------------------- average pooling
@triton.jit
def _avg_divisor(oh, ow, H, W, SH, SW, PH, PW, KH, KW, DIV, COUNT_PAD: tl.constexpr):
    """ATen's avg_pool2d divisor for outputs (oh, ow) — [BLOCK_P] int64."""
    hs = oh * SH - PH
    ws = ow * SW - PW
    he = tl.minimum(hs + KH, H + PH)
    we = tl.minimum(ws + KW, W + PW)
    if COUNT_PAD:
        d = (he - hs) * (we - ws)
    else:
        d = (tl.minimum(he, H) - tl.maximum(hs, 0)) * (tl.minimum(we, W) - tl.maximum(ws, 0))
    return tl.where(DIV != 0, DIV, d)


@triton.jit
def _avg_pool2d_fwd_kernel(
    x_ptr, y_ptr,
    C, H, W, OH, OW,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_yn, stride_yc, stride_yh, stride_yw,
    SH, SW, PH, PW, DIV,
    KH: tl.constexpr, KW: tl.constexpr, COUNT_PAD: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, offs_p, offs_c = _tile_coords(tl.program_id(0), C, OH * OW, BLOCK_P, BLOCK_C)
    mask_p = offs_p < OH * OW
    mask_c = offs_c < C
    oh = offs_p // OW
    ow = offs_p % OW
    hs = oh * SH - PH
    ws = ow * SW - PW
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    acc = tl.zeros((BLOCK_P, BLOCK_C), acc_ty)                                      # [P, C]
    x_base = x_ptr + n * stride_xn + offs_c[None, :] * stride_xc
    # 1. Window sum over in-bounds taps (padding contributes zero).
    for kh in tl.static_range(KH):
        ih = hs + kh
        ok_h = (ih >= 0) & (ih < H) & mask_p
        for kw in tl.static_range(KW):
            iw = ws + kw
            ok = ok_h & (iw >= 0) & (iw < W)
            acc += tl.load(x_base + (ih * stride_xh + iw * stride_xw)[:, None],
                           mask=ok[:, None] & mask_c[None, :], other=0.0).to(acc_ty)
    # 2. Divide by ATen's divisor (override / padded window / in-bounds window).
    div = _avg_divisor(oh, ow, H, W, SH, SW, PH, PW, KH, KW, DIV, COUNT_PAD)
    div = tl.where(mask_p, div, 1).to(acc_ty)  # positions past the end may have a zero divisor
    out = acc / div[:, None]
    out_off = n * stride_yn + offs_c[None, :] * stride_yc + (oh * stride_yh + ow * stride_yw)[:, None]
    tl.store(y_ptr + out_off, out.to(y_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


@triton.jit
def _avg_pool2d_bwd_kernel(
    gy_ptr, gx_ptr,
    C, H, W, OH, OW,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    SH, SW, PH, PW, DIV, KH, KW,
    NOH: tl.constexpr, NOW: tl.constexpr, COUNT_PAD: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, offs_p, offs_c = _tile_coords(tl.program_id(0), C, H * W, BLOCK_P, BLOCK_C)
    mask_p = offs_p < H * W
    mask_c = offs_c < C
    ih = offs_p // W
    iw = offs_p % W
    # 1. Outputs whose window [o*S - P, o*S - P + K) contains the input position.
    ph0 = tl.where(ih + PH < KH, 0, (ih + PH - KH) // SH + 1)
    ph1 = tl.minimum((ih + PH) // SH + 1, OH)
    pw0 = tl.where(iw + PW < KW, 0, (iw + PW - KW) // SW + 1)
    pw1 = tl.minimum((iw + PW) // SW + 1, OW)
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    acc = tl.zeros((BLOCK_P, BLOCK_C), acc_ty)
    g_base = gy_ptr + n * stride_gn + offs_c[None, :] * stride_gc
    # 2. Gather gy / divisor in row-major output order.
    for i in tl.static_range(NOH):
        oh = ph0 + i
        ok_h = (oh < ph1) & mask_p
        for j in tl.static_range(NOW):
            ow = pw0 + j
            ok = ok_h & (ow < pw1)
            g = tl.load(g_base + (oh * stride_gh + ow * stride_gw)[:, None],
                        mask=ok[:, None] & mask_c[None, :], other=0.0).to(acc_ty)
            div = _avg_divisor(oh, ow, H, W, SH, SW, PH, PW, KH, KW, DIV, COUNT_PAD).to(acc_ty)
            div = tl.where(ok, div, 1.0)  # masked-off outputs may have a zero divisor
            acc += g / div[:, None]
    out_off = n * stride_xn + offs_c[None, :] * stride_xc + (ih * stride_xh + iw * stride_xw)[:, None]
    tl.store(gx_ptr + out_off, acc.to(gx_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


# ----------------------------------------------------------------------------- adaptive average pooling
@triton.jit
def _adaptive_avg_pool2d_fwd_kernel(
    x_ptr, y_ptr,
    C, H, W, OH, OW,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_yn, stride_yc, stride_yh, stride_yw,
    MAX_KH, MAX_KW,
    ACC_FP64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, offs_p, offs_c = _tile_coords(tl.program_id(0), C, OH * OW, BLOCK_P, BLOCK_C)
    mask_p = offs_p < OH * OW
    mask_c = offs_c < C
    oh = offs_p // OW
    ow = offs_p % OW
    # 1. Window [floor(o*I/O), ceil((o+1)*I/O)) per axis; at most MAX_K taps.
    h0 = (oh * H) // OH
    h1 = ((oh + 1) * H + OH - 1) // OH
    w0 = (ow * W) // OW
    w1 = ((ow + 1) * W + OW - 1) // OW
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    acc = tl.zeros((BLOCK_P, BLOCK_C), acc_ty)
    x_base = x_ptr + n * stride_xn + offs_c[None, :] * stride_xc
    for i in range(0, MAX_KH):
        ih = h0 + i
        ok_h = (ih < h1) & mask_p
        for j in range(0, MAX_KW):
            iw = w0 + j
            ok = ok_h & (iw < w1)
            acc += tl.load(x_base + (ih * stride_xh + iw * stride_xw)[:, None],
                           mask=ok[:, None] & mask_c[None, :], other=0.0).to(acc_ty)
    area = tl.where(mask_p, (h1 - h0) * (w1 - w0), 1).to(acc_ty)
    out = acc / area[:, None]
    out_off = n * stride_yn + offs_c[None, :] * stride_yc + (oh * stride_yh + ow * stride_yw)[:, None]
    tl.store(y_ptr + out_off, out.to(y_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


@triton.jit
def _global_avg_pool2d_fwd_kernel(
    x_ptr, y_ptr,
    C, HW,
    stride_xn, stride_xc, stride_xp,
    stride_yn, stride_yc,
    ACC_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    # One program reduces BLOCK_C planes of one image. Both layouts store a plane's H*W positions
    # at one stride (W contiguous rows in NCHW, C-strided pixels in NHWC), so p = h*W + w is a
    # single strided axis: stride_xp.
    pid = tl.program_id(0)
    num_cb = tl.cdiv(C, BLOCK_C)
    n = (pid // num_cb).to(tl.int64)
    offs_c = (pid % num_cb).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_hw = tl.arange(0, BLOCK_HW).to(tl.int64)
    mask_c = offs_c < C
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    acc = tl.zeros((BLOCK_C, BLOCK_HW), acc_ty)                                     # [C, HW]
    x_base = x_ptr + n * stride_xn + offs_c[:, None] * stride_xc
    for p0 in range(0, HW, BLOCK_HW):
        p = p0 + offs_hw
        acc += tl.load(x_base + p[None, :] * stride_xp, mask=mask_c[:, None] & (p < HW)[None, :],
                       other=0.0).to(acc_ty)
    # Fixed-shape tree over the HW lanes: deterministic. HW == 0 gives 0/0 = NaN, as ATen's mean.
    total = tl.sum(acc, axis=1) / HW
    tl.store(y_ptr + n * stride_yn + offs_c * stride_yc, total.to(y_ptr.dtype.element_ty), mask=mask_c)


@triton.jit
def _adaptive_avg_pool2d_bwd_kernel(
    gy_ptr, gx_ptr,
    C, H, W, OH, OW,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    MAX_OH, MAX_OW,
    ACC_FP64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, offs_p, offs_c = _tile_coords(tl.program_id(0), C, H * W, BLOCK_P, BLOCK_C)
    mask_p = offs_p < H * W
    mask_c = offs_c < C
    ih = offs_p // W
    iw = offs_p % W
    # 1. Outputs whose adaptive window contains the input: [floor(i*O/I), ceil((i+1)*O/I)).
    ph0 = (ih * OH) // H
    ph1 = ((ih + 1) * OH + H - 1) // H
    pw0 = (iw * OW) // W
    pw1 = ((iw + 1) * OW + W - 1) // W
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    acc = tl.zeros((BLOCK_P, BLOCK_C), acc_ty)
    g_base = gy_ptr + n * stride_gn + offs_c[None, :] * stride_gc
    for i in range(0, MAX_OH):
        oh = ph0 + i
        ok_h = (oh < ph1) & mask_p
        area_h = ((oh + 1) * H + OH - 1) // OH - (oh * H) // OH
        for j in range(0, MAX_OW):
            ow = pw0 + j
            ok = ok_h & (ow < pw1)
            g = tl.load(g_base + (oh * stride_gh + ow * stride_gw)[:, None],
                        mask=ok[:, None] & mask_c[None, :], other=0.0).to(acc_ty)
            area_w = ((ow + 1) * W + OW - 1) // OW - (ow * W) // OW
            area = tl.where(ok, area_h * area_w, 1).to(acc_ty)
            acc += g / area[:, None]
    out_off = n * stride_xn + offs_c[None, :] * stride_xc + (ih * stride_xh + iw * stride_xw)[:, None]
    tl.store(gx_ptr + out_off, acc.to(gx_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


# ----------------------------------------------------------------------------- host functions
def _tile(t: torch.Tensor, positions: int):
    """(BLOCK_P, BLOCK_C, num_warps) for a tile over ``positions`` spatial sites of ``t``'s layout."""
    C = t.shape[1]
    if t.stride(1) == 1 and C > 1:  # NHWC: channels are contiguous -> wide along C
        block_c = min(triton.next_power_of_2(C), 64)
        block_p = max(1, min(triton.next_power_of_2(positions), 1024 // block_c))
    else:                           # NCHW: positions are (mostly) contiguous -> wide along P
        block_p = min(triton.next_power_of_2(positions), 256)
        block_c = max(1, min(triton.next_power_of_2(C), 1024 // block_p, 4))
    if INTERPRET:
        # the interpreter runs each program as numpy ops: bigger tiles mean fewer Python iterations
        block_p = min(triton.next_power_of_2(positions), max(block_p, 64))
    return block_p, block_c, 4


def _grid(N, C, positions, block_p, block_c):
    return (N * triton.cdiv(C, block_c) * triton.cdiv(positions, block_p),)


def _cover(extent: int, stride: int) -> int:
    """Most outputs (stride ``stride``) whose window of ``extent`` inputs can contain one input."""
    return -(-extent // stride)


def max_pool2d_fwd(x, out, idx, kernel, stride, padding, dilation) -> None:
    """out (and idx when given) = max pooling of x [N, C, H, W]; x, out, idx share one layout."""
    N, C, H, W = x.shape
    OH, OW = out.shape[2:]
    bp, bc, warps = _tile(x, OH * OW)
    _max_pool2d_fwd_kernel[_grid(N, C, OH * OW, bp, bc)](
        x, out, idx if idx is not None else out,
        C, H, W, OH, OW, *x.stride(), *out.stride(),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        KH=kernel[0], KW=kernel[1], WITH_IDX=idx is not None, ACC_FP64=x.dtype == torch.float64,
        BLOCK_P=bp, BLOCK_C=bc, num_warps=warps,
    )


def max_pool2d_bwd(grad, idx, gx, kernel, stride, padding, dilation) -> None:
    """gx [N, C, H, W] = adjoint of max pooling; grad, idx, gx share one layout."""
    N, C, H, W = gx.shape
    OH, OW = grad.shape[2:]
    ekh = (kernel[0] - 1) * dilation[0] + 1
    ekw = (kernel[1] - 1) * dilation[1] + 1
    bp, bc, warps = _tile(gx, H * W)
    _max_pool2d_bwd_kernel[_grid(N, C, H * W, bp, bc)](
        grad, idx, gx,
        C, H, W, OH, OW, *grad.stride(), *gx.stride(),
        stride[0], stride[1], padding[0], padding[1], ekh, ekw,
        NOH=_cover(ekh, stride[0]), NOW=_cover(ekw, stride[1]), ACC_FP64=gx.dtype == torch.float64,
        BLOCK_P=bp, BLOCK_C=bc, num_warps=warps,
    )


def avg_pool2d_fwd(x, out, kernel, stride, padding, count_include_pad, divisor) -> None:
    """out = average pooling of x; ``divisor`` 0 means no divisor_override."""
    N, C, H, W = x.shape
    OH, OW = out.shape[2:]
    bp, bc, warps = _tile(x, OH * OW)
    _avg_pool2d_fwd_kernel[_grid(N, C, OH * OW, bp, bc)](
        x, out, C, H, W, OH, OW, *x.stride(), *out.stride(),
        stride[0], stride[1], padding[0], padding[1], divisor,
        KH=kernel[0], KW=kernel[1], COUNT_PAD=bool(count_include_pad), ACC_FP64=x.dtype == torch.float64,
        BLOCK_P=bp, BLOCK_C=bc, num_warps=warps,
    )


def avg_pool2d_bwd(grad, gx, kernel, stride, padding, count_include_pad, divisor) -> None:
    N, C, H, W = gx.shape
    OH, OW = grad.shape[2:]
    bp, bc, warps = _tile(gx, H * W)
    _avg_pool2d_bwd_kernel[_grid(N, C, H * W, bp, bc)](
        grad, gx, C, H, W, OH, OW, *grad.stride(), *gx.stride(),
        stride[0], stride[1], padding[0], padding[1], divisor, kernel[0], kernel[1],
        NOH=_cover(kernel[0], stride[0]), NOW=_cover(kernel[1], stride[1]),
        COUNT_PAD=bool(count_include_pad), ACC_FP64=gx.dtype == torch.float64,
        BLOCK_P=bp, BLOCK_C=bc, num_warps=warps,
    )


def _max_window(inp: int, out: int) -> int:
    """Largest adaptive window [floor(o*I/O), ceil((o+1)*I/O)) over o < out."""
    return max(((o + 1) * inp + out - 1) // out - (o * inp) // out for o in range(out))


def adaptive_avg_pool2d_fwd(x, out) -> None:
    N, C, H, W = x.shape
    OH, OW = out.shape[2:]
    acc64 = x.dtype == torch.float64
    if OH == 1 and OW == 1:
        if x.stride(1) == 1 and C > 1:  # NHWC: wide along C, short along HW
            bc, bhw = min(triton.next_power_of_2(C), 64), 16
        else:
            bc, bhw = 4, min(max(triton.next_power_of_2(H * W), 16), 256)
        _global_avg_pool2d_fwd_kernel[(N * triton.cdiv(C, bc),)](
            x, out, C, H * W, x.stride(0), x.stride(1), x.stride(3), out.stride(0), out.stride(1),
            ACC_FP64=acc64, BLOCK_C=bc, BLOCK_HW=bhw, num_warps=4,
        )
        return
    bp, bc, warps = _tile(x, OH * OW)
    _adaptive_avg_pool2d_fwd_kernel[_grid(N, C, OH * OW, bp, bc)](
        x, out, C, H, W, OH, OW, *x.stride(), *out.stride(), _max_window(H, OH), _max_window(W, OW),
        ACC_FP64=acc64, BLOCK_P=bp, BLOCK_C=bc, num_warps=warps,
    )


def adaptive_avg_pool2d_bwd(grad, gx) -> None:
    N, C, H, W = gx.shape
    OH, OW = grad.shape[2:]
    bp, bc, warps = _tile(gx, H * W)
    _adaptive_avg_pool2d_bwd_kernel[_grid(N, C, H * W, bp, bc)](
        grad, gx, C, H, W, OH, OW, *grad.stride(), *gx.stride(), _max_window(OH, H), _max_window(OW, W),
        ACC_FP64=gx.dtype == torch.float64, BLOCK_P=bp, BLOCK_C=bc, num_warps=warps,
    )
