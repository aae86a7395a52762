// The one description of a 2-D convolution that the CPU and CUDA conv families (and the last step
// of each study ladder) receive, so that a field added or reordered here reaches both sides and the
// single converter in csrc/bindings/conv.cpp. Plain aggregates: usable from g++ and nvcc alike.
#pragma once
#include <cstdint>

namespace pyimgcls {

// Input [N, C, H, W], weight [O, C/groups, KH, KW], output [N, O, OH, OW]. pad_h / pad_w are the
// top / left padding; the bottom / right padding is implied by OH / OW (PyTorch's padding="same"
// pads asymmetrically for even kernels). Field order is the order of the 16 ints Python sends
// (pyimgcls/ops/conv.py, ConvGeometry).
struct ConvGeometry {
  int64_t N, C, H, W;
  int64_t O, KH, KW;
  int64_t OH, OW;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;
};

// Element strides of a 4-D tensor in (n, c, h, w) order (any layout: NCHW, NHWC, views); for a
// weight, (o, c, kh, kw).
struct Strides4 {
  int64_t n, c, h, w;
};

}  // namespace pyimgcls
