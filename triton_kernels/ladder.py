"""Triton GEMM study ladder: C[M, N] = A[M, K] @ B[K, N] in four numbered steps (docs/ladder.md).

Every step is a complete, selectable kernel. Steps 1-3 share the K-loop tile product ``common.tile_matmul``
(one BLOCK_M x BLOCK_N tile of C on an fp32 accumulator, ``tl.dot`` per BLOCK_K slice) so they differ
only in what the ladder is about: which program computes which tile, and with which tiles. Step 4 is
the production kernel, called, not copied, as the CPU and CUDA ladders end on theirs.

  1 basic       one program per C tile, 2-D grid in row-major tile order, one fixed config.
  2 grouped     1-D grid with grouped ("L2 swizzle") tile order: GROUP_M tile-rows sweep the
                tile-columns together, so the B columns a wave of programs reads are shared in L2
                instead of each program row re-fetching all of B from HBM.
  3 persistent  grid = number of SMs; each program loops over tiles (same grouped order), so launch
                and tail effects shrink and a program's epilogue overlaps the next tile's loads.
                Under the interpreter a fixed "SM count" of 4 is used (common.sm_count).
  4 production  triton_kernels/gemm.py: step 2's tile order under ``triton.autotune`` over tile
                shapes, warps and pipeline stages (one config under the interpreter, see _config.py),
                with the fused bias/activation epilogue (unused here) and float64 support.

Precision: fp32 operands use ``input_precision="ieee"`` (no TF32); fp16/bf16 accumulate in fp32 and
C is stored in the input dtype. Under the interpreter bf16 operands are upcast to fp32 before the
dot (numpy has no bfloat16; the values are exact in fp32), as in triton_kernels/gemm.py.

FLOPs = 2*M*N*K.  Minimum bytes = (M*K + K*N + M*N) * itemsize.  The tile choice sets the real
traffic: with BLOCK_M x BLOCK_N tiles and no L2 reuse, A is read N/BLOCK_N times and B M/BLOCK_M
times, i.e. itemsize*(M*K*N/BLOCK_N + K*N*M/BLOCK_M) bytes; steps 2-4 cut that through L2 reuse.

Forward only (study kernels, no autograd). Test: pytest tests/test_ladder.py -k triton
Benchmark: python benchmarks/bench_ladder.py (GPU)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import gemm
from ._config import INTERPRET
from .common import grouped_tile, sm_count, tile_matmul



@dataclass(frozen=True)
class TritonStep:
    step: int
    name: str
    description: str


STEPS = (
    TritonStep(1, "basic", "one program per C tile, 2-D grid in row-major order, tl.dot on an fp32 accumulator"),
    TritonStep(2, "grouped", "1-D grid with grouped tile order (L2 swizzle): GROUP_M tile-rows share B in L2"),
    TritonStep(3, "persistent", "grid = number of SMs, each program loops over tiles in grouped order"),
    TritonStep(4, "production", "the production kernel (triton_kernels/gemm.py): step 2 under triton.autotune "
                                "over tile shape, warps and pipeline stages"),
)
DTYPES = ("float32", "float16", "bfloat16")

# Fixed tiles of steps 1, 2 (GPU / interpreter). Small under the interpreter so tests stay fast and
# still cover partial tiles.
_FIXED_GPU = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3)
_FIXED_INTERP = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=1, num_stages=1)
_GROUP_M = 8
_PERSISTENT_GPU = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)

@triton.jit
def _matmul_tile(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                 pid_m, pid_n, IS_FP32: tl.constexpr, UPCAST_DOT: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # C tile (pid_m, pid_n) = A row-panel @ B column-panel, stored in C's dtype: the work every step
    # does per tile; the steps differ only in which program gets which (pid_m, pid_n).
    acc = tile_matmul(a_ptr, b_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, pid_m, pid_n,
                      IS_FP32, False, UPCAST_DOT, BLOCK_M, BLOCK_N, BLOCK_K)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _ladder_basic_fwd_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                             stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                             IS_FP32: tl.constexpr, UPCAST_DOT: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Step 1: program (pid_m, pid_n) of a 2-D grid computes C tile (pid_m, pid_n). The hardware
    # launches programs with axis 0 fastest, so a wave sweeps one tile-row: A's row-panel is shared,
    # but every program reads a different B column-panel, so all of B streams from HBM per tile-row.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    _matmul_tile(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                 pid_m, pid_n, IS_FP32, UPCAST_DOT, BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def _ladder_grouped_fwd_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                               stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                               IS_FP32: tl.constexpr, UPCAST_DOT: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                               GROUP_M: tl.constexpr):
    # Step 2: 1-D grid, tile order grouped by GROUP_M tile-rows (L2 swizzle).
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    _matmul_tile(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                 pid_m, pid_n, IS_FP32, UPCAST_DOT, BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def _ladder_persistent_fwd_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                                  stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                                  NUM_PROGRAMS: tl.constexpr,
                                  IS_FP32: tl.constexpr, UPCAST_DOT: tl.constexpr,
                                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                  GROUP_M: tl.constexpr):
    # Step 3: NUM_PROGRAMS (= SM count) programs; program p computes tiles p, p + NUM_PROGRAMS, ...
    # in grouped order. One launch wave, no per-tile launch cost, no partial last wave of CTAs.
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for tile in range(tl.program_id(0), num_tiles, NUM_PROGRAMS):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        _matmul_tile(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                     pid_m, pid_n, IS_FP32, UPCAST_DOT, BLOCK_M, BLOCK_N, BLOCK_K)


def matmul(a: torch.Tensor, b: torch.Tensor, step: int, out: torch.Tensor) -> torch.Tensor:
    """out[M, N] = a[M, K] @ b[K, N] with Triton ladder step ``step`` (arguments already checked by
    pyimgcls.ladder); any strides for a, b and out."""
    M, K = a.shape
    N = b.shape[1]
    if M == 0 or N == 0:
        return out
    common = dict(IS_FP32=a.dtype == torch.float32, UPCAST_DOT=INTERPRET and a.dtype == torch.bfloat16)
    args = (a, b, out, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1))
    fixed = _FIXED_INTERP if INTERPRET else _FIXED_GPU
    if step == 1:
        grid = (triton.cdiv(M, fixed["BLOCK_M"]), triton.cdiv(N, fixed["BLOCK_N"]))
        _ladder_basic_fwd_kernel[grid](*args, **common, **fixed)
    elif step == 2:
        grid = (triton.cdiv(M, fixed["BLOCK_M"]) * triton.cdiv(N, fixed["BLOCK_N"]),)
        _ladder_grouped_fwd_kernel[grid](*args, **common, **fixed, GROUP_M=_GROUP_M)
    elif step == 3:
        meta = _FIXED_INTERP if INTERPRET else _PERSISTENT_GPU
        tiles = triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])
        programs = min(sm_count(a.device), tiles)
        _ladder_persistent_fwd_kernel[(programs,)](*args, NUM_PROGRAMS=programs, **common, **meta,
                                                   GROUP_M=_GROUP_M)
    elif step == 4:
        # the production kernel itself, as the CPU and CUDA ladders end on theirs (included, not copied)
        gemm.gemm(a, b, None, 0, out)
    else:
        raise ValueError(f"step: the Triton GEMM ladder has steps 1-{len(STEPS)}, got {step}")
    return out
