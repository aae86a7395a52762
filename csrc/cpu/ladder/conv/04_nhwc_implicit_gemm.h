// CPU convolution ladder, step 4: NHWC implicit GEMM, channel axis as the vectorised reduction.
//
// Layout: x [N, H, W, C], w [O, KH, KW, C], y [N, OH, OW, O] (channels_last), all contiguous.
// This is the CPU analogue of the CUDA ladder's tensor-core NHWC step: there the C axis is the
// K dimension fed to the MMA fragments; here it is the axis the SIMD lanes split.
//
// What changed from step 3: the layout and the reduction order. In NHWC one tap (i, j) of one
// output pixel reads C contiguous input values, and the weight of one output channel for that tap
// is C contiguous values as well, so the reduction over c is a unit-stride dot product:
//   y[n, oh, ow, o] = sum_{i, j} dot(x[n, ih, iw, 0:C], w[o, i, j, 0:C])
// A register block of PB = 4 output pixels x OB = 4 output channels keeps 16 lane-parallel partial
// sums of L lanes (L = one 64-byte vector, a GCC vector-extension type: 16 fp32 / 8 fp64; 16 zmm
// registers), so per c-chunk 4 loads of x and 4 loads of w feed 16 FMAs, and each sum is reduced
// across lanes once per output.
// No gather, no packing, no per-element index arithmetic: padding is decided once per tap; pixel
// blocks that touch the left/right padding fall back to one pixel at a time.
// Why it should be faster: step 3 spent a branch-free but scalar gather per element, copied every
// element into the packed block, and its inner loop did 2 loads + 1 store per vector FMA; here it
// is 1 load per 2 FMAs and no stores in the inner loop. Against it: no cache blocking of the
// weights -- every block of 4 pixels streams all O*KH*KW*C weights (147 KiB fp32 at the benchmark
// size) from L2 -- and with C = 64 each dot product is only 4 vectors long, so the 16-lane
// horizontal sums and loop overhead are a visible share.
//   FLOPs = 2 * N*O*OH*OW * C*KH*KW.  Bytes = minimum (+ w re-read from L2 per pixel block).
// Prediction (benchmark conv, fp32, 2 threads): 1.0-2x step 3.
//
// Test: pytest tests/test_ladder.py -k conv     Benchmark: python benchmarks/bench_ladder.py
#pragma once
#include <algorithm>
#include <cstdint>

#include "../../isa.h"
#include "01_direct.h"

namespace pyimgcls::cpu::ladder {

constexpr int64_t kConvOB = 4;  // output channels per register block
constexpr int64_t kConvPB = 4;  // output pixels per register block

// y[n, oh, ow0 + p, o0 + q] for p < PB, q < ob: the register block. `interior`: every tap of every
// pixel is inside the image horizontally (the caller checks), so no per-pixel test is needed.
template <typename T, int64_t PB>
PYIMGCLS_INLINE void conv_nhwc_block(const T* __restrict x, const T* __restrict w, T* __restrict y,
                                     const ConvGeom& g, int64_t n, int64_t oh, int64_t ow0, int64_t o0, int64_t ob) {
  // One 64-byte vector of L lanes (16 fp32 / 8 fp64), GCC vector extension: an explicit type makes
  // the 4 x 4 accumulator block stay in registers (zmm under the AVX-512 wrapper, 4 xmm each in
  // the generic build). aligned(sizeof(T)): loads from x and w need not be 64-byte aligned.
  typedef T V __attribute__((vector_size(64), aligned(sizeof(T))));
  constexpr int64_t L = 64 / sizeof(T);
  const int64_t C = g.C, Cv = C - C % L, wo = g.KH * g.KW * C;  // wo: next output channel's weights
  const V zero = {};
  V acc[PB][kConvOB];  // lane-parallel partial sums
  T tail[PB][kConvOB] = {};
  for (int64_t p = 0; p < PB; ++p)
    for (int64_t q = 0; q < kConvOB; ++q) acc[p][q] = zero;
  for (int64_t i = 0; i < g.KH; ++i) {
    const int64_t ih = oh * g.sh - g.ph + i;
    if (ih < 0 || ih >= g.H) continue;
    for (int64_t j = 0; j < g.KW; ++j) {
      const int64_t iw0 = ow0 * g.sw - g.pw + j;
      if (PB == 1 && (iw0 < 0 || iw0 >= g.W)) continue;
      const T* __restrict xr = x + ((n * g.H + ih) * g.W + iw0) * C;  // pixel p at xr + p*sw*C
      const T* __restrict wr = w + ((o0 * g.KH + i) * g.KW + j) * C;  // channel q at wr + q*wo
      const int64_t xs = g.sw * C;
      if (ob == kConvOB) {
        for (int64_t c0 = 0; c0 < Cv; c0 += L) {
          V wv[kConvOB];
#pragma GCC unroll 4
          for (int64_t q = 0; q < kConvOB; ++q) wv[q] = *reinterpret_cast<const V*>(wr + q * wo + c0);
#pragma GCC unroll 4
          for (int64_t p = 0; p < PB; ++p) {
            const V xv = *reinterpret_cast<const V*>(xr + p * xs + c0);
#pragma GCC unroll 4
            for (int64_t q = 0; q < kConvOB; ++q) acc[p][q] += xv * wv[q];
          }
        }
      } else {
        for (int64_t c0 = 0; c0 < Cv; c0 += L)
          for (int64_t p = 0; p < PB; ++p)
            for (int64_t q = 0; q < ob; ++q)
              acc[p][q] += *reinterpret_cast<const V*>(xr + p * xs + c0) *
                           *reinterpret_cast<const V*>(wr + q * wo + c0);
      }
      for (int64_t p = 0; p < PB; ++p)
        for (int64_t q = 0; q < ob; ++q)
          for (int64_t c = Cv; c < C; ++c) tail[p][q] += xr[p * xs + c] * wr[q * wo + c];
    }
  }
  for (int64_t p = 0; p < PB; ++p) {
    T* yp = y + ((n * g.OH + oh) * g.OW + ow0 + p) * g.O;
    for (int64_t q = 0; q < ob; ++q) {
      T s = tail[p][q];
      for (int64_t l = 0; l < L; ++l) s += acc[p][q][l];
      yp[o0 + q] = s;
    }
  }
}

// One output row y[n, oh, :, :] of the NHWC conv. Compiled per instruction set by the caller.
template <typename T>
PYIMGCLS_INLINE void conv_nhwc_row(const T* __restrict x, const T* __restrict w, T* __restrict y,
                                   const ConvGeom& g, int64_t n, int64_t oh) {
  int64_t ow = 0;
  while (ow < g.OW) {
    // A block of PB pixels whose taps are all inside the image horizontally, else one pixel.
    const bool interior = ow + kConvPB <= g.OW && ow * g.sw - g.pw >= 0 &&
                          (ow + kConvPB - 1) * g.sw - g.pw + g.KW - 1 < g.W;
    for (int64_t o0 = 0; o0 < g.O; o0 += kConvOB) {
      const int64_t ob = std::min(kConvOB, g.O - o0);
      if (interior)
        conv_nhwc_block<T, kConvPB>(x, w, y, g, n, oh, ow, o0, ob);
      else
        conv_nhwc_block<T, 1>(x, w, y, g, n, oh, ow, o0, ob);
    }
    ow += interior ? kConvPB : 1;
  }
}

template <typename T>
using NhwcRowFn = void (*)(const T* x, const T* w, T* y, const ConvGeom& g, int64_t n, int64_t oh);

template <typename T>
void conv_nhwc_implicit_gemm(const T* x, const T* w, T* y, const ConvGeom& g, NhwcRowFn<T> row) {
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t r = 0; r < g.N * g.OH; ++r) row(x, w, y, g, r / g.OH, r % g.OH);
}

}  // namespace pyimgcls::cpu::ladder
