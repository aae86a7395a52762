// CUDA study ladder: GEMM and convolution from the naive loop to tensor cores (see docs/ladder.md).
// Each numbered step is a complete kernel under csrc/cuda/ladder/<gemm|conv>/NN_<name>.cuh; the
// sm_90a-only wgmma + TMA step lives in csrc/cuda/sm90/ and is selectable only on an sm_90a build
// running on an sm_90 device. Host launchers; implementation in ladder.cu.
#pragma once
#include <vector>

#include "../common.h"

namespace pyimgcls::cuda::ladder {

// One step (csrc/common.h, LadderStep) and whether it needs Hopper.
struct StepInfo : LadderStep {
  bool needs_sm90a;  // only runs on an sm_90 device with the 90a build
};

// Steps of "gemm" and "conv", in order (index i holds step i + 1).
const std::vector<StepInfo>& gemm_steps();
const std::vector<StepInfo>& conv_steps();

// C[M, N] = A[M, K] @ B[K, N]; every matrix contiguous row-major; fp32 accumulation; C in dt.
// Throws std::invalid_argument for an unknown step or a dtype the step does not take, and
// std::runtime_error (with the CUDA error name) for a failed launch. Never synchronises.
void gemm(int step, DType dt, const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K, int device,
          uintptr_t stream);

// y = act(conv2d(x, w) + bias), groups == 1; bias may be null. Steps before the fused-epilogue step
// apply bias and act in a separate elementwise pass (the traffic the last step removes). Layout per StepInfo::channels_last:
// NCHW x [N, C, H, W], w [O, C, KH, KW], y [N, O, OH, OW]; NHWC x [N, H, W, C], w [O, KH, KW, C],
// y [N, OH, OW, O]; all contiguous in that order. scratch: a caller-allocated buffer of
// conv_scratch_bytes(...) bytes (the explicit-im2col step's column matrix; 0 bytes for the others).
int64_t conv_scratch_bytes(int step, DType dt, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH,
                           int64_t KW, int64_t OH, int64_t OW);
void conv2d(int step, DType dt, const void* x, const void* w, const void* bias, void* y, void* scratch, int64_t N,
            int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW, int64_t OH, int64_t OW,
            int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, Act act, int device,
            uintptr_t stream);

}  // namespace pyimgcls::cuda::ladder
