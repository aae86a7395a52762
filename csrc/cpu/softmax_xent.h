// CPU softmax-cross-entropy family (float32 / float64). See softmax_xent.cpp for the algorithm.
#pragma once
#include "../common.h"

namespace pyimgcls::cpu {

// Reduction codes; they must match pyimgcls/ops/softmax_xent.py (REDUCTIONS).
enum class XentReduction : int { None = 0, Mean = 1, Sum = 2 };

// Fused forward of F.cross_entropy for logits x [N, C] (row stride sxn, unit class stride) and
// class-index targets [N] (int64, or int32 when target_i32):
//   loss     reduction None: loss[N] per row; Mean / Sum: loss[0] (fixed-order sum, deterministic)
//   grad     d(sum of the per-row losses)/dx, contiguous [N, C] in dt, unscaled by the reduction
//            (the backward multiplies it by the incoming gradient / the mean's denominator);
//            null = not wanted (inference), then only the loss is computed
//   denom    Mean only (else null): sum over non-ignored rows of weight[target] (or their count),
//            the mean's denominator, stored in dt
// weight [C] may be null. Returns -1, or the index of the first row whose target is neither
// ignore_index nor in [0, C); nothing is written then.
int64_t softmax_xent_fwd(DType dt, const void* x, int64_t sxn, const void* target, bool target_i32,
                         const void* weight, int64_t N, int64_t C, int64_t ignore_index,
                         double label_smoothing, XentReduction reduction, void* loss, void* grad,
                         void* denom);

// Backward: grad_in[i, :] = saved[i, :] * scale_i, contiguous [N, C] in dt, with
//   scale_i = 0                                     target[i] == ignore_index (target may be null:
//                                                   no row is ignored, the probability-target case)
//           = grad_loss[i * go_stride]              per_row (reduction None)
//           = grad_loss[0] / denom[0]               denom != null (Mean; NaN when denom is 0)
//           = grad_loss[0]                          otherwise (Sum)
void softmax_xent_bwd(DType dt, const void* saved, const void* target, bool target_i32,
                      const void* grad_loss, int64_t go_stride, bool per_row, const void* denom,
                      int64_t N, int64_t C, int64_t ignore_index, void* grad_in);

// Fused forward of F.cross_entropy with class-probability targets t [N, C] (row stride stn, unit class
// stride, same dtype as x): t' = (1 - eps) t + eps / C, loss_i = -sum_c w_c t'_ic log_softmax(x_i)_c.
//   loss     None: loss[N]; Mean: loss[0] = sum_i loss_i / N; Sum: loss[0] (fixed-order sums)
//   grad     d(sum of the per-row losses)/dx = (sum_c w_c t'_ic) softmax(x_i) - w t'_i, contiguous
//            [N, C], unscaled; null = not wanted
//   denom    Mean only (else null): N, stored in dt (the backward divides by it)
// weight [C] may be null. The backward is softmax_xent_bwd with target = null (no ignored rows).
void softmax_xent_prob_fwd(DType dt, const void* x, int64_t sxn, const void* target, int64_t stn,
                           const void* weight, int64_t N, int64_t C, double label_smoothing,
                           XentReduction reduction, void* loss, void* grad, void* denom);

// Instruction set the float32 row kernels use here: "avx512", "avx2" or "generic"
// (PYIMGCLS_CPU_ISA=generic|avx2|avx512 forces a lower one, as for the GEMM).
const char* softmax_xent_isa();

}  // namespace pyimgcls::cpu
