// Convolution ladder, step 03: implicit GEMM, NCHW, fp32 (no im2col buffer).
//
// What changed from step 02: the column matrix is never materialised. The GEMM is
// y[o, (n, p)] = sum_k w[o, k] * col[k, (n, p)] with M = O, N = N*OH*OW (all images in ONE launch),
// K = C*KH*KW, and each CTA gathers its 16 x 64 slice of col straight from x into shared memory
// (zero for padding), so the 462 MB im2col round trip disappears and the whole batch is one grid.
// CTA tile 64 (out channels) x 64 (pixels), BK = 16, 256 threads with a 4x4 micro-tile each; a thread's
// 4 pixels are 16 apart so that 16 lanes store 16 consecutive pixels of a y row (coalesced NCHW stores),
// and its pixel decompositions (n, oh, ow) are computed once, outside the K loop. Bias/act: separate pass.
//
// Counts at the benchmark layer (N = 32, C = 64, H = W = 56, O = 64, 3x3, s1, p1): FLOPs 7.40 GFLOP;
// GEMM M = 64, N = 100352, K = 576 -> 1568 CTAs. Global traffic per 64x64 tile: w 64 * 576 * 4 B =
// 147 KB + gathered x 576 * 64 * 4 B = 147 KB (each x element gathered 9 times, mostly from L1/L2);
// over the grid ~0.46 GB through L2; compulsory x 25.7 MB + y 25.7 MB.
//
// Prediction (H100 SXM, fp32; cuDNN fp32 ~ 25 TFLOP/s): ~12 TFLOP/s, ~50% of cuDNN: register-blocked
// SIMT math on a full grid; index arithmetic of the gather and the 4x4 (not 8x8) micro-tile cost FFMA slots.
#pragma once
#include "../common.cuh"
#include "01_direct.cuh"

namespace pyimgcls::cuda::ladder::detail {

__global__ void __launch_bounds__(256) ladder_conv_implicit_gemm_fwd_kernel(const float* __restrict__ x,
                                                                             const float* __restrict__ w,
                                                                             float* __restrict__ y,
                                                                             LadderConvArgs s) {
  constexpr int BM = 64, BN = 64, BK = 16;
  __shared__ float As[BK][BM];  // w slice, transposed: As[k][o]
  __shared__ float Bs[BK][BN];  // gathered column slice: Bs[k][pixel]
  const int tid = threadIdx.x;
  const int tr = tid / 16, tc = tid % 16;
  const int64_t P = s.OH * s.OW, NP = s.N * P, Kd = s.C * s.KH * s.KW, taps = s.KH * s.KW;
  const int64_t o0 = blockIdx.y * static_cast<int64_t>(BM), q0 = blockIdx.x * static_cast<int64_t>(BN);
  // The one pixel this thread gathers for B: column tid % 64, rows tid / 64 + 4 * i.
  const int bj = tid % BN, bk = tid / BN;
  const int64_t q = q0 + bj;
  const bool q_ok = q < NP;
  const int64_t qn = q_ok ? q / P : 0, qp = q_ok ? q % P : 0;
  const int64_t ih0 = (qp / s.OW) * s.sh - s.ph, iw0 = (qp % s.OW) * s.sw - s.pw;
  const float* xn = x + qn * s.C * s.H * s.W;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < Kd; k0 += BK) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // A: w[o, k], rows tid / 16 + 16 * i, column tid % 16
      const int r = tid / BK + 16 * i, kk = tid % BK;
      const int64_t o = o0 + r, k = k0 + kk;
      As[kk][r] = (o < s.O && k < Kd) ? w[o * Kd + k] : 0.f;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int kr = bk + 4 * i;
      const int64_t k = k0 + kr;
      float v = 0.f;
      if (q_ok && k < Kd) {
        const int64_t c = k / taps, t = k % taps;
        const int64_t ih = ih0 + t / s.KW, iw = iw0 + t % s.KW;
        if (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W) v = xn[(c * s.H + ih) * s.W + iw];
      }
      Bs[kr][bj] = v;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      float ra[4], rb[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) ra[i] = As[k][tr * 4 + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) rb[j] = Bs[k][tc + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += ra[i] * rb[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t qq = q0 + tc + 16 * j;
    if (qq >= NP) continue;
    const int64_t n = qq / P, p = qq % P;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t o = o0 + tr * 4 + i;
      if (o < s.O) y[(n * s.O + o) * P + p] = acc[i][j];
    }
  }
}

inline void launch_ladder_conv_implicit_gemm_fwd(const float* x, const float* w, float* y, const LadderConvArgs& s,
                                                 cudaStream_t stream) {
  const int64_t NP = s.N * s.OH * s.OW;
  if (NP == 0 || s.O == 0) return;
  const dim3 grid(grid_x(ceil_div(NP, 64), "conv step 3"), grid_y(ceil_div(s.O, 64), "conv step 3"));
  ladder_conv_implicit_gemm_fwd_kernel<<<grid, 256, 0, stream>>>(x, w, y, s);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace pyimgcls::cuda::ladder::detail
