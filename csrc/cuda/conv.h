// CUDA convolution family (float32 / float16 / bfloat16). Host launchers; see conv.cu.
#pragma once
#include "../common.h"
#include "../conv_geometry.h"

namespace pyimgcls::cuda {

// ConvGeometry and Strides4: csrc/conv_geometry.h, shared with the CPU kernels and the bindings.

// out = act(conv2d(x, w) + bias + residual), fp32 accumulation, any strides for every tensor.
// Fast path (fp16/bf16): x channels_last, w channels_last ([O, KH, KW, C/groups] in memory), C/groups
// a multiple of 8, 16-byte aligned: tensor-core implicit GEMM with cp.async 16-byte gathers; other
// fp16/bf16 layouts take the same kernel with predicated element gathers; fp32 runs a SIMT implicit
// GEMM; groups == C with one input channel per group runs the direct depthwise kernel.
void conv2d_fwd(DType dt, const ConvGeometry& s, const void* x, Strides4 xs, const void* w, Strides4 ws,
                const void* bias, const void* residual, Strides4 rs, void* out, Strides4 os, Act act, int device,
                uintptr_t stream);

// dx = dgrad(g, w): implicit GEMM over (tap, out channel). Fast path: g channels_last and w with the
// out-channel axis contiguous (ws.n == 1), (O/groups) % 8 == 0.
void conv2d_bwd_data(DType dt, const ConvGeometry& s, const void* g, Strides4 gs, const void* w, Strides4 ws, void* dx,
                     Strides4 xs, int device, uintptr_t stream);

// Number of K (pixel) splits conv2d_bwd_weight uses for this problem on a GPU with `sm_count` SMs;
// the caller allocates float32 scratch of splits * O * KH * KW * (C/groups) elements.
int64_t conv2d_wgrad_splits(DType dt, const ConvGeometry& s, int sm_count);

// dw (contiguous [O, C/groups, KH, KW]) = wgrad(g, x): each split writes fp32 partial sums to scratch,
// then one kernel adds them in split order (deterministic, no atomics) and casts to dw's dtype.
void conv2d_bwd_weight(DType dt, const ConvGeometry& s, const void* g, Strides4 gs, const void* x, Strides4 xs,
                       void* dw, void* scratch, int64_t splits, int device, uintptr_t stream);

// Epilogue backward over a [N, O, P] gradient (strides gs; out shares the layout os; grad_pre is
// written with gs and may alias grad when act is none): grad_pre = grad * act'(out),
// grad_bias[o] = sum. Row splits write fp32 partials (scratch: splits * O floats) reduced in order.
void conv2d_bias_act_bwd(DType dt, int64_t N, int64_t O, int64_t P, const void* grad, Strides4 gs, const void* out,
                         Strides4 os, void* grad_pre, void* grad_bias, void* scratch, int64_t splits, Act act,
                         int device, uintptr_t stream);

}  // namespace pyimgcls::cuda
