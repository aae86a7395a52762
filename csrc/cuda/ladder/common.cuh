// Helpers of the CUDA study ladder (csrc/cuda/ladder/) that the production kernels do not share:
// host-side grid sizing, the warp-tile fragment loads / MMAs / epilogue of the mma.sync steps (GEMM
// step 08, conv step 04), and the separate bias/activation pass that every convolution step before
// the fused-epilogue step runs after its kernel. Element conversions, the activation, the PTX
// wrappers of the tensor-core steps and aligned_to are the production ones, from ../common.cuh.
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

// ---------------------------------------------------------------------------------------------
// mma.sync warp tile (GEMM step 08, conv step 04): MI x NI m16n8 tiles per warp, one k16 step at a
// time, both shared tiles padded to LD elements per row.
// ---------------------------------------------------------------------------------------------
// A fragments of the warp's MI m16 tiles from a K-contiguous tile As[m][k]: one ldmatrix.x4 per tile,
// lane l addressing row row0 + 16 mi + (l % 16), k-chunk ks + 8 (l / 16).
template <int MI, typename T, int ROWS, int LD>
__device__ __forceinline__ void ldmatrix_a_frags(uint32_t (&af)[MI][4], T (&As)[ROWS][LD], int row0, int ks,
                                                 int lane) {
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
    ptx::ldmatrix_x4(af[mi], ptx::smem_addr(&As[row0 + mi * 16 + (lane % 16)][ks + (lane / 16) * 8]));
}

// The MI x NI MMAs of one k16 step. bq[p] is the ldmatrix.x4 result that holds the b fragments of
// n8 tiles 2p (registers 0, 1) and 2p + 1 (registers 2, 3).
template <typename T, int MI, int NI>
__device__ __forceinline__ void mma_warp_tile(float (&acc)[MI][NI][4], const uint32_t (&af)[MI][4],
                                              const uint32_t (&bq)[NI / 2][4]) {
  uint32_t bf[NI][2];
#pragma unroll
  for (int p = 0; p < NI / 2; ++p) {
    bf[2 * p][0] = bq[p][0];
    bf[2 * p][1] = bq[p][1];
    bf[2 * p + 1][0] = bq[p][2];
    bf[2 * p + 1][1] = bq[p][3];
  }
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni) ptx::mma_16816<T>(acc[mi][ni], af[mi], bf[ni]);
}

// Epilogue: the warp's accumulators, rounded to T, into the row-major [rows, cols] output c at
// (row0, col0), element by element with bounds checks. Lane l holds, of m16n8 tile (mi, ni), rows
// l / 4 and l / 4 + 8, columns 2 (l % 4) and 2 (l % 4) + 1.
template <typename T, int MI, int NI>
__device__ __forceinline__ void store_warp_tile(T* __restrict__ c, const float (&acc)[MI][NI][4], int64_t row0,
                                                int64_t col0, int64_t rows, int64_t cols, int lane) {
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = row0 + mi * 16 + lane / 4 + h * 8;
      if (row >= rows) continue;
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) {
        const int64_t col = col0 + ni * 8 + 2 * (lane % 4);
        if (col < cols) c[row * cols + col] = from_float<T>(acc[mi][ni][2 * h]);
        if (col + 1 < cols) c[row * cols + col + 1] = from_float<T>(acc[mi][ni][2 * h + 1]);
      }
    }
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
