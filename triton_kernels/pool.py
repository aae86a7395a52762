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
in the same order as ATen's CPU scatter. Adaptive average pooling's forward and backward are one
kernel: the same gather with the two planes' roles swapped. Accumulation is fp32 (fp64 for float64
inputs); values are upcast on load, which also keeps bfloat16 correct under the interpreter (numpy
has no bfloat16).
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
def _plane_tile(pid, C, P, W, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program pid's tile: BLOCK_P of the P positions of a plane W wide x BLOCK_C channels of one
    image, positions varying fastest over the programs. Returns (n, offs_c [BLOCK_C] int64, the
    positions' rows h and columns w [BLOCK_P] int64, mask_p, mask_c)."""
    num_pb = tl.cdiv(P, BLOCK_P)
    num_cb = tl.cdiv(C, BLOCK_C)
    pb = pid % num_pb
    rest = pid // num_pb
    cb = rest % num_cb
    n = (rest // num_cb).to(tl.int64)
    offs_p = pb.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = cb.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < P
    mask_c = offs_c < C
    return n, offs_c, offs_p // W, offs_p % W, mask_p, mask_c


@triton.jit
def _load_tap(base, h, w, stride_h, stride_w, ok, mask_c, other, acc_ty: tl.constexpr):
    """[BLOCK_P, BLOCK_C] values at rows h, columns w of the planes at base ([1, BLOCK_C] pointers),
    upcast to acc_ty; positions with ok false read ``other``."""
    return tl.load(base + (h * stride_h + w * stride_w)[:, None], mask=ok[:, None] & mask_c[None, :],
                   other=other).to(acc_ty)


@triton.jit
def _store_tile(ptr, val, n, offs_c, h, w, stride_n, stride_c, stride_h, stride_w, mask_p, mask_c):
    """ptr[n, c, h, w] = val [BLOCK_P, BLOCK_C], cast to ptr's dtype, in ptr's layout."""
    off = n * stride_n + offs_c[None, :] * stride_c + (h * stride_h + w * stride_w)[:, None]
    tl.store(ptr + off, val.to(ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


@triton.jit
def _covering(i, PAD, EXT, STRIDE, O):
    """Outputs [o0, o1) (of O) whose window of EXT inputs at stride STRIDE, padding PAD, contains input i."""
    o0 = tl.where(i + PAD < EXT, 0, (i + PAD - EXT) // STRIDE + 1)
    o1 = tl.minimum((i + PAD) // STRIDE + 1, O)
    return o0, o1


@triton.jit
def _adaptive_window(o, I, O):
    """Adaptive window of position o of O over I positions: [floor(o*I/O), ceil((o+1)*I/O)). With I and O
    swapped, the outputs whose windows contain input o."""
    return (o * I) // O, ((o + 1) * I + O - 1) // O


@triton.jit
def _adaptive_size(o, I, O):
    """Number of positions in _adaptive_window(o, I, O)."""
    return ((o + 1) * I + O - 1) // O - (o * I) // O


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
    n, offs_c, oh, ow, mask_p, mask_c = _plane_tile(tl.program_id(0), C, OH * OW, OW, BLOCK_P, BLOCK_C)
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
            v = _load_tap(x_base, ih, iw, stride_xh, stride_xw, ok, mask_c, float("-inf"), acc_ty)
            # tl.maximum would drop NaN: PyTorch's rule is "greater, or NaN" (NaN wins, last one kept).
            up = (v > best) | (v != v)
            best = tl.where(up, v, best)
            if WITH_IDX:
                arg = tl.where(up, (ih * W + iw)[:, None], arg)
    # 4. Store in the output's layout.
    _store_tile(y_ptr, best, n, offs_c, oh, ow, stride_yn, stride_yc, stride_yh, stride_yw, mask_p, mask_c)
    if WITH_IDX:
        _store_tile(idx_ptr, arg, n, offs_c, oh, ow, stride_yn, stride_yc, stride_yh, stride_yw, mask_p, mask_c)


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
    n, offs_c, ih, iw, mask_p, mask_c = _plane_tile(tl.program_id(0), C, H * W, W, BLOCK_P, BLOCK_C)
    # 2. Outputs whose (dilated, extent EKH) window covers ih: [ph0, ph1) — at most NOH of them.
    ph0, ph1 = _covering(ih, PH, EKH, SH, OH)
    pw0, pw1 = _covering(iw, PW, EKW, SW, OW)
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
    _store_tile(gx_ptr, acc, n, offs_c, ih, iw, stride_xn, stride_xc, stride_xh, stride_xw, mask_p, mask_c)


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
    n, offs_c, oh, ow, mask_p, mask_c = _plane_tile(tl.program_id(0), C, OH * OW, OW, BLOCK_P, BLOCK_C)
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
            acc += _load_tap(x_base, ih, iw, stride_xh, stride_xw, ok, mask_c, 0.0, acc_ty)
    # 2. Divide by ATen's divisor (override / padded window / in-bounds window).
    div = _avg_divisor(oh, ow, H, W, SH, SW, PH, PW, KH, KW, DIV, COUNT_PAD)
    div = tl.where(mask_p, div, 1).to(acc_ty)  # positions past the end may have a zero divisor
    _store_tile(y_ptr, acc / div[:, None], n, offs_c, oh, ow, stride_yn, stride_yc, stride_yh, stride_yw,
                mask_p, mask_c)


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
    n, offs_c, ih, iw, mask_p, mask_c = _plane_tile(tl.program_id(0), C, H * W, W, BLOCK_P, BLOCK_C)
    # 1. Outputs whose window [o*S - P, o*S - P + K) contains the input position.
    ph0, ph1 = _covering(ih, PH, KH, SH, OH)
    pw0, pw1 = _covering(iw, PW, KW, SW, OW)
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
            g = _load_tap(g_base, oh, ow, stride_gh, stride_gw, ok, mask_c, 0.0, acc_ty)
            div = _avg_divisor(oh, ow, H, W, SH, SW, PH, PW, KH, KW, DIV, COUNT_PAD).to(acc_ty)
            div = tl.where(ok, div, 1.0)  # masked-off outputs may have a zero divisor
            acc += g / div[:, None]
    _store_tile(gx_ptr, acc, n, offs_c, ih, iw, stride_xn, stride_xc, stride_xh, stride_xw, mask_p, mask_c)


# ----------------------------------------------------------------------------- adaptive average pooling
@triton.jit
def _adaptive_avg_pool2d_kernel(
    src_ptr, dst_ptr,
    C, H, W, OH, OW,
    stride_sn, stride_sc, stride_sh, stride_sw,
    stride_dn, stride_dc, stride_dh, stride_dw,
    MAX_H, MAX_W,
    BACKWARD: tl.constexpr, ACC_FP64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Forward (src x [SH, SW] = [H, W] -> dst y [DH, DW] = [OH, OW]) and backward (src gy [OH, OW] ->
    # dst gx [H, W]) are one gather: dst position d sums the src positions of _adaptive_window(d, S, D)
    # (at most MAX per axis) — the inputs of output d's window, or the outputs whose windows contain
    # input d. Forward divides the sum by its window's area; backward divides each gy by its output's.
    # H, W is the input plane in both directions, as in the other kernels; S / D name the plane read / written.
    if BACKWARD:
        SH, SW, DH, DW = OH, OW, H, W
    else:
        SH, SW, DH, DW = H, W, OH, OW
    n, offs_c, dh, dw, mask_p, mask_c = _plane_tile(tl.program_id(0), C, DH * DW, DW, BLOCK_P, BLOCK_C)
    h0, h1 = _adaptive_window(dh, SH, DH)
    w0, w1 = _adaptive_window(dw, SW, DW)
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    acc = tl.zeros((BLOCK_P, BLOCK_C), acc_ty)
    s_base = src_ptr + n * stride_sn + offs_c[None, :] * stride_sc
    for i in range(0, MAX_H):
        sh = h0 + i
        ok_h = (sh < h1) & mask_p
        if BACKWARD:
            area_h = _adaptive_size(sh, DH, SH)
        for j in range(0, MAX_W):
            sw = w0 + j
            ok = ok_h & (sw < w1)
            v = _load_tap(s_base, sh, sw, stride_sh, stride_sw, ok, mask_c, 0.0, acc_ty)
            if BACKWARD:
                area = tl.where(ok, area_h * _adaptive_size(sw, DW, SW), 1).to(acc_ty)
                v = v / area[:, None]
            acc += v
    if not BACKWARD:
        area = tl.where(mask_p, (h1 - h0) * (w1 - w0), 1).to(acc_ty)
        acc = acc / area[:, None]
    _store_tile(dst_ptr, acc, n, offs_c, dh, dw, stride_dn, stride_dc, stride_dh, stride_dw, mask_p, mask_c)


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


def _launch(kernel, inp, positions, *args, **meta):
    """kernel[grid](*args, **meta, tile meta-parameters): one program per tile of ``positions`` sites x
    channels of each image, tiles shaped for the layout of ``inp`` (x, or gx in the backward: the
    input-side tensor, whose dtype also picks the accumulator)."""
    N, C = inp.shape[:2]
    bp, bc, warps = _tile(inp, positions)
    kernel[(N * triton.cdiv(C, bc) * triton.cdiv(positions, bp),)](
        *args, **meta, ACC_FP64=inp.dtype == torch.float64, BLOCK_P=bp, BLOCK_C=bc, num_warps=warps)


def _cover(extent: int, stride: int) -> int:
    """Most outputs (stride ``stride``) whose window of ``extent`` inputs can contain one input."""
    return -(-extent // stride)


def max_pool2d_fwd(x, out, idx, kernel, stride, padding, dilation) -> None:
    """out (and idx when given) = max pooling of x [N, C, H, W]; x, out, idx share one layout."""
    N, C, H, W = x.shape
    OH, OW = out.shape[2:]
    _launch(_max_pool2d_fwd_kernel, x, OH * OW,
            x, out, idx if idx is not None else out, C, H, W, OH, OW, *x.stride(), *out.stride(),
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
            KH=kernel[0], KW=kernel[1], WITH_IDX=idx is not None)


def max_pool2d_bwd(grad, idx, gx, kernel, stride, padding, dilation) -> None:
    """gx [N, C, H, W] = adjoint of max pooling; grad, idx, gx share one layout."""
    N, C, H, W = gx.shape
    OH, OW = grad.shape[2:]
    ekh = (kernel[0] - 1) * dilation[0] + 1
    ekw = (kernel[1] - 1) * dilation[1] + 1
    _launch(_max_pool2d_bwd_kernel, gx, H * W,
            grad, idx, gx, C, H, W, OH, OW, *grad.stride(), *gx.stride(),
            stride[0], stride[1], padding[0], padding[1], ekh, ekw,
            NOH=_cover(ekh, stride[0]), NOW=_cover(ekw, stride[1]))


def avg_pool2d_fwd(x, out, kernel, stride, padding, count_include_pad, divisor) -> None:
    """out = average pooling of x; ``divisor`` 0 means no divisor_override."""
    N, C, H, W = x.shape
    OH, OW = out.shape[2:]
    _launch(_avg_pool2d_fwd_kernel, x, OH * OW,
            x, out, C, H, W, OH, OW, *x.stride(), *out.stride(), stride[0], stride[1], padding[0], padding[1],
            divisor, KH=kernel[0], KW=kernel[1], COUNT_PAD=bool(count_include_pad))


def avg_pool2d_bwd(grad, gx, kernel, stride, padding, count_include_pad, divisor) -> None:
    N, C, H, W = gx.shape
    OH, OW = grad.shape[2:]
    _launch(_avg_pool2d_bwd_kernel, gx, H * W,
            grad, gx, C, H, W, OH, OW, *grad.stride(), *gx.stride(),
            stride[0], stride[1], padding[0], padding[1], divisor, kernel[0], kernel[1],
            NOH=_cover(kernel[0], stride[0]), NOW=_cover(kernel[1], stride[1]), COUNT_PAD=bool(count_include_pad))


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
    _launch(_adaptive_avg_pool2d_kernel, x, OH * OW,
            x, out, C, H, W, OH, OW, *x.stride(), *out.stride(), _max_window(H, OH), _max_window(W, OW),
            BACKWARD=False)


def adaptive_avg_pool2d_bwd(grad, gx) -> None:
    N, C, H, W = gx.shape
    OH, OW = grad.shape[2:]
    _launch(_adaptive_avg_pool2d_kernel, gx, H * W,
            grad, gx, C, H, W, OH, OW, *grad.stride(), *gx.stride(), _max_window(OH, H), _max_window(OW, W),
            BACKWARD=True)
