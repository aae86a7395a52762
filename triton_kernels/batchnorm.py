"""BatchNorm family in Triton: batch statistics, fused normalize + residual + activation, running
statistics update and backward.

What is computed (tensors viewed as [N, C, S], S = H*W; M = N*S values per channel; see
pyimgcls/ops/batchnorm.py for the op-level semantics):
  stats:  mean[c], var[c] = biased variance over the M values of channel c
  fwd:    y = act((x - mean) * invstd * w + b + r),  invstd = 1 / sqrt(var + eps)  (written for backward)
  update: rm = (1-m) rm + m mean;  rv = (1-m) rv + m var M/(M-1)
  bwd:    gp = select(act kept out, grad, 0); gb = sum gp; gw = invstd * sum gp (x - mean);
          gx = w invstd (gp - gb/M - (x - mean) invstd^2 sum gp (x - mean) / M)   (eval: w invstd gp)

Algorithm: every kernel works on [BLOCK_R rows x BLOCK_C channels] tiles, a row being one (n, s)
position; element (n, c, s) sits at n*stride_n + c*stride_c + s*stride_s, so one kernel reads NCHW
(stride_s = 1: tiles coalesced along rows) and NHWC (stride_c = 1: coalesced along channels, with
wide vector loads) — the host picks the tile shape per layout.
Reductions are deterministic two-level: the M rows are cut into CHUNKS fixed by the shape; program
(channel block, chunk) accumulates its rows in a [BLOCK_R, BLOCK_C] register tile and writes one
partial per channel to scratch; a second kernel adds the partials in chunk order. No atomics.
Statistics are Welford / Chan in one pass: every row lane of a tile runs Welford's update (count n,
mean m, M2) over d = x - K (K = the channel's first value) in fp32 (fp64 for float64), the BLOCK_R
lanes are merged by Chan's formula at the end of level 1, and the chunks in chunk order by Chan's
formula in fp64 at level 2. Shifted sums of d and d^2 would cancel catastrophically in
sum d^2 - (sum d)^2 / M when K is far from the mean (an outlier as the first value); the shift stays
because an fp32 running mean near |mean| >> std stops moving once std / n < ulp(mean).
Values are upcast to fp32 on load (also what keeps bfloat16 correct under the interpreter).

Cost (Q = N*C*S elements of T bytes): training fwd reads 2Q (+Q residual) and writes Q; eval fwd
reads Q (+Q) and writes Q; training bwd reads grad, x (+out) twice and writes gx (+gp).

Test: pytest tests/test_batchnorm.py -k triton   Benchmark: python benchmarks/bench_batchnorm.py
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._config import INTERPRET
from .common import act_backward, apply_act, join_f64, split_f64


# ----------------------------------------------------------------------------- helpers
@triton.jit
def _tile_offsets(rows, offs_c, S, stride_n, stride_c, stride_s):
    """[BLOCK_R, BLOCK_C] element offsets of rows (n*S + s) x channels."""
    n = rows // S
    s = rows - n * S
    return (n * stride_n + s * stride_s)[:, None] + (offs_c * stride_c)[None, :]


@triton.jit
def _channels(pid, C, BLOCK_C: tl.constexpr):
    """[BLOCK_C] channel offsets of channel block pid, and their mask."""
    offs_c = pid.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    return offs_c, offs_c < C


@triton.jit
def _row_tile(start, end, offs_c, cmask, S, stride_n, stride_c, stride_s, BLOCK_R: tl.constexpr):
    """(mask, element offsets) of the [BLOCK_R, BLOCK_C] tile of rows [start, start + BLOCK_R) below end."""
    rows = start + tl.arange(0, BLOCK_R)
    mask = (rows < end)[:, None] & cmask[None, :]
    return mask, _tile_offsets(rows, offs_c, S, stride_n, stride_c, stride_s)


@triton.jit
def _chunk_rows(chunk, ROWS_PER, M):
    """Rows [r0, r1) of a level-1 reduction chunk."""
    r0 = chunk.to(tl.int64) * ROWS_PER
    return r0, tl.minimum(r0 + ROWS_PER, M)


@triton.jit
def _store_partials(part_ptr, chunk, C, offs_c, cmask, s1, s2):
    """End of level 1: part[chunk, 0, c] and part[chunk, 1, c] = the column sums of the tiles s1, s2."""
    base = part_ptr + chunk.to(tl.int64) * 2 * C
    tl.store(base + offs_c, tl.sum(s1, axis=0), mask=cmask)
    tl.store(base + C + offs_c, tl.sum(s2, axis=0), mask=cmask)


@triton.jit
def _sum_partials(part_ptr, C, CHUNKS, offs_c, cmask, ACC_FP64: tl.constexpr, BLOCK_C: tl.constexpr):
    """Level 2: the two per-channel sums of part[:, 0/1, c], added in chunk order."""
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    s1 = tl.zeros((BLOCK_C,), dtype=acc_ty)
    s2 = tl.zeros((BLOCK_C,), dtype=acc_ty)
    for k in range(0, CHUNKS):
        s1 += tl.load(part_ptr + k * 2 * C + offs_c, mask=cmask, other=0.0)
        s2 += tl.load(part_ptr + k * 2 * C + C + offs_c, mask=cmask, other=0.0)
    return s1, s2


@triton.jit
def _batch_norm_stats_fwd_kernel(
    x_ptr, part_ptr, M, C, S, ROWS_PER,
    stride_n, stride_c, stride_s,
    ACC_FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Level 1: program (channel block, chunk) -> part[chunk, 0/1, c] = mean and M2 of d = x - K over its
    rows (its count is known from ROWS_PER). Row lane i of the tile takes rows r0 + i, r0 + i + BLOCK_R, ...
    with Welford's update (m += (d - m) / n; M2 += (d - m_old)(d - m_new)); the lanes are then merged by
    Chan's formula: m = sum n_i m_i / n, M2 = sum M2_i + n_i (m_i - m)^2."""
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    pid_c = tl.program_id(0)
    chunk = tl.program_id(1)
    offs_c, cmask = _channels(pid_c, C, BLOCK_C)
    shift = tl.load(x_ptr + offs_c * stride_c, mask=cmask, other=0.0).to(acc_ty)  # K: first value of each channel
    mean = tl.zeros((BLOCK_R, BLOCK_C), dtype=acc_ty)
    m2 = tl.zeros((BLOCK_R, BLOCK_C), dtype=acc_ty)
    cnt = tl.zeros((BLOCK_R,), dtype=acc_ty)
    r0, r1 = _chunk_rows(chunk, ROWS_PER, M)
    for start in range(r0, r1, BLOCK_R):
        live = start + tl.arange(0, BLOCK_R) < r1
        cnt += tl.where(live, 1.0, 0.0)
        inv = tl.where(live, 1.0 / tl.maximum(cnt, 1.0), 0.0)  # one division per row lane, not per element
        mask, offs = _row_tile(start, r1, offs_c, cmask, S, stride_n, stride_c, stride_s, BLOCK_R)
        d = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty) - shift[None, :]
        delta = tl.where(mask, d - mean, 0.0)
        mean += delta * inv[:, None]
        m2 += delta * (d - mean)
    n = tl.sum(cnt, axis=0)
    share = cnt / tl.maximum(n, 1.0)
    chunk_mean = tl.sum(mean * share[:, None], axis=0)
    dev = mean - chunk_mean[None, :]
    chunk_m2 = tl.sum(m2 + dev * dev * cnt[:, None], axis=0)
    base = part_ptr + chunk.to(tl.int64) * 2 * C
    tl.store(base + offs_c, chunk_mean, mask=cmask)
    tl.store(base + C + offs_c, chunk_m2, mask=cmask)


@triton.jit
def _batch_norm_stats_bwd_kernel(
    x_ptr, part_ptr, mean_ptr, var_ptr, M, C, CHUNKS, ROWS_PER, stride_c,
    BLOCK_C: tl.constexpr,
):
    """Level 2 (the finalize step of the statistics, named _bwd as the second pass of the pair): Chan's
    merge of the chunks' (count, mean of d, M2 of d) in chunk order, in fp64 (a few values per channel);
    chunk k holds min(ROWS_PER, M - k ROWS_PER) rows. mean = K + mean of d, var = M2 / M."""
    offs_c, cmask = _channels(tl.program_id(0), C, BLOCK_C)
    n = tl.zeros((BLOCK_C,), dtype=tl.float64)
    m = tl.zeros((BLOCK_C,), dtype=tl.float64)
    m2 = tl.zeros((BLOCK_C,), dtype=tl.float64)
    left = M  # rows from chunk k on (no k * ROWS_PER product to overflow)
    for k in range(0, CHUNKS):
        nk = tl.minimum(tl.maximum(left, 0), ROWS_PER).to(tl.float64)
        left -= ROWS_PER
        mk = tl.load(part_ptr + k * 2 * C + offs_c, mask=cmask, other=0.0).to(tl.float64)
        m2k = tl.load(part_ptr + k * 2 * C + C + offs_c, mask=cmask, other=0.0).to(tl.float64)
        nn = n + nk
        frac = tl.where(nn > 0, nk / tl.maximum(nn, 1.0), 0.0)
        delta = mk - m
        m += delta * frac
        m2 += m2k + delta * delta * n * frac
        n = nn
    shift = tl.load(x_ptr + offs_c * stride_c, mask=cmask, other=0.0).to(tl.float64)
    tl.store(mean_ptr + offs_c, shift + m, mask=cmask)
    tl.store(var_ptr + offs_c, m2 / M, mask=cmask)


# ----------------------------------------------------------------------------- forward
@triton.jit
def _batch_norm_fwd_kernel(
    x_ptr, mean_ptr, var_ptr, w_ptr, b_ptr, r_ptr, y_ptr, invstd_ptr,
    M, C, S, eps_hi, eps_lo,
    stride_n, stride_c, stride_s,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_R: tl.constexpr, ACT: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y tile = act((x - mean) * scale + bias + r), scale = w / sqrt(var + eps); row block 0 also
    writes invstd. x, r, y share strides. eps comes as the fp32 halves of a double (common.join_f64)."""
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c, cmask = _channels(pid_c, C, BLOCK_C)
    mean = tl.load(mean_ptr + offs_c, mask=cmask, other=0.0)
    var = tl.load(var_ptr + offs_c, mask=cmask, other=1.0)
    eps = join_f64(eps_hi, eps_lo, var.dtype)
    # IEEE-rounded sqrt and division, so the saved invstd matches PyTorch's (fp64 sqrt is always exact)
    if ACC_FP64:
        invstd = 1.0 / tl.sqrt(var + eps)
    else:
        invstd = 1.0 / tl.sqrt_rn(var + eps)
    if pid_r == 0:
        tl.store(invstd_ptr + offs_c, invstd, mask=cmask)
    scale = invstd
    if HAS_W:
        scale = scale * tl.load(w_ptr + offs_c, mask=cmask, other=1.0)
    mask, offs = _row_tile(pid_r.to(tl.int64) * BLOCK_R, M, offs_c, cmask, S, stride_n, stride_c, stride_s, BLOCK_R)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    y = (x - mean[None, :]) * scale[None, :]
    if HAS_B:
        y += tl.load(b_ptr + offs_c, mask=cmask, other=0.0)[None, :]
    if HAS_R:
        y += tl.load(r_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    y = apply_act(y, ACT)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _batch_norm_update_fwd_kernel(rm_ptr, rv_ptr, mean_ptr, var_ptr, C, momentum_hi, momentum_lo, unbias_hi,
                                  unbias_lo, HAS_RM: tl.constexpr, HAS_RV: tl.constexpr, BLOCK_C: tl.constexpr):
    """In place: rm = (1-m) rm + m mean;  rv = (1-m) rv + m var * unbias  (unbias = M / (M - 1)); the two
    scalars come as fp32 halves of doubles (common.join_f64), rebuilt in the running buffer's dtype."""
    offs_c, cmask = _channels(tl.program_id(0), C, BLOCK_C)
    if HAS_RM:
        rm = tl.load(rm_ptr + offs_c, mask=cmask)
        m = join_f64(momentum_hi, momentum_lo, rm.dtype)
        tl.store(rm_ptr + offs_c, (1 - m) * rm + m * tl.load(mean_ptr + offs_c, mask=cmask), mask=cmask)
    if HAS_RV:
        rv = tl.load(rv_ptr + offs_c, mask=cmask)
        m = join_f64(momentum_hi, momentum_lo, rv.dtype)
        unbias = join_f64(unbias_hi, unbias_lo, rv.dtype)
        tl.store(rv_ptr + offs_c, (1 - m) * rv + m * unbias * tl.load(var_ptr + offs_c, mask=cmask), mask=cmask)


# ----------------------------------------------------------------------------- backward
@triton.jit
def _batch_norm_reduce_bwd_kernel(
    g_ptr, o_ptr, x_ptr, mean_ptr, gp_ptr, part_ptr, M, C, S, ROWS_PER,
    stride_n, stride_c, stride_s,
    ACT: tl.constexpr, WRITE_GP: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Level 1 of the backward sums: part[chunk, 0/1, c] = sum gp, sum gp * (x - mean) over the
    chunk's rows; writes gp (the residual's gradient) when WRITE_GP."""
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    pid_c = tl.program_id(0)
    chunk = tl.program_id(1)
    offs_c, cmask = _channels(pid_c, C, BLOCK_C)
    mean = tl.load(mean_ptr + offs_c, mask=cmask, other=0.0)
    s1 = tl.zeros((BLOCK_R, BLOCK_C), dtype=acc_ty)
    s2 = tl.zeros((BLOCK_R, BLOCK_C), dtype=acc_ty)
    r0, r1 = _chunk_rows(chunk, ROWS_PER, M)
    for start in range(r0, r1, BLOCK_R):
        mask, offs = _row_tile(start, r1, offs_c, cmask, S, stride_n, stride_c, stride_s, BLOCK_R)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        if ACT != 0:
            g = act_backward(g, tl.load(o_ptr + offs, mask=mask, other=0.0).to(acc_ty), ACT)
        if WRITE_GP:
            tl.store(gp_ptr + offs, g.to(gp_ptr.dtype.element_ty), mask=mask)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        g = tl.where(mask, g, 0.0)
        s1 += g
        s2 += g * tl.where(mask, x - mean[None, :], 0.0)
    _store_partials(part_ptr, chunk, C, offs_c, cmask, s1, s2)


@triton.jit
def _batch_norm_coef_bwd_kernel(
    part_ptr, invstd_ptr, gw_ptr, gb_ptr, coef_ptr, M, C, CHUNKS,
    HAS_GW: tl.constexpr, HAS_GB: tl.constexpr, TRAINING: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Level 2: add the partials in chunk order; gb = sum gp, gw = invstd * sum gp (x - mean), and the
    grad_input coefficients coef[0] = sum gp / M, coef[1] = invstd^2 sum gp (x - mean) / M."""
    offs_c, cmask = _channels(tl.program_id(0), C, BLOCK_C)
    s1, s2 = _sum_partials(part_ptr, C, CHUNKS, offs_c, cmask, ACC_FP64, BLOCK_C)
    invstd = tl.load(invstd_ptr + offs_c, mask=cmask, other=0.0)
    if HAS_GB:
        tl.store(gb_ptr + offs_c, s1, mask=cmask)
    if HAS_GW:
        # an empty batch has NaN statistics but nothing to differentiate: 0, as ATen
        tl.store(gw_ptr + offs_c, tl.where(M > 0, s2 * invstd, 0.0), mask=cmask)
    if TRAINING:
        tl.store(coef_ptr + offs_c, s1 / M, mask=cmask)
        tl.store(coef_ptr + C + offs_c, invstd * invstd * s2 / M, mask=cmask)


@triton.jit
def _batch_norm_bwd_kernel(
    g_ptr, o_ptr, x_ptr, w_ptr, mean_ptr, invstd_ptr, coef_ptr, gx_ptr,
    M, C, S, stride_n, stride_c, stride_s,
    HAS_W: tl.constexpr, ACT: tl.constexpr, TRAINING: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """gx tile = (gp - coef0 - (x - mean) * coef1) * w * invstd (coef = 0 in eval)."""
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c, cmask = _channels(pid_c, C, BLOCK_C)
    scale = tl.load(invstd_ptr + offs_c, mask=cmask, other=0.0)
    if HAS_W:
        scale = scale * tl.load(w_ptr + offs_c, mask=cmask, other=0.0)
    mask, offs = _row_tile(pid_r.to(tl.int64) * BLOCK_R, M, offs_c, cmask, S, stride_n, stride_c, stride_s, BLOCK_R)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    if ACT != 0:
        g = act_backward(g, tl.load(o_ptr + offs, mask=mask, other=0.0).to(acc_ty), ACT)
    if TRAINING:
        mean = tl.load(mean_ptr + offs_c, mask=cmask, other=0.0)
        a = tl.load(coef_ptr + offs_c, mask=cmask, other=0.0)
        k = tl.load(coef_ptr + C + offs_c, mask=cmask, other=0.0)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        g = g - a[None, :] - (x - mean[None, :]) * k[None, :]
    gx = g * scale[None, :]
    tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- host side
def _strides(N, C, S, channels_last):
    """(stride_n, stride_c, stride_s) of the [N, C, S] view (S == 1: both layouts are [N, C] rows)."""
    return (C * S, 1, C) if (channels_last or S == 1) else (C * S, S, 1)


def _tile(C, S, channels_last, elem_size):
    """(BLOCK_R, BLOCK_C, warps): wide along the contiguous axis (16-byte vectors per thread)."""
    channels_last = channels_last or S == 1
    if INTERPRET:
        return 16, 16, 1
    # 8 warps (8-16 elements a thread): at 4 the Welford reductions (stats, reduce_bwd: several
    # accumulators per element) spilled on sm_80 / sm_90 at 2048-4096-element tiles
    # (tools/check_gpu_build.py probes, 2026-12-04: up to 66 LDL / STL, 255 registers).
    if channels_last:
        bc = min(triton.next_power_of_2(C), 128)
        return max(16, 4096 // bc // max(1, elem_size // 2)), bc, 8
    br = min(triton.next_power_of_2(max(S, 1)), 256)
    return br, max(1, 2048 // br), 8


def _chunks(M, block_r, C, block_c):
    """Row chunks of the two-level reductions: enough programs to fill a GPU, fixed by the shape."""
    if INTERPRET:
        return max(1, min(2, triton.cdiv(M, block_r)))
    cblocks = triton.cdiv(C, block_c)
    want = max(1, 4 * 132 // cblocks)
    chunks = max(1, min(want, triton.cdiv(M, 4 * block_r), 1024))
    return chunks


def _acc(t):
    return t.dtype == torch.float64


def batch_norm_stats(x, mean, var, N, C, S, channels_last) -> None:
    """mean / var (biased) of x's channels, two-level deterministic Welford / Chan reduction."""
    M = N * S
    if M == 0:
        mean.fill_(float("nan"))
        var.fill_(float("nan"))
        return
    br, bc, warps = _tile(C, S, channels_last, x.element_size())
    chunks = _chunks(M, br, C, bc)
    rows_per = triton.cdiv(M, chunks)
    part = torch.empty(chunks * 2 * C, dtype=mean.dtype, device=x.device)
    strides = _strides(N, C, S, channels_last)
    _batch_norm_stats_fwd_kernel[(triton.cdiv(C, bc), chunks)](
        x, part, M, C, S, rows_per, *strides, ACC_FP64=_acc(mean), BLOCK_R=br, BLOCK_C=bc, num_warps=warps)
    cb = 16 if INTERPRET else 128
    _batch_norm_stats_bwd_kernel[(triton.cdiv(C, cb),)](
        x, part, mean, var, M, C, chunks, rows_per, strides[1], BLOCK_C=cb)


def batch_norm_fwd(x, mean, var, w, b, r, y, invstd, N, C, S, channels_last, eps, act) -> None:
    M = N * S
    br, bc, warps = _tile(C, S, channels_last, x.element_size())
    grid = (max(1, triton.cdiv(M, br)), triton.cdiv(C, bc))
    _batch_norm_fwd_kernel[grid](
        x, mean, var, w if w is not None else mean, b if b is not None else mean, r if r is not None else x, y,
        invstd, M, C, S, *split_f64(eps), *_strides(N, C, S, channels_last),
        HAS_W=w is not None, HAS_B=b is not None, HAS_R=r is not None, ACT=act, ACC_FP64=_acc(mean),
        BLOCK_R=br, BLOCK_C=bc, num_warps=warps)


def batch_norm_update_stats(rm, rv, mean, var, momentum, count) -> None:
    C = mean.shape[0]
    bc = 16 if INTERPRET else 256
    _batch_norm_update_fwd_kernel[(triton.cdiv(C, bc),)](
        rm if rm is not None else mean, rv if rv is not None else var, mean, var, C, *split_f64(momentum),
        *split_f64(count / (count - 1) if count > 1 else 1.0), HAS_RM=rm is not None, HAS_RV=rv is not None,
        BLOCK_C=bc)


def batch_norm_bwd(grad, out, x, w, mean, invstd, gx, gw, gb, gp, N, C, S, channels_last, training, act) -> None:
    M = N * S
    br, bc, warps = _tile(C, S, channels_last, x.element_size())
    strides = _strides(N, C, S, channels_last)
    coef = mean
    need_sums = (gx is not None and training) or gw is not None or gb is not None or gp is not None
    if need_sums:
        chunks = _chunks(M, br, C, bc)
        rows_per = max(1, triton.cdiv(M, chunks))
        part = torch.empty(chunks * 2 * C, dtype=mean.dtype, device=x.device)
        coef = torch.empty(2 * C, dtype=mean.dtype, device=x.device)
        _batch_norm_reduce_bwd_kernel[(triton.cdiv(C, bc), chunks)](
            grad, out if out is not None else grad, x, mean, gp if gp is not None else grad, part, M, C, S, rows_per,
            *strides, ACT=act, WRITE_GP=gp is not None, ACC_FP64=_acc(mean), BLOCK_R=br, BLOCK_C=bc,
            num_warps=warps)
        cb = 16 if INTERPRET else 128
        _batch_norm_coef_bwd_kernel[(triton.cdiv(C, cb),)](
            part, invstd, gw if gw is not None else mean, gb if gb is not None else mean, coef, M, C, chunks,
            HAS_GW=gw is not None, HAS_GB=gb is not None, TRAINING=training, ACC_FP64=_acc(mean), BLOCK_C=cb)
    if gx is not None and M > 0:
        grid = (triton.cdiv(M, br), triton.cdiv(C, bc))
        _batch_norm_bwd_kernel[grid](
            grad, out if out is not None else grad, x, w if w is not None else mean, mean, invstd, coef, gx,
            M, C, S, *strides, HAS_W=w is not None, ACT=act, TRAINING=training, ACC_FP64=_acc(mean),
            BLOCK_R=br, BLOCK_C=bc, num_warps=warps)
