// Convolution ladder, step 05: fused bias/ReLU epilogue: THE PRODUCTION CONVOLUTION.
//
// This step is not a copy: it calls pyimgcls::cuda::conv2d_fwd (csrc/cuda/conv.h), the launcher that
// pyimgcls.ops.conv2d / nn.Conv2d run, with NHWC strides. Its fp16/bf16 fast path (channels-last x and
// w, C % 8 == 0, 16-byte aligned) is step 04 plus (a) a cp.async multi-stage pipeline of the 16-byte
// gathers (zero-filled for padding through the src-size operand) so the tensor cores never wait for
// a slice, as GEMM step 09 adds to step 08, and (b) the bias add and activation applied on the fp32
// accumulators before rounding, so the separate read-modify-write pass of y that steps 01-04 run is
// gone. Other shapes take its predicated gathers (still correct).
//
// Counts at the benchmark layer (N = 32, C = 64, H = W = 56, O = 64, 3x3, s1, p1; fp16): FLOPs
// 7.40 GFLOP; compulsory traffic x 12.8 MB + w 74 KB + y 12.8 MB; the removed pass saved 25.7 MB.
//
// Prediction (H100 SXM, fp16): ~220 TFLOP/s, ~70% of cuDNN: gathers overlap the MMAs and no extra
// pass; still mma.sync (not wgmma), and with K = 576 only 18 slices per tile the pipeline's fill and
// drain are a noticeable fraction.
#pragma once
#include "../../conv.h"
#include "../common.cuh"
#include "01_direct.cuh"

namespace pyimgcls::cuda::ladder::detail {

inline void launch_ladder_conv_fused_epilogue_fwd(DType dt, const void* x, const void* w, const void* bias, void* y,
                                                  const LadderConvArgs& s, Act act, int device, uintptr_t stream) {
  ConvGeometry g{s.N, s.C, s.H, s.W, s.O, s.KH, s.KW, s.OH, s.OW, s.sh, s.sw, s.ph, s.pw, 1, 1, 1};
  // NHWC strides in (n, c, h, w) order; the weight [O, KH, KW, C] in (o, c, kh, kw) order.
  const Strides4 xs{s.H * s.W * s.C, 1, s.W * s.C, s.C};
  const Strides4 ws{s.KH * s.KW * s.C, 1, s.KW * s.C, s.C};
  const Strides4 ys{s.OH * s.OW * s.O, 1, s.OW * s.O, s.O};
  ::pyimgcls::cuda::conv2d_fwd(dt, g, x, xs, w, ws, bias, nullptr, ys, y, ys, act, device, stream);
}

}  // namespace pyimgcls::cuda::ladder::detail
