"""Triton vocabulary shared by the production kernels (gemm, conv, batchnorm) and the study ladder:
the grouped tile order, the tile offsets, the accumulator and ``tl.dot`` step and the K-loop tile product of
a GEMM, the fused activations and their backward, the bias/activation backward of a conv or GEMM output, and the
fixed-order reduction of split partial sums. One definition each, so the families cannot drift.

Bias/activation backward, ``bias_act_bwd``: for an output viewed as [N, O, P] with strides
(sn, so, sp) (a GEMM's [M, N] is N=M, O=N, P=1),
    grad_pre = grad * act'(out)    (select semantics, as ATen: NaN outputs pass the gradient, masked
                                    infs become 0)
    grad_bias[o] = sum over the N*P rows of grad_pre[:, o]
The grid is (channel tiles, row splits): each program walks a contiguous chunk of rows and writes its
column partial sums to a [splits, O] scratch in the accumulation dtype; ``split_reduce_kernel`` then
adds the splits in order 0, 1, ... (deterministic, no atomics). One row split per channel tile would
leave most SMs idle for the few-channel outputs of early layers (2-16 of 132 busy). Bytes: read grad
(+ out with an activation), write grad_pre when there is an activation, O * splits partials.
Test: pytest tests/test_conv.py tests/test_gemm.py -k triton
"""
import struct

import torch
import triton
import triton.language as tl

from ._config import INTERPRET

INTERPRET_SM_COUNT = 4  # the "SM count" used to size split grids under the interpreter (CPU tests)


# Activation codes (csrc/common.h Act, pyimgcls/_native.py ACT_CODES): 0 none, 1 relu, 2 relu6, 3 silu,
# 4 hardswish, 5 sigmoid, 6 hardsigmoid. ATen's formulas: silu x / (1 + exp(-x)), hardswish
# x * relu6(x + 3) / 6, sigmoid 1 / (1 + exp(-x)), hardsigmoid relu6(x + 3) / 6.
@triton.jit
def _relu6(x):
    # comparisons with NaN are false, so NaN falls through untouched (PyTorch's NaN propagation)
    return tl.where(x < 0, 0.0, tl.where(x > 6, 6.0, x))


@triton.jit
def apply_act(x, ACT: tl.constexpr):
    if ACT == 1:
        x = tl.where(x < 0, 0.0, x)
    elif ACT == 2:
        x = _relu6(x)
    elif ACT == 3:
        x = x / (1.0 + tl.exp(-x))
    elif ACT == 4:
        x = x * _relu6(x + 3.0) / 6.0
    elif ACT == 5:
        x = 1.0 / (1.0 + tl.exp(-x))
    elif ACT == 6:
        x = _relu6(x + 3.0) / 6.0
    return x


@triton.jit
def act_backward(g, y, ACT: tl.constexpr):
    # grad through the activation from the saved tensor y: the output for relu / relu6 / sigmoid,
    # the pre-activation for silu / hardswish / hardsigmoid (ATen's backward kernels read the same).
    # relu / relu6 by select (not multiply), as ATen's threshold_backward / hardtanh_backward: a NaN
    # output passes the gradient through and an inf gradient at a masked position becomes 0, not NaN.
    # hardswish: y <= -3 -> 0, y < 3 -> g * (y / 3 + 0.5), else g (a NaN y passes g, as ATen's scalar
    # and CUDA kernels); hardsigmoid: g / 6 on the open interval (-3, 3), else 0.
    if ACT == 1:
        g = tl.where(y <= 0, 0.0, g)
    elif ACT == 2:
        g = tl.where((y <= 0) | (y >= 6), 0.0, g)
    elif ACT == 3:
        s = 1.0 / (1.0 + tl.exp(-y))
        g = g * s * (1.0 + y * (1.0 - s))
    elif ACT == 4:
        g = tl.where(y <= -3.0, 0.0, tl.where(y < 3.0, g * (y / 3.0 + 0.5), g))
    elif ACT == 5:
        g = g * (1.0 - y) * y
    elif ACT == 6:
        g = tl.where((y > -3.0) & (y < 3.0), g / 6.0, 0.0)
    return g


@triton.jit
def grouped_tile(tile, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # Tile index -> (pid_m, pid_n) in groups of GROUP_M tile-rows: consecutive tiles walk down a
    # group's rows first, so a wave of programs touches GROUP_M row-panels of A and few column-panels
    # of B, and both stay in L2.
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_in_group = GROUP_M * num_pid_n
    group_id = tile // num_in_group
    first_m = group_id * GROUP_M
    group_size = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((tile % num_in_group) % group_size)
    pid_n = (tile % num_in_group) // group_size
    return pid_m, pid_n


@triton.jit
def tile_offsets(pid_m, pid_n, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Rows and columns of output tile (pid_m, pid_n) and their in-range masks. int64: tensors may
    # exceed 2**31 elements.
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)   # [BLOCK_M]
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)   # [BLOCK_N]
    return offs_m, offs_n, offs_m < M, offs_n < N


@triton.jit
def acc_zeros(BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACC_FP64: tl.constexpr):
    # The [BLOCK_M, BLOCK_N] accumulator of a tile product: fp64 for float64 inputs, fp32 otherwise.
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    return tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_ty)


@triton.jit
def mma(a, b, acc, IS_FP32: tl.constexpr, ACC_FP64: tl.constexpr, UPCAST_DOT: tl.constexpr):
    # acc += a @ b for one K slice, in the precision the dtype calls for.
    if UPCAST_DOT:
        # Interpreter only: numpy has no bfloat16, so its tl.dot misreads bf16 operands. The
        # values are exact in fp32, so the product matches a bf16 x bf16 -> fp32 tensor-core dot.
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if ACC_FP64:
        acc = tl.dot(a, b, acc, input_precision="ieee", out_dtype=tl.float64)
    elif IS_FP32:
        acc = tl.dot(a, b, acc, input_precision="ieee")  # IEEE fp32, no TF32
    else:
        acc = tl.dot(a, b, acc)  # fp16/bf16 operands, fp32 accumulation
    return acc


@triton.jit
def tile_matmul(a_ptr, b_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, pid_m, pid_n,
                IS_FP32: tl.constexpr, ACC_FP64: tl.constexpr, UPCAST_DOT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # acc[BLOCK_M, BLOCK_N] = A[pid_m tile, :] @ B[:, pid_n tile] on an fp32 (fp64 for float64)
    # accumulator; out-of-range rows/cols/K load 0. Offsets in int64: tensors may exceed 2**31
    # elements. The production GEMM and the study ladder's steps share this loop.
    offs_m, offs_n, mask_m, mask_n = tile_offsets(pid_m, pid_n, M, N, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)                     # [BLOCK_K]
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak   # [BLOCK_M, BLOCK_K]
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn   # [BLOCK_K, BLOCK_N]
    acc = acc_zeros(BLOCK_M, BLOCK_N, ACC_FP64)
    for k0 in range(0, K, BLOCK_K):
        k_left = K - k0
        a = tl.load(a_ptrs, mask=mask_m[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0.0)
        acc = mma(a, b, acc, IS_FP32, ACC_FP64, UPCAST_DOT)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    return acc


@triton.jit
def split_reduce_kernel(part_ptr, dst_ptr, numel, SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    # dst = sum_s part[s] in the order s = 0, 1, ... (deterministic), cast to dst's dtype.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.load(part_ptr + offs, mask=mask, other=0.0)
    for s in range(1, SPLITS):
        acc += tl.load(part_ptr + s * numel + offs, mask=mask, other=0.0)
    tl.store(dst_ptr + offs, acc.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_act_bwd_kernel(
    grad_ptr, out_ptr, grad_pre_ptr, part_ptr,
    N, O, P, sn, so, sp, rows_per_split,
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr,
):
    # program (pid_o, pid_r): channels [pid_o*BLOCK_O, +BLOCK_O) x rows [r0, r1) of the N*P rows.
    offs_o = tl.program_id(0).to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O)
    pid_r = tl.program_id(1).to(tl.int64)
    mask_o = offs_o < O
    rows = N * P
    r0 = pid_r * rows_per_split
    r1 = tl.minimum(r0 + rows_per_split, rows)
    if ACC_FP64:
        col_sum = tl.zeros((BLOCK_O,), dtype=tl.float64)
    else:
        col_sum = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for m0 in range(r0, r1, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        mask = (offs_m[:, None] < r1) & mask_o[None, :]
        idx = ((offs_m // P) * sn + (offs_m % P) * sp)[:, None] + (offs_o * so)[None, :]
        gv = tl.load(grad_ptr + idx, mask=mask, other=0.0).to(col_sum.dtype)
        if ACT != 0:
            y = tl.load(out_ptr + idx, mask=mask, other=0.0).to(col_sum.dtype)
            gv = act_backward(gv, y, ACT)
            tl.store(grad_pre_ptr + idx, gv.to(grad_pre_ptr.dtype.element_ty), mask=mask)
        if HAS_BIAS:
            col_sum += tl.sum(gv, axis=0)
    if HAS_BIAS:
        tl.store(part_ptr + pid_r * O + offs_o, col_sum, mask=mask_o)


# Float scalars at float64 precision. On a GPU, Triton passes a plain Python float argument as fp32
# (~1e-8 relative error: enough to fail float64 comparisons, as the first H200 run showed for batch
# norm's momentum and squeeze-excitation's 1 / HW); the interpreter keeps double precision, so CPU tests
# cannot see it (tests/test_triton_fp64_scalars.py guards it instead). A kernel that may run on float64
# data takes such a value as two parameters NAME_hi, NAME_lo (split_f64 on the host) and rebuilds it
# with join_f64 in the dtype it computes in: exact to ~2^-48 in fp64, and in fp32 exactly the fp32
# rounding of the value (what a plain float argument gives).
def split_f64(v: float) -> tuple[float, float]:
    """(hi, lo): hi = v rounded to fp32, lo = v - hi (exact in double), so hi + lo == v."""
    hi = struct.unpack("f", struct.pack("f", v))[0]
    return hi, float(v - hi)


@triton.jit
def join_f64(hi, lo, dtype: tl.constexpr):
    return (tl.zeros((), dtype) + hi) + lo


def split_reduce(part, dst, numel, splits) -> None:
    """dst[:numel] = sum over s of part[s * numel:(s + 1) * numel], in order (split_reduce_kernel)."""
    block = 1024
    split_reduce_kernel[(triton.cdiv(numel, block),)](part, dst, numel, SPLITS=splits, BLOCK=block)


def sm_count(device: torch.device) -> int:
    if INTERPRET or device.type != "cuda":
        return INTERPRET_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


def bias_act_bwd(grad, out, grad_pre, grad_bias, act, N, O, P, sn, so, sp) -> None:
    """grad_pre = grad * act'(out) (when act != 0), grad_bias = per-channel sum over the N*P rows of
    the [N, O, P] view with strides (sn, so, sp) shared by grad, out and grad_pre."""
    rows = N * P
    if rows == 0 or O == 0:
        if grad_bias is not None:
            grad_bias.zero_()
        return
    block_o = 16 if INTERPRET else 32
    block_m = 64
    tiles = triton.cdiv(O, block_o)
    # ~4 programs per SM in all, each with at least 256 rows (the reduction stays a small part)
    splits = max(1, min(triton.cdiv(rows, 256), triton.cdiv(4 * sm_count(grad.device), tiles), 65535))
    rows_per_split = triton.cdiv(triton.cdiv(rows, splits), block_m) * block_m
    splits = triton.cdiv(rows, rows_per_split)
    acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
    part = (torch.empty(splits * O, dtype=acc, device=grad.device) if grad_bias is not None else grad)
    _bias_act_bwd_kernel[(tiles, splits)](
        grad, out if out is not None else grad, grad_pre, part,
        N, O, P, sn, so, sp, rows_per_split,
        ACT=act, HAS_BIAS=grad_bias is not None, ACC_FP64=acc == torch.float64,
        BLOCK_M=block_m, BLOCK_O=block_o)
    if grad_bias is not None:
        split_reduce(part, grad_bias, O, splits)
