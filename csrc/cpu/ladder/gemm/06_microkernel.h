// CPU GEMM ladder, step 6: SIMD register-tile micro-kernel = the production CPU GEMM.
//
// This step is pyimgcls::cpu::gemm (csrc/cpu/gemm.h, csrc/cpu/gemm.cpp), INCLUDED and CALLED, not
// copied: the ladder and the library run the same code, so they cannot drift apart.
//
// What changed from step 5: the inner loop. Step 5's block_ikj loads and stores a vector of C for
// every vector FMA (2 loads + 1 store per FMA: load/store-port bound). The production kernel keeps
// an MR x NR tile of C in registers for the whole KC loop (AVX-512 fp32: 14 x 32 = 28 zmm
// accumulators) and, per k, loads one NR-wide row of the packed B micro-panel (2 vectors) and
// broadcasts MR values of A: 28 FMAs for 2 vector loads + 14 broadcasts, no stores at all until the
// tile is done. A and B are packed into MR-row / NR-column micro-panels (zero-padded) so those
// loads are unit stride and aligned; blocks KC/MC/NC are sized for L1/L2/L3 (BLIS five-loop GEMM;
// see the header of gemm.cpp). Bias and activation are fused into the last KC pass.
// Why it should be faster: the FMA units, not the load/store ports, become the limit: per cycle
// the core can retire its FMA throughput with one load per ~14 FMAs.
//   FLOPs = 2*M*N*K.  Minimum bytes = sizeof(T) * (M*K + K*N + M*N).
// Prediction (1024^3 fp32, 2 threads): 5-10x step 5, 60-85% of the measured machine peak and
//   >= 0.5x torch.matmul (oneDNN/MKL-class BLAS) on this machine.
//
// Test: pytest tests/test_ladder.py -k cpu     Benchmark: python benchmarks/bench_ladder.py
#pragma once
#include <cstdint>

#include "../../../common.h"
#include "../../gemm.h"

namespace pyimgcls::cpu::ladder {

template <typename T>
inline void gemm_microkernel(const T* a, const T* b, T* c, int64_t M, int64_t N, int64_t K) {
  constexpr DType dt = sizeof(T) == 4 ? DType::Float32 : DType::Float64;
  // Row-major strides: A[m, k] at m*K + k, B[k, n] at k*N + n, C[m, n] at m*N + n; no bias, no act.
  pyimgcls::cpu::gemm(dt, a, K, 1, b, N, 1, nullptr, c, N, 1, M, N, K, Act::None);
}

}  // namespace pyimgcls::cpu::ladder
