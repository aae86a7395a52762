// CPU convolution ladder, step 1: direct loops (NCHW).
//
// What it computes (every conv step): y = act(conv2d(x, w) + bias), groups 1, dilation 1,
//   y[n, o, oh, ow] = sum_{c, i, j} x[n, c, oh*sh - ph + i, ow*sw - pw + j] * w[o, c, i, j]
// with zero padding. Steps 1-4 apply bias and activation in a separate pass over y
// (bias_act_pass below: one extra read + write of y); step 5 fuses them into the GEMM epilogue.
//   FLOPs = 2 * N*O*OH*OW * C*KH*KW (+ 2*N*O*OH*OW for bias + act).
//   Minimum bytes = sizeof(T) * (N*C*H*W + O*C*KH*KW + N*O*OH*OW) (+ O for the bias).
//
// What it is: the definition, seven nested loops, one scalar accumulator per output. Parallel over
// (n, o) with OpenMP so that the ladder's later steps are compared on algorithm, not core count.
// The innermost loop runs over the KW (3) taps of one input row: too short to vectorise, with a
// padding branch per tap and the sum one dependent FMA chain; the weights of one o are reused from
// L1 but x rows are re-read from L2 for every output channel.
// Prediction (N=4, C=O=64, 56x56, 3x3, pad 1 fp32, 2 threads): ~1-3 GFLOP/s, a few % of peak.
//
// Test: pytest tests/test_ladder.py -k conv     Benchmark: python benchmarks/bench_ladder.py
#pragma once
#include <cstdint>

#include "../../common.h"

namespace pyimgcls::cpu::ladder {

// Geometry of one ladder convolution (groups 1, dilation 1). OH/OW are given by the caller.
struct ConvGeom {
  int64_t N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw;
};

// The separate epilogue pass of steps 1-4: y = act(y + bias[o]) over y [N, O, P] (NCHW) or
// [N, P, O] (NHWC). Bytes: 2 * sizeof(T) * N*O*P: the traffic step 5 removes.
template <typename T>
void bias_act_pass(T* y, const T* bias, Act act, int64_t N, int64_t O, int64_t P, bool channels_last) {
  if (bias == nullptr && act == Act::None) return;
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) {
      const T b = bias ? bias[o] : T(0);
      if (channels_last) {
        T* yo = y + n * P * O + o;
        for (int64_t p = 0; p < P; ++p) yo[p * O] = apply_act(yo[p * O] + b, act);
      } else {
        T* yo = y + (n * O + o) * P;
        for (int64_t p = 0; p < P; ++p) yo[p] = apply_act(yo[p] + b, act);
      }
    }
}

template <typename T>
void conv_direct(const T* x, const T* w, T* y, const ConvGeom& g) {
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t o = 0; o < g.O; ++o)
      for (int64_t oh = 0; oh < g.OH; ++oh)
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          T acc = T(0);
          for (int64_t c = 0; c < g.C; ++c)
            for (int64_t i = 0; i < g.KH; ++i) {
              const int64_t ih = oh * g.sh - g.ph + i;
              if (ih < 0 || ih >= g.H) continue;
              for (int64_t j = 0; j < g.KW; ++j) {
                const int64_t iw = ow * g.sw - g.pw + j;
                if (iw < 0 || iw >= g.W) continue;
                acc += x[((n * g.C + c) * g.H + ih) * g.W + iw] * w[((o * g.C + c) * g.KH + i) * g.KW + j];
              }
            }
          y[((n * g.O + o) * g.OH + oh) * g.OW + ow] = acc;
        }
}

}  // namespace pyimgcls::cpu::ladder
