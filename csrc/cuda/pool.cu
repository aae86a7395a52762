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
// Index helpers
// ---------------------------------------------------------------------------------------------
// Element (n, c, h, w) of a [N, C, HH, WW] tensor stored NCHW or NHWC (c is the first of VEC).
template <bool CL>
__device__ __forceinline__ int64_t offset(int64_t n, int64_t c, int64_t h, int64_t w, int64_t C, int64_t HH,
                                          int64_t WW) {
  return CL ? ((n * HH + h) * WW + w) * C + c : ((n * C + c) * HH + h) * WW + w;
}

// Thread index i -> (n, c, h, w) over a [N, C, HH, WW] grid: NCHW has w fastest, NHWC has the
// channel vector fastest (CV = C / VEC vectors).
template <bool CL, int VEC>
__device__ __forceinline__ void decode(int64_t i, int64_t C, int64_t HH, int64_t WW, int64_t& n, int64_t& c,
                                       int64_t& h, int64_t& w) {
  if (CL) {
    const int64_t CV = C / VEC;
    c = (i % CV) * VEC;
    const int64_t pix = i / CV;
    w = pix % WW;
    h = (pix / WW) % HH;
    n = pix / (WW * HH);
  } else {
    w = i % WW;
    h = (i / WW) % HH;
    c = (i / (WW * HH)) % C;
    n = i / (WW * HH * C);
  }
}

__device__ __forceinline__ int64_t first_in_bounds(int64_t start, int64_t step) {
  return start >= 0 ? start : start + ((-start + step - 1) / step) * step;
}

__device__ __forceinline__ int64_t avg_divisor(int64_t hs, int64_t ws, const Pool2dParams& p, bool cip,
                                               int64_t div_override) {
  if (div_override != 0) return div_override;
  const int64_t he = min(hs + p.kh, p.H + p.ph), we = min(ws + p.kw, p.W + p.pw);
  if (cip) return (he - hs) * (we - ws);
  return (min(he, p.H) - max(hs, int64_t(0))) * (min(we, p.W) - max(ws, int64_t(0)));
}

__device__ __forceinline__ int64_t ad_start(int64_t o, int64_t in, int64_t out) { return (o * in) / out; }
__device__ __forceinline__ int64_t ad_end(int64_t o, int64_t in, int64_t out) { return ((o + 1) * in + out - 1) / out; }

#define GRID_STRIDE_LOOP(i, total)                                                          \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (total); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// ---------------------------------------------------------------------------------------------
// Max pooling
// ---------------------------------------------------------------------------------------------
template <typename T, int VEC, bool CL, bool WITH_IDX>
__global__ void __launch_bounds__(kThreads) max_pool2d_fwd_kernel(const T* __restrict__ x, T* __restrict__ y,
                                                                   int64_t* __restrict__ idx, Pool2dParams p) {
  const int64_t total = p.N * (p.C / VEC) * p.OH * p.OW;
  GRID_STRIDE_LOOP(i, total) {
    int64_t n, c, oh, ow;
    decode<CL, VEC>(i, p.C, p.OH, p.OW, n, c, oh, ow);
    // 1. Window taps on the dilation lattice, clipped to the input (ATen's h0/h1 loop bounds).
    const int64_t hs = oh * p.sh - p.ph, ws = ow * p.sw - p.pw;
    const int64_t h1 = min(hs + (p.kh - 1) * p.dh + 1, p.H), h0 = first_in_bounds(hs, p.dh);
    const int64_t w1 = min(ws + (p.kw - 1) * p.dw + 1, p.W), w0 = first_in_bounds(ws, p.dw);
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
__global__ void __launch_bounds__(kThreads) max_pool2d_bwd_kernel(const T* __restrict__ gy,
                                                                   const int64_t* __restrict__ idx,
                                                                   T* __restrict__ gx, Pool2dParams p) {
  const int64_t total = p.N * (p.C / VEC) * p.H * p.W;
  const int64_t ekh = (p.kh - 1) * p.dh + 1, ekw = (p.kw - 1) * p.dw + 1;
  GRID_STRIDE_LOOP(i, total) {
    int64_t n, c, ih, iw;
    decode<CL, VEC>(i, p.C, p.H, p.W, n, c, ih, iw);
    // 1. Outputs whose window extent covers (ih, iw): [ph0, ph1) x [pw0, pw1).
    const int64_t ph0 = (ih + p.ph < ekh) ? 0 : (ih + p.ph - ekh) / p.sh + 1;
    const int64_t ph1 = min((ih + p.ph) / p.sh + 1, p.OH);
    const int64_t pw0 = (iw + p.pw < ekw) ? 0 : (iw + p.pw - ekw) / p.sw + 1;
    const int64_t pw1 = min((iw + p.pw) / p.sw + 1, p.OW);
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
__global__ void __launch_bounds__(kThreads) avg_pool2d_fwd_kernel(const T* __restrict__ x, T* __restrict__ y,
                                                                   Pool2dParams p, bool cip, int64_t div_override) {
  const int64_t total = p.N * (p.C / VEC) * p.OH * p.OW;
  GRID_STRIDE_LOOP(i, total) {
    int64_t n, c, oh, ow;
    decode<CL, VEC>(i, p.C, p.OH, p.OW, n, c, oh, ow);
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
    for (int k = 0; k < VEC; ++k) acc[k] = empty ? 0.f : acc[k] / d;
    store_vec<T, VEC>(y + i * VEC, acc);
  }
}

template <typename T, int VEC, bool CL>
__global__ void __launch_bounds__(kThreads) avg_pool2d_bwd_kernel(const T* __restrict__ gy, T* __restrict__ gx,
                                                                   Pool2dParams p, bool cip, int64_t div_override) {
  const int64_t total = p.N * (p.C / VEC) * p.H * p.W;
  GRID_STRIDE_LOOP(i, total) {
    int64_t n, c, ih, iw;
    decode<CL, VEC>(i, p.C, p.H, p.W, n, c, ih, iw);
    // Outputs whose window [o*s - p, o*s - p + k) contains the element.
    const int64_t ph0 = (ih + p.ph < p.kh) ? 0 : (ih + p.ph - p.kh) / p.sh + 1;
    const int64_t ph1 = min((ih + p.ph) / p.sh + 1, p.OH);
    const int64_t pw0 = (iw + p.pw < p.kw) ? 0 : (iw + p.pw - p.kw) / p.sw + 1;
    const int64_t pw1 = min((iw + p.pw) / p.sw + 1, p.OW);
    float acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
    for (int64_t oh = ph0; oh < ph1; ++oh)
      for (int64_t ow = pw0; ow < pw1; ++ow) {
        const float d = static_cast<float>(avg_divisor(oh * p.sh - p.ph, ow * p.sw - p.pw, p, cip, div_override));
        float g[VEC];
        load_vec<T, VEC>(gy + offset<CL>(n, c, oh, ow, p.C, p.OH, p.OW), g);
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += g[k] / d;
      }
    store_vec<T, VEC>(gx + i * VEC, acc);
  }
}

// ---------------------------------------------------------------------------------------------
// Adaptive average pooling
// ---------------------------------------------------------------------------------------------
struct AdaptiveParams {
  int64_t N, C, H, W, OH, OW;
};

template <typename T, int VEC, bool CL>
__global__ void __launch_bounds__(kThreads) adaptive_avg_pool2d_fwd_kernel(const T* __restrict__ x,
                                                                            T* __restrict__ y, AdaptiveParams p) {
  const int64_t total = p.N * (p.C / VEC) * p.OH * p.OW;
  GRID_STRIDE_LOOP(i, total) {
    int64_t n, c, oh, ow;
    decode<CL, VEC>(i, p.C, p.OH, p.OW, n, c, oh, ow);
    const int64_t h0 = ad_start(oh, p.H, p.OH), h1 = ad_end(oh, p.H, p.OH);
    const int64_t w0 = ad_start(ow, p.W, p.OW), w1 = ad_end(ow, p.W, p.OW);
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
    for (int k = 0; k < VEC; ++k) acc[k] /= d;
    store_vec<T, VEC>(y + i * VEC, acc);
  }
}

template <typename T, int VEC, bool CL>
__global__ void __launch_bounds__(kThreads) adaptive_avg_pool2d_bwd_kernel(const T* __restrict__ gy,
                                                                            T* __restrict__ gx, AdaptiveParams p) {
  const int64_t total = p.N * (p.C / VEC) * p.H * p.W;
  GRID_STRIDE_LOOP(i, total) {
    int64_t n, c, ih, iw;
    decode<CL, VEC>(i, p.C, p.H, p.W, n, c, ih, iw);
    // Outputs whose window contains ih: the inverse adaptive window [floor(ih*OH/H), ceil((ih+1)*OH/H)).
    const int64_t ph0 = ad_start(ih, p.OH, p.H), ph1 = ad_end(ih, p.OH, p.H);
    const int64_t pw0 = ad_start(iw, p.OW, p.W), pw1 = ad_end(iw, p.OW, p.W);
    float acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
    for (int64_t oh = ph0; oh < ph1; ++oh) {
      const int64_t ah = ad_end(oh, p.H, p.OH) - ad_start(oh, p.H, p.OH);
      for (int64_t ow = pw0; ow < pw1; ++ow) {
        const float d = static_cast<float>(ah * (ad_end(ow, p.W, p.OW) - ad_start(ow, p.W, p.OW)));
        float g[VEC];
        load_vec<T, VEC>(gy + offset<CL>(n, c, oh, ow, p.C, p.OH, p.OW), g);
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += g[k] / d;
      }
    }
    store_vec<T, VEC>(gx + i * VEC, acc);
  }
}

// Global mean, NCHW: one warp per plane of HW contiguous elements.
template <typename T>
__global__ void __launch_bounds__(kThreads) global_avg_pool2d_fwd_kernel(const T* __restrict__ x, T* __restrict__ y,
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
// (backward, over_input). Calls launch(T{}, VEC, CL, blocks, stream); nothing for an empty tensor.
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
      launch(tag, V, CL, blocks_for(total), st);
      PYIMGCLS_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace

void max_pool2d_fwd(DType dt, const void* x, void* y, int64_t* idx, const Pool2dParams& p, bool channels_last,
                    int device, uintptr_t stream) {
  launch_windowed(dt, p, false, {x, y, idx}, channels_last, device, stream,
                  [&](auto tag, auto V, auto CL, int blocks, cudaStream_t st) {
                    using T = decltype(tag);
                    if (idx)
                      max_pool2d_fwd_kernel<T, V(), CL(), true><<<blocks, kThreads, 0, st>>>(
                          static_cast<const T*>(x), static_cast<T*>(y), idx, p);
                    else
                      max_pool2d_fwd_kernel<T, V(), CL(), false><<<blocks, kThreads, 0, st>>>(
                          static_cast<const T*>(x), static_cast<T*>(y), nullptr, p);
                  });
}

void max_pool2d_bwd(DType dt, const void* gy, const int64_t* idx, void* gx, const Pool2dParams& p,
                    bool channels_last, int device, uintptr_t stream) {
  launch_windowed(dt, p, true, {gy, idx, gx}, channels_last, device, stream,
                  [&](auto tag, auto V, auto CL, int blocks, cudaStream_t st) {
                    using T = decltype(tag);
                    max_pool2d_bwd_kernel<T, V(), CL()><<<blocks, kThreads, 0, st>>>(
                        static_cast<const T*>(gy), idx, static_cast<T*>(gx), p);
                  });
}

void avg_pool2d_fwd(DType dt, const void* x, void* y, const Pool2dParams& p, bool count_include_pad,
                    int64_t divisor_override, bool channels_last, int device, uintptr_t stream) {
  launch_windowed(dt, p, false, {x, y}, channels_last, device, stream,
                  [&](auto tag, auto V, auto CL, int blocks, cudaStream_t st) {
                    using T = decltype(tag);
                    avg_pool2d_fwd_kernel<T, V(), CL()><<<blocks, kThreads, 0, st>>>(
                        static_cast<const T*>(x), static_cast<T*>(y), p, count_include_pad, divisor_override);
                  });
}

void avg_pool2d_bwd(DType dt, const void* gy, void* gx, const Pool2dParams& p, bool count_include_pad,
                    int64_t divisor_override, bool channels_last, int device, uintptr_t stream) {
  launch_windowed(dt, p, true, {gy, gx}, channels_last, device, stream,
                  [&](auto tag, auto V, auto CL, int blocks, cudaStream_t st) {
                    using T = decltype(tag);
                    avg_pool2d_bwd_kernel<T, V(), CL()><<<blocks, kThreads, 0, st>>>(
                        static_cast<const T*>(gy), static_cast<T*>(gx), p, count_include_pad, divisor_override);
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
  const AdaptiveParams p{N, C, H, W, OH, OW};
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
          static_cast<const T*>(x), static_cast<T*>(y), p);
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
  const AdaptiveParams p{N, C, H, W, OH, OW};
  dispatch_dtype(dt, "pooling", [&](auto tag) {
    using T = decltype(tag);
    const int vec = channels_last ? nhwc_vec<T>(C, {gy, gx}) : 1;
    dispatch_layout<T>(channels_last, vec, [&](auto V, auto CL) {
      const int64_t total = N * (C / V()) * H * W;
      if (total == 0) return;
      adaptive_avg_pool2d_bwd_kernel<T, V(), CL()><<<blocks_for(total), kThreads, 0, st>>>(
          static_cast<const T*>(gy), static_cast<T*>(gx), p);
      PYIMGCLS_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace pyimgcls::cuda
