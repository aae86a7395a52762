// 2:4 sparse linear on the sparse tensor cores: out[M, N] = x[M, K] @ W^T + bias, W [N, K] 2:4 sparse
// along K, stored compressed (values [N, K/2] + metadata [N, ceil(K/16)] uint16; layout and index maps
// in sparse.h). float16 / bfloat16 in, fp32 accumulation, one rounding on store.
//
// Algorithm: mma.sp.sync.aligned.m16n8k32.row.col.f32.{f16,bf16} (sm_80+) with the sparse operand
// A = W (16 output features x 32 of K, held as 16 x 16 values + a 32-bit metadata register per lane)
// and B = x^T (32 of K x 8 batch rows), so D tiles are [features x batch rows] and the epilogue
// stores them transposed into out[M, N]. A CTA of 2 x 2 warps computes 32 features x 64 rows; a warp
// loads its A fragment and metadata once per K step and reuses them for 4 n8 tiles of B. Fragments are
// loaded straight from global memory with 32-bit loads (each a pair of K-adjacent elements, so
// K % 4 == 0 keeps every pair inside or outside K, and beyond N / M / K a pair reads as 0).
// FLOPs: 2 * M * N * K dense-equivalent (M * N * K issued on the tensor cores); bytes at least
// 2 * (M * K + N * K / 2 + M * N) + N * K / 8 (metadata).
// Not yet done (see benchmarks/NOTES.md): shared-memory staging with cp.async as in gemm.cu, which the
// >= 1.3x-over-dense target likely needs. ptxas advises mma.sp::ordered_metadata for sm_90 and later
// (PTX 8.5; the metadata written by compress_2_4 is already ordered, i0 < i1).
// Test: tests/test_sparse24.py (CPU emulation of this data path; the GPU test is cuda-marked);
// benchmark: benchmarks/bench_sparse.py (GPU; unmeasured so far).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common.cuh"
#include "runtime.h"
#include "sparse.h"

namespace pyimgcls::cuda {

namespace {

// D[16x8] += A(2:4, 16x32 as 16x16 values + metadata e) * B[32x8], selector 0 (lanes 4g, 4g+1 supply
// e). Registers only: no "memory" clobber.
template <typename T>
__device__ __forceinline__ void mma_sp_16832(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4],
                                             uint32_t e) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same<T, __half>::value) {
    asm volatile(
        "mma.sp.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
  } else {
    static_assert(std::is_same<T, __nv_bfloat16>::value, "mma_sp_16832 takes __half or __nv_bfloat16");
    asm volatile(
        "mma.sp.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
  }
#else
  __trap();  // sm_80+ only; the launcher refuses older devices
#endif
}

// A 32-bit pair of 16-bit elements at p, or 0 when !ok (read-only path).
__device__ __forceinline__ uint32_t ld_pair(const void* p, bool ok) {
  return ok ? __ldg(reinterpret_cast<const unsigned int*>(p)) : 0u;
}

struct SparseParams {
  const void* x;
  const void* values;
  const uint16_t* meta;
  const void* bias;
  void* out;
  int64_t ldx, ldv, ldm, ldo;
  int M, N, K;
};

template <typename T>
__global__ void __launch_bounds__(sp::kThreads) sparse_linear_fwd_kernel(const SparseParams p) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n0 = blockIdx.y * sp::kTileN + (warp % sp::kWarpsN) * 16;
  const int m0 = blockIdx.x * sp::kTileM + (warp / sp::kWarpsN) * (8 * sp::kNT);
  const T* x = static_cast<const T*>(p.x);
  const T* v = static_cast<const T*>(p.values);
  const int half_k = p.K / 2;
  const int64_t mcols = sp::meta_cols(p.K);
  const sp::MetaWords mw = sp::meta_words(lane);

  float acc[sp::kNT][4];
#pragma unroll
  for (int j = 0; j < sp::kNT; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) acc[j][r] = 0.f;

  // Two K steps per iteration: the second step's 24 loads are issued before the first step's MMAs
  // wait on theirs (the fragments come straight from global memory, so latency is the limit).
#pragma unroll 2
  for (int kb = 0; kb < p.K; kb += sp::kStepK) {
    uint32_t a[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const sp::RowCol rc = sp::a_frag(lane, r);
      const int n = n0 + rc.row, c = kb / 2 + rc.col;
      a[r] = ld_pair(v + static_cast<int64_t>(n) * p.ldv + c, n < p.N && c < half_k);
    }
    // Words past K or N: 0x4444 (indices 0, 1 of each group), a valid pattern over zero values.
    const int64_t w = kb / 16 + mw.half;
    const bool wok = w < mcols;
    const uint32_t lo = (wok && n0 + mw.row_lo < p.N) ? __ldg(p.meta + (n0 + mw.row_lo) * p.ldm + w) : 0x4444u;
    const uint32_t hi = (wok && n0 + mw.row_hi < p.N) ? __ldg(p.meta + (n0 + mw.row_hi) * p.ldm + w) : 0x4444u;
    const uint32_t e = lo | (hi << 16);
#pragma unroll
    for (int j = 0; j < sp::kNT; ++j) {
      uint32_t b[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const sp::RowCol rc = sp::b_frag(lane, r);
        const int m = m0 + 8 * j + rc.col, k = kb + rc.row;
        b[r] = ld_pair(x + static_cast<int64_t>(m) * p.ldx + k, m < p.M && k < p.K);
      }
      mma_sp_16832<T>(acc[j], a, b, e);
    }
  }

  T* out = static_cast<T*>(p.out);
  const T* bias = static_cast<const T*>(p.bias);
#pragma unroll
  for (int j = 0; j < sp::kNT; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const sp::RowCol rc = sp::acc_frag(lane, r);
      const int n = n0 + rc.row, m = m0 + 8 * j + rc.col;
      if (n < p.N && m < p.M) {
        const float b = bias != nullptr ? to_float(bias[n]) : 0.f;
        out[static_cast<int64_t>(m) * p.ldo + n] = from_float<T>(acc[j][r] + b);
      }
    }
}

}  // namespace

void sparse_linear(DType dt, const void* x, int64_t ldx, const void* values, int64_t ldv, const void* meta,
                   int64_t ldm, const void* bias, void* out, int64_t ldo, int64_t M, int64_t N, int64_t K, int device,
                   uintptr_t stream) {
  if (dt != DType::Float16 && dt != DType::BFloat16)
    throw std::invalid_argument(std::string("CUDA sparse_linear takes float16 or bfloat16, got ") + dtype_name(dt));
  if (K % 4 != 0 || ldx % 2 != 0 || ldv % 2 != 0 || !aligned_to(x, 4) || !aligned_to(values, 4))
    throw std::invalid_argument("CUDA sparse_linear: K must be a multiple of 4, x and values 4-byte aligned "
                                "with even row strides");
  if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX)
    throw std::invalid_argument("CUDA sparse_linear: M, N and K must fit in 32 bits");
  if (M == 0 || N == 0) return;
  const DeviceGuard device_guard(device);
  int major = 0;
  PYIMGCLS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 8) throw std::invalid_argument("CUDA sparse_linear needs sm_80 or newer (mma.sp)");
  const LaunchPlan plan = sparse_linear_plan(dt, M, N, K);
  (void)plan;
  SparseParams p{x, values, static_cast<const uint16_t*>(meta), bias, out, ldx, ldv, ldm, ldo,
                 static_cast<int>(M), static_cast<int>(N), static_cast<int>(K)};
  const dim3 grid(static_cast<unsigned>((M + sp::kTileM - 1) / sp::kTileM),
                  static_cast<unsigned>((N + sp::kTileN - 1) / sp::kTileN));
  if (grid.y > 65535) throw std::invalid_argument("CUDA sparse_linear: N too large for one launch");
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  if (dt == DType::Float16)
    sparse_linear_fwd_kernel<__half><<<grid, sp::kThreads, 0, st>>>(p);
  else
    sparse_linear_fwd_kernel<__nv_bfloat16><<<grid, sp::kThreads, 0, st>>>(p);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace pyimgcls::cuda
