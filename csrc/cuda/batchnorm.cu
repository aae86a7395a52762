// CUDA BatchNorm family: batch statistics, fused normalize + residual + activation forward,
// running-statistics update and backward, for float32 / float16 / bfloat16 activations with float32
// statistics (weight, bias, mean, var, invstd and parameter gradients are float32 [C]).
//
// What it computes ([N, C, S] views, S = H*W, M = N*S values per channel)
//   stats:  mean[c], var[c] = biased variance                  fwd: y = act((x - mean) invstd w + b + r)
//   update: rm = (1-m) rm + m mean,  rv = (1-m) rv + m var M/(M-1)
//   bwd:    gp = select(act kept out, grad, 0);  gb = sum gp;  gw = invstd sum gp (x - mean);
//           gx = w invstd (gp - gb/M - (x - mean) invstd^2 sum gp (x - mean) / M)   (eval: w invstd gp)
//
// Algorithm
//   Per-channel sums are a deterministic two-level reduction, no atomics: the M rows are cut into
//   `chunks` ranges fixed by the shape and SM count (batch_norm_chunks). Level 1, block (channel
//   block, chunk):
//     NHWC: a 2-D block, TX threads across channels (VEC channels each: one 16-byte load per row),
//           TY threads down the rows; per-thread fp32 accumulators, then a fixed-order tree over TY
//           in shared memory.
//     NCHW: one channel per block; 256 threads stride along the chunk's rows, which are contiguous
//           inside each (n, c) plane (16-byte loads when S % VEC == 0); warp shuffles + a fixed-order
//           sum of the 8 warp totals.
//   Level 2, one thread per channel: merges the chunk partials in chunk order (in double) and
//   finishes the statistics / gradient coefficients.
//   Statistics are Welford / Chan, not sums of d and d^2: each thread runs Welford's update
//   (count n, mean m, M2 = sum of squared deviations from m) over its values d = x - K (K = the
//   channel's first value), and the partial (n, m, M2) triples are merged by Chan's formula at every
//   level (lanes, warps / the TY tree, chunks). Shifted sums alone lose everything to cancellation in
//   sum d^2 - (sum d)^2 / M when K is far from the mean (an outlier as the first value: d ~ D >> std,
//   sum d^2 ~ M D^2 in fp32); Welford's M2 only ever adds squared deviations from the running mean.
//   The shift stays: an fp32 running mean near |mean| >> std stops moving once std / n < ulp(mean)
//   (mean 1e6, std 1: after ~17 values), while the mean of d is O(std) unless K is an outlier, and
//   then the outlier itself dominates the variance. Counts are exact in fp32 (< 2^24 per thread).
//   Element-wise passes (forward epilogue, grad_input): grid-stride over VEC-element groups, one
//   16-byte load / store per group (along C in NHWC, along S in NCHW when S % VEC == 0), fp32 math,
//   per-channel coefficients (mean, w * invstd, b) read from L1/L2.
//
// Cost (Q = N*C*S elements of T bytes)
//   training fwd: reads 2Q (stats + normalize) [+Q residual], writes Q: min bytes T*(3Q [+Q]).
//   eval fwd: T*(2Q [+Q]).   training bwd: reads grad, x [, out] twice, writes gx [+ gp]:
//   T*(5Q [+2Q out] [+Q gp]); the second read usually hits L2 only for small layers.
//
// Test and benchmark
//   pytest tests/test_batchnorm.py -k cuda
//   python benchmarks/bench_batchnorm.py
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

#include "batchnorm.h"
#include "common.cuh"
#include "runtime.h"

namespace pyimgcls::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;
// Rows of one reduction chunk are a multiple of this (so NCHW vector groups never straddle chunks).
constexpr int64_t kRowAlign = 8;

// Offset of the VEC-group starting at row r, channel c (CL: [M, C] rows; else [N, C, S] planes).
template <bool CL>
__device__ __forceinline__ int64_t offset_of(int64_t r, int64_t c, int64_t C, int64_t S) {
  if constexpr (CL) {
    return r * C + c;
  } else {
    const int64_t n = r / S;
    return (n * C + c) * S + (r - n * S);
  }
}

// ---------------------------------------------------------------------------------------------
// Level 1 of the per-channel reductions. MODE 0 (statistics): values d = x - K, Welford pairs
// (s1, s2) = (mean of d, M2 of d) over the thread's n values. MODE 1 (backward): gp = masked grad,
// sums (s1, s2) = (sum gp, sum gp * (x - mean)); writes gp when gp_out is set.
// part[(chunk * 2 + j) * C + c] = s_j of channel c over the chunk's rows (MODE 0: the chunk's count
// is known from rows_per, see chunk_count).
// ---------------------------------------------------------------------------------------------
struct ReduceArgs {
  const void* x;
  const void* grad;
  const void* out;
  const float* mean;
  void* gp_out;
  float* part;
  int64_t M, C, S, rows_per;
  int act;
};

// Rows of [r0, r1) a lane takes when `span` lanes stride from r0 (lane < span): the Welford count
// of a thread, and of a slot of the TY tree (which holds the lanes congruent to it modulo span).
__device__ __forceinline__ float lane_count(int64_t rows, int64_t lane, int64_t span) {
  return lane < rows ? static_cast<float>((rows - lane + span - 1) / span) : 0.f;
}

// Chan's merge of (nb, mb, M2b) into (na, ma, M2a): n = na + nb, delta = mb - ma,
// m = ma + delta nb / n, M2 = M2a + M2b + delta^2 na nb / n. Empty sides (n = 0) are neutral.
__device__ __forceinline__ void chan_merge(float na, float& ma, float& m2a, float nb, float mb, float m2b) {
  const float n = na + nb;
  const float r = n > 0.f ? __frcp_rn(n) : 0.f;
  const float delta = mb - ma;
  ma = fmaf(delta, nb * r, ma);
  m2a = m2a + m2b + delta * delta * (na * nb * r);
}

// Adds partial (b1, b2) of nb values into (a1, a2) of na values: Chan's merge (MODE 0) or sums.
template <int MODE>
__device__ __forceinline__ void combine(float na, float& a1, float& a2, float nb, float b1, float b2) {
  if constexpr (MODE == 0) {
    chan_merge(na, a1, a2, nb, b1, b2);
  } else {
    a1 += b1;
    a2 += b2;
  }
}

// One VEC group of the thread's next row. MODE 0: inv_n = 1 / (the thread's count including this
// row), the same for its VEC lanes (every lane sees the same rows).
template <typename T, int VEC, bool CL, int MODE>
__device__ __forceinline__ void reduce_group(const ReduceArgs& a, int64_t off, const float (&shift)[VEC],
                                             float inv_n, float (&s1)[VEC], float (&s2)[VEC]) {
  float xv[VEC];
  load_vec<T, VEC>(static_cast<const T*>(a.x) + off, xv);
  if constexpr (MODE == 0) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {  // Welford: m += (d - m) / n; M2 += (d - m_old)(d - m_new)
      const float d = xv[k] - shift[k];
      const float delta = d - s1[k];
      s1[k] = fmaf(delta, inv_n, s1[k]);
      s2[k] = fmaf(delta, d - s1[k], s2[k]);
    }
  } else {
    float g[VEC];
    load_vec<T, VEC>(static_cast<const T*>(a.grad) + off, g);
    if (a.act != 0) {
      float o[VEC];
      load_vec<T, VEC>(static_cast<const T*>(a.out) + off, o);
#pragma unroll
      for (int k = 0; k < VEC; ++k) g[k] = act_grad<sizeof(T) == 2>(g[k], o[k], a.act);
    }
    if (a.gp_out) store_vec<T, VEC>(static_cast<T*>(a.gp_out) + off, g);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      s1[k] += g[k];
      s2[k] = fmaf(g[k], xv[k] - shift[k], s2[k]);
    }
  }
}

// NHWC: block (TX, TY), grid (ceil(C / (TX*VEC)), chunks). Thread (tx, ty) owns channels
// [c0, c0 + VEC) and rows r0 + ty, r0 + ty + TY, ...
// (launch bounds 256 x 3 blocks: up to 80 registers; the default heuristic capped this kernel at 32
// and spilled the 2 x VEC accumulators)
template <typename T, int VEC, int MODE>
__global__ void __launch_bounds__(kThreads, 3) batch_norm_reduce_nhwc_kernel(ReduceArgs a) {
  __shared__ float sm[2][kThreads * VEC];
  const int TX = blockDim.x, TY = blockDim.y;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * TX + tx) * VEC;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * a.rows_per, r1 = min(a.M, r0 + a.rows_per);
  float s1[VEC], s2[VEC], shift[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) s1[k] = s2[k] = shift[k] = 0.f;
  const bool active = c0 < a.C;
  if (active) {
    if constexpr (MODE == 0) {
      load_vec<T, VEC>(static_cast<const T*>(a.x) + c0, shift);  // K = row 0
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) shift[k] = a.mean[c0 + k];
    }
    float n = 0.f;
    for (int64_t r = r0 + ty; r < r1; r += TY) {
      n += 1.f;
      reduce_group<T, VEC, true, MODE>(a, r * a.C + c0, shift, MODE == 0 ? __frcp_rn(n) : 0.f, s1, s2);
    }
  }
  // Fixed-order tree over the TY row lanes (TY is a power of two). Before the step that folds slot
  // ty + half into slot ty, each slot holds the lanes congruent to it modulo 2 * half.
  const int slot = (ty * TX + tx) * VEC;
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    sm[0][slot + k] = s1[k];
    sm[1][slot + k] = s2[k];
  }
  __syncthreads();
  const int64_t rows = r1 > r0 ? r1 - r0 : 0;
  for (int half = TY / 2; half > 0; half /= 2) {
    if (ty < half) {
      const int other = ((ty + half) * TX + tx) * VEC;
      const float na = lane_count(rows, ty, 2 * half), nb = lane_count(rows, ty + half, 2 * half);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        float m1 = sm[0][slot + k], m2 = sm[1][slot + k];
        combine<MODE>(na, m1, m2, nb, sm[0][other + k], sm[1][other + k]);
        sm[0][slot + k] = m1;
        sm[1][slot + k] = m2;
      }
    }
    __syncthreads();
  }
  if (ty == 0 && active) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      a.part[(chunk * 2) * a.C + c0 + k] = sm[0][slot + k];
      a.part[(chunk * 2 + 1) * a.C + c0 + k] = sm[1][slot + k];
    }
  }
}

// NCHW: block of 256 threads, grid (C, chunks). The chunk's rows are walked in VEC groups, which
// stay inside one (n, c) plane because S % VEC == 0 and rows_per % VEC == 0 whenever VEC > 1.
template <typename T, int VEC, int MODE>
__global__ void __launch_bounds__(kThreads) batch_norm_reduce_nchw_kernel(ReduceArgs a) {
  __shared__ float warp_sums[3][kWarps];
  const int64_t c = blockIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * a.rows_per, r1 = min(a.M, r0 + a.rows_per);
  float shift[VEC], s1[VEC], s2[VEC];
  const float K = MODE == 0 ? to_float(static_cast<const T*>(a.x)[c * a.S]) : a.mean[c];
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    shift[k] = K;
    s1[k] = s2[k] = 0.f;
  }
  float n = 0.f;  // rows per VEC lane so far (all VEC lanes see the same number)
  for (int64_t r = r0 + static_cast<int64_t>(threadIdx.x) * VEC; r < r1; r += static_cast<int64_t>(kThreads) * VEC) {
    n += 1.f;
    reduce_group<T, VEC, false, MODE>(a, offset_of<false>(r, c, a.C, a.S), shift, MODE == 0 ? __frcp_rn(n) : 0.f,
                                      s1, s2);
  }
  // The thread's VEC lanes (n values each), then the warp, then the warps; counts follow along
  // (MODE 1 ignores them). Fixed patterns and orders: deterministic.
  float t1 = s1[0], t2 = s2[0], tn = n;
#pragma unroll
  for (int k = 1; k < VEC; ++k) {
    combine<MODE>(tn, t1, t2, n, s1[k], s2[k]);
    tn += n;
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    const float o1 = __shfl_xor_sync(0xffffffffu, t1, o), o2 = __shfl_xor_sync(0xffffffffu, t2, o);
    const float on = __shfl_xor_sync(0xffffffffu, tn, o);
    combine<MODE>(tn, t1, t2, on, o1, o2);
    tn += on;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    warp_sums[0][warp] = t1;
    warp_sums[1][warp] = t2;
    warp_sums[2][warp] = tn;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float u1 = warp_sums[0][0], u2 = warp_sums[1][0], un = warp_sums[2][0];
    for (int w = 1; w < kWarps; ++w) {
      combine<MODE>(un, u1, u2, warp_sums[2][w], warp_sums[0][w], warp_sums[1][w]);
      un += warp_sums[2][w];
    }
    a.part[(chunk * 2) * a.C + c] = u1;
    a.part[(chunk * 2 + 1) * a.C + c] = u2;
  }
}

// ---------------------------------------------------------------------------------------------
// Level 2 and per-channel coefficients (one thread per channel)
// ---------------------------------------------------------------------------------------------
// Level 2: channel c's two level-1 sums over the chunks, in chunk order, in double. part holds, per
// chunk k, the C first sums at row 2k and the C second sums at row 2k + 1.
__device__ __forceinline__ void sum_partials(const float* __restrict__ part, int64_t chunks, int64_t C, int64_t c,
                                             double& s1, double& s2) {
  s1 = 0.0;
  s2 = 0.0;
  for (int64_t k = 0; k < chunks; ++k) {
    s1 += part[(k * 2) * C + c];
    s2 += part[(k * 2 + 1) * C + c];
  }
}

// Level 2 of the statistics: Chan's merge of the chunks' (count, mean of d, M2 of d) in chunk order,
// in double; chunk k holds rows [k * rows_per, min(M, (k + 1) * rows_per)).
// mean = K + mean of d, var = M2 / M (biased). M == 0 (no chunks): 0 / 0 = NaN, as ATen.
template <typename T>
__global__ void batch_norm_stats_fwd_kernel(const T* __restrict__ x, const float* __restrict__ part, float* mean,
                                            float* var, int64_t chunks, int64_t rows_per, int64_t M, int64_t C,
                                            int64_t S, bool cl) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double n = 0.0, m = 0.0, m2 = 0.0;
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t left = M - k * rows_per;
    const double nk = static_cast<double>(left < rows_per ? (left > 0 ? left : 0) : rows_per);
    if (nk == 0.0) continue;
    const double mk = part[(k * 2) * C + c], delta = mk - m, nn = n + nk;
    m += delta * nk / nn;
    m2 += static_cast<double>(part[(k * 2 + 1) * C + c]) + delta * delta * n * nk / nn;
    n = nn;
  }
  const double K = to_float(x[cl ? c : c * S]);
  mean[c] = M > 0 ? static_cast<float>(K + m) : nanf("");
  var[c] = static_cast<float>(m2 / static_cast<double>(M));
}

// invstd = 1 / sqrt(var + eps) (IEEE sqrt and division: nvcc's default -prec-sqrt / -prec-div),
// scale = w * invstd.
__global__ void batch_norm_coef_fwd_kernel(const float* __restrict__ var, const float* __restrict__ w, float* invstd,
                                           float* scale, int64_t C, float eps) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const float is = 1.f / sqrtf(var[c] + eps);
  invstd[c] = is;
  scale[c] = w ? w[c] * is : is;
}

__global__ void batch_norm_update_fwd_kernel(float* rm, float* rv, const float* __restrict__ mean,
                                             const float* __restrict__ var, int64_t C, float momentum, float unbias) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  if (rm) rm[c] = (1.f - momentum) * rm[c] + momentum * mean[c];
  if (rv) rv[c] = (1.f - momentum) * rv[c] + momentum * var[c] * unbias;
}

// coef = [a (C), k (C), scale (C)]: grad_input = (gp - a - (x - mean) k) * scale.
__global__ void batch_norm_coef_bwd_kernel(const float* __restrict__ part, const float* __restrict__ invstd,
                                           const float* __restrict__ w, float* gw, float* gb, float* coef,
                                           int64_t chunks, int64_t M, int64_t C, bool training) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double s1, s2;
  sum_partials(part, chunks, C, c, s1, s2);
  const float is = invstd[c];
  if (gb) gb[c] = static_cast<float>(s1);
  // an empty batch has NaN statistics but nothing to differentiate: 0, as ATen
  if (gw) gw[c] = M > 0 ? static_cast<float>(s2 * is) : 0.f;
  coef[c] = training && M > 0 ? static_cast<float>(s1 / M) : 0.f;
  coef[C + c] = training && M > 0 ? static_cast<float>(static_cast<double>(is) * is * s2 / M) : 0.f;
  coef[2 * C + c] = w ? w[c] * is : is;
}

// ---------------------------------------------------------------------------------------------
// Element-wise passes: one VEC group per loop iteration, grid-stride over Q / VEC groups.
// ---------------------------------------------------------------------------------------------
template <typename T, int VEC, bool CL>
__global__ void __launch_bounds__(kThreads) batch_norm_fwd_kernel(
    const T* __restrict__ x, const float* __restrict__ mean, const float* __restrict__ scale,
    const float* __restrict__ bias, const T* __restrict__ r, T* __restrict__ y, int64_t groups, int64_t C, int64_t S,
    int act) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < groups;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = i * VEC;
    const int64_t c = CL ? e % C : (e / S) % C;  // CL: channels c..c+VEC-1; NCHW: one channel
    float xv[VEC], rv[VEC], out[VEC];
    load_vec<T, VEC>(x + e, xv);
    if (r) load_vec<T, VEC>(r + e, rv);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const int64_t ck = CL ? c + k : c;
      float v = (xv[k] - mean[ck]) * scale[ck];
      if (bias) v += bias[ck];
      if (r) v += rv[k];
      out[k] = apply_act(v, act);
    }
    store_vec<T, VEC>(y + e, out);
  }
}

// (launch bounds 256 x 4 blocks: up to 64 registers, no spills of the 64-bit channel index math)
template <typename T, int VEC, bool CL>
__global__ void __launch_bounds__(kThreads, 4) batch_norm_bwd_kernel(
    const T* __restrict__ g, const T* __restrict__ o, const T* __restrict__ x, const float* __restrict__ mean,
    const float* __restrict__ coef, T* __restrict__ gx, int64_t groups, int64_t C, int64_t S, int act,
    bool training) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < groups;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = i * VEC;
    const int64_t c = CL ? e % C : (e / S) % C;
    float gv[VEC], ov[VEC], xv[VEC], out[VEC];
    load_vec<T, VEC>(g + e, gv);
    if (act != 0) load_vec<T, VEC>(o + e, ov);
    if (training) load_vec<T, VEC>(x + e, xv);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const int64_t ck = CL ? c + k : c;
      float v = act != 0 ? act_grad<sizeof(T) == 2>(gv[k], ov[k], act) : gv[k];
      if (training) v = v - coef[ck] - (xv[k] - mean[ck]) * coef[C + ck];
      out[k] = v * coef[2 * C + ck];
    }
    store_vec<T, VEC>(gx + e, out);
  }
}

// ---------------------------------------------------------------------------------------------
// Host helpers
// ---------------------------------------------------------------------------------------------
int blocks_for(int64_t total, int threads = kThreads) {
  const int64_t b = (total + threads - 1) / threads;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

// VEC for 16-byte accesses when the contiguous extent (C in NHWC, S in NCHW) and every pointer allow.
template <typename T>
int pick_vec(int64_t C, int64_t S, bool cl, std::initializer_list<const void*> ptrs) {
  constexpr int V = 16 / sizeof(T);
  if ((cl ? C : S) % V != 0) return 1;
  for (const void* q : ptrs)
    if (q && !aligned_to(q, 16)) return 1;
  return V;
}

// Calls f(std::integral_constant<int, VEC>, std::bool_constant<CL>).
template <typename T, typename F>
void dispatch_vec(bool cl, int vec, F&& f) {
  constexpr int V = 16 / sizeof(T);
  if (cl) {
    if (vec == V) return f(std::integral_constant<int, V>{}, std::true_type{});
    return f(std::integral_constant<int, 1>{}, std::true_type{});
  }
  if (vec == V) return f(std::integral_constant<int, V>{}, std::false_type{});
  return f(std::integral_constant<int, 1>{}, std::false_type{});
}

int64_t rows_per_chunk(int64_t M, int64_t chunks) {
  const int64_t r = (M + chunks - 1) / chunks;
  return (r + kRowAlign - 1) / kRowAlign * kRowAlign;
}

// Level 1 over the rows, for statistics (MODE 0) or the backward sums (MODE 1).
template <typename T, int MODE>
void launch_reduce(const ReduceArgs& a, int64_t chunks, bool cl, cudaStream_t st) {
  const int vec = pick_vec<T>(a.C, a.S, cl, {a.x, a.grad, a.out, a.gp_out});
  dispatch_vec<T>(cl, vec, [&](auto V, auto CL) {
    constexpr int VEC = decltype(V)::value;
    if constexpr (decltype(CL)::value) {
      const int64_t lanes = (a.C + VEC - 1) / VEC;
      int tx = 1;
      while (tx < lanes && tx < 32) tx *= 2;
      const dim3 block(tx, kThreads / tx);
      const dim3 grid(static_cast<unsigned>((lanes + tx - 1) / tx), static_cast<unsigned>(chunks));
      batch_norm_reduce_nhwc_kernel<T, VEC, MODE><<<grid, block, 0, st>>>(a);
    } else {
      const dim3 grid(static_cast<unsigned>(a.C), static_cast<unsigned>(chunks));
      batch_norm_reduce_nchw_kernel<T, VEC, MODE><<<grid, kThreads, 0, st>>>(a);
    }
    PYIMGCLS_CUDA_CHECK_LAUNCH();
  });
}

void check_sizes(int64_t N, int64_t C, int64_t S, int64_t chunks) {
  if (N < 0 || C <= 0 || S < 0) throw std::invalid_argument("batch_norm: invalid sizes");
  // grid.y holds the chunks (at most 65535); grid.x the channel blocks (NCHW: one per channel, < 2^31)
  if (chunks > 65535) throw std::invalid_argument("batch_norm: chunks must be at most 65535");
}

}  // namespace

int64_t batch_norm_chunks(int64_t N, int64_t C, int64_t S, bool channels_last, int sm_count) {
  const int64_t M = N * S;
  if (M == 0) return 1;
  // About 4 blocks per SM in total, each with at least ~1024 rows (NCHW) or 4 rows per thread row.
  const int64_t cblocks = channels_last ? std::max<int64_t>(1, (C + 255) / 256) : C;
  const int64_t want = std::max<int64_t>(1, (4 * static_cast<int64_t>(sm_count) + cblocks - 1) / cblocks);
  const int64_t min_rows = channels_last ? 64 : 1024;
  const int64_t cap = std::max<int64_t>(1, M / min_rows);
  return std::min<int64_t>({want, cap, 4096});
}

void batch_norm_stats(DType dt, const void* x, float* mean, float* var, float* scratch, int64_t chunks, int64_t N,
                      int64_t C, int64_t S, bool channels_last, int device, uintptr_t stream) {
  check_sizes(N, C, S, chunks);
  const DeviceGuard device_guard(device);
  auto st = reinterpret_cast<cudaStream_t>(stream);
  const int64_t M = N * S;
  dispatch_dtype(dt, "batch_norm", [&](auto tag) {
    using T = decltype(tag);
    const int64_t rows_per = rows_per_chunk(M, chunks);
    ReduceArgs a{x, nullptr, nullptr, nullptr, nullptr, scratch, M, C, S, rows_per, 0};
    if (M > 0) launch_reduce<T, 0>(a, chunks, channels_last, st);
    // M == 0: zero chunks give 0 / 0 = NaN statistics, as ATen's mean of an empty batch
    batch_norm_stats_fwd_kernel<T><<<blocks_for(C), kThreads, 0, st>>>(
        static_cast<const T*>(x), scratch, mean, var, M > 0 ? chunks : 0, rows_per, M, C, S, channels_last);
    PYIMGCLS_CUDA_CHECK_LAUNCH();
  });
}

void batch_norm_fwd(DType dt, const void* x, const float* mean, const float* var, const float* w, const float* b,
                    const void* r, void* y, float* invstd, float* scratch, int64_t N, int64_t C, int64_t S,
                    bool channels_last, double eps, Act act, int device, uintptr_t stream) {
  check_sizes(N, C, S, 0);
  const DeviceGuard device_guard(device);
  auto st = reinterpret_cast<cudaStream_t>(stream);
  batch_norm_coef_fwd_kernel<<<blocks_for(C), kThreads, 0, st>>>(var, w, invstd, scratch, C,
                                                                   static_cast<float>(eps));
  PYIMGCLS_CUDA_CHECK_LAUNCH();
  const int64_t Q = N * C * S;
  if (Q == 0) return;
  dispatch_dtype(dt, "batch_norm", [&](auto tag) {
    using T = decltype(tag);
    const int vec = pick_vec<T>(C, S, channels_last, {x, r, y});
    dispatch_vec<T>(channels_last, vec, [&](auto V, auto CL) {
      constexpr int VEC = decltype(V)::value;
      const int64_t groups = Q / VEC;
      batch_norm_fwd_kernel<T, VEC, decltype(CL)::value><<<blocks_for(groups), kThreads, 0, st>>>(
          static_cast<const T*>(x), mean, scratch, b, static_cast<const T*>(r), static_cast<T*>(y), groups, C, S,
          static_cast<int>(act));
      PYIMGCLS_CUDA_CHECK_LAUNCH();
    });
  });
}

void batch_norm_update_stats(float* rm, float* rv, const float* mean, const float* var, int64_t C, double momentum,
                             int64_t count, int device, uintptr_t stream) {
  const DeviceGuard device_guard(device);
  auto st = reinterpret_cast<cudaStream_t>(stream);
  const double unbias = count > 1 ? static_cast<double>(count) / static_cast<double>(count - 1) : 1.0;
  batch_norm_update_fwd_kernel<<<blocks_for(C), kThreads, 0, st>>>(rm, rv, mean, var, C, static_cast<float>(momentum),
                                                                     static_cast<float>(unbias));
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

void batch_norm_bwd(DType dt, const void* grad, const void* out, const void* x, const float* w, const float* mean,
                    const float* invstd, void* gx, float* gw, float* gb, void* gp, float* scratch, int64_t chunks,
                    int64_t N, int64_t C, int64_t S, bool channels_last, bool training, Act act, int device,
                    uintptr_t stream) {
  check_sizes(N, C, S, chunks);
  const DeviceGuard device_guard(device);
  auto st = reinterpret_cast<cudaStream_t>(stream);
  const int64_t M = N * S;
  const int a_ = static_cast<int>(act);
  float* coef = scratch + 2 * chunks * C;
  const bool need_sums = M > 0 && ((gx && training) || gw || gb || gp);
  dispatch_dtype(dt, "batch_norm", [&](auto tag) {
    using T = decltype(tag);
    if (need_sums) {
      ReduceArgs a{x, grad, out, mean, gp, scratch, M, C, S, rows_per_chunk(M, chunks), a_};
      launch_reduce<T, 1>(a, chunks, channels_last, st);
    }
    batch_norm_coef_bwd_kernel<<<blocks_for(C), kThreads, 0, st>>>(scratch, invstd, w, gw, gb, coef,
                                                                     need_sums ? chunks : 0, M, C, training);
    PYIMGCLS_CUDA_CHECK_LAUNCH();
    const int64_t Q = M * C;
    if (!gx || Q == 0) return;
    const int vec = pick_vec<T>(C, S, channels_last, {grad, out, x, gx});
    dispatch_vec<T>(channels_last, vec, [&](auto V, auto CL) {
      constexpr int VEC = decltype(V)::value;
      const int64_t groups = Q / VEC;
      batch_norm_bwd_kernel<T, VEC, decltype(CL)::value><<<blocks_for(groups), kThreads, 0, st>>>(
          static_cast<const T*>(grad), static_cast<const T*>(out), static_cast<const T*>(x), mean, coef,
          static_cast<T*>(gx), groups, C, S, a_, training);
      PYIMGCLS_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace pyimgcls::cuda
