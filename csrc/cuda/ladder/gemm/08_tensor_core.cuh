// GEMM ladder, step 08: tensor cores (mma.sync.m16n8k16 + ldmatrix), fp16 / bf16, no pipeline.
//
// What changed from step 07: the inner product runs on the tensor cores. Inputs are fp16 or bf16,
// accumulation fp32, C rounded to the input dtype. The CTA (256 threads, 8 warps as 2 x 4) owns a
// 128x128 tile of C and walks K in slices of BK = 32; each warp's 64x32 warp tile is 4 x 4 MMA tiles
// of 16x8, so one k16 step is 4 ldmatrix.x4 of A + 2 ldmatrix.x4.trans of B (B is [K, N] row-major,
// so its fragments come transposed) feeding 16 mma.sync, i.e. 2 * 16 * 16 * 8 * 16 = 65536 FLOP per
// warp per 6 shared-memory instructions. Shared tiles are padded by 8 halves per row (80 B / 272 B
// pitch), which makes the 8 row addresses of every ldmatrix hit distinct banks. Global loads are
// 16-byte (8 halves) when K % 8 == 0, N % 8 == 0 and pointers are 16-byte aligned, predicated
// scalar loads otherwise; both land in registers, then shared memory, then one __syncthreads before
// the MMAs: there is NO overlap of the next slice's loads with this slice's math (step 09 adds that).
//
// Counts at M = N = K = 4096 (fp16): FLOPs 137.4 GFLOP; global traffic per 128x128 tile = (128 + 128)
// * K * 2 B = 2.1 MB, 1024 tiles -> 2.1 GB through L2 (64 FLOP/B); compulsory 100 MB.
//
// Prediction (H100 SXM, fp16; cuBLAS ~ 700 TFLOP/s): ~250 TFLOP/s, ~35% of cuBLAS: mma.sync reaches
// at most ~2/3 of the wgmma peak on Hopper, and with one buffer every slice waits for its global
// loads (latency ~1 us per slice, 128 slices) with the tensor cores idle.
#pragma once
#include "../common.cuh"

namespace pyimgcls::cuda::ladder::detail {

template <typename T, bool VEC>
__global__ void __launch_bounds__(256) ladder_gemm_tensor_core_fwd_kernel(const T* __restrict__ a,
                                                                           const T* __restrict__ b,
                                                                           T* __restrict__ c, int64_t M, int64_t N,
                                                                           int64_t K) {
  constexpr int BM = 128, BN = 128, BK = 32, PAD = 8;
  constexpr int WM = 64, WN = 32, MI = WM / 16, NI = WN / 8;
  __shared__ __align__(16) T As[BM][BK + PAD];
  __shared__ __align__(16) T Bs[BK][BN + PAD];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wm = warp / (BN / WN), wn = warp % (BN / WN);
  const int64_t m0 = blockIdx.y * static_cast<int64_t>(BM), n0 = blockIdx.x * static_cast<int64_t>(BN);
  const T zero = from_float<T>(0.f);
  float acc[MI][NI][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
    for (int it = 0; it < 2; ++it) {
      const int ar = tid / 4 + it * 64, ak = (tid % 4) * 8;    // 8-element chunk of the 128x32 A slice
      const int br = tid / 16 + it * 16, bc = (tid % 16) * 8;  // 8-element chunk of the 32x128 B slice
      const int64_t gr = m0 + ar, gk = k0 + ak, bk = k0 + br, bn = n0 + bc;
      if constexpr (VEC) {
        const uint4 z = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(&As[ar][ak]) =
            (gr < M && gk < K) ? *reinterpret_cast<const uint4*>(a + gr * K + gk) : z;
        *reinterpret_cast<uint4*>(&Bs[br][bc]) =
            (bk < K && bn < N) ? *reinterpret_cast<const uint4*>(b + bk * N + bn) : z;
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          As[ar][ak + e] = (gr < M && gk + e < K) ? a[gr * K + gk + e] : zero;
          Bs[br][bc + e] = (bk < K && bn + e < N) ? b[bk * N + bn + e] : zero;
        }
      }
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
      uint32_t af[MI][4], bq[NI / 2][4];
      ldmatrix_a_frags(af, As, wm * WM, ks, lane);
#pragma unroll
      for (int p = 0; p < NI / 2; ++p) {  // Bs is [k][n]: the b fragments come transposed
        const int brow = ks + ((lane / 8) % 2) * 8 + lane % 8, bcol = wn * WN + p * 16 + (lane / 16) * 8;
        ptx::ldmatrix_x4_trans(bq[p], ptx::smem_addr(&Bs[brow][bcol]));
      }
      mma_warp_tile<T>(acc, af, bq);
    }
    __syncthreads();
  }
  store_warp_tile(c, acc, m0 + wm * WM, n0 + wn * WN, M, N, lane);
}

template <typename T>
void launch_ladder_gemm_tensor_core_fwd(const T* a, const T* b, T* c, int64_t M, int64_t N, int64_t K,
                                        cudaStream_t stream) {
  const dim3 grid(grid_x(ceil_div(N, 128), "gemm step 8"), grid_y(ceil_div(M, 128), "gemm step 8"));
  const bool vec = K % 8 == 0 && N % 8 == 0 && aligned_to(a, 16) && aligned_to(b, 16);
  if (vec)
    ladder_gemm_tensor_core_fwd_kernel<T, true><<<grid, 256, 0, stream>>>(a, b, c, M, N, K);
  else
    ladder_gemm_tensor_core_fwd_kernel<T, false><<<grid, 256, 0, stream>>>(a, b, c, M, N, K);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace pyimgcls::cuda::ladder::detail
