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
#include "../common.cuh"

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
    float4 av, bv;
    const int64_t gr = m0 + a_r, gk = k0 + a_k, bk = k0 + b_r, bn = n0 + b_c;
    if constexpr (VEC) {  // K % 4 == 0 and N % 4 == 0: a float4 is wholly inside or wholly outside
      av = (gr < M && gk < K) ? *reinterpret_cast<const float4*>(a + gr * K + gk) : make_float4(0.f, 0.f, 0.f, 0.f);
      bv = (bk < K && bn < N) ? *reinterpret_cast<const float4*>(b + bk * N + bn) : make_float4(0.f, 0.f, 0.f, 0.f);
    } else {
      const bool ar = gr < M, br = bk < K;
      av.x = (ar && gk + 0 < K) ? a[gr * K + gk + 0] : 0.f;
      av.y = (ar && gk + 1 < K) ? a[gr * K + gk + 1] : 0.f;
      av.z = (ar && gk + 2 < K) ? a[gr * K + gk + 2] : 0.f;
      av.w = (ar && gk + 3 < K) ? a[gr * K + gk + 3] : 0.f;
      bv.x = (br && bn + 0 < N) ? b[bk * N + bn + 0] : 0.f;
      bv.y = (br && bn + 1 < N) ? b[bk * N + bn + 1] : 0.f;
      bv.z = (br && bn + 2 < N) ? b[bk * N + bn + 2] : 0.f;
      bv.w = (br && bn + 3 < N) ? b[bk * N + bn + 3] : 0.f;
    }
    As[a_k + 0][a_r] = av.x;
    As[a_k + 1][a_r] = av.y;
    As[a_k + 2][a_r] = av.z;
    As[a_k + 3][a_r] = av.w;
    *reinterpret_cast<float4*>(&Bs[b_r][b_c]) = bv;
    __syncthreads();
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      float rm[TM], rn[TN];
      *reinterpret_cast<float4*>(&rm[0]) = *reinterpret_cast<const float4*>(&As[k][tr * TM]);
      *reinterpret_cast<float4*>(&rm[4]) = *reinterpret_cast<const float4*>(&As[k][tr * TM + 4]);
      *reinterpret_cast<float4*>(&rn[0]) = *reinterpret_cast<const float4*>(&Bs[k][tc * TN]);
      *reinterpret_cast<float4*>(&rn[4]) = *reinterpret_cast<const float4*>(&Bs[k][tc * TN + 4]);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += rm[i] * rn[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t row = m0 + tr * TM + i;
    if (row >= M) continue;
#pragma unroll
    for (int j = 0; j < TN; j += 4) {
      const int64_t col = n0 + tc * TN + j;
      if constexpr (VEC) {
        if (col < N)
          *reinterpret_cast<float4*>(c + row * N + col) =
              make_float4(acc[i][j], acc[i][j + 1], acc[i][j + 2], acc[i][j + 3]);
      } else {
#pragma unroll
        for (int jj = 0; jj < 4; ++jj)
          if (col + jj < N) c[row * N + col + jj] = acc[i][j + jj];
      }
    }
  }
}

inline void launch_ladder_gemm_vectorized_fwd(const float* a, const float* b, float* c, int64_t M, int64_t N,
                                              int64_t K, cudaStream_t stream) {
  const dim3 grid(grid_x(ceil_div(N, 128), "gemm step 6"), grid_y(ceil_div(M, 128), "gemm step 6"));
  const bool vec = K % 4 == 0 && N % 4 == 0 && aligned_to(a, 16) && aligned_to(b, 16) && aligned_to(c, 16);
  if (vec)
    ladder_gemm_vectorized_fwd_kernel<true><<<grid, 256, 0, stream>>>(a, b, c, M, N, K);
  else
    ladder_gemm_vectorized_fwd_kernel<false><<<grid, 256, 0, stream>>>(a, b, c, M, N, K);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace pyimgcls::cuda::ladder::detail
