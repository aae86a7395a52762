"""GEMM family in Triton: C = act(A @ B + bias) and the epilogue backward.

Forward: ``_gemm_fwd_kernel`` computes one BLOCK_M x BLOCK_N tile of C per program with ``tl.dot``
on an fp32 accumulator (fp64 for float64 inputs), walking K in BLOCK_K steps; programs are ordered
in groups of GROUP_M tile-rows so consecutive programs reuse the same B columns from L2. Bias and
activation are fused on the accumulator through constexpr switches, then C is stored in the input
dtype. A and B are read through arbitrary strides, so transposed operands (backward) cost no copy.
fp32 operands use input_precision="ieee" (no TF32: float32 means IEEE float32).
  FLOPs: 2*M*N*K.  Minimum bytes: (M*K + K*N + M*N) * itemsize (+ N*itemsize for the bias).

Backward epilogue: ``_bias_act_bwd_kernel`` gives grad_pre = grad * act'(out) and, per column
strip, grad_bias = sum over rows in a fixed order (deterministic, no atomics).
  Bytes: 3*M*N*itemsize (+ N*itemsize).

Standalone activation (ops.activation; the training path of silu / hardswish / hardsigmoid):
``_act_fwd_kernel`` y = act(x) and ``_act_bwd_kernel`` grad_x = act'(saved) * grad over n dense
elements, BLOCK elements per program, computed in fp32 (fp64 for float64).
  Bytes: fwd 2*n*itemsize, bwd 3*n*itemsize.

Test: pytest tests/test_gemm.py tests/test_activations.py -k triton   Benchmark: python benchmarks/bench_gemm.py
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import common
from ._config import FP16, FP32, FP64, INTERPRET, tuned_table
from .common import act_backward, apply_act, grouped_tile, tile_matmul, tile_offsets

ACT_NONE, ACT_RELU, ACT_RELU6 = 0, 1, 2

# BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, per dtype; _config.DtypeArchPrune drops
# the rows whose num_stages * (BLOCK_M + BLOCK_N) * BLOCK_K * itemsize exceeds the device's shared
# memory. fp32 (IEEE: FMA, no tensor cores) holds BLOCK_M*BLOCK_N/(32*num_warps) accumulators per
# thread plus its operand slices, fp64 twice the registers per element: both keep to <= 64
# accumulator registers per thread and short K steps, or ptxas spills at 255 registers.
# tools/check_gpu_build.py compiles every row for sm_80 and sm_90.
_GEMM = tuned_table(("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"), {
    FP16: [(128, 256, 64, 8, 8, 3), (256, 128, 64, 8, 8, 3), (128, 128, 64, 8, 8, 4), (128, 128, 32, 8, 4, 4),
           (64, 128, 64, 8, 4, 4), (128, 64, 64, 8, 4, 4), (64, 64, 64, 8, 4, 4), (32, 64, 128, 8, 4, 4),
           (64, 32, 64, 8, 4, 5)],
    FP32: [(128, 128, 32, 8, 8, 3), (128, 64, 32, 8, 8, 3), (64, 128, 32, 8, 8, 3), (64, 64, 32, 8, 4, 4),
           (64, 32, 32, 8, 4, 4), (32, 64, 32, 8, 4, 4)],
    FP64: [(64, 64, 16, 8, 4, 3), (64, 64, 32, 8, 8, 3), (64, 32, 32, 8, 4, 3), (32, 64, 32, 8, 4, 3),
           (32, 32, 32, 8, 4, 3)],
}, (32, 32, 32, 4, 4, 1), skip=lambda c, dtype, cap, constexprs: _spills_with(c, dtype, cap, constexprs.get("ACT")))

# Rows that spill with a smooth activation's epilogue (silu 3, hardswish 4, sigmoid 5, hardsigmoid 6:
# an exp or a division per element while the tile's accumulator is live), as compiled by
# tools/check_gpu_build.py --all-activations (every activation, 2026-12-03): the 16-bit 256x128 / 128x256 tiles hold
# 128 fp32 accumulators per thread at 255 registers (256x128: 1-7 LDL/STL with silu, hardswish and
# sigmoid on sm_80 and sm_90; 128x256: silu on sm_90), and fp32 64x64x32 w4 s4 spills 1 LDL / 2 STL
# with silu on sm_90 at 96 registers (ptxas keeps two loop-invariant addresses in local memory). A
# launch with a smooth activation picks among the other rows (ACT is part of the autotune key, so
# it is tuned apart); none / relu / relu6 keep every row. Keys: row, then (dtypes, archs).
_SMOOTH_SPILLS = {
    (256, 128, 64, 8, 8, 3): (FP16, (80, 90)),
    (128, 256, 64, 8, 8, 3): (FP16, (90,)),
    (64, 64, 32, 8, 4, 4): (FP32, (90,)),
}
SMOOTH_ACTS = (3, 4, 5, 6)


def _spills_with(config, dtype, cap, act):
    """True when ``config`` is one of _SMOOTH_SPILLS for this dtype and arch (any arch when cap is None)
    and ``act`` is a smooth activation."""
    if act not in SMOOTH_ACTS:
        return False
    k = config.kwargs
    row = (k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"], k["GROUP_M"], config.num_warps, config.num_stages)
    dtypes, caps = _SMOOTH_SPILLS.get(row, ((), ()))
    return dtype in dtypes and (cap is None or cap in caps)


@triton.autotune(configs=_GEMM.configs, key=["M", "N", "K", "IS_FP32", "ACC_FP64", "ACT"], prune_configs_by=_GEMM.prune)
@triton.jit
def _gemm_fwd_kernel(
    a_ptr, b_ptr, bias_ptr, c_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, IS_FP32: tl.constexpr, ACC_FP64: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # 1. Grouped tile ordering: GROUP_M tile-rows share each sweep over the tile-columns.
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    # 2. Main loop (shared with the study ladder): fp32 (fp64) accumulator.
    acc = tile_matmul(a_ptr, b_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, pid_m, pid_n,
                      IS_FP32, ACC_FP64, UPCAST_DOT, BLOCK_M, BLOCK_N, BLOCK_K)
    offs_m, offs_n, mask_m, mask_n = tile_offsets(pid_m, pid_n, M, N, BLOCK_M, BLOCK_N)

    # 3. Epilogue on the accumulator: + bias[n], activation, cast to the output dtype.
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(acc.dtype)
        acc += bias[None, :]
    acc = apply_act(acc, ACT)
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def gemm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, act: int, out: torch.Tensor) -> torch.Tensor:
    """out[M, N] = act(a[M, K] @ b[K, N] + bias[N]); any strides for a and b."""
    M, K = a.shape
    N = b.shape[1]
    if M == 0 or N == 0:
        return out
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    _gemm_fwd_kernel[grid](
        a, b, bias if bias is not None else out, out,
        M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None, ACT=act,
        IS_FP32=a.dtype == torch.float32, ACC_FP64=a.dtype == torch.float64,
        UPCAST_DOT=INTERPRET and a.dtype == torch.bfloat16,
    )
    return out


def bias_act_bwd(grad: torch.Tensor, out: torch.Tensor | None, act: int,
                 grad_pre: torch.Tensor, grad_bias: torch.Tensor | None) -> None:
    """grad_pre = grad * act'(out); grad_bias = grad_pre.sum(0). grad, out: contiguous [M, N], the
    [N=M, O=N, P=1] case of the shared conv/GEMM epilogue backward (common.bias_act_bwd)."""
    M, N = grad.shape
    if N == 0:
        return
    common.bias_act_bwd(grad, out, grad_pre, grad_bias, act, M, N, 1, N, 1, 0)


# Elementwise activation: BLOCK elements per program, 4 warps; memory-bound (2 or 3 bytes per
# element read/written per itemsize), so one size suffices.
_ACT_BLOCK = 1024


@triton.jit
def _act_fwd_kernel(x_ptr, y_ptr, n, ACT: tl.constexpr, ACC_FP64: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    tl.store(y_ptr + offs, apply_act(x, ACT).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _act_bwd_kernel(g_ptr, s_ptr, gx_ptr, n, ACT: tl.constexpr, ACC_FP64: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    tl.store(gx_ptr + offs, act_backward(g, s, ACT).to(gx_ptr.dtype.element_ty), mask=mask)


def act_fwd(x: torch.Tensor, act: int, y: torch.Tensor) -> None:
    """y = act(x) over the dense buffers of x and y (same strides)."""
    n = x.numel()
    if n:
        _act_fwd_kernel[(triton.cdiv(n, _ACT_BLOCK),)](x, y, n, ACT=act, ACC_FP64=x.dtype == torch.float64,
                                                       BLOCK=_ACT_BLOCK, num_warps=4)


def act_bwd(grad: torch.Tensor, saved: torch.Tensor, act: int, grad_x: torch.Tensor) -> None:
    """grad_x = act'(saved) * grad over dense buffers with the same strides."""
    n = grad.numel()
    if n:
        _act_bwd_kernel[(triton.cdiv(n, _ACT_BLOCK),)](grad, saved, grad_x, n, ACT=act,
                                                       ACC_FP64=grad.dtype == torch.float64, BLOCK=_ACT_BLOCK,
                                                       num_warps=4)
