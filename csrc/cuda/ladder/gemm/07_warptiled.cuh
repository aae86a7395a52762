// GEMM ladder, step 07: warp tiling.
//
// What changed from step 06: a level of tiling between the CTA and the thread. The 128x128 CTA tile
// (256 threads, BK = 16) is split into 8 warp tiles of 64x32 (2 x 4 warps); each warp walks its tile
// as 2 x 2 sub-tiles of 32x16 in which lane (l/4, l%4) owns a 4x4 block. A warp's shared-memory reads
// per k are then 8 distinct float4 of As and 4 of Bs (contiguous, conflict-free, the rest
// broadcasts), each thread's 8x8 outputs are four 4x4 blocks 32 rows / 16 columns apart, and BK = 16
// halves the barriers per FLOP. This is the register/shared-memory layout the tensor-core steps keep
// (warp tile -> MMA tile).
//
// Counts at M = N = K = 4096: FLOPs 137.4 GFLOP; global traffic per 128x128 tile unchanged (4.2 MB,
// 4.3 GB through L2), 2 float4 loads of A and 2 of B per thread per 16-deep slice.
//
// Prediction (H100 SXM): ~40 TFLOP/s, ~80% of cuBLAS SGEMM: better warp-level locality and half the
// barriers; the remaining gap is the single-buffered K loop (no load/compute overlap).
#pragma once
#include "common.cuh"

namespace pyimgcls::cuda::ladder::detail {

template <bool VEC>
__global__ void __launch_bounds__(256) ladder_gemm_warptiled_fwd_kernel(const float* __restrict__ a,
                                                                         const float* __restrict__ b,
                                                                         float* __restrict__ c, int64_t M,
                                                                         int64_t N, int64_t K) {
  constexpr int BM = 128, BN = 128, BK = 16;
  constexpr int WM = 64, WN = 32;        // warp tile (warps 2 x 4)
  constexpr int SM_ = 32, SN = 16;       // warp sub-tile: lanes 8 (m) x 4 (n), 4x4 each
  __shared__ __align__(16) float As[BK][BM];  // transposed: As[k][m]
  __shared__ __align__(16) float Bs[BK][BN];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wm = warp / (BN / WN), wn = warp % (BN / WN);
  const int lm = lane / 4, ln = lane % 4;
  const int64_t m0 = blockIdx.y * static_cast<int64_t>(BM), n0 = blockIdx.x * static_cast<int64_t>(BN);
  float acc[2][2][4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
    for (int it = 0; it < 2; ++it) {
      const int ar = tid / 4 + it * 64, ak = (tid % 4) * 4;    // float4 of the 128x16 A slice
      const int br = tid / 32 + it * 8, bc = (tid % 32) * 4;   // float4 of the 16x128 B slice
      const float4 av = load4_guarded<VEC>(a, m0 + ar, k0 + ak, M, K);
      const float4 bv = load4_guarded<VEC>(b, k0 + br, n0 + bc, K, N);
      store_transposed4(As, ar, ak, av);
      *reinterpret_cast<float4*>(&Bs[br][bc]) = bv;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      float4 rm[2], rn[2];
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        rm[s] = *reinterpret_cast<const float4*>(&As[k][wm * WM + s * SM_ + lm * 4]);
        rn[s] = *reinterpret_cast<const float4*>(&Bs[k][wn * WN + s * SN + ln * 4]);
      }
#pragma unroll
      for (int si = 0; si < 2; ++si)
#pragma unroll
        for (int sj = 0; sj < 2; ++sj) {
          const float am[4] = {rm[si].x, rm[si].y, rm[si].z, rm[si].w};
          const float bn_[4] = {rn[sj].x, rn[sj].y, rn[sj].z, rn[sj].w};
          outer_product(acc[si][sj], am, bn_);
        }
    }
    __syncthreads();
  }
#pragma unroll
  for (int si = 0; si < 2; ++si)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = m0 + wm * WM + si * SM_ + lm * 4 + i;
      if (row >= M) continue;
#pragma unroll
      for (int sj = 0; sj < 2; ++sj) {
        store4_guarded<VEC>(c, row, n0 + wn * WN + sj * SN + ln * 4, N, acc[si][sj][i]);
      }
    }
}

inline void launch_ladder_gemm_warptiled_fwd(const float* a, const float* b, float* c, int64_t M, int64_t N,
                                             int64_t K, cudaStream_t stream) {
  launch_vec_or_scalar(ladder_gemm_warptiled_fwd_kernel<true>, ladder_gemm_warptiled_fwd_kernel<false>, "gemm step 7",
                       a, b, c, M, N, K, stream);
}

}  // namespace pyimgcls::cuda::ladder::detail
