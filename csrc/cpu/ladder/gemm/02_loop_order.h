// CPU GEMM ladder, step 2: loop reordering for unit stride (i-k-j).
//
// What changed from step 1: the k and j loops are swapped. For a fixed (i, k) the inner loop
//   C[i, j] += A[i, k] * B[k, j]   for j in [0, N)
// walks a row of B and a row of C with unit stride: every byte of every cache line is used, the
// hardware prefetcher sees sequential streams, and the j iterations are independent, so the
// compiler vectorises them (16 fp32 lanes with AVX-512) with no reassociation of any sum.
// Why it should be faster: no strided B loads and no serial reduction chain. The cost is that the
// row C[i, :] (4 KiB at N = 1024, fits L1) is loaded and stored once per k: per vector FMA there
// are 2 loads (B, C) and 1 store (C), so the loop is load/store-port bound, not FMA bound.
//   FLOPs = 2*M*N*K.  Traffic: B (K*N) is streamed once per row i from L2/L3 (4 MiB at 1024, fits
//   the 32 MiB L3 but not the 1 MiB L2): M*K*N*sizeof(T) = 4 GiB of L3->core traffic at 1024^3 fp32.
// Prediction (1024^3 fp32, one thread): ~10-20x step 1, limited by the L3 bandwidth of one core
//   streaming B (4 B per 2 FLOP: at ~30 GB/s per core that is ~15 GFLOP/s).
//
// Test: pytest tests/test_ladder.py -k cpu     Benchmark: python benchmarks/bench_ladder.py
#pragma once
#include <cstdint>

#include "../../isa.h"

namespace pyimgcls::cpu::ladder {

template <typename T>
PYIMGCLS_INLINE void gemm_loop_order(const T* __restrict a, const T* __restrict b, T* __restrict c, int64_t M,
                                     int64_t N, int64_t K) {
  for (int64_t i = 0; i < M; ++i) {
    T* __restrict ci = c + i * N;
    for (int64_t j = 0; j < N; ++j) ci[j] = T(0);
    for (int64_t k = 0; k < K; ++k) {
      const T aik = a[i * K + k];
      const T* __restrict bk = b + k * N;
      for (int64_t j = 0; j < N; ++j) ci[j] += aik * bk[j];  // unit stride, vectorised
    }
  }
}

}  // namespace pyimgcls::cpu::ladder
