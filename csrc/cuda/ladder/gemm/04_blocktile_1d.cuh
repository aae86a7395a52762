// GEMM ladder, step 04: 1-D register blocking.
//
// What changed from step 03: each thread computes a column of TM = 8 outputs instead of one. The CTA
// owns a 64x64 tile of C with 512 threads and walks K in slices of BK = 8. For every k the thread
// loads B[k][col] from shared memory once into a register and reuses it for 8 FFMAs (the A values
// are warp-wide broadcasts), so shared-memory loads per FFMA fall from 2 to 9/8.
//
// Counts at M = N = K = 4096: FLOPs 137.4 GFLOP. Global traffic per 64x64 tile = (64 + 64) * K * 4 B
// = 2.1 MB; 4096 tiles -> 8.6 GB through L2 (16 FLOP/B). Shared memory: 1.125 LDS per FFMA.
//
// Prediction (H100 SXM): ~17 TFLOP/s, ~35% of cuBLAS SGEMM: the FFMA pipe is now fed ~2x better, but
// 8 accumulators per thread still leave little instruction-level parallelism.
#pragma once
#include "common.cuh"

namespace pyimgcls::cuda::ladder::detail {

// (512, 2): without the min-blocks hint ptxas for sm_90a aims at 3 CTAs/SM (40 registers) and spills.
__global__ void __launch_bounds__(512, 2)
    ladder_gemm_blocktile_1d_fwd_kernel(const float* __restrict__ a, const float* __restrict__ b,
                                        float* __restrict__ c, int64_t M, int64_t N, int64_t K) {
  constexpr int BM = 64, BN = 64, BK = 8, TM = 8;
  __shared__ float As[BM][BK];
  __shared__ float Bs[BK][BN];
  const int tid = threadIdx.x;
  const int tx = tid % BN, ty = tid / BN;  // output column; row group (TM rows)
  const int64_t m0 = blockIdx.y * static_cast<int64_t>(BM), n0 = blockIdx.x * static_cast<int64_t>(BN);
  const int a_r = tid / BK, a_c = tid % BK;  // one element of the 64x8 A slice
  const int b_r = tid / BN, b_c = tid % BN;  // one element of the 8x64 B slice
  float acc[TM] = {};
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    const int64_t ar = m0 + a_r, ak = k0 + a_c, bk = k0 + b_r, bn = n0 + b_c;
    As[a_r][a_c] = (ar < M && ak < K) ? a[ar * K + ak] : 0.f;
    Bs[b_r][b_c] = (bk < K && bn < N) ? b[bk * N + bn] : 0.f;
    __syncthreads();
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      const float bv = Bs[k][tx];
#pragma unroll
      for (int i = 0; i < TM; ++i) acc[i] += As[ty * TM + i][k] * bv;
    }
    __syncthreads();
  }
  const int64_t col = n0 + tx;
  if (col >= N) return;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t row = m0 + ty * TM + i;
    if (row < M) c[row * N + col] = acc[i];
  }
}

inline void launch_ladder_gemm_blocktile_1d_fwd(const float* a, const float* b, float* c, int64_t M, int64_t N,
                                                int64_t K, cudaStream_t stream) {
  const dim3 grid = tile_grid(M, N, 64, 64, "gemm step 4");
  ladder_gemm_blocktile_1d_fwd_kernel<<<grid, 512, 0, stream>>>(a, b, c, M, N, K);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace pyimgcls::cuda::ladder::detail
