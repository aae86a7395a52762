// CUDA distillation-loss family (float32 / float16 / bfloat16). Host launcher; see distill.cu for the
// algorithm.
#pragma once
#include "../common.h"
#include "plan.h"

namespace pyimgcls::cuda {

// Fused forward of the knowledge-distillation loss (csrc/cpu/distill.h has the formula) for student
// logits s [N, C] (row stride ssn) and teacher logits t [N, C] (row stride stn), both with unit class
// stride and dtype dt, class-index targets [N] (int64, or int32 when target_i32); fp32 arithmetic.
// One launch:
//   reduction 0 (none): loss[N] in dt (0 for ignored rows).
//   reduction 1 (mean) / 2 (sum): per-row losses and counted flags go to row_scratch (fp32 [2 * N]);
//     the last block to finish (epoch-tagged ticket on *ticket, as softmax_xent_fwd) sums them in a
//     fixed order and writes loss[0] in dt and, for the mean, denom[0] (fp32) = counted rows.
//   grad (may be null): d(sum_i loss_i)/ds, contiguous [N, C] in dt; ignored rows 0.
// A target that is neither ignore_index nor in [0, C) is never dereferenced: that row's loss and
// gradient are NaN. Never synchronises; launches on `stream`. The backward is softmax_xent_bwd.
void distill_fwd(DType dt, const void* s, int64_t ssn, const void* t, int64_t stn, const void* target,
                 bool target_i32, int64_t N, int64_t C, int64_t ignore_index, float label_smoothing,
                 float temperature, float alpha, int reduction, void* loss, void* grad, float* row_scratch,
                 float* denom, unsigned long long* ticket, int device, uintptr_t stream);

// The launcher's decision (pyimgcls.explain): a 32-thread group per row (8 rows per 256-thread block)
// up to kDistillWarpRowMax classes, a 256-thread block per row above.
constexpr int64_t kDistillWarpRowMax = 2048;
inline LaunchPlan distill_fwd_plan(int64_t N, int64_t C) {
  LaunchPlan p;
  const bool warp_rows = C <= kDistillWarpRowMax;
  p.kernel = warp_rows ? "distill_fwd_kernel<G=32>" : "distill_fwd_kernel<G=256>";
  p.tile_m = warp_rows ? 8 : 1;
  p.tile_n = static_cast<int>(C < (int64_t(1) << 30) ? C : (int64_t(1) << 30));
  p.ctas = warp_rows ? (N + 7) / 8 : N;
  p.launches = 1;
  return p;
}

}  // namespace pyimgcls::cuda
