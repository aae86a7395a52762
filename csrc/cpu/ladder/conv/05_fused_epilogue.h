// CPU convolution ladder, step 5: fused bias + activation epilogue = the production CPU conv.
//
// This step is pyimgcls::cpu::conv2d_fwd (csrc/cpu/conv.h, csrc/cpu/conv.cpp), INCLUDED and CALLED,
// not copied. Input and output are NHWC (channels_last) as in step 4; the weight is the production
// kernel's [O, C, KH, KW] (it repacks it once per call to [O, KH, KW, C] itself).
//
// What changed from step 4: (1) the inner product is the production GEMM's register-tiled SIMD
// micro-kernel (GEMM ladder step 6) on a per-thread im2col of NHWC pixels (contiguous channel runs,
// K ordered (i, j, c)), with output channels as the GEMM's N axis; (2) bias and activation are
// applied in the GEMM epilogue on the accumulator tile before it is stored, so the separate
// bias_act_pass of steps 1-4 (one more read + write of y: 2 * sizeof(T) * N*O*OH*OW bytes) is gone.
// Why it should be faster: the micro-kernel is FMA bound instead of load bound (see GEMM step 6),
// and one pass over y less.
//   FLOPs = 2 * N*O*OH*OW * C*KH*KW.  Bytes = minimum + per-thread im2col tiles (cache resident).
// Prediction (benchmark conv, fp32, 2 threads): 1.2-2x step 4, 50-80% of the machine peak. (Revised
//   from 3-6x when step 4 gained its 4 x 4 register block: step 4 is no longer load bound, so what
//   is left is the micro-kernel's larger tile, the packed operands and the fused epilogue pass.)
//
// Test: pytest tests/test_ladder.py -k conv     Benchmark: python benchmarks/bench_ladder.py
#pragma once
#include <cstdint>

#include "../../conv.h"
#include "01_direct.h"

namespace pyimgcls::cpu::ladder {

template <typename T>
inline void conv_fused_epilogue(const T* x, const T* w_oihw, const T* bias, T* y, const ConvGeom& g, Act act) {
  constexpr DType dt = sizeof(T) == 4 ? DType::Float32 : DType::Float64;
  const ConvGeometry s{g.N, g.C, g.H, g.W, g.O, g.KH, g.KW, g.OH, g.OW, g.sh, g.sw, g.ph, g.pw, 1, 1, 1};
  const Strides4 xs{g.H * g.W * g.C, 1, g.W * g.C, g.C};      // NHWC input
  const Strides4 ys{g.OH * g.OW * g.O, 1, g.OW * g.O, g.O};   // NHWC output
  conv2d_fwd(dt, s, x, xs, w_oihw, bias, nullptr, ys, y, ys, act);
}

}  // namespace pyimgcls::cpu::ladder
