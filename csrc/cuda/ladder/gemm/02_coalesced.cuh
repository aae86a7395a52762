// GEMM ladder, step 02: global-memory coalescing.
//
// What changed from step 01: threadIdx.x now walks the COLUMNS of C (col = blockIdx.x * 32 +
// threadIdx.x). A warp now reads one element of A (a broadcast), 32 consecutive floats of B (one
// 128-byte line) and writes 32 consecutive floats of C: every load instruction of the warp touches
// 4 sectors instead of 32 for A, and the stores coalesce.
//
// Counts at M = N = K = 4096: FLOPs 137.4 GFLOP; requested traffic unchanged (2 * M * N * K * 4 B =
// 550 GB, 33.6 MB per 32x32 tile), but each warp-level load now moves 1 (A) + 4 (B) sectors instead
// of 32 + 4, so the L1/L2 transaction count drops ~8x.
//
// Prediction (H100 SXM): ~4 TFLOP/s, ~8% of cuBLAS SGEMM: still no reuse beyond what L1 catches
// (each FFMA needs 2 loads), now bound by L1 load bandwidth rather than transaction count.
#pragma once
#include "common.cuh"

namespace pyimgcls::cuda::ladder::detail {

__global__ void __launch_bounds__(1024) ladder_gemm_coalesced_fwd_kernel(const float* __restrict__ a,
                                                                          const float* __restrict__ b,
                                                                          float* __restrict__ c, int64_t M,
                                                                          int64_t N, int64_t K) {
  const int64_t col = blockIdx.x * 32LL + threadIdx.x;
  const int64_t row = blockIdx.y * 32LL + threadIdx.y;
  naive_dot(a, b, c, row, col, M, N, K);
}

inline void launch_ladder_gemm_coalesced_fwd(const float* a, const float* b, float* c, int64_t M, int64_t N,
                                             int64_t K, cudaStream_t stream) {
  const dim3 grid = tile_grid(M, N, 32, 32, "gemm step 2");
  ladder_gemm_coalesced_fwd_kernel<<<grid, dim3(32, 32), 0, stream>>>(a, b, c, M, N, K);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace pyimgcls::cuda::ladder::detail
