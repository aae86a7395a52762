// 2:4 sparse GEMM on the sparse tensor cores (csrc/cuda/sparse.cu, sparse_linear_fwd_kernel):
// out[M, N] = x[M, K] @ W^T + bias with W [N, K] stored compressed (pyimgcls.ops.compress_2_4):
//   values   [N, K/2]      the 2 kept elements of every group of 4 along K, in k order;
//   metadata [N, ceil(K/16)] uint16 words, word w of row n describes groups 4w..4w+3 (k = 16w..16w+15):
//            nibble j (bits 4j..4j+3) = i0 | i1 << 2, the in-group indices (i0 < i1) of the two kept
//            elements of group 4w+j; nibbles past K are 0x4 (indices 0, 1; their values are not read).
// This is the per-row half-register the PTX instruction reads (PTX ISA, "Sparse matrix storage" and
// the m16n8k32 .f16/.bf16 metadata figure), so a lane's metadata register is two 16-bit words (below).
//
// This header holds the kernel's index maps, the launch decision and the launcher declaration. The
// maps are written once and compiled twice: by nvcc into the kernel and by g++ into its CPU emulation
// (tests/emu/sparse_tc_emu.cpp, run by tests/test_sparse24.py), which implements mma.sp from the PTX
// ISA tables and feeds it the registers these maps fill, so a wrong lane map fails a CPU test.
// Plain C++17 outside nvcc: no CUDA header, no device intrinsic.
#pragma once
#include <cstdint>
#include <string>

#include "../common.h"  // PYIMGCLS_HD, DType
#include "plan.h"

namespace pyimgcls::cuda::sp {

// The kernel's tile: WARPS_N x WARPS_M warps, a warp owns 16 output features (the m16 rows of the
// sparse operand A = W) x 8*NT batch rows (NT m16n8k32 tiles: B = x^T, n8 = 8 rows of x), K walked in
// steps of 32 (16 compressed values + one 32-bit metadata register per lane).
inline constexpr int kWarpsN = 2, kWarpsM = 2, kNT = 4;
inline constexpr int kThreads = 32 * kWarpsN * kWarpsM;
inline constexpr int kTileN = 16 * kWarpsN;    // output features per CTA
inline constexpr int kTileM = 8 * kNT * kWarpsM;  // batch rows per CTA
inline constexpr int kStepK = 32;

struct RowCol {
  int row, col;
};

// A (compressed values of a 16 x 32 slab of W, i.e. 16 x 16 values): register r (0..3) of `lane`
// holds the two values at (row, col) and (row, col + 1) of the 16 x 16 compressed tile. PTX m16n8k32
// sparse .f16/.bf16 uses the dense m16n8k16 A layout on the compressed tile: a0..a7 -> rows g (regs
// 0, 2) / g + 8 (regs 1, 3), columns 2t (regs 0, 1) / 2t + 8 (regs 2, 3); g = lane / 4, t = lane % 4.
PYIMGCLS_HD RowCol a_frag(int lane, int r) { return {(lane >> 2) + ((r & 1) << 3), 2 * (lane & 3) + ((r >> 1) << 3)}; }

// B (32 x 8 slab of x^T): register r (0..3) of `lane` holds rows k, k + 1 of column n = g of the slab
// (x rows m0 + g, k offsets 2t + 8r, 2t + 8r + 1: one aligned 32-bit load of x since K is even).
PYIMGCLS_HD RowCol b_frag(int lane, int r) { return {2 * (lane & 3) + 8 * r, lane >> 2}; }

// Metadata register of `lane` with sparsity selector 0: lanes 4g and 4g + 1 supply it (the others'
// are ignored, the kernel gives them the same words). Low half: row g's word for k 16h..16h+15 of the
// 32-step, high half: row g + 8's word, h = lane % 2 (lane 4g: k 0-15, lane 4g+1: k 16-31).
struct MetaWords {
  int row_lo, row_hi, half;
};
PYIMGCLS_HD MetaWords meta_words(int lane) { return {lane >> 2, (lane >> 2) + 8, lane & 1}; }

// Accumulator register r (0..3) of `lane`: element (row, col) of the m16n8 D tile; rows are output
// features, columns batch rows (the dense m16n8 C layout).
PYIMGCLS_HD RowCol acc_frag(int lane, int r) { return {(lane >> 2) + ((r >> 1) << 3), 2 * (lane & 3) + (r & 1)}; }

// Metadata words per row.
PYIMGCLS_HD int64_t meta_cols(int64_t K) { return (K + 15) / 16; }

}  // namespace pyimgcls::cuda::sp

namespace pyimgcls::cuda {

// The launch decision (also compiled into CPU-only builds for pyimgcls.explain).
inline LaunchPlan sparse_linear_plan(DType dt, int64_t M, int64_t N, int64_t K) {
  LaunchPlan p;
  const char* t = dt == DType::BFloat16 ? "__nv_bfloat16" : "__half";
  p.kernel = std::string("sparse_linear_fwd_kernel<") + t + ">";
  p.tensor_cores = true;
  p.vectorized = false;  // 32-bit fragment loads straight from global memory (L1-cached)
  p.tile_m = sp::kTileM;
  p.tile_n = sp::kTileN;
  p.tile_k = sp::kStepK;
  p.ctas = ((M + sp::kTileM - 1) / sp::kTileM) * ((N + sp::kTileN - 1) / sp::kTileN);
  (void)K;
  return p;
}

// out = x @ W^T + bias for float16 / bfloat16 (dt), W compressed as above. x [M, K] with row stride
// ldx (K-contiguous), values row stride ldv, metadata row stride ldm (uint16 words), out row stride
// ldo; bias may be null. K % 4 == 0, ldx and ldv even, x and values 4-byte aligned (checked by the
// binding). Asynchronous on `stream`.
void sparse_linear(DType dt, const void* x, int64_t ldx, const void* values, int64_t ldv, const void* meta,
                   int64_t ldm, const void* bias, void* out, int64_t ldo, int64_t M, int64_t N, int64_t K, int device,
                   uintptr_t stream);

}  // namespace pyimgcls::cuda
