// GEMM ladder, step 09: cp.async multi-stage pipeline: THE PRODUCTION KERNEL.
//
// This step is not a copy: it calls pyimgcls::cuda::gemm (csrc/cuda/gemm.h), the launcher that
// torch-facing pyimgcls.ops.gemm / nn.Linear run, with contiguous row-major strides, no bias and no
// activation. Its fp16/bf16 kernel (gemm_fwd_kernel in csrc/cuda/gemm.cu) is what step 08 becomes
// when the shared-memory ring gets STAGES slices deep and is filled by 16-byte cp.async copies
// (zero-filled past the edges through the src-size operand), so STAGES - 1 slices are in flight while
// one is multiplied; tiles are XOR-swizzled instead of padded (conflict-free cp.async stores and
// ldmatrix reads, more smem for stages); the tile shape (128x128 with 8 warps, 64x128, 64x64) is
// chosen by the number of CTAs the problem yields; CTAs are rasterised in groups of 8 tile-rows for
// L2 reuse of B; the epilogue stages C through shared memory for 16-byte coalesced stores. Its
// tensor-core path needs K % 8 == 0, N % 8 == 0 and 16-byte aligned pointers; other shapes take the
// production SIMT fallback (still correct, any M, N, K).
//
// Counts at M = N = K = 4096 (fp16): FLOPs 137.4 GFLOP; global traffic per 128x128 tile as step 08
// (2.1 MB) but overlapped with the MMAs, and the grouped raster keeps B's column panel L2-resident.
//
// Prediction (H100 SXM, fp16): ~480 TFLOP/s, ~70% of cuBLAS: load latency is hidden, so the kernel
// approaches the mma.sync ceiling on Hopper (~660 TFLOP/s); cuBLAS uses wgmma + TMA (step 10).
#pragma once
#include "../../gemm.h"
#include "../common.cuh"

namespace pyimgcls::cuda::ladder::detail {

inline void launch_ladder_gemm_cp_async_pipeline_fwd(DType dt, const void* a, const void* b, void* c, int64_t M,
                                                     int64_t N, int64_t K, int device, uintptr_t stream) {
  // A [M, K]: (sam, sak) = (K, 1); B [K, N]: (sbk, sbn) = (N, 1); C leading dimension N.
  ::pyimgcls::cuda::gemm(dt, a, K, 1, b, N, 1, nullptr, c, N, M, N, K, Act::None, device, stream);
}

}  // namespace pyimgcls::cuda::ladder::detail
