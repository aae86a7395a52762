"""Softmax-cross-entropy family in Triton: F.cross_entropy's loss and its gradient in one pass.

Forward, ``_softmax_xent_fwd_kernel``: one program per BLOCK_M rows (x [N, C] logits, t [N] class
indices, w [C] class weights or all ones, eps = label smoothing, W = sum_c w[c]):
    loss_i = (1 - eps) * w[t_i] * (lse_i - x[i, t_i]) + eps / C * sum_c w[c] * (lse_i - x[i, c])
    grad[i, j] = a_i * softmax(x[i])_j - (1 - eps) w[t_i] [j == t_i] - eps / C * w[j],
    a_i = (1 - eps) w[t_i] + eps / C * W;  ignored rows (t_i == ignore_index): loss 0, grad 0 * p
  (PyTorch's cross_entropy_loss_label_smoothing, see csrc/cpu/softmax_xent.cpp for the derivation).
  SINGLE_TILE (C <= BLOCK_C): the [BLOCK_M, BLOCK_C] tile is loaded once and stays in registers:
  row max, e = exp(x - max), S = sum e, then the gradient e / S * a - b is stored from the same
  registers. Otherwise (large C): online max / sum-exp over BLOCK_C column tiles (the running sum is
  rescaled by exp(m_old - m_new)), then a second sweep re-reads the tiles (from L2) for the gradient.
  Arithmetic in fp32 (fp64 for float64); the gradient is stored in the input dtype.
  Memory trade-off: the gradient [N, C] is written by the forward and held until the backward, in place
  of the log-probabilities PyTorch saves (same size), so the backward is one scaling pass and never
  re-reads the logits; under no_grad it is not written.
  Reduction "none" stores the per-row loss; "mean" / "sum" store per-row losses and weights to a
  [2, N] fp32 buffer and ``_softmax_xent_reduce_kernel`` (one program, fixed order, deterministic)
  writes the sum, or the sum over D = sum of w[t_i] over non-ignored rows (NaN when D == 0).
  Launches per forward: 1 (none) or 2 (mean / sum).
  FLOPs ~ 5*N*C (+ N*C exp).  Minimum bytes: N*C*itemsize read + N*C*itemsize written (gradient)
  + N*(target + loss) bytes.

Backward, ``_softmax_xent_bwd_kernel``: grad_in[i, :] = grad[i, :] * scale_i, scale_i = 0 for ignored
rows, else grad_loss[i] (none), grad_loss (sum) or grad_loss / D (mean; NaN when D == 0).
  FLOPs: N*C.  Bytes: 2*N*C*itemsize + N*(target + grad_loss) bytes.  One launch.

Forward with class-probability targets, ``_softmax_xent_prob_fwd_kernel`` (t [N, C] probabilities,
any row stride, unit class stride; t' = (1 - eps) t + eps / C, v = w t', V_i = sum_c v[i, c]):
    loss_i = V_i * lse_i - sum_c v[i, c] x[i, c] = V_i log S_i - sum_c v[i, c] (x[i, c] - m_i)
    grad[i, j] = V_i softmax(x[i])_j - v[i, j]
  Same tiling as the index-target kernel: SINGLE_TILE keeps the logit and target tiles in registers;
  tiled rows sweep once for max / sum-exp / V and a second time (from L2) for sum v (x - m) and the
  gradient. "mean" / "sum" reuse ``_softmax_xent_reduce_kernel`` with row weight 1 (D = N).
  FLOPs ~ 8*N*C (+ N*C exp).  Minimum bytes: 2*N*C*itemsize read + N*C*itemsize written + N loss bytes.
  Its backward is ``_softmax_xent_bwd_kernel`` with HAS_T=False (no ignored rows).

Out-of-range targets are never dereferenced: that row's loss, weight and gradient are NaN.

Test: pytest tests/test_softmax_xent.py -k "triton or prob"   Benchmark: python benchmarks/bench_softmax_xent.py
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._config import INTERPRET
from .common import join_f64, split_f64

# Largest row tile kept in registers by one program; longer rows are swept in tiles of this size.
MAX_TILE_C = 8192
# Elements per program tile for short rows (BLOCK_M rows of BLOCK_C columns).
TILE_ELEMS = 2048


@triton.jit
def _nan_max(a, b):
    # tl.maximum drops NaN; keep it so an all -inf prefix cannot hide a NaN later in the row.
    return tl.where((a != a) | (a > b), a, b)


@triton.jit
def _softmax_xent_fwd_kernel(
    x_ptr, t_ptr, w_ptr, loss_ptr, rows_ptr, grad_ptr,
    N, C, stride_xn, ignore_index, eps_hi, eps_lo,
    HAS_W: tl.constexpr, SMOOTH: tl.constexpr, WRITE_GRAD: tl.constexpr, PER_ROW: tl.constexpr,
    ACC_FP64: tl.constexpr, SINGLE_TILE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    if ACC_FP64:
        acc_ty = tl.float64
    else:
        acc_ty = tl.float32
    # eps arrives split in two fp32 halves so float64 keeps its full value (common.split_f64).
    eps = join_f64(eps_hi, eps_lo, acc_ty)
    ninf = float("-inf")

    # 1. Rows of this program and their targets; offsets in int64 (N*C may exceed 2**31).
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)      # [BLOCK_M]
    rmask = rows < N
    t = tl.load(t_ptr + rows, mask=rmask, other=0).to(tl.int64)
    ignored = t == ignore_index
    in_range = (t >= 0) & (t < C)
    valid = rmask & (~ignored) & in_range
    bad = rmask & (~ignored) & (~in_range)
    t_safe = tl.where(valid, t, 0)
    x_row = x_ptr + rows * stride_xn                                              # [BLOCK_M] pointers
    g_row = grad_ptr + rows * C
    cols0 = tl.arange(0, BLOCK_C)                                                 # [BLOCK_C]

    if SINGLE_TILE:
        # 2a. The whole row tile in registers: max, exponentials, sum.
        cmask = cols0 < C
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(x_row[:, None] + cols0[None, :], mask=mask, other=ninf).to(acc_ty)   # [BLOCK_M, BLOCK_C]
        # tl.max drops NaN, but a NaN logit enters S through exp(NaN - m) and makes the row NaN.
        m = tl.max(x, axis=1)                                                     # [BLOCK_M]
        e = tl.exp(x - m[:, None])
        s = tl.sum(e, axis=1)
        if HAS_W:
            w = tl.load(w_ptr + cols0, mask=cmask, other=0.0).to(acc_ty)          # [BLOCK_C]
            W = tl.sum(w, axis=0)
        else:
            W = tl.zeros((), acc_ty) + C
        if SMOOTH:
            if HAS_W:
                sw = tl.sum(tl.where(mask, w[None, :] * (x - m[:, None]), 0.0), axis=1)
            else:
                sw = tl.sum(tl.where(mask, x - m[:, None], 0.0), axis=1)
    else:
        # 2b. Online max / sum-exp over column tiles.
        m = tl.full((BLOCK_M,), ninf, acc_ty)
        s = tl.zeros((BLOCK_M,), acc_ty)
        W = tl.zeros((), acc_ty)
        if not HAS_W:
            W += C
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + cols0
            cmask = cols < C
            mask = rmask[:, None] & cmask[None, :]
            x = tl.load(x_row[:, None] + cols[None, :], mask=mask, other=ninf).to(acc_ty)
            tm = tl.max(x, axis=1)
            tm = tl.where(tl.max(tl.where(x != x, 1, 0), axis=1) > 0, float("nan"), tm)
            mn = _nan_max(m, tm)
            # While every logit seen is -inf there is nothing to add (exp(-inf - -inf) is NaN).
            alive = mn != ninf
            mn_safe = tl.where(alive, mn, 0.0)
            tile_s = tl.sum(tl.exp(x - mn_safe[:, None]), axis=1)
            s = tl.where(alive, s * tl.exp(m - mn_safe) + tile_s, s)
            m = mn
            if HAS_W:
                W += tl.sum(tl.load(w_ptr + cols, mask=cmask, other=0.0).to(acc_ty), axis=0)

    # 3. Row scalars. m == -inf (row of -inf) gives NaN through x_t - m, as PyTorch's log_softmax.
    log_s = tl.log(s)
    xt = tl.load(x_row + t_safe, mask=valid, other=0.0).to(acc_ty)
    if HAS_W:
        wt = tl.load(w_ptr + t_safe, mask=valid, other=0.0).to(acc_ty)
    else:
        wt = tl.where(valid, 1.0, 0.0).to(acc_ty)
    if SMOOTH:
        ec = eps / C
        a = (1.0 - eps) * wt + ec * W
        c1 = (1.0 - eps) * wt
        c2 = tl.where(valid, ec, 0.0)
    else:
        a = wt
        c1 = wt
        c2 = tl.zeros((BLOCK_M,), acc_ty)
    nan_row = tl.where(bad, float("nan"), 0.0).to(acc_ty)
    a = tl.where(valid, a, nan_row)        # ignored rows: 0 * p; out-of-range targets: NaN

    # 4. Gradient (and, for tiled rows, the smoothing sum that needs the final max).
    inv_s = 1.0 / s
    if SINGLE_TILE:
        if WRITE_GRAD:
            cmask = cols0 < C
            p = e * inv_s[:, None]
            g = a[:, None] * p - tl.where(cols0[None, :] == t[:, None], c1[:, None], 0.0)
            if SMOOTH:
                if HAS_W:
                    g -= c2[:, None] * w[None, :]
                else:
                    g -= c2[:, None]
            tl.store(g_row[:, None] + cols0[None, :], g.to(grad_ptr.dtype.element_ty),
                     mask=rmask[:, None] & cmask[None, :])
    else:
        if WRITE_GRAD or SMOOTH:
            sw = tl.zeros((BLOCK_M,), acc_ty)
            for c0 in range(0, C, BLOCK_C):
                cols = c0 + cols0
                cmask = cols < C
                mask = rmask[:, None] & cmask[None, :]
                x = tl.load(x_row[:, None] + cols[None, :], mask=mask, other=ninf).to(acc_ty)
                if HAS_W:
                    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(acc_ty)
                if SMOOTH:
                    if HAS_W:
                        sw += tl.sum(tl.where(mask, w[None, :] * (x - m[:, None]), 0.0), axis=1)
                    else:
                        sw += tl.sum(tl.where(mask, x - m[:, None], 0.0), axis=1)
                if WRITE_GRAD:
                    p = tl.exp(x - m[:, None]) * inv_s[:, None]
                    g = a[:, None] * p - tl.where(cols[None, :] == t[:, None], c1[:, None], 0.0)
                    if SMOOTH:
                        if HAS_W:
                            g -= c2[:, None] * w[None, :]
                        else:
                            g -= c2[:, None]
                    tl.store(g_row[:, None] + cols[None, :], g.to(grad_ptr.dtype.element_ty), mask=mask)

    # 5. Per-row loss (0 for ignored rows, NaN for out-of-range targets).
    nll = wt * (log_s - (xt - m))
    if SMOOTH:
        loss = (1.0 - eps) * nll + (eps / C) * (W * log_s - sw)
    else:
        loss = nll
    loss = tl.where(valid, loss, nan_row)
    rw = tl.where(valid, wt, nan_row)
    if PER_ROW:
        tl.store(loss_ptr + rows, loss.to(loss_ptr.dtype.element_ty), mask=rmask)
    else:
        tl.store(rows_ptr + rows, loss.to(rows_ptr.dtype.element_ty), mask=rmask)
        tl.store(rows_ptr + N + rows, rw.to(rows_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _softmax_xent_prob_fwd_kernel(
    x_ptr, t_ptr, w_ptr, loss_ptr, rows_ptr, grad_ptr,
    N, C, stride_xn, stride_tn, eps_hi, eps_lo,
    HAS_W: tl.constexpr, WRITE_GRAD: tl.constexpr, PER_ROW: tl.constexpr,
    ACC_FP64: tl.constexpr, SINGLE_TILE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    if ACC_FP64:
        acc_ty = tl.float64
    else:
        acc_ty = tl.float32
    eps = join_f64(eps_hi, eps_lo, acc_ty)
    ceps = 1.0 - eps
    ec = eps / C
    ninf = float("-inf")
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)      # [BLOCK_M]
    rmask = rows < N
    x_row = x_ptr + rows * stride_xn
    t_row = t_ptr + rows * stride_tn
    g_row = grad_ptr + rows * C
    cols0 = tl.arange(0, BLOCK_C)

    if SINGLE_TILE:
        # The logit and target tiles stay in registers: max, exponentials, sums, gradient.
        cmask = cols0 < C
        mask = rmask[:, None] & cmask[None, :]
        x = tl.load(x_row[:, None] + cols0[None, :], mask=mask, other=ninf).to(acc_ty)   # [BLOCK_M, BLOCK_C]
        v = ceps * tl.load(t_row[:, None] + cols0[None, :], mask=mask, other=0.0).to(acc_ty) + ec
        if HAS_W:
            v *= tl.load(w_ptr + cols0, mask=cmask, other=0.0).to(acc_ty)[None, :]
        v = tl.where(mask, v, 0.0)
        m = tl.max(x, axis=1)
        e = tl.exp(x - m[:, None])
        s = tl.sum(e, axis=1)
        V = tl.sum(v, axis=1)
        # v * (x - m) is NaN for x = -inf, v = 0, as PyTorch's log_softmax(x) * t; masked lanes are 0
        A = tl.sum(tl.where(mask, v * (x - m[:, None]), 0.0), axis=1)
        if WRITE_GRAD:
            g = V[:, None] * (e / s[:, None]) - v
            tl.store(g_row[:, None] + cols0[None, :], g.to(grad_ptr.dtype.element_ty), mask=mask)
    else:
        # Sweep 1: online max / sum-exp (as the index-target kernel) and V.
        m = tl.full((BLOCK_M,), ninf, acc_ty)
        s = tl.zeros((BLOCK_M,), acc_ty)
        V = tl.zeros((BLOCK_M,), acc_ty)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + cols0
            cmask = cols < C
            mask = rmask[:, None] & cmask[None, :]
            x = tl.load(x_row[:, None] + cols[None, :], mask=mask, other=ninf).to(acc_ty)
            v = ceps * tl.load(t_row[:, None] + cols[None, :], mask=mask, other=0.0).to(acc_ty) + ec
            if HAS_W:
                v *= tl.load(w_ptr + cols, mask=cmask, other=0.0).to(acc_ty)[None, :]
            V += tl.sum(tl.where(mask, v, 0.0), axis=1)
            tm = tl.max(x, axis=1)
            tm = tl.where(tl.max(tl.where(x != x, 1, 0), axis=1) > 0, float("nan"), tm)
            mn = _nan_max(m, tm)
            alive = mn != ninf
            mn_safe = tl.where(alive, mn, 0.0)
            tile_s = tl.sum(tl.exp(x - mn_safe[:, None]), axis=1)
            s = tl.where(alive, s * tl.exp(m - mn_safe) + tile_s, s)
            m = mn
        # Sweep 2 (tiles re-read from L2): sum v (x - m) against the final max, and the gradient.
        A = tl.zeros((BLOCK_M,), acc_ty)
        inv_s = 1.0 / s
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + cols0
            cmask = cols < C
            mask = rmask[:, None] & cmask[None, :]
            x = tl.load(x_row[:, None] + cols[None, :], mask=mask, other=ninf).to(acc_ty)
            v = ceps * tl.load(t_row[:, None] + cols[None, :], mask=mask, other=0.0).to(acc_ty) + ec
            if HAS_W:
                v *= tl.load(w_ptr + cols, mask=cmask, other=0.0).to(acc_ty)[None, :]
            v = tl.where(mask, v, 0.0)
            A += tl.sum(tl.where(mask, v * (x - m[:, None]), 0.0), axis=1)
            if WRITE_GRAD:
                g = V[:, None] * (tl.exp(x - m[:, None]) * inv_s[:, None]) - v
                tl.store(g_row[:, None] + cols[None, :], g.to(grad_ptr.dtype.element_ty), mask=mask)

    loss = V * tl.log(s) - A
    if PER_ROW:
        tl.store(loss_ptr + rows, loss.to(loss_ptr.dtype.element_ty), mask=rmask)
    else:
        tl.store(rows_ptr + rows, loss.to(rows_ptr.dtype.element_ty), mask=rmask)
        tl.store(rows_ptr + N + rows, tl.full((BLOCK_M,), 1.0, acc_ty).to(rows_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _softmax_xent_reduce_kernel(rows_ptr, loss_ptr, denom_ptr, N, MEAN: tl.constexpr, BLOCK: tl.constexpr):
    # One program: lane k sums rows k, k + BLOCK, ... in order, then one fixed tree -> deterministic.
    acc_l = tl.zeros((BLOCK,), rows_ptr.dtype.element_ty)
    acc_w = tl.zeros((BLOCK,), rows_ptr.dtype.element_ty)
    for r0 in range(0, N, BLOCK):
        offs = r0 + tl.arange(0, BLOCK)
        msk = offs < N
        acc_l += tl.load(rows_ptr + offs, mask=msk, other=0.0)
        acc_w += tl.load(rows_ptr + N + offs, mask=msk, other=0.0)
    total = tl.sum(acc_l, axis=0)
    if MEAN:
        d = tl.sum(acc_w, axis=0)
        tl.store(denom_ptr, d.to(denom_ptr.dtype.element_ty))
        total = total / d                   # D == 0 (all rows ignored): 0 / 0 = NaN, as PyTorch
    tl.store(loss_ptr, total.to(loss_ptr.dtype.element_ty))


@triton.jit
def _softmax_xent_bwd_kernel(
    saved_ptr, t_ptr, go_ptr, denom_ptr, out_ptr,
    N, C, go_stride, ignore_index,
    PER_ROW: tl.constexpr, MEAN: tl.constexpr, ACC_FP64: tl.constexpr, HAS_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    if ACC_FP64:
        acc_ty = tl.float64
    else:
        acc_ty = tl.float32
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)      # [BLOCK_M]
    rmask = rows < N
    # 1. Per-row scale: incoming gradient (per row or scalar), / D for the mean, 0 for ignored rows.
    if PER_ROW:
        g = tl.load(go_ptr + rows * go_stride, mask=rmask, other=0.0).to(acc_ty)
    else:
        g = tl.zeros((BLOCK_M,), acc_ty) + tl.load(go_ptr).to(acc_ty)
    if MEAN:
        d = tl.load(denom_ptr).to(acc_ty)
        # PyTorch's weighted mean with D == 0 gives NaN rows (0 * inf), not inf.
        g = tl.where(d == 0.0, float("nan"), g / d)
    if HAS_T:
        t = tl.load(t_ptr + rows, mask=rmask, other=0).to(tl.int64)
        sc = tl.where(t == ignore_index, 0.0, g)
    else:   # probability targets: no ignored rows
        sc = g
    # 2. Scale the saved gradient rows, tile by tile.
    cols0 = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + cols0
        mask = rmask[:, None] & (cols < C)[None, :]
        offs = rows[:, None] * C + cols[None, :]
        v = tl.load(saved_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        tl.store(out_ptr + offs, (v * sc[:, None]).to(out_ptr.dtype.element_ty), mask=mask)


def _tiles(C: int):
    """(BLOCK_M, BLOCK_C, single_tile, num_warps) for rows of C elements."""
    block_c = max(16, triton.next_power_of_2(max(C, 1)))
    single = block_c <= MAX_TILE_C
    block_c = min(block_c, MAX_TILE_C)
    block_m = max(1, TILE_ELEMS // block_c)
    elems = block_m * block_c
    num_warps = 4 if elems <= 2048 else (8 if elems <= 4096 else 16)
    return block_m, block_c, single, num_warps


def softmax_xent_fwd(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
                     reduction: int, eps: float, loss: torch.Tensor, grad: torch.Tensor | None,
                     denom: torch.Tensor | None) -> None:
    """Fill ``loss`` ([N] for reduction 0, [] for 1 = mean / 2 = sum), ``grad`` [N, C] (or skip it
    when None) and ``denom`` (mean only) for logits x [N, C] with unit class stride."""
    N, C = x.shape
    per_row = reduction == 0
    acc64 = x.dtype == torch.float64
    if N == 0:
        if not per_row:
            # No rows: the sum is 0 and the mean 0 / 0 = NaN, as PyTorch.
            rows = torch.zeros(0, dtype=torch.float64 if acc64 else torch.float32, device=x.device)
            _softmax_xent_reduce_kernel[(1,)](rows, loss, denom if denom is not None else loss, 0,
                                              MEAN=reduction == 1, BLOCK=16)
        return
    rows = None if per_row else torch.empty(2 * N, dtype=torch.float64 if acc64 else torch.float32, device=x.device)
    block_m, block_c, single, num_warps = _tiles(C)
    eps_hi, eps_lo = split_f64(eps)
    _softmax_xent_fwd_kernel[(triton.cdiv(N, block_m),)](
        x, target, weight if weight is not None else x, loss, rows if rows is not None else loss,
        grad if grad is not None else x,
        N, C, x.stride(0), ignore_index, eps_hi, eps_lo,
        HAS_W=weight is not None, SMOOTH=eps > 0.0, WRITE_GRAD=grad is not None, PER_ROW=per_row,
        ACC_FP64=acc64, SINGLE_TILE=single, BLOCK_M=block_m, BLOCK_C=block_c, num_warps=num_warps,
    )
    if not per_row:
        _softmax_xent_reduce_kernel[(1,)](rows, loss, denom if denom is not None else loss, N,
                                          MEAN=reduction == 1, BLOCK=16 if INTERPRET else 1024,
                                          num_warps=1 if INTERPRET else 4)


def softmax_xent_prob_fwd(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: int,
                          eps: float, loss: torch.Tensor, grad: torch.Tensor | None,
                          denom: torch.Tensor | None) -> None:
    """As softmax_xent_fwd for class-probability targets [N, C] (x's dtype, unit class stride); the
    mean's denominator is N."""
    N, C = x.shape
    per_row = reduction == 0
    acc64 = x.dtype == torch.float64
    rows = torch.empty(2 * N if not per_row else 0, dtype=torch.float64 if acc64 else torch.float32,
                       device=x.device)
    if N > 0:
        block_m, block_c, single, num_warps = _tiles(C)
        eps_hi, eps_lo = split_f64(eps)
        _softmax_xent_prob_fwd_kernel[(triton.cdiv(N, block_m),)](
            x, target, weight if weight is not None else x, loss, rows if not per_row else loss,
            grad if grad is not None else x,
            N, C, x.stride(0), target.stride(0), eps_hi, eps_lo,
            HAS_W=weight is not None, WRITE_GRAD=grad is not None, PER_ROW=per_row,
            ACC_FP64=acc64, SINGLE_TILE=single, BLOCK_M=block_m, BLOCK_C=block_c, num_warps=num_warps,
        )
    if not per_row:
        # no rows: the sum is 0 and the mean 0 / 0 = NaN, as PyTorch
        _softmax_xent_reduce_kernel[(1,)](rows, loss, denom if denom is not None else loss, N,
                                          MEAN=reduction == 1, BLOCK=16 if INTERPRET else 1024,
                                          num_warps=1 if INTERPRET else 4)


def softmax_xent_bwd(saved: torch.Tensor, target: torch.Tensor | None, grad_loss: torch.Tensor,
                     denom: torch.Tensor | None, ignore_index: int, per_row: bool, out: torch.Tensor) -> None:
    """out[i, :] = saved[i, :] * scale_i (see the module docstring); target None: no ignored rows."""
    N, C = saved.shape
    if N == 0 or C == 0:
        return
    block_c = max(16, min(triton.next_power_of_2(C), 4096))
    block_m = max(1, TILE_ELEMS // block_c)
    _softmax_xent_bwd_kernel[(triton.cdiv(N, block_m),)](
        saved, target if target is not None else saved, grad_loss, denom if denom is not None else grad_loss, out,
        N, C, grad_loss.stride(0) if per_row else 0, ignore_index,
        PER_ROW=per_row, MEAN=denom is not None, ACC_FP64=saved.dtype == torch.float64, HAS_T=target is not None,
        BLOCK_M=block_m, BLOCK_C=block_c, num_warps=4 if block_m * block_c <= 2048 else 8,
    )
