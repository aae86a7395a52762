// CPU BatchNorm family: batch statistics, the fused normalize + residual + activation forward, the
// running-statistics update and the backward, in float32 and float64, and with bfloat16 activations
// (x, residual, y, grad, out, grad_input, grad_pre; "Storage type" below) around float32 vectors and
// sums (the Python layer computes float16 in float32). Tensors are [N, C, S] views (S = H*W), NCHW
// or NHWC (batchnorm.h).
//
// What it computes (M = N*S values per channel)
//   stats:  mean[c] = sum x / M,  var[c] = sum (x - mean)^2 / M             (biased, as PyTorch saves)
//   fwd:    y = act((x - mean) * invstd * w + b + r),   invstd = 1 / sqrt(var + eps)
//   update: rm = (1-m) rm + m mean,  rv = (1-m) rv + m var M / (M - 1)
//   bwd:    gp = select(act kept out, grad, 0);  gb = sum gp;  gw = sum gp xhat;
//           gx = w invstd (gp - gb/M - xhat gw/M) (training),  w invstd gp (eval),  xhat = (x-mean) invstd
//
// Algorithm
//   Statistics are Chan's merge of small blocks, each measured in two float64 sweeps while it is in
//   cache: the block mean K = sum x / n, then d = x - K, block M2 = sum d^2 - (sum d)^2 / n (the
//   second term only mops up K's rounding). Blocks (n, mean, M2) are merged in a fixed order in
//   float64 (n = na + nb, delta = mb - ma, mean = ma + delta nb / n, M2 = M2a + M2b +
//   delta^2 na nb / n); var = M2 / M. Why not one sweep of shifted sums with K = the channel's first
//   value, accumulated in T: when that value is far from the mean (an outlier), d ~ D >> std and
//   sum d^2 - (sum d)^2 / M cancels to a few digits; and a float32 sum of d^2 that holds one large
//   outlier term rounds every later small term to its ulp. Measured (test_batchnorm_welford.py):
//   relative variance errors of 3e-3..3e-2 before, ~1e-7 after.
//   The second sweep re-reads a block of at most kBlock values (NCHW) or kFlushRows rows (NHWC)
//   from L1/L2, so memory traffic stays one read of x.
//   NCHW: one OpenMP work item per channel, walking N contiguous planes of S in blocks (omp simd).
//   NHWC: channels are contiguous, so the N*S rows are cut into at most kMaxChunks row chunks fixed
//   by the shape alone (never by the thread count); each chunk merges its row blocks into
//   per-channel float64 (mean, M2) (inner loops along C, vectorised), and the chunks are merged in
//   chunk order: a deterministic two-level reduction.
//   The element-wise passes (forward, grad_input) are one work item per (n, c) plane (NCHW) or per
//   row block (NHWC) with per-channel coefficients hoisted out of the inner loop.
//   The backward reduction computes gp on the fly from grad and the saved output (and writes it
//   when the residual needs it), then its two sums with the same two-level scheme.
//
//   bfloat16 activations: the same loops, each element widened on load and rounded once (nearest
//   even) on store; the loops are compiled for AVX-512 / AVX2 / the baseline (par_for), float32 and
//   float64 only for the baseline (their results stay those of every earlier build).
//
// Cost (Q = N*C*S elements, T = sizeof(element); bfloat16: 2 bytes per activation element)
//   training fwd: stats read Q, normalize reads Q (+Q residual) and writes Q:  min bytes T*(3Q [+Q])
//   eval fwd:     T*(2Q [+Q]);   bwd (training): reduce reads grad, x (+out), elementwise reads grad,
//                 x (+out) and writes gx: min bytes T*(3Q [+Q out] [+Q grad_pre]); ~10 flops/element.
//
// Test and benchmark
//   pytest tests/test_batchnorm.py -k cpu
//   pytest benchmarks/test_bench_batchnorm_cpu.py
#include "batchnorm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <vector>

#include "common.h"

namespace pyimgcls::cpu {
namespace {

// Below this many elements a single thread beats the cost of waking the OpenMP team.
constexpr int64_t kParallelGrain = 1 << 15;
// NHWC reductions: at most this many row chunks (float64 partials: kMaxChunks * 2C values), each
// of at least kMinChunkRows rows.
constexpr int64_t kMaxChunks = 64;
constexpr int64_t kMinChunkRows = 64;

inline bool parallel(int64_t work) { return work >= kParallelGrain && omp_get_max_threads() > 1; }

// Storage type X of the activation tensors (x, residual, y, grad, out, grad_input, grad_pre) and
// compute type T (the per-channel vectors, every sum): X = T for float32 / float64; X = uint16_t
// (bfloat16 bits) with T = float under autocast: each element is widened exactly on load (val) and
// rounded once, to nearest even, on store (put), so a bf16 pass moves half the bytes of a float32
// one and computes the same float32 arithmetic on the same values.
template <typename X>
PYIMGCLS_INLINE auto val(X v) {
  if constexpr (std::is_same_v<X, uint16_t>) return bf16_to_float(v);
  else return v;
}
template <typename X, typename T>
PYIMGCLS_INLINE X put(T v) {
  if constexpr (std::is_same_v<X, uint16_t>) return float_to_bf16(v);
  else return v;
}

// f(T{}, X{}, isa) for dt: (float, float) and (double, double) on the baseline build, so float32 /
// float64 results do not depend on the CPU; (float, uint16_t) for bfloat16 on the widest
// instruction set active (isa.h), where the widening and rounding are a few vector instructions
// instead of SSE2's unpack / shift / compare sequences (measured: the baseline bf16 pass ran 1.3-2x
// slower than the float32 one on the same elements, benchmarks/NOTES.md).
template <typename F>
void dispatch_storage(DType dt, F&& f) {
  if (dt == DType::BFloat16) return f(float{}, uint16_t{}, active_isa());
  dispatch_float(dt, "CPU batch_norm", [&](auto t) { f(t, t, active_isa()); });
}

// The OpenMP loops: `for i in [0, n): body(i)` (parallel when `par`) compiled for isa. The loop is
// written in a wrapper with the target attribute, so its outlined OpenMP function has it too, and
// the body (an always-inline lambda) is inlined into that function: an OpenMP region inside an
// always-inline body would be outlined before inlining, with the baseline target.
#define PYIMGCLS_LAMBDA_INLINE __attribute__((always_inline))

template <class F>
void par_for_generic(int64_t n, bool par, const F& body) {
#pragma omp parallel for schedule(static) if (par)
  for (int64_t i = 0; i < n; ++i) body(i);
}
#ifdef PYIMGCLS_X86
template <class F>
PYIMGCLS_TARGET_AVX2 void par_for_avx2(int64_t n, bool par, const F& body) {
#pragma omp parallel for schedule(static) if (par)
  for (int64_t i = 0; i < n; ++i) body(i);
}
template <class F>
PYIMGCLS_TARGET_AVX512 void par_for_avx512(int64_t n, bool par, const F& body) {
#pragma omp parallel for schedule(static) if (par)
  for (int64_t i = 0; i < n; ++i) body(i);
}
#endif

// kWide: the wider variants exist (bfloat16 storage); float32 / float64 bodies are only built for
// the baseline.
template <bool kWide, class F>
void par_for(Isa isa, int64_t n, bool par, const F& body) {
#ifdef PYIMGCLS_X86
  if constexpr (kWide) {
    if (isa == Isa::Avx512) return par_for_avx512(n, par, body);
    if (isa == Isa::Avx2) return par_for_avx2(n, par, body);
  }
#endif
  (void)isa;
  par_for_generic(n, par, body);
}

// The activation (apply_act / act_grad, common.h) is a template argument so that the loops below
// compile to branch-free blends (dispatch_act, common.h, picks it).
// Element loops of float32 / float64 with a smooth activation (silu, hardswish, sigmoid,
// hardsigmoid) also take the wide builds: the baseline SSE2 build cannot vectorise act_exp's
// rounding, so EfficientNet's eval batch norm + SiLU ran 9-10x PyTorch's time. The builds' results
// differ in the last bits (act_exp uses FMA where the build has it), as the standalone activation's
// always did; tests/test_activations.py checks each build against float64.
template <typename X, Act act>
constexpr bool kWideLoops = std::is_same_v<X, uint16_t> || !(act == Act::None || act == Act::ReLU || act == Act::ReLU6);

// Fixed chunking of `rows` rows (depends on the shape only, so results never depend on threads).
inline int64_t num_chunks(int64_t rows) {
  return std::max<int64_t>(1, std::min<int64_t>(kMaxChunks, rows / kMinChunkRows));
}

// ----------------------------------------------------------------------------- statistics
// Block sizes of the two-sweep statistics: NHWC blocks of kFlushRows rows (x C channels), NCHW blocks
// of kBlock contiguous values of one plane (16-32 KB: the second sweep hits L1).
constexpr int64_t kFlushRows = 128;
constexpr int64_t kBlock = 4096;
// NCHW planes of fewer values than this: the bf16 statistics on the baseline build (stats_impl
// says why), the forward's element-wise pass as one C*S loop per image (fwd_impl, every type).
constexpr int64_t kShortPlane = 64;

// The per-channel vectors vs[k] ([C] each) copied per element of an NCHW image: [k][C * S], so that
// short planes run as one contiguous C*S loop (fwd_impl, bwd_impl).
template <typename T>
std::vector<T> per_element(int64_t C, int64_t S, std::initializer_list<const T*> vs) {
  const int64_t CS = C * S;
  std::vector<T> out(vs.size() * static_cast<size_t>(CS));
  T* o = out.data();
  for (const T* v : vs)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t s = 0; s < S; ++s) *o++ = v[c];
  return out;
}

// Chan's merge of a block (nb values, mean mb, M2 m2b) into a running (na, ma, m2a).
inline void chan_merge(double na, double& ma, double& m2a, double nb, double mb, double m2b) {
  const double n = na + nb;
  if (n == 0.0) return;
  const double delta = mb - ma;
  ma += delta * (nb / n);
  m2a += m2b + delta * delta * (na * nb / n);
}

// (mean, M2) of n >= 1 contiguous values, two float64 sweeps. Always inlined, so it is compiled
// for the instruction set of the loop that calls it (par_for).
template <typename X>
PYIMGCLS_INLINE void block_moments(const X* p, int64_t n, double& mean, double& m2) {
  const double dn = static_cast<double>(n);
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(val(p[i]));
  const double K = s / dn;
  double a = 0.0, b = 0.0;
#pragma omp simd reduction(+ : a, b)
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(val(p[i])) - K;
    a += d;
    b += d * d;
  }
  mean = K + a / dn;
  m2 = std::max(0.0, b - a * a / dn);
}

template <typename T, typename X>
void stats_impl(const X* x, T* mean, T* var, int64_t N, int64_t C, int64_t S, bool cl, Isa isa) {
  const int64_t M = N * S;
  if (M == 0) {
    for (int64_t c = 0; c < C; ++c) mean[c] = var[c] = T(NAN);
    return;
  }
  auto finish = [&](int64_t c, double m, double m2) {
    mean[c] = static_cast<T>(m);
    var[c] = static_cast<T>(m2 / static_cast<double>(M));
  };
  if (!cl) {
    // Planes shorter than a few vectors: the wide build's reduction epilogues (three horizontal
    // sums of 8 doubles per plane) cost more than its lanes gain (measured, bf16 [16, 512, 2, 2]:
    // 0.34 ms AVX-512, 0.15 ms baseline), so those stay on the baseline build.
    par_for<std::is_same_v<X, uint16_t>>(S < kShortPlane ? Isa::Generic : isa, C, parallel(N * C * S),
                                          [&](int64_t c) PYIMGCLS_LAMBDA_INLINE {
      double n_acc = 0.0, m = 0.0, m2 = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        const X* plane = x + (n * C + c) * S;
        for (int64_t s0 = 0; s0 < S; s0 += kBlock) {
          const int64_t len = std::min(kBlock, S - s0);
          double bm, bm2;
          block_moments(plane + s0, len, bm, bm2);
          chan_merge(n_acc, m, m2, static_cast<double>(len), bm, bm2);
          n_acc += static_cast<double>(len);
        }
      }
      finish(c, m, m2);
    });
    return;
  }
  // NHWC: two-level reduction over row chunks; each chunk merges its blocks of kFlushRows rows.
  const int64_t chunks = num_chunks(M);
  const int64_t rows_per = (M + chunks - 1) / chunks;
  std::vector<double> part(static_cast<size_t>(chunks) * 2 * C);
  par_for<std::is_same_v<X, uint16_t>>(isa, chunks, parallel(M * C), [&](int64_t k) PYIMGCLS_LAMBDA_INLINE {
    double* cm = part.data() + k * 2 * C;  // [mean (C), M2 (C)] of the chunk's rows
    double* cm2 = cm + C;
    std::fill(cm, cm + 2 * C, 0.0);
    std::vector<double> acc(3 * C);
    double* K = acc.data();  // sweep 1: the block's sums, then its means
    double* a = K + C;
    double* b = a + C;
    const int64_t r0 = k * rows_per, r1 = std::min(M, r0 + rows_per);
    double n_acc = 0.0;
    for (int64_t q0 = r0; q0 < r1; q0 += kFlushRows) {
      const int64_t q1 = std::min(r1, q0 + kFlushRows);
      const double nb = static_cast<double>(q1 - q0);
      // sweep 1: the block's per-channel means
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t r = q0; r < q1; ++r) {
        const X* p = x + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) K[c] += static_cast<double>(val(p[c]));
      }
      for (int64_t c = 0; c < C; ++c) K[c] /= nb;
      // sweep 2 (rows still in cache): deviations from those means
      for (int64_t r = q0; r < q1; ++r) {
        const X* p = x + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const double d = static_cast<double>(val(p[c])) - K[c];
          a[c] += d;
          b[c] += d * d;
        }
      }
      for (int64_t c = 0; c < C; ++c)
        chan_merge(n_acc, cm[c], cm2[c], nb, K[c] + a[c] / nb, std::max(0.0, b[c] - a[c] * a[c] / nb));
      n_acc += nb;
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double n_acc = 0.0, m = 0.0, m2 = 0.0;
    for (int64_t k = 0; k < chunks; ++k) {
      const int64_t r0 = k * rows_per, rows = std::max<int64_t>(0, std::min(M, r0 + rows_per) - r0);
      chan_merge(n_acc, m, m2, static_cast<double>(rows), part[k * 2 * C + c], part[k * 2 * C + C + c]);
      n_acc += static_cast<double>(rows);
    }
    finish(c, m, m2);
  }
}

// ----------------------------------------------------------------------------- forward
template <Act act, typename T, typename X>
void fwd_impl(const X* x, const T* mean, const T* var, const T* w, const T* b, const X* r, X* y, T* invstd,
              int64_t N, int64_t C, int64_t S, bool cl, double eps, Isa isa) {
  // Per-channel coefficients: y = (x - mean) * scale + bias (the subtraction first keeps precision
  // when |mean| >> std, unlike x * scale + (b - mean * scale)).
  std::vector<T> scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    const T is = static_cast<T>(1.0 / std::sqrt(static_cast<double>(var[c]) + eps));
    invstd[c] = is;
    scale[c] = w ? is * w[c] : is;
    shift[c] = b ? b[c] : T(0);
  }
  const int64_t Q = N * C * S;
  if (Q == 0) return;
  if (!cl && S < kShortPlane) {
    // Short NCHW planes: one contiguous C*S loop per image over per-element copies of the
    // coefficients ([C*S] each), instead of a vector loop of S lanes per plane whose remainder runs
    // element by element (bf16 [16, 512, 2, 2]: 0.25 ms against 0.15 ms for the float32 upcast;
    // float32 EfficientNet [16, 1152, 2, 2] + SiLU: 0.26 ms against PyTorch's 0.06). The same
    // arithmetic per element, so the same results.
    const int64_t CS = C * S;
    const std::vector<T> coef = per_element<T>(C, S, {mean, scale.data(), shift.data()});
    const T* em = coef.data();
    const T* esc = em + CS;
    const T* esh = esc + CS;
    const int64_t nb = (CS + kBlock - 1) / kBlock;   // tasks of (image, block): batch 1 still splits
    par_for<kWideLoops<X, act>>(isa, N * nb, parallel(Q), [&](int64_t t) PYIMGCLS_LAMBDA_INLINE {
      const int64_t n = t / nb, i0 = (t % nb) * kBlock, i1 = std::min(CS, i0 + kBlock);
      const X* xp = x + n * CS;
      X* yp = y + n * CS;
      const X* rp = r ? r + n * CS : nullptr;
      if (rp) {
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i)
          yp[i] = put<X>(apply_act<act>((val(xp[i]) - em[i]) * esc[i] + esh[i] + val(rp[i])));
      } else {
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) yp[i] = put<X>(apply_act<act>((val(xp[i]) - em[i]) * esc[i] + esh[i]));
      }
    });
    return;
  }
  if (!cl) {
    par_for<kWideLoops<X, act>>(isa, N * C, parallel(Q), [&](int64_t nc) PYIMGCLS_LAMBDA_INLINE {
      const int64_t c = nc % C;
      const T m = mean[c], sc = scale[c], sh = shift[c];
      const X* xp = x + nc * S;
      X* yp = y + nc * S;
      const X* rp = r ? r + nc * S : nullptr;
      if (rp) {
#pragma omp simd
        for (int64_t s = 0; s < S; ++s) yp[s] = put<X>(apply_act<act>((val(xp[s]) - m) * sc + sh + val(rp[s])));
      } else {
#pragma omp simd
        for (int64_t s = 0; s < S; ++s) yp[s] = put<X>(apply_act<act>((val(xp[s]) - m) * sc + sh));
      }
    });
    return;
  }
  const int64_t rows = N * S;
  const T* m = mean;
  const T* sc = scale.data();
  const T* sh = shift.data();
  par_for<kWideLoops<X, act>>(isa, rows, parallel(Q), [&](int64_t row) PYIMGCLS_LAMBDA_INLINE {
    const X* xp = x + row * C;
    X* yp = y + row * C;
    const X* rp = r ? r + row * C : nullptr;
    if (rp) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yp[c] = put<X>(apply_act<act>((val(xp[c]) - m[c]) * sc[c] + sh[c] + val(rp[c])));
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yp[c] = put<X>(apply_act<act>((val(xp[c]) - m[c]) * sc[c] + sh[c]));
    }
  });
}

template <typename T>
void update_impl(T* rm, T* rv, const T* mean, const T* var, int64_t C, double momentum, int64_t count) {
  // count == 1 cannot reach here (the Python layer raises, as PyTorch); guard the division anyway.
  const double unbias = count > 1 ? static_cast<double>(count) / static_cast<double>(count - 1) : 1.0;
  for (int64_t c = 0; c < C; ++c) {
    if (rm) rm[c] = static_cast<T>((1.0 - momentum) * rm[c] + momentum * mean[c]);
    if (rv) rv[c] = static_cast<T>((1.0 - momentum) * rv[c] + momentum * var[c] * unbias);
  }
}

// ----------------------------------------------------------------------------- backward
template <Act act, typename T, typename X>
void bwd_impl(const X* g, const X* out, const X* x, const T* w, const T* mean, const T* invstd, X* gx, T* gw,
              T* gb, X* gp_out, int64_t N, int64_t C, int64_t S, bool cl, bool training, Isa isa) {
  const int64_t M = N * S;
  const int64_t Q = M * C;
  const bool masked = act != Act::None;
  // Step 1: per-channel sums of gp and gp * (x - mean) (needed for gx in training, gw, gb), in T
  // over at most one plane / kFlushRows rows at a time, flushed into float64.
  const bool need_sums = (gx && training) || gw || gb;
  std::vector<double> sum_dy(C, 0.0), sum_dyx(C, 0.0);
  if (need_sums || gp_out) {
    if (!cl) {
      par_for<kWideLoops<X, act>>(isa, C, parallel(Q), [&](int64_t c) PYIMGCLS_LAMBDA_INLINE {
        const T mu = mean[c];
        double a = 0.0, bsum = 0.0;
        for (int64_t n = 0; n < N; ++n) {
          const int64_t base = (n * C + c) * S;
          const X* gr = g + base;
          const X* xp = x + base;
          if (gp_out) {
            // gp = select(act kept out, grad, 0), written for the residual's gradient (a select of
            // grad's values: exact in X)
            X* gp = gp_out + base;
            const X* op = masked ? out + base : nullptr;
            T pa = T(0), pb = T(0);
#pragma omp simd reduction(+ : pa, pb)
            for (int64_t s = 0; s < S; ++s) {
              const T v = (masked ? act_grad<act>(val(op[s]), val(gr[s])) : val(gr[s]));
              gp[s] = put<X>(v);
              pa += v;
              pb += v * (val(xp[s]) - mu);
            }
            a += static_cast<double>(pa);
            bsum += static_cast<double>(pb);
          } else if (masked) {
            const X* op = out + base;
            T pa = T(0), pb = T(0);
#pragma omp simd reduction(+ : pa, pb)
            for (int64_t s = 0; s < S; ++s) {
              const T v = act_grad<act>(val(op[s]), val(gr[s]));
              pa += v;
              pb += v * (val(xp[s]) - mu);
            }
            a += static_cast<double>(pa);
            bsum += static_cast<double>(pb);
          } else {
            T pa = T(0), pb = T(0);
#pragma omp simd reduction(+ : pa, pb)
            for (int64_t s = 0; s < S; ++s) {
              pa += val(gr[s]);
              pb += val(gr[s]) * (val(xp[s]) - mu);
            }
            a += static_cast<double>(pa);
            bsum += static_cast<double>(pb);
          }
        }
        sum_dy[c] = a;
        sum_dyx[c] = bsum;
      });
    } else {
      const int64_t chunks = num_chunks(M);
      const int64_t rows_per = (M + chunks - 1) / chunks;
      std::vector<double> part(static_cast<size_t>(chunks) * 2 * C);
      par_for<kWideLoops<X, act>>(isa, chunks, parallel(Q), [&](int64_t k) PYIMGCLS_LAMBDA_INLINE {
        double* pd = part.data() + k * 2 * C;
        std::fill(pd, pd + 2 * C, 0.0);
        std::vector<T> acc(2 * C, T(0)), tmp(masked ? C : 0);
        T* pa = acc.data();
        T* pb = pa + C;
        const int64_t r0 = k * rows_per, r1 = std::min(M, r0 + rows_per);
        for (int64_t r = r0; r < r1; ++r) {
          const X* gr = g + r * C;
          const X* xp = x + r * C;
          if (masked) {
            // the masked gradient row, in a scratch row of T, also stored to grad_pre if wanted
            T* v = tmp.data();
            const X* op = out + r * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) v[c] = act_grad<act>(val(op[c]), val(gr[c]));
            if (gp_out) {
              X* gp = gp_out + r * C;
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) gp[c] = put<X>(v[c]);
            }
          } else if (gp_out) {
            std::memcpy(gp_out + r * C, gr, sizeof(X) * C);
          }
          if (need_sums && masked) {
            const T* v = tmp.data();
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              pa[c] += v[c];
              pb[c] += v[c] * (val(xp[c]) - mean[c]);
            }
          } else if (need_sums) {
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              pa[c] += val(gr[c]);
              pb[c] += val(gr[c]) * (val(xp[c]) - mean[c]);
            }
          }
          if (need_sums) {
            if ((r - r0 + 1) % kFlushRows == 0 || r + 1 == r1) {
              for (int64_t c = 0; c < 2 * C; ++c) {
                pd[c] += static_cast<double>(pa[c]);
                pa[c] = T(0);
              }
            }
          }
        }
      });
      for (int64_t k = 0; k < chunks; ++k) {
        for (int64_t c = 0; c < C; ++c) {
          sum_dy[c] += part[k * 2 * C + c];
          sum_dyx[c] += part[k * 2 * C + C + c];
        }
      }
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    if (gb) gb[c] = static_cast<T>(sum_dy[c]);
    // An empty batch has NaN statistics but no gradient to carry: zero, as ATen.
    if (gw) gw[c] = M == 0 ? T(0) : static_cast<T>(sum_dyx[c] * static_cast<double>(invstd[c]));
  }
  if (!gx || Q == 0) return;
  // Step 2: grad_input = scale * (gp - a - (x - mean) * k), per-channel coefficients:
  //   scale = w * invstd,  a = sum_dy / M,  k = invstd^2 * sum_dyx / M   (a = k = 0 in eval)
  std::vector<T> scale(C), ca(C), ck(C);
  for (int64_t c = 0; c < C; ++c) {
    const double is = static_cast<double>(invstd[c]);
    scale[c] = static_cast<T>(w ? is * static_cast<double>(w[c]) : is);
    ca[c] = training ? static_cast<T>(sum_dy[c] / M) : T(0);
    ck[c] = training ? static_cast<T>(is * is * sum_dyx[c] / M) : T(0);
  }
  if (!cl && S < kShortPlane) {
    // short NCHW planes: per image, one C*S loop over per-element coefficients (as fwd_impl)
    const int64_t CS = C * S;
    const std::vector<T> coef = per_element<T>(C, S, {mean, scale.data(), ca.data(), ck.data()});
    const T* em = coef.data();
    const T* esc = em + CS;
    const T* ea = esc + CS;
    const T* ek = ea + CS;
    const int64_t nb = (CS + kBlock - 1) / kBlock;   // tasks of (image, block): batch 1 still splits
    par_for<kWideLoops<X, act>>(isa, N * nb, parallel(Q), [&](int64_t t) PYIMGCLS_LAMBDA_INLINE {
      const int64_t n = t / nb, i0 = (t % nb) * kBlock, i1 = std::min(CS, i0 + kBlock);
      const X* gr = g + n * CS;
      const X* xp = x + n * CS;
      const X* op = masked ? out + n * CS : nullptr;
      X* gi = gx + n * CS;
      if (masked) {
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) {
          const T v = act_grad<act>(val(op[i]), val(gr[i]));
          gi[i] = put<X>((v - ea[i] - (val(xp[i]) - em[i]) * ek[i]) * esc[i]);
        }
      } else {
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) gi[i] = put<X>((val(gr[i]) - ea[i] - (val(xp[i]) - em[i]) * ek[i]) * esc[i]);
      }
    });
    return;
  }
  if (!cl) {
    par_for<kWideLoops<X, act>>(isa, N * C, parallel(Q), [&](int64_t nc) PYIMGCLS_LAMBDA_INLINE {
      const int64_t c = nc % C;
      const T m = mean[c], sc = scale[c], a = ca[c], k = ck[c];
      const X* gr = g + nc * S;
      const X* xp = x + nc * S;
      const X* op = masked ? out + nc * S : nullptr;
      X* gi = gx + nc * S;
      if (masked) {
#pragma omp simd
        for (int64_t s = 0; s < S; ++s) {
          const T v = act_grad<act>(val(op[s]), val(gr[s]));
          gi[s] = put<X>((v - a - (val(xp[s]) - m) * k) * sc);
        }
      } else {
#pragma omp simd
        for (int64_t s = 0; s < S; ++s) gi[s] = put<X>((val(gr[s]) - a - (val(xp[s]) - m) * k) * sc);
      }
    });
    return;
  }
  const T* sc = scale.data();
  const T* a = ca.data();
  const T* k = ck.data();
  par_for<kWideLoops<X, act>>(isa, M, parallel(Q), [&](int64_t r) PYIMGCLS_LAMBDA_INLINE {
    const X* gr = g + r * C;
    const X* xp = x + r * C;
    const X* op = masked ? out + r * C : nullptr;
    X* gi = gx + r * C;
    if (masked) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const T v = act_grad<act>(val(op[c]), val(gr[c]));
        gi[c] = put<X>((v - a[c] - (val(xp[c]) - mean[c]) * k[c]) * sc[c]);
      }
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c)
        gi[c] = put<X>((val(gr[c]) - a[c] - (val(xp[c]) - mean[c]) * k[c]) * sc[c]);
    }
  });
}

}  // namespace

void batch_norm_stats(DType dt, const void* x, void* mean, void* var, int64_t N, int64_t C, int64_t S,
                      bool channels_last) {
  dispatch_storage(dt, [&](auto t, auto xs, Isa isa) {
    using T = decltype(t);
    using X = decltype(xs);
    stats_impl(static_cast<const X*>(x), static_cast<T*>(mean), static_cast<T*>(var), N, C, S, channels_last, isa);
  });
}

void batch_norm_fwd(DType dt, const void* x, const void* mean, const void* var, const void* weight,
                    const void* bias, const void* residual, void* y, void* invstd, int64_t N, int64_t C, int64_t S,
                    bool channels_last, double eps, Act act) {
  dispatch_storage(dt, [&](auto t, auto xs, Isa isa) {
    using T = decltype(t);
    using X = decltype(xs);
    dispatch_act(act, [&](auto a) {
      fwd_impl<decltype(a)::value>(static_cast<const X*>(x), static_cast<const T*>(mean), static_cast<const T*>(var),
                                   static_cast<const T*>(weight), static_cast<const T*>(bias),
                                   static_cast<const X*>(residual), static_cast<X*>(y), static_cast<T*>(invstd), N, C,
                                   S, channels_last, eps, isa);
    });
  });
}

void batch_norm_update_stats(DType dt, void* running_mean, void* running_var, const void* mean, const void* var,
                             int64_t C, double momentum, int64_t count) {
  dispatch_float(dt, "CPU batch_norm", [&](auto t) {
    using T = decltype(t);
    update_impl(static_cast<T*>(running_mean), static_cast<T*>(running_var), static_cast<const T*>(mean),
                static_cast<const T*>(var), C, momentum, count);
  });
}

void batch_norm_bwd(DType dt, const void* grad, const void* out, const void* x, const void* weight,
                    const void* mean, const void* invstd, void* grad_input, void* grad_weight, void* grad_bias,
                    void* grad_pre, int64_t N, int64_t C, int64_t S, bool channels_last, bool training, Act act) {
  dispatch_storage(dt, [&](auto t, auto xs, Isa isa) {
    using T = decltype(t);
    using X = decltype(xs);
    dispatch_act(act, [&](auto a) {
      bwd_impl<decltype(a)::value>(static_cast<const X*>(grad), static_cast<const X*>(out), static_cast<const X*>(x),
                                   static_cast<const T*>(weight), static_cast<const T*>(mean),
                                   static_cast<const T*>(invstd), static_cast<X*>(grad_input),
                                   static_cast<T*>(grad_weight), static_cast<T*>(grad_bias),
                                   static_cast<X*>(grad_pre), N, C, S, channels_last, training, isa);
    });
  });
}

}  // namespace pyimgcls::cpu
