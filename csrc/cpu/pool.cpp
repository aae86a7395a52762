// CPU pooling family: max_pool2d, avg_pool2d and adaptive_avg_pool2d, forward and backward, in
// float32 and float64, and bfloat16 through the float32 kernels on cache-sized staged blocks
// ("bfloat16" below); the Python layer computes float16 in float32.
//
// What it computes (per (n, c) plane, x [H, W] -> y [OH, OW]; padding ph / pw on both sides)
//   max:      y[oh, ow] = max over ih = oh*sh - ph + i*dh, iw = ow*sw - pw + j*dw (in-bounds only),
//             idx[oh, ow] = ih * W + iw of that maximum. Scan order is row-major (i, then j) and a
//             value replaces the running maximum when it is > it or NaN — ATen's rule: ties keep the
//             first maximum, NaN propagates and its index is the last NaN's, an all -inf window
//             gives -inf at the first in-bounds position.
//   avg:      y = (sum over the in-bounds window) / divisor, divisor = divisor_override, or the
//             window clipped to [−p, H + p) (count_include_pad) or to [0, H).
//   adaptive: y[oh, ow] = mean of x over rows [floor(oh*H/OH), ceil((oh+1)*H/OH)) and the same for
//             columns. OH == OW == 1 is a global mean (a reduction over H * W).
//   Backward passes are the adjoints: gx[i] = sum over the outputs o that read i of gy[o] * w(o, i),
//   with w = [idx[o] == i] (max), 1 / divisor(o) (avg), 1 / area(o) (adaptive).
//
// Algorithm
//   Forward, NCHW, max: stride 1 or 2 (any kernel, padding, dilation, ceil_mode) runs vectorised
//     along the output row (16 outputs per vector, each lane the scalar walk's scan, so results are
//     bit-identical), from -inf-padded scratch bands; one work item per (plane, band of output rows).
//     AVX-512 float (float32 and staged bfloat16) uses intrinsics, the rest the portable body per ISA.
//     Other strides (and PYIMGCLS_CPU_POOL_NCHW=scalar) take the scalar walk.
//   Forward, NCHW, average: one OpenMP work item per output row (n, c, oh); the window rows are
//     clipped once per row, the columns once per output; scalar loops.
//   Forward, NHWC (channels_last): one work item per output pixel (n, oh, ow); the inner loop runs
//     along C, where memory is contiguous, so it vectorises (compare + blend for max, adds for
//     average); max and average keep chunks of 16 channels in registers across the window walk.
//     These per-pixel bodies are compiled for the baseline, AVX2 and AVX-512 and picked at run time
//     (PYIMGCLS_CPU_ISA lowers the choice); two bodies are capped where the wider build measured slower.
//   Backward, NCHW: scatter, one OpenMP work item per plane (zero the plane, then add every
//     output's contribution in row-major output order) — no two threads touch one element, so the
//     result is deterministic and summed in ATen's order.
//   Backward, NHWC: gather, one work item per input pixel: it visits the few outputs whose windows
//     contain it (max: where the saved index equals its position) in row-major output order, adds
//     along C (vectorised) and writes the pixel once — no zeroing pass, same summation order.
//     The global-mean backward copies one precomputed gy / (H*W) row per image to every pixel.
//   Global mean forward: NCHW sums each contiguous plane with 8 independent partial sums (vector
//     friendly, still a fixed order); NHWC adds whole channel rows, vectorised along C.
//
// Cost (S = sizeof(T), outputs P = N*C*OH*OW, inputs Q = N*C*H*W, window K = kh*kw)
//   max fwd:  P*K comparisons;  minimum bytes S*(Q + P) (+ 8*P for the indices).
//   max bwd:  P additions;      minimum bytes S*(P + Q) + 8*P.
//   avg fwd:  P*K additions + P divisions;  bytes S*(Q + P).   avg bwd: P*K additions;  bytes S*(P + Q).
//   adaptive: as avg with K ~ (H/OH)*(W/OW); the global mean reads Q and writes N*C.
//
// Test and benchmark
//   pytest tests/test_pool.py -k cpu
//   pytest benchmarks/test_bench_pool_cpu.py
#include "pool.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common.h"

namespace pyimgcls::cpu {
namespace {

// Below this much work a single thread beats the cost of waking the OpenMP team.
constexpr int64_t kParallelGrain = 1 << 15;
// NHWC forward: channels kept in registers across one window walk (16 floats = 4 SSE / 1 AVX-512 registers).
constexpr int kLanes = 16;
// Channels one NHWC global-mean work item sums at a time (its accumulators stay in L1).
constexpr int64_t kChannelBlock = 64;

// First index >= start on the lattice start + k*step that is >= 0 (ATen: while (h0 < 0) h0 += d).
inline int64_t first_in_bounds(int64_t start, int64_t step) {
  return start >= 0 ? start : start + ((-start + step - 1) / step) * step;
}

inline int64_t adaptive_start(int64_t o, int64_t in, int64_t out) { return (o * in) / out; }
inline int64_t adaptive_end(int64_t o, int64_t in, int64_t out) { return ((o + 1) * in + out - 1) / out; }

// ATen's avg_pool2d divisor for the window starting at (h0, w0) before clipping.
inline int64_t avg_divisor(int64_t h0, int64_t w0, const Pool2dParams& p, bool count_include_pad,
                           int64_t divisor_override) {
  if (divisor_override != 0) return divisor_override;
  int64_t h1 = std::min(h0 + p.kh, p.H + p.ph), w1 = std::min(w0 + p.kw, p.W + p.pw);
  if (count_include_pad) return (h1 - h0) * (w1 - w0);
  h0 = std::max<int64_t>(h0, 0);
  w0 = std::max<int64_t>(w0, 0);
  h1 = std::min(h1, p.H);
  w1 = std::min(w1, p.W);
  return (h1 - h0) * (w1 - w0);
}

// In-bounds window of an average-pooling output: rows [h0, h1), cols [w0, w1) (may be empty).
struct Window {
  int64_t h0, h1, w0, w1, divisor;
};

inline Window avg_window(int64_t oh, int64_t ow, const Pool2dParams& p, bool cip, int64_t div_override) {
  const int64_t hs = oh * p.sh - p.ph, ws = ow * p.sw - p.pw;
  Window w;
  w.divisor = avg_divisor(hs, ws, p, cip, div_override);
  w.h0 = std::max<int64_t>(hs, 0);
  w.w0 = std::max<int64_t>(ws, 0);
  w.h1 = std::min(hs + p.kh, p.H);
  w.w1 = std::min(ws + p.kw, p.W);
  return w;
}

// ---------------------------------------------------------------------------------------------
// Instruction sets for the NHWC kernels
// ---------------------------------------------------------------------------------------------
// The NHWC loops run along C and vectorise; the baseline x86-64 target only has SSE2, so each
// NHWC kernel body (an always-inline static run(q0, q1, ...) over a range of pixels) is also
// compiled for AVX2 and AVX-512 (isa_variant, common.h) and the widest one the CPU supports is
// called (PYIMGCLS_CPU_ISA=generic|avx2|avx512 lowers the choice).

// K::run over pixels [0, count) in OpenMP chunks; `per_pixel` estimates the work of one pixel.
// kMax caps the instruction set for bodies that measured slower with a wider one.
template <class K, Isa kMax = Isa::Avx512, class... A>
void run_pixels(int64_t count, int64_t per_pixel, const A&... a) {
  const Isa isa = static_cast<int>(active_isa()) < static_cast<int>(kMax) ? active_isa() : kMax;
  const auto fn = isa_variant<void (*)(int64_t, int64_t, const A&...), K>(isa);
  constexpr int64_t kChunk = 16;  // pixels per work item: amortises the call, keeps balance
  const int64_t chunks = (count + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (count * per_pixel > kParallelGrain)
  for (int64_t b = 0; b < chunks; ++b) fn(b * kChunk, std::min(count, (b + 1) * kChunk), a...);
}

struct AdaptiveGeom {
  int64_t N, C, H, W, OH, OW;
};

// Max forward, one output pixel (n, oh, ow) per q: channels in chunks of kLanes held in registers
// across the window walk, the remainder with the output row as accumulator.
template <typename T, bool kIdx>
struct MaxFwdNhwc {
  static PYIMGCLS_INLINE void run(int64_t q0, int64_t q1, const T* const& x, T* const& y, int64_t* const& idx,
                                  const Pool2dParams& p) {
    const int64_t C = p.C;
    const T ninf = -std::numeric_limits<T>::infinity();
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n = q / (p.OH * p.OW), oh = (q / p.OW) % p.OH, ow = q % p.OW;
      const T* xn = x + n * p.H * p.W * C;
      T* yq = y + q * C;
      int64_t* iq = kIdx ? idx + q * C : nullptr;
      const int64_t hs = oh * p.sh - p.ph, ws = ow * p.sw - p.pw;
      const int64_t h1 = std::min(hs + (p.kh - 1) * p.dh + 1, p.H), h0 = first_in_bounds(hs, p.dh);
      const int64_t w1 = std::min(ws + (p.kw - 1) * p.dw + 1, p.W), w0 = first_in_bounds(ws, p.dw);
      const int64_t first = h0 * p.W + w0;
      int64_t c0 = 0;
      for (; c0 + kLanes <= C; c0 += kLanes) {
        T best[kLanes];
        int64_t arg[kLanes];
        for (int l = 0; l < kLanes; ++l) {
          best[l] = ninf;
          arg[l] = first;
        }
        for (int64_t ih = h0; ih < h1; ih += p.dh)
          for (int64_t iw = w0; iw < w1; iw += p.dw) {
            const int64_t pos = ih * p.W + iw;
            const T* xr = xn + pos * C + c0;
#pragma omp simd
            for (int l = 0; l < kLanes; ++l) {
              const T v = xr[l];
              const bool up = (v > best[l]) | (v != v);  // v != v: NaN without a libm call
              best[l] = up ? v : best[l];
              if (kIdx) arg[l] = up ? pos : arg[l];
            }
          }
        for (int l = 0; l < kLanes; ++l) yq[c0 + l] = best[l];
        if (kIdx)
          for (int l = 0; l < kLanes; ++l) iq[c0 + l] = arg[l];
      }
      if (c0 == C) continue;
      for (int64_t c = c0; c < C; ++c) yq[c] = ninf;
      if (kIdx)
        for (int64_t c = c0; c < C; ++c) iq[c] = first;
      for (int64_t ih = h0; ih < h1; ih += p.dh)
        for (int64_t iw = w0; iw < w1; iw += p.dw) {
          const int64_t pos = ih * p.W + iw;
          const T* xr = xn + pos * C;
          for (int64_t c = c0; c < C; ++c) {
            const T v = xr[c];
            const bool up = (v > yq[c]) | (v != v);
            yq[c] = up ? v : yq[c];
            if (kIdx) iq[c] = up ? pos : iq[c];
          }
        }
    }
  }
};

// Average forward, one output pixel per q (same register chunking as MaxFwdNhwc).
template <typename T>
struct AvgFwdNhwc {
  static PYIMGCLS_INLINE void run(int64_t q0, int64_t q1, const T* const& x, T* const& y, const Pool2dParams& p,
                                  const bool& cip, const int64_t& dov) {
    const int64_t C = p.C;
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n = q / (p.OH * p.OW), oh = (q / p.OW) % p.OH, ow = q % p.OW;
      const T* xn = x + n * p.H * p.W * C;
      T* yq = y + q * C;
      const Window w = avg_window(oh, ow, p, cip, dov);
      // An empty window (impossible once padding <= kernel/2, kept for safety) is 0, as in ATen.
      const bool empty = w.h0 >= w.h1 || w.w0 >= w.w1;
      const T d = static_cast<T>(w.divisor);
      int64_t c0 = 0;
      for (; c0 + kLanes <= C; c0 += kLanes) {
        T acc[kLanes] = {};
        for (int64_t ih = w.h0; ih < w.h1; ++ih)
          for (int64_t iw = w.w0; iw < w.w1; ++iw) {
            const T* xr = xn + (ih * p.W + iw) * C + c0;
#pragma omp simd
            for (int l = 0; l < kLanes; ++l) acc[l] += xr[l];
          }
#pragma omp simd
        for (int l = 0; l < kLanes; ++l) yq[c0 + l] = empty ? T(0) : acc[l] / d;
      }
      if (c0 == C) continue;
      for (int64_t c = c0; c < C; ++c) yq[c] = T(0);
      for (int64_t ih = w.h0; ih < w.h1; ++ih)
        for (int64_t iw = w.w0; iw < w.w1; ++iw) {
          const T* xr = xn + (ih * p.W + iw) * C;
          for (int64_t c = c0; c < C; ++c) yq[c] += xr[c];
        }
      if (!empty)
        for (int64_t c = c0; c < C; ++c) yq[c] /= d;
    }
  }
};

// Window taps one pointer-pass body handles; larger windows take the register-chunk bodies above.
constexpr int kMaxTaps = 32;

// Forward, NHWC, by passes over the output row (inference max without indices, and average): the
// output pixel's C values (at most a few KiB, in L1) are initialised from the first in-bounds window
// tap and combined with each further tap in one unit-stride pass, so every loop is a plain
// vectorisable stream with no per-chunk bookkeeping (measured on one core, 8x256x28x28 avg 2x2/2:
// 237 us with the register-chunk body, see BENCHMARKS.md). Same scan order and NaN / tie rules as
// the register-chunk bodies: taps are visited row-major and a max tap wins when > or NaN.
template <typename T, bool kMax>
struct PassFwdNhwc {
  static PYIMGCLS_INLINE void run(int64_t q0, int64_t q1, const T* const& x, T* const& y, const Pool2dParams& p,
                                  const bool& cip, const int64_t& dov) {
    const int64_t C = p.C;
    const T* taps[kMaxTaps];
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n = q / (p.OH * p.OW), oh = (q / p.OW) % p.OH, ow = q % p.OW;
      const T* xn = x + n * p.H * p.W * C;
      T* __restrict yq = y + q * C;
      int64_t h0, h1, w0, w1, dh = 1, dw = 1;
      T d = T(1);
      if (kMax) {
        const int64_t hs = oh * p.sh - p.ph, ws = ow * p.sw - p.pw;
        h1 = std::min(hs + (p.kh - 1) * p.dh + 1, p.H), h0 = first_in_bounds(hs, p.dh);
        w1 = std::min(ws + (p.kw - 1) * p.dw + 1, p.W), w0 = first_in_bounds(ws, p.dw);
        dh = p.dh;
        dw = p.dw;
      } else {
        const Window win = avg_window(oh, ow, p, cip, dov);
        h0 = win.h0, h1 = win.h1, w0 = win.w0, w1 = win.w1;
        d = static_cast<T>(win.divisor);
      }
      int nt = 0;
      for (int64_t ih = h0; ih < h1; ih += dh)
        for (int64_t iw = w0; iw < w1; iw += dw) taps[nt++] = xn + (ih * p.W + iw) * C;
      if (nt == 0) {
        // An empty window (impossible once padding <= kernel/2): -inf for max, 0 for avg, as ATen.
        const T v = kMax ? -std::numeric_limits<T>::infinity() : T(0);
        for (int64_t c = 0; c < C; ++c) yq[c] = v;
        continue;
      }
      const T* __restrict t0 = taps[0];
      if (kMax) {
        for (int64_t c = 0; c < C; ++c) yq[c] = t0[c];
      } else {
        // avg starts from 0 + t0 like the register-chunk body (bit-identical sums)
        for (int64_t c = 0; c < C; ++c) yq[c] = T(0) + t0[c];
      }
      for (int k = 1; k < nt; ++k) {
        const T* __restrict tk = taps[k];
        if (kMax) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const T v = tk[c];
            yq[c] = ((v > yq[c]) | (v != v)) ? v : yq[c];
          }
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) yq[c] += tk[c];
        }
      }
      if (!kMax) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) yq[c] /= d;
      }
    }
  }
};

// Average backward, gather: one input pixel per q visits the outputs whose window
// [o*s - p, o*s - p + k) contains it, in row-major order (ATen's scatter order), and writes once.
template <typename T>
struct AvgBwdNhwc {
  static PYIMGCLS_INLINE void run(int64_t q0, int64_t q1, const T* const& gy, T* const& gx, const Pool2dParams& p,
                                  const bool& cip, const int64_t& dov) {
    const int64_t C = p.C;
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n = q / (p.H * p.W), ih = (q / p.W) % p.H, iw = q % p.W;
      const int64_t ph0 = (ih + p.ph < p.kh) ? 0 : (ih + p.ph - p.kh) / p.sh + 1;
      const int64_t ph1 = std::min((ih + p.ph) / p.sh + 1, p.OH);
      const int64_t pw0 = (iw + p.pw < p.kw) ? 0 : (iw + p.pw - p.kw) / p.sw + 1;
      const int64_t pw1 = std::min((iw + p.pw) / p.sw + 1, p.OW);
      T* __restrict gr = gx + q * C;
      // The first contributing output is stored (0 + v: the same bits as zeroing then adding), the
      // others added: one pass over the row when windows do not overlap (kernel == stride).
      bool first = true;
      for (int64_t oh = ph0; oh < ph1; ++oh)
        for (int64_t ow = pw0; ow < pw1; ++ow) {
          const T d = static_cast<T>(avg_window(oh, ow, p, cip, dov).divisor);
          const T* __restrict go = gy + ((n * p.OH + oh) * p.OW + ow) * C;
          if (first) {
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) gr[c] = T(0) + go[c] / d;
            first = false;
          } else {
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) gr[c] += go[c] / d;
          }
        }
      if (first)
        for (int64_t c = 0; c < C; ++c) gr[c] = T(0);
    }
  }
};

// Adaptive forward, one output pixel per q.
template <typename T>
struct AdaptiveFwdNhwc {
  static PYIMGCLS_INLINE void run(int64_t q0, int64_t q1, const T* const& x, T* const& y, const AdaptiveGeom& g) {
    const int64_t C = g.C;
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n = q / (g.OH * g.OW), oh = (q / g.OW) % g.OH, ow = q % g.OW;
      const int64_t h0 = adaptive_start(oh, g.H, g.OH), h1 = adaptive_end(oh, g.H, g.OH);
      const int64_t w0 = adaptive_start(ow, g.W, g.OW), w1 = adaptive_end(ow, g.W, g.OW);
      const T* xn = x + n * g.H * g.W * C;
      T* yq = y + q * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yq[c] = T(0);
      for (int64_t ih = h0; ih < h1; ++ih)
        for (int64_t iw = w0; iw < w1; ++iw) {
          const T* xr = xn + (ih * g.W + iw) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) yq[c] += xr[c];
        }
      const T d = static_cast<T>((h1 - h0) * (w1 - w0));
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yq[c] /= d;
    }
  }
};

// Adaptive backward, gather: one input pixel per q from the outputs of the inverse window
// [floor(i*O/I), ceil((i+1)*O/I)), in row-major order.
template <typename T>
struct AdaptiveBwdNhwc {
  static PYIMGCLS_INLINE void run(int64_t q0, int64_t q1, const T* const& gy, T* const& gx, const AdaptiveGeom& g) {
    const int64_t C = g.C;
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n = q / (g.H * g.W), ih = (q / g.W) % g.H, iw = q % g.W;
      const int64_t ph0 = adaptive_start(ih, g.OH, g.H), ph1 = adaptive_end(ih, g.OH, g.H);
      const int64_t pw0 = adaptive_start(iw, g.OW, g.W), pw1 = adaptive_end(iw, g.OW, g.W);
      T* gr = gx + q * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) gr[c] = T(0);
      for (int64_t oh = ph0; oh < ph1; ++oh) {
        const int64_t ah = adaptive_end(oh, g.H, g.OH) - adaptive_start(oh, g.H, g.OH);
        for (int64_t ow = pw0; ow < pw1; ++ow) {
          const T d = static_cast<T>(ah * (adaptive_end(ow, g.W, g.OW) - adaptive_start(ow, g.W, g.OW)));
          const T* go = gy + ((n * g.OH + oh) * g.OW + ow) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) gr[c] += go[c] / d;
        }
      }
    }
  }
};

template <typename T, bool kIdx>
void max_fwd_nhwc(const T* x, T* y, int64_t* idx, const Pool2dParams& p) {
  if (!kIdx && p.kh * p.kw <= kMaxTaps) {
    const bool unused_cip = false;
    const int64_t unused_dov = 0;
    run_pixels<PassFwdNhwc<T, true>>(p.N * p.OH * p.OW, p.C * p.kh * p.kw, x, y, p, unused_cip, unused_dov);
    return;
  }
  run_pixels<MaxFwdNhwc<T, kIdx>>(p.N * p.OH * p.OW, p.C * p.kh * p.kw, x, y, idx, p);
}

template <typename T>
void avg_fwd_nhwc(const T* x, T* y, const Pool2dParams& p, bool cip, int64_t dov) {
  if (p.kh * p.kw <= kMaxTaps) {
    run_pixels<PassFwdNhwc<T, false>>(p.N * p.OH * p.OW, p.C * p.kh * p.kw, x, y, p, cip, dov);
    return;
  }
  // Measured on one core (8x256x28x28, 2x2/2) for this register-chunk body: baseline 294 us, AVX2
  // 783 us, AVX-512 844 us, so for the large windows it serves it stays on the baseline build.
  run_pixels<AvgFwdNhwc<T>, Isa::Generic>(p.N * p.OH * p.OW, p.C * p.kh * p.kw, x, y, p, cip, dov);
}

template <typename T>
void avg_bwd_nhwc(const T* gy, T* gx, const Pool2dParams& p, bool cip, int64_t dov) {
  run_pixels<AvgBwdNhwc<T>>(p.N * p.H * p.W, p.C * 2, gy, gx, p, cip, dov);
}

// Max backward, NHWC: scatter (one addition per output, against ~k^2/s^2 index compares per input
// for a gather). Work items own whole images — one memset, then every output adds into its argmax
// in row-major order — or, with fewer images than threads, blocks of kChannelBlock channels.
template <typename T>
void max_bwd_nhwc(const T* __restrict gy, const int64_t* __restrict idx, T* __restrict gx, const Pool2dParams& p) {
  const int64_t C = p.C, in_sz = p.H * p.W, out_sz = p.OH * p.OW;
  const int64_t cblock = p.N >= omp_get_max_threads() ? C : std::min(C, kChannelBlock);
  const int64_t cblocks = (C + cblock - 1) / cblock, items = p.N * cblocks;
#pragma omp parallel for schedule(static) if (p.N * C * (in_sz + out_sz) > kParallelGrain)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t n = it / cblocks, c0 = (it % cblocks) * cblock, c1 = std::min(C, c0 + cblock);
    T* gn = gx + n * in_sz * C;
    if (c0 == 0 && c1 == C) {
      std::memset(gn, 0, sizeof(T) * in_sz * C);
    } else {
      for (int64_t i = 0; i < in_sz; ++i)
        for (int64_t c = c0; c < c1; ++c) gn[i * C + c] = T(0);
    }
    const T* g = gy + n * out_sz * C;
    const int64_t* ip = idx + n * out_sz * C;
    for (int64_t o = 0; o < out_sz; ++o)
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t i = ip[o * C + c];
        if (i >= 0 && i < in_sz) gn[i * C + c] += g[o * C + c];
      }
  }
}

// ---------------------------------------------------------------------------------------------
// Max pooling
// ---------------------------------------------------------------------------------------------
// The scalar walk: any stride; the reference the vector body below reproduces bit for bit.
template <typename T, bool kIdx>
void max_fwd_nchw_scalar(const T* __restrict x, T* __restrict y, int64_t* __restrict idx, const Pool2dParams& p) {
  const int64_t rows = p.N * p.C * p.OH;
#pragma omp parallel for schedule(static) if (rows * p.OW * p.kh * p.kw > kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t plane = r / p.OH, oh = r % p.OH;
    const T* xp = x + plane * p.H * p.W;
    T* yr = y + r * p.OW;
    // 1. Window rows of this output row, clipped once: [h0, h1) on the dilation lattice.
    const int64_t hs = oh * p.sh - p.ph;
    const int64_t h1 = std::min(hs + (p.kh - 1) * p.dh + 1, p.H);
    const int64_t h0 = first_in_bounds(hs, p.dh);
    for (int64_t ow = 0; ow < p.OW; ++ow) {
      const int64_t ws = ow * p.sw - p.pw;
      const int64_t w1 = std::min(ws + (p.kw - 1) * p.dw + 1, p.W);
      const int64_t w0 = first_in_bounds(ws, p.dw);
      // 2. Row-major scan with ATen's update rule: strictly greater, or NaN.
      T best = -std::numeric_limits<T>::infinity();
      int64_t arg = h0 * p.W + w0;
      for (int64_t ih = h0; ih < h1; ih += p.dh) {
        const T* xr = xp + ih * p.W;
        for (int64_t iw = w0; iw < w1; iw += p.dw) {
          const T v = xr[iw];
          if (v > best || std::isnan(v)) {
            best = v;
            arg = ih * p.W + iw;
          }
        }
      }
      yr[ow] = best;
      if (kIdx) idx[r * p.OW + ow] = arg;
    }
  }
}

// Vector body, stride 1 or 2 (any kernel, padding, dilation, ceil_mode). Lanes are kRowLanes
// consecutive outputs ow of one output row, and each lane runs max_fwd_nchw_scalar's scan: taps
// (i, j) in row-major order, the running maximum replaced when a tap is > it or NaN, starting from
// (-inf, first in-bounds tap). Values (NaN payloads and signed zeros included) and indices are
// therefore the scalar walk's bit for bit. Tap (i, j) of lane ow reads input column
// ow*SW - pw + j*dw: one unit-stride load (SW = 1) or two loads and an even / odd deinterleave
// (SW = 2) per kRowLanes outputs — GCC's strided-group vectorisation of `t[l * SW]` under omp simd.
// So that every lane's taps can be loaded without bounds checks, a work item first copies the input
// rows its outputs read into a scratch band whose rows are padded with -inf on both sides, out to
// the last lane of the last vector block: a -inf tap is never > the running maximum and is not
// NaN, so a padding tap changes nothing, exactly as the scalar walk skipping it.
// Work item: (plane, band of output rows); a band's scratch is at most kBandBytes (L1 / L2 sized).
// Per item: reads band rows * W * S bytes once (copy), then OH_band * OWr * kh * kw lane compares
// from the scratch; writes OH_band * OW * S bytes (+ 8 per output for the indices).
constexpr int kRowLanes = 16;
constexpr int64_t kBandBytes = 32 << 10;

struct NchwVecGeom {
  int64_t bands;      // bands per plane
  int64_t band_rows;  // output rows per band (the last band may have fewer)
  int64_t Wp;         // scratch row stride: OWr*SW + (kw-1)*dw + kRowLanes columns
  const int64_t* w0;  // [OWr] first in-bounds input column of each output column's window (first_in_bounds)
};

// Copies input rows [r0, r1) of one plane — those read by the band's output rows, up to oh1 — into
// scratch rows of g.Wp columns: pw columns of -inf, the row, then -inf to the end.
template <typename T>
PYIMGCLS_INLINE const T* fill_band(std::vector<T>& scratch, const T* xp, const Pool2dParams& p, const NchwVecGeom& g,
                                   int64_t r0, int64_t oh1) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t Wp = g.Wp, lead = std::min(p.pw, Wp), ncopy = std::max<int64_t>(0, std::min(p.W, Wp - lead));
  const int64_t r1 = std::min(p.H, (oh1 - 1) * p.sh - p.ph + (p.kh - 1) * p.dh + 1);
  const int64_t nr = std::max<int64_t>(0, r1 - r0);
  if (static_cast<int64_t>(scratch.size()) < nr * Wp) scratch.resize(nr * Wp);
  T* sc = scratch.data();
  for (int64_t r = 0; r < nr; ++r) {
    T* __restrict sr = sc + r * Wp;
    const T* __restrict xr = xp + (r0 + r) * p.W;
    for (int64_t c = 0; c < lead; ++c) sr[c] = ninf;
    for (int64_t c = 0; c < ncopy; ++c) sr[lead + c] = xr[c];
    for (int64_t c = lead + ncopy; c < Wp; ++c) sr[c] = ninf;
  }
  return sc;
}

template <typename T, bool kIdx, int SW>
struct MaxFwdNchwVec {
  static PYIMGCLS_INLINE void run(int64_t q0, int64_t q1, const T* const& x, T* const& y, int64_t* const& idx,
                                  const Pool2dParams& p, const NchwVecGeom& g) {
    static thread_local std::vector<T> scratch;  // grow-only, one per thread
    const T ninf = -std::numeric_limits<T>::infinity();
    const int64_t Wp = g.Wp;
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t plane = q / g.bands, oh0 = (q % g.bands) * g.band_rows, oh1 = std::min(p.OH, oh0 + g.band_rows);
      const int64_t r0 = std::max<int64_t>(0, oh0 * p.sh - p.ph);
      const T* sc = fill_band(scratch, x + plane * p.H * p.W, p, g, r0, oh1);
      // 2. Each output row in blocks of kRowLanes outputs, the window rows clipped as in the scalar walk.
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        const int64_t hs = oh * p.sh - p.ph;
        const int64_t h1 = std::min(hs + (p.kh - 1) * p.dh + 1, p.H), h0 = first_in_bounds(hs, p.dh);
        T* yr = y + (plane * p.OH + oh) * p.OW;
        int64_t* ir = kIdx ? idx + (plane * p.OH + oh) * p.OW : nullptr;
        for (int64_t o0 = 0; o0 < p.OW; o0 += kRowLanes) {
          T best[kRowLanes];
          int64_t arg[kRowLanes];
          for (int l = 0; l < kRowLanes; ++l) {
            best[l] = ninf;
            if (kIdx) arg[l] = h0 * p.W + g.w0[o0 + l];
          }
          for (int64_t ih = h0; ih < h1; ih += p.dh) {
            const T* sr = sc + (ih - r0) * Wp + o0 * SW;
            const int64_t rowpos = ih * p.W - p.pw + o0 * SW;  // flat index of lane 0's tap j = 0
            for (int64_t j = 0; j < p.kw; ++j) {
              const T* t = sr + j * p.dw;
              const int64_t pos = rowpos + j * p.dw;
#pragma omp simd
              for (int l = 0; l < kRowLanes; ++l) {
                const T v = t[l * SW];
                const bool up = (v > best[l]) | (v != v);  // v != v: NaN without a libm call
                best[l] = up ? v : best[l];
                if (kIdx) arg[l] = up ? pos + l * SW : arg[l];
              }
            }
          }
          if (o0 + kRowLanes <= p.OW) {
            for (int l = 0; l < kRowLanes; ++l) yr[o0 + l] = best[l];
            if (kIdx)
              for (int l = 0; l < kRowLanes; ++l) ir[o0 + l] = arg[l];
          } else {
            for (int64_t l = 0; l < p.OW - o0; ++l) yr[o0 + l] = best[l];
            if (kIdx)
              for (int64_t l = 0; l < p.OW - o0; ++l) ir[o0 + l] = arg[l];
          }
        }
      }
    }
  }
};

#ifdef PYIMGCLS_X86
// The same scan for float with AVX-512 intrinsics (GCC 12 lowers MaxFwdNchwVec's stride-2 lanes to
// partly scalar code: 1.7 ms against this body's 0.35 ms on the ResNet stem, 16x64x32x32 3x3/2 p1,
// one core). Per tap: one load (SW = 1) or two loads and vpermt2ps (even lanes, SW = 2), two
// compares (> and unordered), one masked move; with indices two masked int64 moves.
template <bool kIdx, int SW>
PYIMGCLS_TARGET_AVX512 void max_fwd_nchw_avx512(int64_t q0, int64_t q1, const float* x, float* y, int64_t* idx,
                                                const Pool2dParams& p, const NchwVecGeom& g) {
  static_assert(kRowLanes == 16, "one zmm of float lanes");
  static thread_local std::vector<float> scratch;
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i lane_lo = _mm512_setr_epi64(0, SW, 2 * SW, 3 * SW, 4 * SW, 5 * SW, 6 * SW, 7 * SW);
  const __m512i lane_hi = _mm512_add_epi64(lane_lo, _mm512_set1_epi64(8 * SW));
  const int64_t Wp = g.Wp;
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t plane = q / g.bands, oh0 = (q % g.bands) * g.band_rows, oh1 = std::min(p.OH, oh0 + g.band_rows);
    const int64_t r0 = std::max<int64_t>(0, oh0 * p.sh - p.ph);
    const float* sc = fill_band(scratch, x + plane * p.H * p.W, p, g, r0, oh1);
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const int64_t hs = oh * p.sh - p.ph;
      const int64_t h1 = std::min(hs + (p.kh - 1) * p.dh + 1, p.H), h0 = first_in_bounds(hs, p.dh);
      float* yr = y + (plane * p.OH + oh) * p.OW;
      int64_t* ir = kIdx ? idx + (plane * p.OH + oh) * p.OW : nullptr;
      for (int64_t o0 = 0; o0 < p.OW; o0 += kRowLanes) {
        __m512 best = ninf;
        __m512i arg_lo = _mm512_setzero_si512(), arg_hi = arg_lo;
        if (kIdx) {
          const __m512i base = _mm512_set1_epi64(h0 * p.W);
          arg_lo = _mm512_add_epi64(base, _mm512_loadu_si512(g.w0 + o0));
          arg_hi = _mm512_add_epi64(base, _mm512_loadu_si512(g.w0 + o0 + 8));
        }
        for (int64_t ih = h0; ih < h1; ih += p.dh) {
          const float* sr = sc + (ih - r0) * Wp + o0 * SW;
          const int64_t rowpos = ih * p.W - p.pw + o0 * SW;  // flat index of lane 0's tap j = 0
          for (int64_t j = 0; j < p.kw; ++j) {
            const float* t = sr + j * p.dw;
            __m512 v = _mm512_loadu_ps(t);
            if (SW == 2) v = _mm512_permutex2var_ps(v, even, _mm512_loadu_ps(t + 16));
            const __mmask16 up = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            best = _mm512_mask_mov_ps(best, up, v);
            if (kIdx) {
              const __m512i pos = _mm512_set1_epi64(rowpos + j * p.dw);
              arg_lo = _mm512_mask_mov_epi64(arg_lo, static_cast<__mmask8>(up), _mm512_add_epi64(pos, lane_lo));
              arg_hi = _mm512_mask_mov_epi64(arg_hi, static_cast<__mmask8>(up >> 8), _mm512_add_epi64(pos, lane_hi));
            }
          }
        }
        const int64_t n = std::min<int64_t>(kRowLanes, p.OW - o0);
        const __mmask16 keep = n == kRowLanes ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
        _mm512_mask_storeu_ps(yr + o0, keep, best);
        if (kIdx) {
          _mm512_mask_storeu_epi64(ir + o0, static_cast<__mmask8>(keep), arg_lo);
          _mm512_mask_storeu_epi64(ir + o0 + 8, static_cast<__mmask8>(keep >> 8), arg_hi);
        }
      }
    }
  }
}
// max_fwd_nchw_avx512 behind the portable bodies' calling convention (isa_variant's Fn).
template <bool kIdx, int SW>
void avx512_entry(int64_t q0, int64_t q1, const float* const& x, float* const& y, int64_t* const& idx,
                  const Pool2dParams& p, const NchwVecGeom& g) {
  max_fwd_nchw_avx512<kIdx, SW>(q0, q1, x, y, idx, p, g);
}
#endif

// PYIMGCLS_CPU_POOL_NCHW=scalar sends the NCHW max forward to the scalar walk (before / after timing
// and the bit-identity tests); unset, empty or "vector": the vector body where the stride allows.
inline bool nchw_pool_scalar_forced() {
  const char* env = std::getenv("PYIMGCLS_CPU_POOL_NCHW");
  if (env == nullptr || env[0] == '\0') return false;
  const std::string v(env);
  if (v == "scalar") return true;
  if (v == "vector") return false;
  throw std::invalid_argument("PYIMGCLS_CPU_POOL_NCHW must be scalar or vector, got '" + v + "'");
}

template <typename T, bool kIdx>
void max_fwd_nchw(const T* x, T* y, int64_t* idx, const Pool2dParams& p) {
  if ((p.sw != 1 && p.sw != 2) || nchw_pool_scalar_forced()) return max_fwd_nchw_scalar<T, kIdx>(x, y, idx, p);
  const int64_t planes = p.N * p.C;
  if (planes == 0 || p.OH == 0 || p.OW == 0) return;
  const int64_t OWr = (p.OW + kRowLanes - 1) / kRowLanes * kRowLanes;
  NchwVecGeom g;
  g.Wp = OWr * p.sw + (p.kw - 1) * p.dw + kRowLanes;
  // Output rows per band: as many as keep the band's input rows within kBandBytes of scratch.
  const int64_t rows_fit = std::max<int64_t>(1, kBandBytes / static_cast<int64_t>(sizeof(T)) / g.Wp);
  const int64_t span = (p.kh - 1) * p.dh + 1;  // input rows of one output row's window
  g.band_rows = std::min(p.OH, rows_fit > span ? (rows_fit - span) / p.sh + 1 : int64_t(1));
  g.bands = (p.OH + g.band_rows - 1) / g.band_rows;
  std::vector<int64_t> w0(OWr);
  for (int64_t ow = 0; ow < OWr; ++ow) w0[ow] = first_in_bounds(ow * p.sw - p.pw, p.dw);
  g.w0 = w0.data();
  const Isa isa = active_isa();
  using Fn = void (*)(int64_t, int64_t, const T* const&, T* const&, int64_t* const&, const Pool2dParams&,
                      const NchwVecGeom&);
  Fn fn = p.sw == 1 ? isa_variant<Fn, MaxFwdNchwVec<T, kIdx, 1>>(isa) : isa_variant<Fn, MaxFwdNchwVec<T, kIdx, 2>>(isa);
#ifdef PYIMGCLS_X86
  if constexpr (std::is_same_v<T, float>)
    if (isa == Isa::Avx512) fn = p.sw == 1 ? &avx512_entry<kIdx, 1> : &avx512_entry<kIdx, 2>;
#endif
  // Items of little work (small planes) are grouped so a call does at least ~4K lane compares.
  const int64_t items = planes * g.bands, per_item = g.band_rows * OWr * p.kh * p.kw;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(64, 4096 / std::max<int64_t>(1, per_item)));
  const int64_t chunks = (items + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (items * per_item > kParallelGrain)
  for (int64_t b = 0; b < chunks; ++b) fn(b * chunk, std::min(items, (b + 1) * chunk), x, y, idx, p, g);
}

template <typename T>
void max_bwd_nchw(const T* __restrict gy, const int64_t* __restrict idx, T* __restrict gx, const Pool2dParams& p) {
  const int64_t planes = p.N * p.C, in_sz = p.H * p.W, out_sz = p.OH * p.OW;
#pragma omp parallel for schedule(static) if (planes * (in_sz + out_sz) > kParallelGrain)
  for (int64_t pl = 0; pl < planes; ++pl) {
    T* gp = gx + pl * in_sz;
    const T* g = gy + pl * out_sz;
    const int64_t* ip = idx + pl * out_sz;
    std::memset(gp, 0, sizeof(T) * in_sz);
    for (int64_t o = 0; o < out_sz; ++o) {
      const int64_t i = ip[o];
      if (i >= 0 && i < in_sz) gp[i] += g[o];  // indices come from our forward; the guard keeps a bad one harmless
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Average pooling
// ---------------------------------------------------------------------------------------------
template <typename T>
void avg_fwd_nchw(const T* __restrict x, T* __restrict y, const Pool2dParams& p, bool cip, int64_t dov) {
  const int64_t rows = p.N * p.C * p.OH;
#pragma omp parallel for schedule(static) if (rows * p.OW * p.kh * p.kw > kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t plane = r / p.OH, oh = r % p.OH;
    const T* xp = x + plane * p.H * p.W;
    for (int64_t ow = 0; ow < p.OW; ++ow) {
      const Window w = avg_window(oh, ow, p, cip, dov);
      T sum = T(0);
      for (int64_t ih = w.h0; ih < w.h1; ++ih)
        for (int64_t iw = w.w0; iw < w.w1; ++iw) sum += xp[ih * p.W + iw];
      // An empty window (impossible once padding <= kernel/2, kept for safety) is 0, as in ATen.
      y[r * p.OW + ow] = (w.h0 < w.h1 && w.w0 < w.w1) ? sum / static_cast<T>(w.divisor) : T(0);
    }
  }
}

template <typename T>
void avg_bwd_nchw(const T* __restrict gy, T* __restrict gx, const Pool2dParams& p, bool cip, int64_t dov) {
  const int64_t planes = p.N * p.C, in_sz = p.H * p.W, out_sz = p.OH * p.OW;
#pragma omp parallel for schedule(static) if (planes * (in_sz + out_sz * p.kh * p.kw) > kParallelGrain)
  for (int64_t pl = 0; pl < planes; ++pl) {
    T* gp = gx + pl * in_sz;
    const T* g = gy + pl * out_sz;
    std::memset(gp, 0, sizeof(T) * in_sz);
    for (int64_t oh = 0; oh < p.OH; ++oh)
      for (int64_t ow = 0; ow < p.OW; ++ow) {
        const Window w = avg_window(oh, ow, p, cip, dov);
        const T v = g[oh * p.OW + ow] / static_cast<T>(w.divisor);
        for (int64_t ih = w.h0; ih < w.h1; ++ih)
          for (int64_t iw = w.w0; iw < w.w1; ++iw) gp[ih * p.W + iw] += v;
      }
  }
}

// ---------------------------------------------------------------------------------------------
// Adaptive average pooling
// ---------------------------------------------------------------------------------------------
// Sum of n contiguous values with 8 interleaved partial sums (vectorisable; fixed order).
template <typename T>
PYIMGCLS_INLINE T plane_sum(const T* __restrict v, int64_t n) {
  T acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += v[i + l];
  for (; i < n; ++i) acc[i & 7] += v[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Global mean, NCHW: one plane of HW contiguous values per q.
template <typename T>
struct GlobalFwdNchw {
  static PYIMGCLS_INLINE void run(int64_t q0, int64_t q1, const T* const& x, T* const& y, const int64_t& HW) {
    // HW == 0 divides 0 by 0: NaN, as ATen's mean over an empty plane.
    const T count = static_cast<T>(HW);
    for (int64_t q = q0; q < q1; ++q) y[q] = plane_sum(x + q * HW, HW) / count;
  }
};

// Global mean, NHWC: one (image, block of kChannelBlock channels) per q; rows of channels are added
// in ascending pixel order, vectorised along C.
template <typename T>
struct GlobalFwdNhwc {
  static PYIMGCLS_INLINE void run(int64_t q0, int64_t q1, const T* const& x, T* const& y, const int64_t& C,
                                  const int64_t& HW) {
    const int64_t cblocks = (C + kChannelBlock - 1) / kChannelBlock;
    const T count = static_cast<T>(HW);
    for (int64_t it = q0; it < q1; ++it) {
      const int64_t n = it / cblocks, c0 = (it % cblocks) * kChannelBlock, cb = std::min(C - c0, kChannelBlock);
      const T* xn = x + n * HW * C + c0;
      T acc[kChannelBlock] = {};
      for (int64_t i = 0; i < HW; ++i) {
#pragma omp simd
        for (int64_t c = 0; c < cb; ++c) acc[c] += xn[i * C + c];
      }
      T* yn = y + n * C + c0;
#pragma omp simd
      for (int64_t c = 0; c < cb; ++c) yn[c] = acc[c] / count;
    }
  }
};

template <typename T>
void global_avg_fwd(const T* x, T* y, int64_t N, int64_t C, int64_t HW, bool cl) {
  // The short per-plane sums (7x7 = 49) run slower as AVX-512 code than as AVX2 here (measured:
  // 207 vs 84 us for 8x2048x7x7 on one core), so this body stops at AVX2.
  if (!cl) return run_pixels<GlobalFwdNchw<T>, Isa::Avx2>(N * C, HW, x, y, HW);
  const int64_t cblocks = (C + kChannelBlock - 1) / kChannelBlock;
  run_pixels<GlobalFwdNhwc<T>>(N * cblocks, kChannelBlock * HW, x, y, C, HW);
}

template <typename T>
void adaptive_fwd(const T* x, T* y, int64_t N, int64_t C, int64_t H, int64_t W,
                  int64_t OH, int64_t OW, bool cl) {
  if (OH == 1 && OW == 1) return global_avg_fwd(x, y, N, C, H * W, cl);
  if (!cl) {
    const int64_t rows = N * C * OH;
#pragma omp parallel for schedule(static) if (N * C * (H * W + OH * OW) > kParallelGrain)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t plane = r / OH, oh = r % OH;
      const T* xp = x + plane * H * W;
      const int64_t h0 = adaptive_start(oh, H, OH), h1 = adaptive_end(oh, H, OH);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t w0 = adaptive_start(ow, W, OW), w1 = adaptive_end(ow, W, OW);
        T sum = T(0);
        for (int64_t ih = h0; ih < h1; ++ih)
          for (int64_t iw = w0; iw < w1; ++iw) sum += xp[ih * W + iw];
        y[r * OW + ow] = sum / static_cast<T>((h1 - h0) * (w1 - w0));
      }
    }
    return;
  }
  const AdaptiveGeom g{N, C, H, W, OH, OW};
  run_pixels<AdaptiveFwdNhwc<T>>(N * OH * OW, C * (H * W / std::max<int64_t>(OH * OW, 1) + 1), x, y, g);
}

template <typename T>
void adaptive_bwd(const T* gy, T* gx, int64_t N, int64_t C, int64_t H, int64_t W,
                  int64_t OH, int64_t OW, bool cl) {
  const int64_t in_sz = H * W;
  if (OH == 1 && OW == 1) {
    // Global mean: every input element gets gy / (H*W) of its (n, c); written directly.
    const T count = static_cast<T>(in_sz);
    if (!cl) {
      const int64_t planes = N * C;
#pragma omp parallel for schedule(static) if (planes * in_sz > kParallelGrain)
      for (int64_t pl = 0; pl < planes; ++pl) {
        const T v = gy[pl] / count;
        T* gp = gx + pl * in_sz;
#pragma omp simd
        for (int64_t i = 0; i < in_sz; ++i) gp[i] = v;
      }
    } else {
      // One divided [C] row per image, then copied to each of its H*W pixels.
      std::vector<T> rows(static_cast<size_t>(N * C));
      for (int64_t i = 0; i < N * C; ++i) rows[i] = gy[i] / count;
      const T* rp = rows.data();
#pragma omp parallel for schedule(static) if (N * C * in_sz > kParallelGrain)
      for (int64_t r = 0; r < N * in_sz; ++r) std::memcpy(gx + r * C, rp + (r / in_sz) * C, sizeof(T) * C);
    }
    return;
  }
  if (!cl) {
    const int64_t planes = N * C;
#pragma omp parallel for schedule(static) if (planes * (in_sz + OH * OW) > kParallelGrain)
    for (int64_t pl = 0; pl < planes; ++pl) {
      T* gp = gx + pl * in_sz;
      const T* g = gy + pl * OH * OW;
      std::memset(gp, 0, sizeof(T) * in_sz);
      for (int64_t oh = 0; oh < OH; ++oh) {
        const int64_t h0 = adaptive_start(oh, H, OH), h1 = adaptive_end(oh, H, OH);
        for (int64_t ow = 0; ow < OW; ++ow) {
          const int64_t w0 = adaptive_start(ow, W, OW), w1 = adaptive_end(ow, W, OW);
          const T v = g[oh * OW + ow] / static_cast<T>((h1 - h0) * (w1 - w0));
          for (int64_t ih = h0; ih < h1; ++ih)
            for (int64_t iw = w0; iw < w1; ++iw) gp[ih * W + iw] += v;
        }
      }
    }
    return;
  }
  const AdaptiveGeom g{N, C, H, W, OH, OW};
  run_pixels<AdaptiveBwdNhwc<T>>(N * in_sz, C * (OH / std::max<int64_t>(H, 1) + 2), gy, gx, g);
}

// ---------------------------------------------------------------------------------------------
// bfloat16: the float32 kernels on blocks staged through cache
// ---------------------------------------------------------------------------------------------
// A bfloat16 call (autocast) is cut into blocks of whole units — (n, c) planes for NCHW, images for
// NHWC, the granules the float32 kernels' index and window arithmetic never crosses — of about
// kStageFloats input values. Each block's bf16 input is widened (exactly) into a thread-local float
// buffer, the float32 kernel runs on it as a smaller problem [1, planes, H, W] / [images, H, W, C]
// (its own OpenMP regions are nested, hence serial), and its float output is rounded once to
// nearest even into the bf16 result. The float staging buffers stay in L1 / L2, so memory moves
// only the bf16 input and output, 2 + 2 bytes per element where the float32 upcast around a call
// moved 2 + 4 + 4 + 4 + 4 + 2 (cast in, kernel in and out, cast out); the arithmetic and the results
// are those of the float32 kernel on the widened input, bit for bit.
// Pooling indices (max) are per unit (flat positions inside a plane), so they need no translation.
constexpr int64_t kStageFloats = 1 << 14;  // 64 KB of float input per block

struct Stage {
  std::vector<float> in, out;
};

// The block conversions, compiled per instruction set (run_isa): the baseline build's rounding is
// SSE2 unpack / shift / compare sequences, which measured slower than the upcast copies they replace.
struct WidenBf16 {
  static PYIMGCLS_INLINE void run(const uint16_t* const& src, float* const& dst, const int64_t& n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i]);
  }
};
struct NarrowBf16 {
  static PYIMGCLS_INLINE void run(const float* const& src, uint16_t* const& dst, const int64_t& n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16(src[i]);
  }
};

// units: N*C planes (NCHW) or N images (NHWC); in_unit / out_unit: values per unit of the input and
// the output; idx_unit: indices per unit (0: none). run(in, out, idx, units_in_block) calls the
// float32 kernel on the block.
template <class F>
void staged_bf16(const uint16_t* in, uint16_t* out, int64_t* idx, int64_t units, int64_t in_unit, int64_t out_unit,
                 int64_t idx_unit, const F& run) {
  if (units == 0) return;
  const int64_t per = std::max<int64_t>(1, kStageFloats / std::max<int64_t>(1, std::max(in_unit, out_unit)));
  const int64_t blocks = (units + per - 1) / per;
  const Isa isa = active_isa();
#pragma omp parallel for schedule(static) if (units * (in_unit + out_unit) > kParallelGrain)
  for (int64_t b = 0; b < blocks; ++b) {
    static thread_local Stage st;  // grow-only: no allocation or page faults after the first calls
    const int64_t u0 = b * per, nu = std::min(units, u0 + per) - u0;
    const int64_t ni = nu * in_unit, no = nu * out_unit;
    if (static_cast<int64_t>(st.in.size()) < ni) st.in.resize(ni);
    if (static_cast<int64_t>(st.out.size()) < no) st.out.resize(no);
    const uint16_t* src = in + u0 * in_unit;
    float* fi = st.in.data();
    run_isa<WidenBf16>(isa, src, fi, ni);
    run(static_cast<const float*>(fi), st.out.data(), idx_unit ? idx + u0 * idx_unit : nullptr, nu);
    uint16_t* dst = out + u0 * out_unit;
    const float* fo = st.out.data();
    run_isa<NarrowBf16>(isa, fo, dst, no);
  }
}

// A window pooling call (max / avg, forward or backward) in dt: f(in, out, idx, params) on the
// whole problem for float32 / float64, per staged block for bfloat16. `fwd`: the input is [H, W]
// per plane and the output [OH, OW] (else the reverse: backward). with_idx: idx has one index per
// output (forward) / per gradient (backward) value.
template <typename F>
void run_window(DType dt, const void* in, void* out, int64_t* idx, const Pool2dParams& p, bool cl, bool fwd,
                const F& f) {
  if (dt == DType::BFloat16) {
    const int64_t big = p.H * p.W, small = p.OH * p.OW, per = cl ? p.C : 1;
    const int64_t in_unit = (fwd ? big : small) * per, out_unit = (fwd ? small : big) * per;
    staged_bf16(static_cast<const uint16_t*>(in), static_cast<uint16_t*>(out), idx, cl ? p.N : p.N * p.C, in_unit,
                out_unit, idx ? small * per : 0, [&](const float* fi, float* fo, int64_t* ix, int64_t nu) {
                  Pool2dParams q = p;
                  if (cl) q.N = nu;
                  else q.N = 1, q.C = nu;
                  f(fi, fo, ix, q);
                });
    return;
  }
  dispatch_float(dt, "CPU pooling", [&](auto tag) {
    using T = decltype(tag);
    f(static_cast<const T*>(in), static_cast<T*>(out), idx, p);
  });
}

void check_params(const Pool2dParams& p) {
  if (p.N < 0 || p.C < 0 || p.H < 0 || p.W < 0 || p.OH < 0 || p.OW < 0)
    throw std::invalid_argument("pooling: sizes must be non-negative");
  if (p.kh < 1 || p.kw < 1 || p.sh < 1 || p.sw < 1 || p.dh < 1 || p.dw < 1 || p.ph < 0 || p.pw < 0)
    throw std::invalid_argument("pooling: kernel, stride and dilation must be positive, padding non-negative");
}

}  // namespace

void max_pool2d_fwd(DType dt, const void* x, void* y, int64_t* idx, const Pool2dParams& p, bool channels_last) {
  check_params(p);
  run_window(dt, x, y, idx, p, channels_last, true, [&](auto xs, auto ys, int64_t* ix, const Pool2dParams& q) {
    using T = std::remove_pointer_t<decltype(ys)>;
    if (channels_last)
      ix ? max_fwd_nhwc<T, true>(xs, ys, ix, q) : max_fwd_nhwc<T, false>(xs, ys, nullptr, q);
    else
      ix ? max_fwd_nchw<T, true>(xs, ys, ix, q) : max_fwd_nchw<T, false>(xs, ys, nullptr, q);
  });
}

void max_pool2d_bwd(DType dt, const void* gy, const int64_t* idx, void* gx, const Pool2dParams& p,
                    bool channels_last) {
  check_params(p);
  // the indices are only read: the staging passes them as a mutable pointer it never writes through
  run_window(dt, gy, gx, const_cast<int64_t*>(idx), p, channels_last, false,
             [&](auto gys, auto gxs, int64_t* ix, const Pool2dParams& q) {
               if (channels_last) max_bwd_nhwc(gys, ix, gxs, q);
               else max_bwd_nchw(gys, ix, gxs, q);
             });
}

void avg_pool2d_fwd(DType dt, const void* x, void* y, const Pool2dParams& p, bool count_include_pad,
                    int64_t divisor_override, bool channels_last) {
  check_params(p);
  run_window(dt, x, y, nullptr, p, channels_last, true, [&](auto xs, auto ys, int64_t*, const Pool2dParams& q) {
    if (channels_last) avg_fwd_nhwc(xs, ys, q, count_include_pad, divisor_override);
    else avg_fwd_nchw(xs, ys, q, count_include_pad, divisor_override);
  });
}

void avg_pool2d_bwd(DType dt, const void* gy, void* gx, const Pool2dParams& p, bool count_include_pad,
                    int64_t divisor_override, bool channels_last) {
  check_params(p);
  run_window(dt, gy, gx, nullptr, p, channels_last, false, [&](auto gys, auto gxs, int64_t*, const Pool2dParams& q) {
    if (channels_last) avg_bwd_nhwc(gys, gxs, q, count_include_pad, divisor_override);
    else avg_bwd_nchw(gys, gxs, q, count_include_pad, divisor_override);
  });
}

void adaptive_avg_pool2d_fwd(DType dt, const void* x, void* y, int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t OH, int64_t OW, bool channels_last) {
  if (N < 0 || C < 0 || H < 0 || W < 0 || OH < 0 || OW < 0)
    throw std::invalid_argument("adaptive_avg_pool2d: sizes must be non-negative");
  if ((OH != 1 || OW != 1) && (H == 0 || W == 0) && OH * OW > 0)
    throw std::invalid_argument("adaptive_avg_pool2d: empty input planes only pool to 1x1");
  const Pool2dParams p{N, C, H, W, OH, OW, 1, 1, 1, 1, 0, 0, 1, 1};  // the sizes only
  run_window(dt, x, y, nullptr, p, channels_last, true, [&](auto xs, auto ys, int64_t*, const Pool2dParams& q) {
    adaptive_fwd(xs, ys, q.N, q.C, q.H, q.W, q.OH, q.OW, channels_last);
  });
}

void adaptive_avg_pool2d_bwd(DType dt, const void* gy, void* gx, int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t OH, int64_t OW, bool channels_last) {
  if (N < 0 || C < 0 || H < 0 || W < 0 || OH < 1 || OW < 1)
    throw std::invalid_argument("adaptive_avg_pool2d backward: sizes must be non-negative, output non-empty");
  const Pool2dParams p{N, C, H, W, OH, OW, 1, 1, 1, 1, 0, 0, 1, 1};  // the sizes only
  run_window(dt, gy, gx, nullptr, p, channels_last, false, [&](auto gys, auto gxs, int64_t*, const Pool2dParams& q) {
    adaptive_bwd(gys, gxs, q.N, q.C, q.H, q.W, q.OH, q.OW, channels_last);
  });
}

}  // namespace pyimgcls::cpu
