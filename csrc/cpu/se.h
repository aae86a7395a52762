// CPU squeeze-and-excitation family (float32 / float64; the Python layer computes float16 /
// bfloat16 in float32): the SE block as one op, forward and backward, and the stochastic-depth
// (drop path) scale-and-add. See se.cpp for the algorithms.
//
// Activation tensors (x, y, grad, grad_input) are contiguous in one layout, viewed as [N, C, HW]:
//   channels_last == false: element (n, c, s) at (n*C + c)*HW + s      (NCHW)
//   channels_last == true:  element (n, c, s) at (n*HW + s)*C + c      (NHWC)
// Weights are contiguous: w1 [R, C] (fc1, R = squeeze channels), b1 [R], w2 [C, R] (fc2), b2 [C];
// b1 / b2 may be null (no bias). The small per-sample tensors pooled [N, C], hidden [N, R] (fc1's
// output before the activation) and z [N, C] (fc2's output before the gate) are what the backward
// needs; every one of them, the weights and the weight gradients are of the same type T as x.
#pragma once
#include "../common.h"

namespace pyimgcls::cpu {

// The codes of the op's activation and gate (pyimgcls/ops/se.py: SE_ACT_CODES, SE_GATE_CODES).
enum class SeAct : int { ReLU = 0, SiLU = 1 };
enum class SeGate : int { Sigmoid = 0, HardSigmoid = 1 };

// pooled = mean over HW of x;  hidden = pooled w1^T + b1;  z = act(hidden) w2^T + b2;
// y = x * gate(z)   (broadcast over HW).
void se_fwd(DType dt, const void* x, const void* w1, const void* b1, const void* w2, const void* b2, void* y,
            void* pooled, void* hidden, void* z, int64_t N, int64_t C, int64_t HW, int64_t R, bool channels_last,
            int act, int gate);

// Backward of se_fwd from the saved pooled / hidden / z:
//   gz = (sum over HW of grad * x) * gate'(z);   gw2 = gz^T act(hidden);  gb2 = sum_n gz
//   gh = (gz w2) * act'(hidden);                 gw1 = gh^T pooled;       gb1 = sum_n gh
//   grad_input = grad * gate(z) + (gh w1) / HW
// Any output pointer may be null (not wanted). Sums over n run in a fixed order (deterministic).
void se_bwd(DType dt, const void* grad, const void* x, const void* w1, const void* w2, const void* pooled,
            const void* hidden, const void* z, void* grad_input, void* gw1, void* gb1, void* gw2, void* gb2, int64_t N,
            int64_t C, int64_t HW, int64_t R, bool channels_last, int act, int gate);

// Stochastic depth: out[n, m] = x[n, m] * scale[n] (+ residual[n, m] when residual is not null);
// x / residual / out contiguous [N, M] rows, scale [N], all of type T. A literal multiply (a dropped
// sample with scale 0 gives NaN for an inf / NaN input, as torchvision's input * noise does).
void drop_path(DType dt, const void* x, const void* scale, const void* residual, void* out, int64_t N, int64_t M);

}  // namespace pyimgcls::cpu
