// GEMM ladder, step 05: 2-D register blocking.
//
// What changed from step 04: each thread computes an 8x8 micro-tile (TM x TN) of a 128x128 CTA tile
// (256 threads, BK = 8). Per k it loads 8 values of A and 8 of B from shared memory into registers
// and does 64 FFMAs with them (an outer product): 16 LDS per 64 FFMA = 0.25 LDS/FFMA (was 1.125),
// and 64 independent accumulators give the scheduler plenty of ILP.
//
// Counts at M = N = K = 4096: FLOPs 137.4 GFLOP. Global traffic per 128x128 tile = (128 + 128) * K *
// 4 B = 4.2 MB; 1024 tiles -> 4.3 GB through L2 (32 FLOP/B: per k a tile reads 2 * 128 * 4 B for
// 2 * 128 * 128 FLOP). Loads are scalar and predicated.
//
// Prediction (H100 SXM): ~30 TFLOP/s, ~60% of cuBLAS SGEMM: now close to FFMA-bound; the rest is lost
// to scalar global loads, the 2-4 way bank conflicts of the As[row][k] / Bs[k][8*tc + j] reads, and
// exposed load latency (single-buffered shared memory).
#pragma once
#include "common.cuh"

namespace pyimgcls::cuda::ladder::detail {

__global__ void __launch_bounds__(256) ladder_gemm_blocktile_2d_fwd_kernel(const float* __restrict__ a,
                                                                            const float* __restrict__ b,
                                                                            float* __restrict__ c, int64_t M,
                                                                            int64_t N, int64_t K) {
  constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8, THREADS = 256;
  __shared__ float As[BM][BK];
  __shared__ float Bs[BK][BN];
  const int tid = threadIdx.x;
  const int tr = tid / (BN / TN), tc = tid % (BN / TN);
  const int64_t m0 = blockIdx.y * static_cast<int64_t>(BM), n0 = blockIdx.x * static_cast<int64_t>(BN);
  float acc[TM][TN] = {};
  float rm[TM], rn[TN];
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
    for (int i = 0; i < BM * BK / THREADS; ++i) {  // 4 elements of the 128x8 A slice
      const int r = tid / BK + i * (THREADS / BK), kk = tid % BK;
      const int64_t gr = m0 + r, gk = k0 + kk;
      As[r][kk] = (gr < M && gk < K) ? a[gr * K + gk] : 0.f;
    }
#pragma unroll
    for (int i = 0; i < BK * BN / THREADS; ++i) {  // 4 elements of the 8x128 B slice
      const int r = tid / BN + i * (THREADS / BN), cc = tid % BN;
      const int64_t gk = k0 + r, gn = n0 + cc;
      Bs[r][cc] = (gk < K && gn < N) ? b[gk * N + gn] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < BK; ++k) {
#pragma unroll
      for (int i = 0; i < TM; ++i) rm[i] = As[tr * TM + i][k];
#pragma unroll
      for (int j = 0; j < TN; ++j) rn[j] = Bs[k][tc * TN + j];
      outer_product(acc, rm, rn);
    }
    __syncthreads();
  }
  store_micro_tile<false>(c, acc, m0 + tr * TM, n0 + tc * TN, M, N);
}

inline void launch_ladder_gemm_blocktile_2d_fwd(const float* a, const float* b, float* c, int64_t M, int64_t N,
                                                int64_t K, cudaStream_t stream) {
  const dim3 grid = tile_grid(M, N, 128, 128, "gemm step 5");
  ladder_gemm_blocktile_2d_fwd_kernel<<<grid, 256, 0, stream>>>(a, b, c, M, N, K);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace pyimgcls::cuda::ladder::detail
