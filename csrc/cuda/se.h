// CUDA squeeze-and-excitation family (float32 / float16 / bfloat16 activations; float32 weights,
// pooled / hidden / z, weight gradients and per-sample scales). Host launchers; see se.cu.
//
// Activation tensors are [N, C, HW] views, contiguous NCHW (channels_last == false) or NHWC (true);
// w1 [R, C], b1 [R], w2 [C, R], b2 [C] contiguous float32 (null bias = none). Scratch is float32
// device memory allocated by the caller (PyTorch's caching allocator). Every launcher makes `device`
// current, launches on `stream` and never synchronises; no float atomics (fixed-order sums).
// The formulas are those of csrc/cpu/se.h; act / gate codes as there (0 relu / 1 silu; 0 sigmoid /
// 1 hardsigmoid).
#pragma once
#include "../common.h"

namespace pyimgcls::cuda {

// pooled [N, C], hidden [N, R], z [N, C] (float32) are written for the backward.
void se_fwd(DType dt, const void* x, const float* w1, const float* b1, const float* w2, const float* b2, void* y,
            float* pooled, float* hidden, float* z, int64_t N, int64_t C, int64_t HW, int64_t R, bool channels_last,
            int act, int gate, int device, uintptr_t stream);

// scratch: 2 * N * C + N * R floats (gz, gpooled, gh). grad_input in the activation dtype; gw1 / gb1 /
// gw2 / gb2 float32, each may be null.
void se_bwd(DType dt, const void* grad, const void* x, const float* w1, const float* w2, const float* pooled,
            const float* hidden, const float* z, void* grad_input, float* gw1, float* gb1, float* gw2, float* gb2,
            float* scratch, int64_t N, int64_t C, int64_t HW, int64_t R, bool channels_last, int act, int gate,
            int device, uintptr_t stream);

// out[n, m] = x[n, m] * scale[n] (+ residual[n, m]); rows of M contiguous elements, scale float32 [N].
void drop_path(DType dt, const void* x, const float* scale, const void* residual, void* out, int64_t N, int64_t M,
               int device, uintptr_t stream);

}  // namespace pyimgcls::cuda
