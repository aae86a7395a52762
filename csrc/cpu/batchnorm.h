// CPU BatchNorm family (float32 / float64, and bfloat16 activations with float32 per-channel vectors;
// the Python layer computes float16 in float32). See batchnorm.cpp for the algorithms.
//
// Every activation tensor (x, residual, y, grad, out, grad_input, grad_residual) is contiguous in
// one layout, viewed as [N, C, S] with S = the product of the spatial sizes:
//   channels_last == false: element (n, c, s) at (n*C + c)*S + s      (NCHW, and [N, C] with S = 1)
//   channels_last == true:  element (n, c, s) at (n*S + s)*C + c      (NHWC)
// Per-channel vectors (weight, bias, mean, var, invstd, running stats, grad_weight, grad_bias) are
// contiguous [C] arrays of the same type T as x, float32 when dt is BFloat16 (the activation tensors
// are then bf16, every sum float32 / float64, every stored value rounded once to nearest even).
#pragma once
#include "../common.h"

namespace pyimgcls::cpu {

// Batch statistics over the M = N*S values of each channel: mean[c] and the biased variance var[c],
// one pass of shifted sums (shift = the channel's first value), in T over short runs added into
// float64. Deterministic.
void batch_norm_stats(DType dt, const void* x, void* mean, void* var, int64_t N, int64_t C, int64_t S,
                      bool channels_last);

// y = act((x - mean[c]) * invstd[c] * weight[c] + bias[c] + residual), invstd[c] = 1/sqrt(var[c] + eps),
// which is also written to invstd (the backward needs it). weight / bias / residual may be null
// (weight 1, bias 0, no residual).
void batch_norm_fwd(DType dt, const void* x, const void* mean, const void* var, const void* weight,
                    const void* bias, const void* residual, void* y, void* invstd, int64_t N, int64_t C, int64_t S,
                    bool channels_last, double eps, Act act);

// running_mean = (1 - momentum) * running_mean + momentum * mean
// running_var  = (1 - momentum) * running_var  + momentum * var * count / (count - 1)   (unbiased)
void batch_norm_update_stats(DType dt, void* running_mean, void* running_var, const void* mean, const void* var,
                             int64_t C, double momentum, int64_t count);

// Backward of y = act(bn(x) + residual), act' taken from the saved output `out` (null when act is
// None) with select semantics (ATen's threshold / hardtanh backward: relu drops out <= 0, relu6
// out <= 0 or out >= 6; a NaN output passes its gradient):
//   gp           = grad where act kept out, else 0          -> grad_pre (if not null; the residual's grad)
//   grad_bias    = sum gp                                     (if not null)
//   grad_weight  = sum gp * (x - mean) * invstd               (if not null)
//   grad_input   = weight * invstd * (gp - sum gp / M - (x - mean) * invstd^2 * sum gp*(x - mean) / M)
//                  (training) or weight * invstd * gp (eval)   (if not null)
// Channel sums: T over short runs, added into float64 in a fixed order (deterministic).
void batch_norm_bwd(DType dt, const void* grad, const void* out, const void* x, const void* weight,
                    const void* mean, const void* invstd, void* grad_input, void* grad_weight, void* grad_bias,
                    void* grad_pre, int64_t N, int64_t C, int64_t S, bool channels_last, bool training, Act act);

}  // namespace pyimgcls::cpu
