// GEMM ladder, step 01: naive. One thread per element of C, an inner product over K straight from
// global memory.
//
// What it does: C[M, N] = A[M, K] @ B[K, N], fp32, every matrix contiguous row-major. A 32x32 CTA;
// threadIdx.x walks the ROWS of C (row = blockIdx.x * 32 + threadIdx.x), so the 32 threads of a warp
// read A from 32 different rows (stride K: 32 separate 32-byte sectors per load) and write C with a
// stride of N. That access pattern is the point of this step: step 02 only swaps the two indices.
//
// Counts at M = N = K = 4096: FLOPs = 2 * M * N * K = 137.4 GFLOP. Every thread issues 2 * K loads,
// so the requested global traffic is 2 * M * N * K * 4 B = 550 GB (per 32x32 output tile: 2 * 32 *
// 32 * K * 4 B = 33.6 MB) for a compulsory 201 MB; L1/L2 absorb most of it, but an uncoalesced warp
// load of A moves 32 sectors for 32 useful floats (B is a broadcast: one 128 B line per warp).
//
// Prediction (H100 SXM, fp32 SIMT; cuBLAS SGEMM ~ 50 TFLOP/s): ~0.6 TFLOP/s, ~1% of cuBLAS: bound by
// L1/L2 transactions of the strided A loads, not by FFMA throughput.
#pragma once
#include "common.cuh"

namespace pyimgcls::cuda::ladder::detail {

__global__ void __launch_bounds__(1024) ladder_gemm_naive_fwd_kernel(const float* __restrict__ a,
                                                                      const float* __restrict__ b,
                                                                      float* __restrict__ c, int64_t M, int64_t N,
                                                                      int64_t K) {
  const int64_t row = blockIdx.x * 32LL + threadIdx.x;
  const int64_t col = blockIdx.y * 32LL + threadIdx.y;
  naive_dot(a, b, c, row, col, M, N, K);
}

inline void launch_ladder_gemm_naive_fwd(const float* a, const float* b, float* c, int64_t M, int64_t N, int64_t K,
                                         cudaStream_t stream) {
  const dim3 grid(grid_x(ceil_div(M, 32), "gemm step 1"), grid_y(ceil_div(N, 32), "gemm step 1"));
  ladder_gemm_naive_fwd_kernel<<<grid, dim3(32, 32), 0, stream>>>(a, b, c, M, N, K);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace pyimgcls::cuda::ladder::detail
