"""Quantised (int8) family in Triton: the integer GEMM with the requantisation epilogue, and the
uint8 im2col that turns a k x k convolution into it.

What is computed (semantics written once in csrc/cpu/quant.cpp, "Semantics"):
  acc[m, n] = sum_k (A[m, k] - a_zero) * W[n, k] + bias[n]            int32
  uint8 out: clamp(rne(clamp(float(acc) * mult[n], +-2^22)) + rne(clamp(float(R - rz) * res_mult, +-2^22))
                   + out_zero, qmin, qmax);  float out: act(float(acc) * mult[n]).

Algorithm: one [BLOCK_M x BLOCK_N] output tile per program, a K loop of tl.dot on int8 operands with
int32 accumulation (mma.sync s8 m16n8k32 on sm_80+). tl.dot wants both operands signed, so the
uint8 activations are shifted to int8 (a - 128, exact) and the shift is undone with the weight's
column sums: sum (a - a_zero) w = sum (a - 128) w + (128 - a_zero) * colsum[n].
rne is the magic-number add (v + 1.5 * 2^23) - 1.5 * 2^23, exact round-half-to-even in fp32 for
|v| <= 2^22 (the clamp): the float add lands on the integer grid (ulp 1 in [2^23, 2^24)).

Cost: 2 * M * N * K integer operations; bytes M * K + N * K + M * N (x4 for float out) (+ M * N
residual); im2col writes N * OH * OW * KH * KW * CG bytes.

Test: pytest tests/test_quant.py -k triton
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_MAGIC = 12582912.0      # 1.5 * 2^23
_CLAMP = 4194304.0       # 2^22
BLOCK_M, BLOCK_N, BLOCK_K = 32, 32, 32   # BLOCK_K 32: one m16n8k32 s8 MMA step


@triton.jit
def _rne(v):
    v = tl.minimum(tl.maximum(v, -4194304.0), 4194304.0)
    return ((v + 12582912.0) - 12582912.0).to(tl.int32)


@triton.jit
def _quant_gemm_fwd_kernel(a_ptr, w_ptr, colsum_ptr, bias_ptr, mult_ptr, res_ptr, out_ptr, M, N, K, lda, ldw, ldr,
                           ldo, a_zero, res_zero, res_mult, out_zero, qmin, qmax,
                           HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, FLOAT_OUT: tl.constexpr, ACT: tl.constexpr,
                           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)            # [BM] output rows
    rn = pid_n * BN + tl.arange(0, BN)            # [BN] output channels
    rk = tl.arange(0, BK)
    m_ok, n_ok = rm < M, rn < N
    acc = tl.zeros((BM, BN), dtype=tl.int32)
    for k0 in range(0, K, BK):
        k_ok = (k0 + rk) < K
        # a tile [BM, BK] uint8; out-of-range reads 128 (-> 0 after the shift)
        a = tl.load(a_ptr + rm[:, None] * lda + (k0 + rk)[None, :], mask=m_ok[:, None] & k_ok[None, :], other=128)
        a8 = (a.to(tl.int16) - 128).to(tl.int8)
        # w tile [BK, BN] int8 (W is [N, K] row-major: the transpose is read through the strides)
        w = tl.load(w_ptr + rn[None, :] * ldw + (k0 + rk)[:, None], mask=n_ok[None, :] & k_ok[:, None], other=0)
        acc += tl.dot(a8, w, out_dtype=tl.int32)
    colsum = tl.load(colsum_ptr + rn, mask=n_ok, other=0)
    acc += (128 - a_zero) * colsum[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0)[None, :]
    mult = tl.load(mult_ptr + rn, mask=n_ok, other=0.0)
    v = acc.to(tl.float32) * mult[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if FLOAT_OUT:
        if ACT == 1:
            v = tl.where(v < 0.0, 0.0, v)
        if ACT == 2:
            v = tl.where(v < 0.0, 0.0, tl.where(v > 6.0, 6.0, v))
        tl.store(out_ptr + rm[:, None] * ldo + rn[None, :], v, mask=mask)
    else:
        q = _rne(v) + out_zero
        if HAS_RES:
            r = tl.load(res_ptr + rm[:, None] * ldr + rn[None, :], mask=mask, other=0)
            q += _rne((r.to(tl.int32) - res_zero).to(tl.float32) * res_mult)
        q = tl.minimum(tl.maximum(q, qmin), qmax)
        tl.store(out_ptr + rm[:, None] * ldo + rn[None, :], q.to(tl.uint8), mask=mask)


def quant_gemm(a, a_zero, w, colsum, bias, mult, res, res_zero, res_mult, out_zero, qmin, qmax, act, out):
    """a uint8 [M, K] (unit column stride), w int8 [N, K] contiguous, colsum int32 [N]; fills out [M, N]."""
    M, K = a.shape
    N = w.shape[0]
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))
    dummy = colsum
    _quant_gemm_fwd_kernel[grid](
        a, w, colsum, bias if bias is not None else dummy, mult, res if res is not None else a, out, M, N, K,
        a.stride(0), w.stride(0), res.stride(0) if res is not None else 0, out.stride(0), a_zero, res_zero,
        float(res_mult), out_zero, qmin, qmax, HAS_BIAS=bias is not None, HAS_RES=res is not None,
        FLOAT_OUT=out.dtype == torch.float32, ACT=act, BM=BLOCK_M, BN=BLOCK_N, BK=BLOCK_K)


@triton.jit
def _quant_im2col_fwd_kernel(x_ptr, col_ptr, ROWS, WIDTH, H, W, sN, sC, sH, sW, c0, CG, KW, SH, SW, PH, PW, DH, DW,
                             OH, OW, pad, BR: tl.constexpr, BC: tl.constexpr):
    r = tl.program_id(0) * BR + tl.arange(0, BR)     # [BR] col rows = output pixels (n, oh, ow)
    c = tl.program_id(1) * BC + tl.arange(0, BC)     # [BC] col columns = (tap i, tap j, channel)
    n, oh, ow = r // (OH * OW), (r // OW) % OH, r % OW
    tap, ch = c // CG, c % CG
    i, j = tap // KW, tap % KW
    ih = oh[:, None] * SH - PH + i[None, :] * DH
    iw = ow[:, None] * SW - PW + j[None, :] * DW
    inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    ok = (r < ROWS)[:, None] & (c < WIDTH)[None, :]
    v = tl.load(x_ptr + n[:, None] * sN + (c0 + ch)[None, :] * sC + ih * sH + iw * sW, mask=ok & inside, other=pad)
    tl.store(col_ptr + r[:, None] * WIDTH + c[None, :], v, mask=ok)


def quant_im2col(x, c0, cg, kh, kw, stride, padding, dilation, oh, ow, pad, col):
    """col uint8 [N * OH * OW, KH * KW * CG] (contiguous) from x uint8 [N, C, H, W] (any strides)."""
    N, _, H, W = x.shape
    rows, width = N * oh * ow, kh * kw * cg
    BR, BC = 32, 32
    grid = (triton.cdiv(rows, BR), triton.cdiv(width, BC))
    _quant_im2col_fwd_kernel[grid](x, col, rows, width, H, W, *x.stride(), c0, cg, kw, *stride, *padding, *dilation,
                                   oh, ow, pad, BR=BR, BC=BC)


@triton.jit
def _quant_max_pool2d_fwd_kernel(x_ptr, out_ptr, PIX, C, H, W, sN, sC, sH, sW, KH: tl.constexpr, KW: tl.constexpr,
                                 SH, SW, PH, PW, DH, DW, OH, OW, BP: tl.constexpr, BC: tl.constexpr):
    p = tl.program_id(0) * BP + tl.arange(0, BP)     # [BP] output pixels (n, oh, ow)
    c = tl.program_id(1) * BC + tl.arange(0, BC)     # [BC] channels
    n, oh, ow = p // (OH * OW), (p // OW) % OH, p % OW
    ok = (p < PIX)[:, None] & (c < C)[None, :]
    best = tl.zeros((BP, BC), dtype=tl.int32)        # 0 is the least uint8; every window has a tap inside
    for i in tl.static_range(KH):
        for j in tl.static_range(KW):
            ih = oh * SH - PH + i * DH
            iw = ow * SW - PW + j * DW
            inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            v = tl.load(x_ptr + (n * sN + ih * sH + iw * sW)[:, None] + c[None, :] * sC,
                        mask=ok & inside[:, None], other=0)
            best = tl.maximum(best, v.to(tl.int32))
    tl.store(out_ptr + p[:, None] * C + c[None, :], best.to(tl.uint8), mask=ok)


def quant_max_pool2d(x, kernel, stride, padding, dilation, oh, ow, out):
    N, C, H, W = x.shape
    pix = N * oh * ow
    BP, BC = 32, 32
    _quant_max_pool2d_fwd_kernel[(triton.cdiv(pix, BP), triton.cdiv(C, BC))](
        x, out, pix, C, H, W, *x.stride(), kernel[0], kernel[1], *stride, *padding, *dilation, oh, ow, BP=BP, BC=BC)


@triton.jit
def _quant_adaptive_avg_pool2d_fwd_kernel(x_ptr, mult_ptr, out_ptr, PIX, C, H, W, sN, sC, sH, sW, OH, OW, in_zero,
                                          out_zero, MAXH, MAXW, BP: tl.constexpr, BC: tl.constexpr):
    p = tl.program_id(0) * BP + tl.arange(0, BP)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    n, oh, ow = p // (OH * OW), (p // OW) % OH, p % OW
    h0, h1 = (oh * H) // OH, ((oh + 1) * H + OH - 1) // OH
    w0, w1 = (ow * W) // OW, ((ow + 1) * W + OW - 1) // OW
    ok = (p < PIX)[:, None] & (c < C)[None, :]
    s = tl.zeros((BP, BC), dtype=tl.int32)
    for dh in range(0, MAXH):
        for dw in range(0, MAXW):
            ih, iw = h0 + dh, w0 + dw
            inside = (ih < h1) & (iw < w1)
            v = tl.load(x_ptr + (n * sN + ih * sH + iw * sW)[:, None] + c[None, :] * sC,
                        mask=ok & inside[:, None], other=0)
            s += v.to(tl.int32)
    count = (h1 - h0) * (w1 - w0)
    s -= (count * in_zero)[:, None]
    # mult_ptr[count] = float32(ratio / count), rounded once from float64 on the host, as the CPU
    # kernel and the reference compute it (a Python float argument would arrive as fp32)
    mult = tl.load(mult_ptr + count, mask=p < PIX, other=0.0)
    q = _rne(s.to(tl.float32) * mult[:, None]) + out_zero
    q = tl.minimum(tl.maximum(q, 0), 255)
    tl.store(out_ptr + p[:, None] * C + c[None, :], q.to(tl.uint8), mask=ok)


def quant_adaptive_avg_pool2d(x, oh, ow, in_zero, ratio, out_zero, out):
    N, C, H, W = x.shape
    pix = N * oh * ow
    maxh = max(-(-(i + 1) * H // oh) - i * H // oh for i in range(oh))
    maxw = max(-(-(j + 1) * W // ow) - j * W // ow for j in range(ow))
    mult = torch.tensor([0.0] + [ratio / c for c in range(1, maxh * maxw + 1)], dtype=torch.float64)
    mult = mult.to(device=x.device, dtype=torch.float32)
    BP, BC = 16, 32
    _quant_adaptive_avg_pool2d_fwd_kernel[(triton.cdiv(pix, BP), triton.cdiv(C, BC))](
        x, mult, out, pix, C, H, W, *x.stride(), oh, ow, in_zero, out_zero, maxh, maxw, BP=BP, BC=BC)


@triton.jit
def _quant_quantize_fwd_kernel(x_ptr, out_ptr, n, inv_scale, zero_point, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    v = tl.load(x_ptr + i, mask=ok, other=0.0) * inv_scale
    v = tl.where(v != v, 0.0, tl.minimum(tl.maximum(v, -256.0), 512.0))     # NaN -> real 0
    q = _rne(v) + zero_point
    tl.store(out_ptr + i, tl.minimum(tl.maximum(q, 0), 255).to(tl.uint8), mask=ok)


def quant_quantize(x, inv_scale, zero_point, out):
    """x float32 dense, out uint8 with x's strides: both walked in memory order."""
    n = x.numel()
    BLOCK = 1024
    _quant_quantize_fwd_kernel[(triton.cdiv(n, BLOCK),)](x, out, n, inv_scale, zero_point, BLOCK=BLOCK)
