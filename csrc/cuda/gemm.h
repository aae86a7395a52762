// CUDA GEMM family (float32 / float16 / bfloat16). Host launchers; see gemm.cu.
#pragma once
#include "../common.h"

namespace pyimgcls::cuda {

// C[m, n] = act(sum_k A[m, k] * B[k, n] + bias[n]), fp32 accumulation, C in dt (row-major, ldc).
// A: a[m*sam + k*sak], B: b[k*sbk + n*sbn] (elements). Either operand may be row- or column-major
// (one of its strides == 1) — transposed views need no copy; fully strided operands take a
// slower generic path. bias may be null. Launches on `stream` of `device`; never synchronises.
void gemm(DType dt, const void* a, int64_t sam, int64_t sak, const void* b, int64_t sbk, int64_t sbn,
          const void* bias, void* c, int64_t ldc, int64_t M, int64_t N, int64_t K, Act act,
          int device, uintptr_t stream);

// Backward of the epilogue on contiguous row-major [M, N] tensors (see cpu/gemm.h); fp32 sums,
// deterministic (no atomics). grad_pre may alias grad; grad_bias may be null.
void bias_act_bwd(DType dt, const void* grad, const void* out, void* grad_pre, void* grad_bias,
                  int64_t M, int64_t N, Act act, int device, uintptr_t stream);

}  // namespace pyimgcls::cuda
