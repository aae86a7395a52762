// Convolution ladder, step 01: direct loops, NCHW, fp32.
//
// What it does: y[n, o, oh, ow] = sum_{c, kh, kw} x[n, c, oh*sh - ph + kh, ow*sw - pw + kw] *
// w[o, c, kh, kw] (zero padding), one thread per output element, ow fastest across threads so that a
// warp reads neighbouring input pixels (coalesced for stride 1) and one weight (a broadcast). Bias and
// activation run afterwards in a separate elementwise pass (ladder_bias_act_fwd_kernel).
//
// Counts at the benchmark layer (N = 32, C = 64, H = W = 56, O = 64, 3x3, stride 1, pad 1): FLOPs =
// 2 * N * O * OH * OW * C * KH * KW = 2 * 32 * 64 * 3136 * 576 = 7.40 GFLOP; compulsory bytes =
// x 25.7 MB + w 0.15 MB + y 25.7 MB (+ 2 * 25.7 MB for the separate bias/act pass). Requested loads:
// 2 per FMA = 2 * 3.70 G * 4 B = 29.6 GB, almost all served by L1/L2 (each x element is read by
// 9 * 64 threads).
//
// Prediction (H100 SXM, fp32; cuDNN fp32 ~ 25 TFLOP/s on this layer): ~1.5 TFLOP/s, ~6% of cuDNN:
// no data reuse in registers or shared memory, bound by L1 load throughput (2 loads per FMA).
#pragma once
#include "../common.cuh"

namespace pyimgcls::cuda::ladder::detail {

struct LadderConvArgs {
  int64_t N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw;
};

__global__ void __launch_bounds__(256) ladder_conv_direct_fwd_kernel(const float* __restrict__ x,
                                                                      const float* __restrict__ w,
                                                                      float* __restrict__ y, LadderConvArgs s) {
  const int64_t total = s.N * s.O * s.OH * s.OW;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ow = i % s.OW, oh = (i / s.OW) % s.OH, o = (i / (s.OW * s.OH)) % s.O, n = i / (s.OW * s.OH * s.O);
    float acc = 0.f;
    for (int64_t c = 0; c < s.C; ++c) {
      const float* xc = x + (n * s.C + c) * s.H * s.W;
      const float* wc = w + (o * s.C + c) * s.KH * s.KW;
      for (int64_t kh = 0; kh < s.KH; ++kh) {
        const int64_t ih = oh * s.sh - s.ph + kh;
        if (ih < 0 || ih >= s.H) continue;
        for (int64_t kw = 0; kw < s.KW; ++kw) {
          const int64_t iw = ow * s.sw - s.pw + kw;
          if (iw < 0 || iw >= s.W) continue;
          acc += xc[ih * s.W + iw] * wc[kh * s.KW + kw];
        }
      }
    }
    y[i] = acc;
  }
}

inline void launch_ladder_conv_direct_fwd(const float* x, const float* w, float* y, const LadderConvArgs& s,
                                          cudaStream_t stream) {
  const int64_t total = s.N * s.O * s.OH * s.OW;
  if (total == 0) return;
  const int64_t blocks = ceil_div(total, 256);
  ladder_conv_direct_fwd_kernel<<<static_cast<unsigned>(blocks < (1LL << 20) ? blocks : (1LL << 20)), 256, 0,
                                  stream>>>(x, w, y, s);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace pyimgcls::cuda::ladder::detail
