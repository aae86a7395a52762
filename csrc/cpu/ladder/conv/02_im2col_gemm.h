// CPU convolution ladder, step 2: explicit im2col + GEMM (NCHW).
//
// What changed from step 1: the convolution is rewritten as a matrix product. Per image n, im2col
// copies the input into a column matrix col[K, P] with K = C*KH*KW (ordered c, i, j: the weight's
// own layout) and P = OH*OW (zeros where a tap lands in the padding), then
//   y[n] [O, P] = w [O, K] @ col [K, P]
// runs as the GEMM ladder's step 5 (gemm_parallel from ../gemm/05_openmp.h, included, not copied:
// blocked, packed, OpenMP over C tiles).
// Why it should be faster: the GEMM streams unit-stride rows through cache blocks and vectorises
// over the P axis; the direct loop's short KW loops, padding branches and serial sums are gone.
// The price: col is KH*KW times the size of x (9x for 3x3) and is written once and read once per
// image: 2 * sizeof(T) * C*KH*KW*OH*OW extra bytes per image, plus a scratch buffer of that size
// (caller-allocated: conv_scratch_bytes).
//   FLOPs = 2 * N*O*P*K.   Extra bytes per image = 2 * sizeof(T) * K * P.
// Prediction (N=4, C=O=64, 56x56, 3x3, pad 1 fp32, 2 threads): ~ the GEMM ladder's step 5 rate on a
//   [64 x 576] @ [576 x 3136] product, ~3-8x step 1.
//
// Test: pytest tests/test_ladder.py -k conv     Benchmark: python benchmarks/bench_ladder.py
#pragma once
#include <algorithm>
#include <cstdint>

#include "../gemm/05_openmp.h"
#include "01_direct.h"

namespace pyimgcls::cpu::ladder {

// One row segment of the (implicit) column matrix: dst[q] = col[k, p0 + q] for q < count, where
// k = (c, i, j) and p = oh*OW + ow, i.e. x[c, oh*sh - ph + i, ow*sw - pw + j] or 0 in the padding.
// The valid ow range of each output row is computed once, so the copy loop has no branch.
// Shared by the explicit im2col (this step) and the implicit gather (step 3).
template <typename T>
inline void im2col_segment(const T* xc, int64_t i, int64_t j, const ConvGeom& g, int64_t p0, int64_t count, T* dst) {
  // ow in [ow_lo, ow_hi) reads a column inside the image.
  const int64_t ow_lo = std::min(g.OW, std::max<int64_t>(0, (g.pw - j + g.sw - 1) / g.sw));
  const int64_t ow_hi = g.W - 1 + g.pw - j < 0 ? 0 : std::min(g.OW, (g.W - 1 + g.pw - j) / g.sw + 1);
  int64_t p = p0;
  const int64_t end = p0 + count;
  while (p < end) {
    const int64_t oh = p / g.OW, ow0 = p % g.OW;
    const int64_t ow1 = std::min(g.OW, ow0 + (end - p));  // this output row's part of the segment
    T* d = dst + (p - p0) - ow0;                             // d[ow] is the element of column ow
    const int64_t ih = oh * g.sh - g.ph + i;
    if (ih < 0 || ih >= g.H) {
      for (int64_t ow = ow0; ow < ow1; ++ow) d[ow] = T(0);
    } else {
      const T* xr = xc + ih * g.W - g.pw + j;  // xr[ow*sw] = x[c, ih, ow*sw - pw + j]
      const int64_t lo = std::max(ow0, ow_lo), hi = std::max(lo, std::min(ow1, ow_hi));
      for (int64_t ow = ow0; ow < lo; ++ow) d[ow] = T(0);
      for (int64_t ow = lo; ow < hi; ++ow) d[ow] = xr[ow * g.sw];
      for (int64_t ow = hi; ow < ow1; ++ow) d[ow] = T(0);
    }
    p += ow1 - ow0;
  }
}

// col[(c*KH + i)*KW + j, oh*OW + ow] = x[n, c, oh*sh - ph + i, ow*sw - pw + j] (0 in the padding).
template <typename T>
void im2col(const T* xn, T* col, const ConvGeom& g) {
  const int64_t P = g.OH * g.OW;
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < g.C * g.KH * g.KW; ++k) {
    const int64_t c = k / (g.KH * g.KW), i = (k / g.KW) % g.KH, j = k % g.KW;
    im2col_segment(xn + c * g.H * g.W, i, j, g, 0, P, col + k * P);
  }
}

template <typename T>
void conv_im2col_gemm(const T* x, const T* w, T* y, T* col, const ConvGeom& g, BlockFn<T> block) {
  const int64_t P = g.OH * g.OW, K = g.C * g.KH * g.KW;
  auto pack_b_row = [col, P](int64_t k, int64_t j0, int64_t nc, T* dst) {
    const T* src = col + k * P + j0;
    for (int64_t q = 0; q < nc; ++q) dst[q] = src[q];
  };
  for (int64_t n = 0; n < g.N; ++n) {
    im2col(x + n * g.C * g.H * g.W, col, g);
    gemm_parallel<T>(w, K, pack_b_row, y + n * g.O * P, P, g.O, P, K, block);
  }
}

}  // namespace pyimgcls::cpu::ladder
