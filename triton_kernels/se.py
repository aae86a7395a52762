"""Squeeze-and-excitation family in Triton: the SE block forward / backward and the stochastic-depth
scale(-and-add).

What is computed (x viewed as [N, C, HW]; R squeeze channels; see pyimgcls/ops/se.py):
  fwd:  pooled = mean_s x;  hidden = W1 pooled + b1;  z = W2 act(hidden) + b2;  y = x * gate(z)
  bwd:  gz = (sum_s grad x) gate'(z);  gh = (W2^T gz) act'(hidden);  gpooled = W1^T gh;
        gx = grad gate(z) + gpooled / HW;  gW2 = gz^T act(hidden), gb2 = sum_n gz;  gW1 = gh^T pooled, gb1 = sum_n gh
  drop_path: out[n, :] = x[n, :] * scale[n] (+ residual[n, :])

Algorithm: four kernels, each used twice (forward and backward), element (n, c, s) at
n*stride_n + c*stride_c + s*stride_s so one kernel reads NCHW (stride_s = 1) and NHWC (stride_c = 1):
  _se_reduce_kernel   program (n, channel block): [BLOCK_S, BLOCK_C] tiles summed over s; the mean
                      (forward) or the gate's backward applied to the sum of grad * x (backward)
  _se_fc_kernel       program (n, output block): a [BLOCK_O, BLOCK_I] tile of the weight (any strides,
                      so W and W^T are the same kernel) times the input row, with the activation on
                      the input (fc2) or its backward on the output (gh) fused
  _se_apply_kernel    program (n, s block, c block): out = a * gate(z) (+ gpooled / HW)
  _se_wgrad_kernel    program (output block, input block): sum over n in order of outer products
                      (+ the bias gradient in the first input block); no atomics, deterministic
The per-sample vectors are float32 (float64 for float64 x); values are upcast on load.

Cost (Q = N*C*HW elements of T bytes): fwd reads x twice, writes y (3TQ); bwd reads grad and x,
then grad again, writes gx (4TQ); the matrix-vector products are 2NRC multiply-adds each way.
drop_path: reads x (+ residual), writes out.

Test: pytest tests/test_se.py tests/test_stochastic_depth.py -k triton
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._config import INTERPRET
from .common import join_f64, split_f64

# ATen's hardsigmoid backward multiplies by the float constant 1.0f / 6.0f for every dtype. A
# constexpr: a compiled kernel may read only constexpr globals (a plain float compiled under the
# interpreter only; tools/check_gpu_build.py's se probe failed on it for sm_80 / sm_90).
_ONE_SIXTH = tl.constexpr(0.1666666716337204)


# ----------------------------------------------------------------------------- formulas
# ATen's formulas and NaN semantics (selects, so NaN falls through every forward). They fold into the
# shared activation vocabulary (triton_kernels/common.py) once silu / hardsigmoid land there.
@triton.jit
def _se_act(h, ACT: tl.constexpr):
    if ACT == 1:
        return h / (1.0 + tl.exp(-h))       # silu
    return tl.where(h < 0, 0.0, h)          # relu


@triton.jit
def _se_act_grad(h, g, ACT: tl.constexpr):
    if ACT == 1:
        s = 1.0 / (1.0 + tl.exp(-h))
        return g * s * (1.0 + h * (1.0 - s))
    return tl.where(h <= 0, 0.0, g)         # threshold_backward: NaN passes


@triton.jit
def _se_gate(z, GATE: tl.constexpr):
    if GATE == 1:
        t = z + 3.0
        t = tl.where(t < 0, 0.0, t)
        t = tl.where(t > 6, 6.0, t)
        return t / 6.0
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _se_gate_grad(z, g, GATE: tl.constexpr):
    if GATE == 1:
        return tl.where((z > -3.0) & (z < 3.0), g * _ONE_SIXTH, 0.0)
    s = 1.0 / (1.0 + tl.exp(-z))
    return g * (1.0 - s) * s


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _se_reduce_kernel(x_ptr, g_ptr, z_ptr, out_ptr, C, HW, stride_n, stride_c, stride_s, inv_hw_hi,
                      inv_hw_lo, PROD: tl.constexpr, GATE: tl.constexpr, ACC_FP64: tl.constexpr,
                      BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[n, c] = mean_s x (PROD false) or gate'(z[n, c]) * sum_s g x (PROD true), [BLOCK_S, BLOCK_C] tiles."""
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    n = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    acc = tl.zeros((BLOCK_S, BLOCK_C), dtype=acc_ty)
    base = n * stride_n
    for s0 in range(0, HW, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        mask = (offs_s < HW)[:, None] & cmask[None, :]
        offs = base + (offs_s * stride_s)[:, None] + (offs_c * stride_c)[None, :]
        v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        if PROD:
            v = v * tl.load(g_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        acc += v
    total = tl.sum(acc, axis=0)
    if PROD:
        z = tl.load(z_ptr + n * C + offs_c, mask=cmask, other=0.0)
        total = _se_gate_grad(z, total, GATE)
    else:
        total = total * join_f64(inv_hw_hi, inv_hw_lo, acc_ty)
    tl.store(out_ptr + n * C + offs_c, total, mask=cmask)


@triton.jit
def _se_fc_kernel(in_ptr, w_ptr, b_ptr, aux_ptr, out_ptr, I, O, stride_wo, stride_wi,
                  HAS_BIAS: tl.constexpr, IN_ACT: tl.constexpr, OUT_ACT_GRAD: tl.constexpr, ACT: tl.constexpr,
                  ACC_FP64: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr):
    """out[n, o] = (b[o]) + sum_i W[o, i] f(in[n, i]), f = act (IN_ACT) or identity; with OUT_ACT_GRAD
    the result is act'(aux[n, o]) * (...) (the activation's backward on the hidden pre-activation)."""
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    n = tl.program_id(0).to(tl.int64)
    offs_o = tl.program_id(1).to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O)
    omask = offs_o < O
    acc = tl.zeros((BLOCK_O, BLOCK_I), dtype=acc_ty)
    for i0 in range(0, I, BLOCK_I):
        offs_i = i0 + tl.arange(0, BLOCK_I)
        imask = offs_i < I
        v = tl.load(in_ptr + n * I + offs_i, mask=imask, other=0.0).to(acc_ty)
        if IN_ACT:
            v = tl.where(imask, _se_act(v, ACT), 0.0)
        w = tl.load(w_ptr + (offs_o * stride_wo)[:, None] + (offs_i * stride_wi)[None, :],
                    mask=omask[:, None] & imask[None, :], other=0.0).to(acc_ty)
        acc += w * v[None, :]
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(b_ptr + offs_o, mask=omask, other=0.0).to(acc_ty)
    if OUT_ACT_GRAD:
        h = tl.load(aux_ptr + n * O + offs_o, mask=omask, other=0.0).to(acc_ty)
        out = _se_act_grad(h, out, ACT)
    tl.store(out_ptr + n * O + offs_o, out, mask=omask)


@triton.jit
def _se_apply_kernel(a_ptr, z_ptr, add_ptr, out_ptr, C, HW, stride_n, stride_c, stride_s, inv_hw_hi,
                     inv_hw_lo, HAS_ADD: tl.constexpr, GATE: tl.constexpr, BLOCK_S: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    """out = a * gate(z[n, c]) (+ add[n, c] * inv_hw): y in the forward, grad_input in the backward. The
    gate is rounded to a's dtype first, as PyTorch's x * scale multiplies by a scale of x's dtype."""
    n = tl.program_id(0).to(tl.int64)
    offs_s = tl.program_id(1).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_c = tl.program_id(2).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    mask = (offs_s < HW)[:, None] & cmask[None, :]
    offs = n * stride_n + (offs_s * stride_s)[:, None] + (offs_c * stride_c)[None, :]
    z = tl.load(z_ptr + n * C + offs_c, mask=cmask, other=0.0)
    g = _se_gate(z, GATE).to(out_ptr.dtype.element_ty).to(z.dtype)
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(z.dtype)
    out = a * g[None, :]
    if HAS_ADD:
        add = tl.load(add_ptr + n * C + offs_c, mask=cmask, other=0.0)
        add = add * join_f64(inv_hw_hi, inv_hw_lo, add.dtype)
        out = out + add.to(out_ptr.dtype.element_ty).to(z.dtype)[None, :]
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _se_wgrad_kernel(a_ptr, b_ptr, gw_ptr, gb_ptr, N, O, I, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                     B_ACT: tl.constexpr, ACT: tl.constexpr, ACC_FP64: tl.constexpr,
                     BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr):
    """gw[o, i] = sum_n a[n, o] f(b[n, i]) (f = act with B_ACT), gb[o] = sum_n a[n, o] (first input block);
    samples added in order."""
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    offs_o = tl.program_id(0).to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O)
    pid_i = tl.program_id(1)
    offs_i = pid_i.to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
    omask = offs_o < O
    imask = offs_i < I
    acc = tl.zeros((BLOCK_O, BLOCK_I), dtype=acc_ty)
    bias = tl.zeros((BLOCK_O,), dtype=acc_ty)
    for n in range(0, N):
        av = tl.load(a_ptr + n * O + offs_o, mask=omask, other=0.0).to(acc_ty)
        bias += av
        if HAS_W:
            bv = tl.load(b_ptr + n * I + offs_i, mask=imask, other=0.0).to(acc_ty)
            if B_ACT:
                bv = _se_act(bv, ACT)
            acc += av[:, None] * bv[None, :]
    if HAS_W:
        tl.store(gw_ptr + offs_o[:, None] * I + offs_i[None, :], acc, mask=omask[:, None] & imask[None, :])
    if HAS_B:
        if pid_i == 0:
            tl.store(gb_ptr + offs_o, bias, mask=omask)


@triton.jit
def _drop_path_fwd_kernel(x_ptr, scale_ptr, r_ptr, out_ptr, M, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    """out[n, m] = x[n, m] * scale[n] (+ r[n, m]) in the scale's dtype (float32 / float64); program (m block, n)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    n = tl.program_id(1).to(tl.int64)
    mask = offs < M
    s = tl.load(scale_ptr + n)
    v = tl.load(x_ptr + n * M + offs, mask=mask, other=0.0).to(s.dtype) * s
    if HAS_RES:
        v += tl.load(r_ptr + n * M + offs, mask=mask, other=0.0).to(s.dtype)
    tl.store(out_ptr + n * M + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- host side
def _strides(C, HW, channels_last):
    """(stride_n, stride_c, stride_s) of the [N, C, HW] view."""
    return (C * HW, 1, C) if channels_last else (C * HW, HW, 1)


def _tile(C, HW, channels_last):
    """(BLOCK_S, BLOCK_C): wide along the contiguous axis."""
    if INTERPRET:
        return 16, 16
    if channels_last:
        bc = min(triton.next_power_of_2(C), 128)
        return max(1, 2048 // bc), bc
    bs = min(triton.next_power_of_2(HW), 256)
    return bs, max(1, 2048 // bs)


_FC_BLOCK = (16, 16) if INTERPRET else (32, 64)
_WG_BLOCK = (16, 16) if INTERPRET else (32, 32)


def _fc(inp, w, stride_wo, stride_wi, O, I, bias, aux, out, in_act, out_act_grad, act):
    N = inp.shape[0]
    bo, bi = _FC_BLOCK
    _se_fc_kernel[(N, triton.cdiv(O, bo))](
        inp, w, bias if bias is not None else w, aux if aux is not None else inp, out, I, O, stride_wo, stride_wi,
        HAS_BIAS=bias is not None, IN_ACT=in_act, OUT_ACT_GRAD=out_act_grad, ACT=act,
        ACC_FP64=w.dtype == torch.float64, BLOCK_O=bo, BLOCK_I=bi)


def _wgrad(a, b, gw, gb, O, I, b_act, act):
    N = a.shape[0]
    bo, bi = _WG_BLOCK
    _se_wgrad_kernel[(triton.cdiv(O, bo), triton.cdiv(I, bi) if gw is not None else 1)](
        a, b, gw if gw is not None else a, gb if gb is not None else a, N, O, I, HAS_W=gw is not None,
        HAS_B=gb is not None, B_ACT=b_act, ACT=act, ACC_FP64=a.dtype == torch.float64, BLOCK_O=bo, BLOCK_I=bi)


def se_fwd(x, w1, b1, w2, b2, y, pooled, hidden, z, N, C, HW, R, channels_last, act, gate) -> None:
    """Fills y, pooled, hidden, z (module docstring); x and y in the [N, C, HW] layout given by channels_last."""
    sn, sc, ss = _strides(C, HW, channels_last)
    bs, bc = _tile(C, HW, channels_last)
    fp64 = pooled.dtype == torch.float64
    _se_reduce_kernel[(N, triton.cdiv(C, bc))](x, x, pooled, pooled, C, HW, sn, sc, ss, *split_f64(1.0 / HW),
                                                PROD=False, GATE=gate, ACC_FP64=fp64, BLOCK_S=bs, BLOCK_C=bc)
    _fc(pooled, w1, C, 1, R, C, b1, None, hidden, False, False, act)           # hidden = W1 pooled + b1
    _fc(hidden, w2, R, 1, C, R, b2, None, z, True, False, act)                  # z = W2 act(hidden) + b2
    _se_apply_kernel[(N, triton.cdiv(HW, bs), triton.cdiv(C, bc))](
        x, z, z, y, C, HW, sn, sc, ss, *split_f64(1.0 / HW), HAS_ADD=False, GATE=gate, BLOCK_S=bs, BLOCK_C=bc)


def se_bwd(grad, x, w1, w2, pooled, hidden, z, gx, gw1, gb1, gw2, gb2, N, C, HW, R, channels_last, act, gate) -> None:
    """Fills the gradients that are not None (module docstring)."""
    sn, sc, ss = _strides(C, HW, channels_last)
    bs, bc = _tile(C, HW, channels_last)
    fp64 = pooled.dtype == torch.float64
    gz = torch.empty((N, C), dtype=pooled.dtype, device=x.device)
    gh = torch.empty((N, R), dtype=pooled.dtype, device=x.device)
    _se_reduce_kernel[(N, triton.cdiv(C, bc))](grad, x, z, gz, C, HW, sn, sc, ss, 1.0, 0.0, PROD=True, GATE=gate,
                                                ACC_FP64=fp64, BLOCK_S=bs, BLOCK_C=bc)
    _fc(gz, w2, 1, R, R, C, None, hidden, gh, False, True, act)                 # gh = (W2^T gz) act'(hidden)
    if gw2 is not None or gb2 is not None:
        _wgrad(gz, hidden, gw2, gb2, C, R, True, act)
    if gw1 is not None or gb1 is not None:
        _wgrad(gh, pooled, gw1, gb1, R, C, False, act)
    if gx is not None:
        gpool = torch.empty((N, C), dtype=pooled.dtype, device=x.device)
        _fc(gh, w1, 1, C, C, R, None, None, gpool, False, False, act)           # gpooled = W1^T gh
        _se_apply_kernel[(N, triton.cdiv(HW, bs), triton.cdiv(C, bc))](
            grad, z, gpool, gx, C, HW, sn, sc, ss, *split_f64(1.0 / HW), HAS_ADD=True, GATE=gate, BLOCK_S=bs,
            BLOCK_C=bc)


def drop_path(x, scale, residual, out, N, M) -> None:
    """out[n, :] = x[n, :] * scale[n] (+ residual[n, :]) on [N, M] rows."""
    block = 256 if INTERPRET else 1024
    _drop_path_fwd_kernel[(triton.cdiv(M, block), N)](x, scale, residual if residual is not None else x, out, M,
                                                       HAS_RES=residual is not None, BLOCK=block)
