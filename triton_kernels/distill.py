"""Distillation-loss family in Triton: the knowledge-distillation loss and its student gradient in one launch.

Forward, ``_distill_fwd_kernel``: one program per BLOCK_M rows (s [N, C] student logits, t [N, C] teacher
logits, y [N] class indices, T the temperature, a = alpha, eps = label smoothing):
    loss_i = a T^2 KL(softmax(t_i / T) || softmax(s_i / T)) + (1 - a) CE_eps(s_i, y_i),  0 if y_i ignored
    grad[i, c] = a T (softmax(s_i / T)_c - softmax(t_i / T)_c) + (1 - a) (softmax(s_i)_c - eps / C
                 - (1 - eps) [c == y_i]),  0 for ignored rows
  (derivation and the closed forms below: csrc/cpu/distill.cpp).
  Sweep 1, online over BLOCK_C column tiles: running maxes ms, mt (NaN-propagating) and, relative to
  them, Z1 = sum exp(s - ms), ZT = sum exp((s - ms) / T), Zt = sum exp((t - mt) / T),
  Wq = sum exp((t - mt) / T) ((t - mt) - (s - ms)), Sd = sum (s - ms). When the maxes grow by
  ds, dt >= 0 the sums are rescaled: Z1 *= exp(-ds), ZT *= exp(-ds / T), Zt *= exp(-dt / T),
  Wq = exp(-dt / T) (Wq + (ds - dt) Zt_old), Sd -= ds * (columns seen). Every exp argument is <= 0.
  Then KL = Wq / (T Zt) - log Zt + log ZT and CE = log Z1 - (1 - eps)(s_y - ms) - eps / C * Sd.
  Sweep 2 (tiles re-read, from L2 for long rows) writes the gradient.
  Arithmetic in fp32 (fp64 for float64); the gradient is stored in the input dtype.
  Reduction "none" stores the per-row loss. "mean" / "sum" store per-row (loss, counted) pairs to a
  [2, N] buffer; the last program to finish (a ticket taken with an atomic add on a counter word that
  the host keeps zeroed) sums them in a fixed order -- deterministic -- writes the loss (and the mean's
  denominator, the number of counted rows; 0 / 0 = NaN when all are ignored) and resets the counter.
  Launches per forward: 1 for every reduction.
  FLOPs ~ 20*N*C (+ 3 N*C exp in sweep 1, 3 N*C in sweep 2).  Minimum bytes: 2*N*C*itemsize read +
  N*C*itemsize written (gradient) + N*(target + loss) bytes.
Backward: the softmax_xent family's ``_softmax_xent_bwd_kernel`` (triton_kernels/softmax_xent.py).
Out-of-range targets are never dereferenced: that row's loss and gradient are NaN.

Test: pytest tests/test_distill.py -k triton   Benchmark: python benchmarks/bench_distill.py
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import join_f64, split_f64

# Largest column tile per program (two tiles, student and teacher, are live); longer rows are swept.
MAX_TILE_C = 4096
# Elements per program tile for short rows (BLOCK_M rows of BLOCK_C columns); float64 values take two
# registers each: a quarter of the tile (2048 spilled ~100 LDL/STL, 400 B of stack, at C = 10 and 100 on
# sm_80 / sm_90 in tools/check_gpu_build.py).
TILE_ELEMS = 2048
TILE_ELEMS_FP64 = 512


@triton.jit
def _distill_fwd_kernel(
    s_ptr, t_ptr, y_ptr, loss_ptr, rows_ptr, grad_ptr, denom_ptr, counter_ptr,
    N, C, stride_sn, stride_tn, ignore_index,
    invT_hi, invT_lo, kl_hi, kl_lo, klg_hi, klg_lo, ce_hi, ce_lo, eps_hi, eps_lo,
    WRITE_GRAD: tl.constexpr, PER_ROW: tl.constexpr, MEAN: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):
    if ACC_FP64:
        acc_ty = tl.float64
    else:
        acc_ty = tl.float32
    invT = join_f64(invT_hi, invT_lo, acc_ty)      # 1 / T
    c_kl = join_f64(kl_hi, kl_lo, acc_ty)          # a T^2
    c_klg = join_f64(klg_hi, klg_lo, acc_ty)       # a T
    c_ce = join_f64(ce_hi, ce_lo, acc_ty)          # 1 - a
    eps = join_f64(eps_hi, eps_lo, acc_ty)
    ec = eps / C
    ninf = float("-inf")

    # 1. Rows of this program and their targets; offsets in int64 (N*C may exceed 2**31).
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)      # [BLOCK_M]
    rmask = rows < N
    y = tl.load(y_ptr + rows, mask=rmask, other=0).to(tl.int64)
    ignored = y == ignore_index
    in_range = (y >= 0) & (y < C)
    valid = rmask & (~ignored) & in_range
    bad = rmask & (~ignored) & (~in_range)
    s_row = s_ptr + rows * stride_sn
    t_row = t_ptr + rows * stride_tn
    cols0 = tl.arange(0, BLOCK_C)                                                 # [BLOCK_C]

    # 2. Sweep 1: online maxes and the five sums (module docstring).
    ms = tl.full((BLOCK_M,), ninf, acc_ty)
    mt = tl.full((BLOCK_M,), ninf, acc_ty)
    z1 = tl.zeros((BLOCK_M,), acc_ty)
    zT = tl.zeros((BLOCK_M,), acc_ty)
    zt = tl.zeros((BLOCK_M,), acc_ty)
    wq = tl.zeros((BLOCK_M,), acc_ty)
    sd = tl.zeros((BLOCK_M,), acc_ty)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + cols0
        mask = valid[:, None] & (cols < C)[None, :]
        s = tl.load(s_row[:, None] + cols[None, :], mask=mask, other=ninf).to(acc_ty)   # [BLOCK_M, BLOCK_C]
        t = tl.load(t_row[:, None] + cols[None, :], mask=mask, other=ninf).to(acc_ty)
        # tl.max drops NaN: a NaN in either row makes the row's maxes NaN (the whole row NaN).
        has_nan = tl.max(tl.where((s != s) | (t != t), 1, 0), axis=1) > 0
        ms_new = tl.where(has_nan, float("nan"), tl.maximum(ms, tl.max(s, axis=1)))
        mt_new = tl.where(has_nan, float("nan"), tl.maximum(mt, tl.max(t, axis=1)))
        ms_new = tl.where(ms != ms, ms, ms_new)
        mt_new = tl.where(mt != mt, mt, mt_new)
        # Sums exist (a finite or NaN max so far): rescale them; else (-inf: nothing seen) start at 0.
        seen = ms != ninf
        dms = tl.where(seen, ms_new - ms, 0.0)
        dmt = tl.where(seen, mt_new - mt, 0.0)
        ft = tl.exp(-dmt * invT)
        wq = tl.where(seen, ft * (wq + (dms - dmt) * zt), 0.0)
        z1 = tl.where(seen, z1 * tl.exp(-dms), 0.0)
        zT = tl.where(seen, zT * tl.exp(-dms * invT), 0.0)
        zt = tl.where(seen, zt * ft, 0.0)
        sd = tl.where(seen, sd - dms * c0, 0.0)
        ms = ms_new
        mt = mt_new
        # an all -inf tile so far: differences against 0 (exp gives 0), never -inf - -inf = NaN
        ds = tl.where(mask, s - tl.where(ms == ninf, 0.0, ms)[:, None], 0.0)
        dt = tl.where(mask, t - tl.where(mt == ninf, 0.0, mt)[:, None], 0.0)
        et = tl.where(mask, tl.exp(dt * invT), 0.0)
        z1 += tl.sum(tl.where(mask, tl.exp(ds), 0.0), axis=1)
        zT += tl.sum(tl.where(mask, tl.exp(ds * invT), 0.0), axis=1)
        zt += tl.sum(et, axis=1)
        wq += tl.sum(et * (dt - ds), axis=1)
        sd += tl.sum(ds, axis=1)

    # 3. Row loss: 0 for ignored rows, NaN for out-of-range targets.
    sy = tl.load(s_row + tl.where(valid, y, 0), mask=valid, other=0.0).to(acc_ty)
    kl = wq * invT / zt - tl.log(zt) + tl.log(zT)
    ce = tl.log(z1) - (1.0 - eps) * (sy - ms) - ec * sd
    nan_row = tl.where(bad, float("nan"), 0.0).to(acc_ty)
    loss = tl.where(valid, c_kl * kl + c_ce * ce, nan_row)

    # 4. Sweep 2: the gradient (ignored rows 0, out-of-range rows NaN).
    if WRITE_GRAD:
        g_row = grad_ptr + rows * C
        fT = c_klg / zT
        ft2 = c_klg / zt
        f1 = c_ce / z1
        cy = c_ce * (1.0 - eps)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + cols0
            cmask = (cols < C)[None, :]
            mask = valid[:, None] & cmask
            s = tl.load(s_row[:, None] + cols[None, :], mask=mask, other=0.0).to(acc_ty)
            t = tl.load(t_row[:, None] + cols[None, :], mask=mask, other=0.0).to(acc_ty)
            ds = s - ms[:, None]
            g = (fT[:, None] * tl.exp(ds * invT) - ft2[:, None] * tl.exp((t - mt[:, None]) * invT)
                 + f1[:, None] * tl.exp(ds) - c_ce * ec)
            g -= tl.where(cols[None, :] == y[:, None], cy, 0.0)
            g = tl.where(valid[:, None], g, nan_row[:, None])
            tl.store(g_row[:, None] + cols[None, :], g.to(grad_ptr.dtype.element_ty), mask=rmask[:, None] & cmask)

    # 5. Loss: per row, or (loss, counted) pairs reduced by the last program in a fixed order.
    if PER_ROW:
        tl.store(loss_ptr + rows, loss.to(loss_ptr.dtype.element_ty), mask=rmask)
    else:
        tl.store(rows_ptr + rows, loss, mask=rmask)
        tl.store(rows_ptr + N + rows, tl.where(valid, 1.0, nan_row).to(acc_ty), mask=rmask)
        # Every thread's stores precede the ticket (barrier), and the atomic (acq_rel, gpu scope)
        # publishes them; the last program reads the pairs past L1 (.cg).
        tl.debug_barrier()
        ticket = tl.atomic_add(counter_ptr, 1)
        if ticket == tl.num_programs(0) - 1:
            acc_l = tl.zeros((BLOCK_R,), acc_ty)
            acc_w = tl.zeros((BLOCK_R,), acc_ty)
            for r0 in range(0, N, BLOCK_R):
                offs = r0 + tl.arange(0, BLOCK_R)
                msk = offs < N
                acc_l += tl.load(rows_ptr + offs, mask=msk, other=0.0, cache_modifier=".cg")
                acc_w += tl.load(rows_ptr + N + offs, mask=msk, other=0.0, cache_modifier=".cg")
            total = tl.sum(acc_l, axis=0)
            if MEAN:
                d = tl.sum(acc_w, axis=0)
                tl.store(denom_ptr, d.to(denom_ptr.dtype.element_ty))
                total = total / d                   # no counted row: 0 / 0 = NaN, as F.cross_entropy
            tl.store(loss_ptr, total.to(loss_ptr.dtype.element_ty))
            tl.atomic_xchg(counter_ptr, 0)          # left zeroed for the next launch on this stream


def _tiles(C: int, fp64: bool = False):
    """(BLOCK_M, BLOCK_C, num_warps) for rows of C elements."""
    block_c = min(max(16, triton.next_power_of_2(max(C, 1))), MAX_TILE_C)
    block_m = max(1, (TILE_ELEMS_FP64 if fp64 else TILE_ELEMS) // block_c)
    # 8 warps: at most 16 elements of each of the two tiles per thread. Checked with
    # tools/check_gpu_build.py's compile_job (sm_80 / sm_90, float32 / bfloat16, C = 10 / 100 / 5000):
    # no spills (C <= 128: ~205-255 registers). 4 warps spilled (255 registers, ~600 B of stack at
    # C = 100); 8 warps with TILE_ELEMS = 1024 spilled 24 B for bfloat16 at C = 100 on sm_90.
    num_warps = 8
    return block_m, block_c, num_warps


def distill_fwd(s: torch.Tensor, t: torch.Tensor, target: torch.Tensor, ignore_index: int, reduction: int,
                eps: float, temperature: float, alpha: float, loss: torch.Tensor, grad: torch.Tensor | None,
                denom: torch.Tensor | None, rows: torch.Tensor | None, counter: torch.Tensor | None) -> None:
    """Fill ``loss`` ([N] for reduction 0, [] for 1 = mean / 2 = sum), ``grad`` [N, C] (or skip it when
    None) and ``denom`` (mean only) for logits s, t [N, C] with unit class stride, in one launch.
    ``rows``: a [2 N] buffer in the arithmetic dtype, ``counter``: a zeroed int32 word (mean / sum)."""
    N, C = s.shape
    per_row = reduction == 0
    acc64 = s.dtype == torch.float64
    block_m, block_c, num_warps = _tiles(C, acc64)
    scalars = []
    for v in (1.0 / temperature, alpha * temperature * temperature, alpha * temperature, 1.0 - alpha, eps):
        scalars += split_f64(v)
    grid = (max(1, triton.cdiv(N, block_m)),)   # N == 0 (mean / sum): one program writes 0 or NaN
    _distill_fwd_kernel[grid](
        s, t, target, loss, rows if rows is not None else loss, grad if grad is not None else s,
        denom if denom is not None else loss, counter if counter is not None else target,
        N, C, s.stride(0), t.stride(0), ignore_index, *scalars,
        WRITE_GRAD=grad is not None, PER_ROW=per_row, MEAN=reduction == 1, ACC_FP64=acc64,
        BLOCK_M=block_m, BLOCK_C=block_c, BLOCK_R=128, num_warps=num_warps,
    )
