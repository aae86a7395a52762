// Convolution ladder, step 02: explicit im2col + GEMM, NCHW, fp32.
//
// What changed from step 01: the convolution becomes a matrix product. For each image n, an im2col
// kernel writes the column matrix col[C*KH*KW, OH*OW] (row (c, kh, kw), column (oh, ow); zeros for
// padding) into the caller's scratch buffer, then GEMM ladder step 05 (2-D register blocking, included
// from ../gemm/05_blocktile_2d.cuh, not copied) computes y[n] = w[O, C*KH*KW] @ col, which is already
// y[n]'s NCHW layout [O, OH*OW]. The scratch holds one image's columns and is reused image after image
// (the launches are ordered on the stream). Bias and activation: separate pass.
//
// Counts at the benchmark layer (N = 32, C = 64, H = W = 56, O = 64, 3x3, s1, p1): FLOPs 7.40 GFLOP.
// Extra traffic over step 01: the column matrix, 576 x 3136 x 4 B = 7.2 MB per image, written once
// and read once by the GEMM -> 32 * 2 * 7.2 MB = 462 MB (18x the input). Per image the GEMM is
// M = 64, N = 3136, K = 576: 25 CTAs of 128x128 (half of each tile's rows idle as O = 64).
//
// Prediction (H100 SXM, fp32): ~5 TFLOP/s, ~20% of cuDNN fp32: the GEMM itself is register-blocked,
// but 25 CTAs per launch fill only 25 of 132 SMs, and the im2col round trip costs ~0.2 ms.
#pragma once
#include "../common.cuh"
#include "../gemm/05_blocktile_2d.cuh"
#include "01_direct.cuh"

namespace pyimgcls::cuda::ladder::detail {

// col[(c*KH + kh)*KW + kw][oh*OW + ow] = x[n, c, oh*sh - ph + kh, ow*sw - pw + kw] (0 outside).
__global__ void __launch_bounds__(256) ladder_im2col_fwd_kernel(const float* __restrict__ xn,
                                                                 float* __restrict__ col, LadderConvArgs s) {
  const int64_t P = s.OH * s.OW, total = s.C * s.KH * s.KW * P;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = i % P, r = i / P;
    const int64_t kw = r % s.KW, kh = (r / s.KW) % s.KH, c = r / (s.KW * s.KH);
    const int64_t oh = p / s.OW, ow = p % s.OW;
    const int64_t ih = oh * s.sh - s.ph + kh, iw = ow * s.sw - s.pw + kw;
    col[i] = (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W) ? xn[(c * s.H + ih) * s.W + iw] : 0.f;
  }
}

inline int64_t ladder_im2col_scratch_bytes(const LadderConvArgs& s) {
  return s.C * s.KH * s.KW * s.OH * s.OW * static_cast<int64_t>(sizeof(float));
}

inline void launch_ladder_conv_im2col_gemm_fwd(const float* x, const float* w, float* y, float* col,
                                               const LadderConvArgs& s, cudaStream_t stream) {
  const int64_t P = s.OH * s.OW, Kd = s.C * s.KH * s.KW, total = Kd * P;
  if (s.N * s.O * P == 0) return;
  const int64_t blocks = ceil_div(total, 256);
  for (int64_t n = 0; n < s.N; ++n) {
    if (total > 0) {
      ladder_im2col_fwd_kernel<<<static_cast<unsigned>(blocks < (1LL << 20) ? blocks : (1LL << 20)), 256, 0,
                                 stream>>>(x + n * s.C * s.H * s.W, col, s);
      PYIMGCLS_CUDA_CHECK_LAUNCH();
    }
    launch_ladder_gemm_blocktile_2d_fwd(w, col, y + n * s.O * P, s.O, P, Kd, stream);
  }
}

}  // namespace pyimgcls::cuda::ladder::detail
