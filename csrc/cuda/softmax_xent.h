// CUDA softmax-cross-entropy family (float32 / float16 / bfloat16). Host launchers; see
// softmax_xent.cu for the algorithm.
#pragma once
#include "../common.h"

namespace pyimgcls::cuda {

// Fused forward of F.cross_entropy on logits x [N, C] (row stride sxn elements, unit class stride)
// with class-index targets [N] (int64, or int32 when target_i32) and optional weight [C]; fp32
// arithmetic. One launch:
//   reduction 0 (none): loss[N] in dt.
//   reduction 1 (mean) / 2 (sum): per-row losses and weights go to row_scratch (fp32 [2 * N]);
//     the last block to finish (atomic ticket on *ticket) sums them in a fixed order and writes
//     loss[0] in dt and, for the mean, denom[0] (fp32) = sum of weight[target] over non-ignored
//     rows. ticket: one 8-byte word per device and stream, zeroed once at allocation; it is 0 again
//     after every complete launch, and whatever an incomplete one left behind is discarded by the
//     next launch (epoch tag, see take_ticket in softmax_xent.cu). Launches sharing one word must
//     not overlap (one word per stream).
//   grad (may be null): d(sum_i loss_i)/dx, contiguous [N, C] in dt.
// A target that is neither ignore_index nor in [0, C) is never dereferenced: that row's loss, weight
// and gradient are NaN (so a mean or sum is NaN). Never synchronises; launches on `stream`.
void softmax_xent_fwd(DType dt, const void* x, int64_t sxn, const void* target, bool target_i32,
                      const void* weight, int64_t N, int64_t C, int64_t ignore_index, float label_smoothing,
                      int reduction, void* loss, void* grad, float* row_scratch, float* denom,
                      unsigned long long* ticket, int device, uintptr_t stream);

// Backward: grad_in[i, :] = saved[i, :] * scale_i (contiguous [N, C] in dt), scale_i = 0 for ignored
// rows (none when target is null: probability targets), grad_loss[i * go_stride] when per_row, else grad_loss[0] (divided by denom[0] when denom is
// not null -- the mean; NaN for a zero denominator, as PyTorch). One launch.
void softmax_xent_bwd(DType dt, const void* saved, const void* target, bool target_i32, const void* grad_loss,
                      int64_t go_stride, bool per_row, const float* denom, int64_t N, int64_t C,
                      int64_t ignore_index, void* grad_in, int device, uintptr_t stream);

// Fused forward with class-probability targets t [N, C] (row stride stn, unit class stride, dt):
// t' = (1 - eps) t + eps / C, loss_i = -sum_c w_c t'_ic log_softmax(x_i)_c, grad as the CPU
// softmax_xent_prob_fwd. reduction 0: loss[N]; 1 / 2: per-row losses to row_scratch (fp32 [N]),
// then a one-block launch writes loss[0] (sum, or sum / N) and for the mean denom[0] = N (fp32).
// grad may be null. The backward is softmax_xent_bwd with target = null (no ignored rows).
void softmax_xent_prob_fwd(DType dt, const void* x, int64_t sxn, const void* target, int64_t stn,
                           const void* weight, int64_t N, int64_t C, float label_smoothing, int reduction,
                           void* loss, void* grad, float* row_scratch, float* denom, int device, uintptr_t stream);

}  // namespace pyimgcls::cuda
