// Pieces the fp32 GEMM ladder steps (01-07) share, so that each step's kernel shows only the idea it
// adds: the per-thread inner product of steps 01 / 02, the bounds-checked 4-wide loads and the
// transposed shared store of steps 06 / 07, the register outer product of steps 05-07, the guarded
// micro-tile epilogue and the tile grid of the launchers. Every device helper is __forceinline__
// and takes its tile sizes as template arguments, so each step compiles as if written out inline.
#pragma once
#include "../common.cuh"

namespace pyimgcls::cuda::ladder::detail {

// C[row, col] = sum_k A[row, k] * B[k, col] straight from global memory (A [M, K], B [K, N], C [M, N],
// row-major); nothing for an output outside C. Steps 01 and 02 differ only in which thread gets
// which (row, col).
__device__ __forceinline__ void naive_dot(const float* __restrict__ a, const float* __restrict__ b,
                                          float* __restrict__ c, int64_t row, int64_t col, int64_t M, int64_t N,
                                          int64_t K) {
  if (row >= M || col >= N) return;
  float acc = 0.f;
  for (int64_t k = 0; k < K; ++k) acc += a[row * K + k] * b[k * N + col];
  c[row * N + col] = acc;
}

// Elements col..col+3 of row `row` of a row-major [rows, cols] matrix, zeros outside it. VEC
// (cols % 4 == 0, p 16-byte aligned): the four are wholly inside or wholly outside, one float4
// load; otherwise four predicated scalar loads.
template <bool VEC>
__device__ __forceinline__ float4 load4_guarded(const float* __restrict__ p, int64_t row, int64_t col, int64_t rows,
                                                int64_t cols) {
  if constexpr (VEC) {
    return (row < rows && col < cols) ? *reinterpret_cast<const float4*>(p + row * cols + col)
                                      : make_float4(0.f, 0.f, 0.f, 0.f);
  } else {
    const bool in = row < rows;
    float4 v;
    v.x = (in && col + 0 < cols) ? p[row * cols + col + 0] : 0.f;
    v.y = (in && col + 1 < cols) ? p[row * cols + col + 1] : 0.f;
    v.z = (in && col + 2 < cols) ? p[row * cols + col + 2] : 0.f;
    v.w = (in && col + 3 < cols) ? p[row * cols + col + 3] : 0.f;
    return v;
  }
}

// A values (m, k..k+3) into the transposed shared tile As[k][m].
template <int BK, int BM>
__device__ __forceinline__ void store_transposed4(float (&As)[BK][BM], int m, int k, float4 v) {
  As[k + 0][m] = v.x;
  As[k + 1][m] = v.y;
  As[k + 2][m] = v.z;
  As[k + 3][m] = v.w;
}

// acc[i][j] += am[i] * bn[j]: the register outer product of one k.
template <int TM, int TN>
__device__ __forceinline__ void outer_product(float (&acc)[TM][TN], const float (&am)[TM], const float (&bn)[TN]) {
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] += am[i] * bn[j];
}

// v[0..3] to C[row, col..col+3] (C row-major with N columns; row < M checked by the caller). VEC
// (N % 4 == 0, c 16-byte aligned): one float4 store when inside; otherwise each column guarded.
template <bool VEC>
__device__ __forceinline__ void store4_guarded(float* __restrict__ c, int64_t row, int64_t col, int64_t N,
                                               const float* v) {
  if constexpr (VEC) {
    if (col < N) *reinterpret_cast<float4*>(c + row * N + col) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (col + j < N) c[row * N + col + j] = v[j];
  }
}

// A thread's TM x TN micro-tile at C[row0.., col0..] (rows past M skipped), 4 columns at a time.
template <bool VEC, int TM, int TN>
__device__ __forceinline__ void store_micro_tile(float* __restrict__ c, const float (&acc)[TM][TN], int64_t row0,
                                                 int64_t col0, int64_t M, int64_t N) {
  static_assert(TN % 4 == 0, "stored 4 columns at a time");
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t row = row0 + i;
    if (row >= M) continue;
#pragma unroll
    for (int j = 0; j < TN; j += 4) store4_guarded<VEC>(c, row, col0 + j, N, &acc[i][j]);
  }
}

// Grid of BM x BN tiles of C [M, N]: N-tiles along x (up to 2^31 - 1), M-tiles along y (65535).
inline dim3 tile_grid(int64_t M, int64_t N, int BM, int BN, const char* what) {
  return dim3(grid_x(ceil_div(N, BN), what), grid_y(ceil_div(M, BM), what));
}

// Steps 06 / 07: their float4 kernel (VEC = true) where K, N and the pointers allow 16-byte accesses,
// the predicated scalar one otherwise, over a grid of 128 x 128 tiles of 256 threads.
using SgemmKernel = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t);
inline void launch_vec_or_scalar(SgemmKernel vec_kernel, SgemmKernel scalar_kernel, const char* what, const float* a,
                                 const float* b, float* c, int64_t M, int64_t N, int64_t K, cudaStream_t stream) {
  const dim3 grid = tile_grid(M, N, 128, 128, what);
  const bool vec = K % 4 == 0 && N % 4 == 0 && aligned_to(a, 16) && aligned_to(b, 16) && aligned_to(c, 16);
  (vec ? vec_kernel : scalar_kernel)<<<grid, 256, 0, stream>>>(a, b, c, M, N, K);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace pyimgcls::cuda::ladder::detail
