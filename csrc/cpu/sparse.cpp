// 2:4 sparse linear on the CPU: out[M, N] = x[M, K] @ W^T + bias, W [N, K] stored compressed
// (values [N, K/2] + uint16 metadata [N, ceil(K/16)], format in csrc/cuda/sparse.h).
//
// Algorithm: the work is cut into (16 output features) x (64 rows of x) blocks, OpenMP over blocks.
// A block first decodes its 16 rows' metadata into absolute k indices (one int32 per kept value),
// then each group of 4 rows of x runs over the 16 features with 4 accumulators, a gathered
// x[m][idx[j]] times values[n][j] per kept value: the kernel does the sparse FLOPs (M * N * K, half
// the dense count) and never materialises the dense W.
// FLOPs: M * N * K (multiply-adds counted as 2: 2 * M * N * K / 2); bytes at least
// sizeof(T) * (M * K + N * K / 2 + M * N) + N * K / 8.
// Test: tests/test_sparse24.py -k sparse_linear.
#include "sparse.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

namespace pyimgcls::cpu {

namespace {

constexpr int64_t kBlockN = 16, kBlockM = 64, kRowGroup = 4;

// Absolute k of the two kept values of every group of row n: idx[2g], idx[2g + 1].
void decode_row(const uint16_t* meta, int64_t K, int32_t* idx) {
  for (int64_t g = 0; g < K / 4; ++g) {
    const unsigned nib = (meta[g / 4] >> (4 * (g % 4))) & 0xFu;
    idx[2 * g] = static_cast<int32_t>(4 * g + (nib & 3u));
    idx[2 * g + 1] = static_cast<int32_t>(4 * g + (nib >> 2));
  }
}

template <typename T>
void run(const T* x, int64_t ldx, const T* values, int64_t ldv, const uint16_t* meta, int64_t ldm, const T* bias,
         T* out, int64_t ldo, int64_t M, int64_t N, int64_t K) {
  const int64_t nb = (N + kBlockN - 1) / kBlockN, mb = (M + kBlockM - 1) / kBlockM;
  const int64_t half = K / 2;
#pragma omp parallel
  {
    std::vector<int32_t> idx(static_cast<size_t>(kBlockN * std::max<int64_t>(half, 1)));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nb * mb; ++b) {
      const int64_t n0 = (b / mb) * kBlockN, m0 = (b % mb) * kBlockM;
      const int64_t n1 = std::min(N, n0 + kBlockN), m1 = std::min(M, m0 + kBlockM);
      for (int64_t n = n0; n < n1; ++n) decode_row(meta + n * ldm, K, idx.data() + (n - n0) * half);
      for (int64_t m = m0; m < m1; m += kRowGroup) {
        const int64_t rows = std::min(kRowGroup, m1 - m);
        const T* xr[kRowGroup];
        for (int64_t i = 0; i < kRowGroup; ++i) xr[i] = x + (m + std::min(i, rows - 1)) * ldx;
        for (int64_t n = n0; n < n1; ++n) {
          const int32_t* id = idx.data() + (n - n0) * half;
          const T* v = values + n * ldv;
          T acc[kRowGroup] = {};
          for (int64_t j = 0; j < half; ++j) {
            const T w = v[j];
            const int32_t k = id[j];
            for (int64_t i = 0; i < kRowGroup; ++i) acc[i] += w * xr[i][k];
          }
          const T bn = bias != nullptr ? bias[n] : T(0);
          for (int64_t i = 0; i < rows; ++i) out[(m + i) * ldo + n] = acc[i] + bn;
        }
      }
    }
  }
}

}  // namespace

void sparse_linear(DType dt, const void* x, int64_t ldx, const void* values, int64_t ldv, const uint16_t* meta,
                   int64_t ldm, const void* bias, void* out, int64_t ldo, int64_t M, int64_t N, int64_t K) {
  if (K % 4 != 0) throw std::invalid_argument("sparse_linear: K must be a multiple of 4");
  if (M <= 0 || N <= 0) return;
  if (dt == DType::Float32)
    run(static_cast<const float*>(x), ldx, static_cast<const float*>(values), ldv, meta, ldm,
        static_cast<const float*>(bias), static_cast<float*>(out), ldo, M, N, K);
  else if (dt == DType::Float64)
    run(static_cast<const double*>(x), ldx, static_cast<const double*>(values), ldv, meta, ldm,
        static_cast<const double*>(bias), static_cast<double*>(out), ldo, M, N, K);
  else
    throw std::invalid_argument(std::string("CPU sparse_linear takes float32 or float64, got ") + dtype_name(dt));
}

}  // namespace pyimgcls::cpu
