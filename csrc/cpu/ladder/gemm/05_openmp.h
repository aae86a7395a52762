// CPU GEMM ladder, step 5: OpenMP.
//
// What changed from step 4: the same blocked, packed loop nest runs on every core. C is split
// into one contiguous slice per thread along its larger dimension (column ranges rounded to 16, or
// row ranges), and each thread runs step 4's loop on its slice with its own packed A and B blocks.
// The threads share nothing they write, so there is no barrier inside the parallel region, only
// the join at its end.
// Why it should be faster: two cores do twice the work. Splitting by columns, each thread packs and
// streams only its half of B; A is packed by both threads (an extra sizeof(T)*M*K*(N/NC) bytes of
// copies, ~1% of the FLOP time at 1024).
// Why no barriers: an earlier version packed one shared B block per (jc, pc) pair and split its
// C tiles over the team, two barriers per pair. On this 2-vCPU machine shared with other processes
// each barrier waited for a descheduled thread for a scheduler tick (~4 ms): 2x SLOWER than one
// thread at 1024^3 and 10x slower for the conv ladder's many small GEMMs. Independent slices avoid it.
//   FLOPs = 2*M*N*K.  Bytes as step 4 (+ the duplicated A packing).
// Prediction (1024^3 fp32, 2 threads): ~1.8-1.9x step 4 on a quiet machine; under load from other
//   processes, whatever share of the second core the scheduler gives us.
//
// gemm_parallel is also the GEMM of the convolution ladder (conv steps 2 and 3): the B operand is
// produced row by row by a `pack_b_row(k, j0, nc, dst)` callable, so an implicit im2col matrix can
// be gathered straight into the packed block (conv step 3) with no column buffer.
//
// Test: pytest tests/test_ladder.py -k cpu     Benchmark: python benchmarks/bench_ladder.py
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "04_packing.h"

namespace pyimgcls::cpu::ladder {

// The inner block kernel, compiled per instruction set by the caller (csrc/cpu/ladder.cpp), so the
// OpenMP region itself needs no target attribute: it calls block(...) through this pointer.
template <typename T>
using BlockFn = void (*)(const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc, int64_t mc,
                         int64_t nc, int64_t kc, bool first);

// C[M, N] (row stride ldc) = A[M, K] (row stride lda) @ B, B row k columns [j0, j0+nc) given by
// pack_b_row(k, j0, nc, dst).
template <typename T, class PackBRow>
void gemm_parallel(const T* a, int64_t lda, const PackBRow& pack_b_row, T* c, int64_t ldc, int64_t M, int64_t N,
                   int64_t K, BlockFn<T> block) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) c[i * ldc + j] = T(0);
    return;
  }
#pragma omp parallel
  {
    // 1. This thread's slice [m0, m1) x [n0, n1) of C: split the larger dimension.
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    int64_t m0 = 0, m1 = M, n0 = 0, n1 = N;
    if (N >= M) {
      const int64_t chunk = ((N + nt - 1) / nt + 15) / 16 * 16;
      n0 = std::min(N, t * chunk);
      n1 = std::min(N, n0 + chunk);
    } else {
      const int64_t chunk = (M + nt - 1) / nt;
      m0 = std::min(M, t * chunk);
      m1 = std::min(M, m0 + chunk);
    }
    if (m0 < m1 && n0 < n1) {
      // 2. Step 4's blocked, packed loop on the slice, with thread-private packed blocks.
      std::vector<T> bpack(static_cast<size_t>(kBlockKC * std::min(kBlockNC, n1 - n0)));
      std::vector<T> apack(static_cast<size_t>(kBlockMC * kBlockKC));
      for (int64_t jc = n0; jc < n1; jc += kBlockNC) {
        const int64_t nc = std::min(kBlockNC, n1 - jc);
        for (int64_t pc = 0; pc < K; pc += kBlockKC) {
          const int64_t kc = std::min(kBlockKC, K - pc);
          for (int64_t r = 0; r < kc; ++r) pack_b_row(pc + r, jc, nc, bpack.data() + r * nc);
          for (int64_t ic = m0; ic < m1; ic += kBlockMC) {
            const int64_t mc = std::min(kBlockMC, m1 - ic);
            for (int64_t i = 0; i < mc; ++i)
              for (int64_t q = 0; q < kc; ++q) apack[i * kc + q] = a[(ic + i) * lda + pc + q];
            block(apack.data(), kc, bpack.data(), nc, c + ic * ldc + jc, ldc, mc, nc, kc, pc == 0);
          }
        }
      }
    }
  }
}

// The dense GEMM of step 5: C[M, N] = A[M, K] @ B[K, N], contiguous row-major.
template <typename T>
void gemm_openmp(const T* a, const T* b, T* c, int64_t M, int64_t N, int64_t K, BlockFn<T> block) {
  auto pack_b_row = [b, N](int64_t k, int64_t j0, int64_t nc, T* dst) {
    const T* src = b + k * N + j0;
    for (int64_t q = 0; q < nc; ++q) dst[q] = src[q];
  };
  gemm_parallel<T>(a, K, pack_b_row, c, N, M, N, K, block);
}

}  // namespace pyimgcls::cpu::ladder
