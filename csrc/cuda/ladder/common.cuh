// Shared device helpers of the CUDA study ladder (csrc/cuda/ladder/): element conversions, the
// epilogue activation, PTX wrappers for the tensor-core steps, and the separate bias/activation pass
// that every convolution step before the fused-epilogue step runs after its kernel.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "../../common.h"
#include "../runtime.h"

namespace pyimgcls::cuda::ladder::detail {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// gridDim.y and gridDim.z are limited to 65535: the steps put the (usually larger) N-tile count in x.
inline unsigned grid_y(int64_t tiles, const char* what) {
  if (tiles > 65535)
    throw std::invalid_argument(std::string(what) + ": too many tiles along the grid's y axis (" +
                                std::to_string(tiles) + " > 65535); the problem is too large for this step");
  return static_cast<unsigned>(tiles < 1 ? 1 : tiles);
}
inline unsigned grid_x(int64_t tiles, const char* what) {
  if (tiles > 0x7fffffffLL)
    throw std::invalid_argument(std::string(what) + ": too many tiles along the grid's x axis");
  return static_cast<unsigned>(tiles < 1 ? 1 : tiles);
}

template <typename T>
struct Elem;
template <>
struct Elem<float> {
  static __device__ __forceinline__ float to_float(float v) { return v; }
  static __device__ __forceinline__ float from_float(float v) { return v; }
};
template <>
struct Elem<__half> {
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};
template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

// `v < 0` tests so that NaN propagates as in PyTorch (relu(NaN) = NaN).
__device__ __forceinline__ float apply_act(float v, int act) {
  if (act == static_cast<int>(Act::ReLU)) return v < 0.f ? 0.f : v;
  if (act == static_cast<int>(Act::ReLU6)) return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
  return v;
}

namespace ptx {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i; lane l receives row l/4,
// columns 2*(l%4), 2*(l%4)+1 of matrix i in r[i].
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// Transposed: lane l receives rows 2*(l%4), 2*(l%4)+1 of column l/4 of matrix i in r[i].
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// D[16x8] += A[16x16] * B[16x8] with fp32 accumulators (g = lane/4, t = lane%4):
//   a[0]: A[g][2t..2t+1]  a[1]: A[g+8][2t..2t+1]  a[2]: A[g][2t+8..]  a[3]: A[g+8][2t+8..]
//   b[0]: B[2t..2t+1][g]  b[1]: B[2t+8..2t+9][g]
//   d[0..1]: D[g][2t..2t+1]  d[2..3]: D[g+8][2t..2t+1]
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same<T, __half>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

}  // namespace ptx

// y = act(y + bias[channel]) in place over a contiguous conv output of `total` elements, channel
// index (i / inner) % O (NCHW: inner = OH*OW; NHWC: inner = 1). One read and one write of y:
// 2 * total * sizeof(T) bytes, the traffic the fused-epilogue step removes.
template <typename T>
__global__ void ladder_bias_act_fwd_kernel(T* __restrict__ y, const T* __restrict__ bias, int64_t total, int64_t inner,
                                           int64_t O, int act) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = Elem<T>::to_float(y[i]);
    if (bias != nullptr) v += Elem<T>::to_float(bias[(i / inner) % O]);
    y[i] = Elem<T>::from_float(apply_act(v, act));
  }
}

template <typename T>
void launch_ladder_bias_act_fwd(T* y, const T* bias, int64_t total, int64_t inner, int64_t O, Act act,
                                cudaStream_t stream) {
  if (total == 0 || (bias == nullptr && act == Act::None)) return;
  const int threads = 256;
  const int64_t blocks = ceil_div(total, threads);
  ladder_bias_act_fwd_kernel<T><<<static_cast<unsigned>(blocks < 65536 * 16 ? blocks : 65536 * 16), threads, 0,
                                   stream>>>(y, bias, total, inner, O, static_cast<int>(act));
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace pyimgcls::cuda::ladder::detail
