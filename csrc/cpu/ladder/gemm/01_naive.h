// CPU GEMM ladder, step 1: naive i-j-k triple loop.
//
// What it computes: C[M, N] = A[M, K] @ B[K, N], all contiguous row-major, accumulated in T.
//   FLOPs = 2*M*N*K.  Minimum bytes = sizeof(T) * (M*K + K*N + M*N) (12 MiB at 1024^3 fp32).
//
// What it is: the textbook definition. Each output element is one dot product: the inner k loop
// walks a row of A with unit stride but a column of B with stride N, so every B load touches a new
// cache line (64 B, of which 4 B are used at fp32). At N = 1024 the column stride is 4 KiB, so the
// 1024 lines of one column also map onto a handful of L1 sets (4 KiB aliasing) and are evicted
// before the next j reuses them: B is effectively re-read from L2/L3 for every output, K*N*M = 1e9
// line touches at 1024^3. The reduction into one scalar is a serial dependency chain (one FMA
// latency, ~4 cycles, per k) and cannot be vectorised without reassociating the sum.
// Prediction (1024^3 fp32, one thread): bound by the dependent add chain and the strided B loads,
//   ~0.5-1 GFLOP/s (4-cycle FMA latency at ~3 GHz = 1.5 GFLOP/s upper bound, cache misses on B
//   lower it); that is < 1% of the measured machine peak (see docs/ladder.md).
//
// Test: pytest tests/test_ladder.py -k cpu     Benchmark: python benchmarks/bench_ladder.py
#pragma once
#include <cstdint>

#include "../../isa.h"

namespace pyimgcls::cpu::ladder {

template <typename T>
PYIMGCLS_INLINE void gemm_naive(const T* __restrict a, const T* __restrict b, T* __restrict c, int64_t M,
                                int64_t N, int64_t K) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      T acc = T(0);
      for (int64_t k = 0; k < K; ++k) acc += a[i * K + k] * b[k * N + j];  // B read down a column
      c[i * N + j] = acc;
    }
}

}  // namespace pyimgcls::cpu::ladder
