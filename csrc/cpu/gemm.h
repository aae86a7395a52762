// CPU GEMM family (float32 / float64, and bfloat16 with float32 accumulation). See gemm.cpp for the
// algorithm.
#pragma once
#include "../common.h"

namespace pyimgcls::cpu {

// C[m, n] = act(sum_k A[m, k] * B[k, n] + bias[n])   for 0 <= m < M, 0 <= n < N.
// A is addressed a[m*sam + k*sak], B b[k*sbk + n*sbn], C c[m*scm + n*scn]: any strides (transposed
// views need no copy). bias may be null. K == 0 writes act(bias) (or zeros). dt: Float32, Float64 or
// BFloat16 (gemm_bf16 below).
void gemm(DType dt, const void* a, int64_t sam, int64_t sak, const void* b, int64_t sbk, int64_t sbn,
          const void* bias, void* c, int64_t scm, int64_t scn, int64_t M, int64_t N, int64_t K, Act act);

// Backward of the epilogue on contiguous row-major [M, N] tensors:
//   grad_pre[m, n] = act_grad(out[m, n], grad[m, n]) (common.h): relu / relu6 a select, as ATen's
//                    threshold/hardtanh backward (a NaN output passes its gradient, an inf gradient at
//                    a dropped position gives 0); sigmoid from the output; silu / hardswish /
//                    hardsigmoid read the pre-activation, passed as `out`
//   grad_bias[n]   = sum_m grad_pre[m, n]            (skipped when grad_bias is null)
// grad_pre may alias grad. Deterministic (fixed summation order).
void bias_act_bwd(DType dt, const void* grad, const void* out, void* grad_pre, void* grad_bias,
                  int64_t M, int64_t N, Act act);

// Standalone activation over n dense elements: y = act(x); grad_in = act'(saved) * grad with saved
// the output y for relu / relu6 / sigmoid and the input x for silu / hardswish / hardsigmoid.
void act_fwd(DType dt, const void* x, void* y, int64_t n, Act act);
void act_bwd(DType dt, const void* grad, const void* saved, void* grad_in, int64_t n, Act act);

// bfloat16 GEMM: C = act(A @ B + bias) with A and B in bf16 (in_dt BFloat16) or float32 rounded to
// bf16 while packing (in_dt Float32; exact when the values are bf16 already), products and sums in
// float32 (vdpbf16ps on AVX512_BF16 CPUs, float32 FMAs on the same bf16 values elsewhere), bias
// (float32, may be null) and the activation on the float32 sum, C written as float32 or rounded to
// bf16 (out_dt; nearest, ties to even). Strides as gemm. gemm(BFloat16, ...) is this with bf16 A,
// B, bias and C.
void gemm_bf16(DType in_dt, const void* a, int64_t sam, int64_t sak, const void* b, int64_t sbk, int64_t sbn,
               const float* bias, void* c, DType out_dt, int64_t scm, int64_t scn, int64_t M, int64_t N, int64_t K,
               Act act);

// Which kernel the bf16 GEMM runs here: "avx512bf16" (vdpbf16ps) or the fallback's "avx512",
// "avx2", "generic" (PYIMGCLS_CPU_ISA selects among them).
const char* gemm_bf16_kernel();

// Instruction set the micro-kernel dispatches to on this CPU: "avx512", "avx2" or "generic".
const char* gemm_isa();

}  // namespace pyimgcls::cpu
