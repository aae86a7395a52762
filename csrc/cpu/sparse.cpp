// 2:4 sparse linear on the CPU: out[M, N] = x[M, K] @ W^T + bias, W [N, K] stored compressed
// (values [N, K/2] + uint16 metadata [N, ceil(K/16)], format in csrc/cuda/sparse.h).
//
// Algorithm: W is decompressed in panels of output features (all of N up to 16 MB of scratch) into a
// dense [rows, K] scratch (OpenMP over rows: each kept value written at 4 * group + its 2-bit index,
// the other two zeroed),
// and each panel is multiplied by the dense CPU GEMM (csrc/cpu/gemm.h, called, not copied) with its
// B operand the panel read transposed (sbk = 1, sbn = K) and its output the panel's columns of out.
// Why not multiply-add only the kept values: the CPU has no sparse units, and a kernel doing the
// sparse FLOPs (one broadcast FMA over 64 rows of x per kept value; every x element loaded per FMA,
// no register reuse across features since each feature keeps other k) measured 3-5x slower than the
// dense GEMM here (benchmarks/NOTES.md, 2:4 sparse), while decompress + dense GEMM costs the dense
// time plus N * K element writes per call. 2:4 pays on the sparse tensor cores (csrc/cuda/sparse.cu).
// FLOPs: 2 * M * N * K (dense, as executed); bytes at least
// sizeof(T) * (M * K + N * K / 2 + M * N) + N * K / 8, plus the panel scratch written and read once.
// Test: tests/test_sparse24.py -k sparse_linear.
#include "sparse.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "gemm.h"

namespace pyimgcls::cpu {

namespace {

// Panel size: as many features as fit in kPanelElems scratch elements (16 MB of float32), at least 16;
// fewer, larger panels mean fewer passes of the GEMM's packing over x.
constexpr int64_t kPanelElems = int64_t(4) << 20;

// Dense row of W: w[4g + i0] = v[2g], w[4g + i1] = v[2g + 1], the other two elements of group g zero.
template <typename T>
void decompress_row(const T* v, const uint16_t* meta, int64_t K, T* w) {
  for (int64_t g = 0; g < K / 4; ++g) {
    const unsigned nib = (meta[g / 4] >> (4 * (g % 4))) & 0xFu;
    T* d = w + 4 * g;
    d[0] = d[1] = d[2] = d[3] = T(0);
    d[nib & 3u] = v[2 * g];
    d[nib >> 2] = v[2 * g + 1];
  }
}

template <typename T>
void run(DType dt, const T* x, int64_t ldx, const T* values, int64_t ldv, const uint16_t* meta, int64_t ldm,
         const T* bias, T* out, int64_t ldo, int64_t M, int64_t N, int64_t K) {
  const int64_t rows = std::min(N, std::max<int64_t>(16, kPanelElems / K));
  std::vector<T> panel(static_cast<size_t>(rows * K));
  for (int64_t n0 = 0; n0 < N; n0 += rows) {
    const int64_t pn = std::min(rows, N - n0);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < pn; ++i)
      decompress_row(values + (n0 + i) * ldv, meta + (n0 + i) * ldm, K, panel.data() + i * K);
    gemm(dt, x, ldx, 1, panel.data(), 1, K, bias != nullptr ? bias + n0 : nullptr, out + n0, ldo, 1, M, pn, K,
         Act::None);
  }
}

}  // namespace

void sparse_linear(DType dt, const void* x, int64_t ldx, const void* values, int64_t ldv, const uint16_t* meta,
                   int64_t ldm, const void* bias, void* out, int64_t ldo, int64_t M, int64_t N, int64_t K) {
  if (K % 4 != 0) throw std::invalid_argument("sparse_linear: K must be a multiple of 4");
  if (M <= 0 || N <= 0) return;
  if (dt == DType::Float32)
    run(dt, static_cast<const float*>(x), ldx, static_cast<const float*>(values), ldv, meta, ldm,
        static_cast<const float*>(bias), static_cast<float*>(out), ldo, M, N, K);
  else if (dt == DType::Float64)
    run(dt, static_cast<const double*>(x), ldx, static_cast<const double*>(values), ldv, meta, ldm,
        static_cast<const double*>(bias), static_cast<double*>(out), ldo, M, N, K);
  else
    throw std::invalid_argument(std::string("CPU sparse_linear takes float32 or float64, got ") + dtype_name(dt));
}

}  // namespace pyimgcls::cpu
