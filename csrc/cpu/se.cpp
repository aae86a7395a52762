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
//   (backward). NCHW: one OpenMP work item per run of planes (~kBlock values), each plane summed in blocks of kBlock values in T
//   (vectorised) whose block sums are added in float64. NHWC: one work item per (n, block of kCBlock
//   channels); the HW rows are added channel-wise (inner loop along C, vectorised) in T over
//   kFlushRows rows, then flushed into float64 per channel. (2) The squeeze's matrix products over
//   the batch, accumulated in T (float32 FMAs for float32 tensors): forward hidden [N, R] = pooled
//   [N, C] x W1^T and z [N, C] = act(hidden) x W2^T as tiled dot products (dot_rows: 4 samples x 4
//   weight rows of vector accumulators along the shared dimension); backward gh = gz W2, gpooled =
//   gh W1, gW2 = gz^T act(hidden), gW1 = gh^T pooled as tiled row updates (axpy_gemm: 4 rows x 2
//   vectors, one broadcast of A per row and k; the operands are read in place through strides,
//   no transposed weight copies). The weights are read once per block of 4 samples from L2
//   (the per-sample matrix-vector products once re-read R*C weights N times; then float64 dot
//   products and two transposed copies were half of the backward at 2x2, C 960). Every output
//   element is one FMA chain in index order summed by one thread (deterministic, independent of
//   the thread count; a sample's rows do not depend on the batch: a partial block repeats its last
//   row and drops the results). The bias gradients are float64 sums over n in sample order.
//   (3) An element-wise pass, out = a * gate + add, one work item per run of (n, c) planes (NCHW) or per (n, s) row (NHWC), with the per-(n, c) gate (and, backward,
//   gpooled / HW) computed once in stage 2. Stages 1 and 3 are the memory-bound ones: they are
//   compiled for baseline / AVX2 / AVX-512 (common.h: Compiled, isa_variant) and picked at run time.
//   drop_path: one work item per (n, block of kBlock elements), a vectorised multiply(-add).
//
// Cost (Q = N*C*HW elements of T bytes; the MLP is 2*N*R*C multiply-adds forward, 4*N*R*C backward,
// and reads the 2*R*C weights (and, backward, writes their gradients) from L2 once per 4 samples)
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
// Planes shorter than this are summed by a scalar float64 loop (in index order).
constexpr int64_t kShortPlane = 16;
// NHWC reduction: channels per work item and rows summed in T before the float64 flush.
constexpr int64_t kCBlock = 64;
constexpr int64_t kFlushRows = 64;
// Stage 2 tiles: weight rows (dot form) and samples / rows (both forms) per register tile.
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
    if (len < kShortPlane) {  // 2x2 / 3x3 maps: a vector reduction's setup and tail cost more than the adds
      for (int64_t s = 0; s < len; ++s) total += PROD ? double(x[s]) * double(g[s]) : double(x[s]);
      *out = total;
      return;
    }
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

// Planes per work item of the NCHW passes: about kBlock elements, so the small late maps (2x2, 4x4:
// 18432 planes of 4 values at C 1152, N 16) make one call per block of planes, not one per plane
// (the calls through the ISA pointer were most of the forward's time there).
inline int64_t planes_per_item(int64_t HW) { return std::max<int64_t>(1, kBlock / std::max<int64_t>(HW, 1)); }

template <typename T, bool PROD>
struct PlaneSums {  // planes [0, np) of len values each -> out[0, np)
  PYIMGCLS_INLINE static void run(const T* x, const T* g, int64_t len, int64_t np, double* out) {
    for (int64_t p = 0; p < np; ++p) PlaneSum<T, PROD>::run(x + p * len, PROD ? g + p * len : nullptr, len, out + p);
  }
};

// sums[n*C + c] = sum_s x(n, c, s) (* g(n, c, s)); x and g share the layout.
template <typename T, bool PROD>
void spatial_sums(Isa isa, const T* x, const T* g, double* sums, int64_t N, int64_t C, int64_t HW, bool cl) {
  const bool par = parallel(N * C * HW);
  if (!cl) {
    auto fn = isa_variant<void (*)(const T*, const T*, int64_t, int64_t, double*), PlaneSums<T, PROD>>(isa);
    const int64_t per = planes_per_item(HW), items = (N * C + per - 1) / per;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t p = it * per;
      fn(x + p * HW, PROD ? g + p * HW : nullptr, HW, std::min(per, N * C - p), sums + p);
    }
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
struct PlaneScales {  // planes [0, np) of len values each, m / add per plane
  PYIMGCLS_INLINE static void run(const T* a, const T* m, const T* add, T* out, int64_t len, int64_t np) {
    for (int64_t p = 0; p < np; ++p)
      PlaneScale<T, ADD>::run(a + p * len, m[p], ADD ? add[p] : T(0), out + p * len, len);
  }
};

template <typename T, bool ADD>
void scale_pass(Isa isa, const T* a, const T* m, const T* add, T* out, int64_t N, int64_t C, int64_t HW, bool cl) {
  const bool par = parallel(N * C * HW);
  if (!cl) {
    auto fn = isa_variant<void (*)(const T*, const T*, const T*, T*, int64_t, int64_t), PlaneScales<T, ADD>>(isa);
    const int64_t per = planes_per_item(HW), items = (N * C + per - 1) / per;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t p = it * per;
      fn(a + p * HW, m + p, ADD ? add + p : nullptr, out + p * HW, HW, std::min(per, N * C - p));
    }
  } else {
    auto fn = isa_variant<void (*)(const T*, const T*, const T*, T*, int64_t), RowScale<T, ADD>>(isa);
#pragma omp parallel for schedule(static) if (par)
    for (int64_t r = 0; r < N * HW; ++r) {
      const int64_t n = r / HW;
      fn(a + r * C, m + n * C, ADD ? add + n * C : nullptr, out + r * C, C);
    }
  }
}

// ---- stage 2: the squeeze's matrix products, accumulated in T (float32 FMAs for float32 tensors:
// the float64 dot products were half of the block's time at 2x2, C 960, R 240). Two tiled kernels,
// each output element one FMA chain over k in index order, summed by one thread (deterministic,
// independent of the thread count; a sample's row of the batch-shaped products does not depend on
// the other samples: a partial row block repeats row M - 1 and drops its results).
constexpr int64_t kLanes64 = 64;  // bytes per vector value (one zmm, two ymm, four xmm)

// Dot form (forward): out[m*O + o] = sum_i in[m*I + i] * wt[o*I + i], both operands contiguous
// along i. Tile: kSamples rows of in x kRowBlock rows of wt, kSamples * kRowBlock vector
// accumulators along i, reduced in lane order at the end, then the i % lanes tail in index order.
// FLOPs 2*M*O*I; wt (O*I) read once per block of kSamples rows, from L2.
template <typename T>
struct DotTile {
  PYIMGCLS_INLINE static void run(const T* in, const T* wt, T* out, int64_t M, int64_t I, int64_t O, int64_t m0,
                                  int64_t o0) {
    using V = Vec<T, kLanes64>;
    constexpr int64_t L = kLanes64 / sizeof(T);
    const T* x[kSamples];
    const T* w[kRowBlock];
    for (int64_t k = 0; k < kSamples; ++k) x[k] = in + std::min(m0 + k, M - 1) * I;
    for (int64_t k = 0; k < kRowBlock; ++k) w[k] = wt + std::min(o0 + k, O - 1) * I;
    V acc[kSamples][kRowBlock];
    for (int64_t a = 0; a < kSamples; ++a)
      for (int64_t b = 0; b < kRowBlock; ++b) acc[a][b] = V{};
    const int64_t Iv = I - I % L;
    for (int64_t i = 0; i < Iv; i += L) {
      V wv[kRowBlock];
      for (int64_t b = 0; b < kRowBlock; ++b) __builtin_memcpy(&wv[b], w[b] + i, sizeof(V));
      for (int64_t a = 0; a < kSamples; ++a) {
        V xv;
        __builtin_memcpy(&xv, x[a] + i, sizeof(V));
        for (int64_t b = 0; b < kRowBlock; ++b) acc[a][b] += xv * wv[b];
      }
    }
    for (int64_t a = 0; a < kSamples && m0 + a < M; ++a)
      for (int64_t b = 0; b < kRowBlock && o0 + b < O; ++b) {
        T lanes[L];
        __builtin_memcpy(lanes, &acc[a][b], sizeof(V));
        T sum = T(0);
        for (int64_t q = 0; q < L; ++q) sum += lanes[q];
        for (int64_t i = Iv; i < I; ++i) sum += x[a][i] * w[b][i];
        out[(m0 + a) * O + o0 + b] = sum;
      }
  }
};

// out [M, O] = in [M, I] x wt [O, I]^T.
template <typename T>
void dot_rows(Isa isa, const T* wt, const T* in, T* out, int64_t M, int64_t I, int64_t O) {
  auto fn = isa_variant<void (*)(const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t), DotTile<T>>(isa);
  const int64_t mb = (M + kSamples - 1) / kSamples, ob = (O + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(static) if (parallel(M * I * O))
  for (int64_t item = 0; item < mb * ob; ++item) {
    const int64_t b = item % ob, a = item / ob;  // consecutive items share the in rows
    fn(in, wt, out, M, I, O, a * kSamples, b * kRowBlock);
  }
}

// Axpy form (backward): c[m*ldc + l] = sum_k A(m, k) * b[k*ldb + l], A(m, k) = a[m*sam + k*sak]
// (any strides: gz^T and gh^T are read in place), b's rows contiguous along l (W2, W1, act(hidden),
// pooled: no transposed copies). Tile: kSamples rows x kAxpyVecs vectors of l; per k one load of
// each b vector, one broadcast per row, kSamples * kAxpyVecs FMAs. The l tail (L % lanes) goes
// through bt, b's last columns copied zero-padded to one vector per k row (K * lanes values).
// FLOPs 2*M*L*K; b (K*L) read once per block of kSamples rows, from L2.
constexpr int64_t kAxpyVecs = 2;

template <typename T>
struct AxpyTile {  // rows [m0, m0 + kSamples) x vectors [l0, l0 + nv*lanes), nv <= kAxpyVecs
  PYIMGCLS_INLINE static void run(const T* a, int64_t sam, int64_t sak, const T* b, int64_t ldb, T* c, int64_t ldc,
                                  int64_t M, int64_t K, int64_t m0, int64_t l0, int64_t nv, int64_t cnt) {
    using V = Vec<T, kLanes64>;
    constexpr int64_t L = kLanes64 / sizeof(T);
    const T* ar[kSamples];
    for (int64_t r = 0; r < kSamples; ++r) ar[r] = a + std::min(m0 + r, M - 1) * sam;
    V acc[kSamples][kAxpyVecs];
    for (int64_t r = 0; r < kSamples; ++r)
      for (int64_t v = 0; v < kAxpyVecs; ++v) acc[r][v] = V{};
    if (nv == kAxpyVecs) {
      for (int64_t k = 0; k < K; ++k) {
        V bv[kAxpyVecs];
        for (int64_t v = 0; v < kAxpyVecs; ++v) __builtin_memcpy(&bv[v], b + k * ldb + l0 + v * L, sizeof(V));
        for (int64_t r = 0; r < kSamples; ++r) {
          const V av = V{} + ar[r][k * sak];
          for (int64_t v = 0; v < kAxpyVecs; ++v) acc[r][v] += av * bv[v];
        }
      }
    } else {
      for (int64_t k = 0; k < K; ++k) {
        V bv;
        __builtin_memcpy(&bv, b + k * ldb + l0, sizeof(V));
        for (int64_t r = 0; r < kSamples; ++r) acc[r][0] += (V{} + ar[r][k * sak]) * bv;
      }
    }
    for (int64_t r = 0; r < kSamples && m0 + r < M; ++r) {
      T* cr = c + (m0 + r) * ldc + l0;
      for (int64_t v = 0; v < nv; ++v) {
        const int64_t n = std::min(L, cnt - v * L);
        if (n == L) {
          __builtin_memcpy(cr + v * L, &acc[r][v], sizeof(V));
        } else {
          T lanes[L];
          __builtin_memcpy(lanes, &acc[r][v], sizeof(V));
          for (int64_t q = 0; q < n; ++q) cr[v * L + q] = lanes[q];
        }
      }
    }
  }
};

// c [M, Lc] = A [M, K] x b [K, Lc] (ldb, ldc: row strides of b and c).
template <typename T>
void axpy_gemm(Isa isa, const T* a, int64_t sam, int64_t sak, const T* b, int64_t ldb, T* c, int64_t ldc, int64_t M,
               int64_t Lc, int64_t K) {
  constexpr int64_t L = kLanes64 / sizeof(T);
  auto fn = isa_variant<void (*)(const T*, int64_t, int64_t, const T*, int64_t, T*, int64_t, int64_t, int64_t, int64_t,
                                 int64_t, int64_t, int64_t),
                        AxpyTile<T>>(isa);
  const int64_t full = Lc / L, tail = Lc - full * L;
  std::vector<T> bt(tail ? K * L : 0, T(0));  // b's last tail columns, one zero-padded vector per row
  for (int64_t k = 0; k < (tail ? K : 0); ++k)
    for (int64_t q = 0; q < tail; ++q) bt[k * L + q] = b[k * ldb + full * L + q];
  const int64_t groups = (full + kAxpyVecs - 1) / kAxpyVecs + (tail ? 1 : 0);
  const int64_t mb = (M + kSamples - 1) / kSamples;
#pragma omp parallel for schedule(static) if (parallel(M * Lc * K))
  for (int64_t item = 0; item < mb * groups; ++item) {
    const int64_t gi = item / mb, m0 = (item % mb) * kSamples;  // consecutive items share the b columns
    const int64_t l0 = gi * kAxpyVecs * L;
    if (l0 < full * L) {
      const int64_t nv = std::min(kAxpyVecs, full - gi * kAxpyVecs);
      fn(a, sam, sak, b, ldb, c, ldc, M, K, m0, l0, nv, nv * L);
    } else {
      fn(a, sam, sak, bt.data(), L, c + full * L, ldc, M, K, m0, 0, 1, tail);
    }
  }
}

template <typename T>
void fwd_impl(const T* x, const T* w1, const T* b1, const T* w2, const T* b2, T* y, T* pooled, T* hidden, T* z,
              int64_t N, int64_t C, int64_t HW, int64_t R, bool cl, int act, int gate) {
  const Isa isa = active_isa();
  std::vector<double> sums(N * C);
  spatial_sums<T, false>(isa, x, nullptr, sums.data(), N, C, HW, cl);
  for (int64_t i = 0; i < N * C; ++i) pooled[i] = T(sums[i] / double(HW));  // as stored for the backward
  std::vector<T> h(N * R), a(N * R), v(N * C);
  dot_rows<T>(isa, w1, pooled, h.data(), N, C, R);  // h = pooled W1^T
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < R; ++j) {
      const T hv = b1 ? T(h[n * R + j] + b1[j]) : h[n * R + j];
      hidden[n * R + j] = hv;
      a[n * R + j] = T(se_act(double(hv), act));
    }
  dot_rows<T>(isa, w2, a.data(), v.data(), N, R, C);  // v = act(hidden) W2^T
  std::vector<T> g(N * C);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const T zv = b2 ? T(v[n * C + c] + b2[c]) : v[n * C + c];
      z[n * C + c] = zv;
      g[n * C + c] = T(se_gate(double(zv), gate));
    }
  scale_pass<T, false>(isa, x, g.data(), nullptr, y, N, C, HW, cl);
}

// Backward: four products in the axpy form, every operand read in place through strides.
//   gh [N, R]  = gz [N, C] x W2 [C, R]            (then * act'(hidden))
//   gp [N, C]  = gh [N, R] x W1 [R, C]            (gpooled; / HW into the element-wise pass)
//   gW2 [C, R] = gz^T [C, N] x act(hidden) [N, R]
//   gW1 [R, C] = gh^T [R, N] x pooled [N, C]
// Biases: gb2 = sum_n gz, gb1 = sum_n gh, in sample order in float64. The per-(n, c) / (n, j)
// gate and activation derivatives are O(N*(C+R)) scalar work.
template <typename T>
void bwd_impl(const T* grad, const T* x, const T* w1, const T* w2, const T* pooled, const T* hidden, const T* z,
              T* gx, T* gw1, T* gb1, T* gw2, T* gb2, int64_t N, int64_t C, int64_t HW, int64_t R, bool cl, int act,
              int gate) {
  const Isa isa = active_isa();
  std::vector<double> sums(N * C);
  spatial_sums<T, true>(isa, grad, x, sums.data(), N, C, HW, cl);
  std::vector<T> gz(N * C), gh(N * R), ah(N * R);
  for (int64_t i = 0; i < N * C; ++i) gz[i] = T(se_gate_grad(double(z[i]), sums[i], gate));
  axpy_gemm<T>(isa, gz.data(), C, 1, w2, R, gh.data(), R, N, R, C);
  for (int64_t i = 0; i < N * R; ++i) {
    const double hv = double(hidden[i]);
    gh[i] = T(se_act_grad(hv, double(gh[i]), act));
    ah[i] = T(se_act(hv, act));
  }
  if (gw2) axpy_gemm<T>(isa, gz.data(), 1, C, ah.data(), R, gw2, R, C, R, N);
  if (gw1) axpy_gemm<T>(isa, gh.data(), 1, R, pooled, C, gw1, C, R, C, N);
  if (gb2)
    for (int64_t c = 0; c < C; ++c) {
      double b = 0.0;
      for (int64_t n = 0; n < N; ++n) b += double(gz[n * C + c]);
      gb2[c] = T(b);
    }
  if (gb1)
    for (int64_t j = 0; j < R; ++j) {
      double b = 0.0;
      for (int64_t n = 0; n < N; ++n) b += double(gh[n * R + j]);
      gb1[j] = T(b);
    }
  if (gx) {
    std::vector<T> gp(N * C), g(N * C);
    axpy_gemm<T>(isa, gh.data(), R, 1, w1, C, gp.data(), C, N, C, R);
    for (int64_t i = 0; i < N * C; ++i) {
      gp[i] = T(double(gp[i]) / double(HW));
      g[i] = T(se_gate(double(z[i]), gate));
    }
    scale_pass<T, true>(isa, grad, g.data(), gp.data(), gx, N, C, HW, cl);
  }
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
