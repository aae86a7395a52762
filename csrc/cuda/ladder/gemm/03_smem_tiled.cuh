// GEMM ladder, step 03: shared-memory tiling.
//
// What changed from step 02: the CTA (32x32 threads, one output each) walks K in slices of 32. Each
// thread copies one element of the A slice [32 x 32] and one of the B slice [32 x 32] into shared
// memory (coalesced, zero-filled past the matrix edges), and the inner product then reads shared
// memory: every global element loaded is reused by 32 threads.
//
// Counts at M = N = K = 4096: FLOPs 137.4 GFLOP. Global traffic per 32x32 output tile = (32 + 32) *
// K * 4 B = 1.05 MB (was 33.6 MB requested), 16384 tiles -> 17.2 GB through L2 (8 FLOP per L2
// byte). Shared memory: 2 loads per FFMA (As[ty][k] is a broadcast, Bs[k][tx] conflict-free).
//
// Prediction (H100 SXM): ~6 TFLOP/s, ~12% of cuBLAS SGEMM: now bound by shared-memory load
// throughput (2 LDS per FFMA) and by the __syncthreads pair per 32-wide slice.
#pragma once
#include "common.cuh"

namespace pyimgcls::cuda::ladder::detail {

__global__ void __launch_bounds__(1024) ladder_gemm_smem_tiled_fwd_kernel(const float* __restrict__ a,
                                                                           const float* __restrict__ b,
                                                                           float* __restrict__ c, int64_t M,
                                                                           int64_t N, int64_t K) {
  constexpr int T = 32;
  __shared__ float As[T][T];
  __shared__ float Bs[T][T + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t row = blockIdx.y * static_cast<int64_t>(T) + ty;
  const int64_t col = blockIdx.x * static_cast<int64_t>(T) + tx;
  float acc = 0.f;
  for (int64_t k0 = 0; k0 < K; k0 += T) {
    As[ty][tx] = (row < M && k0 + tx < K) ? a[row * K + k0 + tx] : 0.f;
    Bs[ty][tx] = (k0 + ty < K && col < N) ? b[(k0 + ty) * N + col] : 0.f;
    __syncthreads();
#pragma unroll
    for (int k = 0; k < T; ++k) acc += As[ty][k] * Bs[k][tx];
    __syncthreads();
  }
  if (row < M && col < N) c[row * N + col] = acc;
}

inline void launch_ladder_gemm_smem_tiled_fwd(const float* a, const float* b, float* c, int64_t M, int64_t N,
                                              int64_t K, cudaStream_t stream) {
  const dim3 grid = tile_grid(M, N, 32, 32, "gemm step 3");
  ladder_gemm_smem_tiled_fwd_kernel<<<grid, dim3(32, 32), 0, stream>>>(a, b, c, M, N, K);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace pyimgcls::cuda::ladder::detail
