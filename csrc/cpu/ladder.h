// CPU study ladder: GEMM and convolution from the naive loop to the production kernels
// (see docs/ladder.md). Each numbered step is a complete kernel under
// csrc/cpu/ladder/<gemm|conv>/NN_<name>.h; the last step of each ladder calls the production
// function (cpu::gemm / cpu::conv2d_fwd), it never copies it. Forward only (study kernels).
// Mirrors the CUDA contract in csrc/cuda/ladder.h, minus device and stream.
#pragma once
#include <cstdint>
#include <vector>

#include "../common.h"

namespace pyimgcls::cpu::ladder {

// One step (csrc/common.h, LadderStep) and the layout of its weight.
struct StepInfo : LadderStep {
  bool weight_oihw;  // conv steps: weight [O, C, KH, KW] (true) or [O, KH, KW, C] (false)
};

// Steps of "gemm" and "conv", in order (index i holds step i + 1).
const std::vector<StepInfo>& gemm_steps();
const std::vector<StepInfo>& conv_steps();

// C[M, N] = A[M, K] @ B[K, N]; every matrix contiguous row-major; dt Float32 or Float64.
// Throws std::invalid_argument for an unknown step or a dtype the step does not take.
void gemm(int step, DType dt, const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K);

// y = act(conv2d(x, w) + bias), groups 1, dilation 1; bias may be null. Layouts per StepInfo:
// NCHW x [N, C, H, W], y [N, O, OH, OW]; NHWC x [N, H, W, C], y [N, OH, OW, O]; weight
// [O, C, KH, KW] or [O, KH, KW, C]; all contiguous. scratch: a caller-allocated buffer of
// conv_scratch_bytes(...) bytes (the explicit-im2col step's column matrix; 0 for the others).
int64_t conv_scratch_bytes(int step, DType dt, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH,
                           int64_t KW, int64_t OH, int64_t OW);
void conv2d(int step, DType dt, const void* x, const void* w, const void* bias, void* y, void* scratch, int64_t N,
            int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW, int64_t OH, int64_t OW,
            int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, Act act);

}  // namespace pyimgcls::cpu::ladder
