// Convolution ladder, step 04: tensor-core implicit GEMM, NHWC, fp16 / bf16.
//
// What changed from step 03: channels-last layout and tensor cores. In NHWC the reduction index
// k = (kh*KW + kw)*C + c runs along contiguous channels, so for C % 8 == 0 a run of 8 consecutive k is
// one 16-byte load of x[n, ih, iw, c..c+7] (the layout change is what makes the gather vectorisable),
// and the weight [O, KH, KW, C] is already a row-major [O, K] matrix. GEMM: M = N*OH*OW pixels (rows),
// N = O, K = KH*KW*C; y[pixel, o] is NHWC. CTA tile 128 pixels x 64 channels, BK = 32, 4 warps (2 x 2)
// of 64x32 warp tiles, mma.sync.m16n8k16 with fp32 accumulators fed by ldmatrix (both shared tiles
// are K-contiguous, so neither needs .trans; 8-half row padding keeps ldmatrix conflict-free).
// Loads go through registers into shared memory, no pipeline (as GEMM step 08); C % 8 != 0 or
// misaligned pointers take the predicated element-wise gather. Bias/act: separate pass.
//
// Counts at the benchmark layer (N = 32, C = 64, H = W = 56, O = 64, 3x3, s1, p1; fp16): FLOPs
// 7.40 GFLOP; GEMM M = 100352, N = 64, K = 576 -> 784 CTAs. Global traffic per 128x64 tile: gathered
// x 128 * 576 * 2 B = 147 KB + w 64 * 576 * 2 B = 74 KB; compulsory x 12.8 MB + y 12.8 MB, plus
// 25.7 MB for the separate bias/act pass.
//
// Prediction (H100 SXM, fp16; cuDNN fp16 ~ 300 TFLOP/s on this layer): ~120 TFLOP/s, ~40% of
// cuDNN: tensor cores idle while each slice's gathers are in flight (no pipeline), and the bias/act
// pass adds ~8 us to a ~60 us kernel.
#pragma once
#include "../common.cuh"
#include "01_direct.cuh"

namespace pyimgcls::cuda::ladder::detail {

template <typename T, bool VEC>
__global__ void __launch_bounds__(128) ladder_conv_tensor_core_nhwc_fwd_kernel(const T* __restrict__ x,
                                                                                const T* __restrict__ w,
                                                                                T* __restrict__ y,
                                                                                LadderConvArgs s) {
  constexpr int BM = 128, BN = 64, BK = 32, PAD = 8, WM = 64, WN = 32, MI = WM / 16, NI = WN / 8;
  __shared__ __align__(16) T As[BM][BK + PAD];  // gathered x: As[pixel][k]
  __shared__ __align__(16) T Bs[BN][BK + PAD];  // weight:     Bs[o][k]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wm = warp / 2, wn = warp % 2;
  const int64_t P = s.OH * s.OW, NP = s.N * P, Kd = s.KH * s.KW * s.C;
  const int64_t m0 = blockIdx.x * static_cast<int64_t>(BM), n0 = blockIdx.y * static_cast<int64_t>(BN);
  const T zero = from_float<T>(0.f);
  // This thread gathers 8-element chunks for pixel rows tid/4 + 32*it, k offset (tid%4)*8.
  int64_t pix_base[4], pix_ih0[4], pix_iw0[4];
  bool pix_ok[4];
#pragma unroll
  for (int it = 0; it < 4; ++it) {
    const int64_t m = m0 + tid / 4 + 32 * it;
    pix_ok[it] = m < NP;
    const int64_t n = pix_ok[it] ? m / P : 0, p = pix_ok[it] ? m % P : 0;
    pix_base[it] = n * s.H * s.W * s.C;
    pix_ih0[it] = (p / s.OW) * s.sh - s.ph;
    pix_iw0[it] = (p % s.OW) * s.sw - s.pw;
  }
  const int kc = (tid % 4) * 8;
  float acc[MI][NI][4] = {};
  for (int64_t k0 = 0; k0 < Kd; k0 += BK) {
#pragma unroll
    for (int it = 0; it < 4; ++it) {
      const int r = tid / 4 + 32 * it;
      if constexpr (VEC) {  // C % 8 == 0: the chunk shares one (kh, kw) tap
        uint4 v = make_uint4(0, 0, 0, 0);
        const int64_t k = k0 + kc;
        if (pix_ok[it] && k < Kd) {
          const int64_t c = k % s.C, t = k / s.C;
          const int64_t ih = pix_ih0[it] + t / s.KW, iw = pix_iw0[it] + t % s.KW;
          if (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W)
            v = *reinterpret_cast<const uint4*>(x + pix_base[it] + (ih * s.W + iw) * s.C + c);
        }
        *reinterpret_cast<uint4*>(&As[r][kc]) = v;
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const int64_t k = k0 + kc + e;
          T v = zero;
          if (pix_ok[it] && k < Kd) {
            const int64_t c = k % s.C, t = k / s.C;
            const int64_t ih = pix_ih0[it] + t / s.KW, iw = pix_iw0[it] + t % s.KW;
            if (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W) v = x[pix_base[it] + (ih * s.W + iw) * s.C + c];
          }
          As[r][kc + e] = v;
        }
      }
    }
#pragma unroll
    for (int it = 0; it < 2; ++it) {
      const int r = tid / 4 + 32 * it;
      const int64_t o = n0 + r, k = k0 + kc;
      if constexpr (VEC) {
        *reinterpret_cast<uint4*>(&Bs[r][kc]) =
            (o < s.O && k < Kd) ? *reinterpret_cast<const uint4*>(w + o * Kd + k) : make_uint4(0, 0, 0, 0);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) Bs[r][kc + e] = (o < s.O && k + e < Kd) ? w[o * Kd + k + e] : zero;
      }
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
      uint32_t af[MI][4], bq[NI / 2][4];
      ldmatrix_a_frags(af, As, wm * WM, ks, lane);
#pragma unroll
      for (int p = 0; p < NI / 2; ++p) {  // Bs is [o][k], K-contiguous like As: no transpose
        const int brow = wn * WN + p * 16 + (lane / 16) * 8 + lane % 8, bcol = ks + ((lane / 8) % 2) * 8;
        ptx::ldmatrix_x4(bq[p], ptx::smem_addr(&Bs[brow][bcol]));
      }
      mma_warp_tile<T>(acc, af, bq);
    }
    __syncthreads();
  }
  store_warp_tile(y, acc, m0 + wm * WM, n0 + wn * WN, NP, s.O, lane);  // y[pixel][o] is NHWC
}

template <typename T>
void launch_ladder_conv_tensor_core_nhwc_fwd(const T* x, const T* w, T* y, const LadderConvArgs& s,
                                             cudaStream_t stream) {
  const int64_t NP = s.N * s.OH * s.OW;
  if (NP == 0 || s.O == 0) return;
  const dim3 grid(grid_x(ceil_div(NP, 128), "conv step 4"), grid_y(ceil_div(s.O, 64), "conv step 4"));
  const bool vec = s.C % 8 == 0 && aligned_to(x, 16) && aligned_to(w, 16);
  if (vec)
    ladder_conv_tensor_core_nhwc_fwd_kernel<T, true><<<grid, 128, 0, stream>>>(x, w, y, s);
  else
    ladder_conv_tensor_core_nhwc_fwd_kernel<T, false><<<grid, 128, 0, stream>>>(x, w, y, s);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace pyimgcls::cuda::ladder::detail
