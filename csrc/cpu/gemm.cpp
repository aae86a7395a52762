// CPU GEMM family: C = act(A @ B + bias) and the backward of its epilogue, float32 and float64.
//
// What it computes
//   gemm:         C[m, n] = act(sum_k A[m, k] * B[k, n] + bias[n]),  act in {none, relu, relu6},
//                 A, B, C addressed through arbitrary element strides (transposed or sliced views
//                 need no copy: the packing step reads through the strides).
//   bias_act_bwd: grad_pre[m, n] = grad[m, n] * act'(out[m, n]);  grad_bias[n] = sum_m grad_pre[m, n].
//
// Algorithm (BLIS / GotoBLAS five-loop GEMM)
//   for jc in N step NC                        B panel [KC x NC] lives in L3 (shared by all threads)
//     for pc in K step KC
//       pack B[pc:pc+KC, jc:jc+NC] into NR-column micro-panels (zero-padded), in parallel
//       for ic in M step MC                    one (ic, N-range) work unit per thread at a time
//         pack A[ic:ic+MC, pc:pc+KC] into MR-row micro-panels (zero-padded), thread-private, in L2
//         for jr in NC step NR                 B micro-panel [KC x NR] stays in L1 across ir
//           for ir in MC step MR
//             micro-kernel: MR x NR register tile += A micro-panel @ B micro-panel
//   The micro-kernel always computes a full MR x NR tile (edge panels are zero-padded); full tiles
//   with unit column stride are updated in C directly, edge tiles and strided C go through a small
//   tile buffer and a guarded scalar write-back. The first KC block overwrites C, later ones add to
//   it, and only the last one applies bias + activation, so the epilogue sees the full sum.
//
//   Micro-kernels per instruction set, picked at run time (PYIMGCLS_CPU_ISA=generic|avx2|avx512
//   forces a lower one; it is clamped to what the CPU supports):
//     avx512   fp32 12 x 32 (24 zmm accumulators), fp64 12 x 16
//     avx2     fp32  6 x 16 (12 ymm accumulators), fp64  6 x 8
//     generic  fp32  6 x 8, fp64 6 x 4 (portable C++, auto-vectorised for the baseline target)
//
// Cost
//   FLOPs = 2 * M * N * K.  Minimum bytes moved = sizeof(T) * (M*K + K*N + M*N (+ N bias)):
//   every operand read once and C written once; packing re-reads A N/NC times and C is re-read
//   K/KC - 1 times, both small next to the compute for the block sizes below.
//   bias_act_bwd: M*N multiplies and M*N adds; bytes = sizeof(T) * (3*M*N (+ M*N out) + N).
//
// Test and benchmark
//   pytest tests/test_gemm.py -k cpu
//   pytest benchmarks/test_bench_gemm_cpu.py
#include "gemm.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <numeric>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PYIMGCLS_X86 1
#define PYIMGCLS_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma,avx2")))
#define PYIMGCLS_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define PYIMGCLS_INLINE inline __attribute__((always_inline))
#endif

namespace pyimgcls::cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Instruction-set selection
// ---------------------------------------------------------------------------------------------
enum class Isa : int { Generic = 0, Avx2 = 1, Avx512 = 2 };

Isa hardware_isa() {
#ifdef PYIMGCLS_X86
  // Detected once: cpuid does not change while the process runs.
  static const Isa hw = [] {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return Isa::Generic;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
      return Isa::Avx512;
    return Isa::Avx2;
  }();
  return hw;
#else
  return Isa::Generic;
#endif
}

// The hardware answer is cached; the PYIMGCLS_CPU_ISA override is read on every call (a getenv
// costs well under a microsecond) so a test can switch paths inside one process.
Isa active_isa() {
  const Isa hw = hardware_isa();
  const char* env = std::getenv("PYIMGCLS_CPU_ISA");
  if (env == nullptr || env[0] == '\0') return hw;
  const std::string want(env);
  Isa req;
  if (want == "generic") req = Isa::Generic;
  else if (want == "avx2") req = Isa::Avx2;
  else if (want == "avx512") req = Isa::Avx512;
  else
    throw std::invalid_argument("PYIMGCLS_CPU_ISA must be generic, avx2 or avx512, got '" + want + "'");
  return static_cast<Isa>(std::min(static_cast<int>(req), static_cast<int>(hw)));
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    case Isa::Generic: return "generic";
  }
  return "generic";
}

// ---------------------------------------------------------------------------------------------
// Micro-kernels.  Contract shared by all of them:
//   a: packed A micro-panel, kc x MR (a[k*MR + i] = A[i, k]), 64-byte aligned
//   b: packed B micro-panel, kc x NR (b[k*NR + j] = B[k, j]), 64-byte aligned
//   c: MR x NR tile, row stride ldc, unit column stride, need not be aligned
//   mode: kAccumulate adds the tile to what is in c (later KC blocks); kEpilogue applies bias
//   (bias[0..NR), may be null) and the activation after the sum (last KC block).
// ---------------------------------------------------------------------------------------------
constexpr int kAccumulate = 1;
constexpr int kEpilogue = 2;
constexpr int kMaxTile = 16 * 32;  // largest MR * NR of any kernel below

// Scalar activation with PyTorch's NaN semantics: NaN compares false, so it falls through as NaN.
template <typename T>
inline T act_scalar(T v, Act act) {
  if (act == Act::ReLU) return v < T(0) ? T(0) : v;
  if (act == Act::ReLU6) return v < T(0) ? T(0) : (v > T(6) ? T(6) : v);
  return v;
}

// Portable kernel: plain loops over a T[MR][NR] accumulator; the compiler keeps it in vector
// registers of whatever baseline it targets (SSE2 on x86-64).
template <typename T, int MR, int NR>
void ukr_generic(int64_t kc, const T* __restrict a, const T* __restrict b, T* __restrict c, int64_t ldc,
                 int mode, const T* __restrict bias, Act act) {
  T acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = T(0);
  for (int64_t k = 0; k < kc; ++k) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const T ai = a[i];
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j) acc[i][j] += ai * b[j];
    }
    a += MR;
    b += NR;
  }
  for (int i = 0; i < MR; ++i) {
    T* ci = c + i * ldc;
    for (int j = 0; j < NR; ++j) {
      T v = acc[i][j];
      if (mode & kAccumulate) v += ci[j];
      if (mode & kEpilogue) v = act_scalar(bias ? v + bias[j] : v, act);
      ci[j] = v;
    }
  }
}

#ifdef PYIMGCLS_X86
// Thin overloads so one kernel template serves float and double.  max(0, x) / min(6, x) put x
// second: the x86 max/min instructions return the second operand when either is NaN, which is
// exactly PyTorch's NaN propagation for relu / relu6.
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE __m512 vzero512(float) { return _mm512_setzero_ps(); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE __m512d vzero512(double) { return _mm512_setzero_pd(); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE __m512 vset512(float x) { return _mm512_set1_ps(x); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE __m512d vset512(double x) { return _mm512_set1_pd(x); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE __m512 vload512(const float* p) { return _mm512_load_ps(p); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE __m512d vload512(const double* p) { return _mm512_load_pd(p); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE __m512 vloadu512(const float* p) { return _mm512_loadu_ps(p); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE __m512d vloadu512(const double* p) { return _mm512_loadu_pd(p); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE void vstoreu512(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE void vstoreu512(double* p, __m512d v) { _mm512_storeu_pd(p, v); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE __m512 vfma512(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE __m512d vfma512(__m512d a, __m512d b, __m512d c) { return _mm512_fmadd_pd(a, b, c); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE __m512 vadd512(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE __m512d vadd512(__m512d a, __m512d b) { return _mm512_add_pd(a, b); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE __m512 vmax512(__m512 a, __m512 b) { return _mm512_max_ps(a, b); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE __m512d vmax512(__m512d a, __m512d b) { return _mm512_max_pd(a, b); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE __m512 vmin512(__m512 a, __m512 b) { return _mm512_min_ps(a, b); }
PYIMGCLS_TARGET_AVX512 PYIMGCLS_INLINE __m512d vmin512(__m512d a, __m512d b) { return _mm512_min_pd(a, b); }

// AVX-512 kernel: MR x (2 vectors) tile.  fp32: 12 x 32 -> 24 zmm accumulators + 2 B vectors
// + 1 broadcast = 27 of 32 registers; each k step issues 24 FMAs against 2 loads + 12 broadcasts,
// so the FMA pipes, not the load ports, set the pace.
template <typename T, int MR>
PYIMGCLS_TARGET_AVX512 void ukr_avx512(int64_t kc, const T* __restrict a, const T* __restrict b,
                                       T* __restrict c, int64_t ldc, int mode, const T* __restrict bias,
                                       Act act) {
  constexpr int W = 64 / sizeof(T);  // lanes per zmm
  using V = decltype(vzero512(T(0)));
  V acc0[MR], acc1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = vzero512(T(0));
  for (int64_t k = 0; k < kc; ++k) {
    const V b0 = vload512(b), b1 = vload512(b + W);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V ai = vset512(a[i]);
      acc0[i] = vfma512(ai, b0, acc0[i]);
      acc1[i] = vfma512(ai, b1, acc1[i]);
    }
    a += MR;
    b += 2 * W;
  }
  V bias0 = vzero512(T(0)), bias1 = bias0;
  const bool epi = (mode & kEpilogue) != 0;
  if (epi && bias) {
    bias0 = vloadu512(bias);
    bias1 = vloadu512(bias + W);
  }
  const V zero = vzero512(T(0)), six = vset512(T(6));
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    T* ci = c + i * ldc;
    V v0 = acc0[i], v1 = acc1[i];
    if (mode & kAccumulate) {
      v0 = vadd512(v0, vloadu512(ci));
      v1 = vadd512(v1, vloadu512(ci + W));
    }
    if (epi) {
      v0 = vadd512(v0, bias0);
      v1 = vadd512(v1, bias1);
      if (act != Act::None) {
        v0 = vmax512(zero, v0);
        v1 = vmax512(zero, v1);
        if (act == Act::ReLU6) {
          v0 = vmin512(six, v0);
          v1 = vmin512(six, v1);
        }
      }
    }
    vstoreu512(ci, v0);
    vstoreu512(ci + W, v1);
  }
}

PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256 vzero256(float) { return _mm256_setzero_ps(); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256d vzero256(double) { return _mm256_setzero_pd(); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256 vset256(float x) { return _mm256_set1_ps(x); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256d vset256(double x) { return _mm256_set1_pd(x); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256 vload256(const float* p) { return _mm256_load_ps(p); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256d vload256(const double* p) { return _mm256_load_pd(p); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256 vloadu256(const float* p) { return _mm256_loadu_ps(p); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256d vloadu256(const double* p) { return _mm256_loadu_pd(p); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE void vstoreu256(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE void vstoreu256(double* p, __m256d v) { _mm256_storeu_pd(p, v); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256 vfma256(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256d vfma256(__m256d a, __m256d b, __m256d c) { return _mm256_fmadd_pd(a, b, c); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256 vadd256(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256d vadd256(__m256d a, __m256d b) { return _mm256_add_pd(a, b); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256 vmax256(__m256 a, __m256 b) { return _mm256_max_ps(a, b); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256d vmax256(__m256d a, __m256d b) { return _mm256_max_pd(a, b); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256 vmin256(__m256 a, __m256 b) { return _mm256_min_ps(a, b); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256d vmin256(__m256d a, __m256d b) { return _mm256_min_pd(a, b); }

// AVX2 kernel: 6 x (2 vectors) tile -> 12 ymm accumulators + 2 B vectors + 1 broadcast = 15 of 16.
template <typename T, int MR>
PYIMGCLS_TARGET_AVX2 void ukr_avx2(int64_t kc, const T* __restrict a, const T* __restrict b, T* __restrict c,
                                   int64_t ldc, int mode, const T* __restrict bias, Act act) {
  constexpr int W = 32 / sizeof(T);  // lanes per ymm
  using V = decltype(vzero256(T(0)));
  V acc0[MR], acc1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = vzero256(T(0));
  for (int64_t k = 0; k < kc; ++k) {
    const V b0 = vload256(b), b1 = vload256(b + W);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V ai = vset256(a[i]);
      acc0[i] = vfma256(ai, b0, acc0[i]);
      acc1[i] = vfma256(ai, b1, acc1[i]);
    }
    a += MR;
    b += 2 * W;
  }
  V bias0 = vzero256(T(0)), bias1 = bias0;
  const bool epi = (mode & kEpilogue) != 0;
  if (epi && bias) {
    bias0 = vloadu256(bias);
    bias1 = vloadu256(bias + W);
  }
  const V zero = vzero256(T(0)), six = vset256(T(6));
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    T* ci = c + i * ldc;
    V v0 = acc0[i], v1 = acc1[i];
    if (mode & kAccumulate) {
      v0 = vadd256(v0, vloadu256(ci));
      v1 = vadd256(v1, vloadu256(ci + W));
    }
    if (epi) {
      v0 = vadd256(v0, bias0);
      v1 = vadd256(v1, bias1);
      if (act != Act::None) {
        v0 = vmax256(zero, v0);
        v1 = vmax256(zero, v1);
        if (act == Act::ReLU6) {
          v0 = vmin256(six, v0);
          v1 = vmin256(six, v1);
        }
      }
    }
    vstoreu256(ci, v0);
    vstoreu256(ci + W, v1);
  }
}
#endif  // PYIMGCLS_X86

// A micro-kernel together with the block sizes tuned for it.
template <typename T>
struct Kernel {
  using Fn = void (*)(int64_t, const T*, const T*, T*, int64_t, int, const T*, Act);
  Fn fn;
  int mr, nr;          // register tile
  int64_t kc, mc, nc;  // cache blocks (upper bounds; the driver evens them out)
  Isa isa;
};

template <typename T>
Kernel<T> select_kernel(Isa isa) {
  constexpr bool f32 = sizeof(T) == 4;
#ifdef PYIMGCLS_X86
  if (isa == Isa::Avx512)
    return f32 ? Kernel<T>{ukr_avx512<T, 14>, 14, 32, 256, 140, 4096, isa}
               : Kernel<T>{ukr_avx512<T, 14>, 14, 16, 256, 140, 2048, isa};
  if (isa == Isa::Avx2)
    return f32 ? Kernel<T>{ukr_avx2<T, 6>, 6, 16, 256, 144, 4096, isa}
               : Kernel<T>{ukr_avx2<T, 6>, 6, 8, 256, 96, 2048, isa};
#endif
  return f32 ? Kernel<T>{ukr_generic<T, 6, 8>, 6, 8, 256, 96, 2048, Isa::Generic}
             : Kernel<T>{ukr_generic<T, 6, 4>, 6, 4, 256, 96, 2048, Isa::Generic};
}

// ---------------------------------------------------------------------------------------------
// Packing.  Both packers read through arbitrary strides and zero-pad the edge so every micro-panel
// is full; the zero rows/columns add nothing to the sums and are never written back.
// ---------------------------------------------------------------------------------------------

// B[k0:k0+kc, n0:n0+nr_valid] -> dst[k*NR + j]  (one NR-column micro-panel)
template <typename T>
void pack_b_panel(const T* b, int64_t sbk, int64_t sbn, int64_t kc, int64_t nr_valid, int NR, T* __restrict dst) {
  if (sbn == 1 && nr_valid == NR) {
    // Row-major B: each k row of the panel is NR contiguous elements.
    for (int64_t k = 0; k < kc; ++k) {
      const T* src = b + k * sbk;
      T* d = dst + k * NR;
      for (int j = 0; j < NR; ++j) d[j] = src[j];
    }
    return;
  }
  if (nr_valid < NR) std::memset(dst, 0, sizeof(T) * static_cast<size_t>(kc) * NR);
  if (sbk == 1) {
    // Column-major B (e.g. a transposed weight): walk each column contiguously, scatter into the
    // L1-resident panel.
    for (int64_t j = 0; j < nr_valid; ++j) {
      const T* src = b + j * sbn;
      for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = src[k];
    }
    return;
  }
  for (int64_t k = 0; k < kc; ++k)
    for (int64_t j = 0; j < nr_valid; ++j) dst[k * NR + j] = b[k * sbk + j * sbn];
}

// A[m0:m0+mr_valid, k0:k0+kc] -> dst[k*MR + i]  (one MR-row micro-panel)
template <typename T>
void pack_a_panel(const T* a, int64_t sam, int64_t sak, int64_t kc, int64_t mr_valid, int MR, T* __restrict dst) {
  if (mr_valid < MR) std::memset(dst, 0, sizeof(T) * static_cast<size_t>(kc) * MR);
  if (sam == 1) {
    // Column-major A: each k column of the panel is MR contiguous elements.
    for (int64_t k = 0; k < kc; ++k) {
      const T* src = a + k * sak;
      T* d = dst + k * MR;
      for (int64_t i = 0; i < mr_valid; ++i) d[i] = src[i];
    }
    return;
  }
  if (sak == 1) {
    // Row-major A: read each row contiguously, scatter with stride MR into the panel.
    for (int64_t i = 0; i < mr_valid; ++i) {
      const T* src = a + i * sam;
      for (int64_t k = 0; k < kc; ++k) dst[k * MR + i] = src[k];
    }
    return;
  }
  for (int64_t k = 0; k < kc; ++k)
    for (int64_t i = 0; i < mr_valid; ++i) dst[k * MR + i] = a[i * sam + k * sak];
}

// ---------------------------------------------------------------------------------------------
// Scratch memory: grow-only, 64-byte aligned, one per calling thread.  The packed buffers are
// reused across calls so a GEMM does not pay page faults for a fresh multi-megabyte allocation,
// and it is all allocated before the parallel region, where an exception could not propagate.
// ---------------------------------------------------------------------------------------------
struct Scratch {
  void* p = nullptr;
  size_t cap = 0;
  ~Scratch() { std::free(p); }
  void* get(size_t bytes) {
    if (bytes > cap) {
      std::free(p);
      cap = (bytes + 63) / 64 * 64;
      p = std::aligned_alloc(64, cap);
      if (p == nullptr) {
        cap = 0;
        throw std::bad_alloc();
      }
    }
    return p;
  }
};

thread_local Scratch tls_scratch;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Guarded write-back of an mr x nr corner of a tile computed into a buffer (row stride ldt).
template <typename T>
void merge_tile(const T* tile, int64_t ldt, T* c, int64_t scm, int64_t scn, int64_t mr, int64_t nr, int mode,
                const T* bias, Act act) {
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < nr; ++j) {
      T* cij = c + i * scm + j * scn;
      T v = tile[i * ldt + j];
      if (mode & kAccumulate) v += *cij;
      if (mode & kEpilogue) v = act_scalar(bias ? v + bias[j] : v, act);
      *cij = v;
    }
}

// Below this many multiply-adds the OpenMP fork/join costs more than the second core saves.
constexpr int64_t kParallelMinWork = int64_t(96) * 96 * 96;

template <typename T>
void gemm_packed(const Kernel<T>& kr, const T* a, int64_t sam, int64_t sak, const T* b, int64_t sbk,
                 int64_t sbn, const T* bias, T* c, int64_t scm, int64_t scn, int64_t M, int64_t N, int64_t K,
                 Act act) {
  const int MR = kr.mr, NR = kr.nr;
  const int nt = (M * N * K < kParallelMinWork) ? 1 : std::max(1, omp_get_max_threads());

  // 1. Even out the blocks: K and N split into equal-ish blocks (no thin tail block); M split into
  //    a multiple of the thread count so every thread gets the same number of A blocks.
  const int64_t kb = ceil_div(K, kr.kc);
  const int64_t KC = ceil_div(K, kb);
  const int64_t nb = ceil_div(N, kr.nc);
  const int64_t NC = round_up(ceil_div(N, nb), NR);
  int64_t mb = ceil_div(M, kr.mc);
  if (mb >= nt) mb = round_up(mb, nt);
  const int64_t MC = round_up(ceil_div(M, mb), MR);
  mb = ceil_div(M, MC);

  // One B panel shared by the team, then one private A block per thread, each 64-byte aligned.
  const int64_t align = 64 / sizeof(T);
  const int64_t bsize = round_up(KC * NC, align), asize = round_up(KC * MC, align);
  T* bpack = static_cast<T*>(tls_scratch.get(sizeof(T) * static_cast<size_t>(bsize + nt * asize)));

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = omp_get_thread_num();
    const int team = omp_get_num_threads();
    T* apack = bpack + bsize + tid * asize;
    alignas(64) T tile[kMaxTile];

    for (int64_t jc = 0; jc < N; jc += NC) {
      const int64_t nc = std::min(NC, N - jc);
      const int64_t npanels = ceil_div(nc, NR);
      // When there are fewer A blocks than threads (or they do not divide evenly), each A block is
      // also split along N so the work units still divide evenly among the team.
      const int64_t ns = std::min<int64_t>(npanels, (mb % team == 0) ? 1 : team / std::gcd<int64_t>(mb, team));
      const int64_t units = mb * ns;

      for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = std::min(KC, K - pc);
        const int mode = (pc > 0 ? kAccumulate : 0) | (pc + kc == K ? kEpilogue : 0);

        // 2. Pack B[pc:pc+kc, jc:jc+nc] (shared).  The implicit barrier publishes it to the team.
#pragma omp for schedule(static)
        for (int64_t p = 0; p < npanels; ++p)
          pack_b_panel(b + pc * sbk + (jc + p * NR) * sbn, sbk, sbn, kc, std::min<int64_t>(NR, nc - p * NR), NR,
                       bpack + p * NR * kc);

        // 3. Each thread takes whole (A block, N range) units; A blocks are packed privately.
        int64_t packed_ic = -1;
        for (int64_t u = tid; u < units; u += team) {
          const int64_t ic = (u / ns) * MC;
          const int64_t s = u % ns;
          const int64_t mc = std::min(MC, M - ic);
          const int64_t mpanels = ceil_div(mc, MR);
          if (ic != packed_ic) {
            for (int64_t q = 0; q < mpanels; ++q)
              pack_a_panel(a + (ic + q * MR) * sam + pc * sak, sam, sak, kc, std::min<int64_t>(MR, mc - q * MR), MR,
                           apack + q * MR * kc);
            packed_ic = ic;
          }
          const int64_t jr_begin = npanels * s / ns, jr_end = npanels * (s + 1) / ns;
          // 4. Macro-kernel: the B micro-panel stays in L1 while the A block streams from L2.
          for (int64_t jr = jr_begin; jr < jr_end; ++jr) {
            const T* bp = bpack + jr * NR * kc;
            const int64_t n0 = jc + jr * NR;
            const int64_t nr = std::min<int64_t>(NR, N - n0);
            const T* bias_tile = (bias != nullptr) ? bias + n0 : nullptr;
            for (int64_t ir = 0; ir < mpanels; ++ir) {
              const T* ap = apack + ir * MR * kc;
              const int64_t m0 = ic + ir * MR;
              const int64_t mr = std::min<int64_t>(MR, M - m0);
              T* ct = c + m0 * scm + n0 * scn;
              if (mr == MR && nr == NR && scn == 1) {
                kr.fn(kc, ap, bp, ct, scm, mode, bias_tile, act);
              } else {
                kr.fn(kc, ap, bp, tile, NR, 0, nullptr, Act::None);
                merge_tile(tile, NR, ct, scm, scn, mr, nr, mode, bias_tile, act);
              }
            }
          }
        }
        // B is repacked by the next pc / jc step: everyone must be done reading it.
#pragma omp barrier
      }
    }
  }
}

template <typename T>
void gemm_t(Isa isa, const T* a, int64_t sam, int64_t sak, const T* b, int64_t sbk, int64_t sbn, const T* bias,
            T* c, int64_t scm, int64_t scn, int64_t M, int64_t N, int64_t K, Act act) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    // Empty sum: C = act(bias) or act(0).
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) c[m * scm + n * scn] = act_scalar(bias ? bias[n] : T(0), act);
    return;
  }
  Kernel<T> kr = select_kernel<T>(isa);
  if (getenv("GT_KC")) kr.kc = atoi(getenv("GT_KC"));
  if (getenv("GT_MC")) kr.mc = atoi(getenv("GT_MC"));
  if (getenv("GT_NC")) kr.nc = atoi(getenv("GT_NC"));
  gemm_packed(kr, a, sam, sak, b, sbk, sbn, bias, c, scm, scn, M, N, K, act);
}

// ---------------------------------------------------------------------------------------------
// Epilogue backward.
// ---------------------------------------------------------------------------------------------
// Column strips of this many elements are the unit of parallel work: each strip is owned by one
// thread, which walks all M rows in order, so the bias sum has one fixed order for any team size.
constexpr int64_t kStrip = 256;

template <typename T>
void bias_act_bwd_t(const T* grad, const T* out, T* grad_pre, T* grad_bias, int64_t M, int64_t N, Act act) {
  if (M <= 0 || N <= 0) {
    if (grad_bias != nullptr)
      for (int64_t n = 0; n < std::max<int64_t>(N, 0); ++n) grad_bias[n] = T(0);
    return;
  }
  const int64_t strips = ceil_div(N, kStrip);
  const int nt = (M * N < (int64_t(1) << 15)) ? 1 : std::max(1, omp_get_max_threads());
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t s = 0; s < strips; ++s) {
    const int64_t n0 = s * kStrip;
    const int64_t w = std::min(kStrip, N - n0);
    // float32 sums accumulate in double: the sum over a large batch keeps ~1e-7 relative error
    // instead of growing with M.
    double acc[kStrip];
    for (int64_t j = 0; j < w; ++j) acc[j] = 0.0;
    for (int64_t m = 0; m < M; ++m) {
      const T* g = grad + m * N + n0;
      T* gp = grad_pre + m * N + n0;
      if (act == Act::None) {
        if (gp != g)
          for (int64_t j = 0; j < w; ++j) gp[j] = g[j];
      } else {
        const T* o = out + m * N + n0;
        if (act == Act::ReLU) {
          for (int64_t j = 0; j < w; ++j) gp[j] = o[j] > T(0) ? g[j] : T(0);
        } else {
          for (int64_t j = 0; j < w; ++j) gp[j] = (o[j] > T(0) && o[j] < T(6)) ? g[j] : T(0);
        }
      }
      if (grad_bias != nullptr)
        for (int64_t j = 0; j < w; ++j) acc[j] += static_cast<double>(gp[j]);
    }
    if (grad_bias != nullptr)
      for (int64_t j = 0; j < w; ++j) grad_bias[n0 + j] = static_cast<T>(acc[j]);
  }
}

}  // namespace

void gemm(DType dt, const void* a, int64_t sam, int64_t sak, const void* b, int64_t sbk, int64_t sbn,
          const void* bias, void* c, int64_t scm, int64_t scn, int64_t M, int64_t N, int64_t K, Act act) {
  const Isa isa = active_isa();
  if (dt == DType::Float32)
    gemm_t(isa, static_cast<const float*>(a), sam, sak, static_cast<const float*>(b), sbk, sbn,
           static_cast<const float*>(bias), static_cast<float*>(c), scm, scn, M, N, K, act);
  else if (dt == DType::Float64)
    gemm_t(isa, static_cast<const double*>(a), sam, sak, static_cast<const double*>(b), sbk, sbn,
           static_cast<const double*>(bias), static_cast<double*>(c), scm, scn, M, N, K, act);
  else
    throw std::invalid_argument(std::string("CPU GEMM takes float32 or float64, got ") + dtype_name(dt));
}

void bias_act_bwd(DType dt, const void* grad, const void* out, void* grad_pre, void* grad_bias, int64_t M,
                  int64_t N, Act act) {
  if (act != Act::None && out == nullptr && M > 0 && N > 0)
    throw std::invalid_argument("bias_act_bwd: out is required when the activation is relu or relu6");
  if (dt == DType::Float32)
    bias_act_bwd_t(static_cast<const float*>(grad), static_cast<const float*>(out), static_cast<float*>(grad_pre),
                   static_cast<float*>(grad_bias), M, N, act);
  else if (dt == DType::Float64)
    bias_act_bwd_t(static_cast<const double*>(grad), static_cast<const double*>(out),
                   static_cast<double*>(grad_pre), static_cast<double*>(grad_bias), M, N, act);
  else
    throw std::invalid_argument(std::string("CPU bias_act_bwd takes float32 or float64, got ") + dtype_name(dt));
}

const char* gemm_isa() { return isa_name(active_isa()); }

}  // namespace pyimgcls::cpu
