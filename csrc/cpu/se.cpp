// CPU squeeze-and-excitation family: the SE block as one op (forward and backward) and the
// stochastic-depth scale-and-add, in float32 and float64 (the Python layer computes float16 /
// bfloat16 in float32). Tensors are [N, C, HW] views, NCHW or NHWC (se.h).
//
// What it computes (R = squeeze channels)
//   fwd:  pooled = mean_s x;  hidden = W1 pooled + b1;  z = W2 act(hidden) + b2;  y = x * gate(z)
//   bwd:  gz = (sum_s grad x) gate'(z);  gh = (W2^T gz) act'(hidden);  gpooled = W1^T gh
//         grad_input = grad gate(z) + gpooled / HW;  gW2 = sum_n gz act(hidden)^T, gb2 = sum_n gz;
//         gW1 = sum_n gh pooled^T, gb1 = sum_n gh
//   drop_path: out[n, :] = x[n, :] * scale[n] (+ residual[n, :])
//
// Algorithm
//   Three stages. (1) A spatial reduction: the per-(n, c) sum of x (forward) or of grad * x
//   (backward). NCHW: one OpenMP work item per (n, c) plane, summed in blocks of kBlock values in T
//   (vectorised) whose block sums are added in float64. NHWC: one work item per (n, block of kCBlock
//   channels); the HW rows are added channel-wise (inner loop along C, vectorised) in T over
//   kFlushRows rows, then flushed into float64 per channel. (2) The squeeze's two 1x1 convolutions
//   as GEMMs over the batch, in float64: hidden [N, R] = pooled [N, C] x W1^T [C, R], z [N, C] =
//   act(hidden) [N, R] x W2^T [R, C] (backward: W2^T gz and W1^T gh, through transposed copies of the
//   weights). dot_rows: one work item per kRowBlock weight rows, each row (I values, in L1) dotted
//   with kSamples samples at a time, so the weights are read once per call instead of once per
//   sample (the per-sample matrix-vector products re-read R*C weights N times: on the small late
//   maps, C = 1152 and 2x2, those reads were the SE block's time). Every output is one dot product
//   summed in a fixed order by one thread (deterministic, independent of the thread count and of
//   N: a partial sample block repeats its last sample). The weight gradients are sums over n in
//   sample order, one work item per weight row. (3) An element-wise pass, out = a * gate + add, one work item
//   per (n, c) plane (NCHW) or per (n, s) row (NHWC), with the per-(n, c) gate (and, backward,
//   gpooled / HW) computed once in stage 2. Stages 1 and 3 are the memory-bound ones: they are
//   compiled for baseline / AVX2 / AVX-512 (common.h: Compiled, isa_variant) and picked at run time.
//   drop_path: one work item per (n, block of kBlock elements), a vectorised multiply(-add).
//
// Cost (Q = N*C*HW elements of T bytes; the MLP is 2*N*R*C multiply-adds each way and reads the
// 2*R*C weights once: 2*R*C*T bytes, + 2*R*C*T for the transposed copies in the backward)
//   fwd:  reads x twice (pool, scale), writes y: min bytes 3*T*Q (2*T*Q when x stays in cache)
//   bwd:  reads grad and x (reduction), grad again (grad_input), writes grad_input: min bytes 3*T*Q..4*T*Q
//   drop_path: reads x (+ residual), writes out: 2*T*N*M (3*T*N*M)
//
// Test and benchmark
//   pytest tests/test_se.py tests/test_stochastic_depth.py -k cpu
#include "se.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"

namespace pyimgcls::cpu {
namespace {

// Below this many elements a single thread beats the cost of waking the OpenMP team.
constexpr int64_t kParallelGrain = 1 << 15;
// NCHW reduction: values summed in T before the float64 add (keeps T's rounding error at kBlock terms).
constexpr int64_t kBlock = 1024;
// NHWC reduction: channels per work item and rows summed in T before the float64 flush.
constexpr int64_t kCBlock = 64;
constexpr int64_t kFlushRows = 64;
// dot_rows: weight rows per work item, samples per pass over a row (four float64 accumulators).
constexpr int64_t kRowBlock = 4;
constexpr int64_t kSamples = 4;

inline bool parallel(int64_t work) { return work >= kParallelGrain && omp_get_max_threads() > 1; }

// ---- scalar activation / gate formulas with ATen's semantics (NaN propagates through every forward).
// They fold into the shared activation vocabulary (csrc/cpu/common.h) once silu / hardsigmoid land there.
inline double se_sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
// ATen: min(max(v + 3, 0), 6) / 6, written as selects so NaN falls through (std::max / std::min do the same).
inline double se_hardsigmoid(double v) {
  double t = v + 3.0;
  t = t < 0.0 ? 0.0 : t;
  t = t > 6.0 ? 6.0 : t;
  return t / 6.0;
}
inline double se_act(double v, int act) {
  if (act == int(SeAct::SiLU)) return v / (1.0 + std::exp(-v));  // ATen: x / (1 + exp(-x))
  return v < 0.0 ? 0.0 : v;                                        // relu: NaN passes
}
// d act / d v times g. relu: ATen's threshold_backward on the output (a select: dropped where
// relu(v) <= 0, so a NaN input passes g); silu: g s (1 + v (1 - s)), s = sigmoid(v), as ATen.
inline double se_act_grad(double v, double g, int act) {
  if (act == int(SeAct::SiLU)) {
    const double s = se_sigmoid(v);
    return g * s * (1.0 + v * (1.0 - s));
  }
  return v <= 0.0 ? 0.0 : g;
}
inline double se_gate(double v, int gate) {
  return gate == int(SeGate::HardSigmoid) ? se_hardsigmoid(v) : se_sigmoid(v);
}
// sigmoid: g (1 - s) s on the output s (ATen's sigmoid_backward); hardsigmoid: g * 1/6 strictly
// inside (-3, 3), else 0 (a select, so NaN gives 0 as in ATen's hardsigmoid_backward). ATen's 1/6
// is the float constant 1.0f / 6.0f for every dtype (float64 too); the same constant here, so a
// float64 gradient agrees with PyTorch's to the last bits instead of differing by 3e-8 relative.
constexpr double kOneSixth = double(1.0f / 6.0f);
inline double se_gate_grad(double v, double g, int gate) {
  if (gate == int(SeGate::HardSigmoid)) return (v > -3.0 && v < 3.0) ? g * kOneSixth : 0.0;
  const double s = se_sigmoid(v);
  return g * (1.0 - s) * s;
}

// ---- stage 1: spatial sums. PROD: sum of x * g instead of x.
template <typename T, bool PROD>
struct PlaneSum {  // one contiguous plane of len values -> *out (float64)
  PYIMGCLS_INLINE static void run(const T* x, const T* g, int64_t len, double* out) {
    double total = 0.0;
    for (int64_t s0 = 0; s0 < len; s0 += kBlock) {
      const int64_t e = std::min(len, s0 + kBlock);
      T acc = T(0);
      if constexpr (PROD) {
#pragma omp simd reduction(+ : acc)
        for (int64_t s = s0; s < e; ++s) acc += x[s] * g[s];
      } else {
#pragma omp simd reduction(+ : acc)
        for (int64_t s = s0; s < e; ++s) acc += x[s];
      }
      total += double(acc);
    }
    *out = total;
  }
};

template <typename T, bool PROD>
struct RowSum {  // rows of stride C, channels [0, cn) (cn <= kCBlock) -> out[0, cn) (float64)
  PYIMGCLS_INLINE static void run(const T* x, const T* g, int64_t rows, int64_t C, int64_t cn, double* out) {
    T part[kCBlock];
    for (int64_t c = 0; c < cn; ++c) out[c] = 0.0;
    for (int64_t r0 = 0; r0 < rows; r0 += kFlushRows) {
      const int64_t r1 = std::min(rows, r0 + kFlushRows);
      for (int64_t c = 0; c < cn; ++c) part[c] = T(0);
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = x + r * C;
        if constexpr (PROD) {
          const T* gr = g + r * C;
#pragma omp simd
          for (int64_t c = 0; c < cn; ++c) part[c] += xr[c] * gr[c];
        } else {
#pragma omp simd
          for (int64_t c = 0; c < cn; ++c) part[c] += xr[c];
        }
      }
      for (int64_t c = 0; c < cn; ++c) out[c] += double(part[c]);
    }
  }
};

// sums[n*C + c] = sum_s x(n, c, s) (* g(n, c, s)); x and g share the layout.
template <typename T, bool PROD>
void spatial_sums(Isa isa, const T* x, const T* g, double* sums, int64_t N, int64_t C, int64_t HW, bool cl) {
  const bool par = parallel(N * C * HW);
  if (!cl) {
    auto fn = isa_variant<void (*)(const T*, const T*, int64_t, double*), PlaneSum<T, PROD>>(isa);
#pragma omp parallel for schedule(static) if (par)
    for (int64_t p = 0; p < N * C; ++p) fn(x + p * HW, PROD ? g + p * HW : nullptr, HW, sums + p);
  } else {
    auto fn = isa_variant<void (*)(const T*, const T*, int64_t, int64_t, int64_t, double*), RowSum<T, PROD>>(isa);
    const int64_t cblocks = (C + kCBlock - 1) / kCBlock;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t item = 0; item < N * cblocks; ++item) {
      const int64_t n = item / cblocks, c0 = (item - n * cblocks) * kCBlock;
      const int64_t off = n * HW * C + c0;
      fn(x + off, PROD ? g + off : nullptr, HW, C, std::min(kCBlock, C - c0), sums + n * C + c0);
    }
  }
}

// ---- stage 3: out = a * m (+ add), m / add per (n, c).
template <typename T, bool ADD>
struct PlaneScale {  // one plane: out[s] = a[s] * m (+ add)
  PYIMGCLS_INLINE static void run(const T* a, T m, T add, T* out, int64_t len) {
#pragma omp simd
    for (int64_t s = 0; s < len; ++s) out[s] = ADD ? a[s] * m + add : a[s] * m;
  }
};

template <typename T, bool ADD>
struct RowScale {  // one NHWC row: out[c] = a[c] * m[c] (+ add[c])
  PYIMGCLS_INLINE static void run(const T* a, const T* m, const T* add, T* out, int64_t C) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) out[c] = ADD ? a[c] * m[c] + add[c] : a[c] * m[c];
  }
};

template <typename T, bool ADD>
void scale_pass(Isa isa, const T* a, const T* m, const T* add, T* out, int64_t N, int64_t C, int64_t HW, bool cl) {
  const bool par = parallel(N * C * HW);
  if (!cl) {
    auto fn = isa_variant<void (*)(const T*, T, T, T*, int64_t), PlaneScale<T, ADD>>(isa);
#pragma omp parallel for schedule(static) if (par)
    for (int64_t p = 0; p < N * C; ++p) fn(a + p * HW, m[p], ADD ? add[p] : T(0), out + p * HW, HW);
  } else {
    auto fn = isa_variant<void (*)(const T*, const T*, const T*, T*, int64_t), RowScale<T, ADD>>(isa);
#pragma omp parallel for schedule(static) if (par)
    for (int64_t r = 0; r < N * HW; ++r) {
      const int64_t n = r / HW;
      fn(a + r * C, m + n * C, ADD ? add + n * C : nullptr, out + r * C, C);
    }
  }
}

// ---- stage 2: out [N, O] = in [N, I] x wt^T, wt [O, I] row-major (a weight or its transposed copy).
template <typename W>
struct DotRows {  // weight rows [o0, o1): out[n*O + o] = sum_i wt[o*I + i] * in[n*I + i], all n
  PYIMGCLS_INLINE static void run(const W* wt, const double* in, double* out, int64_t N, int64_t I, int64_t O,
                                  int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      const W* w = wt + o * I;
      for (int64_t n0 = 0; n0 < N; n0 += kSamples) {
        // Past N the block repeats sample N - 1 (results dropped): every sample's sum runs the same
        // instruction sequence whatever N and the block it falls in.
        const double* x0 = in + std::min(n0, N - 1) * I;
        const double* x1 = in + std::min(n0 + 1, N - 1) * I;
        const double* x2 = in + std::min(n0 + 2, N - 1) * I;
        const double* x3 = in + std::min(n0 + 3, N - 1) * I;
        double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
        for (int64_t i = 0; i < I; ++i) {
          const double wv = double(w[i]);
          a0 += wv * x0[i];
          a1 += wv * x1[i];
          a2 += wv * x2[i];
          a3 += wv * x3[i];
        }
        const double acc[kSamples] = {a0, a1, a2, a3};
        for (int64_t k = 0; k < kSamples && n0 + k < N; ++k) out[(n0 + k) * O + o] = acc[k];
      }
    }
  }
};

template <typename W>
void dot_rows(Isa isa, const W* wt, const double* in, double* out, int64_t N, int64_t I, int64_t O) {
  auto fn = isa_variant<void (*)(const W*, const double*, double*, int64_t, int64_t, int64_t, int64_t, int64_t),
                        DotRows<W>>(isa);
  const int64_t items = (O + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(static) if (parallel(N * I * O))
  for (int64_t item = 0; item < items; ++item) {
    const int64_t o0 = item * kRowBlock;
    fn(wt, in, out, N, I, O, o0, std::min(O, o0 + kRowBlock));
  }
}

// dst [cols, rows] = src [rows, cols]^T (the backward's transposed weights: R*C values).
template <typename T>
std::vector<T> transposed(const T* src, int64_t rows, int64_t cols) {
  std::vector<T> dst(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
  return dst;
}

template <typename T>
void fwd_impl(const T* x, const T* w1, const T* b1, const T* w2, const T* b2, T* y, T* pooled, T* hidden, T* z,
              int64_t N, int64_t C, int64_t HW, int64_t R, bool cl, int act, int gate) {
  const Isa isa = active_isa();
  std::vector<double> sums(N * C);
  spatial_sums<T, false>(isa, x, nullptr, sums.data(), N, C, HW, cl);
  // pooled (rounded to T, as stored for the backward) in float64 for the GEMMs
  std::vector<double> p(N * C);
  for (int64_t i = 0; i < N * C; ++i) {
    pooled[i] = T(sums[i] / double(HW));
    p[i] = double(pooled[i]);
  }
  std::vector<double> h(N * R), a(N * R), v(N * C);
  dot_rows<T>(isa, w1, p.data(), h.data(), N, C, R);  // h = pooled W1^T
  const bool par = parallel(N * C * R);
#pragma omp parallel for schedule(static) if (par)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < R; ++j) {
      const T hv = T(b1 ? h[n * R + j] + double(b1[j]) : h[n * R + j]);
      hidden[n * R + j] = hv;
      a[n * R + j] = se_act(double(hv), act);
    }
  dot_rows<T>(isa, w2, a.data(), v.data(), N, R, C);  // v = act(hidden) W2^T
  std::vector<T> g(N * C);
#pragma omp parallel for schedule(static) if (par)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const T zv = T(b2 ? v[n * C + c] + double(b2[c]) : v[n * C + c]);
      z[n * C + c] = zv;
      g[n * C + c] = T(se_gate(double(zv), gate));
    }
  scale_pass<T, false>(isa, x, g.data(), nullptr, y, N, C, HW, cl);
}

template <typename T>
void bwd_impl(const T* grad, const T* x, const T* w1, const T* w2, const T* pooled, const T* hidden, const T* z,
              T* gx, T* gw1, T* gb1, T* gw2, T* gb2, int64_t N, int64_t C, int64_t HW, int64_t R, bool cl, int act,
              int gate) {
  const Isa isa = active_isa();
  std::vector<double> gz(N * C), gh(N * R), ah(N * R);
  spatial_sums<T, true>(isa, grad, x, gz.data(), N, C, HW, cl);
  std::vector<T> g(gx ? N * C : 0), gpool(gx ? N * C : 0);
  const bool par = parallel(N * C * R);
#pragma omp parallel for schedule(static) if (par)
  for (int64_t i = 0; i < N * C; ++i) gz[i] = se_gate_grad(double(z[i]), gz[i], gate);
  // gh = (gz W2) act'(hidden): dot products with the rows of W2^T [R, C] (a transposed copy)
  {
    const std::vector<T> w2t = transposed(w2, C, R);
    dot_rows<T>(isa, w2t.data(), gz.data(), gh.data(), N, C, R);
  }
#pragma omp parallel for schedule(static) if (par)
  for (int64_t i = 0; i < N * R; ++i) {
    const double hv = double(hidden[i]);
    gh[i] = se_act_grad(hv, gh[i], act);
    ah[i] = se_act(hv, act);
  }
  if (gx) {
    // gpooled = gh W1: dot products with the rows of W1^T [C, R]
    const std::vector<T> w1t = transposed(w1, R, C);
    std::vector<double> gp(N * C);
    dot_rows<T>(isa, w1t.data(), gh.data(), gp.data(), N, R, C);
#pragma omp parallel for schedule(static) if (par)
    for (int64_t i = 0; i < N * C; ++i) {
      gpool[i] = T(gp[i] / double(HW));
      g[i] = T(se_gate(double(z[i]), gate));
    }
  }
  // Weight gradients: one work item per weight row, samples added in order.
  if (gw2 || gb2) {
#pragma omp parallel for schedule(static) if (parallel(N * C * R))
    for (int64_t c = 0; c < C; ++c) {
      double b = 0.0;
      std::vector<double> row(gw2 ? R : 0, 0.0);
      for (int64_t n = 0; n < N; ++n) {
        const double s = gz[n * C + c];
        b += s;
        for (int64_t j = 0; j < (gw2 ? R : 0); ++j) row[j] += s * ah[n * R + j];
      }
      if (gb2) gb2[c] = T(b);
      for (int64_t j = 0; j < (gw2 ? R : 0); ++j) gw2[c * R + j] = T(row[j]);
    }
  }
  if (gw1 || gb1) {
#pragma omp parallel for schedule(static) if (parallel(N * C * R))
    for (int64_t j = 0; j < R; ++j) {
      double b = 0.0;
      std::vector<double> row(gw1 ? C : 0, 0.0);
      for (int64_t n = 0; n < N; ++n) {
        const double s = gh[n * R + j];
        b += s;
        const T* pn = pooled + n * C;
        for (int64_t c = 0; c < (gw1 ? C : 0); ++c) row[c] += s * double(pn[c]);
      }
      if (gb1) gb1[j] = T(b);
      for (int64_t c = 0; c < (gw1 ? C : 0); ++c) gw1[j * C + c] = T(row[c]);
    }
  }
  if (gx) scale_pass<T, true>(isa, grad, g.data(), gpool.data(), gx, N, C, HW, cl);
}

template <typename T, bool ADD>
struct DropPathRun {  // out[i] = x[i] * s (+ r[i]) over one run of len elements
  PYIMGCLS_INLINE static void run(const T* x, T s, const T* r, T* out, int64_t len) {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) out[i] = ADD ? x[i] * s + r[i] : x[i] * s;
  }
};

template <typename T, bool ADD>
void drop_path_impl(const T* x, const T* scale, const T* r, T* out, int64_t N, int64_t M) {
  auto fn = isa_variant<void (*)(const T*, T, const T*, T*, int64_t), DropPathRun<T, ADD>>(active_isa());
  const int64_t blocks = (M + kBlock * 16 - 1) / (kBlock * 16);
#pragma omp parallel for schedule(static) if (parallel(N * M))
  for (int64_t item = 0; item < N * blocks; ++item) {
    const int64_t n = item / blocks, m0 = (item - n * blocks) * kBlock * 16;
    const int64_t off = n * M + m0;
    fn(x + off, scale[n], ADD ? r + off : nullptr, out + off, std::min(kBlock * 16, M - m0));
  }
}

}  // namespace

void se_fwd(DType dt, const void* x, const void* w1, const void* b1, const void* w2, const void* b2, void* y,
            void* pooled, void* hidden, void* z, int64_t N, int64_t C, int64_t HW, int64_t R, bool channels_last,
            int act, int gate) {
  dispatch_float(dt, "squeeze_excitation", [&](auto tag) {
    using T = decltype(tag);
    fwd_impl<T>(static_cast<const T*>(x), static_cast<const T*>(w1), static_cast<const T*>(b1),
                static_cast<const T*>(w2), static_cast<const T*>(b2), static_cast<T*>(y), static_cast<T*>(pooled),
                static_cast<T*>(hidden), static_cast<T*>(z), N, C, HW, R, channels_last, act, gate);
  });
}

void se_bwd(DType dt, const void* grad, const void* x, const void* w1, const void* w2, const void* pooled,
            const void* hidden, const void* z, void* grad_input, void* gw1, void* gb1, void* gw2, void* gb2, int64_t N,
            int64_t C, int64_t HW, int64_t R, bool channels_last, int act, int gate) {
  dispatch_float(dt, "squeeze_excitation backward", [&](auto tag) {
    using T = decltype(tag);
    bwd_impl<T>(static_cast<const T*>(grad), static_cast<const T*>(x), static_cast<const T*>(w1),
                static_cast<const T*>(w2), static_cast<const T*>(pooled), static_cast<const T*>(hidden),
                static_cast<const T*>(z), static_cast<T*>(grad_input), static_cast<T*>(gw1), static_cast<T*>(gb1),
                static_cast<T*>(gw2), static_cast<T*>(gb2), N, C, HW, R, channels_last, act, gate);
  });
}

void drop_path(DType dt, const void* x, const void* scale, const void* residual, void* out, int64_t N, int64_t M) {
  dispatch_float(dt, "drop_path", [&](auto tag) {
    using T = decltype(tag);
    if (residual)
      drop_path_impl<T, true>(static_cast<const T*>(x), static_cast<const T*>(scale),
                              static_cast<const T*>(residual), static_cast<T*>(out), N, M);
    else
      drop_path_impl<T, false>(static_cast<const T*>(x), static_cast<const T*>(scale), nullptr,
                               static_cast<T*>(out), N, M);
  });
}

}  // namespace pyimgcls::cpu
