// CUDA softmax-cross-entropy: F.cross_entropy's loss, its reduction and the gradient w.r.t. the
// logits in ONE launch; the backward is one scaling launch. float32 / float16 / bfloat16 in,
// fp32 arithmetic.
//
// What it computes (x [N, C] logits, t [N] class indices, w [C] class weights or all ones,
// eps = label_smoothing, W = sum_c w[c], lse_i = log sum_c exp(x[i, c])):
//   loss_i   = (1 - eps) * w[t_i] * (lse_i - x[i, t_i]) + eps / C * sum_c w[c] * (lse_i - x[i, c])
//              (0 for ignored rows, t_i == ignore_index)
//   none: loss_i;  sum: sum_i loss_i;  mean: sum_i loss_i / D, D = sum of w[t_i] over non-ignored
//   rows (NaN when D == 0, as PyTorch).
//   grad[i, j] = a_i * p[i, j] - (1 - eps) w[t_i] [j == t_i] - eps / C * w[j],  p = softmax(x[i]),
//   a_i = (1 - eps) w[t_i] + eps / C * W   (0 for ignored rows: their gradient row is 0 * p).
//   See csrc/cpu/softmax_xent.cpp for the derivation from PyTorch's cross_entropy_loss_label_smoothing.
//
// Algorithm (softmax_xent_fwd_kernel<T, G, E, VEC>)
//   A group of G threads owns one row (G <= 32: several rows per 256-thread block, reductions by
//   warp shuffles inside the group; G > 32: one row per G-thread block, shuffles + shared memory).
//   Each thread holds E logits of the row in registers (a "tile" is G * E columns), loaded as VEC-wide
//   vectors (16 bytes) when the row is aligned, so rows up to G * E columns are read from memory
//   exactly once:
//     1. single tile (C <= G * E): group max M (NaN-propagating), e = exp(x - M) kept in registers,
//        S = group sum of e (and, with smoothing, sum w (x - M) and W), then the row scalars and the
//        gradient a * e / S - b written straight from registers. One exp per element.
//     2. longer rows: online max / sum-exp per thread across tiles (running sum rescaled by
//        exp(m_old - m_new)), one (m, s) pair reduction per group, then a second sweep re-reads the
//        tiles (L2-resident: one row is C * itemsize bytes) to write the gradient.
//   All group reductions are fixed butterflies / fixed-order folds: bitwise deterministic.
//   Reduction mean / sum in the same launch: each row's loss and weight go to a [2, N] fp32 scratch
//   buffer; every block then fences and takes a ticket on a 64-bit ticket word the Python side keeps
//   per device and stream (take_ticket below); the block that draws the last ticket re-reads the N
//   per-row values from L2 and sums them in a fixed order (thread k takes rows k, k + B, ..., then a
//   fixed tree) in double, writes loss[0] and denom[0], and resets the word. Which block is last
//   varies, the summation order does not, so the result is deterministic. Launches per forward: 1.
//   The ticket word cannot be poisoned by an earlier launch that stopped before its last block
//   (aborted, or two launches sharing one word): each launch tags the word with its own, larger
//   epoch, which discards an older launch's arrivals (take_ticket).
//   No float atomics; no host synchronisation; never reads out of bounds: a target outside
//   [0, C) (and not ignore_index) is not dereferenced and makes its row's loss, weight and gradient
//   NaN, so the mean / sum is NaN (PyTorch would raise a device-side assert instead).
//
// Memory trade-off: the forward writes the gradient [N, C] in the input dtype (no fp32 [N, C]
//   buffer for fp16/bf16) next to the loss. It is held until the backward instead of the
//   log-probabilities PyTorch keeps (same size), and the backward becomes one scaling pass
//   (read N*C + write N*C) that never touches the logits again. Under no_grad it is not written.
//
// Cost: forward ~ 5*N*C FLOPs + N*C exp; minimum bytes = N*C*itemsize read + N*C*itemsize written
//   + N * (target + loss) bytes (+ 8N scratch). Backward: N*C multiplies; bytes = 2*N*C*itemsize.
//
// Class-probability targets: softmax_xent_prob_fwd_kernel (section "Class-probability targets" below).
//
// Test and benchmark
//   pytest tests/test_softmax_xent.py -k cuda
//   python benchmarks/bench_softmax_xent.py
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "runtime.h"
#include "softmax_xent.h"

namespace pyimgcls::cuda {
namespace {

constexpr float kInf = __builtin_huge_valf();

// 1 / s for s in [1, 2^31] or NaN (a sum of exp(x - max): the max term is exp(0) = 1), bitwise what
// nvcc's IEEE 1.0f / s returns there: its fast path (MUFU.RCP, then one Newton step). The IEEE
// division also carries a called slow path (for denormal / huge s) whose call clobbers predicates and
// registers; in the forward kernel that call made ptxas spill live state to local memory.
__device__ __forceinline__ float rcp_sum_of_exps(float s) {
  const float r = __fdividef(1.0f, s);  // MUFU.RCP estimate (no inline asm: it hides convergence)
  return fmaf(r, fmaf(-s, r, 1.0f), r);
}

// fmaxf drops NaN; the loss must not.
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }

// Reduce K values over the G threads of a group; every thread gets the result (identical bits in
// every thread: each butterfly step adds the same two numbers, and the cross-warp fold reads shared
// memory in one fixed order). smem: K * 32 floats. G > 32 means the group is the whole block.
template <int G, int K>
__device__ __forceinline__ void group_sum(float (&v)[K], float* smem) {
  constexpr int WS = G < 32 ? G : 32;
#pragma unroll
  for (int o = WS / 2; o > 0; o >>= 1)
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] += __shfl_xor_sync(0xffffffffu, v[k], o);
  if constexpr (G > 32) {
    constexpr int NW = G / 32;
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0)
#pragma unroll
      for (int k = 0; k < K; ++k) smem[k * 32 + warp] = v[k];
    __syncthreads();
#pragma unroll
    for (int k = 0; k < K; ++k) {
      float acc = smem[k * 32];
#pragma unroll
      for (int i = 1; i < NW; ++i) acc += smem[k * 32 + i];
      v[k] = acc;
    }
    __syncthreads();  // smem is reused by the next reduction
  }
}

template <int G>
__device__ __forceinline__ float group_max(float v, float* smem) {
  constexpr int WS = G < 32 ? G : 32;
#pragma unroll
  for (int o = WS / 2; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  if constexpr (G > 32) {
    constexpr int NW = G / 32;
    if (threadIdx.x % 32 == 0) smem[threadIdx.x / 32] = v;
    __syncthreads();
    v = smem[0];
#pragma unroll
    for (int i = 1; i < NW; ++i) v = nan_max(v, smem[i]);
    __syncthreads();
  }
  return v;
}

// (m, s) represents s * exp(m) (an online softmax partial); merge two of them. While both maxima
// are -inf there is nothing to add (exp(-inf - -inf) would be NaN).
__device__ __forceinline__ void ms_merge(float& m, float& s, float m2, float s2) {
  const float mn = nan_max(m, m2);
  if (mn != -kInf) s = s * expf(m - mn) + s2 * expf(m2 - mn);
  m = mn;
}

template <int G>
__device__ __forceinline__ void group_ms(float& m, float& s, float* smem) {
  constexpr int WS = G < 32 ? G : 32;
#pragma unroll
  for (int o = WS / 2; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
    ms_merge(m, s, m2, s2);
  }
  if constexpr (G > 32) {
    constexpr int NW = G / 32;
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) {
      smem[warp] = m;
      smem[32 + warp] = s;
    }
    __syncthreads();
    m = smem[0];
    s = smem[32];
#pragma unroll
    for (int i = 1; i < NW; ++i) ms_merge(m, s, smem[i], smem[32 + i]);
    __syncthreads();
  }
}

struct FwdParams {
  const void* x;
  int64_t sxn;
  const void* target;
  int target_i32;
  const void* weight;  // [C] in the input dtype, or null
  int64_t N, C, ignore_index;
  float eps;
  float eps_c;         // eps / C, divided on the host (no division slow path in the kernel)
  int reduction;       // 0 none, 1 mean, 2 sum
  void* loss;
  void* grad;          // [N, C] or null
  float* row_loss;     // [N] (mean / sum)
  float* row_w;        // [N] (mean / sum)
  float* denom;        // [1] (mean)
  unsigned long long* ticket;  // [epoch : 32 | arrivals : 32], see take_ticket
  unsigned int epoch;          // this launch's tag, never 0
};

// The last-block ticket of one launch; returns how many blocks of this launch (this one included)
// have arrived, so the block that gets gridDim.x is the last and reduces.
// Why an epoch: a bare arrival counter must be 0 when a launch starts. The last block resets it, but
// a launch that never reaches its last block (aborted, or a second launch sharing the counter
// concurrently) would leave k != 0 behind, and from then on every launch would elect a wrong "last"
// block (early, before the other rows are written) and leave k behind again: never recovering.
// So the word holds [epoch : 32 | arrivals : 32] and every launch carries its own epoch, a nonzero
// process-wide launch number from the host that only grows. Each block first raises the word to
// [epoch | 0] with atomicMax: a word left by an earlier launch has a smaller epoch and is replaced
// (its arrivals discarded), while a word this launch already counts on ([epoch | k]) is not lowered.
// Then atomicAdd takes the ticket. Two unconditional atomics, no retry loop. arrivals <= gridDim.x
// < 2^31 never carries into the epoch. A word whose epoch is not ours after the max (a stale word
// from a later launch, which only a CUDA graph replaying an older epoch can meet) never elects a
// last block: the loss stays unwritten rather than wrong.
// The last block still resets the word to 0: a CUDA graph replays a kernel node with the epoch it
// was captured with, and the next replay must not find its own epoch with arrivals already counted.
__device__ __forceinline__ unsigned int take_ticket(unsigned long long* ticket, unsigned int epoch) {
  atomicMax(ticket, static_cast<unsigned long long>(epoch) << 32);
  const unsigned long long before = atomicAdd(ticket, 1ull);
  return (before >> 32) == epoch ? static_cast<unsigned int>(before) + 1u : 0u;
}

__device__ __forceinline__ int64_t load_target(const void* target, int target_i32, int64_t row) {
  return target_i32 ? static_cast<int64_t>(static_cast<const int32_t*>(target)[row])
                    : static_cast<const int64_t*>(target)[row];
}

// Last block only: sum the N per-row losses and weights in a fixed order (thread k takes rows
// k, k + BLOCK, ..., then a fixed butterfly and fold) in double and write the reduced loss.
template <typename T, int BLOCK>
__device__ __forceinline__ void reduce_rows(const float* row_loss, const float* row_w, int64_t N, int reduction,
                                         void* loss, float* denom, unsigned long long* ticket, double* dsmem) {
  double sl = 0.0, sd = 0.0;
  for (int64_t i = threadIdx.x; i < N; i += BLOCK) {
    sl += static_cast<double>(__ldcg(row_loss + i));  // L2: other blocks wrote these
    sd += static_cast<double>(__ldcg(row_w + i));
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    sl += __shfl_xor_sync(0xffffffffu, sl, o);
    sd += __shfl_xor_sync(0xffffffffu, sd, o);
  }
  if (threadIdx.x % 32 == 0) {
    dsmem[threadIdx.x / 32] = sl;
    dsmem[32 + threadIdx.x / 32] = sd;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double tl = dsmem[0], td = dsmem[32];
    for (int i = 1; i < BLOCK / 32; ++i) {
      tl += dsmem[i];
      td += dsmem[32 + i];
    }
    if (reduction == 1) {
      static_cast<T*>(loss)[0] = from_float<T>(static_cast<float>(tl / td));  // D == 0: 0 / 0 = NaN
      denom[0] = static_cast<float>(td);
    } else {
      static_cast<T*>(loss)[0] = from_float<T>(static_cast<float>(tl));
    }
    *ticket = 0ull;  // idle again; see take_ticket for why this matters under CUDA graph replays
  }
}

// Launch bounds with a minimum of resident blocks, so ptxas works to an explicit register budget:
// 64 registers (1024 / BLOCK blocks: half the SM's threads) for every configuration but the long-row
// ones with 16+ values per thread in 512-thread blocks, which get 128 (1 block; they needed 116-128
// before). With the block size alone ptxas spilled the row state of the 16-value fp16/bf16 rows on
// sm_90a (20 bytes at 64 registers).
template <int BLOCK, int E>
constexpr int xent_fwd_min_blocks() { return BLOCK >= 512 && E >= 16 ? 1 : 1024 / BLOCK; }

template <typename T, int G, int E, int VEC>
__global__ void __launch_bounds__(G > 32 ? G : 256, (xent_fwd_min_blocks<(G > 32 ? G : 256), E>()))
softmax_xent_fwd_kernel(const FwdParams p) {
  constexpr int BLOCK = G > 32 ? G : 256;
  constexpr int R = BLOCK / G;     // rows per block
  constexpr int TILE = G * E;      // columns per tile
  constexpr int NV = E / VEC;      // vectors per thread per tile
  static_assert(E % VEC == 0, "E must be a multiple of VEC");
  __shared__ float smem[3 * 32];
  __shared__ double dsmem[2 * 32];
  __shared__ int s_last;

  const int lane = threadIdx.x % G;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * R + threadIdx.x / G;
  // Inactive groups (row >= N in the last block) run the same code on masked values so every lane
  // of a warp reaches the shuffles; they store nothing.
  const bool active = row < p.N;
  const int64_t C = p.C;
  const T* x = static_cast<const T*>(p.x) + (active ? row * p.sxn : 0);
  const T* w = static_cast<const T*>(p.weight);
  const bool smooth = p.eps > 0.0f;
  const bool wsmooth = smooth && w != nullptr;

  // 1. Target of this row. Out-of-range targets are flagged, never dereferenced.
  const int64_t t = active ? load_target(p.target, p.target_i32, row) : p.ignore_index;
  const bool ignored = t == p.ignore_index;
  const bool valid = active && !ignored && t >= 0 && t < C;
  const bool bad = active && !ignored && !valid;

  // v[i * VEC + k] <-> column tile * TILE + (i * G + lane) * VEC + k
  float v[E];
  auto col_of = [&](int64_t tile, int i) -> int64_t {
    return tile * TILE + static_cast<int64_t>(i * G + lane) * VEC;
  };
  auto load_tile = [&](int64_t tile) {
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int64_t c = col_of(tile, i);
      if (active && c < C) {  // with VEC > 1, C % VEC == 0: a vector is all in or all out
        // A plain Pack load, not load_vec: its __restrict__ pointer lets the compiler move these
        // loads to the read-only (LDG.CONSTANT) path, which changes this kernel's code and registers.
        const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(x + c);
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[i * VEC + k] = to_float(pk.v[k]);
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[i * VEC + k] = -kInf;
      }
    }
  };
  auto wt_at = [&](int64_t c) -> float { return w != nullptr ? to_float(w[c]) : 1.0f; };

  const int64_t ntiles = (C + TILE - 1) / TILE;
  float M, S, W, sw = 0.0f;
  if (ntiles <= 1) {
    // 2a. Single tile: the row lives in registers.
    load_tile(0);
    float tm = -kInf;
#pragma unroll
    for (int j = 0; j < E; ++j) tm = nan_max(tm, v[j]);
    M = group_max<G>(tm, smem);
    float part[3] = {0.0f, 0.0f, 0.0f};  // sum e, sum w (x - M), sum w
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      const int64_t c0 = col_of(0, i);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float xm = v[i * VEC + k] - M;
        if (smooth && c0 + k < C) {
          const float wc = wt_at(c0 + k);
          part[1] += wc * xm;
          part[2] += wc;
        }
        v[i * VEC + k] = expf(xm);  // padding: exp(-inf) = 0
        part[0] += v[i * VEC + k];
      }
    }
    if (smooth) {
      group_sum<G, 3>(part, smem);
      sw = part[1];
    } else {
      float s1[1] = {part[0]};
      group_sum<G, 1>(s1, smem);
      part[0] = s1[0];
    }
    S = part[0];
    W = wsmooth ? part[2] : static_cast<float>(C);
  } else {
    // 2b. Online max / sum-exp over tiles, one (m, s) pair per thread.
    float m = -kInf, s = 0.0f, wsum[1] = {0.0f};
#pragma unroll 1
    for (int64_t tile = 0; tile < ntiles; ++tile) {
      load_tile(tile);
      float tm = -kInf;
#pragma unroll
      for (int j = 0; j < E; ++j) tm = nan_max(tm, v[j]);
      const float mn = nan_max(m, tm);
      if (mn != -kInf) {
        s *= expf(m - mn);
#pragma unroll
        for (int j = 0; j < E; ++j) s += expf(v[j] - mn);
      }
      m = mn;
      if (wsmooth)
#pragma unroll
        for (int i = 0; i < NV; ++i) {
          const int64_t c0 = col_of(tile, i);
#pragma unroll
          for (int k = 0; k < VEC; ++k)
            if (c0 + k < C) wsum[0] += to_float(w[c0 + k]);
        }
    }
    group_ms<G>(m, s, smem);
    if (wsmooth) group_sum<G, 1>(wsum, smem);
    M = m;
    S = s;
    W = wsmooth ? wsum[0] : static_cast<float>(C);
  }

  // 3. Row scalars (every thread of the group computes them). M == -inf (row of -inf) gives NaN
  //    through x_t - M and exp(x - M), as PyTorch's log_softmax does.
  const float nanf_ = __int_as_float(0x7fc00000);
  const float inv_s = rcp_sum_of_exps(S);
  float wt = 0.0f, a = 0.0f, c1 = 0.0f, c2 = 0.0f;
  if (valid) {
    wt = wt_at(t);
    a = smooth ? (1.0f - p.eps) * wt + p.eps_c * W : wt;
    c1 = smooth ? (1.0f - p.eps) * wt : wt;
    c2 = smooth ? p.eps_c : 0.0f;
  } else if (bad) {
    a = nanf_;
  }
  T* g = p.grad != nullptr ? static_cast<T*>(p.grad) + (active ? row * C : 0) : nullptr;
  auto grad_of = [&](float e_scaled, int64_t c) -> float {
    float r = a * e_scaled;
    if (c == t) r -= c1;
    if (smooth) r -= c2 * wt_at(c);
    return r;
  };
  auto store_grad = [&](int64_t tile, int i, const float* gv) {
    Pack<T, VEC> pk;
#pragma unroll
    for (int k = 0; k < VEC; ++k) pk.v[k] = from_float<T>(gv[k]);
    *reinterpret_cast<Pack<T, VEC>*>(g + col_of(tile, i)) = pk;
  };

  // 4. Gradient: from registers (single tile) or by re-reading the tiles (which also gives the
  //    smoothing sum relative to the final max).
  if (ntiles <= 1) {
    if (g != nullptr) {
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        const int64_t c0 = col_of(0, i);
        if (active && c0 < C) {
          float gv[VEC];
#pragma unroll
          for (int k = 0; k < VEC; ++k) gv[k] = grad_of(v[i * VEC + k] * inv_s, c0 + k);
          store_grad(0, i, gv);
        }
      }
    }
  } else if (g != nullptr || smooth) {
    float swp[1] = {0.0f};
#pragma unroll 1
    for (int64_t tile = 0; tile < ntiles; ++tile) {
      load_tile(tile);
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        const int64_t c0 = col_of(tile, i);
        if (active && c0 < C) {
          float gv[VEC];
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            const float xm = v[i * VEC + k] - M;
            if (smooth) swp[0] += wt_at(c0 + k) * xm;
            gv[k] = grad_of(expf(xm) * inv_s, c0 + k);
          }
          if (g != nullptr) store_grad(tile, i, gv);
        }
      }
    }
    if (smooth) {
      group_sum<G, 1>(swp, smem);
      sw = swp[0];
    }
  }

  // 5. Per-row loss: 0 for ignored rows, NaN for out-of-range targets.
  if (active && lane == 0) {
    float loss = 0.0f, rw = 0.0f;
    if (valid) {
      const float log_s = logf(S);
      const float nll = wt * (log_s - (to_float(x[t]) - M));
      loss = smooth ? (1.0f - p.eps) * nll + p.eps_c * (W * log_s - sw) : nll;
      rw = wt;
    } else if (bad) {
      loss = rw = nanf_;
    }
    if (p.reduction == 0) {
      static_cast<T*>(p.loss)[row] = from_float<T>(loss);
    } else {
      p.row_loss[row] = loss;
      p.row_w[row] = rw;
    }
  }
  if (p.reduction == 0) return;

  // 6. Mean / sum: the last block to finish reduces all rows in a fixed order.
  __threadfence();  // publish this block's row values before taking a ticket
  __syncthreads();
  if (threadIdx.x == 0) s_last = take_ticket(p.ticket, p.epoch) == gridDim.x;
  __syncthreads();
  if (!s_last) return;
  __threadfence();  // pair with the other blocks' fences before reading their rows
  reduce_rows<T, BLOCK>(p.row_loss, p.row_w, p.N, p.reduction, p.loss, p.denom, p.ticket, dsmem);
}

struct BwdParams {
  const void* saved;
  const void* target;
  int target_i32;
  const void* go;
  int64_t go_stride;
  int per_row;
  const float* denom;  // mean only
  int64_t N, C, ignore_index;
  void* out;
};

template <typename T, int G, int VEC>
__global__ void __launch_bounds__(G > 32 ? G : 256)
softmax_xent_bwd_kernel(const BwdParams p) {
  constexpr int BLOCK = G > 32 ? G : 256;
  constexpr int R = BLOCK / G;
  const int lane = threadIdx.x % G;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * R + threadIdx.x / G;
  if (row >= p.N) return;  // no group-wide communication below
  // 1. Row scale: 0 for ignored rows (0 * saved keeps a NaN row NaN, as PyTorch).
  // target null: class-probability targets, no row is ignored
  const bool ignored = p.target != nullptr && load_target(p.target, p.target_i32, row) == p.ignore_index;
  float sc = 0.0f;
  if (!ignored) {
    sc = to_float(static_cast<const T*>(p.go)[p.per_row ? row * p.go_stride : 0]);
    if (p.denom != nullptr) {
      const float d = p.denom[0];
      // PyTorch's weighted mean with D == 0 gives NaN rows (0 * inf), not inf.
      sc = d == 0.0f ? __int_as_float(0x7fc00000) : sc / d;
    }
  }
  // 2. Scale the saved row, VEC elements at a time.
  const T* s = static_cast<const T*>(p.saved) + row * p.C;
  T* o = static_cast<T*>(p.out) + row * p.C;
#pragma unroll 4
  for (int64_t c = static_cast<int64_t>(lane) * VEC; c < p.C; c += static_cast<int64_t>(G) * VEC) {
    Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(s + c);  // plain load: see load_tile
#pragma unroll
    for (int k = 0; k < VEC; ++k) pk.v[k] = from_float<T>(to_float(pk.v[k]) * sc);
    *reinterpret_cast<Pack<T, VEC>*>(o + c) = pk;
  }
}

// (G threads per row, E logits per thread per tile) by row length. Rows up to 16384 columns stay
// in registers (512 threads x 32; at most 512 threads so that each may hold 128 registers without
// spilling); longer rows loop over tiles and re-read them from L2 for the gradient.
struct Cfg {
  int id, G, E;
};

Cfg pick_cfg(int64_t C) {
  if (C <= 16) return {0, 4, 4};
  if (C <= 64) return {1, 8, 8};
  if (C <= 128) return {2, 16, 8};
  if (C <= 256) return {3, 32, 8};
  if (C <= 512) return {4, 64, 8};
  if (C <= 1024) return {5, 128, 8};
  if (C <= 2048) return {6, 256, 8};
  if (C <= 4096) return {7, 512, 8};
  if (C <= 8192) return {8, 512, 16};
  return {9, 512, 32};
}

inline bool aligned(const void* ptr, int bytes) {
  return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(bytes) == 0;
}

template <typename T, int G, int E>
void launch_fwd_cfg(const FwdParams& p, bool vec, cudaStream_t stream) {
  constexpr int BLOCK = G > 32 ? G : 256;
  constexpr int R = BLOCK / G;
  constexpr int V = (E < 16 / static_cast<int>(sizeof(T))) ? E : 16 / static_cast<int>(sizeof(T));
  const int64_t blocks = std::max<int64_t>(1, (p.N + R - 1) / R);  // N == 0: one block writes the empty reduction
  if (blocks > 0x7fffffffLL) throw std::invalid_argument("softmax_xent: too many rows for one launch");
  if (vec)
    softmax_xent_fwd_kernel<T, G, E, V><<<static_cast<unsigned>(blocks), BLOCK, 0, stream>>>(p);
  else
    softmax_xent_fwd_kernel<T, G, E, 1><<<static_cast<unsigned>(blocks), BLOCK, 0, stream>>>(p);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

template <typename T, int G, int E>
void launch_bwd_cfg(const BwdParams& p, bool vec, cudaStream_t stream) {
  constexpr int BLOCK = G > 32 ? G : 256;
  constexpr int R = BLOCK / G;
  constexpr int V = (E < 16 / static_cast<int>(sizeof(T))) ? E : 16 / static_cast<int>(sizeof(T));
  const int64_t blocks = (p.N + R - 1) / R;
  if (blocks > 0x7fffffffLL) throw std::invalid_argument("softmax_xent: too many rows for one launch");
  if (vec)
    softmax_xent_bwd_kernel<T, G, V><<<static_cast<unsigned>(blocks), BLOCK, 0, stream>>>(p);
  else
    softmax_xent_bwd_kernel<T, G, 1><<<static_cast<unsigned>(blocks), BLOCK, 0, stream>>>(p);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

// One case per configuration of pick_cfg: CALL(G, E) with compile-time G and E.
#define PYIMGCLS_XENT_SWITCH_CFG(id, CALL) \
  switch (id) {                             \
    case 0: CALL(4, 4); break;              \
    case 1: CALL(8, 8); break;              \
    case 2: CALL(16, 8); break;             \
    case 3: CALL(32, 8); break;             \
    case 4: CALL(64, 8); break;             \
    case 5: CALL(128, 8); break;            \
    case 6: CALL(256, 8); break;            \
    case 7: CALL(512, 8); break;            \
    case 8: CALL(512, 16); break;           \
    default: CALL(512, 32); break;          \
  }

template <typename T>
int vec_width(int E) {
  const int v = 16 / static_cast<int>(sizeof(T));
  return E < v ? E : v;
}

template <typename T>
void fwd_t(const FwdParams& p, cudaStream_t stream) {
  const Cfg c = pick_cfg(p.C);
  const int V = vec_width<T>(c.E);
  const int vb = V * static_cast<int>(sizeof(T));
  const bool vec = p.C % V == 0 && p.sxn % V == 0 && aligned(p.x, vb) && aligned(p.grad, vb);
#define PYIMGCLS_XENT_FWD(G, E) launch_fwd_cfg<T, G, E>(p, vec, stream)
  PYIMGCLS_XENT_SWITCH_CFG(c.id, PYIMGCLS_XENT_FWD)
#undef PYIMGCLS_XENT_FWD
}

template <typename T>
void bwd_t(const BwdParams& p, cudaStream_t stream) {
  const Cfg c = pick_cfg(p.C);
  const int V = vec_width<T>(c.E);
  const int vb = V * static_cast<int>(sizeof(T));
  const bool vec = p.C % V == 0 && aligned(p.saved, vb) && aligned(p.out, vb);
#define PYIMGCLS_XENT_BWD(G, E) launch_bwd_cfg<T, G, E>(p, vec, stream)
  PYIMGCLS_XENT_SWITCH_CFG(c.id, PYIMGCLS_XENT_BWD)
#undef PYIMGCLS_XENT_BWD
}


// ---------------------------------------------------------------------------------------------
// Class-probability targets (softmax_xent_prob_fwd_kernel, softmax_xent_prob_reduce_kernel).
//   t [N, C] probabilities (row stride stn, unit class stride, dt), t' = (1 - eps) t + eps / C,
//   v = w t', V = sum_c v_c:  loss = V log S - sum_c v_c (x_c - M),  grad_c = V e^(x_c - M) / S - v_c.
//   One warp per row, 8 rows per 256-thread block, element j of a row in lane j % 32 (coalesced):
//   sweep 1 keeps a per-lane online (max, sum-exp) pair and V, combined by a butterfly of warp
//   shuffles (every lane ends with identical bits: each step adds the same two numbers); sweep 2
//   re-reads the row (L1/L2-resident) for sum v (x - M) and writes the gradient. One exp per element
//   per sweep. Reduction mean / sum: per-row losses to an fp32 scratch [N], then a one-block
//   launch sums them in a fixed order in double (deterministic): 2 launches (none: 1).
//   Cost: ~ 9*N*C FLOPs + 2*N*C exp; bytes >= 2*N*C*itemsize read + N*C*itemsize written.
//   A simpler schedule than the index-target kernel (no register-resident tiles, no vector loads):
//   correct for every C, not tuned.
// ---------------------------------------------------------------------------------------------
struct ProbFwdParams {
  const void* x;
  int64_t sxn;
  const void* t;
  int64_t stn;
  const void* w;  // [C] or null
  int64_t N, C;
  float eps;
  int reduction;
  void* loss;      // [N] (none) or [] in dt
  void* grad;      // [N, C] in dt or null
  float* row_loss; // [N] fp32 scratch (mean / sum)
};

constexpr int kProbRowsPerBlock = 8;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Combine per-lane (max, sum of exp(x - max)) pairs over the warp.
__device__ __forceinline__ void warp_max_sum(float& m, float& s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float mo = __shfl_xor_sync(0xffffffffu, m, o), so = __shfl_xor_sync(0xffffffffu, s, o);
    const float mn = nan_max(m, mo);
    // a lane that has seen only -inf contributes 0 (exp(-inf - -inf) would be NaN)
    const float a = (m == -kInf) ? 0.f : s * expf(m - mn);
    const float b = (mo == -kInf) ? 0.f : so * expf(mo - mn);
    s = a + b;  // a + b == b + a: both lanes of the pair get the same bits
    m = mn;
  }
}

template <typename T>
__global__ void __launch_bounds__(256) softmax_xent_prob_fwd_kernel(const ProbFwdParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kProbRowsPerBlock + (threadIdx.x >> 5);
  if (row >= p.N) return;  // the whole warp leaves together
  const T* x = static_cast<const T*>(p.x) + row * p.sxn;
  const T* t = static_cast<const T*>(p.t) + row * p.stn;
  const T* w = static_cast<const T*>(p.w);
  const float ceps = 1.f - p.eps, ec = p.eps / static_cast<float>(p.C);
  // 1. Online max / sum-exp per lane, and V.
  float m = -kInf, s = 0.f, V = 0.f;
  for (int64_t j = lane; j < p.C; j += 32) {
    const float xv = to_float(x[j]);
    float v = ceps * to_float(t[j]) + ec;
    if (w != nullptr) v *= to_float(w[j]);
    V += v;
    if (xv > m) {
      s = (m == -kInf ? 0.f : s * expf(m - xv)) + 1.f;
      m = xv;
    } else if (xv != xv) {
      m = s = __int_as_float(0x7fc00000);  // a NaN logit makes the row NaN, as PyTorch
    } else if (xv != -kInf) {
      s += expf(xv - m);
    }
  }
  warp_max_sum(m, s);
  V = warp_sum(V);
  // 2. sum v (x - M) and the gradient. M == -inf (all -inf) gives NaN through x - M, as PyTorch.
  const float inv_s = 1.f / s;
  T* g = p.grad != nullptr ? static_cast<T*>(p.grad) + row * p.C : nullptr;
  float A = 0.f;
  for (int64_t j = lane; j < p.C; j += 32) {
    const float xv = to_float(x[j]);
    float v = ceps * to_float(t[j]) + ec;
    if (w != nullptr) v *= to_float(w[j]);
    A += v * (xv - m);  // 0 * -inf = NaN for a -inf logit with v = 0, as PyTorch's log_softmax * t
    if (g != nullptr) g[j] = from_float<T>(V * expf(xv - m) * inv_s - v);
  }
  A = warp_sum(A);
  if (lane == 0) {
    const float loss = V * logf(s) - A;
    if (p.reduction == 0)
      static_cast<T*>(p.loss)[row] = from_float<T>(loss);
    else
      p.row_loss[row] = loss;
  }
}

// One block: thread k sums rows k, k + 256, ... in double, then a fixed tree; loss[0] = sum or
// sum / N (N == 0: 0 / 0 = NaN, as PyTorch), denom[0] = N for the mean.
template <typename T>
__global__ void __launch_bounds__(256) softmax_xent_prob_reduce_kernel(const float* row_loss, int64_t N, int mean,
                                                                       void* loss, float* denom) {
  __shared__ double part[256];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < N; i += 256) acc += static_cast<double>(row_loss[i]);
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int o = 128; o > 0; o >>= 1) {
    if (static_cast<int>(threadIdx.x) < o) part[threadIdx.x] += part[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double total = mean ? part[0] / static_cast<double>(N) : part[0];
    *static_cast<T*>(loss) = from_float<T>(static_cast<float>(total));
    if (mean) *denom = static_cast<float>(N);
  }
}

template <typename T>
void prob_fwd_t(const ProbFwdParams& p, float* denom, cudaStream_t stream) {
  if (p.N > 0) {
    const int64_t blocks = (p.N + kProbRowsPerBlock - 1) / kProbRowsPerBlock;
    if (blocks > 0x7fffffffLL) throw std::invalid_argument("softmax_xent_prob: too many rows for one launch");
    softmax_xent_prob_fwd_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(p);
    PYIMGCLS_CUDA_CHECK_LAUNCH();
  }
  if (p.reduction != 0) {
    softmax_xent_prob_reduce_kernel<T><<<1, 256, 0, stream>>>(p.row_loss, p.N, p.reduction == 1, p.loss, denom);
    PYIMGCLS_CUDA_CHECK_LAUNCH();
  }
}
// A nonzero, increasing tag per forward launch in this process (see take_ticket). It wraps after
// 2^32 - 1 launches; the word is 0 between complete launches, so a wrap matters only if the launch
// just before it was incomplete.
unsigned int next_epoch() {
  static std::atomic<unsigned int> launches{0};
  unsigned int e;
  do e = launches.fetch_add(1u, std::memory_order_relaxed) + 1u;
  while (e == 0u);
  return e;
}
}  // namespace

void softmax_xent_fwd(DType dt, const void* x, int64_t sxn, const void* target, bool target_i32,
                      const void* weight, int64_t N, int64_t C, int64_t ignore_index, float label_smoothing,
                      int reduction, void* loss, void* grad, float* row_scratch, float* denom,
                      unsigned long long* ticket, int device, uintptr_t stream) {
  if (N < 0 || C < 0) throw std::invalid_argument("softmax_xent_fwd: N and C must be >= 0");
  if (reduction < 0 || reduction > 2) throw std::invalid_argument("softmax_xent_fwd: reduction must be 0, 1 or 2");
  if (reduction != 0 && (ticket == nullptr || (N > 0 && row_scratch == nullptr)))
    throw std::invalid_argument("softmax_xent_fwd: mean / sum need the row scratch buffer and the ticket word");
  if (reduction == 1 && denom == nullptr)
    throw std::invalid_argument("softmax_xent_fwd: reduction 'mean' needs the denominator output");
  if (reduction == 0 && N == 0) return;
  const DeviceGuard device_guard(device);
  const float eps_c = C > 0 ? label_smoothing / static_cast<float>(C) : 0.0f;
  // Members in declaration order (see FwdParams).
  const FwdParams p{x, sxn, target, target_i32 ? 1 : 0, weight, N, C, ignore_index, label_smoothing, eps_c, reduction,
                    loss, grad, row_scratch, row_scratch != nullptr ? row_scratch + N : nullptr, denom, ticket,
                    next_epoch()};
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dt, "softmax_xent", [&](auto tag) { fwd_t<decltype(tag)>(p, s); });
}

void softmax_xent_bwd(DType dt, const void* saved, const void* target, bool target_i32, const void* grad_loss,
                      int64_t go_stride, bool per_row, const float* denom, int64_t N, int64_t C,
                      int64_t ignore_index, void* grad_in, int device, uintptr_t stream) {
  if (N < 0 || C < 0) throw std::invalid_argument("softmax_xent_bwd: N and C must be >= 0");
  if (N == 0 || C == 0) return;
  const DeviceGuard device_guard(device);
  // Members in declaration order (see BwdParams).
  const BwdParams p{saved, target, target_i32 ? 1 : 0, grad_loss, go_stride, per_row ? 1 : 0,
                    denom, N, C, ignore_index, grad_in};
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dt, "softmax_xent", [&](auto tag) { bwd_t<decltype(tag)>(p, s); });
}

void softmax_xent_prob_fwd(DType dt, const void* x, int64_t sxn, const void* target, int64_t stn,
                           const void* weight, int64_t N, int64_t C, float label_smoothing, int reduction,
                           void* loss, void* grad, float* row_scratch, float* denom, int device, uintptr_t stream) {
  if (N < 0 || C < 0) throw std::invalid_argument("softmax_xent_prob_fwd: N and C must be >= 0");
  if (reduction < 0 || reduction > 2)
    throw std::invalid_argument("softmax_xent_prob_fwd: reduction must be 0, 1 or 2");
  if (reduction != 0 && N > 0 && row_scratch == nullptr)
    throw std::invalid_argument("softmax_xent_prob_fwd: mean / sum need the row scratch buffer");
  if (reduction == 1 && denom == nullptr)
    throw std::invalid_argument("softmax_xent_prob_fwd: reduction 'mean' needs the denominator output");
  if (reduction == 0 && N == 0) return;
  const DeviceGuard device_guard(device);
  const ProbFwdParams p{x, sxn, target, stn, weight, N, C, label_smoothing, reduction, loss, grad, row_scratch};
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dt, "softmax_xent_prob", [&](auto tag) { prob_fwd_t<decltype(tag)>(p, denom, s); });
}

}  // namespace pyimgcls::cuda
