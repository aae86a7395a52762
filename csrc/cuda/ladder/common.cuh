// Helpers of the CUDA study ladder (csrc/cuda/ladder/) that the production kernels do not share:
// host-side grid sizing and the separate bias/activation pass that every convolution step before
// the fused-epilogue step runs after its kernel. Element conversions, the activation and the PTX
// wrappers of the tensor-core steps are the production ones, from ../common.cuh.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "../../common.h"
#include "../common.cuh"
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

// y = act(y + bias[channel]) in place over a contiguous conv output of `total` elements, channel
// index (i / inner) % O (NCHW: inner = OH*OW; NHWC: inner = 1). One read and one write of y:
// 2 * total * sizeof(T) bytes, the traffic the fused-epilogue step removes.
template <typename T>
__global__ void ladder_bias_act_fwd_kernel(T* __restrict__ y, const T* __restrict__ bias, int64_t total, int64_t inner,
                                           int64_t O, int act) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = to_float(y[i]);
    if (bias != nullptr) v += to_float(bias[(i / inner) % O]);
    y[i] = from_float<T>(apply_act(v, act));
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
