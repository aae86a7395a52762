// GEMM ladder, step 06: vectorised loads, transposed A tile.
//
// What changed from step 05: global loads of A and B and the stores of C are 16-byte float4
// (1 load of A and 1 of B per thread per slice instead of 4 + 4 scalar ones), and the A slice is
// stored TRANSPOSED in shared memory (As[k][m]), so the inner loop reads both operands as float4:
// 4 LDS.128 per 64 FFMA (was 16 scalar LDS, with bank conflicts on As). float4 needs K % 4 == 0,
// N % 4 == 0 and 16-byte aligned pointers; otherwise the same kernel runs its predicated scalar
// branch (VEC = false), so any M, N, K is accepted.
//
// Counts at M = N = K = 4096: FLOPs 137.4 GFLOP; global traffic as step 05 (4.2 MB per 128x128 tile,
// 4.3 GB through L2) but in 4x fewer, fully coalesced 16-byte transactions.
//
// Prediction (H100 SXM): ~36 TFLOP/s, ~72% of cuBLAS SGEMM: fewer load instructions and no bank
// conflicts; still single-buffered, so global-load latency is exposed once per K slice.
#pragma once
#include "common.cuh"

namespace pyimgcls::cuda::ladder::detail {

template <bool VEC>
__global__ void __launch_bounds__(256) ladder_gemm_vectorized_fwd_kernel(const float* __restrict__ a,
                                                                          const float* __restrict__ b,
                                                                          float* __restrict__ c, int64_t M,
                                                                          int64_t N, int64_t K) {
  constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8;
  __shared__ __align__(16) float As[BK][BM];  // transposed: As[k][m]
  __shared__ __align__(16) float Bs[BK][BN];
  const int tid = threadIdx.x;
  const int tr = tid / (BN / TN), tc = tid % (BN / TN);
  const int64_t m0 = blockIdx.y * static_cast<int64_t>(BM), n0 = blockIdx.x * static_cast<int64_t>(BN);
  const int a_r = tid / 2, a_k = (tid % 2) * 4;    // one float4 of the 128x8 A slice
  const int b_r = tid / 32, b_c = (tid % 32) * 4;  // one float4 of the 8x128 B slice
  float acc[TM][TN] = {};
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    // VEC (K % 4 == 0, N % 4 == 0): one float4 load each; otherwise 4 predicated scalar loads.
    const float4 av = load4_guarded<VEC>(a, m0 + a_r, k0 + a_k, M, K);
    const float4 bv = load4_guarded<VEC>(b, k0 + b_r, n0 + b_c, K, N);
    store_transposed4(As, a_r, a_k, av);
    *reinterpret_cast<float4*>(&Bs[b_r][b_c]) = bv;
    __syncthreads();
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      float rm[TM], rn[TN];
      *reinterpret_cast<float4*>(&rm[0]) = *reinterpret_cast<const float4*>(&As[k][tr * TM]);
      *reinterpret_cast<float4*>(&rm[4]) = *reinterpret_cast<const float4*>(&As[k][tr * TM + 4]);
      *reinterpret_cast<float4*>(&rn[0]) = *reinterpret_cast<const float4*>(&Bs[k][tc * TN]);
      *reinterpret_cast<float4*>(&rn[4]) = *reinterpret_cast<const float4*>(&Bs[k][tc * TN + 4]);
      outer_product(acc, rm, rn);
    }
    __syncthreads();
  }
  store_micro_tile<VEC>(c, acc, m0 + tr * TM, n0 + tc * TN, M, N);
}

inline void launch_ladder_gemm_vectorized_fwd(const float* a, const float* b, float* c, int64_t M, int64_t N,
                                              int64_t K, cudaStream_t stream) {
  launch_vec_or_scalar(ladder_gemm_vectorized_fwd_kernel<true>, ladder_gemm_vectorized_fwd_kernel<false>, "gemm step 6",
                       a, b, c, M, N, K, stream);
}

}  // namespace pyimgcls::cuda::ladder::detail
