// CUDA pooling family: max_pool2d, avg_pool2d and adaptive_avg_pool2d, forward and backward, in
// float32 / float16 / bfloat16 with fp32 arithmetic.
//
// What it computes (per (n, c) plane; ATen's semantics, see pyimgcls/ops/pool.py)
//   max fwd:  y = max over the in-bounds window taps ih = oh*sh - ph + i*dh, iw = ow*sw - pw + j*dw,
//             idx = ih * W + iw of the winner. Row-major scan; a tap wins when it is > the running
//             max or NaN (fmaxf would drop NaN: written out), so ties keep the first maximum, NaN
//             propagates with the last NaN's index, an all -inf window gives the first tap.
//   max bwd:  gx[i] = sum of gy[o] over the outputs o whose window contains i and idx[o] == i.
//   avg:      y = window sum / divisor (divisor_override, or the window clipped to the padded input
//             when count_include_pad, else to the input); bwd gx[i] = sum of gy[o] / divisor(o).
//   adaptive: windows [floor(o*I/O), ceil((o+1)*I/O)); y = mean; bwd gx[i] = sum of gy[o] / area(o).
//             OH == OW == 1 is a global-mean reduction with its own kernels.
//
// Algorithm
//   Forward (max / avg / adaptive): one thread per output element. NCHW: consecutive threads take
//     consecutive ow, so the window taps of a warp fall in a few cache lines (stride sw). NHWC:
//     consecutive threads take consecutive channel vectors of VEC = 16 bytes (4 fp32 / 8 fp16 or bf16)
//     when C % VEC == 0 and the pointers are 16-byte aligned, so every tap is one coalesced 16-byte
//     load per thread (VEC = 1 otherwise). Max indices are written as int64 beside the values.
//   Backward (all): a gather over input positions, never a scatter: each thread owns VEC input
//     elements and loops over the <= ceil(k_eff / s) x ceil(k_eff / s) outputs whose windows can
//     contain them (adaptive: the outputs of the inverse window), in row-major output order. No
//     atomics: results are bitwise reproducible, deterministic mode needs nothing special, and the
//     summation order equals ATen's CPU scatter.
//   Global mean: NCHW — one warp per (n, c) plane, lanes stride over H*W, fixed xor-shuffle tree.
//     NHWC — a 32 x 8 block: x over channel vectors, y over H*W positions; partial sums are combined
//     in shared memory in a fixed order.
//   All offsets are 64-bit; loops are grid-stride, so any size fits a 1-D grid of <= 2^20 blocks.
//   No division in a kernel calls a subroutine: 64-bit integer division and IEEE float division are
//   nvcc library calls, and the registers and predicates live across such a call were spilled to
//   local memory (13 ptxas spill warnings). Index divisions use host-computed magic numbers
//   (IntDiv: a 64-bit multiply-high and a shift, exact for every n < 2^63); divisions by a window
//   size use div_by_count (nvcc's own fast path without the slow-path call).
//
// Cost (S = element size, P outputs, Q inputs, K = kh*kw)
//   max fwd:  P*K compares;  minimum bytes S*(Q + P) (+ 8P indices).
//   max bwd:  <= Q*ceil(k/s)^2 compares;  minimum bytes S*(P + Q) + 8P.
//   avg fwd:  P*K adds;  S*(Q + P).    avg bwd: Q*ceil(k/s)^2 adds;  S*(P + Q).
//   global mean: N*C*H*W adds;  S*(Q + N*C).
//
// Test and benchmark
//   pytest tests/test_pool.py -m cuda
//   python benchmarks/bench_pool.py
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common.cuh"
#include "pool.h"
#include "runtime.h"

namespace pyimgcls::cuda {
namespace {

constexpr int kThreads = 256;
// At least 3 resident blocks of 256 threads per SM: registers <= 85. With the thread count alone
// ptxas capped the windowed kernels at 40-64 registers and spilled their 64-bit index state (sm_80
// and sm_90a); 3 blocks (768 threads) keep the latency hiding these memory-bound gathers need.
constexpr int kMinBlocks = 3;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

// ---------------------------------------------------------------------------------------------
// Element access: fp32 conversion and VEC-wide values come from common.cuh; int64 indices here.
// ---------------------------------------------------------------------------------------------
// int64 indices: VEC of them, in 16-byte pieces when VEC is even (the offset is a multiple of VEC).
template <int VEC>
__device__ __forceinline__ void load_idx(const int64_t* __restrict__ p, int64_t (&out)[VEC]) {
  if constexpr (VEC % 2 == 0) {
#pragma unroll
    for (int k = 0; k < VEC; k += 2) {
      const longlong2 q = *reinterpret_cast<const longlong2*>(p + k);
      out[k] = q.x;
      out[k + 1] = q.y;
    }
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = p[k];
  }
}

template <int VEC>
__device__ __forceinline__ void store_idx(int64_t* __restrict__ p, const int64_t (&in)[VEC]) {
  if constexpr (VEC % 2 == 0) {
#pragma unroll
    for (int k = 0; k < VEC; k += 2) *reinterpret_cast<longlong2*>(p + k) = make_longlong2(in[k], in[k + 1]);
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) p[k] = in[k];
  }
}

// ---------------------------------------------------------------------------------------------
// Division helpers
// ---------------------------------------------------------------------------------------------
// n / d for 0 <= n < 2^63 and a run-time constant 1 <= d < 2^63 (Granlund & Montgomery, "Division
// by invariant integers using multiplication", 1994, Thm 4.2 with N = 64): with l = ceil(log2 d) and
// m = floor(2^64 (2^l - d) / d) + 1 < 2^64, n / d = (mulhi(n, m) + n) >> l; the sum cannot wrap
// because mulhi(n, m) <= n < 2^63. Built on the host (128-bit arithmetic), one per divisor.
struct IntDiv {
  uint64_t d, m;
  uint32_t l;
  __device__ __forceinline__ int64_t div(int64_t n) const {
    const uint64_t u = static_cast<uint64_t>(n);
    return static_cast<int64_t>((__umul64hi(u, m) + u) >> l);
  }
};

IntDiv make_div(int64_t d) {
  if (d < 1) throw std::invalid_argument("pooling: internal divisor must be positive");
  const auto ud = static_cast<uint64_t>(d);
  uint32_t l = 0;
  while (l < 63 && (uint64_t(1) << l) < ud) ++l;
  const unsigned __int128 num = static_cast<unsigned __int128>((uint64_t(1) << l) - ud) << 64;
  return IntDiv{ud, static_cast<uint64_t>(num / ud) + 1, l};
}

// a / d for a window size 1 <= d <= 2^31 (exact in float up to 2^24, as in ATen): the instruction
// sequence nvcc emits as the fast path of the IEEE division (reciprocal estimate, one Newton step,
// one residual correction; checked in SASS), so the same bits wherever that path is taken (a and
// a / d normal; a zero result may differ in sign); its slow path, a called subroutine for huge or
// subnormal operands, is left out.
__device__ __forceinline__ float div_by_count(float a, float d) {
  float r = __fdividef(1.0f, d);  // MUFU.RCP estimate
  r = fmaf(r, fmaf(-d, r, 1.0f), r);
  const float q = a * r;
  return fmaf(fmaf(-d, q, a), r, q);
}

// The divisors a windowed kernel needs: its grid [N, C (VEC groups in NHWC), HH, WW] (decode), the
// strides (the backward's output ranges) and the dilations (the max forward's first tap).
struct GridDiv {
  IntDiv c, hh, ww, sh, sw, dh, dw;
};

GridDiv make_grid_div(int64_t cgroups, int64_t hh, int64_t ww, int64_t sh = 1, int64_t sw = 1, int64_t dh = 1,
                      int64_t dw = 1) {
  return GridDiv{make_div(cgroups > 0 ? cgroups : 1), make_div(hh > 0 ? hh : 1), make_div(ww > 0 ? ww : 1),
                 make_div(sh), make_div(sw), make_div(dh), make_div(dw)};
}

// ---------------------------------------------------------------------------------------------
// Index helpers
// ---------------------------------------------------------------------------------------------
// Element (n, c, h, w) of a [N, C, HH, WW] tensor stored NCHW or NHWC (c is the first of VEC).
template <bool CL>
__device__ __forceinline__ int64_t offset(int64_t n, int64_t c, int64_t h, int64_t w, int64_t C, int64_t HH,
                                          int64_t WW) {
  return CL ? ((n * HH + h) * WW + w) * C + c : ((n * C + c) * HH + h) * WW + w;
}

// Thread index i -> (n, c, h, w) over a [N, C, HH, WW] grid: NCHW has w fastest, NHWC has the
// channel vector fastest (g.c divides by the C / VEC vectors, else by C).
template <bool CL, int VEC>
__device__ __forceinline__ void decode(int64_t i, const GridDiv& g, int64_t& n, int64_t& c, int64_t& h,
                                       int64_t& w) {
  const int64_t CD = static_cast<int64_t>(g.c.d), HH = static_cast<int64_t>(g.hh.d),
                WW = static_cast<int64_t>(g.ww.d);
  if (CL) {
    const int64_t pix = g.c.div(i), t = g.ww.div(pix);
    c = (i - pix * CD) * VEC;
    w = pix - t * WW;
    n = g.hh.div(t);
    h = t - n * HH;
  } else {
    const int64_t q = g.ww.div(i), t = g.hh.div(q);
    w = i - q * WW;
    h = q - t * HH;
    n = g.c.div(t);
    c = t - n * CD;
  }
}

// The first tap start + k * step (k >= 0) that is >= 0; step_div divides by step.
__device__ __forceinline__ int64_t first_in_bounds(int64_t start, const IntDiv& step_div) {
  const auto step = static_cast<int64_t>(step_div.d);
  return start >= 0 ? start : start + step_div.div(-start + step - 1) * step;
}

__device__ __forceinline__ int64_t avg_divisor(int64_t hs, int64_t ws, const Pool2dParams& p, bool cip,
                                               int64_t div_override) {
  if (div_override != 0) return div_override;
  const int64_t he = min(hs + p.kh, p.H + p.ph), we = min(ws + p.kw, p.W + p.pw);
  if (cip) return (he - hs) * (we - ws);
  return (min(he, p.H) - max(hs, int64_t(0))) * (min(we, p.W) - max(ws, int64_t(0)));
}

// Adaptive window [ad_start, ad_end) of output o: floor(o * in / out), ceil((o + 1) * in / out); out_div
// divides by out.
__device__ __forceinline__ int64_t ad_start(int64_t o, int64_t in, const IntDiv& out_div) {
  return out_div.div(o * in);
}
__device__ __forceinline__ int64_t ad_end(int64_t o, int64_t in, const IntDiv& out_div) {
  return out_div.div((o + 1) * in + static_cast<int64_t>(out_div.d) - 1);
}

#define GRID_STRIDE_LOOP(i, total)                                                          \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (total); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// ---------------------------------------------------------------------------------------------
// Max pooling
// ---------------------------------------------------------------------------------------------
template <typename T, int VEC, bool CL, bool WITH_IDX>
__global__ void __launch_bounds__(kThreads, kMinBlocks) max_pool2d_fwd_kernel(const T* __restrict__ x, T* __restrict__ y,
                                                                   int64_t* __restrict__ idx, Pool2dParams p,
                                                                   GridDiv g) {
  const int64_t total = p.N * (p.C / VEC) * p.OH * p.OW;
  GRID_STRIDE_LOOP(i, total) {
    int64_t n, c, oh, ow;
    decode<CL, VEC>(i, g, n, c, oh, ow);
    // 1. Window taps on the dilation lattice, clipped to the input (ATen's h0/h1 loop bounds).
    const int64_t hs = oh * p.sh - p.ph, ws = ow * p.sw - p.pw;
    const int64_t h1 = min(hs + (p.kh - 1) * p.dh + 1, p.H), h0 = first_in_bounds(hs, g.dh);
    const int64_t w1 = min(ws + (p.kw - 1) * p.dw + 1, p.W), w0 = first_in_bounds(ws, g.dw);
    float best[VEC];
    int64_t arg[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      best[k] = -INFINITY;
      arg[k] = h0 * p.W + w0;
    }
    // 2. Row-major scan, "greater or NaN" update (NaN propagates; fp16/bf16 -> fp32 is exact).
    for (int64_t ih = h0; ih < h1; ih += p.dh) {
      for (int64_t iw = w0; iw < w1; iw += p.dw) {
        float v[VEC];
        load_vec<T, VEC>(x + offset<CL>(n, c, ih, iw, p.C, p.H, p.W), v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          if (v[k] > best[k] || isnan(v[k])) {
            best[k] = v[k];
            arg[k] = ih * p.W + iw;
          }
        }
      }
    }
    // 3. Output element i (NCHW) or vector i (NHWC) of the contiguous output.
    const int64_t o = i * VEC;
    store_vec<T, VEC>(y + o, best);
    if (WITH_IDX) store_idx<VEC>(idx + o, arg);
  }
}

template <typename T, int VEC, bool CL>
__global__ void __launch_bounds__(kThreads, kMinBlocks) max_pool2d_bwd_kernel(const T* __restrict__ gy,
                                                                   const int64_t* __restrict__ idx,
                                                                   T* __restrict__ gx, Pool2dParams p, GridDiv g) {
  const int64_t total = p.N * (p.C / VEC) * p.H * p.W;
  const int64_t ekh = (p.kh - 1) * p.dh + 1, ekw = (p.kw - 1) * p.dw + 1;
  GRID_STRIDE_LOOP(i, total) {
    int64_t n, c, ih, iw;
    decode<CL, VEC>(i, g, n, c, ih, iw);
    // 1. Outputs whose window extent covers (ih, iw): [ph0, ph1) x [pw0, pw1).
    const int64_t ph0 = (ih + p.ph < ekh) ? 0 : g.sh.div(ih + p.ph - ekh) + 1;
    const int64_t ph1 = min(g.sh.div(ih + p.ph) + 1, p.OH);
    const int64_t pw0 = (iw + p.pw < ekw) ? 0 : g.sw.div(iw + p.pw - ekw) + 1;
    const int64_t pw1 = min(g.sw.div(iw + p.pw) + 1, p.OW);
    const int64_t me = ih * p.W + iw;
    float acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
    // 2. Gather in row-major output order: add gy where this element was the argmax.
    for (int64_t oh = ph0; oh < ph1; ++oh) {
      for (int64_t ow = pw0; ow < pw1; ++ow) {
        const int64_t o = offset<CL>(n, c, oh, ow, p.C, p.OH, p.OW);
        int64_t a[VEC];
        load_idx<VEC>(idx + o, a);
        bool any = false;
#pragma unroll
        for (int k = 0; k < VEC; ++k) any |= (a[k] == me);
        if (!any) continue;  // the common case: skip reading gy
        float g[VEC];
        load_vec<T, VEC>(gy + o, g);
#pragma unroll
        for (int k = 0; k < VEC; ++k)
          if (a[k] == me) acc[k] += g[k];
      }
    }
    store_vec<T, VEC>(gx + i * VEC, acc);
  }
}

// ---------------------------------------------------------------------------------------------
// Average pooling
// ---------------------------------------------------------------------------------------------
template <typename T, int VEC, bool CL>
__global__ void __launch_bounds__(kThreads, kMinBlocks) avg_pool2d_fwd_kernel(const T* __restrict__ x, T* __restrict__ y,
                                                                   Pool2dParams p, GridDiv g, bool cip,
                                                                   int64_t div_override) {
  const int64_t total = p.N * (p.C / VEC) * p.OH * p.OW;
  GRID_STRIDE_LOOP(i, total) {
    int64_t n, c, oh, ow;
    decode<CL, VEC>(i, g, n, c, oh, ow);
    const int64_t hs = oh * p.sh - p.ph, ws = ow * p.sw - p.pw;
    const int64_t h0 = max(hs, int64_t(0)), h1 = min(hs + p.kh, p.H);
    const int64_t w0 = max(ws, int64_t(0)), w1 = min(ws + p.kw, p.W);
    float acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) {
        float v[VEC];
        load_vec<T, VEC>(x + offset<CL>(n, c, ih, iw, p.C, p.H, p.W), v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += v[k];
      }
    // An empty window (not reachable with padding <= kernel/2) gives 0, as in ATen.
    const float d = static_cast<float>(avg_divisor(hs, ws, p, cip, div_override));
    const bool empty = h0 >= h1 || w0 >= w1;
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = empty ? 0.f : div_by_count(acc[k], d);
    store_vec<T, VEC>(y + i * VEC, acc);
  }
}

template <typename T, int VEC, bool CL>
__global__ void __launch_bounds__(kThreads, kMinBlocks) avg_pool2d_bwd_kernel(const T* __restrict__ gy, T* __restrict__ gx,
                                                                   Pool2dParams p, GridDiv g, bool cip,
                                                                   int64_t div_override) {
  const int64_t total = p.N * (p.C / VEC) * p.H * p.W;
  GRID_STRIDE_LOOP(i, total) {
    int64_t n, c, ih, iw;
    decode<CL, VEC>(i, g, n, c, ih, iw);
    // Outputs whose window [o*s - p, o*s - p + k) contains the element.
    const int64_t ph0 = (ih + p.ph < p.kh) ? 0 : g.sh.div(ih + p.ph - p.kh) + 1;
    const int64_t ph1 = min(g.sh.div(ih + p.ph) + 1, p.OH);
    const int64_t pw0 = (iw + p.pw < p.kw) ? 0 : g.sw.div(iw + p.pw - p.kw) + 1;
    const int64_t pw1 = min(g.sw.div(iw + p.pw) + 1, p.OW);
    float acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
    for (int64_t oh = ph0; oh < ph1; ++oh)
      for (int64_t ow = pw0; ow < pw1; ++ow) {
        const float d = static_cast<float>(avg_divisor(oh * p.sh - p.ph, ow * p.sw - p.pw, p, cip, div_override));
        float gv[VEC];
        load_vec<T, VEC>(gy + offset<CL>(n, c, oh, ow, p.C, p.OH, p.OW), gv);
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += div_by_count(gv[k], d);
      }
    store_vec<T, VEC>(gx + i * VEC, acc);
  }
}

// ---------------------------------------------------------------------------------------------
// Adaptive average pooling
// ---------------------------------------------------------------------------------------------
struct AdaptiveParams {
  int64_t N, C, H, W, OH, OW;
  IntDiv h, w, oh, ow;  // divide by H, W, OH, OW
};

template <typename T, int VEC, bool CL>
__global__ void __launch_bounds__(kThreads, kMinBlocks) adaptive_avg_pool2d_fwd_kernel(const T* __restrict__ x,
                                                                            T* __restrict__ y, AdaptiveParams p,
                                                                            GridDiv g) {
  const int64_t total = p.N * (p.C / VEC) * p.OH * p.OW;
  GRID_STRIDE_LOOP(i, total) {
    int64_t n, c, oh, ow;
    decode<CL, VEC>(i, g, n, c, oh, ow);
    const int64_t h0 = ad_start(oh, p.H, p.oh), h1 = ad_end(oh, p.H, p.oh);
    const int64_t w0 = ad_start(ow, p.W, p.ow), w1 = ad_end(ow, p.W, p.ow);
    float acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) {
        float v[VEC];
        load_vec<T, VEC>(x + offset<CL>(n, c, ih, iw, p.C, p.H, p.W), v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += v[k];
      }
    const float d = static_cast<float>((h1 - h0) * (w1 - w0));
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = div_by_count(acc[k], d);
    store_vec<T, VEC>(y + i * VEC, acc);
  }
}

template <typename T, int VEC, bool CL>
__global__ void __launch_bounds__(kThreads, kMinBlocks) adaptive_avg_pool2d_bwd_kernel(const T* __restrict__ gy,
                                                                            T* __restrict__ gx, AdaptiveParams p,
                                                                            GridDiv g) {
  const int64_t total = p.N * (p.C / VEC) * p.H * p.W;
  GRID_STRIDE_LOOP(i, total) {
    int64_t n, c, ih, iw;
    decode<CL, VEC>(i, g, n, c, ih, iw);
    // Outputs whose window contains ih: the inverse adaptive window [floor(ih*OH/H), ceil((ih+1)*OH/H)).
    const int64_t ph0 = ad_start(ih, p.OH, p.h), ph1 = ad_end(ih, p.OH, p.h);
    const int64_t pw0 = ad_start(iw, p.OW, p.w), pw1 = ad_end(iw, p.OW, p.w);
    float acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
    for (int64_t oh = ph0; oh < ph1; ++oh) {
      const int64_t ah = ad_end(oh, p.H, p.oh) - ad_start(oh, p.H, p.oh);
      for (int64_t ow = pw0; ow < pw1; ++ow) {
        const float d = static_cast<float>(ah * (ad_end(ow, p.W, p.ow) - ad_start(ow, p.W, p.ow)));
        float gv[VEC];
        load_vec<T, VEC>(gy + offset<CL>(n, c, oh, ow, p.C, p.OH, p.OW), gv);
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += div_by_count(gv[k], d);
      }
    }
    store_vec<T, VEC>(gx + i * VEC, acc);
  }
}

// Global mean, NCHW: one warp per plane of HW contiguous elements.
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks) global_avg_pool2d_fwd_kernel(const T* __restrict__ x, T* __restrict__ y,
                                                                          int64_t planes, int64_t HW) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t pl = warp; pl < planes; pl += warps) {
    const T* xp = x + pl * HW;
    float s = 0.f;
    for (int64_t j = lane; j < HW; j += 32) s += to_float(xp[j]);
    // Fixed xor tree: every lane ends with the same, reproducible sum.
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    // HW == 0: 0 / 0 = NaN, as ATen's mean over an empty plane.
    if (lane == 0) y[pl] = from_float<T>(s / static_cast<float>(HW));
  }
}

// Global mean, NHWC: block (32, kRows); threadIdx.x picks a channel vector, threadIdx.y a row of
// positions; partial sums meet in shared memory and are added in ascending y (deterministic).
constexpr int kRows = 8;

template <typename T, int VEC>
__global__ void __launch_bounds__(32 * kRows) global_avg_pool2d_fwd_nhwc_kernel(const T* __restrict__ x,
                                                                               T* __restrict__ y, int64_t N,
                                                                               int64_t C, int64_t HW) {
  __shared__ float part[kRows][32][VEC];
  const int64_t CV = C / VEC;
  const int64_t cblocks = (CV + 31) / 32;
  for (int64_t blk = blockIdx.x; blk < N * cblocks; blk += gridDim.x) {
    const int64_t n = blk / cblocks, cv = (blk % cblocks) * 32 + threadIdx.x;
    float acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
    if (cv < CV) {
      for (int64_t q = threadIdx.y; q < HW; q += kRows) {
        float v[VEC];
        load_vec<T, VEC>(x + (n * HW + q) * C + cv * VEC, v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += v[k];
      }
    }
#pragma unroll
    for (int k = 0; k < VEC; ++k) part[threadIdx.y][threadIdx.x][k] = acc[k];
    __syncthreads();
    if (threadIdx.y == 0 && cv < CV) {
      float s[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        s[k] = 0.f;
        for (int r = 0; r < kRows; ++r) s[k] += part[r][threadIdx.x][k];
        s[k] /= static_cast<float>(HW);
      }
      store_vec<T, VEC>(y + n * C + cv * VEC, s);
    }
    __syncthreads();  // part[] is rewritten by the next block-iteration
  }
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------
int blocks_for(int64_t total, int threads = kThreads) {
  const int64_t b = (total + threads - 1) / threads;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

// Channel vector width for NHWC: 16 bytes when C divides and every pointer is 16-byte aligned.
template <typename T>
int nhwc_vec(int64_t C, std::initializer_list<const void*> ptrs) {
  constexpr int V = 16 / sizeof(T);
  if (C % V != 0) return 1;
  for (const void* q : ptrs)
    if (q && !aligned_to(q, 16)) return 1;
  return V;
}

void check_params(const Pool2dParams& p) {
  if (p.N < 0 || p.C < 0 || p.H < 0 || p.W < 0 || p.OH < 0 || p.OW < 0)
    throw std::invalid_argument("pooling: sizes must be non-negative");
  if (p.kh < 1 || p.kw < 1 || p.sh < 1 || p.sw < 1 || p.dh < 1 || p.dw < 1 || p.ph < 0 || p.pw < 0)
    throw std::invalid_argument("pooling: kernel, stride and dilation must be positive, padding non-negative");
}

// Calls f(std::integral_constant<int, VEC>, std::bool_constant<CL>) for the chosen variant.
template <typename T, typename F>
void dispatch_layout(bool cl, int vec, F&& f) {
  constexpr int V = 16 / sizeof(T);
  if (!cl) return f(std::integral_constant<int, 1>{}, std::false_type{});
  if (vec == V) return f(std::integral_constant<int, V>{}, std::true_type{});
  return f(std::integral_constant<int, 1>{}, std::true_type{});
}

// The part the four windowed pooling launchers share: argument checks, device, dtype and layout
// variant, one thread per element (per VEC group in NHWC) of the output (forward) or of the input
// (backward, over_input). Calls launch(T{}, VEC, CL, blocks, stream, divisors); nothing for an empty
// tensor.
template <typename F>
void launch_windowed(DType dt, const Pool2dParams& p, bool over_input, std::initializer_list<const void*> ptrs,
                     bool channels_last, int device, uintptr_t stream, F&& launch) {
  check_params(p);
  const DeviceGuard device_guard(device);
  auto st = reinterpret_cast<cudaStream_t>(stream);
  const int64_t h = over_input ? p.H : p.OH, w = over_input ? p.W : p.OW;
  dispatch_dtype(dt, "pooling", [&](auto tag) {
    using T = decltype(tag);
    const int vec = channels_last ? nhwc_vec<T>(p.C, ptrs) : 1;
    const int64_t total = p.N * (p.C / vec) * h * w;
    if (total == 0) return;
    dispatch_layout<T>(channels_last, vec, [&](auto V, auto CL) {
      launch(tag, V, CL, blocks_for(total), st, make_grid_div(p.C / V(), h, w, p.sh, p.sw, p.dh, p.dw));
      PYIMGCLS_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace

void max_pool2d_fwd(DType dt, const void* x, void* y, int64_t* idx, const Pool2dParams& p, bool channels_last,
                    int device, uintptr_t stream) {
  launch_windowed(dt, p, false, {x, y, idx}, channels_last, device, stream,
                  [&](auto tag, auto V, auto CL, int blocks, cudaStream_t st, const GridDiv& g) {
                    using T = decltype(tag);
                    if (idx)
                      max_pool2d_fwd_kernel<T, V(), CL(), true><<<blocks, kThreads, 0, st>>>(
                          static_cast<const T*>(x), static_cast<T*>(y), idx, p, g);
                    else
                      max_pool2d_fwd_kernel<T, V(), CL(), false><<<blocks, kThreads, 0, st>>>(
                          static_cast<const T*>(x), static_cast<T*>(y), nullptr, p, g);
                  });
}

void max_pool2d_bwd(DType dt, const void* gy, const int64_t* idx, void* gx, const Pool2dParams& p,
                    bool channels_last, int device, uintptr_t stream) {
  launch_windowed(dt, p, true, {gy, idx, gx}, channels_last, device, stream,
                  [&](auto tag, auto V, auto CL, int blocks, cudaStream_t st, const GridDiv& g) {
                    using T = decltype(tag);
                    max_pool2d_bwd_kernel<T, V(), CL()><<<blocks, kThreads, 0, st>>>(
                        static_cast<const T*>(gy), idx, static_cast<T*>(gx), p, g);
                  });
}

void avg_pool2d_fwd(DType dt, const void* x, void* y, const Pool2dParams& p, bool count_include_pad,
                    int64_t divisor_override, bool channels_last, int device, uintptr_t stream) {
  launch_windowed(dt, p, false, {x, y}, channels_last, device, stream,
                  [&](auto tag, auto V, auto CL, int blocks, cudaStream_t st, const GridDiv& g) {
                    using T = decltype(tag);
                    avg_pool2d_fwd_kernel<T, V(), CL()><<<blocks, kThreads, 0, st>>>(
                        static_cast<const T*>(x), static_cast<T*>(y), p, g, count_include_pad, divisor_override);
                  });
}

void avg_pool2d_bwd(DType dt, const void* gy, void* gx, const Pool2dParams& p, bool count_include_pad,
                    int64_t divisor_override, bool channels_last, int device, uintptr_t stream) {
  launch_windowed(dt, p, true, {gy, gx}, channels_last, device, stream,
                  [&](auto tag, auto V, auto CL, int blocks, cudaStream_t st, const GridDiv& g) {
                    using T = decltype(tag);
                    avg_pool2d_bwd_kernel<T, V(), CL()><<<blocks, kThreads, 0, st>>>(
                        static_cast<const T*>(gy), static_cast<T*>(gx), p, g, count_include_pad, divisor_override);
                  });
}

void adaptive_avg_pool2d_fwd(DType dt, const void* x, void* y, int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t OH, int64_t OW, bool channels_last, int device, uintptr_t stream) {
  if (N < 0 || C < 0 || H < 0 || W < 0 || OH < 0 || OW < 0)
    throw std::invalid_argument("adaptive_avg_pool2d: sizes must be non-negative");
  if ((OH != 1 || OW != 1) && (H == 0 || W == 0) && OH * OW > 0)
    throw std::invalid_argument("adaptive_avg_pool2d: empty input planes only pool to 1x1");
  const DeviceGuard device_guard(device);
  auto st = reinterpret_cast<cudaStream_t>(stream);
  const AdaptiveParams p{N, C, H, W, OH, OW, make_div(std::max<int64_t>(H, 1)), make_div(std::max<int64_t>(W, 1)),
                         make_div(std::max<int64_t>(OH, 1)), make_div(std::max<int64_t>(OW, 1))};
  dispatch_dtype(dt, "pooling", [&](auto tag) {
    using T = decltype(tag);
    if (N * C * OH * OW == 0) return;
    if (OH == 1 && OW == 1) {
      if (!channels_last) {
        global_avg_pool2d_fwd_kernel<T><<<blocks_for(N * C * 32), kThreads, 0, st>>>(
            static_cast<const T*>(x), static_cast<T*>(y), N * C, H * W);
        PYIMGCLS_CUDA_CHECK_LAUNCH();
        return;
      }
      const int vec = nhwc_vec<T>(C, {x, y});
      dispatch_layout<T>(true, vec, [&](auto V, auto) {
        const int64_t blocks = N * ((C / V() + 31) / 32);
        global_avg_pool2d_fwd_nhwc_kernel<T, V()>
            <<<static_cast<int>(blocks > kMaxBlocks ? kMaxBlocks : blocks), dim3(32, kRows), 0, st>>>(
                static_cast<const T*>(x), static_cast<T*>(y), N, C, H * W);
        PYIMGCLS_CUDA_CHECK_LAUNCH();
      });
      return;
    }
    const int vec = channels_last ? nhwc_vec<T>(C, {x, y}) : 1;
    dispatch_layout<T>(channels_last, vec, [&](auto V, auto CL) {
      const int64_t total = N * (C / V()) * OH * OW;
      adaptive_avg_pool2d_fwd_kernel<T, V(), CL()><<<blocks_for(total), kThreads, 0, st>>>(
          static_cast<const T*>(x), static_cast<T*>(y), p, make_grid_div(C / V(), OH, OW));
      PYIMGCLS_CUDA_CHECK_LAUNCH();
    });
  });
}

void adaptive_avg_pool2d_bwd(DType dt, const void* gy, void* gx, int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t OH, int64_t OW, bool channels_last, int device, uintptr_t stream) {
  if (N < 0 || C < 0 || H < 0 || W < 0 || OH < 1 || OW < 1)
    throw std::invalid_argument("adaptive_avg_pool2d backward: sizes must be non-negative, output non-empty");
  const DeviceGuard device_guard(device);
  auto st = reinterpret_cast<cudaStream_t>(stream);
  const AdaptiveParams p{N, C, H, W, OH, OW, make_div(std::max<int64_t>(H, 1)), make_div(std::max<int64_t>(W, 1)),
                         make_div(std::max<int64_t>(OH, 1)), make_div(std::max<int64_t>(OW, 1))};
  dispatch_dtype(dt, "pooling", [&](auto tag) {
    using T = decltype(tag);
    const int vec = channels_last ? nhwc_vec<T>(C, {gy, gx}) : 1;
    dispatch_layout<T>(channels_last, vec, [&](auto V, auto CL) {
      const int64_t total = N * (C / V()) * H * W;
      if (total == 0) return;
      adaptive_avg_pool2d_bwd_kernel<T, V(), CL()><<<blocks_for(total), kThreads, 0, st>>>(
          static_cast<const T*>(gy), static_cast<T*>(gx), p, make_grid_div(C / V(), H, W));
      PYIMGCLS_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace pyimgcls::cuda
