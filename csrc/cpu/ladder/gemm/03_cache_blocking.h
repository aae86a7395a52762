// CPU GEMM ladder, step 3: cache blocking.
//
// What changed from step 2: the three loops are tiled so the working set of the inner i-k-j loop
// stays in cache. For each block of NC columns and KC rows of B (the B block, KC x NC), the inner
// loop runs over MC rows of A:
//   for jc in N step NC, pc in K step KC, ic in M step MC:
//     C[ic:ic+MC, jc:jc+NC] += A[ic:ic+MC, pc:pc+KC] @ B[pc:pc+KC, jc:jc+NC]     (block_ikj)
// With KC = 128, NC = 512 the B block is 256 KiB at fp32 and stays in the 1 MiB L2 while all M rows
// of A sweep over it; the C row segment (NC = 2 KiB) stays in L1 across the KC loop.
// Why it should be faster: step 2 streamed all of B (4 MiB) from L3 once per row of C; here each
// B block is read from L3 once per jc/pc pair and then reused M times from L2, so the inner loop
// is fed from L2 (~2x the per-core bandwidth of L3). C is now read and written K/KC times instead
// of once, an extra 2*M*N*(K/KC) accesses, small next to the M*N*K B reads.
//   FLOPs = 2*M*N*K.  L3->L2 traffic ~ sizeof(T)*(K*N + M*K*(N/NC) + 2*M*N*(K/KC)).
// Prediction (1024^3 fp32, one thread): 1.3-2x step 2; still load/store bound (2 loads + 1 store per
//   vector FMA), so well below one core's FMA peak.
//
// Test: pytest tests/test_ladder.py -k cpu     Benchmark: python benchmarks/bench_ladder.py
#pragma once
#include <algorithm>
#include <cstdint>

#include "../../isa.h"

namespace pyimgcls::cpu::ladder {

constexpr int64_t kBlockMC = 64;   // rows of A per block
constexpr int64_t kBlockKC = 128;  // depth per block
constexpr int64_t kBlockNC = 512;  // columns of B per block

// C[mc, nc] (+)= A[mc, kc] @ B[kc, nc]; row strides lda, ldb, ldc; `first` overwrites C.
// The building block of steps 3-5 and of the conv ladder's GEMM steps.
template <typename T>
PYIMGCLS_INLINE void block_ikj(const T* __restrict a, int64_t lda, const T* __restrict b, int64_t ldb,
                               T* __restrict c, int64_t ldc, int64_t mc, int64_t nc, int64_t kc, bool first) {
  for (int64_t i = 0; i < mc; ++i) {
    T* __restrict ci = c + i * ldc;
    if (first)
      for (int64_t j = 0; j < nc; ++j) ci[j] = T(0);
    const T* __restrict ai = a + i * lda;
    for (int64_t k = 0; k < kc; ++k) {
      const T aik = ai[k];
      const T* __restrict bk = b + k * ldb;
      for (int64_t j = 0; j < nc; ++j) ci[j] += aik * bk[j];
    }
  }
}

// K == 0: C is the empty sum, zeros, which the blocked loops (they only run over K) never write.
// Returns whether it handled the call. Shared with step 4.
template <typename T>
PYIMGCLS_INLINE bool zero_if_k_empty(T* __restrict c, int64_t M, int64_t N, int64_t K) {
  if (K != 0) return false;
  for (int64_t i = 0; i < M * N; ++i) c[i] = T(0);
  return true;
}

template <typename T>
PYIMGCLS_INLINE void gemm_cache_blocking(const T* __restrict a, const T* __restrict b, T* __restrict c, int64_t M,
                                         int64_t N, int64_t K) {
  if (zero_if_k_empty(c, M, N, K)) return;
  for (int64_t jc = 0; jc < N; jc += kBlockNC) {
    const int64_t nc = std::min(kBlockNC, N - jc);
    for (int64_t pc = 0; pc < K; pc += kBlockKC) {
      const int64_t kc = std::min(kBlockKC, K - pc);
      for (int64_t ic = 0; ic < M; ic += kBlockMC) {
        const int64_t mc = std::min(kBlockMC, M - ic);
        block_ikj(a + ic * K + pc, K, b + pc * N + jc, N, c + ic * N + jc, N, mc, nc, kc, pc == 0);
      }
    }
  }
}

}  // namespace pyimgcls::cpu::ladder
