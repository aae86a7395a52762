// CPU GEMM ladder, step 4: packing.
//
// What changed from step 3: before the inner loop runs, the current B block (KC x NC) and A block
// (MC x KC) are copied ("packed") into small contiguous buffers, B as rows of length nc and A as
// rows of length kc, and block_ikj (step 3) runs on the packed copies.
// Why it should be faster: in step 3 consecutive rows of the B block are N elements apart in
// memory. At N = 1024 fp32 that stride is 4 KiB, so the 128 rows of a block fall onto the same
// few cache sets (L1 and L2 index by address bits below 4 KiB / 64 KiB) and evict each other, and
// each row of the block sits on its own pages (TLB misses). The packed block is one contiguous
// 256 KiB run: no conflict misses, few TLB entries, ideal for the prefetcher. The price is one extra
// read + write of A and B per block: sizeof(T) * (K*N + M*K*(N/NC)) bytes, ~1% of the FLOP time.
// Packing is also what makes the parallel (step 5) and micro-kernel (step 6) versions possible:
// every thread and every register tile reads a layout chosen for it, not the caller's.
//   FLOPs = 2*M*N*K.  Extra bytes: the packed copies above.
// Prediction (1024^3 fp32, one thread): 1.0-1.3x step 3 (removing conflict misses at the
//   power-of-two stride); the inner loop is still load/store bound, so not more.
//
// Test: pytest tests/test_ladder.py -k cpu     Benchmark: python benchmarks/bench_ladder.py
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "03_cache_blocking.h"

namespace pyimgcls::cpu::ladder {

// dst[kk * nc + jj] = B[k0 + kk, j0 + jj] for a dense row-major B with row stride ldb.
template <typename T>
PYIMGCLS_INLINE void pack_rows(const T* __restrict src, int64_t ld, int64_t rows, int64_t cols, T* __restrict dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t q = 0; q < cols; ++q) dst[r * cols + q] = src[r * ld + q];
}

template <typename T>
PYIMGCLS_INLINE void gemm_packing(const T* __restrict a, const T* __restrict b, T* __restrict c, int64_t M,
                                  int64_t N, int64_t K) {
  if (zero_if_k_empty(c, M, N, K)) return;
  std::vector<T> bpack(static_cast<size_t>(kBlockKC * kBlockNC));
  std::vector<T> apack(static_cast<size_t>(kBlockMC * kBlockKC));
  for (int64_t jc = 0; jc < N; jc += kBlockNC) {
    const int64_t nc = std::min(kBlockNC, N - jc);
    for (int64_t pc = 0; pc < K; pc += kBlockKC) {
      const int64_t kc = std::min(kBlockKC, K - pc);
      pack_rows(b + pc * N + jc, N, kc, nc, bpack.data());  // B block [kc, nc], contiguous
      for (int64_t ic = 0; ic < M; ic += kBlockMC) {
        const int64_t mc = std::min(kBlockMC, M - ic);
        pack_rows(a + ic * K + pc, K, mc, kc, apack.data());  // A block [mc, kc], contiguous
        block_ikj(apack.data(), kc, bpack.data(), nc, c + ic * N + jc, N, mc, nc, kc, pc == 0);
      }
    }
  }
}

}  // namespace pyimgcls::cpu::ladder
