// CPU convolution family (float32 / float64). See conv.cpp for the algorithm.
#pragma once
#include "../common.h"
#include "../conv_geometry.h"

namespace pyimgcls::cpu {

// Geometry and strides: csrc/conv_geometry.h. Every CPU launcher takes the weight contiguous
// [O, C/groups, KH, KW].

// out[n, o, oh, ow] = act(sum_{c, i, j} x[n, g*C/groups + c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]
//                         * w[o, c, i, j] + bias[o] + residual[n, o, oh, ow])
// x and residual: any strides. out: (h, w) must be collapsible (os.h == OW * os.w); os.c == 1
// (channels_last) picks the pixel-major GEMM, anything else the channel-major one. bias and
// residual may be null.
void conv2d_fwd(DType dt, const ConvGeometry& s, const void* x, Strides4 xs, const void* w, const void* bias,
                const void* residual, Strides4 rs, void* out, Strides4 os, Act act);

// Float32 forward through Winograd F(2x2, 3x3) with the filter transform cached by the caller.
// conv2d_winograd_cache_floats: the floats of the cache U for this call, 0 when the call does not
// take this path (then use conv2d_fwd). conv2d_fwd_cached: as conv2d_fwd; U is rebuilt from w when
// !u_valid or w's fingerprint differs from u_fingerprint; returns w's fingerprint (store it with U).
int64_t conv2d_winograd_cache_floats(DType dt, const ConvGeometry& s);
uint64_t conv2d_fwd_cached(const ConvGeometry& s, const float* x, Strides4 xs, const float* w, const float* bias,
                           const float* res, Strides4 rs, float* out, Strides4 os, Act act, float* U,
                           uint64_t u_fingerprint, bool u_valid);

// grad_input (dgrad): dx[n, c, ih, iw] = sum over (o, i, j) with ih = oh*sh - ph + i*dh (same for w)
// of g[n, o, oh, ow] * w[o, c, i, j]. g: the gradient at the conv output (after the activation
// mask), (h, w) collapsible. dx: written completely (zeros where no tap lands), (h, w) collapsible.
void conv2d_bwd_data(DType dt, const ConvGeometry& s, const void* g, Strides4 gs, const void* w, void* dx,
                     Strides4 xs);

// grad_weight (wgrad): dw[o, c, i, j] = sum_{n, oh, ow} g[n, o, oh, ow] * x[n, c', ih, iw].
// dw is contiguous [O, C/groups, KH, KW]. Deterministic: bit-identical for any thread count (each
// element summed by one thread in a fixed order, chunks added in order).
void conv2d_bwd_weight(DType dt, const ConvGeometry& s, const void* g, Strides4 gs, const void* x, Strides4 xs,
                       void* dw);

// Epilogue backward on a [N, O, OH*OW] gradient with strides gs (the output's strides os for out):
//   grad_pre = grad * act'(out)   (written with strides gs; may alias grad when act is none)
//   grad_bias[o] = sum_{n, p} grad_pre[n, o, p]   (skipped when grad_bias is null; fp64 sums)
void conv2d_bias_act_bwd(DType dt, int64_t N, int64_t O, int64_t P, const void* grad, Strides4 gs,
                         const void* out, Strides4 os, void* grad_pre, void* grad_bias, Act act);

}  // namespace pyimgcls::cpu
