// CPU knowledge-distillation loss: the loss and its gradient w.r.t. the student logits in one call,
// float32 and float64 (float16 / bfloat16 are upcast by the Python side).
//
// What it computes (s [N, C] student logits, t [N, C] teacher logits, y [N] class indices, T the
// temperature, a = alpha, eps = label smoothing; per row, p_T = softmax(s / T), q = softmax(t / T),
// p = softmax(s)):
//   KL_i   = sum_c q_c (log q_c - log p_T,c)
//   CE_i   = lse(s) - (1 - eps) s_y - eps / C * sum_c s_c        (F.cross_entropy, label smoothing)
//   loss_i = a T^2 KL_i + (1 - a) CE_i,       0 for rows with y_i == ignore_index
//   none: loss_i;  sum: sum_i loss_i;  mean: sum_i loss_i / D, D = the number of counted rows (NaN
//   when D == 0, as F.cross_entropy's mean over an all-ignored batch).
//   grad[i, c] = d loss_i / d s_ic = a T (p_T,c - q_c) + (1 - a) (p_c - eps / C - (1 - eps) [c == y]),
//   0 for ignored rows. The teacher gets no gradient.
//
// Algorithm (per row, rows split across OpenMP threads):
//   1. ms = max_c s_c, mt = max_c t_c (NaN-propagating).
//   2. One pass over the row with ds = s_c - ms <= 0 and dt = t_c - mt <= 0 (every exp argument is
//      <= 0: no overflow for any logit size):
//        Z1 = sum exp(ds), ZT = sum exp(ds / T), Zt = sum exp(dt / T),
//        Wq = sum exp(dt / T) (dt - ds),  Sd = sum ds
//      so that, without the cancellation of large logits,
//        KL = Wq / (T Zt) - log Zt + log ZT,   CE = log Z1 - (1 - eps) ds_y - eps / C * Sd.
//      The three exponentials go to the gradient row and a per-thread scratch of 2 C when the
//      gradient is wanted (read back from cache in step 3). Sums are kept in float vector lanes
//      within a chunk of 2048 elements and in double across chunks.
//   3. Gradient pass: g_c = aT (eT_c / ZT - q_c / Zt) + (1 - a) (e1_c / Z1 - eps / C), g_y -= (1-a)(1-eps).
//   Mean / sum: per-row losses go to a buffer summed in row order in double after the parallel loop
//   (the same bits for any thread count).
//   float32 on AVX-512 uses a vectorised 2^x exp (the same polynomial as softmax_xent.cpp's
//   exp_nonpos512, <= 1.3 ulp); float64 and CPUs without AVX-512 the libm exp.
//
// The student and the teacher are read once from memory (step 1 brings the rows into cache; rows of
// C <= 8192 float32 stay in L1 / L2 for steps 2 and 3).
// Cost (forward): ~ 20 * N * C FLOPs + 3 N*C exps; minimum bytes = 2 N*C*sizeof(T) read + N*C*sizeof(T)
//   written (gradient) + N * (target + loss) bytes. The backward is softmax_xent_bwd (one scaling pass).
//
// Test and benchmark
//   pytest tests/test_distill.py -k cpu
//   python benchmarks/bench_distill.py
#include "distill.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "common.h"

namespace pyimgcls::cpu {
namespace {

// Below this many logits the OpenMP fork/join costs more than a second core saves.
constexpr int64_t kParallelMin = int64_t(1) << 14;
// Elements summed in float lanes before the partial sums move to double (2048 floats = 8 KiB).
constexpr int64_t kChunk = 2048;

template <typename T>
inline T nan_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

// Coefficients shared by every row.
template <typename T>
struct Coef {
  T invT;   // 1 / T
  T kl;     // a T^2   (loss)
  T klg;    // a T     (gradient)
  T ce;     // 1 - a
  T eps;    // label smoothing
  T ec;     // eps / C
};

// Row sums of step 2.
struct Sums {
  double z1 = 0, zT = 0, zt = 0, wq = 0, sd = 0;
};

template <typename T>
T row_loss(const Coef<T>& k, const Sums& q, T ds_y) {
  const double kl = q.wq / (static_cast<double>(q.zt) / static_cast<double>(k.invT)) - std::log(q.zt) + std::log(q.zT);
  const double ce = std::log(q.z1) - (1.0 - static_cast<double>(k.eps)) * static_cast<double>(ds_y) -
                    static_cast<double>(k.ec) * q.sd;
  return static_cast<T>(static_cast<double>(k.kl) * kl + static_cast<double>(k.ce) * ce);
}

// Portable row (float64 always; float32 without AVX-512). e1 -> g, eT -> bT, q -> bq when g != null.
template <typename T>
T row_generic(const Coef<T>& k, const T* s, const T* t, int64_t C, int64_t y, T* g, T* bT, T* bq) {
  T ms = -std::numeric_limits<T>::infinity(), mt = ms;
  for (int64_t c = 0; c < C; ++c) {
    ms = nan_max(ms, s[c]);
    mt = nan_max(mt, t[c]);
  }
  Sums q;
  for (int64_t c = 0; c < C; ++c) {
    const T ds = s[c] - ms, dt = t[c] - mt;
    const T e1 = std::exp(ds), eT = std::exp(ds * k.invT), et = std::exp(dt * k.invT);
    q.z1 += e1;
    q.zT += eT;
    q.zt += et;
    q.wq += static_cast<double>(et) * static_cast<double>(dt - ds);
    q.sd += ds;
    if (g != nullptr) {
      g[c] = e1;
      bT[c] = eT;
      bq[c] = et;
    }
  }
  if (g != nullptr) {
    const T f1 = k.ce / static_cast<T>(q.z1), fT = k.klg / static_cast<T>(q.zT), ft = k.klg / static_cast<T>(q.zt);
    const T c0 = k.ce * k.ec;
    for (int64_t c = 0; c < C; ++c) g[c] = fT * bT[c] - ft * bq[c] + f1 * g[c] - c0;
    g[y] -= k.ce * (T(1) - k.eps);
  }
  return row_loss(k, q, s[y] - ms);
}

#ifdef PYIMGCLS_X86
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kE2P1 = 6.931471825e-01f, kE2P2 = 2.402264774e-01f, kE2P3 = 5.550332367e-02f;
constexpr float kE2P4 = 9.618437849e-03f, kE2P5 = 1.339887269e-03f, kE2P6 = 1.535334159e-04f;

// exp(d) for d <= 0 (or NaN): 2^(d log2 e) with n = round, f in [-1/2, 1/2], 2^f by a degree-6
// polynomial, vscalefps (graceful underflow to 0). The polynomial of softmax_xent.cpp's
// exp_nonpos512 (<= 1.3 ulp; its comment has the fit). NaN passes the max (second operand).
PYIMGCLS_TARGET_AVX512 inline __m512 exp_nonpos(__m512 d) {
  const __m512 x = _mm512_max_ps(_mm512_set1_ps(-151.0f), _mm512_mul_ps(d, _mm512_set1_ps(kLog2e)));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(kE2P6);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE2P5));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE2P4));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE2P3));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE2P2));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kE2P1));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

PYIMGCLS_TARGET_AVX512 inline __mmask16 tail_mask(int64_t r) {
  return r >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << r) - 1u);
}

// Float32 row on AVX-512, same contract as row_generic. Lanes past the end are masked out of every
// sum (loaded as 0, added with a zero mask) and never stored.
PYIMGCLS_TARGET_AVX512 float row_avx512(const Coef<float>& k, const float* s, const float* t, int64_t C, int64_t y,
                                        float* g, float* bT, float* bq) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 vs = ninf, vt = ninf;
  __mmask16 nan = 0;
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 m = tail_mask(C - c);
    const __m512 a = _mm512_mask_loadu_ps(ninf, m, s + c), b = _mm512_mask_loadu_ps(ninf, m, t + c);
    vs = _mm512_max_ps(vs, a);
    vt = _mm512_max_ps(vt, b);
    nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q);
  }
  const float qnan = std::numeric_limits<float>::quiet_NaN();
  // A NaN anywhere in either row makes the whole row NaN (as the composition gives).
  const float ms = nan ? qnan : _mm512_reduce_max_ps(vs), mt = nan ? qnan : _mm512_reduce_max_ps(vt);
  const __m512 vms = _mm512_set1_ps(ms), vmt = _mm512_set1_ps(mt), vinv = _mm512_set1_ps(k.invT);
  Sums q;
  for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
    const int64_t c1 = std::min(C, c0 + kChunk);
    __m512 z1 = _mm512_setzero_ps(), zT = z1, zt = z1, wq = z1, sd = z1;
    for (int64_t c = c0; c < c1; c += 16) {
      const __mmask16 m = tail_mask(c1 - c);
      const __m512 ds = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + c), vms);
      const __m512 dt = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, t + c), vmt);
      const __m512 e1 = exp_nonpos(ds), eT = exp_nonpos(_mm512_mul_ps(ds, vinv));
      const __m512 et = exp_nonpos(_mm512_mul_ps(dt, vinv));
      z1 = _mm512_mask_add_ps(z1, m, z1, e1);
      zT = _mm512_mask_add_ps(zT, m, zT, eT);
      zt = _mm512_mask_add_ps(zt, m, zt, et);
      wq = _mm512_mask3_fmadd_ps(et, _mm512_sub_ps(dt, ds), wq, m);   // lanes off m keep wq
      sd = _mm512_mask_add_ps(sd, m, sd, ds);
      if (g != nullptr) {
        _mm512_mask_storeu_ps(g + c, m, e1);
        _mm512_mask_storeu_ps(bT + c, m, eT);
        _mm512_mask_storeu_ps(bq + c, m, et);
      }
    }
    q.z1 += _mm512_reduce_add_ps(z1);
    q.zT += _mm512_reduce_add_ps(zT);
    q.zt += _mm512_reduce_add_ps(zt);
    q.wq += _mm512_reduce_add_ps(wq);
    q.sd += _mm512_reduce_add_ps(sd);
  }
  if (g != nullptr) {
    const __m512 f1 = _mm512_set1_ps(k.ce / static_cast<float>(q.z1));
    const __m512 fT = _mm512_set1_ps(k.klg / static_cast<float>(q.zT));
    const __m512 ft = _mm512_set1_ps(k.klg / static_cast<float>(q.zt));
    const __m512 c0 = _mm512_set1_ps(k.ce * k.ec);
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 m = tail_mask(C - c);
      __m512 o = _mm512_mul_ps(fT, _mm512_maskz_loadu_ps(m, bT + c));
      o = _mm512_fnmadd_ps(ft, _mm512_maskz_loadu_ps(m, bq + c), o);
      o = _mm512_fmadd_ps(f1, _mm512_maskz_loadu_ps(m, g + c), o);
      _mm512_mask_storeu_ps(g + c, m, _mm512_sub_ps(o, c0));
    }
    g[y] -= k.ce * (1.0f - k.eps);
  }
  return row_loss(k, q, s[y] - ms);
}
#endif  // PYIMGCLS_X86

template <typename I>
int64_t first_bad_target(const I* y, int64_t N, int64_t C, int64_t ignore_index) {
  for (int64_t i = 0; i < N; ++i) {
    const int64_t v = static_cast<int64_t>(y[i]);
    if (v != ignore_index && (v < 0 || v >= C)) return i;
  }
  return -1;
}

template <typename T, typename I>
int64_t fwd_t(Isa isa, const T* s, int64_t ssn, const T* t, int64_t stn, const I* target, int64_t N, int64_t C,
              int64_t ignore_index, T eps, T temperature, T alpha, XentReduction red, T* loss, T* grad, T* denom) {
  const int64_t bad = first_bad_target(target, N, C, ignore_index);
  if (bad >= 0) return bad;
  Coef<T> k{};
  k.invT = T(1) / temperature;
  k.kl = alpha * temperature * temperature;
  k.klg = alpha * temperature;
  k.ce = T(1) - alpha;
  k.eps = eps;
  k.ec = C > 0 ? eps / static_cast<T>(C) : T(0);
  [[maybe_unused]] const bool vec = isa == Isa::Avx512;
  const int nt = (N * std::max<int64_t>(C, 1) < kParallelMin) ? 1 : std::max(1, omp_get_max_threads());
  const int64_t per_thread = grad != nullptr ? 2 * C : 0;
  std::vector<T> scratch(static_cast<size_t>(std::max<int64_t>(nt * per_thread, 1)));
  std::vector<double> rows;  // per-row losses for mean / sum
  if (red != XentReduction::None) rows.resize(static_cast<size_t>(N));
  int64_t counted = 0;
  for (int64_t i = 0; i < N; ++i) counted += static_cast<int64_t>(target[i]) != ignore_index;

  auto row = [&](int64_t i, T* buf) {
    const int64_t y = static_cast<int64_t>(target[i]);
    T* gi = grad != nullptr ? grad + i * C : nullptr;
    T l = T(0);
    if (y == ignore_index) {
      if (gi != nullptr) std::fill(gi, gi + C, T(0));   // ignored rows: no loss, no gradient
    } else {
#ifdef PYIMGCLS_X86
      if constexpr (std::is_same_v<T, float>) {
        if (vec) l = row_avx512(k, s + i * ssn, t + i * stn, C, y, gi, buf, buf + C);
        else l = row_generic(k, s + i * ssn, t + i * stn, C, y, gi, buf, buf + C);
      } else {
        l = row_generic(k, s + i * ssn, t + i * stn, C, y, gi, buf, buf + C);
      }
#else
      l = row_generic(k, s + i * ssn, t + i * stn, C, y, gi, buf, buf + C);
#endif
    }
    if (red == XentReduction::None) loss[i] = l;
    else rows[static_cast<size_t>(i)] = static_cast<double>(l);
  };
  if (nt == 1) {
    for (int64_t i = 0; i < N; ++i) row(i, scratch.data());   // no OpenMP region for small batches
  } else {
#pragma omp parallel num_threads(nt)
    {
      T* buf = scratch.data() + omp_get_thread_num() * per_thread;
#pragma omp for schedule(static)
      for (int64_t i = 0; i < N; ++i) row(i, buf);
    }
  }
  if (red != XentReduction::None) {
    double total = 0.0;   // fixed row order: the same bits for any thread count
    for (int64_t i = 0; i < N; ++i) total += rows[static_cast<size_t>(i)];
    if (red == XentReduction::Mean) {
      loss[0] = static_cast<T>(total / static_cast<double>(counted));   // 0 / 0 = NaN when all ignored
      denom[0] = static_cast<T>(counted);
    } else {
      loss[0] = static_cast<T>(total);
    }
  }
  return -1;
}

}  // namespace

int64_t distill_fwd(DType dt, const void* s, int64_t ssn, const void* t, int64_t stn, const void* target,
                    bool target_i32, int64_t N, int64_t C, int64_t ignore_index, double label_smoothing,
                    double temperature, double alpha, XentReduction reduction, void* loss, void* grad,
                    void* denom) {
  if (N < 0 || C < 1) throw std::invalid_argument("distill_fwd: N must be >= 0 and C >= 1");
  if (!(temperature > 0.0)) throw std::invalid_argument("distill_fwd: temperature must be > 0");
  if (!(alpha >= 0.0 && alpha <= 1.0)) throw std::invalid_argument("distill_fwd: alpha must be in [0, 1]");
  if (reduction == XentReduction::Mean && denom == nullptr)
    throw std::invalid_argument("distill_fwd: reduction 'mean' needs the denominator output");
  const Isa isa = active_isa();
  auto run = [&](auto tag, auto itag) {
    using T = decltype(tag);
    using I = decltype(itag);
    return fwd_t<T, I>(isa, static_cast<const T*>(s), ssn, static_cast<const T*>(t), stn,
                       static_cast<const I*>(target), N, C, ignore_index, static_cast<T>(label_smoothing),
                       static_cast<T>(temperature), static_cast<T>(alpha), reduction, static_cast<T*>(loss),
                       static_cast<T*>(grad), static_cast<T*>(denom));
  };
  return dispatch_float(dt, "CPU distill",
                        [&](auto tag) { return target_i32 ? run(tag, int32_t{}) : run(tag, int64_t{}); });
}

const char* distill_isa() { return isa_name(active_isa() == Isa::Avx512 ? Isa::Avx512 : Isa::Generic); }

}  // namespace pyimgcls::cpu
