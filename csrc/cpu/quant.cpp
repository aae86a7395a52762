// CPU quantised (int8) family: integer GEMM with a requantisation epilogue, and the uint8 im2col
// that turns a k x k convolution into that GEMM.
//
// Semantics (every backend reproduces them bit for bit; pyimgcls/ops/reference.py is the yardstick)
//   acc[m, n] = sum_k (A[m, k] - a_zero) * W[n, k] + bias[n]           exact, in int32
//   quantised output:
//     q  = rne(clamp(float(acc) * mult[n], -2^22, 2^22))               one fp32 multiply, rounded
//        + rne(clamp(float(R[m, n] - res_zero) * res_mult, -2^22, 2^22))   (residual, if any)
//        + out_zero
//     out = clamp(q, qmin, qmax)                                       relu / relu6 are this clamp
//   float output (the last layer): out = act(float(acc) * mult[n]).
//   float(int32) rounds to nearest even (exact below 2^24), rne = round half to even. Each rounded
//   term is a single fp32 multiply (no add in float), so no path can fuse it into an FMA and the
//   paths cannot differ; the +-2^22 clamp keeps every term exactly representable and lets the
//   Triton kernel round with the 1.5 * 2^23 magic-number add. The Python layer keeps
//   K * 255 * 128 + |bias| below 2^31, so the int32 sums never wrap.
//
// Algorithm
//   A = sum_k A[m, k] W[n, k] in int32, then acc = A - a_zero * colsum[n] + bias[n] (colsum from the
//   packing step), so the inner loop multiplies the raw uint8 activations.
//   Weights are packed once (quant_pack_weight, quant.h: 16-channel blocks x 4-byte K groups).
//   Work is split into tasks of kMC rows x (up to NV blocks of 16 channels), OpenMP static over
//   the task grid; inside a task an MR x (16 * NV) register tile runs over the whole of K:
//     vnni    MR 6, NV 4: 24 zmm accumulators; per 4 k: 4 loads, 6 broadcasts, 24 vpdpbusd
//             (u8 x s8, 4 products summed into each int32 lane, no intermediate saturation)
//     avx2    MR 4, NV 1: 8 ymm accumulators; the 4 weight bytes of a channel are split into the
//             16-bit pairs (w0, w2) and (w1, w3) by shifts, the activations into (a0, a2), (a1, a3)
//             and multiplied with vpmaddwd (16 x 16 -> 32 bit): vpmaddubsw would saturate its
//             16-bit pair sums (255 * 127 * 2 > 32767)
//     generic MR 4, NV 1, scalar loops over the same layout (the compiler vectorises them)
//   The tile is stored as int32 and the epilogue applied to it in the path's vector width (16 / 8 / 1).
//   Convolutions (quant_conv_gemm) gather each task's im2col rows into a thread-local buffer, except
//   on the vnni path for NHWC input with dense channels and kernel rows of a multiple of 4 bytes
//   (ResNet's 3x3 and 1x1 convs): there micro_vnni_ind reads the kernel rows in place through a table
//   of row addresses (zero-point rows and assembled edge rows at the borders) and requantises its
//   tile in registers. The integer sums are exact on every path, so all paths give the same bytes.
//
// Cost
//   2 * M * N * K integer operations; minimum bytes M * K + N * K (+ 4N bias, 4N mult) + M * N
//   (x4 for float output, + M * N for a residual).
//   im2col: N * OH * OW * KH * KW * CG bytes written.
//
// Test and benchmark
//   pytest tests/test_quant.py tests/test_quant_conv3x3.py
//   python benchmarks/bench_quant_cpu.py
#include "quant.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "isa.h"

#if defined(PYIMGCLS_X86)
#define PYIMGCLS_TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")))
#endif

namespace pyimgcls::cpu {
namespace {

constexpr int64_t kMC = 48;               // rows per task: a multiple of every MR below
constexpr float kClampF = 4194304.0f;     // 2^22
constexpr int kMaxMR = 6, kMaxNR = 64;    // the largest tile (vnni)
constexpr int64_t kCopySlack = 32;
constexpr int64_t kMaxPoolTaps = 64;       // windows of more taps run the scalar pool loops        // bytes past an im2col buffer a fixed-size row copy may write

enum class QPath { Generic = 0, Avx2 = 1, Vnni = 2 };

QPath hardware_qpath() {
#ifdef PYIMGCLS_X86
  static const QPath hw = [] {
    __builtin_cpu_init();
    if (hardware_isa() == Isa::Avx512 && __builtin_cpu_supports("avx512vnni")) return QPath::Vnni;
    if (hardware_isa() >= Isa::Avx2) return QPath::Avx2;
    return QPath::Generic;
  }();
  return hw;
#else
  return QPath::Generic;
#endif
}

// PYIMGCLS_CPU_ISA caps the path as it caps the float kernels (isa.h): avx512 -> vnni.
QPath active_qpath() {
  const QPath hw = hardware_qpath();
  const QPath want = static_cast<QPath>(static_cast<int>(active_isa()));
  return static_cast<int>(want) < static_cast<int>(hw) ? want : hw;
}

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The last, partial group of 4 activations (K % 4 != 0): the missing bytes are read as 0 (their
// weights are 0 too) and never loaded, so a row ending at the end of a mapping is safe.
inline uint32_t load_u32_tail(const uint8_t* p, int64_t n) {
  uint32_t v = 0;
  std::memcpy(&v, p, static_cast<size_t>(n));
  return v;
}

// ---------------------------------------------------------------------------------------------
// Micro-kernels: tile[i * kMaxNR + j] = sum_k A[i, k] * W[j, k] for i < MR, j < 16 * NV.
//   a: A[0, 0] (row stride lda); w: group 0 of the first 16-channel block; bstride: bytes between
//   consecutive blocks (K4 * 64).
// ---------------------------------------------------------------------------------------------
template <int MR, int NV>
void micro_generic(const uint8_t* a, int64_t lda, int64_t K, const int8_t* w, int64_t bstride, int32_t* tile) {
  int32_t acc[MR][16 * NV] = {};
  const int64_t K4 = quant_k4(K);
  for (int64_t g = 0; g < K4; ++g) {
    const int64_t kn = std::min<int64_t>(4, K - 4 * g);
    for (int i = 0; i < MR; ++i) {
      uint8_t av[4] = {0, 0, 0, 0};
      std::memcpy(av, a + i * lda + 4 * g, static_cast<size_t>(kn));
      for (int v = 0; v < NV; ++v) {
        const int8_t* wg = w + v * bstride + g * 64;
        for (int c = 0; c < 16; ++c) {
          int32_t s = 0;
          for (int j = 0; j < 4; ++j) s += int32_t(av[j]) * int32_t(wg[c * 4 + j]);
          acc[i][v * 16 + c] += s;
        }
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < 16 * NV; ++j) tile[i * kMaxNR + j] = acc[i][j];
}

#ifdef PYIMGCLS_X86
template <int MR, int NV>
PYIMGCLS_TARGET_AVX2 void micro_avx2(const uint8_t* a, int64_t lda, int64_t K, const int8_t* w, int64_t bstride,
                                     int32_t* tile) {
  // acc[i][2v + h]: row i, channels 16v + 8h .. +8 of the block
  __m256i acc[MR][2 * NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 2 * NV; ++v) acc[i][v] = _mm256_setzero_si256();
  const __m256i lo_bytes = _mm256_set1_epi32(0x00FF00FF);
  const int64_t K4 = quant_k4(K), Kfull = K / 4;
  uint32_t tail[MR];   // the partial last group, gathered outside the loop (as in micro_vnni)
  for (int i = 0; i < MR; ++i) tail[i] = K4 > Kfull ? load_u32_tail(a + i * lda + 4 * Kfull, K - 4 * Kfull) : 0u;
  for (int64_t g = 0; g < K4; ++g) {
    // weights: each int32 lane holds (w0, w1, w2, w3) of one channel; as 16-bit units the lane is
    // (w0 | w1 << 8, w2 | w3 << 8). even = sign-extended low bytes (w0, w2), odd = high (w1, w3).
    __m256i we[2 * NV], wo[2 * NV];
    for (int v = 0; v < NV; ++v)
      for (int h = 0; h < 2; ++h) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + v * bstride + g * 64 + h * 32));
        we[2 * v + h] = _mm256_srai_epi16(_mm256_slli_epi16(x, 8), 8);
        wo[2 * v + h] = _mm256_srai_epi16(x, 8);
      }
    for (int i = 0; i < MR; ++i) {
      const uint32_t u = g < Kfull ? load_u32(a + i * lda + 4 * g) : tail[i];
      const __m256i ab = _mm256_set1_epi32(static_cast<int32_t>(u));
      const __m256i ae = _mm256_and_si256(ab, lo_bytes);                         // (a0, a2) zero-extended
      const __m256i ao = _mm256_and_si256(_mm256_srli_epi16(ab, 8), lo_bytes);   // (a1, a3)
      for (int v = 0; v < 2 * NV; ++v) {
        acc[i][v] = _mm256_add_epi32(acc[i][v], _mm256_madd_epi16(ae, we[v]));
        acc[i][v] = _mm256_add_epi32(acc[i][v], _mm256_madd_epi16(ao, wo[v]));
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 2 * NV; ++v)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(tile + i * kMaxNR + 8 * v), acc[i][v]);
}

template <int MR, int NV>
PYIMGCLS_TARGET_VNNI void micro_vnni(const uint8_t* a, int64_t lda, int64_t K, const int8_t* w, int64_t bstride,
                                     int32_t* tile) {
  __m512i acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_si512();
  // The partial last group's activations are gathered before the loop: a variable-length copy
  // inside it would be a call, and the accumulators would then live on the stack.
  const int64_t K4 = quant_k4(K), Kfull = K / 4;
  uint32_t tail[MR];
  for (int i = 0; i < MR; ++i) tail[i] = K4 > Kfull ? load_u32_tail(a + i * lda + 4 * Kfull, K - 4 * Kfull) : 0u;
  for (int64_t g = 0; g < K4; ++g) {
    __m512i b[NV];
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_si512(w + v * bstride + g * 64);
    for (int i = 0; i < MR; ++i) {
      const uint32_t u = g < Kfull ? load_u32(a + i * lda + 4 * g) : tail[i];
      const __m512i ab = _mm512_set1_epi32(static_cast<int32_t>(u));
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbusd_epi32(acc[i][v], ab, b[v]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) _mm512_storeu_si512(tile + i * kMaxNR + 16 * v, acc[i][v]);
}
#endif

#ifdef PYIMGCLS_X86
// The requantising epilogue fused into micro_vnni_ind for uint8 output: the operations of
// epilogue_vnni lane for lane (so the same bytes), applied to the accumulators still in registers,
// instead of storing the int32 tile (24 zmm) and reloading it in a call of its own (measured: a
// 64-channel 3x3 at 224x224 batch 16, 4.60 -> 4.34 ms; 128 channels 4.22 -> 3.99).
struct FusedEpi {
  const int32_t* off;     // [ncols]: bias[n] - a_zero * colsum[n] of the tile's columns
  const float* mult;      // [ncols]
  const uint8_t* res;     // residual at the tile's (row 0, column 0), row stride ldr; or null
  int64_t ldr;
  uint8_t* out;           // output at the tile's (row 0, column 0), row stride ldo
  int64_t ldo;
  int64_t ncols;          // columns of the tile that exist, 16 * (NV - 1) < ncols <= 16 * NV
  int32_t out_zero, res_zero, qmin, qmax;
  float res_mult;
  const int64_t* rowm = nullptr;   // null: tile row i is row i of out / res; else row rowm[i] (a conv
                                   // tile of pixels that skip the same padding taps, not adjacent)
};

// the columns of 16-column group v of a fused tile that exist
inline __mmask16 fused_mask(int64_t ncols, int v) {
  const int64_t left = ncols - 16 * v;
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
}

// The indirect form of micro_vnni for convolutions on NHWC input (quant_conv_gemm): A is never
// gathered. Row i of the tile is nseg runs of 4 * seg4 contiguous bytes, rows[i * pstride + s] the
// address of run s (a 3x3 conv on C channels: 3 kernel rows of 3 * C bytes of the image, or of a
// zero-point row outside it), multiplied with the seg4 weight groups from w + s * wstep (wstep =
// seg4 * 64 when the runs cover K in order; a conv that skips the padding's taps runs over the taps
// it keeps, a part of each kernel row); there is no partial group. Per 4 k the same 4 loads, 6 broadcasts and 24 vpdpbusd as micro_vnni;
// the row addresses are reloaded once per run (per 192 bytes at C = 64). fe: the fused uint8
// epilogue, or null to store the raw int32 sums into tile (row stride kMaxNR) as micro_vnni does.
template <int MR, int NV>
PYIMGCLS_TARGET_VNNI void micro_vnni_ind(const uint8_t* const* rows, int64_t pstride, int64_t nseg, int64_t seg4,
                                         int64_t wstep, const int8_t* w, int64_t bstride, int32_t* tile,
                                         const FusedEpi* fe) {
  int64_t ri[MR];        // the output / residual row of tile row i
  for (int i = 0; i < MR; ++i) ri[i] = fe && fe->rowm ? fe->rowm[i] : i;
  if (fe) {
    // the output and residual lines of the tile (first and last byte of each row), requested now so
    // they arrive during the K loop: the residual is the block's input, written two layers back and
    // mostly out of L2, and a miss at the end of the tile stalls its epilogue (in a ResNet-18
    // forward at 224x224 batch 16 the residual 3x3s took 3-8 % longer without)
    for (int i = 0; i < MR; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(fe->out + ri[i] * fe->ldo), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(fe->out + ri[i] * fe->ldo + fe->ncols - 1), _MM_HINT_T0);
      if (fe->res) {
        _mm_prefetch(reinterpret_cast<const char*>(fe->res + ri[i] * fe->ldr), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(fe->res + ri[i] * fe->ldr + fe->ncols - 1), _MM_HINT_T0);
      }
    }
  }
  // With the fused epilogue the sums start from bias - a_zero * colsum: the same int32 total (wrapping
  // addition is associative) and one add fewer per output vector.
  __m512i acc[MR][NV];
  for (int v = 0; v < NV; ++v) {
    const __m512i init = fe ? _mm512_maskz_loadu_epi32(fused_mask(fe->ncols, v), fe->off + 16 * v)
                            : _mm512_setzero_si512();
    for (int i = 0; i < MR; ++i) acc[i][v] = init;
  }
  for (int64_t s = 0; s < nseg; ++s, w += wstep) {
    const uint8_t* r[MR];
    for (int i = 0; i < MR; ++i) r[i] = rows[i * pstride + s];
    for (int64_t g = 0; g < seg4; ++g) {
      __m512i b[NV];
      for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_si512(w + v * bstride + g * 64);
      for (int i = 0; i < MR; ++i) {
        const __m512i ab = _mm512_set1_epi32(static_cast<int32_t>(load_u32(r[i] + 4 * g)));
        for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbusd_epi32(acc[i][v], ab, b[v]);
      }
    }
  }
  if (!fe) {
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) _mm512_storeu_si512(tile + i * kMaxNR + 16 * v, acc[i][v]);
    return;
  }
  // the fields as locals: a byte store may alias *fe, so they would be reloaded after every store
  const FusedEpi e = *fe;
  const __m512i oz = _mm512_set1_epi32(e.out_zero);
  // Without a residual: clamp(rne(clamp(y, +-2^22)) + out_zero, qmin, qmax) == rne(clamp(y, qmin -
  // out_zero, qmax - out_zero)) + out_zero: the bounds are integers of magnitude <= 255 and rounding is
  // monotonic, so it keeps them; y is min / max's first operand, so a NaN still gives qmax as
  // epilogue_vnni. 6 operations per 16 outputs instead of 9.
  const bool plain = !e.res && e.qmin <= e.qmax;
  const __m512 flo = _mm512_set1_ps(static_cast<float>(e.qmin - e.out_zero));
  const __m512 fhi = _mm512_set1_ps(static_cast<float>(e.qmax - e.out_zero));
  const __m512 cl = _mm512_set1_ps(kClampF), ncl = _mm512_set1_ps(-kClampF);
  const __m512i lo = _mm512_set1_epi32(e.qmin), hi = _mm512_set1_epi32(e.qmax);
  const __m512i rz = _mm512_set1_epi32(e.res_zero);
  const __m512 rm = _mm512_set1_ps(e.res_mult);
  // |R - res_zero| <= 255 and rounding is monotonic, so when fl(255 |res_mult|) <= 2^22 no residual
  // term reaches the clamp and it is skipped (NaN keeps it)
  const bool rclamp = !(std::fabs(e.res_mult) * 255.f <= kClampF);
  if (NV == 4 && e.ncols == 64) {
    // Whole rows of 64 columns: the 4 vectors of a row packed by signed-saturating packs (int32 ->
    // int16 -> uint8: exactly a clamp to [0, 255]) and stored as one 64-byte line, instead of 4
    // truncating vpmovdb and 4 masked 16-byte stores. The packs interleave the 4 vectors by 128-bit
    // lane (lane l holds columns 4l .. 4l + 3 of each); one vpermd puts them back in order. Since the
    // packs clamp to [0, 255], the clamps to qmin = 0 and qmax = 255 (no activation, or ReLU with a
    // zero point of 0: most layers) are dropped: a value below 0 (cvtps2dq's INT_MIN for a huge
    // negative y included, with out_zero added, no overflow) packs to 0 as the clamp would. The upper
    // float clamp stays: a huge positive y converts to INT_MIN too.
    const __m512i perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const bool lower = e.qmin > 0, upper = e.qmax < 255;
    __m512 mu[4];
    for (int v = 0; v < 4; ++v) mu[v] = _mm512_loadu_ps(e.mult + 16 * v);
    for (int i = 0; i < MR; ++i) {
      __m512i q[4];
      for (int v = 0; v < 4; ++v) {
        const __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[i][v]), mu[v]);
        if (plain) {
          __m512 c = _mm512_min_ps(y, fhi);
          if (lower) c = _mm512_max_ps(c, flo);
          q[v] = _mm512_add_epi32(_mm512_cvtps_epi32(c), oz);
          continue;
        }
        q[v] = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_max_ps(_mm512_min_ps(y, cl), ncl)), oz);
        if (e.res) {
          const __m512i rb = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(e.res + ri[i] * e.ldr + 16 * v)));
          __m512 rf = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(rb, rz)), rm);
          if (rclamp) rf = _mm512_max_ps(_mm512_min_ps(rf, cl), ncl);
          q[v] = _mm512_add_epi32(q[v], _mm512_cvtps_epi32(rf));
        }
        if (lower) q[v] = _mm512_max_epi32(q[v], lo);
        if (upper) q[v] = _mm512_min_epi32(q[v], hi);
      }
      const __m512i b = _mm512_packus_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3]));
      _mm512_storeu_si512(e.out + ri[i] * e.ldo, _mm512_permutexvar_epi32(perm, b));
    }
    return;
  }
  for (int v = 0; v < NV; ++v) {
    const __mmask16 k = fused_mask(e.ncols, v);
    const __m512 mu = _mm512_maskz_loadu_ps(k, e.mult + 16 * v);
    for (int i = 0; i < MR; ++i) {
      const __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[i][v]), mu);
      __m512i q;
      if (plain) {
        q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_max_ps(_mm512_min_ps(y, fhi), flo)), oz);
      } else {
        q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_max_ps(_mm512_min_ps(y, cl), ncl)), oz);
        if (e.res) {
          const __m128i rb = _mm_maskz_loadu_epi8(k, e.res + ri[i] * e.ldr + 16 * v);
          __m512 rf = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(rb), rz)), rm);
          if (rclamp) rf = _mm512_max_ps(_mm512_min_ps(rf, cl), ncl);
          q = _mm512_add_epi32(q, _mm512_cvtps_epi32(rf));
        }
        q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
      }
      _mm_mask_storeu_epi8(e.out + ri[i] * e.ldo + 16 * v, k, _mm512_cvtepi32_epi8(q));   // truncating, as the cast
    }
  }
}
#endif

using MicroFn = void (*)(const uint8_t*, int64_t, int64_t, const int8_t*, int64_t, int32_t*);
#ifdef PYIMGCLS_X86
using MicroIndFn = void (*)(const uint8_t* const*, int64_t, int64_t, int64_t, int64_t, const int8_t*, int64_t,
                            int32_t*, const FusedEpi*);
#endif

// table[mr - 1][nv - 1] for one path
template <template <int, int> class F, int MR, int NV>
struct MicroTable;

template <int MR, int NV>
struct GenericFn { static constexpr MicroFn fn = &micro_generic<MR, NV>; };
#ifdef PYIMGCLS_X86
template <int MR, int NV>
struct Avx2Fn { static constexpr MicroFn fn = &micro_avx2<MR, NV>; };
template <int MR, int NV>
struct VnniFn { static constexpr MicroFn fn = &micro_vnni<MR, NV>; };
template <int MR, int NV>
struct VnniIndFn { static constexpr MicroIndFn fn = &micro_vnni_ind<MR, NV>; };
#endif

template <template <int, int> class F, int MR, int NV>
struct MicroTable {
  std::remove_const_t<decltype(F<1, 1>::fn)> fn[MR][NV];
  constexpr MicroTable() : fn() { fill<0>(); }
  template <int I>
  constexpr void fill() {
    if constexpr (I < MR * NV) {
      fn[I / NV][I % NV] = F<I / NV + 1, I % NV + 1>::fn;
      fill<I + 1>();
    }
  }
};

struct PathInfo {
  int mr, nv;
  MicroFn (*get)(int mr, int nv);
};

template <template <int, int> class F, int MR, int NV>
MicroFn table_get(int mr, int nv) {
  static constexpr MicroTable<F, MR, NV> t{};
  return t.fn[mr - 1][nv - 1];
}

#ifdef PYIMGCLS_X86
MicroIndFn vnni_ind_get(int mr, int nv) {
  static constexpr MicroTable<VnniIndFn, 6, 4> t{};
  return t.fn[mr - 1][nv - 1];
}
#endif

PathInfo path_info(QPath p) {
#ifdef PYIMGCLS_X86
  if (p == QPath::Vnni) return {6, 4, &table_get<VnniFn, 6, 4>};
  if (p == QPath::Avx2) return {4, 1, &table_get<Avx2Fn, 4, 1>};
#endif
  (void)p;
  return {4, 1, &table_get<GenericFn, 4, 1>};
}

// ---------------------------------------------------------------------------------------------
// Epilogue of one tile: tile int32 [mr, nr] (raw sums, row stride kMaxNR) -> out rows m0 .. m0 + mr,
// columns n0 .. n0 + nr. One variant per path, all computing the "Semantics" bit for bit: the vector
// ones use the same IEEE operations lane-wise (vcvtdq2ps / vcvtps2dq round with MXCSR, to nearest
// even, exactly as the scalar cvtsi2ss / cvtss2si behind static_cast and lrint), and the clamps are
// min / max on values that are never NaN. Per output element the scalar form costs ~25 cycles
// (6-7 ns measured: half of a 3x3 conv's time at K = 576), the AVX-512 one ~1.5.
// ---------------------------------------------------------------------------------------------
inline int32_t rne_term(float v) {
  v = v < -kClampF ? -kClampF : (v > kClampF ? kClampF : v);
  // lrint: the current rounding mode (to nearest even), inlined as cvtss2si (nearbyint is a libm call)
  return static_cast<int32_t>(std::lrint(v));
}

// The epilogue's arguments as locals: a store through uint8_t* may alias anything, so fields read
// through the reference would be reloaded after every output byte.
struct EpiArgs {
  const int32_t* colsum;
  const int32_t* bias;
  const float* mult;
  const uint8_t* res;
  int64_t ldr;
  int32_t a_zero, res_zero, out_zero, qmin, qmax;
  float res_mult;
  bool float_out;
  Act act;
};

void epilogue_generic(const int32_t* tile, int mr, int64_t m0, int64_t n0, int64_t nr, const EpiArgs& e, void* out,
                      int64_t ldo) {
  const EpiArgs ep = e;
  for (int i = 0; i < mr; ++i, tile += kMaxNR) {
    const int64_t m = m0 + i;
    if (ep.float_out) {
      float* o = static_cast<float*>(out) + m * ldo + n0;
      for (int64_t j = 0; j < nr; ++j) {
        const int64_t n = n0 + j;
        const int32_t acc = tile[j] - ep.a_zero * ep.colsum[n] + (ep.bias ? ep.bias[n] : 0);
        float y = static_cast<float>(acc) * ep.mult[n];
        if (ep.act == Act::ReLU) y = y < 0.f ? 0.f : y;
        else if (ep.act == Act::ReLU6) y = y < 0.f ? 0.f : (y > 6.f ? 6.f : y);
        o[j] = y;
      }
      continue;
    }
    uint8_t* o = static_cast<uint8_t*>(out) + m * ldo + n0;
    const uint8_t* r = ep.res ? ep.res + m * ep.ldr + n0 : nullptr;
    for (int64_t j = 0; j < nr; ++j) {
      const int64_t n = n0 + j;
      const int32_t acc = tile[j] - ep.a_zero * ep.colsum[n] + (ep.bias ? ep.bias[n] : 0);
      int32_t q = rne_term(static_cast<float>(acc) * ep.mult[n]) + ep.out_zero;
      if (r) q += rne_term(static_cast<float>(int32_t(r[j]) - ep.res_zero) * ep.res_mult);
      q = q < ep.qmin ? ep.qmin : (q > ep.qmax ? ep.qmax : q);
      o[j] = static_cast<uint8_t>(q);
    }
  }
}

#ifdef PYIMGCLS_X86
// 8 columns per step (ymm); a last partial group of < 8 columns goes through epilogue_generic.
PYIMGCLS_TARGET_AVX2 void epilogue_avx2(const int32_t* tile, int mr, int64_t m0, int64_t n0, int64_t nr,
                                        const EpiArgs& e, void* out, int64_t ldo) {
  const EpiArgs ep = e;
  const int64_t nv = nr / 8 * 8;
  const __m256i az = _mm256_set1_epi32(ep.a_zero), oz = _mm256_set1_epi32(ep.out_zero);
  const __m256i rz = _mm256_set1_epi32(ep.res_zero);
  const __m256i lo = _mm256_set1_epi32(ep.qmin), hi = _mm256_set1_epi32(ep.qmax);
  const __m256 cl = _mm256_set1_ps(kClampF), ncl = _mm256_set1_ps(-kClampF), rm = _mm256_set1_ps(ep.res_mult);
  const __m256 zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.f);
  // byte 0 of each int32 lane (truncation, as static_cast<uint8_t>) to the low 4 bytes of each 128-bit half
  const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  for (int i = 0; i < mr; ++i) {
    const int64_t m = m0 + i;
    const int32_t* t = tile + i * kMaxNR;
    for (int64_t j = 0; j < nv; j += 8) {
      const int64_t n = n0 + j;
      __m256i acc = _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + j)),
                                     _mm256_mullo_epi32(az, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ep.colsum + n))));
      if (ep.bias) acc = _mm256_add_epi32(acc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ep.bias + n)));
      __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_loadu_ps(ep.mult + n));
      if (ep.float_out) {
        if (ep.act == Act::ReLU || ep.act == Act::ReLU6)
          y = _mm256_blendv_ps(y, zero, _mm256_cmp_ps(y, zero, _CMP_LT_OQ));
        if (ep.act == Act::ReLU6) y = _mm256_blendv_ps(y, six, _mm256_cmp_ps(y, six, _CMP_GT_OQ));
        _mm256_storeu_ps(static_cast<float*>(out) + m * ldo + n, y);
        continue;
      }
      __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(y, cl), ncl)), oz);
      if (ep.res) {
        const __m128i rb = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(ep.res + m * ep.ldr + n));
        const __m256 r = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(rb), rz)), rm);
        q = _mm256_add_epi32(q, _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(r, cl), ncl)));
      }
      q = _mm256_min_epi32(_mm256_max_epi32(q, lo), hi);
      const __m256i b = _mm256_shuffle_epi8(q, pick);
      const __m128i packed = _mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(static_cast<uint8_t*>(out) + m * ldo + n), packed);
    }
  }
  if (nv < nr) epilogue_generic(tile + nv, mr, m0, n0 + nv, nr - nv, ep, out, ldo);
}

// 16 columns per step (zmm), the last partial group through masked loads and stores.
PYIMGCLS_TARGET_VNNI void epilogue_vnni(const int32_t* tile, int mr, int64_t m0, int64_t n0, int64_t nr,
                                        const EpiArgs& e, void* out, int64_t ldo) {
  const EpiArgs ep = e;
  const __m512i az = _mm512_set1_epi32(ep.a_zero), oz = _mm512_set1_epi32(ep.out_zero);
  const __m512i rz = _mm512_set1_epi32(ep.res_zero);
  const __m512i lo = _mm512_set1_epi32(ep.qmin), hi = _mm512_set1_epi32(ep.qmax);
  const __m512 cl = _mm512_set1_ps(kClampF), ncl = _mm512_set1_ps(-kClampF), rm = _mm512_set1_ps(ep.res_mult);
  const __m512 zero = _mm512_setzero_ps(), six = _mm512_set1_ps(6.f);
  for (int64_t j = 0; j < nr; j += 16) {
    const int64_t n = n0 + j;
    const __mmask16 k = nr - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (nr - j)) - 1);
    // per-column terms, once for the mr rows: -a_zero * colsum + bias, and the multiplier
    __m512i off = _mm512_sub_epi32(ep.bias ? _mm512_maskz_loadu_epi32(k, ep.bias + n) : _mm512_setzero_si512(),
                                   _mm512_mullo_epi32(az, _mm512_maskz_loadu_epi32(k, ep.colsum + n)));
    const __m512 mu = _mm512_maskz_loadu_ps(k, ep.mult + n);
    for (int i = 0; i < mr; ++i) {
      const int64_t m = m0 + i;
      const __m512i acc = _mm512_add_epi32(_mm512_maskz_loadu_epi32(k, tile + i * kMaxNR + j), off);
      __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), mu);
      if (ep.float_out) {
        if (ep.act == Act::ReLU || ep.act == Act::ReLU6)
          y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(y, zero, _CMP_LT_OQ), zero);
        if (ep.act == Act::ReLU6) y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(y, six, _CMP_GT_OQ), six);
        _mm512_mask_storeu_ps(static_cast<float*>(out) + m * ldo + n, k, y);
        continue;
      }
      __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_max_ps(_mm512_min_ps(y, cl), ncl)), oz);
      if (ep.res) {
        const __m128i rb = _mm_maskz_loadu_epi8(k, ep.res + m * ep.ldr + n);
        const __m512 r = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(rb), rz)), rm);
        q = _mm512_add_epi32(q, _mm512_cvtps_epi32(_mm512_max_ps(_mm512_min_ps(r, cl), ncl)));
      }
      q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
      _mm_mask_storeu_epi8(static_cast<uint8_t*>(out) + m * ldo + n, k, _mm512_cvtepi32_epi8(q));   // truncating, as the cast
    }
  }
}
#endif

using EpiFn = void (*)(const int32_t*, int, int64_t, int64_t, int64_t, const EpiArgs&, void*, int64_t);

EpiFn epilogue_for(QPath p) {
#ifdef PYIMGCLS_X86
  if (p == QPath::Vnni) return &epilogue_vnni;
  if (p == QPath::Avx2) return &epilogue_avx2;
#endif
  (void)p;
  return &epilogue_generic;
}

}  // namespace

const char* quant_isa() {
  switch (active_qpath()) {
    case QPath::Vnni: return "vnni";
    case QPath::Avx2: return "avx2";
    case QPath::Generic: return "generic";
  }
  return "generic";
}

void quant_pack_weight(const int8_t* w, int64_t N, int64_t K, int64_t swn, int64_t swk, int8_t* packed,
                       int32_t* colsum) {
  const int64_t K4 = quant_k4(K), NB = quant_nblocks(N);
  std::memset(packed, 0, static_cast<size_t>(quant_packed_bytes(N, K)));
  for (int64_t n = 0; n < N; ++n) {
    int8_t* blk = packed + (n / kQuantNB) * K4 * 64 + (n % kQuantNB) * 4;
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int8_t v = w[n * swn + k * swk];
      blk[(k / 4) * 64 + (k % 4)] = v;
      s += v;
    }
    colsum[n] = s;
  }
  (void)NB;
}

void quant_tap_sums(const int8_t* packed, int64_t O, int64_t KH, int64_t KW, int64_t C, int32_t* out) {
  const int64_t K4 = quant_k4(KH * KW * C);
  for (int64_t n = 0; n < O; ++n) {
    const int8_t* blk = packed + (n / kQuantNB) * K4 * 64 + (n % kQuantNB) * 4;
    for (int64_t t = 0, k = 0; t < KH * KW; ++t) {
      int32_t s = 0;
      for (int64_t c = 0; c < C; ++c, ++k) s += blk[(k >> 2) * 64 + (k & 3)];
      out[t * O + n] = s;
    }
  }
}

namespace {

// One thread's share of a GEMM's tile grid: rows [m0, m1), column tasks [c0, c1) (a column task is
// NV blocks of 16 channels). Rows are split in whole MR tiles, as evenly as they go: 48-row tasks
// dealt out statically left one thread 3 of 4 row tiles at M = 64 (ResNet's last stage at 64x64
// batch 16: 1.4x from 2 threads) and 144 of 256 rows at M = 256. With more columns than rows (and a
// column task per thread at least) the columns are split instead, so each thread reads only its
// share of the weight (512 x 4608 bytes at that last stage) and all of the small A. Any split gives
// the same bytes: the integer sums are exact.
struct Share {
  int64_t m0, m1, c0, c1;
};
inline Share gemm_share(int64_t M, int64_t N, int64_t ctasks, int mr, int tid, int nt) {
  if (nt > 1 && N > M && ctasks >= nt) return {0, M, tid * ctasks / nt, (tid + 1) * ctasks / nt};
  const int64_t tiles = (M + mr - 1) / mr;
  return {std::min(M, tid * tiles / nt * mr), std::min(M, (tid + 1) * tiles / nt * mr), 0, ctasks};
}

// tile(m0, mr, b0, nb, n0, ncols, first) for each mr x (16 nb) tile of a share of an [M, N] GEMM of NB
// 16-channel blocks: chunks of kMC rows, the share's column tasks within a chunk, tiles down the chunk
// (the A rows of a chunk stay in L1 / L2 across its column tasks); first: the share's first column task.
template <class F>
inline void for_share_tiles(const Share& sh, int64_t N, int64_t NB, int mr, int nv, F&& tile) {
  for (int64_t mc = sh.m0; mc < sh.m1; mc += kMC) {
    const int64_t m_end = std::min(sh.m1, mc + kMC);
    for (int64_t ntk = sh.c0; ntk < sh.c1; ++ntk) {
      const int64_t b0 = ntk * nv, nb = std::min<int64_t>(nv, NB - b0);
      const int64_t n0 = b0 * kQuantNB, ncols = std::min<int64_t>(nb * kQuantNB, N - n0);
      for (int64_t m0 = mc; m0 < m_end; m0 += mr)
        tile(m0, static_cast<int>(std::min<int64_t>(mr, m_end - m0)), b0, static_cast<int>(nb), n0, ncols,
             ntk == sh.c0);
    }
  }
}

#ifdef PYIMGCLS_X86
// bias[n] - a_zero * colsum[n] (exact int32, as epilogue_vnni): the fused epilogue's per-column start
const int32_t* fused_offsets(const int32_t* bias, const int32_t* colsum, int32_t a_zero, int64_t N) {
  static thread_local std::vector<int32_t> offv;
  if (offv.size() < static_cast<size_t>(N)) offv.resize(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) offv[n] = (bias ? bias[n] : 0) - a_zero * colsum[n];
  return offv.data();
}

// The lines of rows m0 .. m0 + mr of a [*, ld] byte matrix, columns n0 .. n0 + ncols, requested into
// L1 (write intent for the output: its lines are written, not read, and a plain miss would fetch
// them only to replace them).
inline void prefetch_rows(const uint8_t* p, int64_t ld, int mr, int64_t ncols, bool write) {
  for (int i = 0; i < mr; ++i, p += ld)
    for (int64_t b = 0; b < ncols; b += 64) {
      if (write)
        _mm_prefetch(reinterpret_cast<const char*>(p + b), _MM_HINT_ET0);
      else
        _mm_prefetch(reinterpret_cast<const char*>(p + b), _MM_HINT_T0);
    }
}

// quant_gemm for uint8 output on the VNNI path (K % 4 == 0): the tiles of micro_vnni_ind (one run
// of K bytes per row: the A rows in place) with the requantising epilogue in registers, instead of
// micro_vnni's int32 tile stored and reloaded by epilogue_vnni. Small-K GEMMs are where that matters:
// ResNet-50's 1x1 expansions (K = 64 .. 256, N = 4K, the residual fused) do 16 .. 64 vpdpbusd per
// output vector against ~18 epilogue operations. Their residual and output rows (M x N bytes each,
// 12.8 MB at 56x56 batch 16) come from memory, and a 6 x 64 tile's K loop (~400 cycles at K = 64)
// is shorter than a miss: measured, 73 % of the epilogue's samples sat on the residual load. So each
// tile requests the residual, output and A lines of the tile two ahead in its column block.
void quant_gemm_fused(const uint8_t* a, int64_t M, int64_t K, int64_t lda, int32_t a_zero, const int8_t* packed,
                      const int32_t* colsum, int64_t N, const QuantEpilogue& ep, uint8_t* out, int64_t ldo, int nt,
                      bool parallel) {
  const PathInfo p = path_info(QPath::Vnni);
  const int64_t bstride = quant_k4(K) * 64, NB = quant_nblocks(N);
  const int64_t ntasks = (NB + p.nv - 1) / p.nv;
  const int32_t* off = fused_offsets(ep.bias, colsum, a_zero, N);
  constexpr int kAhead = 2;     // tiles
#pragma omp parallel num_threads(nt) if (parallel)
  {
    const Share sh = gemm_share(M, N, ntasks, p.mr, omp_get_thread_num(), omp_get_num_threads());
    for_share_tiles(sh, N, NB, p.mr, p.nv, [&](int64_t m0, int mr, int64_t b0, int nb, int64_t n0, int64_t ncols,
                                               bool first) {
      const int64_t mp = m0 + kAhead * p.mr;
      if (mp < sh.m1) {
        const int mrp = static_cast<int>(std::min<int64_t>(p.mr, sh.m1 - mp));
        prefetch_rows(out + mp * ldo + n0, ldo, mrp, ncols, true);
        if (ep.res) prefetch_rows(ep.res + mp * ep.ldr + n0, ep.ldr, mrp, ncols, false);
        if (first) prefetch_rows(a + mp * lda, lda, mrp, K, false);
      }
      const uint8_t* rows[kMaxMR];
      for (int i = 0; i < mr; ++i) rows[i] = a + (m0 + i) * lda;
      const FusedEpi fe{off + n0, ep.mult + n0, ep.res ? ep.res + m0 * ep.ldr + n0 : nullptr, ep.ldr,
                        out + m0 * ldo + n0, ldo, ncols, ep.out_zero, ep.res_zero, ep.qmin, ep.qmax, ep.res_mult};
      vnni_ind_get(mr, nb)(rows, 1, 1, K / 4, K * 16, packed + b0 * bstride, bstride, nullptr, &fe);
    });
  }
}
#endif

}  // namespace

void quant_gemm(const uint8_t* a, int64_t M, int64_t K, int64_t lda, int32_t a_zero, const int8_t* packed,
                const int32_t* colsum, int64_t N, const QuantEpilogue& ep, void* out, int64_t ldo) {
  if (M <= 0 || N <= 0) return;
  const QPath path = active_qpath();
  const PathInfo p = path_info(path);
  const EpiFn epi = epilogue_for(path);
  const EpiArgs ea{colsum, ep.bias, ep.mult, ep.res, ep.ldr, a_zero, ep.res_zero, ep.out_zero, ep.qmin, ep.qmax,
                   ep.res_mult, ep.float_out, ep.act};
  const int64_t K4 = quant_k4(K), bstride = K4 * 64;
  const int64_t NB = quant_nblocks(N);
  const int64_t mtasks = (M + kMC - 1) / kMC, ntasks = (NB + p.nv - 1) / p.nv;
  const int64_t tasks = mtasks * ntasks;
  // Below 2^22 multiply-adds (tens of microseconds on one core) one thread: the fork / join of the
  // team costs more, by milliseconds when other processes hold the cores (LeNet-5's fc1 at batch 64,
  // 3M MACs: 16 ms per call with 2 threads on this loaded machine). conv.cpp's kSmallConvMacs agrees.
  const int nt = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), tasks));
  const bool parallel = nt > 1 && M * N * std::max<int64_t>(K, 1) >= (int64_t(1) << 22);
#ifdef PYIMGCLS_X86
  if (path == QPath::Vnni && !ep.float_out && K % 4 == 0) {
    quant_gemm_fused(a, M, K, lda, a_zero, packed, colsum, N, ep, static_cast<uint8_t*>(out), ldo, nt, parallel);
    return;
  }
#endif
#pragma omp parallel num_threads(nt) if (parallel)
  {
    alignas(64) int32_t tile[kMaxMR * kMaxNR];
    const Share sh = gemm_share(M, N, ntasks, p.mr, omp_get_thread_num(), omp_get_num_threads());
    for_share_tiles(sh, N, NB, p.mr, p.nv, [&](int64_t m0, int mr, int64_t b0, int nb, int64_t n0, int64_t ncols,
                                               bool) {
      p.get(mr, nb)(a + m0 * lda, lda, K, packed + b0 * bstride, bstride, tile);
      epi(tile, mr, m0, n0, ncols, ea, out, ldo);
    });
  }
}

namespace {

// The geometry of one im2col (quant.h: quant_im2col) and the copy of one of its rows.
struct Im2col {
  const uint8_t* x;
  int64_t H, W, sN, sC, sH, sW, c0, CG, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW;
  uint8_t pad;
  // Where set (quant_conv_gemm: rows gathered in order into a buffer with kCopySlack bytes to spare),
  // the end of the bytes x may be read up to: a kernel row of <= 32 bytes inside the image is then
  // copied as a fixed 32-byte block (two inline 16-byte moves instead of a memcpy call; the bytes
  // past the row are overwritten by the next ones). The 7x7 stem on 3 channels: 7 calls of 21 bytes
  // per row, 40 % of its conv time at 64x64 batch 16.
  const uint8_t* x_end = nullptr;
  // Whole kernel rows are contiguous when channels are innermost and dense (NHWC, all of them in
  // this group's run) and the taps are adjacent (dilation 1).
  bool row_runs() const { return sC == 1 && sW == CG && DW == 1; }

  // dst [KH * KW * CG] = row r (= (n * OH + oh) * OW + ow) of the column matrix
  void row(int64_t r, bool runs, uint8_t* dst) const { row_at(r / (OH * OW), (r / OW) % OH, r % OW, runs, dst); }

  // the same row from its (n, oh, ow): quant_conv_gemm steps them along its rows instead of three
  // divisions per row (~75 cycles, an eighth of a layer-1 3x3 row's GEMM work at K = 576)
  void row_at(int64_t n, int64_t oh, int64_t ow, bool runs, uint8_t* dst) const {
    const int64_t iw0 = ow * SW - PW;
    for (int64_t i = 0; i < KH; ++i) {
      const int64_t ih = oh * SH - PH + i * DH;
      if (runs && ih >= 0 && ih < H && iw0 >= 0 && iw0 + KW <= W) {
        // the KW taps of this kernel row are KW * CG consecutive bytes of an NHWC image: one copy
        // (the 7x7 stem on 3 channels: 21 bytes instead of 7 copies of 3; a 3x3 on 64: 192 bytes)
        const uint8_t* src = x + n * sN + ih * sH + iw0 * sW + c0;
        if (KW * CG <= 32 && src + 32 <= x_end)
          std::memcpy(dst, src, 32);
        else
          std::memcpy(dst, src, static_cast<size_t>(KW * CG));
        dst += KW * CG;
        continue;
      }
      for (int64_t j = 0; j < KW; ++j, dst += CG) {
        const int64_t iw = iw0 + j * DW;
        if (ih < 0 || ih >= H || iw < 0 || iw >= W) {
          std::memset(dst, pad, static_cast<size_t>(CG));
          continue;
        }
        const uint8_t* src = x + n * sN + ih * sH + iw * sW + c0 * sC;
        if (CG == 1) {
          *dst = *src;             // LeNet conv1, depthwise: a call per byte would dominate
        } else if (sC == 1 && CG < 16) {
          for (int64_t c = 0; c < CG; ++c) dst[c] = src[c];   // a few bytes: a memcpy call costs more
        } else if (sC == 1) {
          std::memcpy(dst, src, static_cast<size_t>(CG));
        } else {
          for (int64_t c = 0; c < CG; ++c) dst[c] = src[c * sC];
        }
      }
    }
  }
};

#ifdef PYIMGCLS_X86
// The geometry of quant_conv_gemm's indirect path (NHWC, sC == 1, sW == C, DW == 1) and the address
// table of one task's output pixels.
struct IndConv {
  const uint8_t* x;
  int64_t H, W, sN, sH, sW, C, KH, KW, SH, SW, PH, PW, DH, OH, OW;
  uint8_t pad;

  // pt[r * KH + i] = the address of kernel row i (KW * C bytes) of output pixel r0 + r, r < nrows:
  // in the image, or zrow (seg bytes of the zero point) for a row above / below it, or a copy in e
  // (zero point outside) for a row cut by the left / right border. The lines of the image runs are
  // requested into L2 as the table is built: the K loop reads 4 bytes at a time and would meet each
  // miss in turn (a gathered copy had them all in flight; the 1x1 stride-2 downsample of a forward
  // ran 1.8x slower without). A pixel inside the image next to the previous one (same output row)
  // only requests the last SW * C bytes of each run, the rest being the previous runs. Not inlined:
  // inside the OpenMP body this loop spilled its ~15 live values (6 % of a 64-channel 3x3).
  __attribute__((noinline)) void table(int64_t r0, int64_t nrows, const uint8_t** pt, uint8_t* e,
                                       const uint8_t* zrow) const {
    const int64_t seg = KW * C, rstep = DH * sH, step = SW * sW;
    int64_t n = r0 / (OH * OW), oh = (r0 / OW) % OH, ow = r0 % OW;
    bool prev = false;
    for (int64_t r = 0; r < nrows; ++r, pt += KH) {
      const int64_t ih0 = oh * SH - PH, iw0 = ow * SW - PW;
      const bool inside_w = iw0 >= 0 && iw0 + KW <= W;
      const bool inside = inside_w && ih0 >= 0 && ih0 + (KH - 1) * DH < H;
      if (inside) {
        const uint8_t* run = x + n * sN + ih0 * sH + iw0 * sW;
        const int64_t from = prev && step < seg ? seg - step : 0;
        for (int64_t i = 0; i < KH; ++i, run += rstep) {
          pt[i] = run;
          for (int64_t b = from; b < seg; b += 64) _mm_prefetch(reinterpret_cast<const char*>(run + b), _MM_HINT_T1);
          _mm_prefetch(reinterpret_cast<const char*>(run + seg - 1), _MM_HINT_T1);
        }
      } else {
        for (int64_t i = 0; i < KH; ++i) {
          const int64_t ih = ih0 + i * DH;
          if (ih < 0 || ih >= H) {
            pt[i] = zrow;
            continue;
          }
          const uint8_t* src = x + n * sN + ih * sH;
          if (inside_w) {
            const uint8_t* run = src + iw0 * sW;
            for (int64_t b = 0; b < seg; b += 64) _mm_prefetch(reinterpret_cast<const char*>(run + b), _MM_HINT_T1);
            _mm_prefetch(reinterpret_cast<const char*>(run + seg - 1), _MM_HINT_T1);
            pt[i] = run;
            continue;
          }
          for (int64_t j = 0; j < KW; ++j) {
            const int64_t iw = iw0 + j;
            if (iw < 0 || iw >= W)
              std::memset(e + j * C, pad, static_cast<size_t>(C));
            else
              std::memcpy(e + j * C, src + iw * sW, static_cast<size_t>(C));
          }
          pt[i] = e;
          e += seg;
        }
      }
      prev = inside;
      if (++ow == OW) {
        ow = 0;
        prev = false;
        if (++oh == OH) oh = 0, ++n;
      }
    }
  }
};

// Where quant_conv_gemm is given the weight's tap sums: output pixels fall into classes by the kernel
// rows [v0, v1) and columns [h0, h1) of their window that lie in the image (a 3x3 with padding 1: the
// interior, 4 edges, 4 corners), and a class's tiles run over those taps only, instead of over zero-
// point taps. A skipped tap reads a_zero, so its terms (a_zero - a_zero) * w vanish from
// sum_k (a_k - a_zero) w_k: the tiles start from bias - a_zero * (the weight's sum over the kept taps)
// = off + a_zero * (its sum over the skipped ones), the same int32 total (wrapping + and * are exact
// mod 2^32), so the same bytes. A 3x3 with padding 1 on an S x S map does 1 - (1 - 2 / (3 S))^2 fewer
// multiply-adds: 18 % at 7x7, 9 % at 14x14, 2.4 % at 56x56 (oneDNN's int8 convolution behind
// torch.ao skips them too). A class's pixels are not adjacent rows of the output (the left edge of
// consecutive output rows): its tiles write through FusedEpi::rowm.
struct PadSkip {
  std::vector<int> vcls, hcls;               // [OH] / [OW]: class of each output row / column
  std::vector<int64_t> v0, v1, h0, h1;       // per row class / column class: the kept kernel rows / columns
  std::vector<std::vector<int64_t>> cols;    // per column class: its output columns, in order
  std::vector<int32_t> offs;                 // [row classes * column classes][O]: the tiles' start

  int64_t R = 0;                             // output rows per band (quant_conv_gemm)

  // Whether skipping pays, by a cost model of the tiles it makes. A class's pixels in a band form
  // tiles of m ~ count / ceil(count / 6) rows, and a tile streams the class's 64-column weight panel
  // (256 bytes per 4 k) from L2 for m rows: ~2 cycles per row and 4 k (the vpdpbusd bound) at m >= 4,
  // ~8 / m below (L2 bandwidth, ~32 B a cycle). So small classes cost more per tap than the 6-row
  // tiles of the plain path: at batch 1, 2x2 maps (4 one-pixel classes) ran ResNet-18 64x64 25 %
  // slower with skipping everywhere. Skipped where the estimate is not 3 % under the plain path's
  // (a 3x3 at 56x56, 2.4 % of its taps in the padding, measured 0-3 % slower with the classes; the
  // 7x7 stem at 112x112: 1.5 %). DW == 1 (the indirect path).
  bool plan(int64_t N, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW,
            int64_t DH, int64_t OH, int64_t OW, int nt) {
    const auto add = [](std::vector<int64_t>& lo, std::vector<int64_t>& hi, int64_t a, int64_t b) {
      size_t c = 0;
      while (c < lo.size() && (lo[c] != a || hi[c] != b)) ++c;
      if (c == lo.size()) lo.push_back(a), hi.push_back(b);
      return static_cast<int>(c);
    };
    std::vector<int64_t> rows_of;              // per row class: its output rows per image
    for (int64_t oh = 0; oh < OH; ++oh) {
      const int64_t i0 = oh * SH - PH;
      const int64_t a = i0 >= 0 ? 0 : std::min(KH, (-i0 + DH - 1) / DH);
      const int64_t b = std::max(a, i0 > H - 1 ? int64_t(0) : std::min(KH, (H - 1 - i0) / DH + 1));
      const int c = add(v0, v1, a, b);
      vcls.push_back(c);
      if (rows_of.size() <= static_cast<size_t>(c)) rows_of.resize(c + 1);
      ++rows_of[c];
    }
    for (int64_t ow = 0; ow < OW; ++ow) {
      const int64_t j0 = ow * SW - PW;
      const int64_t a = j0 >= 0 ? 0 : std::min(KW, -j0);
      const int64_t b = std::max(a, j0 > W - 1 ? int64_t(0) : std::min(KW, W - j0));
      const int c = add(h0, h1, a, b);
      hcls.push_back(c);
      if (cols.size() <= static_cast<size_t>(c)) cols.resize(c + 1);
      cols[c].push_back(ow);
    }
    // bands of ~512 pixels (at least 6 rows, so a 56x56 map's edge classes make whole tiles)
    R = std::max<int64_t>(6, (512 + OW - 1) / OW);
    const auto cost = [](double count) {     // cycles per pixel and 4 k of a class with count pixels a band
      const double m = count / std::ceil(count / 6.0);
      return std::max(2.0, 8.0 / m);
    };
    const double share = static_cast<double>(N * OH) / nt, band = std::min(static_cast<double>(R), share);
    double skip = 0;
    for (size_t a = 0; a < v0.size(); ++a)
      for (size_t b = 0; b < h0.size(); ++b) {
        const double rows_band = static_cast<double>(rows_of[a]) * std::max(1.0, band / static_cast<double>(OH));
        const double count = std::max(1.0, std::min(rows_band, share) * static_cast<double>(cols[b].size()));
        skip += static_cast<double>(N * rows_of[a]) * static_cast<double>(cols[b].size()) *
                static_cast<double>((v1[a] - v0[a]) * (h1[b] - h0[b])) * cost(count);
      }
    const double plain = static_cast<double>(N * OH * OW) * static_cast<double>(KH * KW) *
                         cost(std::min(48.0, share * static_cast<double>(OW)));
    // PYIMGCLS_QUANT_SKIP_PAD: 0 never, 1 wherever there is padding (tests, A/B), else this estimate
    const char* env = std::getenv("PYIMGCLS_QUANT_SKIP_PAD");
    if (env && env[0] == '0' && !env[1]) return false;
    if (env && env[0] == '1' && !env[1])
      return !(v0.size() == 1 && h0.size() == 1 && v0[0] == 0 && v1[0] == KH && h0[0] == 0 && h1[0] == KW);
    return skip < 0.97 * plain;
  }

  void offsets(const int32_t* off, const int32_t* tapsum, int32_t a_zero, int64_t KH, int64_t KW, int64_t O) {
    const size_t nh = h0.size();
    offs.resize(v0.size() * nh * static_cast<size_t>(O));
    for (size_t a = 0; a < v0.size(); ++a)
      for (size_t b = 0; b < nh; ++b) {
        int32_t* o = offs.data() + (a * nh + b) * O;
        for (int64_t n = 0; n < O; ++n) o[n] = off[n];
        for (int64_t kh = 0; kh < KH; ++kh)
          for (int64_t kw = 0; kw < KW; ++kw) {
            if (kh >= v0[a] && kh < v1[a] && kw >= h0[b] && kw < h1[b]) continue;
            const int32_t* t = tapsum + (kh * KW + kw) * O;
            for (int64_t n = 0; n < O; ++n)
              o[n] = static_cast<int32_t>(static_cast<uint32_t>(o[n]) +
                                          static_cast<uint32_t>(a_zero) * static_cast<uint32_t>(t[n]));
          }
      }
  }
};

// pt[r * KH + s] = the address of kept kernel row v0 + s (from kernel column h0: run bytes) of pixel
// (n[r], oh[r], ow[r]) of one class; the lines are requested into L2 as in IndConv::table (a pixel
// right of the previous one only its last SW * C bytes per run).
__attribute__((noinline)) void skip_table(const IndConv& g, const int64_t* px, int64_t nrows, int64_t v0, int64_t nv,
                                          int64_t h0, int64_t run, const uint8_t** pt) {
  const int64_t step = g.SW * g.sW;
  for (int64_t r = 0; r < nrows; ++r, pt += g.KH) {
    const int64_t n = px[3 * r], oh = px[3 * r + 1], ow = px[3 * r + 2];
    const bool next = r > 0 && px[3 * r - 3] == n && px[3 * r - 2] == oh && px[3 * r - 1] == ow - 1;
    const int64_t from = next && step < run ? run - step : 0;
    const uint8_t* p = g.x + n * g.sN + (oh * g.SH - g.PH + v0 * g.DH) * g.sH + (ow * g.SW - g.PW + h0) * g.sW;
    for (int64_t s = 0; s < nv; ++s, p += g.DH * g.sH) {
      pt[s] = p;
      for (int64_t b = from; b < run; b += 64) _mm_prefetch(reinterpret_cast<const char*>(p + b), _MM_HINT_T1);
      if (run > 0) _mm_prefetch(reinterpret_cast<const char*>(p + run - 1), _MM_HINT_T1);
    }
  }
}
#endif

}  // namespace

void quant_im2col(const uint8_t* x, int64_t N, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH,
                  int64_t sW, int64_t c0, int64_t CG, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,
                  int64_t PW, int64_t DH, int64_t DW, int64_t OH, int64_t OW, uint8_t pad, uint8_t* col) {
  const Im2col g{x, H, W, sN, sC, sH, sW, c0, CG, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, pad};
  const int64_t rows = N * OH * OW, width = KH * KW * CG;
  const bool runs = g.row_runs();
  // One thread per MiB of col at most: a fork / join of the team costs tens of microseconds, far
  // more on a loaded machine, against ~0.1 ns per byte copied (LeNet conv1 at batch 1: 20 KiB).
  const int nt = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), std::max<int64_t>(rows * width >> 20, 1)));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t r = 0; r < rows; ++r) g.row(r, runs, col + r * width);
}

void quant_conv_gemm(const uint8_t* x, int64_t N, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH,
                     int64_t sW, int64_t C, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW,
                     int64_t DH, int64_t DW, int64_t OH, int64_t OW, int32_t a_zero, const int8_t* packed,
                     const int32_t* colsum, const int32_t* tapsum, int64_t O, const QuantEpilogue& ep, void* out,
                     int64_t ldo) {
  const int64_t M = N * OH * OW, K = KH * KW * C;
  if (M <= 0 || O <= 0) return;
  // the last byte of x any tap reads, + 1 (strides are non-negative: the Python layer's tensors)
  const uint8_t* x_end = x + (N - 1) * sN + (H - 1) * sH + (W - 1) * sW + (C - 1) * sC + 1;
  const Im2col g{x, H, W, sN, sC, sH, sW, 0, C, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, static_cast<uint8_t>(a_zero),
                 x_end};
  const bool runs = g.row_runs();
  const QPath path = active_qpath();
  const PathInfo p = path_info(path);
  const EpiFn epi = epilogue_for(path);
  const EpiArgs ea{colsum, ep.bias, ep.mult, ep.res, ep.ldr, a_zero, ep.res_zero, ep.out_zero, ep.qmin, ep.qmax,
                   ep.res_mult, ep.float_out, ep.act};
  const int64_t bstride = quant_k4(K) * 64, NB = quant_nblocks(O);
  // A task is a chunk of 48 output pixels over all O channels: its rows are gathered once into a
  // thread-local buffer (48 * K bytes, at most 216 KiB: L2) and consumed from there by every channel
  // group, so the column matrix never goes to memory (ResNet-18 at 224x224, batch 16: 29 MB per
  // layer-1 conv written and read back otherwise).
  const int nthreads = omp_get_max_threads();
  const bool parallel = nthreads > 1 && M * O * K >= (int64_t(1) << 22);
  const int64_t mc = kMC, tasks = (M + mc - 1) / mc;
  if (parallel && tasks < 2 * nthreads) {
    // Few rows, many channels (late layers at small images: 64 x 512 x 4608): row tasks would leave
    // threads idle, and smaller ones re-read the whole weight (2.4 MB) per task (measured: layer4 at
    // 2 threads 1.82 ms against 0.73). quant_gemm splits the channels instead; the column matrix is
    // small here (under 2 * threads * 48 rows).
    static thread_local std::vector<uint8_t> col;
    if (col.size() < static_cast<size_t>(M * K)) col.resize(static_cast<size_t>(M * K));
    quant_im2col(x, N, H, W, sN, sC, sH, sW, 0, C, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW,
                 static_cast<uint8_t>(a_zero), col.data());
    quant_gemm(col.data(), M, K, K, a_zero, packed, colsum, O, ep, out, ldo);
    return;
  }
  const int nt = static_cast<int>(std::min<int64_t>(nthreads, tasks));
#ifdef PYIMGCLS_X86
  // Indirect path (VNNI, NHWC with dense channels, kernel rows of a multiple of 4 bytes: ResNet's
  // 3x3 and 1x1 convs, not the 3-channel stem): each A row is KH runs of KW * C image bytes read in
  // place through a table of addresses, the MR x 64 register tile broadcasting 4 bytes at a time
  // from them (micro_vnni_ind), so nothing is gathered. Only kernel rows cut by the left / right
  // border are assembled (KW * C bytes, zero point outside), into the task's buffer; those wholly
  // above / below the image point at a zero-point row. The gather cost ~9 % of a 64-channel 3x3
  // (576 bytes copied per output pixel against its 576 * 64 multiply-adds; measured at 224x224
  // batch 16: 5.03 -> 4.60 ms without it, before the fused epilogue).
  if (path == QPath::Vnni && runs && (KW * C) % 4 == 0) {
    const int64_t seg = KW * C, seg4 = seg / 4;
    const int32_t* off = fused_offsets(ep.bias, colsum, a_zero, O);
    const IndConv ig{x, H, W, sN, sH, sW, C, KH, KW, SH, SW, PH, PW, DH, OH, OW, static_cast<uint8_t>(a_zero)};
    PadSkip ps;
    if (tapsum && !ep.float_out && C % 4 == 0 && ps.plan(N, H, W, KH, KW, SH, SW, PH, PW, DH, OH, OW, parallel && nt > 1 ? nt : 1)) {
      ps.offsets(off, tapsum, a_zero, KH, KW, O);
      const int64_t NQ = N * OH, C4 = C / 4;
#pragma omp parallel num_threads(nt) if (parallel && nt > 1)
      {
        static thread_local std::vector<const uint8_t*> ptrs;
        static thread_local std::vector<int64_t> rowm, px;
        if (ptrs.size() < static_cast<size_t>(mc * KH)) ptrs.resize(static_cast<size_t>(mc * KH));
        if (rowm.size() < static_cast<size_t>(mc)) rowm.resize(static_cast<size_t>(mc)), px.resize(3 * mc);
        const uint8_t** pt = ptrs.data();
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
        const int64_t q0 = tid * NQ / nth, q1 = (tid + 1) * NQ / nth;      // output rows (n, oh)
        // Bands of output rows (PadSkip::R), all classes of a band before the next: the image rows a band
        // reads stay in L2 for its edge classes (the whole share at once ran a 64-channel 3x3 at 56x56
        // 2 % slower than no skipping: each edge pixel's input and output lines came back from memory)
        const int64_t R = ps.R;
        for (int64_t qb = q0; qb < q1; qb += R)
        for (size_t a = 0; a < ps.v0.size(); ++a)
          for (size_t b = 0; b < ps.h0.size(); ++b) {
            const int64_t v0 = ps.v0[a], nv = ps.v1[a] - v0, h0 = ps.h0[b], run = (ps.h1[b] - h0) * C;
            const int32_t* offc = ps.offs.data() + (a * ps.h0.size() + b) * O;
            const int8_t* wc = packed + (v0 * seg4 + h0 * C4) * 64;
            const auto chunk = [&](int64_t cnt) {     // cnt pixels of this class: rowm, px
              skip_table(ig, px.data(), cnt, v0, nv, h0, run, pt);
              for (int64_t b0 = 0; b0 < NB; b0 += p.nv) {
                const int64_t nb = std::min<int64_t>(p.nv, NB - b0);
                const int64_t n0 = b0 * kQuantNB, ncols = std::min<int64_t>(nb * kQuantNB, O - n0);
                for (int64_t i0 = 0, mr; i0 < cnt; i0 += mr) {
                  // tiles as even as they go (7 pixels: 4 + 3, not 6 + 1: a 1-row tile is load bound)
                  const int64_t left = cnt - i0, ntl = (left + p.mr - 1) / p.mr;
                  mr = (left + ntl - 1) / ntl;
                  FusedEpi fe{offc + n0, ep.mult + n0, ep.res ? ep.res + n0 : nullptr, ep.ldr,
                              static_cast<uint8_t*>(out) + n0, ldo, ncols, ep.out_zero, ep.res_zero, ep.qmin, ep.qmax,
                              ep.res_mult};
                  fe.rowm = rowm.data() + i0;
                  vnni_ind_get(static_cast<int>(mr), static_cast<int>(nb))(pt + i0 * KH, KH, nv, run / 4, seg4 * 64,
                                                                           wc + b0 * bstride, bstride, nullptr, &fe);
                }
              }
            };
            int64_t cnt = 0;
            for (int64_t q = qb; q < std::min(q1, qb + R); ++q) {
              const int64_t oh = q % OH;
              if (ps.vcls[oh] != static_cast<int>(a)) continue;
              for (const int64_t ow : ps.cols[b]) {
                rowm[cnt] = q * OW + ow;
                px[3 * cnt] = q / OH, px[3 * cnt + 1] = oh, px[3 * cnt + 2] = ow;
                if (++cnt == mc) chunk(cnt), cnt = 0;
              }
            }
            if (cnt) chunk(cnt);
          }
      }
      return;
    }
#pragma omp parallel num_threads(nt) if (parallel && nt > 1)
    {
      static thread_local std::vector<uint8_t> ebuf, zrow;
      static thread_local std::vector<const uint8_t*> ptrs;
      if (ebuf.size() < static_cast<size_t>(mc * K)) ebuf.resize(static_cast<size_t>(mc * K));
      if (zrow.size() < static_cast<size_t>(seg)) zrow.resize(static_cast<size_t>(seg));
      if (ptrs.size() < static_cast<size_t>(mc * KH)) ptrs.resize(static_cast<size_t>(mc * KH));
      std::memset(zrow.data(), a_zero, static_cast<size_t>(seg));
      const uint8_t** pt = ptrs.data();
      alignas(64) int32_t tile[kMaxMR * kMaxNR];
      const Share sh = gemm_share(M, 0, 1, p.mr, omp_get_thread_num(), omp_get_num_threads());   // rows
      for (int64_t r0 = sh.m0; r0 < sh.m1; r0 += mc) {
        const int64_t rows = std::min(mc, sh.m1 - r0);
        ig.table(r0, rows, pt, ebuf.data(), zrow.data());
        for (int64_t b0 = 0; b0 < NB; b0 += p.nv) {
          const int64_t nb = std::min<int64_t>(p.nv, NB - b0);
          const int64_t n0 = b0 * kQuantNB, ncols = std::min<int64_t>(nb * kQuantNB, O - n0);
          for (int64_t i0 = 0; i0 < rows; i0 += p.mr) {
            const int mr = static_cast<int>(std::min<int64_t>(p.mr, rows - i0));
            const int64_t m = r0 + i0;
            if (ep.float_out) {
              vnni_ind_get(mr, static_cast<int>(nb))(pt + i0 * KH, KH, KH, seg4, seg4 * 64, packed + b0 * bstride,
                                                     bstride, tile, nullptr);
              epi(tile, mr, m, n0, ncols, ea, out, ldo);
              continue;
            }
            const FusedEpi fe{off + n0, ep.mult + n0, ep.res ? ep.res + m * ep.ldr + n0 : nullptr, ep.ldr,
                              static_cast<uint8_t*>(out) + m * ldo + n0, ldo, ncols, ep.out_zero, ep.res_zero,
                              ep.qmin, ep.qmax, ep.res_mult};
            vnni_ind_get(mr, static_cast<int>(nb))(pt + i0 * KH, KH, KH, seg4, seg4 * 64, packed + b0 * bstride,
                                                   bstride, tile, &fe);
          }
        }
      }
    }
    return;
  }
#endif
#pragma omp parallel num_threads(nt) if (parallel && nt > 1)
  {
    static thread_local std::vector<uint8_t> abuf;
    if (abuf.size() < static_cast<size_t>(mc * K + kCopySlack)) abuf.resize(static_cast<size_t>(mc * K + kCopySlack));
    uint8_t* a = abuf.data();
    alignas(64) int32_t tile[kMaxMR * kMaxNR];
    const Share sh = gemm_share(M, 0, 1, p.mr, omp_get_thread_num(), omp_get_num_threads());     // rows
    for (int64_t r0 = sh.m0; r0 < sh.m1; r0 += mc) {
      const int64_t rows = std::min(mc, sh.m1 - r0);
      int64_t n = r0 / (OH * OW), oh = (r0 / OW) % OH, ow = r0 % OW;
      for (int64_t r = 0; r < rows; ++r) {
        g.row_at(n, oh, ow, runs, a + r * K);
        if (++ow == OW) {
          ow = 0;
          if (++oh == OH) oh = 0, ++n;
        }
      }
      for (int64_t b0 = 0; b0 < NB; b0 += p.nv) {
        const int64_t nb = std::min<int64_t>(p.nv, NB - b0);
        const int64_t n0 = b0 * kQuantNB, ncols = std::min<int64_t>(nb * kQuantNB, O - n0);
        for (int64_t i0 = 0; i0 < rows; i0 += p.mr) {
          const int mr = static_cast<int>(std::min<int64_t>(p.mr, rows - i0));
          p.get(mr, static_cast<int>(nb))(a + i0 * K, K, K, packed + b0 * bstride, bstride, tile);
          epi(tile, mr, r0 + i0, n0, ncols, ea, out, ldo);
        }
      }
    }
  }
}

namespace {

#ifdef PYIMGCLS_X86
inline __mmask64 byte_mask(int64_t n) { return n >= 64 ? ~__mmask64(0) : (__mmask64(1) << n) - 1; }

// One output pixel of the max pool on NHWC input (channels dense): o[c] = max over the window's
// in-image taps of the C bytes at tap[t], 64 channels per zmm with the running maximum in a register
// (the scalar walk re-read and re-wrote o per tap and channel: ResNet's stem pool at 224x224 batch 16,
// 16 x 64 x 56 x 56 outputs x 9 taps, 1.8 ms against onnxruntime's 1.1). Same bytes: max is exact.
PYIMGCLS_TARGET_VNNI void max_pixel_avx512(const uint8_t* const* tap, int ntaps, int64_t C, uint8_t* o) {
  for (int64_t c = 0; c < C; c += 64) {
    const __mmask64 k = byte_mask(C - c);
    __m512i m = _mm512_setzero_si512();     // 0 is the least uint8; every window has a tap in the image
    for (int t = 0; t < ntaps; ++t) m = _mm512_max_epu8(m, _mm512_maskz_loadu_epi8(k, tap[t] + c));
    _mm512_mask_storeu_epi8(o + c, k, m);
  }
}

// Output rows q0 .. q1 (q = n * OH + oh) of the max pool on NHWC input, channels dense: the window's
// in-image rows found once per output row and its columns per pixel, the running maximum of 64
// channels in a register (max_pixel_avx512 per pixel re-derived n, oh, ow by three divisions and built
// a tap table: ResNet's stem pool, 16 x 56 x 56 pixels of 9 taps, 0.87 ms hot). Same bytes.
PYIMGCLS_TARGET_VNNI void max_rows_avx512(const uint8_t* x, int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sH,
                                          int64_t sW, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,
                                          int64_t PW, int64_t DH, int64_t DW, int64_t OH, int64_t OW, int64_t q0,
                                          int64_t q1, uint8_t* out) {
  const uint8_t* rp[kMaxPoolTaps];
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t n = q / OH, oh = q % OH;
    int nr = 0;
    for (int64_t i = 0; i < KH && nr < kMaxPoolTaps; ++i) {
      const int64_t ih = oh * SH - PH + i * DH;
      if (ih >= 0 && ih < H) rp[nr++] = x + n * sN + ih * sH;
    }
    uint8_t* o = out + q * OW * C;
    for (int64_t ow = 0; ow < OW; ++ow, o += C) {
      const int64_t iw0 = ow * SW - PW;
      int64_t j0 = 0, j1 = KW;
      while (j0 < KW && iw0 + j0 * DW < 0) ++j0;
      while (j1 > j0 && iw0 + (j1 - 1) * DW >= W) --j1;
      for (int64_t c = 0; c < C; c += 64) {
        const __mmask64 k = byte_mask(C - c);
        __m512i m = _mm512_setzero_si512();     // 0 is the least uint8; every window has a tap in the image
        for (int r = 0; r < nr; ++r) {
          const uint8_t* p = rp[r] + (iw0 + j0 * DW) * sW + c;
          for (int64_t j = j0; j < j1; ++j, p += DW * sW) m = _mm512_max_epu8(m, _mm512_maskz_loadu_epi8(k, p));
        }
        _mm512_mask_storeu_epi8(o + c, k, m);
      }
    }
  }
}

// One output pixel of the adaptive average pool on NHWC input: the int32 window sums of 16 channels
// per zmm (exact), then quant_adaptive_avg_pool2d's requantisation with the same IEEE operations lane
// for lane as its scalar rne_term (int -> float, one multiply, clamp to +-2^22, round to nearest even),
// so the same bytes. The scalar loop summed each channel over the window at a stride of C bytes.
PYIMGCLS_TARGET_VNNI void avg_pixel_avx512(const uint8_t* const* tap, int ntaps, int64_t C, int32_t zsum, float mult,
                                           int32_t out_zero, uint8_t* o) {
  const __m512 mu = _mm512_set1_ps(mult), cl = _mm512_set1_ps(kClampF), ncl = _mm512_set1_ps(-kClampF);
  const __m512i zs = _mm512_set1_epi32(zsum), oz = _mm512_set1_epi32(out_zero);
  const __m512i lo = _mm512_setzero_si512(), hi = _mm512_set1_epi32(255);
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 k = C - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (C - c)) - 1);
    __m512i acc = _mm512_setzero_si512();
    for (int t = 0; t < ntaps; ++t) acc = _mm512_add_epi32(acc, _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, tap[t] + c)));
    const __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, zs)), mu);
    __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_max_ps(_mm512_min_ps(y, cl), ncl)), oz);
    q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
    _mm_mask_storeu_epi8(o + c, k, _mm512_cvtepi32_epi8(q));
  }
}
#endif

// The vector pixel functions above apply: the VNNI path (AVX-512BW) and channels dense (NHWC).
inline bool pool_vector(int64_t sC) {
#ifdef PYIMGCLS_X86
  return sC == 1 && active_qpath() == QPath::Vnni;
#else
  (void)sC;
  return false;
#endif
}

}  // namespace

void quant_max_pool2d(const uint8_t* x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sC,
                      int64_t sH, int64_t sW, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW,
                      int64_t DH, int64_t DW, int64_t OH, int64_t OW, uint8_t* out) {
  const int64_t pix = N * OH * OW;
  const bool vec = pool_vector(sC);
  (void)vec;
  const int nt = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), std::max<int64_t>(pix * C >> 20, 1)));
#ifdef PYIMGCLS_X86
  if (vec && KH <= kMaxPoolTaps) {
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      const int64_t NQ = N * OH, tid = omp_get_thread_num(), nth = omp_get_num_threads();
      max_rows_avx512(x, C, H, W, sN, sH, sW, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, tid * NQ / nth,
                      (tid + 1) * NQ / nth, out);
    }
    return;
  }
#endif
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t p = 0; p < pix; ++p) {
    const int64_t n = p / (OH * OW), oh = (p / OW) % OH, ow = p % OW;
    uint8_t* o = out + p * C;
#ifdef PYIMGCLS_X86
    if (vec && KH * KW <= kMaxPoolTaps) {
      const uint8_t* tap[kMaxPoolTaps];
      int nt = 0;
      for (int64_t i = 0; i < KH; ++i) {
        const int64_t ih = oh * SH - PH + i * DH;
        if (ih < 0 || ih >= H) continue;
        for (int64_t j = 0; j < KW; ++j) {
          const int64_t iw = ow * SW - PW + j * DW;
          if (iw >= 0 && iw < W) tap[nt++] = x + n * sN + ih * sH + iw * sW;
        }
      }
      max_pixel_avx512(tap, nt, C, o);
      continue;
    }
#endif
    std::memset(o, 0, static_cast<size_t>(C));   // 0 is the least uint8; every window has a tap in the image
    for (int64_t i = 0; i < KH; ++i) {
      const int64_t ih = oh * SH - PH + i * DH;
      if (ih < 0 || ih >= H) continue;
      for (int64_t j = 0; j < KW; ++j) {
        const int64_t iw = ow * SW - PW + j * DW;
        if (iw < 0 || iw >= W) continue;
        const uint8_t* src = x + n * sN + ih * sH + iw * sW;
        for (int64_t c = 0; c < C; ++c) o[c] = std::max(o[c], src[c * sC]);
      }
    }
  }
}

void quant_adaptive_avg_pool2d(const uint8_t* x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sC,
                               int64_t sH, int64_t sW, int64_t OH, int64_t OW, int32_t in_zero, double ratio,
                               int32_t out_zero, uint8_t* out) {
  const int64_t pix = N * OH * OW;
  const bool vec = pool_vector(sC);
  (void)vec;
  const int nt = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), std::max<int64_t>(N * C * H * W >> 20, 1)));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t p = 0; p < pix; ++p) {
    const int64_t n = p / (OH * OW), oh = (p / OW) % OH, ow = p % OW;
    const int64_t h0 = oh * H / OH, h1 = ((oh + 1) * H + OH - 1) / OH;
    const int64_t w0 = ow * W / OW, w1 = ((ow + 1) * W + OW - 1) / OW;
    const int64_t count = (h1 - h0) * (w1 - w0);
    const float mult = static_cast<float>(ratio / static_cast<double>(count));
    const int32_t zsum = static_cast<int32_t>(count) * in_zero;
    uint8_t* o = out + p * C;
#ifdef PYIMGCLS_X86
    if (vec && count <= kMaxPoolTaps) {
      const uint8_t* tap[kMaxPoolTaps];
      int t = 0;
      for (int64_t ih = h0; ih < h1; ++ih)
        for (int64_t iw = w0; iw < w1; ++iw) tap[t++] = x + n * sN + ih * sH + iw * sW;
      avg_pixel_avx512(tap, t, C, zsum, mult, out_zero, o);
      continue;
    }
#endif
    for (int64_t c = 0; c < C; ++c) {
      int32_t s = 0;
      for (int64_t ih = h0; ih < h1; ++ih)
        for (int64_t iw = w0; iw < w1; ++iw) s += x[n * sN + c * sC + ih * sH + iw * sW];
      int32_t q = rne_term(static_cast<float>(s - zsum) * mult) + out_zero;
      o[c] = static_cast<uint8_t>(q < 0 ? 0 : (q > 255 ? 255 : q));
    }
  }
}

namespace {

// quant.h: quant_quantize's rule for one value
inline uint8_t quantize_one(float x, float inv_scale, int32_t zero_point) {
  float v = x * inv_scale;
  v = v != v ? 0.f : (v < -256.f ? -256.f : (v > 512.f ? 512.f : v));   // NaN -> real 0
  const int32_t q = static_cast<int32_t>(std::lrint(v)) + zero_point;
  return static_cast<uint8_t>(q < 0 ? 0 : (q > 255 ? 255 : q));
}

void quantize_row_generic(const float* x, int64_t n, float inv_scale, int32_t zero_point, uint8_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = quantize_one(x[i], inv_scale, zero_point);
}

#ifdef PYIMGCLS_X86
// 16 values per step with the same IEEE operations lane-wise (vmulps, NaN -> 0 by an unordered
// compare, min / max on non-NaN values, vcvtps2dq rounding to nearest even as lrint's cvtss2si), so
// bit-identical to quantize_one; ~1.3 ns per value scalar (ResNet-18 224x224 batch 16: 3 ms) -> ~0.1.
PYIMGCLS_TARGET_VNNI void quantize_row_avx512(const float* x, int64_t n, float inv_scale, int32_t zero_point,
                                              uint8_t* out) {
  const __m512 vi = _mm512_set1_ps(inv_scale), lo = _mm512_set1_ps(-256.f), hi = _mm512_set1_ps(512.f);
  const __m512 zero = _mm512_setzero_ps();
  const __m512i vz = _mm512_set1_epi32(zero_point), q0 = _mm512_setzero_si512(), q255 = _mm512_set1_epi32(255);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i), vi);
    v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), zero);
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(v), vz);
    q = _mm512_min_epi32(_mm512_max_epi32(q, q0), q255);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtepi32_epi8(q));
  }
  for (; i < n; ++i) out[i] = quantize_one(x[i], inv_scale, zero_point);
}
#endif

#ifdef PYIMGCLS_X86
// quant_quantize_nhwc into 4 output channels (an RGB image padded to 4: the stem's input): np pixels of
// C <= 4 channel planes (x channel c at x + c * sC) -> o [np][4], channels C .. 3 = zp. 16 pixels a
// step, each channel quantised with quantize_row_avx512's operations lane for lane (so the same
// bytes) and the 4 bytes of a pixel assembled in its 32-bit lane: one 64-byte store, where the
// generic interleave wrote one byte at a time (~1 ms at 224x224 batch 16).
PYIMGCLS_TARGET_VNNI void quantize_px4_avx512(const float* x, int64_t sC, int64_t C, int64_t np, float inv_scale,
                                              int32_t zero_point, uint8_t zp, uint8_t* o) {
  const __m512 vi = _mm512_set1_ps(inv_scale), lo = _mm512_set1_ps(-256.f), hi = _mm512_set1_ps(512.f);
  const __m512 zero = _mm512_setzero_ps();
  const __m512i vz = _mm512_set1_epi32(zero_point), q0 = _mm512_setzero_si512(), q255 = _mm512_set1_epi32(255);
  int32_t fill = 0;
  for (int64_t c = C; c < 4; ++c) fill |= static_cast<int32_t>(zp) << (8 * c);
  for (int64_t p = 0; p < np; p += 16) {
    const __mmask16 k = np - p >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (np - p)) - 1);
    __m512i word = _mm512_set1_epi32(fill);
    for (int64_t c = 0; c < C; ++c) {
      __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + c * sC + p), vi);
      v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), zero);
      v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
      __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(v), vz);
      q = _mm512_min_epi32(_mm512_max_epi32(q, q0), q255);
      word = _mm512_or_si512(word, _mm512_slli_epi32(q, static_cast<unsigned>(8 * c)));
    }
    _mm512_mask_storeu_epi32(o + 4 * p, k, word);
  }
}
#endif

using QuantizeRowFn = void (*)(const float*, int64_t, float, int32_t, uint8_t*);

QuantizeRowFn quantize_row_for(QPath p) {
#ifdef PYIMGCLS_X86
  if (p == QPath::Vnni) return &quantize_row_avx512;
#endif
  (void)p;
  return &quantize_row_generic;   // the AVX2 path too: a correctness path, as its GEMM
}

}  // namespace

void quant_quantize(const float* x, int64_t n, float inv_scale, int32_t zero_point, uint8_t* out) {
  const QuantizeRowFn row = quantize_row_for(active_qpath());
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int nt = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), std::max<int64_t>(n >> 20, 1)));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t c = 0; c < chunks; ++c) row(x + c * kChunk, std::min(kChunk, n - c * kChunk), inv_scale, zero_point,
                                          out + c * kChunk);
}

void quant_quantize_nhwc(const float* x, int64_t N, int64_t C, int64_t HW, int64_t sN, int64_t sC, float inv_scale,
                         int32_t zero_point, uint8_t* out, int64_t Cout) {
  if (Cout < C) throw std::invalid_argument("quant_quantize_nhwc: Cout must be at least C");
  const uint8_t zp = static_cast<uint8_t>(zero_point < 0 ? 0 : (zero_point > 255 ? 255 : zero_point));
  const QuantizeRowFn row = quantize_row_for(active_qpath());
  // Blocks of 64 pixels: each channel's 64 values quantised as a row into tmp [C, 64], then
  // interleaved into the NHWC output (C bytes per pixel; the image's 3 channels: one pass instead of
  // quantising NCHW and a separate channels_last copy of the uint8 tensor, 1.5 ms at 224x224 batch 16).
  constexpr int64_t kPB = 64;
  const int64_t blocks = (HW + kPB - 1) / kPB, tasks = N * blocks;
  const int nt = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), std::max<int64_t>(N * Cout * HW >> 20, 1)));
#ifdef PYIMGCLS_X86
  const bool px4 = Cout == 4 && active_qpath() == QPath::Vnni;
#else
  const bool px4 = false;
#endif
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    std::vector<uint8_t> tmp(static_cast<size_t>(C * kPB));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t n = t / blocks, p0 = (t % blocks) * kPB, np = std::min(kPB, HW - p0);
#ifdef PYIMGCLS_X86
      if (px4) {
        quantize_px4_avx512(x + n * sN + p0, sC, C, np, inv_scale, zero_point, zp, out + (n * HW + p0) * 4);
        continue;
      }
#endif
      for (int64_t c = 0; c < C; ++c) row(x + n * sN + c * sC + p0, np, inv_scale, zero_point, tmp.data() + c * kPB);
      uint8_t* o = out + (n * HW + p0) * Cout;
      for (int64_t p = 0; p < np; ++p) {
        for (int64_t c = 0; c < C; ++c) o[p * Cout + c] = tmp[c * kPB + p];
        for (int64_t c = C; c < Cout; ++c) o[p * Cout + c] = zp;
      }
    }
  }
}

}  // namespace pyimgcls::cpu
