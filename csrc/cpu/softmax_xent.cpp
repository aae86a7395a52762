// CPU softmax-cross-entropy: F.cross_entropy's loss and its gradient w.r.t. the logits in one pass
// over the logits, float32 and float64 (float16 / bfloat16 are upcast by the Python side).
//
// What it computes (x [N, C] logits, t [N] class indices, w [C] class weights or all ones,
// eps = label_smoothing, W = sum_c w[c], lse_i = log sum_c exp(x[i, c])):
//   nll_i    = w[t_i] * (lse_i - x[i, t_i])
//   smooth_i = sum_c w[c] * (lse_i - x[i, c])                     (only when eps > 0)
//   loss_i   = (1 - eps) * nll_i + eps / C * smooth_i,   0 for rows with t_i == ignore_index
//   none: loss_i;  sum: sum_i loss_i;  mean: sum_i loss_i / D with D = sum over non-ignored rows
//   of w[t_i] (their count without weights) -- PyTorch's weighted mean, NaN when D == 0.
//   grad[i, j] = d loss_i / d x[i, j] = a_i * p[i, j] - (1 - eps) w[t_i] [j == t_i] - eps / C * w[j]
//   with p = softmax(x[i]) and a_i = (1 - eps) w[t_i] + eps / C * W  (0 for ignored rows, whose
//   gradient row is 0 * p: zero, or NaN for a NaN row, exactly as PyTorch's autograd gives).
//   This is PyTorch's cross_entropy_loss_label_smoothing (aten/src/ATen/native/LossNLL.cpp):
//   (1 - eps) * nll_loss(log_softmax(x), t, w) + eps / C * (-(log_softmax(x) * w).sum(1)), with
//   the same denominator D for both terms of the mean.
//
// Algorithm (per row, rows split across OpenMP threads)
//   1. Online max / sum-exp over chunks of K elements (K * sizeof(T) = 8 KiB stays in L1): the chunk
//      max m_k (NaN-propagating) updates the running max m, the running sum is rescaled by
//      exp(m_old - m), and e_j = exp(x_j - m_k) is summed and, when the gradient is wanted, stored
//      straight into the gradient row. Each logit is read from memory once and exp() runs once per
//      element. With smoothing, sum_j w_j (x_j - m_k) is accumulated per chunk as well and shifted
//      to the final max afterwards (sum_c w_c (x_c - M) = sum_k [s_k + W_k (m_k - M)]), which avoids
//      the cancellation of W * lse - sum_c w_c x_c for large logits.
//   2. Row scalars: M, S = sum_c exp(x_c - M), log S, the loss, and the coefficients a, c1, c2.
//   3. Gradient pass over the (cache-resident) gradient row: g_j = a * exp(m_k - M) / S * e_j
//      - c2 * w_j, then g[t] -= c1.
//   Mean / sum: per-row losses and per-row weights go to a buffer and are summed in row order in
//   double after the parallel loop (deterministic for any thread count).
//   Special values follow PyTorch: a NaN logit makes its row's loss and gradient NaN (the max is
//   NaN-propagating and the NaN also enters S); a row containing +inf, or made only of -inf, is
//   NaN; a -inf logit alone has p = 0 (loss +inf only if it is the target, or with smoothing).
//   float32 uses a vectorised exp (Cephes polynomial, ~1 ulp; AVX-512 or AVX2, picked at run time),
//   float64 the libm exp.
//
// Memory trade-off: the forward writes the gradient [N, C] (in the input dtype) next to the loss,
//   so the backward is a single scaling pass (read N*C, write N*C) instead of re-reading the logits
//   and recomputing the softmax; the gradient buffer is held from forward to backward in place of
//   the log-probabilities PyTorch keeps, so peak memory is the same. Under no_grad it is not written.
//   The eager backward (pyimgcls/ops/softmax_xent.py) scales that buffer in place and returns it as
//   the logits' gradient when the autograd graph is not retained, so no second [N, C] buffer exists
//   then (PyTorch's backward allocates one).
//
// Cost (forward): ~ 5 * N * C FLOPs (+ N*C exps), minimum bytes = N*C*sizeof(T) read (logits)
//   + N*C*sizeof(T) written (gradient) + N * (target + loss) bytes.
//   Backward: N*C multiplies; bytes = 2 * N*C*sizeof(T) + N * (target + grad_loss) bytes.
//
// Class-probability targets (softmax_xent_prob_fwd, "Forward with class-probability targets" below)
//   use the same online max / sum-exp and chunking, with the target row read alongside the logits.
//
// Test and benchmark
//   pytest tests/test_softmax_xent.py -k cpu
//   pytest benchmarks/test_bench_softmax_xent_cpu.py
#include "softmax_xent.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common.h"

namespace pyimgcls::cpu {
namespace {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// NaN-propagating max (std::max and the max instructions drop a NaN in one of the operands).
template <typename T>
inline T nan_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

// ---------------------------------------------------------------------------------------------
// Chunk primitives. Contract (n >= 1 elements, unit stride):
//   max(x, n)              max_j x_j, NaN if any x_j is NaN
//   exp_sum(x, n, m, e)    sum_j exp(x_j - m), storing exp(x_j - m) to e[j] when e != null;
//                          m is finite and >= every non-NaN x_j
//   wsum(x, w, n, m)       sum_j w_j * (x_j - m)   (w == null: w_j = 1)
//   grad(g, n, f, w, c2)   g_j = f * g_j - c2 * w_j   (w == null: w_j = 1), in place
// ---------------------------------------------------------------------------------------------
template <typename T>
struct Prims {
  T (*max)(const T*, int64_t);
  T (*exp_sum)(const T*, int64_t, T, T*);
  T (*wsum)(const T*, const T*, int64_t, T);
  void (*grad)(T*, int64_t, T, const T*, T);
};

// Portable versions (float64 always; float32 without AVX2). Sums accumulate in double.
template <typename T>
T max_generic(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
  bool nan = false;
  for (int64_t j = 0; j < n; ++j) {
    const T v = x[j];
    m = v > m ? v : m;
    nan |= (v != v);
  }
  return nan ? std::numeric_limits<T>::quiet_NaN() : m;
}

template <typename T>
T exp_sum_generic(const T* x, int64_t n, T m, T* e) {
  double s = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const T v = std::exp(x[j] - m);
    if (e != nullptr) e[j] = v;
    s += static_cast<double>(v);
  }
  return static_cast<T>(s);
}

template <typename T>
T wsum_generic(const T* x, const T* w, int64_t n, T m) {
  double s = 0.0;
  if (w != nullptr)
    for (int64_t j = 0; j < n; ++j) s += static_cast<double>(w[j] * (x[j] - m));
  else
    for (int64_t j = 0; j < n; ++j) s += static_cast<double>(x[j] - m);
  return static_cast<T>(s);
}

template <typename T>
void grad_generic(T* g, int64_t n, T f, const T* w, T c2) {
  if (w != nullptr)
    for (int64_t j = 0; j < n; ++j) g[j] = f * g[j] - c2 * w[j];
  else
    for (int64_t j = 0; j < n; ++j) g[j] = f * g[j] - c2;
}

#ifdef PYIMGCLS_X86
// Cephes expf: exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] with
// ln 2 split in two parts for an exact reduction, exp(r) by a degree-7 polynomial (~1 ulp).
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f;
constexpr float kP3 = 4.1665795894e-2f, kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

// AVX-512: 2^n applied with vscalefps, which underflows gracefully to subnormals / 0, so only a
// clamp that keeps n finite is needed (exp(-104) is below the smallest subnormal). max(lo, x)
// returns its second operand when one is NaN, so NaN passes through and comes out NaN.
PYIMGCLS_TARGET_AVX512 inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 y = _mm512_set1_ps(kP0);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kP1));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kP2));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kP3));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kP4));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kP5));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

PYIMGCLS_TARGET_AVX512 inline __mmask16 tail_mask16(int64_t r) {
  return r >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << r) - 1u);
}

PYIMGCLS_TARGET_AVX512 float max_avx512(const float* x, int64_t n) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 m0 = ninf, m1 = ninf;
  __mmask16 nan = 0;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512 a = _mm512_loadu_ps(x + j), b = _mm512_loadu_ps(x + j + 16);
    m0 = _mm512_max_ps(m0, a);
    m1 = _mm512_max_ps(m1, b);
    nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q);
  }
  for (; j < n; j += 16) {
    // Lanes past the end load -inf, which never wins the max.
    const __m512 a = _mm512_mask_loadu_ps(ninf, tail_mask16(n - j), x + j);
    m0 = _mm512_max_ps(m0, a);
    nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
  }
  if (nan) return std::numeric_limits<float>::quiet_NaN();
  return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

PYIMGCLS_TARGET_AVX512 float exp_sum_avx512(const float* x, int64_t n, float m, float* e) {
  const __m512 vm = _mm512_set1_ps(m);
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512 a = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + j), vm));
    const __m512 b = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + j + 16), vm));
    if (e != nullptr) {
      _mm512_storeu_ps(e + j, a);
      _mm512_storeu_ps(e + j + 16, b);
    }
    s0 = _mm512_add_ps(s0, a);
    s1 = _mm512_add_ps(s1, b);
  }
  for (; j < n; j += 16) {
    const __mmask16 k = tail_mask16(n - j);
    // Lanes past the end load -inf: exp(-inf - m) = 0 for the finite m the caller guarantees.
    const __m512 a = exp512(_mm512_sub_ps(
        _mm512_mask_loadu_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()), k, x + j), vm));
    if (e != nullptr) _mm512_mask_storeu_ps(e + j, k, a);
    s0 = _mm512_add_ps(s0, a);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

// exp(d) for d = x - m <= 0 as 2^(d * log2 e): n = round(t), f = t - n in [-1/2, 1/2] (exact),
// 2^f by a degree-6 polynomial (relative-error minimax fit on [-1/2, 1/2], 2e-9 in exact arithmetic,
// <= 1.3 ulp after float32 Horner rounding, checked against float64 over the whole interval), then
// vscalefps. 12 vector operations per 16 values against 15 for exp512 above -- that difference is
// the short-row kernel's time, which is exp-bound. t = d * log2e carries the same 2^-24 relative
// rounding as exp512's x - m, so the accuracy matches. d below -150 / log2e is clamped to 2^-151,
// which scalef rounds to 0; NaN passes through max (second operand) and comes out NaN.
constexpr float kE2P1 = 6.931471825e-01f, kE2P2 = 2.402264774e-01f, kE2P3 = 5.550332367e-02f;
constexpr float kE2P4 = 9.618437849e-03f, kE2P5 = 1.339887269e-03f, kE2P6 = 1.535334159e-04f;

PYIMGCLS_TARGET_AVX512 inline __m512 exp_nonpos512(__m512 d) {
  const __m512 t = _mm512_max_ps(_mm512_set1_ps(-151.0f), _mm512_mul_ps(d, _mm512_set1_ps(kLog2e)));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 y = _mm512_set1_ps(kE2P6);
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(kE2P5));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(kE2P4));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(kE2P3));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(kE2P2));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(kE2P1));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}

// Short rows (1 <= C <= 128, no label smoothing), float32, AVX-512: the whole row lives in at
// most 8 zmm registers, so max, exp-sum and gradient run on registers in one call -- one load of
// the logits and one store of the gradient -- instead of three passes through the chunk primitives
// (each with its own call, loop set-up and horizontal reduction). For classification heads
// (C = 10 / 100) that per-row overhead, not the arithmetic, set the time. Returns false, leaving
// the row to the general path, when the max is not finite (+inf, an all -inf row, or a NaN that
// the max kept): those special rows keep exactly the general path's semantics. A NaN the max
// dropped needs no check either: it enters S through exp, so the loss (unless ignored) and the
// whole gradient row come out NaN, as on the general path.
constexpr int64_t kShortRowMax = 128;

// R rows of NV = ceil(C / 16) vectors at once (R = 2 in the row loop, 1 for a leftover row). Both
// are template parameters so every loop unrolls with constant indices and the R * NV row vectors
// stay in zmm registers (with a run-time NV the compiler kept them in a stack array). A row's work
// is one dependent chain -- max, horizontal max, exp, horizontal sum, log -- so two interleaved rows
// keep the vector units busy where one row leaves them waiting on latency. Measured on this
// project's AMD EPYC (AVX-512), N = 1024, C = 100, one thread, ns per row: 58 with the previous
// one-row kernel, 53 with exp_nonpos512 and no per-lane NaN test, 47 with two rows, 43.5 with NV
// a constant.
// Row r reads x + r * sxn and writes g + r * C (g null: no gradient); t / ignored / wt / loss are
// per row. Returns false, having written nothing, when some row's max is not finite; the caller
// then runs those rows one by one.
template <int R, int NV>
PYIMGCLS_TARGET_AVX512 bool xent_rows_short_avx512(const float* x, int64_t sxn, int64_t C, const int64_t* t,
                                                   const bool* ignored, const float* wt, float* g, float* loss) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __mmask16 tail = tail_mask16(C - 16 * (NV - 1));
  __m512 v[R][NV];
  float m[R];
  bool finite = true;
  for (int r = 0; r < R; ++r) {
    const float* xr = x + r * sxn;
    for (int k = 0; k < NV - 1; ++k) v[r][k] = _mm512_loadu_ps(xr + 16 * k);
    // Lanes past the end load -inf: never the max, and exp(-inf) = 0 in the sum.
    v[r][NV - 1] = _mm512_mask_loadu_ps(ninf, tail, xr + 16 * (NV - 1));
    __m512 mx = v[r][0];
    for (int k = 1; k < NV; ++k) mx = _mm512_max_ps(mx, v[r][k]);
    m[r] = _mm512_reduce_max_ps(mx);
    finite &= m[r] > -std::numeric_limits<float>::infinity() && m[r] < std::numeric_limits<float>::infinity();
  }
  if (!finite) return false;
  float S[R];
  for (int r = 0; r < R; ++r) {
    const __m512 vm = _mm512_set1_ps(m[r]);
    __m512 s = _mm512_setzero_ps();
    for (int k = 0; k < NV; ++k) {
      v[r][k] = exp_nonpos512(_mm512_sub_ps(v[r][k], vm));
      s = _mm512_add_ps(s, v[r][k]);
    }
    S[r] = _mm512_reduce_add_ps(s);
  }
  for (int r = 0; r < R; ++r) {
    loss[r] = ignored[r] ? 0.0f : wt[r] * (std::log(S[r]) - (x[r * sxn + t[r]] - m[r]));
    if (g == nullptr) continue;
    const __m512 f = _mm512_set1_ps((ignored[r] ? 0.0f : wt[r]) * (1.0f / S[r]));
    // The target's -w[t] is applied in the register (same rounding as a later g[t] -= w[t], without
    // reloading a value just written by a masked store).
    const int kt = ignored[r] ? -1 : static_cast<int>(t[r] / 16);
    const __mmask16 lane = static_cast<__mmask16>(1u << (t[r] & 15));
    const __m512 vw = _mm512_set1_ps(wt[r]);
    float* gr = g + r * C;
    for (int k = 0; k < NV; ++k) {
      __m512 o = _mm512_mul_ps(v[r][k], f);
      if (k == kt) o = _mm512_mask_sub_ps(o, lane, o, vw);
      if (k < NV - 1)
        _mm512_storeu_ps(gr + 16 * k, o);
      else
        _mm512_mask_storeu_ps(gr + 16 * k, tail, o);
    }
  }
  return true;
}

// xent_rows_short_avx512<R, ceil(C / 16)> for 1 <= C <= kShortRowMax.
template <int R>
PYIMGCLS_TARGET_AVX512 bool xent_rows_short_dispatch(const float* x, int64_t sxn, int64_t C, const int64_t* t,
                                                     const bool* ignored, const float* wt, float* g, float* loss) {
  switch ((C + 15) / 16) {
    case 1: return xent_rows_short_avx512<R, 1>(x, sxn, C, t, ignored, wt, g, loss);
    case 2: return xent_rows_short_avx512<R, 2>(x, sxn, C, t, ignored, wt, g, loss);
    case 3: return xent_rows_short_avx512<R, 3>(x, sxn, C, t, ignored, wt, g, loss);
    case 4: return xent_rows_short_avx512<R, 4>(x, sxn, C, t, ignored, wt, g, loss);
    case 5: return xent_rows_short_avx512<R, 5>(x, sxn, C, t, ignored, wt, g, loss);
    case 6: return xent_rows_short_avx512<R, 6>(x, sxn, C, t, ignored, wt, g, loss);
    case 7: return xent_rows_short_avx512<R, 7>(x, sxn, C, t, ignored, wt, g, loss);
    default: return xent_rows_short_avx512<R, 8>(x, sxn, C, t, ignored, wt, g, loss);
  }
}

PYIMGCLS_TARGET_AVX512 float wsum_avx512(const float* x, const float* w, int64_t n, float m) {
  const __m512 vm = _mm512_set1_ps(m);
  __m512 s = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = tail_mask16(n - j);
    const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vm);
    // Masked add: lanes past the end keep s unchanged.
    if (w != nullptr)
      s = _mm512_mask_add_ps(s, k, s, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, w + j), d));
    else
      s = _mm512_mask_add_ps(s, k, s, d);
  }
  return _mm512_reduce_add_ps(s);
}

PYIMGCLS_TARGET_AVX512 void grad_avx512(float* g, int64_t n, float f, const float* w, float c2) {
  const __m512 vf = _mm512_set1_ps(f), vc = _mm512_set1_ps(c2);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    __m512 r = _mm512_mul_ps(vf, _mm512_loadu_ps(g + j));
    r = (w != nullptr) ? _mm512_sub_ps(r, _mm512_mul_ps(vc, _mm512_loadu_ps(w + j))) : _mm512_sub_ps(r, vc);
    _mm512_storeu_ps(g + j, r);
  }
  if (j < n) {
    const __mmask16 k = tail_mask16(n - j);
    __m512 r = _mm512_mul_ps(vf, _mm512_maskz_loadu_ps(k, g + j));
    r = (w != nullptr) ? _mm512_sub_ps(r, _mm512_mul_ps(vc, _mm512_maskz_loadu_ps(k, w + j)))
                       : _mm512_sub_ps(r, vc);
    _mm512_mask_storeu_ps(g + j, k, r);
  }
}

// AVX2: 2^n built in the exponent field, valid for n >= -126, so inputs below ln(2^-126) are
// clamped for the computation and their result set to 0 afterwards (x < lo is false for NaN,
// which therefore stays NaN).
PYIMGCLS_TARGET_AVX2 inline __m256 exp256(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(lo, x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 y = _mm256_set1_ps(kP0);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP1));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP2));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP3));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP4));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP5));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

PYIMGCLS_TARGET_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

PYIMGCLS_TARGET_AVX2 inline float hmax256(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

PYIMGCLS_TARGET_AVX2 float max_avx2(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 nan = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 a = _mm256_loadu_ps(x + j);
    m = _mm256_max_ps(m, a);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  }
  float r = hmax256(m);
  bool any_nan = _mm256_movemask_ps(nan) != 0;
  for (; j < n; ++j) {
    r = x[j] > r ? x[j] : r;
    any_nan |= (x[j] != x[j]);
  }
  return any_nan ? std::numeric_limits<float>::quiet_NaN() : r;
}

PYIMGCLS_TARGET_AVX2 float exp_sum_avx2(const float* x, int64_t n, float m, float* e) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256 a = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
    const __m256 b = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vm));
    if (e != nullptr) {
      _mm256_storeu_ps(e + j, a);
      _mm256_storeu_ps(e + j + 8, b);
    }
    s0 = _mm256_add_ps(s0, a);
    s1 = _mm256_add_ps(s1, b);
  }
  for (; j + 8 <= n; j += 8) {
    const __m256 a = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
    if (e != nullptr) _mm256_storeu_ps(e + j, a);
    s0 = _mm256_add_ps(s0, a);
  }
  float s = hsum256(_mm256_add_ps(s0, s1));
  for (; j < n; ++j) {
    const float v = std::exp(x[j] - m);
    if (e != nullptr) e[j] = v;
    s += v;
  }
  return s;
}

PYIMGCLS_TARGET_AVX2 float wsum_avx2(const float* x, const float* w, int64_t n, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 s = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + j), vm);
    s = (w != nullptr) ? _mm256_add_ps(s, _mm256_mul_ps(_mm256_loadu_ps(w + j), d)) : _mm256_add_ps(s, d);
  }
  float r = hsum256(s);
  for (; j < n; ++j) r += (w != nullptr) ? w[j] * (x[j] - m) : (x[j] - m);
  return r;
}

PYIMGCLS_TARGET_AVX2 void grad_avx2(float* g, int64_t n, float f, const float* w, float c2) {
  const __m256 vf = _mm256_set1_ps(f), vc = _mm256_set1_ps(c2);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 r = _mm256_mul_ps(vf, _mm256_loadu_ps(g + j));
    r = (w != nullptr) ? _mm256_sub_ps(r, _mm256_mul_ps(vc, _mm256_loadu_ps(w + j))) : _mm256_sub_ps(r, vc);
    _mm256_storeu_ps(g + j, r);
  }
  for (; j < n; ++j) g[j] = f * g[j] - c2 * (w != nullptr ? w[j] : 1.0f);
}
#endif  // PYIMGCLS_X86

template <typename T>
Prims<T> generic_prims() {
  return Prims<T>{max_generic<T>, exp_sum_generic<T>, wsum_generic<T>, grad_generic<T>};
}

template <typename T>
Prims<T> select_prims(Isa isa);

template <>
Prims<double> select_prims<double>(Isa) {
  return generic_prims<double>();
}

template <>
Prims<float> select_prims<float>(Isa isa) {
#ifdef PYIMGCLS_X86
  if (isa == Isa::Avx512) return Prims<float>{max_avx512, exp_sum_avx512, wsum_avx512, grad_avx512};
  if (isa == Isa::Avx2) return Prims<float>{max_avx2, exp_sum_avx2, wsum_avx2, grad_avx2};
#endif
  (void)isa;
  return generic_prims<float>();
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------
template <typename I>
int64_t first_bad_target(const I* t, int64_t N, int64_t C, int64_t ignore_index) {
  for (int64_t i = 0; i < N; ++i) {
    const int64_t v = static_cast<int64_t>(t[i]);
    if (v != ignore_index && (v < 0 || v >= C)) return i;
  }
  return -1;
}

// Problem constants shared by every row.
template <typename T>
struct Problem {
  const T* x;
  int64_t sxn;
  const T* w;    // [C] or null
  const T* Wk;   // [nch] weight sum per chunk (chunk length without weights); used with smoothing
  T W;           // sum of all weights (C without weights)
  T eps;         // label smoothing
  int64_t C, K, nch;
  bool want_grad;
};

template <typename T>
struct RowResult {
  T loss, rw;
};

// One row: steps 1-3 of the header. mk / sk: per-chunk scratch of nch elements.
template <typename T>
RowResult<T> xent_row(const Prims<T>& P, const Problem<T>& pb, int64_t i, int64_t t, bool ignored, T* g,
                      T* mk, T* sk) {
  constexpr T kInf = std::numeric_limits<T>::infinity();
  const T* x = pb.x + i * pb.sxn;
  const bool smooth = pb.eps > T(0);

  // 1. Online max / sum-exp, chunk by chunk.
  T m = -kInf, s = T(0);
  for (int64_t k = 0; k < pb.nch; ++k) {
    const int64_t j0 = k * pb.K;
    const int64_t n = std::min(pb.K, pb.C - j0);
    const T mn = nan_max(m, P.max(x + j0, n));
    mk[k] = mn;
    if (mn == -kInf) {
      // Every logit so far is -inf: nothing to add to S yet (exp(-inf - -inf) would be NaN and
      // poison a row that has finite logits later). e_j = exp(-inf - M) = 0 for any finite M.
      if (g != nullptr) std::fill(g + j0, g + j0 + n, T(0));
      if (smooth) sk[k] = P.wsum(x + j0, pb.w ? pb.w + j0 : nullptr, n, T(0));
      continue;
    }
    // s == 0 until the first finite chunk: skip the rescale (and its exp) there.
    s = (s == T(0) ? T(0) : s * std::exp(m - mn)) + P.exp_sum(x + j0, n, mn, g ? g + j0 : nullptr);
    m = mn;
    if (smooth) sk[k] = P.wsum(x + j0, pb.w ? pb.w + j0 : nullptr, n, mn);
  }

  // 2. Row scalars. M == -inf (all logits -inf, or C == 0) gives NaN through x_t - M and
  //    exp(m_k - M), as log_softmax does in PyTorch.
  const T M = m, S = s, logS = std::log(S);
  RowResult<T> res{T(0), T(0)};
  T a = T(0), c1 = T(0), c2 = T(0);
  if (!ignored) {
    const T wt = pb.w ? pb.w[t] : T(1);
    const T nll = wt * (logS - (x[t] - M));
    if (smooth) {
      T sw = T(0);  // sum_c w_c (x_c - M)
      for (int64_t k = 0; k < pb.nch; ++k) sw += (mk[k] == -kInf) ? sk[k] : sk[k] + pb.Wk[k] * (mk[k] - M);
      const T smooth_loss = pb.W * logS - sw;
      const T ec = pb.eps / static_cast<T>(pb.C);
      res.loss = (T(1) - pb.eps) * nll + ec * smooth_loss;
      a = (T(1) - pb.eps) * wt + ec * pb.W;
      c1 = (T(1) - pb.eps) * wt;
      c2 = ec;
    } else {
      res.loss = nll;
      a = wt;
      c1 = wt;
    }
    res.rw = wt;
  }

  // 3. Gradient from the stored exponentials: p_j = e_j * exp(m_k - M) / S.
  if (g != nullptr) {
    const T inv_s = T(1) / S;
    for (int64_t k = 0; k < pb.nch; ++k) {
      const int64_t j0 = k * pb.K;
      const int64_t n = std::min(pb.K, pb.C - j0);
      // exp(m_k - M) is exactly 1 for the chunk holding the max (every chunk of a short row);
      // for M = +-inf or NaN the skipped exp would not change the NaN outcome (S is NaN or 0).
      const T f = (mk[k] == M) ? inv_s : std::exp(mk[k] - M) * inv_s;
      P.grad(g + j0, n, a * f, pb.w ? pb.w + j0 : nullptr, c2);
    }
    if (!ignored) g[t] -= c1;
  }
  return res;
}

// Below this many logits the OpenMP fork/join costs more than a second core saves.
constexpr int64_t kParallelMin = int64_t(1) << 14;

template <typename T, typename I>
int64_t fwd_t(Isa isa, const T* x, int64_t sxn, const I* target, const T* w, int64_t N, int64_t C,
              int64_t ignore_index, T eps, XentReduction red, T* loss, T* grad, T* denom) {
  const int64_t bad = first_bad_target(target, N, C, ignore_index);
  if (bad >= 0) return bad;
  if (N <= 0) {
    if (red == XentReduction::Mean) {
      loss[0] = std::numeric_limits<T>::quiet_NaN();  // 0 / 0, as PyTorch
      denom[0] = T(0);
    } else if (red == XentReduction::Sum) {
      loss[0] = T(0);
    }
    return -1;
  }
  const Prims<T> P = select_prims<T>(isa);
  Problem<T> pb{};
  pb.x = x;
  pb.sxn = sxn;
  pb.w = w;
  pb.eps = eps;
  pb.C = C;
  pb.K = 8192 / static_cast<int64_t>(sizeof(T));
  pb.nch = ceil_div(C, pb.K);
  pb.want_grad = grad != nullptr;

  // Weight sums (row independent): per chunk for the smoothing shift, and in total.
  std::vector<T> wk(static_cast<size_t>(std::max<int64_t>(pb.nch, 1)));
  double wtot = 0.0;
  for (int64_t k = 0; k < pb.nch; ++k) {
    const int64_t j0 = k * pb.K, n = std::min(pb.K, C - j0);
    double sk = 0.0;
    if (w != nullptr)
      for (int64_t j = 0; j < n; ++j) sk += static_cast<double>(w[j0 + j]);
    else
      sk = static_cast<double>(n);
    wk[k] = static_cast<T>(sk);
    wtot += sk;
  }
  pb.Wk = wk.data();
  pb.W = static_cast<T>(wtot);

  const int nt = (N * std::max<int64_t>(C, 1) < kParallelMin) ? 1 : std::max(1, omp_get_max_threads());
  const int64_t per_thread = 2 * std::max<int64_t>(pb.nch, 1);
  std::vector<T> scratch(static_cast<size_t>(nt * per_thread));
  [[maybe_unused]] const bool short_rows = isa == Isa::Avx512 && eps == T(0) && C >= 1 && C <= kShortRowMax;
  std::vector<T> rows;  // per-row (loss, weight) for mean / sum
  if (red != XentReduction::None) rows.resize(static_cast<size_t>(2 * N));

  auto store = [&](int64_t i, T row_loss, T row_weight) {
    if (red == XentReduction::None) {
      loss[i] = row_loss;
    } else {
      rows[2 * i] = row_loss;
      rows[2 * i + 1] = row_weight;
    }
  };
  // Rows go in blocks of two so the short-row kernel can interleave them (see there).
  const int64_t nblocks = ceil_div(N, 2);
  auto run_block = [&](int64_t b, T* mk, T* sk) {
    const int64_t i0 = 2 * b, nr = std::min<int64_t>(2, N - i0);
    int64_t t[2];
    bool ignored[2];
    T rw[2];
    for (int64_t r = 0; r < nr; ++r) {
      t[r] = static_cast<int64_t>(target[i0 + r]);
      ignored[r] = t[r] == ignore_index;
      rw[r] = ignored[r] ? T(0) : (w ? w[t[r]] : T(1));
    }
#ifdef PYIMGCLS_X86
    if constexpr (std::is_same_v<T, float>) {
      if (short_rows && nr == 2) {
        T l[2];
        if (xent_rows_short_dispatch<2>(x + i0 * sxn, sxn, C, t, ignored, rw, grad ? grad + i0 * C : nullptr, l)) {
          store(i0, l[0], rw[0]);
          store(i0 + 1, l[1], rw[1]);
          return;
        }
      }
    }
#endif
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t i = i0 + r;
      T* gi = grad ? grad + i * C : nullptr;
#ifdef PYIMGCLS_X86
      if constexpr (std::is_same_v<T, float>) {
        T l;
        if (short_rows && xent_rows_short_dispatch<1>(x + i * sxn, sxn, C, t + r, ignored + r, rw + r, gi, &l)) {
          store(i, l, rw[r]);
          continue;
        }
      }
#endif
      const RowResult<T> res = xent_row(P, pb, i, t[r], ignored[r], gi, mk, sk);
      store(i, res.loss, res.rw);
    }
  };
  if (nt == 1) {
    // No OpenMP region at all: even a one-thread region costs a visible share of a small batch.
    for (int64_t b = 0; b < nblocks; ++b) run_block(b, scratch.data(), scratch.data() + per_thread / 2);
  } else {
#pragma omp parallel num_threads(nt)
    {
      T* mk = scratch.data() + omp_get_thread_num() * per_thread;
#pragma omp for schedule(static)
      for (int64_t b = 0; b < nblocks; ++b) run_block(b, mk, mk + per_thread / 2);
    }
  }

  if (red != XentReduction::None) {
    // Fixed row order, double accumulation: the same bits for any thread count.
    double total = 0.0, d = 0.0;
    for (int64_t i = 0; i < N; ++i) {
      total += static_cast<double>(rows[2 * i]);
      d += static_cast<double>(rows[2 * i + 1]);
    }
    if (red == XentReduction::Mean) {
      loss[0] = static_cast<T>(total / d);  // D == 0 (all ignored): 0 / 0 = NaN, as PyTorch
      denom[0] = static_cast<T>(d);
    } else {
      loss[0] = static_cast<T>(total);
    }
  }
  return -1;
}

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------
template <typename T, typename I>
void bwd_t(const T* saved, const I* target, const T* go, int64_t go_stride, bool per_row, const T* denom,
           int64_t N, int64_t C, int64_t ignore_index, T* out) {
  if (N <= 0 || C <= 0) return;
  T common = per_row ? T(0) : go[0];
  if (!per_row && denom != nullptr)
    // PyTorch's weighted mean with a zero denominator gives NaN gradient rows (0 * inf).
    common = (denom[0] == T(0)) ? std::numeric_limits<T>::quiet_NaN() : common / denom[0];
  // out may be saved itself (the eager backward scales in place): element j is read before it is
  // written, by the same iteration.
  auto row = [&](int64_t i) {
    // target == null: probability targets, no row is ignored
    const bool ignored = target != nullptr && static_cast<int64_t>(target[i]) == ignore_index;
    // Ignored rows: 0 * saved (the saved row is 0 * p), so only a NaN row stays NaN.
    const T sc = ignored ? T(0) : (per_row ? go[i * go_stride] : common);
    const T* s = saved + i * C;
    T* o = out + i * C;
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) o[j] = s[j] * sc;
  };
  if (N * C < kParallelMin || omp_get_max_threads() == 1) {
    for (int64_t i = 0; i < N; ++i) row(i);  // no OpenMP region: its cost shows on small batches
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) row(i);
}


// ---------------------------------------------------------------------------------------------
// Forward with class-probability targets (softmax_xent_prob_fwd; header comment of the .h).
//   With v_j = w_j t'_j = w_j ((1 - eps) t_j + eps / C) and V = sum_j v_j, per row:
//   loss = V * lse - sum_j v_j x_j = V log S - sum_j v_j (x_j - M),  grad_j = V p_j - v_j.
//   Same chunked online max / sum-exp as xent_row (the exponentials go straight into the gradient
//   row); sum_j v_j (x_j - m_k) is accumulated per chunk against the chunk's running max and shifted
//   to the final max afterwards, as the smoothing term is above, to avoid the cancellation of
//   V * lse - sum_j v_j x_j for large logits. Reads x and t once each, writes the gradient once.
//   Cost: ~ 9 * N * C FLOPs + N*C exps; bytes = 2 * N*C*sizeof(T) read + N*C*sizeof(T) written.
// ---------------------------------------------------------------------------------------------

// (sum_j v_j (x_j - m), sum_j v_j) over one chunk, v_j = w_j (ceps t_j + ec), w == null: w_j = 1.
// Sums in T within a chunk (at most 8 KiB of logits), in double across chunks.
template <typename T>
inline void prob_chunk_sums(const T* x, const T* t, const T* w, int64_t n, T m, T ceps, T ec, T& a, T& v) {
  T sa = T(0), sv = T(0);
  if (w != nullptr) {
#pragma omp simd reduction(+ : sa, sv)
    for (int64_t j = 0; j < n; ++j) {
      const T vj = w[j] * (ceps * t[j] + ec);
      sa += vj * (x[j] - m);
      sv += vj;
    }
  } else {
#pragma omp simd reduction(+ : sa, sv)
    for (int64_t j = 0; j < n; ++j) {
      const T vj = ceps * t[j] + ec;
      sa += vj * (x[j] - m);
      sv += vj;
    }
  }
  a = sa;
  v = sv;
}

// g_j = f * g_j - w_j (ceps t_j + ec), in place (g holds exp(x_j - m_k) on entry).
template <typename T>
inline void prob_chunk_grad(T* g, const T* t, const T* w, int64_t n, T f, T ceps, T ec) {
  if (w != nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) g[j] = f * g[j] - w[j] * (ceps * t[j] + ec);
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) g[j] = f * g[j] - (ceps * t[j] + ec);
  }
}

// One row. mk / ak / vk: per-chunk scratch of nch elements (running max, shifted sum, sum of v).
template <typename T>
T prob_row(const Prims<T>& P, const T* x, const T* t, const T* w, int64_t C, int64_t K, int64_t nch, T ceps,
           T ec, T* g, T* mk, T* ak, T* vk) {
  constexpr T kInf = std::numeric_limits<T>::infinity();
  T m = -kInf, s = T(0);
  for (int64_t k = 0; k < nch; ++k) {
    const int64_t j0 = k * K;
    const int64_t n = std::min(K, C - j0);
    const T* wj = w ? w + j0 : nullptr;
    const T mn = nan_max(m, P.max(x + j0, n));
    mk[k] = mn;
    if (mn == -kInf) {
      // All logits so far -inf (see xent_row): e_j = 0; the shift is applied from 0 below.
      if (g != nullptr) std::fill(g + j0, g + j0 + n, T(0));
      prob_chunk_sums(x + j0, t + j0, wj, n, T(0), ceps, ec, ak[k], vk[k]);
      continue;
    }
    s = (s == T(0) ? T(0) : s * std::exp(m - mn)) + P.exp_sum(x + j0, n, mn, g ? g + j0 : nullptr);
    m = mn;
    prob_chunk_sums(x + j0, t + j0, wj, n, mn, ceps, ec, ak[k], vk[k]);
  }
  const T M = m, S = s, logS = std::log(S);
  double sa = 0.0, sv = 0.0;  // sum_j v_j (x_j - M), V
  for (int64_t k = 0; k < nch; ++k) {
    sa += static_cast<double>((mk[k] == -kInf) ? ak[k] : ak[k] + vk[k] * (mk[k] - M));
    sv += static_cast<double>(vk[k]);
  }
  const T V = static_cast<T>(sv);
  const T loss = V * logS - static_cast<T>(sa);
  if (g != nullptr) {
    const T inv_s = T(1) / S;
    for (int64_t k = 0; k < nch; ++k) {
      const int64_t j0 = k * K;
      const int64_t n = std::min(K, C - j0);
      const T f = (mk[k] == M) ? inv_s : std::exp(mk[k] - M) * inv_s;
      prob_chunk_grad(g + j0, t + j0, w ? w + j0 : nullptr, n, V * f, ceps, ec);
    }
  }
  return loss;
}

template <typename T>
void prob_fwd_t(Isa isa, const T* x, int64_t sxn, const T* target, int64_t stn, const T* w, int64_t N, int64_t C,
                T eps, XentReduction red, T* loss, T* grad, T* denom) {
  if (red == XentReduction::Mean) denom[0] = static_cast<T>(N);
  if (N <= 0) {
    if (red == XentReduction::Mean) loss[0] = std::numeric_limits<T>::quiet_NaN();  // 0 / 0, as PyTorch
    if (red == XentReduction::Sum) loss[0] = T(0);
    return;
  }
  const Prims<T> P = select_prims<T>(isa);
  const int64_t K = 8192 / static_cast<int64_t>(sizeof(T));
  const int64_t nch = std::max<int64_t>(ceil_div(C, K), 1);
  // C == 0: eps / C is NaN, as in PyTorch's formula; the row then has no terms and its loss is
  // V log S with V = 0 and S = 0, i.e. NaN, as PyTorch's 0-class log_softmax gives.
  const T ceps = T(1) - eps, ec = eps / static_cast<T>(C);
  const int nt = (N * std::max<int64_t>(C, 1) < kParallelMin) ? 1 : std::max(1, omp_get_max_threads());
  const int64_t per_thread = 3 * nch;
  std::vector<T> scratch(static_cast<size_t>(nt * per_thread));
  std::vector<T> rows;  // per-row losses for mean / sum
  if (red != XentReduction::None) rows.resize(static_cast<size_t>(N));
  T* out = red == XentReduction::None ? loss : rows.data();
  auto row = [&](int64_t i, T* mk) {
    out[i] = prob_row(P, x + i * sxn, target + i * stn, w, C, K, C > 0 ? nch : 0, ceps, ec,
                      grad ? grad + i * C : nullptr, mk, mk + nch, mk + 2 * nch);
  };
  if (nt == 1) {
    for (int64_t i = 0; i < N; ++i) row(i, scratch.data());
  } else {
#pragma omp parallel num_threads(nt)
    {
      T* mk = scratch.data() + omp_get_thread_num() * per_thread;
#pragma omp for schedule(static)
      for (int64_t i = 0; i < N; ++i) row(i, mk);
    }
  }
  if (red != XentReduction::None) {
    double total = 0.0;  // fixed row order: the same bits for any thread count
    for (int64_t i = 0; i < N; ++i) total += static_cast<double>(rows[i]);
    loss[0] = static_cast<T>(red == XentReduction::Mean ? total / static_cast<double>(N) : total);
  }
}
}  // namespace

int64_t softmax_xent_fwd(DType dt, const void* x, int64_t sxn, const void* target, bool target_i32,
                         const void* weight, int64_t N, int64_t C, int64_t ignore_index,
                         double label_smoothing, XentReduction reduction, void* loss, void* grad,
                         void* denom) {
  if (N < 0 || C < 0) throw std::invalid_argument("softmax_xent_fwd: N and C must be >= 0");
  if (reduction == XentReduction::Mean && denom == nullptr)
    throw std::invalid_argument("softmax_xent_fwd: reduction 'mean' needs the denominator output");
  const Isa isa = active_isa();
  auto run = [&](auto tag, auto itag) {
    using T = decltype(tag);
    using I = decltype(itag);
    return fwd_t<T, I>(isa, static_cast<const T*>(x), sxn, static_cast<const I*>(target),
                       static_cast<const T*>(weight), N, C, ignore_index, static_cast<T>(label_smoothing),
                       reduction, static_cast<T*>(loss), static_cast<T*>(grad), static_cast<T*>(denom));
  };
  return dispatch_float(dt, "CPU softmax_xent",
                        [&](auto tag) { return target_i32 ? run(tag, int32_t{}) : run(tag, int64_t{}); });
}

void softmax_xent_bwd(DType dt, const void* saved, const void* target, bool target_i32,
                      const void* grad_loss, int64_t go_stride, bool per_row, const void* denom,
                      int64_t N, int64_t C, int64_t ignore_index, void* grad_in) {
  auto run = [&](auto tag, auto itag) {
    using T = decltype(tag);
    using I = decltype(itag);
    bwd_t<T, I>(static_cast<const T*>(saved), static_cast<const I*>(target), static_cast<const T*>(grad_loss),
                go_stride, per_row, static_cast<const T*>(denom), N, C, ignore_index, static_cast<T*>(grad_in));
  };
  dispatch_float(dt, "CPU softmax_xent", [&](auto tag) {
    if (target_i32) run(tag, int32_t{});
    else run(tag, int64_t{});
  });
}

void softmax_xent_prob_fwd(DType dt, const void* x, int64_t sxn, const void* target, int64_t stn,
                           const void* weight, int64_t N, int64_t C, double label_smoothing,
                           XentReduction reduction, void* loss, void* grad, void* denom) {
  if (N < 0 || C < 0) throw std::invalid_argument("softmax_xent_prob_fwd: N and C must be >= 0");
  if (reduction == XentReduction::Mean && denom == nullptr)
    throw std::invalid_argument("softmax_xent_prob_fwd: reduction 'mean' needs the denominator output");
  const Isa isa = active_isa();
  dispatch_float(dt, "CPU softmax_xent_prob", [&](auto tag) {
    using T = decltype(tag);
    prob_fwd_t<T>(isa, static_cast<const T*>(x), sxn, static_cast<const T*>(target), stn,
                  static_cast<const T*>(weight), N, C, static_cast<T>(label_smoothing), reduction,
                  static_cast<T*>(loss), static_cast<T*>(grad), static_cast<T*>(denom));
  });
}

const char* softmax_xent_isa() { return isa_name(active_isa()); }

}  // namespace pyimgcls::cpu
