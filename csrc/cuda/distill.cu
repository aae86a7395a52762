// CUDA knowledge-distillation loss: the loss, its reduction and the gradient w.r.t. the student
// logits in ONE launch; the backward is the cross-entropy's scaling launch (softmax_xent_bwd).
// float32 / float16 / bfloat16 in, fp32 arithmetic.
//
// What it computes (s [N, C] student logits, t [N, C] teacher logits, y [N] class indices, T the
// temperature, a = alpha, eps = label smoothing; derivation in csrc/cpu/distill.cpp):
//   loss_i = a T^2 KL(softmax(t_i / T) || softmax(s_i / T)) + (1 - a) CE_eps(s_i, y_i), 0 if y_i ignored
//   none: loss_i;  sum: sum_i loss_i;  mean: sum_i loss_i / D, D = counted rows (NaN when D == 0).
//   grad[i, c] = a T (p_T,c - q_c) + (1 - a) (p_c - eps / C - (1 - eps) [c == y_i]), 0 for ignored rows.
//
// Algorithm (distill_fwd_kernel<T, G>): a group of G threads owns one row (G = 32: a warp, 8 rows per
// 256-thread block, reductions by shuffles; G = 256: the block, shuffles + shared memory). Thread
// `lane` takes columns lane, lane + G, ... (coalesced across the group).
//   1. Row maxima ms, mt (NaN-propagating group max).
//   2. With the exact maxima every exp argument is <= 0 (no overflow for any logit size, no rescaling):
//      Z1 = sum exp(s - ms), ZT = sum exp((s - ms) / T), Zt = sum exp((t - mt) / T),
//      Wq = sum exp((t - mt) / T) ((t - mt) - (s - ms)), Sd = sum (s - ms)   (one group sum of 5)
//      KL = Wq / (T Zt) - log Zt + log ZT,  CE = log Z1 - (1 - eps)(s_y - ms) - eps / C * Sd.
//   3. Gradient sweep: the exps recomputed (6 per element in all). Per element of fp32 rows the
//      kernel moves 12 bytes (two logits read, the gradient written) against ~30 FLOPs + 6 MUFU.EX2:
//      memory-bound on A100 / H100 (predicted, unmeasured).
//   Sweeps 2 and 3 re-read the row from L1 / L2 (one row is 2 C itemsize bytes); DRAM traffic stays at
//   the minimum below when the block's rows fit in L2. The Triton kernel does the same with an online
//   (single-sweep) max / sum instead; here the exact maxima keep every block free of rescaling and of
//   the -inf special cases an online merge has.
//   Mean / sum in the same launch: per-row (loss, counted) go to a [2, N] fp32 scratch; each block
//   fences and takes an epoch-tagged ticket (take_ticket, the scheme of softmax_xent.cu); the last
//   block sums them in a fixed order in double -- deterministic -- and resets the ticket word.
//   Out-of-range targets are never dereferenced: their row's loss and gradient are NaN.
//
// Cost: forward ~ 30 N*C FLOPs + 6 N*C exp; minimum bytes = 2 N*C*itemsize read + N*C*itemsize written
//   (gradient) + N * (target + loss) bytes (+ 8 N scratch for mean / sum). One launch.
//
// Test and benchmark
//   pytest tests/test_distill.py -k cuda
//   python benchmarks/bench_distill.py
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>

#include "common.cuh"
#include "distill.h"
#include "runtime.h"

namespace pyimgcls::cuda {
namespace {

__device__ __forceinline__ float kd_nan_max(float a, float b) { return (a != a || a > b) ? a : b; }

// Group reductions over G threads (G = 32: a warp; G = 256: the block, folded in a fixed order
// through smem of K * 8 floats). Every thread gets identical bits.
template <int G, int K>
__device__ __forceinline__ void kd_group_sum(float (&v)[K], float* smem) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] += __shfl_xor_sync(0xffffffffu, v[k], o);
  if constexpr (G > 32) {
    constexpr int NW = G / 32;
    if (threadIdx.x % 32 == 0)
#pragma unroll
      for (int k = 0; k < K; ++k) smem[k * NW + threadIdx.x / 32] = v[k];
    __syncthreads();
#pragma unroll
    for (int k = 0; k < K; ++k) {
      float acc = smem[k * NW];
#pragma unroll
      for (int i = 1; i < NW; ++i) acc += smem[k * NW + i];
      v[k] = acc;
    }
    __syncthreads();
  }
}

template <int G>
__device__ __forceinline__ void kd_group_max2(float& a, float& b, float* smem) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    a = kd_nan_max(a, __shfl_xor_sync(0xffffffffu, a, o));
    b = kd_nan_max(b, __shfl_xor_sync(0xffffffffu, b, o));
  }
  if constexpr (G > 32) {
    constexpr int NW = G / 32;
    if (threadIdx.x % 32 == 0) {
      smem[threadIdx.x / 32] = a;
      smem[NW + threadIdx.x / 32] = b;
    }
    __syncthreads();
    a = smem[0];
    b = smem[NW];
#pragma unroll
    for (int i = 1; i < NW; ++i) {
      a = kd_nan_max(a, smem[i]);
      b = kd_nan_max(b, smem[NW + i]);
    }
    __syncthreads();
  }
}

struct KdParams {
  const void* s;
  int64_t ssn;
  const void* t;
  int64_t stn;
  const void* target;
  int target_i32;
  int64_t N, C, ignore_index;
  float invT, c_kl, c_klg, c_ce, eps, eps_c;   // 1/T, a T^2, a T, 1 - a, eps, eps / C (divided on the host)
  int reduction;
  void* loss;
  void* grad;
  float* row_loss;
  float* row_n;
  float* denom;
  unsigned long long* ticket;
  unsigned int epoch;
};

// The last-block ticket with an epoch tag: softmax_xent.cu's take_ticket (the comment there has the
// reasoning: a launch that never reached its last block cannot poison the word for later launches).
__device__ __forceinline__ unsigned int kd_take_ticket(unsigned long long* ticket, unsigned int epoch) {
  atomicMax(ticket, static_cast<unsigned long long>(epoch) << 32);
  const unsigned long long before = atomicAdd(ticket, 1ull);
  return (before >> 32) == epoch ? static_cast<unsigned int>(before) + 1u : 0u;
}

template <typename T, int G>
__global__ void __launch_bounds__(256) distill_fwd_kernel(const KdParams p) {
  constexpr int R = 256 / G;   // rows per block
  __shared__ float smem[5 * 8];
  __shared__ double dsmem[2 * 8];
  __shared__ int s_last;
  const float nanf_ = __int_as_float(0x7fc00000);
  const float ninf = -__int_as_float(0x7f800000);

  const int lane = threadIdx.x % G;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * R + threadIdx.x / G;
  // Inactive groups (row >= N in the last block) and ignored rows skip the row work; with G = 32 the
  // group is one warp, so a whole warp skips together and every shuffle sees its full warp. With
  // G = 256 the condition is uniform over the block (one row), so the __syncthreads are too.
  const bool active = row < p.N;
  int64_t y = p.ignore_index;
  if (active) y = p.target_i32 ? static_cast<int64_t>(static_cast<const int32_t*>(p.target)[row])
                               : static_cast<const int64_t*>(p.target)[row];
  const bool ignored = y == p.ignore_index;
  const bool valid = active && !ignored && y >= 0 && y < p.C;
  const bool bad = active && !ignored && !valid;
  const int64_t C = p.C;
  T* g = p.grad != nullptr && active ? static_cast<T*>(p.grad) + row * C : nullptr;

  float loss = 0.0f;
  if (valid) {
    const T* s = static_cast<const T*>(p.s) + row * p.ssn;
    const T* t = static_cast<const T*>(p.t) + row * p.stn;
    // 1. Maxima.
    float ms = ninf, mt = ninf;
    for (int64_t c = lane; c < C; c += G) {
      ms = kd_nan_max(ms, to_float(s[c]));
      mt = kd_nan_max(mt, to_float(t[c]));
    }
    kd_group_max2<G>(ms, mt, smem);
    // 2. The five sums against the exact maxima.
    float v[5] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f};   // Z1, ZT, Zt, Wq, Sd
    for (int64_t c = lane; c < C; c += G) {
      const float ds = to_float(s[c]) - ms, dt = to_float(t[c]) - mt;
      const float et = __expf(dt * p.invT);
      v[0] += __expf(ds);
      v[1] += __expf(ds * p.invT);
      v[2] += et;
      v[3] = fmaf(et, dt - ds, v[3]);
      v[4] += ds;
    }
    kd_group_sum<G, 5>(v, smem);
    const float kl = v[3] * p.invT / v[2] - logf(v[2]) + logf(v[1]);
    const float ce = logf(v[0]) - (1.0f - p.eps) * (to_float(s[y]) - ms) - p.eps_c * v[4];
    loss = p.c_kl * kl + p.c_ce * ce;
    // 3. Gradient.
    if (g != nullptr) {
      const float fT = p.c_klg / v[1], ft = p.c_klg / v[2], f1 = p.c_ce / v[0], c0 = p.c_ce * p.eps_c;
      const float cy = p.c_ce * (1.0f - p.eps);
      for (int64_t c = lane; c < C; c += G) {
        const float ds = to_float(s[c]) - ms, dt = to_float(t[c]) - mt;
        float o = fT * __expf(ds * p.invT) - ft * __expf(dt * p.invT) + f1 * __expf(ds) - c0;
        if (c == y) o -= cy;
        g[c] = from_float<T>(o);
      }
    }
  } else if (g != nullptr) {
    // ignored rows: no gradient; out-of-range targets: NaN
    const T fill = from_float<T>(bad ? nanf_ : 0.0f);
    for (int64_t c = lane; c < C; c += G) g[c] = fill;
  }
  if (bad) loss = nanf_;

  if (active && lane == 0) {
    if (p.reduction == 0) {
      static_cast<T*>(p.loss)[row] = from_float<T>(loss);
    } else {
      p.row_loss[row] = loss;
      p.row_n[row] = valid ? 1.0f : (bad ? nanf_ : 0.0f);
    }
  }
  if (p.reduction == 0) return;

  // 4. Mean / sum: the last block to finish reduces all rows in a fixed order.
  __threadfence();   // publish this block's row values before taking a ticket
  __syncthreads();
  if (threadIdx.x == 0) s_last = kd_take_ticket(p.ticket, p.epoch) == gridDim.x;
  __syncthreads();
  if (!s_last) return;
  __threadfence();   // pair with the other blocks' fences before reading their rows
  double sl = 0.0, sn = 0.0;
  for (int64_t i = threadIdx.x; i < p.N; i += 256) {
    sl += static_cast<double>(__ldcg(p.row_loss + i));   // L2: other blocks wrote these
    sn += static_cast<double>(__ldcg(p.row_n + i));
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    sl += __shfl_xor_sync(0xffffffffu, sl, o);
    sn += __shfl_xor_sync(0xffffffffu, sn, o);
  }
  if (threadIdx.x % 32 == 0) {
    dsmem[threadIdx.x / 32] = sl;
    dsmem[8 + threadIdx.x / 32] = sn;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double tl = dsmem[0], tn = dsmem[8];
    for (int i = 1; i < 8; ++i) {
      tl += dsmem[i];
      tn += dsmem[8 + i];
    }
    if (p.reduction == 1) {
      static_cast<T*>(p.loss)[0] = from_float<T>(static_cast<float>(tl / tn));   // D == 0: NaN
      p.denom[0] = static_cast<float>(tn);
    } else {
      static_cast<T*>(p.loss)[0] = from_float<T>(static_cast<float>(tl));
    }
    *p.ticket = 0ull;   // idle again (CUDA graph replays reuse the captured epoch)
  }
}

unsigned int kd_next_epoch() {
  static std::atomic<unsigned int> launches{0};
  unsigned int e;
  do e = launches.fetch_add(1u, std::memory_order_relaxed) + 1u;
  while (e == 0u);
  return e;
}

template <typename T>
void fwd_t(const KdParams& p, cudaStream_t stream) {
  const LaunchPlan plan = distill_fwd_plan(p.N, p.C);
  // N == 0 with mean / sum: one block writes 0 (sum) or NaN (mean).
  const unsigned blocks = static_cast<unsigned>(plan.ctas > 0 ? plan.ctas : 1);
  if (plan.tile_m == 8)
    distill_fwd_kernel<T, 32><<<blocks, 256, 0, stream>>>(p);
  else
    distill_fwd_kernel<T, 256><<<blocks, 256, 0, stream>>>(p);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace

void distill_fwd(DType dt, const void* s, int64_t ssn, const void* t, int64_t stn, const void* target,
                 bool target_i32, int64_t N, int64_t C, int64_t ignore_index, float label_smoothing,
                 float temperature, float alpha, int reduction, void* loss, void* grad, float* row_scratch,
                 float* denom, unsigned long long* ticket, int device, uintptr_t stream) {
  if (N < 0 || C < 1) throw std::invalid_argument("distill_fwd: N must be >= 0 and C >= 1");
  if (!(temperature > 0.0f)) throw std::invalid_argument("distill_fwd: temperature must be > 0");
  if (!(alpha >= 0.0f && alpha <= 1.0f)) throw std::invalid_argument("distill_fwd: alpha must be in [0, 1]");
  if (reduction < 0 || reduction > 2) throw std::invalid_argument("distill_fwd: reduction must be 0, 1 or 2");
  if (reduction != 0 && (ticket == nullptr || (N > 0 && row_scratch == nullptr)))
    throw std::invalid_argument("distill_fwd: mean / sum need the row scratch buffer and the ticket word");
  if (reduction == 1 && denom == nullptr)
    throw std::invalid_argument("distill_fwd: reduction 'mean' needs the denominator output");
  if (reduction == 0 && N == 0) return;
  const DeviceGuard device_guard(device);
  // Members in declaration order (see KdParams).
  const KdParams p{s, ssn, t, stn, target, target_i32 ? 1 : 0, N, C, ignore_index,
                   1.0f / temperature, alpha * temperature * temperature, alpha * temperature, 1.0f - alpha,
                   label_smoothing, label_smoothing / static_cast<float>(C), reduction, loss, grad, row_scratch,
                   row_scratch != nullptr ? row_scratch + N : nullptr, denom, ticket, kd_next_epoch()};
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dt, "distill", [&](auto tag) { fwd_t<decltype(tag)>(p, st); });
}

}  // namespace pyimgcls::cuda
