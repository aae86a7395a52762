// CPU GEMM family: C = act(A @ B + bias) and the backward of its epilogue, float32 and float64;
// bfloat16 with float32 accumulation (vdpbf16ps where the CPU has AVX512_BF16) in the section
// "bfloat16 GEMM" below, on the same five-loop driver.
//
// What it computes
//   gemm:         C[m, n] = act(sum_k A[m, k] * B[k, n] + bias[n]),  act in {none, relu, relu6},
//                 A, B, C addressed through arbitrary element strides (transposed or sliced views
//                 need no copy: the packing step reads through the strides).
//   bias_act_bwd: grad_pre[m, n] = grad[m, n] where act'(out[m, n]) = 1, else 0 (a select, as in
//                 ATen: relu drops out <= 0, relu6 drops out <= 0 or out >= 6, so a NaN output
//                 passes its gradient);  grad_bias[n] = sum_m grad_pre[m, n].
//
// Algorithm (BLIS / GotoBLAS five-loop GEMM)
//   for jc in N step NC                        B panel [KC x NC], shared by the team, in L3
//     for pc in K step KC
//       pack B[pc:pc+KC, jc:jc+NC] into NR-column micro-panels (zero-padded), in parallel
//       (threads form a tm x tn grid, each owning a range of M rows and of B micro-panels)
//       for ic in M step MC                    over this thread's rows
//         pack A[ic:ic+MC, pc:pc+KC] into MR-row micro-panels (zero-padded), thread-private, in L2
//         for jr in NC step NR                 over this thread's B micro-panels [KC x NR],
//                                              each reused across the ir loop
//           for ir in MC step MR
//             micro-kernel: MR x NR register tile += A micro-panel @ B micro-panel
//   The micro-kernel always computes a full MR x NR tile (edge panels are zero-padded); full tiles
//   with unit column stride are updated in C directly, edge tiles and strided C go through a small
//   tile buffer and a guarded scalar write-back. The first KC block overwrites C, later ones add to
//   it, and only the last one applies bias + activation, so the epilogue sees the full sum.
//   M == 1 or N == 1 is a matrix-vector product: it streams the matrix once instead of packing it.
//
//   Micro-kernel (MR x NR, one body compiled per instruction set) and cache blocks (KC, MC, NC) per
//   instruction set, picked at run time (PYIMGCLS_CPU_ISA=generic|avx2|avx512 forces a lower one;
//   it is clamped to what the CPU has):
//     avx512   fp32 14 x 32 (28 zmm accumulators), KC 768, MC 70, NC 2048
//              fp64 14 x 16,                        KC 512, MC 70, NC 2048
//     avx2     fp32  6 x 16 (12 ymm accumulators), KC 1024, MC 48, NC 2048
//              fp64  6 x 8,                         KC 384,  MC 72, NC 2048
//     generic  fp32  6 x 8, fp64 6 x 4 (GCC/Clang vector extensions, 16-byte vectors),
//              KC 512, MC 72, NC 2048
//
// Cost
//   FLOPs = 2 * M * N * K.  Minimum bytes moved = sizeof(T) * (M*K + K*N + M*N (+ N bias)):
//   every operand read once and C written once.  The packed path also writes and re-reads each
//   packed panel, re-reads A once per NC block and C once per extra KC block, all small next to
//   the compute at the block sizes above.
//   bias_act_bwd: M*N multiplies, M*N adds; bytes = sizeof(T) * (2*M*N grad in/out + M*N out + N).
//
// Test and benchmark
//   pytest tests/test_gemm.py -k cpu
//   pytest tests/test_cpu_bf16.py               (bf16: every kernel path against float64)
//   pytest benchmarks/test_bench_gemm_cpu.py
#include "gemm.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"

namespace pyimgcls::cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Micro-kernel.  Contract:
//   a: packed A micro-panel, kc x MR (a[k*MR + i] = A[i, k]), 64-byte aligned
//   b: packed B micro-panel, kc x NR (b[k*NR + j] = B[k, j]), 64-byte aligned
//   c: MR x NR tile, row stride ldc, unit column stride, need not be aligned
//   mode: kAccumulate adds the tile to what is in c (later KC blocks); kEpilogue applies bias
//   (bias[0..NR), may be null) and the activation after the sum (last KC block).
// ---------------------------------------------------------------------------------------------
constexpr int kAccumulate = 1;
constexpr int kEpilogue = 2;
constexpr int kMaxTile = 16 * 32;  // at least the largest MR * NR of select_kernel below

// One body for every instruction set (compiled per ISA by Compiled<isa, ...>, common.h): an
// MR x (2 vectors) register tile of VB-byte vectors, VB = vec_bytes(isa), so NR = 2 * VB / sizeof(T).
// MR per instruction set fills the register file:
//   avx512   MR = 14: 28 zmm accumulators + 2 B vectors + 1 broadcast = 31 of 32 registers; each k
//            step issues 28 FMAs against 2 loads + 14 broadcasts, so the FMA pipes, not the load
//            ports, set the pace (measured at the core's FMA peak from L1).
//   avx2     MR = 6: 12 ymm accumulators + 2 B vectors + 1 broadcast = 15 of 16.
//   generic  MR = 6 with 16-byte vectors (SSE2 on x86-64, NEON on ARM): the same 15 of 16. Plain
//            scalar loops would be left to the SLP vectoriser, which spills them.
// `acc += a * b` is one FMA on AVX2 / AVX-512 (see common.h), a multiply and an add on the baseline.
template <typename T, int MR, int VB>
struct MicroKernel {
  static PYIMGCLS_INLINE void run(int64_t kc, const T* __restrict a, const T* __restrict b, T* __restrict c,
                                  int64_t ldc, int mode, const T* __restrict bias, Act act) {
    using V = Vec<T, VB>;
    constexpr int W = VB / sizeof(T);  // lanes per vector
    V acc0[MR], acc1[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      acc0[i] = acc1[i] = V{};
      // The C tile was last touched a whole KC block ago (L3 or memory): start fetching its lines
      // now so the epilogue does not stall on them.
      __builtin_prefetch(c + i * ldc, 0, 3);
      __builtin_prefetch(c + i * ldc + 2 * W - 1, 0, 3);
    }
    for (int64_t k = 0; k < kc; ++k) {
      V b0, b1;
      std::memcpy(&b0, b, sizeof(V));
      std::memcpy(&b1, b + W, sizeof(V));
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const T ai = a[i];  // scalar * vector broadcasts the scalar: one broadcast load per row
        acc0[i] += ai * b0;
        acc1[i] += ai * b1;
      }
      a += MR;
      b += 2 * W;
    }
    V bias0 = V{}, bias1 = V{};
    const bool epi = (mode & kEpilogue) != 0;
    const bool add_bias = epi && bias != nullptr;
    if (add_bias) {
      std::memcpy(&bias0, bias, sizeof(V));
      std::memcpy(&bias1, bias + W, sizeof(V));
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      T* ci = c + i * ldc;
      V v0 = acc0[i], v1 = acc1[i];
      if (mode & kAccumulate) {
        V c0, c1;
        std::memcpy(&c0, ci, sizeof(V));
        std::memcpy(&c1, ci + W, sizeof(V));
        v0 += c0;
        v1 += c1;
      }
      if (add_bias) {
        v0 += bias0;
        v1 += bias1;
      }
      if (epi && act != Act::None) {
        apply_act_in_place(v0, act);
        apply_act_in_place(v1, act);
      }
      std::memcpy(ci, &v0, sizeof(V));
      std::memcpy(ci + W, &v1, sizeof(V));
    }
  }
};

#ifdef PYIMGCLS_X86
// 256-bit load / store / zero for the AVX2 packer below, one overload per element type.
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256 vzero256(float) { return _mm256_setzero_ps(); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256d vzero256(double) { return _mm256_setzero_pd(); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256 vloadu256(const float* p) { return _mm256_loadu_ps(p); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE __m256d vloadu256(const double* p) { return _mm256_loadu_pd(p); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE void vstoreu256(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE void vstoreu256(double* p, __m256d v) { _mm256_storeu_pd(p, v); }
#endif  // PYIMGCLS_X86

// ---------------------------------------------------------------------------------------------
// Packing.  One routine serves both operands: `lanes` A rows (panels of P = MR) or B columns
// (panels of P = NR) over kc steps of k become consecutive micro-panels,
//   dst[p*P*kc + k*P + j] = src[(p*P + j)*s_lane + k*s_k],
// reading any strides.  Lanes past the matrix edge are zero in the last panel so the micro-kernel
// always runs a full tile: the zero rows/columns add nothing and are never written back.
// Two layouts get their own loop: lanes contiguous (row-major B, column-major A) is a copy done
// one k row at a time across all panels, so the source is read sequentially; k contiguous
// (row-major A, a transposed weight as B) is a transpose done panel by panel in chunks of one
// cache line of k, so each source line is used up at once and the scattered writes stay in L1.
// ---------------------------------------------------------------------------------------------
template <typename T, int P>
PYIMGCLS_INLINE void pack_copy(const T* src, int64_t s_k, int64_t kc, int64_t lanes, T* __restrict dst) {
  const int64_t full = lanes / P, tail = lanes - full * P;
  const int64_t pstride = P * kc;
  for (int64_t k = 0; k < kc; ++k) {
    const T* s = src + k * s_k;
    T* d = dst + k * P;
    for (int64_t p = 0; p < full; ++p)
      for (int j = 0; j < P; ++j) d[p * pstride + j] = s[p * P + j];
    if (tail) {
      T* dt = d + full * pstride;
      for (int64_t j = 0; j < tail; ++j) dt[j] = s[full * P + j];
      for (int64_t j = tail; j < P; ++j) dt[j] = T(0);
    }
  }
}

// One panel, any strides; valid <= P lanes, the rest zero.
template <typename T, int P>
PYIMGCLS_INLINE void pack_panel_strided(const T* src, int64_t s_lane, int64_t s_k, int64_t kc, int64_t valid,
                                        T* __restrict dst) {
  if (valid < P) std::memset(dst, 0, sizeof(T) * static_cast<size_t>(kc) * P);
  if (s_k == 1) {
    constexpr int64_t KB = 64 / sizeof(T);
    for (int64_t k0 = 0; k0 < kc; k0 += KB) {
      const int64_t kb = std::min(KB, kc - k0);
      for (int64_t j = 0; j < valid; ++j) {
        const T* s = src + j * s_lane + k0;
        T* d = dst + k0 * P + j;
        for (int64_t q = 0; q < kb; ++q) d[q * P] = s[q];
      }
    }
    return;
  }
  for (int64_t k = 0; k < kc; ++k)
    for (int64_t j = 0; j < valid; ++j) dst[k * P + j] = src[j * s_lane + k * s_k];
}

template <typename T, int P>
PYIMGCLS_INLINE_RUNS void pack_generic(const T* src, int64_t s_lane, int64_t s_k, int64_t kc, int64_t lanes, T* __restrict dst) {
  if (s_lane == 1) {
    pack_copy<T, P>(src, s_k, kc, lanes, dst);
    return;
  }
  for (int64_t p = 0; p * P < lanes; ++p)
    pack_panel_strided<T, P>(src + p * P * s_lane, s_lane, s_k, kc, std::min<int64_t>(P, lanes - p * P),
                             dst + p * P * kc);
}

#ifdef PYIMGCLS_X86
// In-register transposes of L x L blocks (L = lanes per ymm): row i of the block becomes r[i]'s
// column i.
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE void transpose_block(__m256* r) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);      // r0_0 r1_0 r0_1 r1_1 | r0_4 ...
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);  // r0_2 r1_2 r0_3 r1_3 | r0_6 ...
  }
  for (int h = 0; h < 2; ++h) {
    u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);      // column 0 | 4 of 4 rows
    u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);      // column 1 | 5
    u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);  // column 2 | 6
    u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);  // column 3 | 7
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE void transpose_block(__m256d* r) {
  const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]);  // r0_0 r1_0 | r0_2 r1_2
  const __m256d t1 = _mm256_unpackhi_pd(r[0], r[1]);  // r0_1 r1_1 | r0_3 r1_3
  const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]);
  const __m256d t3 = _mm256_unpackhi_pd(r[2], r[3]);
  r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
  r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
  r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
  r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

// One full panel with contiguous k: L x L register transposes over one cache line of k.
template <typename T, int P>
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE void pack_panel_transpose(const T* src, int64_t s_lane, int64_t kc,
                                                               T* __restrict dst) {
  using V = decltype(vzero256(T(0)));
  constexpr int L = 32 / sizeof(T);        // lanes per ymm: the transpose block is L x L
  constexpr int KB = 64 / sizeof(T);       // k per chunk: one cache line of every lane row
  constexpr int PB = (P + L - 1) / L * L;  // lanes rounded up to whole blocks
  constexpr bool direct = (P % L == 0);    // blocks land in dst directly, else through tmp
  alignas(32) T tmp[KB][PB];
  int64_t k0 = 0;
  for (; k0 + KB <= kc; k0 += KB) {
    for (int j0 = 0; j0 < PB; j0 += L) {
      for (int kk = 0; kk < KB; kk += L) {
        V r[L];
        for (int i = 0; i < L; ++i)
          r[i] = (j0 + i < P) ? vloadu256(src + (j0 + i) * s_lane + k0 + kk) : vzero256(T(0));
        transpose_block(r);
        for (int i = 0; i < L; ++i) {
          if (direct)
            vstoreu256(dst + (k0 + kk + i) * P + j0, r[i]);
          else
            vstoreu256(&tmp[kk + i][j0], r[i]);
        }
      }
    }
    if (!direct)
      for (int q = 0; q < KB; ++q)
        for (int j = 0; j < P; ++j) dst[(k0 + q) * P + j] = tmp[q][j];
  }
  for (; k0 < kc; ++k0)
    for (int j = 0; j < P; ++j) dst[k0 * P + j] = src[j * s_lane + k0];
}

// AVX2 packer, also used by the AVX-512 path: for the shuffles a transpose needs, 256-bit
// registers move as many elements per cycle on Zen 4 as 512-bit ones.
template <typename T, int P>
PYIMGCLS_TARGET_AVX2 PYIMGCLS_INLINE_RUNS void pack_avx2(const T* src, int64_t s_lane, int64_t s_k, int64_t kc, int64_t lanes,
                                    T* __restrict dst) {
  if (s_lane == 1) {
    pack_copy<T, P>(src, s_k, kc, lanes, dst);
    return;
  }
  for (int64_t p = 0; p * P < lanes; ++p) {
    const int64_t valid = std::min<int64_t>(P, lanes - p * P);
    if (s_k == 1 && valid == P)
      pack_panel_transpose<T, P>(src + p * P * s_lane, s_lane, kc, dst + p * P * kc);
    else
      pack_panel_strided<T, P>(src + p * P * s_lane, s_lane, s_k, kc, valid, dst + p * P * kc);
  }
}
#endif  // PYIMGCLS_X86

// A micro-kernel, its packers and the cache blocks tuned for it on an AMD Zen 4 (32 KiB L1d,
// 1 MiB L2 per core, 32 MiB L3).  KC is large because on this core the L2 feeds the FMA units
// fast enough: a long K block halves the passes over C, which cost more than L1 residency of the
// B micro-panel would save.
// T: the accumulator / C element, TI: the A and B elements read, TP: the packed element (the bf16
// GEMM reads float32 or bf16 and packs bf16 k-pairs: kstep = 2, panels padded to an even k).
template <typename T, typename TI = T, typename TP = T>
struct Kernel {
  using Fn = void (*)(int64_t, const TP*, const TP*, T*, int64_t, int, const T*, Act);
  using Pack = void (*)(const TI*, int64_t, int64_t, int64_t, int64_t, TP*);
  Fn fn;
  Pack pack_a, pack_b;  // packers into MR-lane and NR-lane micro-panels
  int mr, nr;           // register tile
  int64_t kc, mc, nc;   // cache blocks (upper bounds; the driver evens them out)
  int kstep = 1;        // k per packed group: every KC block and packed panel is a multiple of it
};

// The MR-row micro-kernel of isa, compiled for isa.
template <typename T, Isa isa, int MR>
typename Kernel<T>::Fn micro_kernel() {
  return &Compiled<isa, MicroKernel<T, MR, vec_bytes(isa)>>::run;
}

template <typename T>
Kernel<T> select_kernel(Isa isa) {
  constexpr bool f32 = sizeof(T) == 4;
#ifdef PYIMGCLS_X86
  if (isa == Isa::Avx512) {
    constexpr int MR = 14, NR = 2 * vec_bytes(Isa::Avx512) / sizeof(T);
    return {micro_kernel<T, Isa::Avx512, MR>(), pack_avx2<T, MR>, pack_avx2<T, NR>, MR, NR, f32 ? 768 : 512, 70,
            2048};
  }
  if (isa == Isa::Avx2) {
    constexpr int MR = 6, NR = 2 * vec_bytes(Isa::Avx2) / sizeof(T);
    return {micro_kernel<T, Isa::Avx2, MR>(), pack_avx2<T, MR>, pack_avx2<T, NR>, MR, NR, f32 ? 1024 : 384,
            f32 ? 48 : 72, 2048};
  }
#endif
  constexpr int MR = 6, NR = 2 * vec_bytes(Isa::Generic) / sizeof(T);
  return {micro_kernel<T, Isa::Generic, MR>(), pack_generic<T, MR>, pack_generic<T, NR>, MR, NR, 512, 72, 2048};
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
      if (mode & kEpilogue) v = apply_act(bias ? v + bias[j] : v, act);
      *cij = v;
    }
}

// Below this many multiply-adds the OpenMP fork/join (about a microsecond) costs more than the
// second core saves; measured crossover on 2 cores between 32^3 and 48^3.
constexpr double kParallelMinWork = 48.0 * 48.0 * 48.0;

template <typename T, typename TI, typename TP>
void gemm_packed(const Kernel<T, TI, TP>& kr, const TI* a, int64_t sam, int64_t sak, const TI* b, int64_t sbk,
                 int64_t sbn, const T* bias, T* c, int64_t scm, int64_t scn, int64_t M, int64_t N, int64_t K,
                 Act act) {
  const int MR = kr.mr, NR = kr.nr;
  // The work estimate is a double: M * N * K itself may not fit in 64 bits.
  const double work = static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  const int nt = (work < kParallelMinWork) ? 1 : std::max(1, omp_get_max_threads());

  // 1. Even out the blocks: K and N split into equal-ish blocks, so there is no thin tail block.
  const int64_t kb = ceil_div(K, kr.kc);
  const int64_t KC = round_up(ceil_div(K, kb), kr.kstep);
  const int64_t nb = ceil_div(N, kr.nc);
  const int64_t NC = round_up(ceil_div(N, nb), NR);
  const int64_t MC_max = std::min(round_up(kr.mc, MR), round_up(M, MR));

  // One B panel shared by the team, then one private A block per thread, each 64-byte aligned.
  const int64_t align = 64 / sizeof(TP);
  const int64_t bsize = round_up(KC * NC, align), asize = round_up(KC * MC_max, align);
  TP* bpack = static_cast<TP*>(tls_scratch.get(sizeof(TP) * static_cast<size_t>(bsize + nt * asize)));

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = omp_get_thread_num();
    const int team = omp_get_num_threads();
    TP* apack = bpack + bsize + tid * asize;
    alignas(64) T tile[kMaxTile];
    const int64_t mpanels_all = ceil_div(M, MR);

    for (int64_t jc = 0; jc < N; jc += NC) {
      const int64_t nc = std::min(NC, N - jc);
      const int64_t npanels = ceil_div(nc, NR);

      // 2. Thread grid tm x tn (tm * tn = team): thread (ti, tj) owns a contiguous range of MR
      //    panels of M and of NR panels of this N block.  tm is the divisor of the team size with
      //    the smallest largest-per-thread tile area, preferring to split M (within 5%): that keeps
      //    each thread's packed A private instead of packing the same A block tn times.
      auto area = [&](int d) {
        return static_cast<double>(ceil_div(mpanels_all, d)) * static_cast<double>(ceil_div(npanels, team / d));
      };
      double best = area(1);
      for (int d = 2; d <= team; ++d)
        if (team % d == 0) best = std::min(best, area(d));
      int tm = 1;
      for (int d = team; d >= 1; --d)
        if (team % d == 0 && area(d) <= 1.05 * best) {
          tm = d;
          break;
        }
      const int tn = team / tm;
      const int ti = tid / tn, tj = tid % tn;
      const int64_t m_lo = std::min(M, mpanels_all * ti / tm * MR);
      const int64_t m_hi = std::min(M, mpanels_all * (ti + 1) / tm * MR);
      const int64_t jr_lo = npanels * tj / tn, jr_hi = npanels * (tj + 1) / tn;
      // MC evened out over this thread's rows, a multiple of MR.
      const int64_t mblocks = std::max<int64_t>(1, ceil_div(m_hi - m_lo, MC_max));
      const int64_t MC = round_up(ceil_div(m_hi - m_lo, mblocks), MR);

      for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = std::min(KC, K - pc);
        const int64_t kcp = round_up(kc, kr.kstep);  // packed k per panel (zero-padded)
        const int mode = (pc > 0 ? kAccumulate : 0) | (pc + kc == K ? kEpilogue : 0);

        // 3. Pack B[pc:pc+kc, jc:jc+nc] (shared), each thread a contiguous range of micro-panels;
        //    the barrier publishes the whole panel to the team.
        {
          const int64_t p0 = npanels * tid / team, p1 = npanels * (tid + 1) / team;
          if (p1 > p0)
            kr.pack_b(b + pc * sbk + (jc + p0 * NR) * sbn, sbn, sbk, kc, std::min(nc, p1 * NR) - p0 * NR,
                      bpack + p0 * NR * kcp);
        }
#pragma omp barrier

        for (int64_t ic = m_lo; ic < m_hi && jr_lo < jr_hi; ic += MC) {
          // 4. Pack this thread's A block A[ic:ic+mc, pc:pc+kc] into its private buffer.
          const int64_t mc = std::min(MC, m_hi - ic);
          const int64_t mpanels = ceil_div(mc, MR);
          kr.pack_a(a + ic * sam + pc * sak, sam, sak, kc, mc, apack);
          // 5. Macro-kernel: each B micro-panel is reused across the A block, which stays in L2.
          for (int64_t jr = jr_lo; jr < jr_hi; ++jr) {
            const TP* bp = bpack + jr * NR * kcp;
            const int64_t n0 = jc + jr * NR;
            const int64_t nr = std::min<int64_t>(NR, N - n0);
            const T* bias_tile = (bias != nullptr) ? bias + n0 : nullptr;
            for (int64_t ir = 0; ir < mpanels; ++ir) {
              const TP* ap = apack + ir * MR * kcp;
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

// ---------------------------------------------------------------------------------------------
// bfloat16 GEMM: C = act(A @ B + bias) with A, B rounded to bf16 (or read as bf16), products and
// sums in float32.
//   Packing: k-pairs. An A micro-panel holds, per pair kp of k, the MR rows' (A[i, 2kp],
//   A[i, 2kp+1]) side by side: a[kp*2*MR + 2*i + t] = bf16(A[i, 2kp + t]); a B micro-panel
//   b[kp*2*NR + 2*j + t] = bf16(B[2kp + t, j]). An odd k tail is padded with a zero pair member.
//   Float32 inputs are rounded to bf16 (nearest, ties to even) while packing, bf16 inputs copied.
//   This is the operand format of vdpbf16ps: one 32-bit lane of a B vector is one column's pair,
//   and the broadcast 32-bit A pair multiplies all NR columns at once.
//   Micro-kernels on that same format:
//     AVX512_BF16 (vdpbf16ps): 14 x 32, 28 zmm accumulators, one vdpbf16ps per 16 columns and row
//       per k-pair: 32 multiply-adds per instruction, twice the fp32 FMA's 16.
//     fallback (any CPU; PYIMGCLS_CPU_ISA=avx512 forces it here): the pair widened to two float32
//       vectors by shifts (a bf16 is the high half of a float32), then two FMAs: 12 x 32 on AVX-512
//       (24 accumulators + 4 widened B vectors), 6 x 16 on AVX2, 6 x 8 on the baseline. The
//       product of two bf16 values is exact in float32 (8 + 8 significant bits), so the fallback
//       and vdpbf16ps form the same products; the fallback adds them in vdpbf16ps's documented
//       order (odd k of the pair, then even, into the accumulator), with the same KC for every
//       kernel, so both paths sum every C element in the same order. vdpbf16ps treats subnormal
//       inputs and results as zero (DAZ / FTZ), the fallback does not: results can differ there, or
//       where a CPU's vdpbf16ps rounds its two products' sum differently; tests compare every
//       path with a float64 reference (tests/test_cpu_bf16.py).
//   Blocks: KC 1024 (even; the packed B micro-panel is KC*NR*2 bytes = 64 KiB, as L2-resident as
//   the fp32 kernel's), MC about 70, NC 2048.
//   Cost: FLOPs 2*M*N*K; bytes read 2*(M*K + K*N) from bf16 inputs (4* for float32 ones), C written
//   once in float32 (the bf16 output goes through a float32 buffer: + 4*M*N written and read).
// ---------------------------------------------------------------------------------------------
constexpr int64_t kBf16KC = 1024;

PYIMGCLS_INLINE uint16_t to_bf16_bits(float v) { return float_to_bf16(v); }
PYIMGCLS_INLINE uint16_t to_bf16_bits(uint16_t v) { return v; }

// P lanes (MR rows of A or NR columns of B) over kc steps of k into k-pair micro-panels (above),
// reading any strides; lanes past `lanes` and the odd-k pad are zero. A pair is written as one
// 32-bit word, bf16(k even) | bf16(k odd) << 16, so the lanes-contiguous loop is 32-bit lane-wise
// work (two loads, the rounding, a shift and an or per pair) that vectorises; the body is compiled
// per instruction set (Compiled<isa, PackBf16<...>>, the packer of that isa's kernels).
template <typename TI, int P>
struct PackBf16 {
  static PYIMGCLS_INLINE void run(const TI* src, int64_t s_lane, int64_t s_k, int64_t kc, int64_t lanes,
                                  uint16_t* __restrict dst) {
    const int64_t kcp = kc + (kc & 1), full = kc / 2;
    for (int64_t p = 0; p * P < lanes; ++p) {
      const int64_t valid = std::min<int64_t>(P, lanes - p * P);
      const TI* s = src + p * P * s_lane;
      uint32_t* d = reinterpret_cast<uint32_t*>(dst + p * P * kcp);  // [kcp / 2][P] pair words
      if (valid < P) std::memset(d, 0, sizeof(uint32_t) * static_cast<size_t>(P * (kcp / 2)));
      if (s_lane == 1) {
        // lanes contiguous (row-major B, column-major A): two k rows combined per pair
        for (int64_t q = 0; q < full; ++q) {
          const TI* __restrict s0 = s + 2 * q * s_k;
          const TI* __restrict s1 = s0 + s_k;
          uint32_t* __restrict dq = d + q * P;
          for (int64_t j = 0; j < valid; ++j)
            dq[j] = uint32_t(to_bf16_bits(s0[j])) | (uint32_t(to_bf16_bits(s1[j])) << 16);
        }
        if (kc & 1) {
          const TI* __restrict s0 = s + (kc - 1) * s_k;
          uint32_t* __restrict dq = d + full * P;
          for (int64_t j = 0; j < valid; ++j) dq[j] = uint32_t(to_bf16_bits(s0[j]));
        }
      } else if (s_k == 1) {
        // k contiguous (row-major A, a transposed weight as B): each lane's pairs rounded into a
        // small [P][kQ] word buffer (contiguous: vectorises), then transposed into the panel.
        constexpr int64_t kQ = 64;
        uint32_t tmp[P][kQ];
        for (int64_t q0 = 0; q0 < full; q0 += kQ) {
          const int64_t qn = std::min(kQ, full - q0);
          for (int64_t j = 0; j < valid; ++j) {
            const TI* __restrict sj = s + j * s_lane + 2 * q0;
            for (int64_t q = 0; q < qn; ++q)
              tmp[j][q] = uint32_t(to_bf16_bits(sj[2 * q])) | (uint32_t(to_bf16_bits(sj[2 * q + 1])) << 16);
          }
          for (int64_t q = 0; q < qn; ++q)
            for (int64_t j = 0; j < valid; ++j) d[(q0 + q) * P + j] = tmp[j][q];
        }
        if (kc & 1)
          for (int64_t j = 0; j < valid; ++j) d[full * P + j] = uint32_t(to_bf16_bits(s[j * s_lane + kc - 1]));
      } else {
        // any other strides: lane by lane
        for (int64_t j = 0; j < valid; ++j) {
          const TI* sj = s + j * s_lane;
          for (int64_t q = 0; q < full; ++q)
            d[q * P + j] = uint32_t(to_bf16_bits(sj[2 * q * s_k])) | (uint32_t(to_bf16_bits(sj[(2 * q + 1) * s_k])) << 16);
          if (kc & 1) d[full * P + j] = uint32_t(to_bf16_bits(sj[(kc - 1) * s_k]));
        }
      }
    }
  }
};

template <typename TI, int P, Isa isa>
constexpr auto pack_bf16_pairs = &Compiled<isa, PackBf16<TI, P>>::template run<const TI*, int64_t, int64_t, int64_t,
                                                                                 int64_t, uint16_t*>;

// The bf16 kernels' tile epilogue: add the C tile (later KC blocks), bias and activation in
// float32 (kEpilogue), store. acc0 / acc1: the MR rows' two W-lane halves.
template <int MR, typename V>
PYIMGCLS_INLINE void bf16_tile_store(const V* acc0, const V* acc1, float* __restrict c, int64_t ldc, int mode,
                                     const float* __restrict bias, Act act) {
  constexpr int W = sizeof(V) / sizeof(float);
  V bias0 = V{}, bias1 = V{};
  const bool epi = (mode & kEpilogue) != 0;
  const bool add_bias = epi && bias != nullptr;
  if (add_bias) {
    std::memcpy(&bias0, bias, sizeof(V));
    std::memcpy(&bias1, bias + W, sizeof(V));
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    float* ci = c + i * ldc;
    V v0 = acc0[i], v1 = acc1[i];
    if (mode & kAccumulate) {
      V c0, c1;
      std::memcpy(&c0, ci, sizeof(V));
      std::memcpy(&c1, ci + W, sizeof(V));
      v0 += c0;
      v1 += c1;
    }
    if (add_bias) {
      v0 += bias0;
      v1 += bias1;
    }
    if (epi && act != Act::None) {
      apply_act_in_place(v0, act);
      apply_act_in_place(v1, act);
    }
    std::memcpy(ci, &v0, sizeof(V));
    std::memcpy(ci + W, &v1, sizeof(V));
  }
}

// Fallback micro-kernel, MR x (2 VB-byte vectors), portable body (compiled per ISA).
template <int MR, int VB>
struct MicroKernelBf16 {
  static PYIMGCLS_INLINE void run(int64_t kc, const uint16_t* __restrict a, const uint16_t* __restrict b,
                                  float* __restrict c, int64_t ldc, int mode, const float* __restrict bias,
                                  Act act) {
    using V = Vec<float, VB>;
    using U = Vec<uint32_t, VB>;
    constexpr int W = VB / sizeof(float);
    V acc0[MR], acc1[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      acc0[i] = acc1[i] = V{};
      __builtin_prefetch(c + i * ldc, 0, 3);
      __builtin_prefetch(c + i * ldc + 2 * W - 1, 0, 3);
    }
    const int64_t pairs = (kc + 1) / 2;
    for (int64_t q = 0; q < pairs; ++q) {
      U u0, u1;
      std::memcpy(&u0, b, sizeof(U));
      std::memcpy(&u1, b + 2 * W, sizeof(U));
      // low half of a 32-bit lane: the even k of the pair; high half: the odd k
      const V b0o = (V)(u0 & 0xFFFF0000u), b1o = (V)(u1 & 0xFFFF0000u);
      const V b0e = (V)(u0 << 16), b1e = (V)(u1 << 16);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        uint32_t ai;
        std::memcpy(&ai, a + 2 * i, 4);
        const uint32_t hi = ai & 0xFFFF0000u, lo = ai << 16;
        float ao, ae;
        std::memcpy(&ao, &hi, 4);
        std::memcpy(&ae, &lo, 4);
        acc0[i] += ao * b0o;  // exact products: an FMA and a multiply-then-add give the same sum
        acc1[i] += ao * b1o;
        acc0[i] += ae * b0e;
        acc1[i] += ae * b1e;
      }
      a += 2 * MR;
      b += 4 * W;
    }
    bf16_tile_store<MR>(acc0, acc1, c, ldc, mode, bias, act);
  }
};

#ifdef PYIMGCLS_X86
// vdpbf16ps micro-kernel, 14 x 32: per k-pair 2 B loads, 14 broadcasts, 28 vdpbf16ps.
template <int MR>
PYIMGCLS_TARGET_AVX512BF16 PYIMGCLS_KERNEL_ALIGN void micro_bf16_dot(int64_t kc, const uint16_t* __restrict a,
                                                                    const uint16_t* __restrict b,
                                                                    float* __restrict c, int64_t ldc, int mode,
                                                                    const float* __restrict bias, Act act) {
  using V = Vec<float, 64>;
  V acc0[MR], acc1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    acc0[i] = acc1[i] = V{};
    __builtin_prefetch(c + i * ldc, 0, 3);
    __builtin_prefetch(c + i * ldc + 31, 0, 3);
  }
  const int64_t pairs = (kc + 1) / 2;
  for (int64_t q = 0; q < pairs; ++q) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 32);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      int32_t ai;
      std::memcpy(&ai, a + 2 * i, 4);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(ai);
      acc0[i] = (V)_mm512_dpbf16_ps((__m512)acc0[i], av, b0);
      acc1[i] = (V)_mm512_dpbf16_ps((__m512)acc1[i], av, b1);
    }
    a += 2 * MR;
    b += 64;
  }
  bf16_tile_store<MR>(acc0, acc1, c, ldc, mode, bias, act);
}
#endif  // PYIMGCLS_X86

template <typename TI>
Kernel<float, TI, uint16_t> select_kernel_bf16(Isa isa, bool dot) {
  using K = Kernel<float, TI, uint16_t>;
#ifdef PYIMGCLS_X86
  constexpr Isa A5 = Isa::Avx512, A2 = Isa::Avx2;
  if (dot && isa == Isa::Avx512)
    return K{&micro_bf16_dot<14>, pack_bf16_pairs<TI, 14, A5>, pack_bf16_pairs<TI, 32, A5>, 14, 32, kBf16KC, 70, 2048, 2};
  if (isa == Isa::Avx512)
    return K{&Compiled<A5, MicroKernelBf16<12, 64>>::run, pack_bf16_pairs<TI, 12, A5>, pack_bf16_pairs<TI, 32, A5>,
             12, 32, kBf16KC, 72, 2048, 2};
  if (isa == Isa::Avx2)
    return K{&Compiled<A2, MicroKernelBf16<6, 32>>::run, pack_bf16_pairs<TI, 6, A2>, pack_bf16_pairs<TI, 16, A2>,
             6, 16, kBf16KC, 72, 2048, 2};
#endif
  (void)dot;
  constexpr Isa G = Isa::Generic;
  return K{&Compiled<G, MicroKernelBf16<6, 16>>::run, pack_bf16_pairs<TI, 6, G>, pack_bf16_pairs<TI, 8, G>, 6, 8,
           kBf16KC, 72, 2048, 2};
}

// C (float32, any strides) = act(A @ B + bias) through the bf16 kernels.
template <typename TI>
void gemm_bf16_t(Isa isa, const TI* a, int64_t sam, int64_t sak, const TI* b, int64_t sbk, int64_t sbn,
                 const float* bias, float* c, int64_t scm, int64_t scn, int64_t M, int64_t N, int64_t K, Act act) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) c[m * scm + n * scn] = apply_act(bias ? bias[n] : 0.0f, act);
    return;
  }
  gemm_packed(select_kernel_bf16<TI>(isa, bf16_dot_active()), a, sam, sak, b, sbk, sbn, bias, c, scm, scn, M, N,
              K, act);
}

// ---------------------------------------------------------------------------------------------
// Matrix-vector products (M == 1 or N == 1):
//   y[i] = act(sum_k X[i, k] * v[k] + bias[i * sbias])   for 0 <= i < I.
// Packing would write and re-read the whole matrix for a single use of each element, so these
// stream it once instead; they are memory bound, and portable code keeps up with memory.
// Returns false (caller takes the packed path) when neither X layout streams.
// ---------------------------------------------------------------------------------------------
constexpr int64_t kGemvMinParallel = int64_t(1) << 16;  // multiply-adds
constexpr int64_t kGemvStripBytes = 16384;               // widest strip of outputs, held in L1

template <typename T>
bool gemv(const T* x, int64_t sxi, int64_t sxk, const T* v, int64_t sv, const T* bias, int64_t sbias, T* y,
          int64_t sy, int64_t I, int64_t K, Act act) {
  if (sxk != 1 && sxi != 1) return false;
  std::vector<T> vbuf;
  if (sv != 1) {
    vbuf.resize(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) vbuf[k] = v[k * sv];
    v = vbuf.data();
  }
  const int nt = (I * K < kGemvMinParallel) ? 1 : std::max(1, omp_get_max_threads());
  auto finish = [&](int64_t i, T acc) { y[i * sy] = apply_act(bias ? acc + bias[i * sbias] : acc, act); };
  if (sxk == 1) {
    // Rows of X are contiguous: four dot products at a time share each load of v, and the simd
    // reduction lets the compiler keep several partial sums per row.
    const int64_t groups = ceil_div(I, 4);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t i0 = g * 4;
      if (i0 + 4 <= I) {
        const T *x0 = x + i0 * sxi, *x1 = x0 + sxi, *x2 = x1 + sxi, *x3 = x2 + sxi;
        T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
        for (int64_t k = 0; k < K; ++k) {
          const T vk = v[k];
          a0 += x0[k] * vk;
          a1 += x1[k] * vk;
          a2 += x2[k] * vk;
          a3 += x3[k] * vk;
        }
        finish(i0, a0);
        finish(i0 + 1, a1);
        finish(i0 + 2, a2);
        finish(i0 + 3, a3);
      } else {
        for (int64_t i = i0; i < I; ++i) {
          const T* xi = x + i * sxi;
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t k = 0; k < K; ++k) acc += xi[k] * v[k];
          finish(i, acc);
        }
      }
    }
  } else {
    // Columns of X are contiguous: y is a sum of scaled columns, built one strip of outputs at a
    // time in an L1-resident accumulator.  A strip is as wide as the work allows (up to 16 KiB)
    // so each k row is read as one long contiguous run, and four rows are folded in per pass
    // over the accumulator.
    constexpr int64_t kStripMax = kGemvStripBytes / sizeof(T);
    const int64_t width = std::min(kStripMax, round_up(ceil_div(I, nt), 16));
    const int64_t strips = ceil_div(I, width);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t s = 0; s < strips; ++s) {
      const int64_t i0 = s * width, w = std::min(width, I - i0);
      T acc[kStripMax];
      for (int64_t j = 0; j < w; ++j) acc[j] = T(0);
      int64_t k = 0;
      for (; k + 4 <= K; k += 4) {
        const T v0 = v[k], v1 = v[k + 1], v2 = v[k + 2], v3 = v[k + 3];
        const T* x0 = x + k * sxk + i0;
        const T *x1 = x0 + sxk, *x2 = x1 + sxk, *x3 = x2 + sxk;
        for (int64_t j = 0; j < w; ++j) acc[j] += (v0 * x0[j] + v1 * x1[j]) + (v2 * x2[j] + v3 * x3[j]);
      }
      for (; k < K; ++k) {
        const T vk = v[k];
        const T* xk = x + k * sxk + i0;
        for (int64_t j = 0; j < w; ++j) acc[j] += vk * xk[j];
      }
      for (int64_t j = 0; j < w; ++j) finish(i0 + j, acc[j]);
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Few rows, both operands contiguous along k: C[m, n] = act(sum_k A[m, k] B[k, n] + bias[n]) for
// M <= kFewRowsMax with sak == sbk == 1, i.e. x @ W^T of a linear layer (W [N, K] row-major) at a
// small batch, or a pixel-major conv on a few output pixels. The packed path computes MR = 14 rows
// per tile (16 rows cost 28) and first transposes every B micro-panel out of W's rows, one more
// write and read of the whole weight for each use of it; here each weight row is read in place,
// once, as dot products: 4 rows of A x 4 columns of B per register block (16 vector partial sums,
// 8 loads per 16 FMAs), k in blocks of kFewRowsKC so the A block (M x KC) stays in L2 while every
// column block streams past it. VGG-11's classifier at batch 16 (25088 -> 4096: 411 MB of weight,
// 3.3 GFLOP) is weight-streaming bound: the packed path ran it at 0.73x PyTorch's time ratio.
// Threads own contiguous ranges of column blocks over all k (no reduction across threads), and each
// element's sum runs in the same order for any thread count: bit-identical results.
// ---------------------------------------------------------------------------------------------
constexpr int64_t kFewRowsMax = 16;
constexpr int64_t kFewRowsKC = 4096;

template <typename T>
struct FewRowsArgs {
  const T* a;
  int64_t sam;
  const T* b;
  int64_t sbn;
  const T* bias;
  T* c;
  int64_t scm, scn, M, N, K;
  Act act;
};

template <typename T>
struct FewRowsBody {
  // Columns [n0, n1) of C over all of k.
  static PYIMGCLS_INLINE void run(const FewRowsArgs<T>& p, int64_t n0, int64_t n1) {
    for (int64_t k0 = 0; k0 < p.K; k0 += kFewRowsKC) {
      const int64_t kc = std::min(kFewRowsKC, p.K - k0);
      const bool first = k0 == 0, last = k0 + kc == p.K;
      for (int64_t j0 = n0; j0 < n1; j0 += 4) {
        const int64_t nj = std::min<int64_t>(4, n1 - j0);
        const T* bj[4];
        for (int64_t j = 0; j < 4; ++j) bj[j] = p.b + (j0 + std::min(j, nj - 1)) * p.sbn + k0;
        for (int64_t i0 = 0; i0 < p.M; i0 += 4) {
          const int64_t mi = std::min<int64_t>(4, p.M - i0);
          const T* ai[4];
          for (int64_t i = 0; i < 4; ++i) ai[i] = p.a + (i0 + std::min(i, mi - 1)) * p.sam + k0;
          T s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
          T s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
          const T *a0 = ai[0], *a1 = ai[1], *a2 = ai[2], *a3 = ai[3];
          const T *b0 = bj[0], *b1 = bj[1], *b2 = bj[2], *b3 = bj[3];
#pragma omp simd reduction(+ : s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)
          for (int64_t k = 0; k < kc; ++k) {
            const T x0 = a0[k], x1 = a1[k], x2 = a2[k], x3 = a3[k];
            const T w0 = b0[k], w1 = b1[k], w2 = b2[k], w3 = b3[k];
            s00 += x0 * w0; s01 += x0 * w1; s02 += x0 * w2; s03 += x0 * w3;
            s10 += x1 * w0; s11 += x1 * w1; s12 += x1 * w2; s13 += x1 * w3;
            s20 += x2 * w0; s21 += x2 * w1; s22 += x2 * w2; s23 += x2 * w3;
            s30 += x3 * w0; s31 += x3 * w1; s32 += x3 * w2; s33 += x3 * w3;
          }
          const T sums[4][4] = {{s00, s01, s02, s03}, {s10, s11, s12, s13}, {s20, s21, s22, s23},
                                {s30, s31, s32, s33}};
          for (int64_t i = 0; i < mi; ++i)
            for (int64_t j = 0; j < nj; ++j) {
              T* cij = p.c + (i0 + i) * p.scm + (j0 + j) * p.scn;
              T v = first ? sums[i][j] : *cij + sums[i][j];
              if (last) v = apply_act(p.bias ? v + p.bias[j0 + j] : v, p.act);
              *cij = v;
            }
        }
      }
    }
  }
};

template <typename T>
bool gemm_few_rows(Isa isa, const T* a, int64_t sam, int64_t sak, const T* b, int64_t sbk, int64_t sbn,
                   const T* bias, T* c, int64_t scm, int64_t scn, int64_t M, int64_t N, int64_t K, Act act) {
  if (M > kFewRowsMax || sak != 1 || sbk != 1 || K < 64 || N < 8) return false;
  if (const char* e = std::getenv("PYIMGCLS_CPU_GEMM_FEW_ROWS"))
    if (e[0] == '0') return false;  // benchmarks and tests compare with the packed path
  const FewRowsArgs<T> args{a, sam, b, sbn, bias, c, scm, scn, M, N, K, act};
  const int64_t blocks = ceil_div(N, 4);
  const double work = static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  const int nt = work < kParallelMinWork ? 1 : static_cast<int>(std::min<int64_t>(std::max(1, omp_get_max_threads()), blocks));
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int t = omp_get_thread_num(), team = omp_get_num_threads();
    const int64_t j0 = blocks * t / team * 4, j1 = std::min(N, blocks * (t + 1) / team * 4);
    if (j1 > j0) run_isa<FewRowsBody<T>>(isa, args, j0, j1);
  }
  return true;
}

// K == 1 with unit-stride rows of B and C: C = act(a b^T + bias), an outer product (a linear layer's
// weight gradient at batch 1: VGG-11's 4096 x 25088, 411 MB written for 103 M multiplies). Pure
// store bandwidth; the packed path spent 1.35x PyTorch's time on it (packing, 14-row tiles, C-tile
// prefetches). Rows in parallel, each a scaled copy of b: every element is one product (plus bias).
template <typename T>
bool gemm_rank1(const T* a, int64_t sam, const T* b, int64_t sbn, const T* bias, T* c, int64_t scm, int64_t scn,
                int64_t M, int64_t N, Act act) {
  if (sbn != 1 || scn != 1 || M * N < 4096) return false;
  const int nt = M * N < (int64_t(1) << 16) ? 1 : std::max(1, omp_get_max_threads());
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t m = 0; m < M; ++m) {
    const T am = a[m * sam];
    T* cm = c + m * scm;
    if (act == Act::None && bias == nullptr) {
      for (int64_t n = 0; n < N; ++n) cm[n] = am * b[n];
    } else {
      for (int64_t n = 0; n < N; ++n) {
        const T prod = am * b[n];
        cm[n] = apply_act(bias ? prod + bias[n] : prod, act);
      }
    }
  }
  return true;
}

template <typename T>
void gemm_t(Isa isa, const T* a, int64_t sam, int64_t sak, const T* b, int64_t sbk, int64_t sbn, const T* bias,
            T* c, int64_t scm, int64_t scn, int64_t M, int64_t N, int64_t K, Act act) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    // Empty sum: C = act(bias) or act(0).
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) c[m * scm + n * scn] = apply_act(bias ? bias[n] : T(0), act);
    return;
  }
  // One row or one column: a matrix-vector product over B (M == 1) or A (N == 1).
  if (M == 1 && gemv(b, sbn, sbk, a, sak, bias, 1, c, scn, N, K, act)) return;
  if (N == 1 && gemv(a, sam, sak, b, sbk, bias, 0, c, scm, M, K, act)) return;
  if (gemm_few_rows(isa, a, sam, sak, b, sbk, sbn, bias, c, scm, scn, M, N, K, act)) return;
  if (K == 1 && gemm_rank1(a, sam, b, sbn, bias, c, scm, scn, M, N, act)) return;
  const Kernel<T> kr = select_kernel<T>(isa);
  gemm_packed(kr, a, sam, sak, b, sbk, sbn, bias, c, scm, scn, M, N, K, act);
}

// ---------------------------------------------------------------------------------------------
// Epilogue backward.
// ---------------------------------------------------------------------------------------------
// The work is cut into fixed tiles of kRowChunk rows x kStrip columns, whatever the team size:
// each tile sums its rows in order into its own partial, and the partials of a column are added
// in chunk order, so grad_bias has one fixed summation order for any thread count.  Sums are kept
// in double (for float32 too): the bias gradient of a large batch then carries ~1e-7 relative
// error instead of one that grows with M.
constexpr int64_t kStrip = 256;
constexpr int64_t kRowChunk = 512;

template <typename T>
void bias_act_bwd_t(const T* grad, const T* out, T* grad_pre, T* grad_bias, int64_t M, int64_t N, Act act) {
  if (M <= 0 || N <= 0) {
    if (grad_bias != nullptr)
      for (int64_t n = 0; n < std::max<int64_t>(N, 0); ++n) grad_bias[n] = T(0);
    return;
  }
  if (act == Act::None && grad_pre == grad && grad_bias == nullptr) return;
  const int64_t strips = ceil_div(N, kStrip), chunks = ceil_div(M, kRowChunk);
  const int nt = (M * N < (int64_t(1) << 15)) ? 1 : std::max(1, omp_get_max_threads());
  std::vector<double> partial(grad_bias != nullptr ? static_cast<size_t>(chunks * N) : 0);

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    // 1. Mask each tile and sum its rows: partial[chunk, n].
#pragma omp for collapse(2) schedule(static)
    for (int64_t ch = 0; ch < chunks; ++ch)
      for (int64_t s = 0; s < strips; ++s) {
        const int64_t m0 = ch * kRowChunk, m1 = std::min(M, m0 + kRowChunk);
        const int64_t n0 = s * kStrip, w = std::min(kStrip, N - n0);
        double acc[kStrip];
        for (int64_t j = 0; j < w; ++j) acc[j] = 0.0;
        for (int64_t m = m0; m < m1; ++m) {
          const T* g = grad + m * N + n0;
          T* gp = grad_pre + m * N + n0;
          if (act == Act::None) {
            if (gp != g)
              for (int64_t j = 0; j < w; ++j) gp[j] = g[j];
          } else {
            const T* o = out + m * N + n0;
            // One loop per activation, so each is a branch-free vector blend (act_grad, common.h).
            dispatch_act(act, [&](auto a) {
              for (int64_t j = 0; j < w; ++j) gp[j] = act_grad<decltype(a)::value>(o[j], g[j]);
            });
          }
          if (grad_bias != nullptr)
            for (int64_t j = 0; j < w; ++j) acc[j] += static_cast<double>(gp[j]);
        }
        if (grad_bias != nullptr)
          for (int64_t j = 0; j < w; ++j) partial[ch * N + n0 + j] = acc[j];
      }
    // 2. Add the chunk partials of each column in chunk order (after the implicit barrier).
    if (grad_bias != nullptr) {
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        double sum = 0.0;
        for (int64_t ch = 0; ch < chunks; ++ch) sum += partial[ch * N + n];
        grad_bias[n] = static_cast<T>(sum);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Standalone activation, forward and backward, over a dense buffer of n elements (the op
// pyimgcls.ops.activation; also the training path of conv / linear / batch norm with silu,
// hardswish or hardsigmoid, whose backward needs the pre-activation: ops/activation.py).
//   act_fwd:  y[i] = act(x[i])                         n elements read, n written
//   act_bwd:  gx[i] = act'(s[i]) * g[i]   (act_grad)   s: y for relu / relu6 / sigmoid, x otherwise
// One body per instruction set (the scalar loop over act_exp vectorises, common.h); OpenMP over
// fixed chunks of kActChunk elements. Elementwise, so the result does not depend on the threads.
// ---------------------------------------------------------------------------------------------
constexpr int64_t kActChunk = 1 << 14;

template <typename T>
struct ActFwdBody {
  PYIMGCLS_INLINE static void run(const T* x, T* y, int64_t n, Act act) {
    dispatch_act(act, [&](auto a) {
      for (int64_t i = 0; i < n; ++i) y[i] = apply_act<decltype(a)::value>(x[i]);
    });
  }
};

template <typename T>
struct ActBwdBody {
  PYIMGCLS_INLINE static void run(const T* g, const T* s, T* gx, int64_t n, Act act) {
    dispatch_act(act, [&](auto a) {
      for (int64_t i = 0; i < n; ++i) gx[i] = act_grad<decltype(a)::value>(s[i], g[i]);
    });
  }
};

template <typename T>
void act_fwd_t(Isa isa, const T* x, T* y, int64_t n, Act act) {
  const auto fn = isa_variant<void (*)(const T*, T*, int64_t, Act), ActFwdBody<T>>(isa);
  const int64_t chunks = ceil_div(n, kActChunk);
  const int nt = chunks > 1 ? std::max(1, omp_get_max_threads()) : 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t c = 0; c < chunks; ++c)
    fn(x + c * kActChunk, y + c * kActChunk, std::min(kActChunk, n - c * kActChunk), act);
}

template <typename T>
void act_bwd_t(Isa isa, const T* g, const T* s, T* gx, int64_t n, Act act) {
  const auto fn = isa_variant<void (*)(const T*, const T*, T*, int64_t, Act), ActBwdBody<T>>(isa);
  const int64_t chunks = ceil_div(n, kActChunk);
  const int nt = chunks > 1 ? std::max(1, omp_get_max_threads()) : 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t c = 0; c < chunks; ++c)
    fn(g + c * kActChunk, s + c * kActChunk, gx + c * kActChunk, std::min(kActChunk, n - c * kActChunk), act);
}

}  // namespace

void act_fwd(DType dt, const void* x, void* y, int64_t n, Act act) {
  const Isa isa = active_isa();
  dispatch_float(dt, "CPU activation", [&](auto t) {
    using T = decltype(t);
    act_fwd_t(isa, static_cast<const T*>(x), static_cast<T*>(y), n, act);
  });
}

void act_bwd(DType dt, const void* grad, const void* saved, void* grad_in, int64_t n, Act act) {
  const Isa isa = active_isa();
  dispatch_float(dt, "CPU activation backward", [&](auto t) {
    using T = decltype(t);
    act_bwd_t(isa, static_cast<const T*>(grad), static_cast<const T*>(saved), static_cast<T*>(grad_in), n, act);
  });
}

void gemm_bf16(DType in_dt, const void* a, int64_t sam, int64_t sak, const void* b, int64_t sbk, int64_t sbn,
               const float* bias, void* c, DType out_dt, int64_t scm, int64_t scn, int64_t M, int64_t N, int64_t K,
               Act act) {
  if (in_dt != DType::Float32 && in_dt != DType::BFloat16)
    throw std::invalid_argument(std::string("CPU bf16 GEMM reads float32 or bfloat16, got ") + dtype_name(in_dt));
  if (out_dt != DType::Float32 && out_dt != DType::BFloat16)
    throw std::invalid_argument(std::string("CPU bf16 GEMM writes float32 or bfloat16, got ") + dtype_name(out_dt));
  const Isa isa = active_isa();
  auto run = [&](float* cf, int64_t sm, int64_t sn) {
    if (in_dt == DType::Float32)
      gemm_bf16_t(isa, static_cast<const float*>(a), sam, sak, static_cast<const float*>(b), sbk, sbn, bias, cf, sm,
                  sn, M, N, K, act);
    else
      gemm_bf16_t(isa, static_cast<const uint16_t*>(a), sam, sak, static_cast<const uint16_t*>(b), sbk, sbn, bias,
                  cf, sm, sn, M, N, K, act);
  };
  if (out_dt == DType::Float32) {
    run(static_cast<float*>(c), scm, scn);
    return;
  }
  if (M <= 0 || N <= 0) return;
  // bf16 output: the float32 result (K blocks accumulate in it) in a buffer, then one rounding pass.
  static thread_local std::vector<float> cbuf;
  cbuf.resize(static_cast<size_t>(M * N));
  run(cbuf.data(), N, 1);
  uint16_t* co = static_cast<uint16_t*>(c);
  const float* cb = cbuf.data();
  const int nt = (M * N < (int64_t(1) << 16)) ? 1 : std::max(1, omp_get_max_threads());
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) co[m * scm + n * scn] = float_to_bf16(cb[m * N + n]);
}

void gemm(DType dt, const void* a, int64_t sam, int64_t sak, const void* b, int64_t sbk, int64_t sbn,
          const void* bias, void* c, int64_t scm, int64_t scn, int64_t M, int64_t N, int64_t K, Act act) {
  if (dt == DType::BFloat16) {
    std::vector<float> bias_f;
    if (bias != nullptr) {
      bias_f.resize(static_cast<size_t>(std::max<int64_t>(N, 0)));
      for (int64_t n = 0; n < N; ++n) bias_f[n] = bf16_to_float(static_cast<const uint16_t*>(bias)[n]);
    }
    gemm_bf16(DType::BFloat16, a, sam, sak, b, sbk, sbn, bias ? bias_f.data() : nullptr, c, DType::BFloat16, scm, scn,
              M, N, K, act);
    return;
  }
  const Isa isa = active_isa();
  dispatch_float(dt, "CPU GEMM", [&](auto t) {
    using T = decltype(t);
    gemm_t(isa, static_cast<const T*>(a), sam, sak, static_cast<const T*>(b), sbk, sbn, static_cast<const T*>(bias),
           static_cast<T*>(c), scm, scn, M, N, K, act);
  });
}

void bias_act_bwd(DType dt, const void* grad, const void* out, void* grad_pre, void* grad_bias, int64_t M,
                  int64_t N, Act act) {
  if (act != Act::None && out == nullptr && M > 0 && N > 0)
    throw std::invalid_argument(
        "bias_act_bwd: out (the saved output, or the pre-activation for silu / hardswish / hardsigmoid) is required "
        "with an activation");
  dispatch_float(dt, "CPU bias_act_bwd", [&](auto t) {
    using T = decltype(t);
    bias_act_bwd_t(static_cast<const T*>(grad), static_cast<const T*>(out), static_cast<T*>(grad_pre),
                   static_cast<T*>(grad_bias), M, N, act);
  });
}

const char* gemm_isa() { return isa_name(active_isa()); }

const char* gemm_bf16_kernel() {
  if (bf16_dot_active()) return "avx512bf16";
  return isa_name(active_isa());
}

}  // namespace pyimgcls::cpu
