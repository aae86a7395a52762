// GEMM ladder, step 10: Hopper wgmma + TMA (sm_90a only): declaration.
//
// The kernel lives in csrc/cuda/sm90/ladder_gemm_wgmma.cu, which setup.py compiles only for the 90a
// target (and always when "90a" is in PYIMGCLS_CUDA_ARCHS). This header declares its launcher as a
// WEAK symbol: on a build without 90a (archs "80") the object is absent, the symbol resolves to null
// and ladder.cu reports that step 10 is not built instead of failing to link. See the .cu for what
// the step changes, its counts and its prediction.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "../../../common.h"

namespace pyimgcls::cuda::ladder::detail {

// C[M, N] = A[M, K] @ B[K, N] for dt float16 / bfloat16, all row-major contiguous. Requires K % 8 == 0,
// N % 8 == 0, K > 0 and 16-byte aligned pointers (TMA global strides and addresses); any M. Throws
// std::invalid_argument otherwise. The caller has set the device and checked it is sm_90.
__attribute__((weak)) void launch_ladder_gemm_wgmma_tma_fwd(DType dt, const void* a, const void* b, void* c,
                                                            int64_t M, int64_t N, int64_t K, cudaStream_t stream);

}  // namespace pyimgcls::cuda::ladder::detail
