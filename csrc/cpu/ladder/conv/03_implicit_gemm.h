// CPU convolution ladder, step 3: implicit GEMM (NCHW), no im2col buffer.
//
// What changed from step 2: the column matrix col[K, P] is never materialised. The GEMM (GEMM
// ladder step 5, gemm_parallel) already copies each KC x NC block of its B operand into a packed
// buffer; here that packing step gathers the block straight from x through the im2col index map
//   B[k = (c, i, j), p = (oh, ow)] = x[n, c, oh*sh - ph + i, ow*sw - pw + j]   (0 in the padding)
// so the packed block is the only copy, and it lives in L2.
// Why it should be faster: step 2 wrote and re-read the whole col matrix (9x the input for 3x3,
// 4*576*3136 = 7.2 MB per image at the benchmark size, out of L2) before the GEMM touched it; now
// the gather reads x (which fits L2/L3) directly into the packed block. It also needs no scratch.
//   FLOPs = 2 * N*O*P*K.   Bytes = minimum + the packed blocks (cache resident).
// Prediction (benchmark conv, fp32, 2 threads): 1.1-1.4x step 2 (the im2col pass is a modest share
//   of the time when the GEMM itself is load/store bound).
//
// Test: pytest tests/test_ladder.py -k conv     Benchmark: python benchmarks/bench_ladder.py
#pragma once
#include <cstdint>

#include "../gemm/05_openmp.h"
#include "01_direct.h"
#include "02_im2col_gemm.h"

namespace pyimgcls::cpu::ladder {

template <typename T>
void conv_implicit_gemm(const T* x, const T* w, T* y, const ConvGeom& g, BlockFn<T> block) {
  const int64_t P = g.OH * g.OW, K = g.C * g.KH * g.KW;
  for (int64_t n = 0; n < g.N; ++n) {
    const T* xn = x + n * g.C * g.H * g.W;
    // Row k = (c, i, j) of the implicit B, columns [j0, j0 + nc), gathered into the packed block
    // with step 2's im2col_segment (same copy, no column buffer in between).
    auto pack_b_row = [xn, &g](int64_t k, int64_t j0, int64_t nc, T* dst) {
      const int64_t c = k / (g.KH * g.KW), i = (k / g.KW) % g.KH, j = k % g.KW;
      im2col_segment(xn + c * g.H * g.W, i, j, g, j0, nc, dst);
    };
    gemm_parallel<T>(w, K, pack_b_row, y + n * g.O * P, P, g.O, P, K, block);
  }
}

}  // namespace pyimgcls::cpu::ladder
