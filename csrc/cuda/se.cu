// CUDA squeeze-and-excitation family: the SE block forward / backward and the stochastic-depth
// scale(-and-add), float32 / float16 / bfloat16 activations with float32 arithmetic and float32
// weights and per-sample vectors. Tensors are [N, C, HW] views, NCHW or NHWC (se.h).
//
// What it computes (R squeeze channels)
//   fwd:  pooled = mean_s x;  hidden = W1 pooled + b1;  z = W2 act(hidden) + b2;  y = x * gate(z)
//   bwd:  gz = (sum_s grad x) gate'(z);  gh = (W2^T gz) act'(hidden);  gpooled = W1^T gh;
//         gx = grad gate(z) + gpooled / HW;  gW2 = gz^T act(hidden), gb2 = sum_n gz;  gW1 = gh^T pooled, gb1 = sum_n gh
//   drop_path: out[n, :] = x[n, :] * scale[n] (+ residual[n, :])
//
// Algorithm (four kernels, each launched in both passes; every sum in a fixed order, no atomics)
//   se_reduce_kernel  block = 8 warps over one sample's channel block. NCHW: warp w owns channel
//                     c0 + w and its lanes stride the contiguous plane (coalesced), then a shuffle
//                     tree. NHWC: lane l owns channel c0 + l (a warp reads 32 consecutive channels of
//                     one row, coalesced) and warp w takes rows w, w + 8, ...; the 8 row partials are
//                     added in warp order through shared memory. Epilogue: / HW (fwd) or gate' (bwd).
//   se_fc_kernel      one warp per output o of one sample: lanes stride the input, a shuffle tree
//                     adds; W is read with (stride_o, stride_i), so W and W^T are the same kernel;
//                     the activation on the input (fc2) or its backward on the output (gh) fused.
//   se_apply_kernel   grid-stride element-wise out = a * gate(z[n, c]) (+ gpooled[n, c] / HW).
//   se_wgrad_kernel   one thread per weight (o, i), samples added in order; then one per bias o.
//   drop_path_kernel  grid-stride element-wise.
//
// Cost (Q = N*C*HW elements of T bytes): fwd reads x twice, writes y (3TQ); bwd reads grad and x,
// grad again, writes gx (4TQ); 2*N*R*C multiply-adds per matrix-vector product. drop_path: 2TNM
// (3TNM with the residual). All memory-bound; unmeasured on a GPU.
//
// Test: pytest tests/test_se.py tests/test_stochastic_depth.py -k cuda (needs a GPU)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "runtime.h"
#include "se.h"

namespace pyimgcls::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;
// ATen's hardsigmoid backward multiplies by the float constant 1.0f / 6.0f.
constexpr float kOneSixth = 1.0f / 6.0f;

inline int blocks_for(int64_t total) {
  const int64_t b = (total + kThreads - 1) / kThreads;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

// ---- ATen's formulas and NaN semantics (selects: NaN falls through every forward). They fold into
// the shared activation vocabulary (csrc/cuda/common.cuh) once silu / hardsigmoid land there.
__device__ __forceinline__ float se_sigmoid(float v) { return 1.f / (1.f + expf(-v)); }
__device__ __forceinline__ float se_act(float v, int act) {
  if (act == 1) return v / (1.f + expf(-v));  // silu
  return v < 0.f ? 0.f : v;                  // relu
}
__device__ __forceinline__ float se_act_grad(float v, float g, int act) {
  if (act == 1) {
    const float s = se_sigmoid(v);
    return g * s * (1.f + v * (1.f - s));
  }
  return v <= 0.f ? 0.f : g;  // threshold_backward on the output: NaN passes
}
__device__ __forceinline__ float se_gate(float v, int gate) {
  if (gate == 1) {
    float t = v + 3.f;
    t = t < 0.f ? 0.f : t;
    t = t > 6.f ? 6.f : t;
    return t / 6.f;
  }
  return se_sigmoid(v);
}
__device__ __forceinline__ float se_gate_grad(float v, float g, int gate) {
  if (gate == 1) return (v > -3.f && v < 3.f) ? g * kOneSixth : 0.f;
  const float s = se_sigmoid(v);
  return g * (1.f - s) * s;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// grid (channel blocks, N). out[n, c] = sum_s x (* g) / HW (fwd) or gate'(z[n, c], sum) (PROD, bwd).
template <typename T, bool CL, bool PROD>
__global__ void __launch_bounds__(kThreads) se_reduce_kernel(const T* __restrict__ x, const T* __restrict__ g,
                                                             const float* __restrict__ z, float* __restrict__ out,
                                                             int64_t C, int64_t HW, int gate) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = blockIdx.y;
  if constexpr (!CL) {
    const int64_t c = int64_t(blockIdx.x) * kWarps + warp;  // [8 channels] per block, a warp per plane
    if (c >= C) return;
    const int64_t base = (n * C + c) * HW;
    float acc = 0.f;
    for (int64_t s = lane; s < HW; s += 32) {
      float v = to_float(x[base + s]);
      if constexpr (PROD) v *= to_float(g[base + s]);
      acc += v;
    }
    acc = warp_sum(acc);
    if (lane == 0) out[n * C + c] = PROD ? se_gate_grad(z[n * C + c], acc, gate) : acc / float(HW);
  } else {
    __shared__ float part[kWarps][32];  // [row group][channel] partials
    const int64_t c = int64_t(blockIdx.x) * 32 + lane;   // [32 channels] per block, a lane per channel
    float acc = 0.f;
    if (c < C) {
      for (int64_t s = warp; s < HW; s += kWarps) {
        const int64_t i = (n * HW + s) * C + c;
        float v = to_float(x[i]);
        if constexpr (PROD) v *= to_float(g[i]);
        acc += v;
      }
    }
    part[warp][lane] = acc;
    __syncthreads();  // the 8 row partials of each channel are visible to warp 0
    if (warp == 0 && c < C) {
      float t = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) t += part[w][lane];
      out[n * C + c] = PROD ? se_gate_grad(z[n * C + c], t, gate) : t / float(HW);
    }
  }
}

// grid (output blocks of 8, N): out[n, o] = act'(aux[n, o]) (OUT_ACT_GRAD) * ((b[o]) + sum_i W[o, i] f(in[n, i])).
__global__ void __launch_bounds__(kThreads) se_fc_kernel(const float* __restrict__ in, const float* __restrict__ w,
                                                         const float* __restrict__ b, const float* __restrict__ aux,
                                                         float* __restrict__ out, int64_t I, int64_t O, int64_t swo,
                                                         int64_t swi, bool in_act, bool out_act_grad, int act) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = blockIdx.y, o = int64_t(blockIdx.x) * kWarps + warp;
  if (o >= O) return;
  float acc = 0.f;
  for (int64_t i = lane; i < I; i += 32) {
    float v = in[n * I + i];
    if (in_act) v = se_act(v, act);
    acc += w[o * swo + i * swi] * v;
  }
  acc = warp_sum(acc);
  if (lane == 0) {
    if (b) acc += b[o];
    if (out_act_grad) acc = se_act_grad(aux[n * O + o], acc, act);
    out[n * O + o] = acc;
  }
}

// out = a * gate(z[n, c]) (+ add[n, c] / HW), the gate rounded to T first (PyTorch's x * scale).
template <typename T, bool CL, bool ADD>
__global__ void __launch_bounds__(kThreads) se_apply_kernel(const T* __restrict__ a, const float* __restrict__ z,
                                                            const float* __restrict__ add, T* __restrict__ out,
                                                            int64_t N, int64_t C, int64_t HW, float inv_hw, int gate) {
  const int64_t total = N * C * HW;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total; i += int64_t(gridDim.x) * kThreads) {
    int64_t n, c;
    if constexpr (CL) {
      n = i / (HW * C);
      c = i - (i / C) * C;
    } else {
      n = i / (C * HW);
      c = (i / HW) - n * C;
    }
    const int64_t nc = n * C + c;
    float v = to_float(a[i]) * to_float(from_float<T>(se_gate(z[nc], gate)));
    if constexpr (ADD) v += add[nc] * inv_hw;
    out[i] = from_float<T>(v);
  }
}

// gw[o, i] = sum_n a[n, o] f(b[n, i]) for o*I + i < O*I; then gb[o] = sum_n a[n, o].
__global__ void __launch_bounds__(kThreads) se_wgrad_kernel(const float* __restrict__ a, const float* __restrict__ b,
                                                            float* __restrict__ gw, float* __restrict__ gb, int64_t N,
                                                            int64_t O, int64_t I, bool b_act, int act) {
  const int64_t nw = gw ? O * I : 0;
  const int64_t t = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (t < nw) {
    const int64_t o = t / I, i = t - o * I;
    float acc = 0.f;
    for (int64_t n = 0; n < N; ++n) {
      float v = b[n * I + i];
      if (b_act) v = se_act(v, act);
      acc += a[n * O + o] * v;
    }
    gw[t] = acc;
  } else if (gb && t < nw + O) {
    const int64_t o = t - nw;
    float acc = 0.f;
    for (int64_t n = 0; n < N; ++n) acc += a[n * O + o];
    gb[o] = acc;
  }
}

template <typename T, bool ADD>
__global__ void __launch_bounds__(kThreads) drop_path_kernel(const T* __restrict__ x, const float* __restrict__ scale,
                                                             const T* __restrict__ r, T* __restrict__ out, int64_t N,
                                                             int64_t M) {
  const int64_t total = N * M;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total; i += int64_t(gridDim.x) * kThreads) {
    float v = to_float(x[i]) * scale[i / M];
    if constexpr (ADD) v += to_float(r[i]);
    out[i] = from_float<T>(v);
  }
}

template <typename F>
void dispatch_bool(bool v, F&& f) {
  if (v) f(std::integral_constant<bool, true>{});
  else f(std::integral_constant<bool, false>{});
}

template <typename T, bool PROD>
void launch_reduce(const T* x, const T* g, const float* z, float* out, int64_t N, int64_t C, int64_t HW, bool cl,
                   int gate, cudaStream_t st) {
  if (cl) {
    const dim3 grid(static_cast<unsigned>((C + 31) / 32), static_cast<unsigned>(N));
    se_reduce_kernel<T, true, PROD><<<grid, kThreads, 0, st>>>(x, g, z, out, C, HW, gate);
  } else {
    const dim3 grid(static_cast<unsigned>((C + kWarps - 1) / kWarps), static_cast<unsigned>(N));
    se_reduce_kernel<T, false, PROD><<<grid, kThreads, 0, st>>>(x, g, z, out, C, HW, gate);
  }
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

void launch_fc(const float* in, const float* w, const float* b, const float* aux, float* out, int64_t N, int64_t I,
               int64_t O, int64_t swo, int64_t swi, bool in_act, bool out_act_grad, int act, cudaStream_t st) {
  const dim3 grid(static_cast<unsigned>((O + kWarps - 1) / kWarps), static_cast<unsigned>(N));
  se_fc_kernel<<<grid, kThreads, 0, st>>>(in, w, b, aux, out, I, O, swo, swi, in_act, out_act_grad, act);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

template <typename T, bool ADD>
void launch_apply(const T* a, const float* z, const float* add, T* out, int64_t N, int64_t C, int64_t HW, bool cl,
                  int gate, cudaStream_t st) {
  const int blocks = blocks_for(N * C * HW);
  const float inv_hw = 1.f / float(HW);
  if (cl) se_apply_kernel<T, true, ADD><<<blocks, kThreads, 0, st>>>(a, z, add, out, N, C, HW, inv_hw, gate);
  else se_apply_kernel<T, false, ADD><<<blocks, kThreads, 0, st>>>(a, z, add, out, N, C, HW, inv_hw, gate);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

void launch_wgrad(const float* a, const float* b, float* gw, float* gb, int64_t N, int64_t O, int64_t I, bool b_act,
                  int act, cudaStream_t st) {
  const int64_t total = (gw ? O * I : 0) + (gb ? O : 0);
  se_wgrad_kernel<<<blocks_for(total), kThreads, 0, st>>>(a, b, gw, gb, N, O, I, b_act, act);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace

void se_fwd(DType dt, const void* x, const float* w1, const float* b1, const float* w2, const float* b2, void* y,
            float* pooled, float* hidden, float* z, int64_t N, int64_t C, int64_t HW, int64_t R, bool channels_last,
            int act, int gate, int device, uintptr_t stream) {
  if (N == 0) return;
  const DeviceGuard device_guard(device);
  auto st = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dt, "squeeze_excitation", [&](auto tag) {
    using T = decltype(tag);
    launch_reduce<T, false>(static_cast<const T*>(x), nullptr, nullptr, pooled, N, C, HW, channels_last, gate, st);
    launch_fc(pooled, w1, b1, nullptr, hidden, N, C, R, C, 1, false, false, act, st);  // hidden = W1 pooled + b1
    launch_fc(hidden, w2, b2, nullptr, z, N, R, C, R, 1, true, false, act, st);        // z = W2 act(hidden) + b2
    launch_apply<T, false>(static_cast<const T*>(x), z, nullptr, static_cast<T*>(y), N, C, HW, channels_last, gate,
                           st);
  });
}

void se_bwd(DType dt, const void* grad, const void* x, const float* w1, const float* w2, const float* pooled,
            const float* hidden, const float* z, void* grad_input, float* gw1, float* gb1, float* gw2, float* gb2,
            float* scratch, int64_t N, int64_t C, int64_t HW, int64_t R, bool channels_last, int act, int gate,
            int device, uintptr_t stream) {
  const DeviceGuard device_guard(device);
  auto st = reinterpret_cast<cudaStream_t>(stream);
  float* gz = scratch;             // [N, C]
  float* gpool = scratch + N * C;  // [N, C]
  float* gh = gpool + N * C;       // [N, R]
  dispatch_dtype(dt, "squeeze_excitation", [&](auto tag) {
    using T = decltype(tag);
    if (N > 0) {
      launch_reduce<T, true>(static_cast<const T*>(grad), static_cast<const T*>(x), z, gz, N, C, HW, channels_last,
                             gate, st);
      launch_fc(gz, w2, nullptr, hidden, gh, N, C, R, 1, R, false, true, act, st);  // gh = (W2^T gz) act'(hidden)
    }
    if (gw2 || gb2) launch_wgrad(gz, hidden, gw2, gb2, N, C, R, true, act, st);
    if (gw1 || gb1) launch_wgrad(gh, pooled, gw1, gb1, N, R, C, false, act, st);
    if (grad_input && N > 0) {
      launch_fc(gh, w1, nullptr, nullptr, gpool, N, R, C, 1, C, false, false, act, st);  // gpooled = W1^T gh
      launch_apply<T, true>(static_cast<const T*>(grad), z, gpool, static_cast<T*>(grad_input), N, C, HW,
                            channels_last, gate, st);
    }
  });
}

void drop_path(DType dt, const void* x, const float* scale, const void* residual, void* out, int64_t N, int64_t M,
               int device, uintptr_t stream) {
  if (N * M == 0) return;
  const DeviceGuard device_guard(device);
  auto st = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dt, "drop_path", [&](auto tag) {
    using T = decltype(tag);
    const int blocks = blocks_for(N * M);
    if (residual)
      drop_path_kernel<T, true><<<blocks, kThreads, 0, st>>>(static_cast<const T*>(x), scale,
                                                             static_cast<const T*>(residual), static_cast<T*>(out), N, M);
    else
      drop_path_kernel<T, false><<<blocks, kThreads, 0, st>>>(static_cast<const T*>(x), scale, nullptr,
                                                              static_cast<T*>(out), N, M);
    PYIMGCLS_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace pyimgcls::cuda
