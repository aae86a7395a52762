"""2:4 sparse linear in Triton: out[M, N] = x[M, K] @ W^T + bias with W [N, K] given compressed
(values [N, K/2] + int16 metadata [N, ceil(K/16)], format in pyimgcls/ops/sparse.py and
csrc/cuda/sparse.h).

Algorithm: a program computes a BLOCK_M x BLOCK_N tile of out. Per BLOCK_K slice of K it loads the
x tile and, for the W tile, the metadata words of its rows and the values: each dense position (n, k)
decodes the nibble of group k // 4 (word k // 16, bits 4 * (k // 4 % 4)), and reads value 2 * (k // 4)
(+1) when k % 4 is the group's first (second) kept index, else 0, so the dense W tile is built in
registers (never in memory) and fed to a dense tl.dot. The tensor cores then do dense work on half
zeros: this kernel saves the weight's memory traffic (K/2 values + K/8 bytes of metadata per row
instead of K values), not FLOPs; the CUDA kernel (mma.sp) saves both.
FLOPs 2 * M * N * K; bytes at least el * (M * K + N * K / 2 + M * N) + N * K / 8.
Test: tests/test_sparse24.py -k sparse_linear (TRITON_INTERPRET=1 on CPU)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._config import INTERPRET
from .common import acc_zeros, mma, tile_offsets

BLOCK_M, BLOCK_N, BLOCK_K, NUM_WARPS = 64, 64, 32, 4


@triton.jit
def _sparse_linear_fwd_kernel(x_ptr, v_ptr, meta_ptr, bias_ptr, out_ptr, M, N, K, META_COLS,
                              HAS_BIAS: tl.constexpr, IS_FP32: tl.constexpr, ACC_FP64: tl.constexpr,
                              UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_K: tl.constexpr):
    offs_m, offs_n, mask_m, mask_n = tile_offsets(tl.program_id(0), tl.program_id(1), M, N, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    half_k = K // 2
    acc = acc_zeros(BLOCK_M, BLOCK_N, ACC_FP64)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k                                                          # [BLOCK_K] dense k
        k_ok = k < K
        x = tl.load(x_ptr + offs_m[:, None] * K + k[None, :], mask=mask_m[:, None] & k_ok[None, :], other=0.0)
        wmask = mask_n[:, None] & k_ok[None, :]                                   # [BLOCK_N, BLOCK_K]
        word = tl.load(meta_ptr + offs_n[:, None] * META_COLS + (k // 16)[None, :], mask=wmask, other=0x4)
        grp = k // 4
        nib = (word.to(tl.int32) >> (4 * (grp % 4)).to(tl.int32)[None, :]) & 0xF
        pos = (k % 4).to(tl.int32)[None, :]
        first = pos == (nib & 3)
        second = pos == (nib >> 2)
        vidx = 2 * grp[None, :] + second.to(tl.int64)
        w = tl.load(v_ptr + offs_n[:, None] * half_k + vidx, mask=wmask & (first | second), other=0.0)
        if ACC_FP64:
            # fp64: broadcast multiply + sum (Triton 3.6's LLVM lowering of this kernel's fp64 dot
            # fails for sm_80 / sm_90: tools/check_gpu_build.py), on a 16 x 16 x 16 tile
            acc += tl.sum(x[:, :, None] * tl.trans(w)[None, :, :], axis=1)
        else:
            acc = mma(x, tl.trans(w), acc, IS_FP32, ACC_FP64, UPCAST_DOT)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(acc.dtype)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * N + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def sparse_linear(x: torch.Tensor, values: torch.Tensor, metadata: torch.Tensor, bias: torch.Tensor | None,
                  out: torch.Tensor) -> torch.Tensor:
    """out[M, N] (contiguous) = x[M, K] (contiguous) @ W^T + bias, W compressed (values, metadata)."""
    M, K = x.shape
    N = values.shape[0]
    if M == 0 or N == 0:
        return out
    # float64: no tl.dot (see the kernel), a 16 x 16 x 16 tile for its 3-D product
    bm, bn, bk = (16, 16, 16) if x.dtype == torch.float64 else (BLOCK_M, BLOCK_N, BLOCK_K)
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    _sparse_linear_fwd_kernel[grid](
        x, values, metadata, bias if bias is not None else out, out, M, N, K, metadata.shape[1],
        HAS_BIAS=bias is not None, IS_FP32=x.dtype == torch.float32, ACC_FP64=x.dtype == torch.float64,
        UPCAST_DOT=INTERPRET and x.dtype == torch.bfloat16,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=NUM_WARPS)
    return out
