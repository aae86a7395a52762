// CPU distillation-loss family (float32 / float64). See distill.cpp for the algorithm.
#pragma once
#include "../common.h"
#include "softmax_xent.h"

namespace pyimgcls::cpu {

// Fused forward of the knowledge-distillation loss for student logits s [N, C] (row stride ssn) and
// teacher logits t [N, C] (row stride stn), both with unit class stride, and class-index targets [N]
// (int64, or int32 when target_i32), with T = temperature > 0, a = alpha in [0, 1], eps = label smoothing:
//   loss_i = a T^2 KL(softmax(t_i / T) || softmax(s_i / T)) + (1 - a) CE_eps(s_i, target_i),
//   0 for rows whose target is ignore_index.
//   loss     reduction None: loss[N]; Mean: loss[0] = sum_i loss_i / (number of counted rows), NaN when
//            every row is ignored; Sum: loss[0] (fixed-order sums, deterministic)
//   grad     d(sum_i loss_i)/ds, contiguous [N, C] in dt, unscaled by the reduction (the backward is
//            softmax_xent_bwd); ignored rows are 0; null = not wanted (inference)
//   denom    Mean only (else null): the number of counted rows, stored in dt
// Returns -1, or the index of the first row whose target is neither ignore_index nor in [0, C);
// nothing is written then.
int64_t distill_fwd(DType dt, const void* s, int64_t ssn, const void* t, int64_t stn, const void* target,
                    bool target_i32, int64_t N, int64_t C, int64_t ignore_index, double label_smoothing,
                    double temperature, double alpha, XentReduction reduction, void* loss, void* grad,
                    void* denom);

// Instruction set the float32 rows use here: "avx512" or "generic" (PYIMGCLS_CPU_ISA lowers it).
const char* distill_isa();

}  // namespace pyimgcls::cpu
