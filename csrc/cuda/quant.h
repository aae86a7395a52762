// CUDA quantised (int8) family (csrc/cuda/quant.cu): the requantising integer GEMM on the IMMA tensor
// cores (mma.sync m16n8k32 u8 x s8 -> s32), the uint8 im2col that turns a convolution into it,
// quantisation and the uint8 pools. Semantics: csrc/cpu/quant.cpp ("Semantics"), bit for bit.
//
// This header holds the GEMM's tile constants and index maps, written once and used by the kernel
// (nvcc) and the host code (g++, CPU-only builds too: quant_cuda_packed_k for the weight packing).
// tests/test_quant_cuda_emulation.py runs the kernel's data path in NumPy with the same maps (same
// names, same expressions: the test also compares the expressions' text with this file), and an
// mma.m16n8k32 written from the PTX ISA's fragment tables, so a wrong map fails a CPU test.
// Plain C++17 outside nvcc: no CUDA header, no device intrinsic.
#pragma once
#include <cstdint>
#include <string>

#include "../common.h"  // PYIMGCLS_HD
#include "plan.h"

namespace pyimgcls::cuda::q8 {

// CTA tile: kWarpsM x kWarpsN warps, each owning a 32 x 32 block of the output (kMI = 2 m16 tiles x
// kNI = 4 n8 tiles: 8 mma per 32 of K, 32 int32 accumulators per lane). K walks in tiles of kTileK
// = 64 bytes (two m16n8k32 steps), double-buffered in shared memory with cp.async.
inline constexpr int kWarpsM = 2, kWarpsN = 2;
inline constexpr int kThreads = 32 * kWarpsM * kWarpsN;
inline constexpr int kMI = 2, kNI = 4;
inline constexpr int kTileM = 16 * kMI * kWarpsM;   // 64 output rows (pixels) per CTA
inline constexpr int kTileN = 8 * kNI * kWarpsN;    // 64 output channels per CTA
inline constexpr int kTileK = 64;                    // bytes of K per stage
inline constexpr int kStepK = 32;                    // K of one mma.m16n8k32
inline constexpr int kStages = 2;
// Shared row stride: 64 data bytes + 16 of padding. 80 bytes = 20 banks, so the 8 rows g = lane / 4
// a fragment load touches start on banks 0, 20, 8, 28, 16, 4, 24, 12 and the 4 words t = lane % 4
// of each row fill the gaps: the 32 lanes hit 32 distinct banks. 16-byte multiple: cp.async dst.
inline constexpr int kSmemStride = kTileK + 16;
inline constexpr int kChunksPerRow = kTileK / 16;  // 16-byte chunks of one tile row
// Each operand tile is kTileM (= kTileN) rows x kChunksPerRow chunks; each thread copies
// kChunkIters of them per stage.
inline constexpr int kChunkIters = kTileM * kChunksPerRow / kThreads;
inline constexpr int kTileBytes = kTileM * kSmemStride;                  // one operand, one stage
inline constexpr int kSmemBytes = 2 * kStages * kTileBytes;             // A and W, both stages: 20480
static_assert(kTileM == kTileN, "the chunk map serves both operand tiles");
static_assert(kTileM * kChunksPerRow % kThreads == 0, "whole chunks per thread");

struct RowCol {
  int row, col;
};

// Copy chunk c (0 <= c < kTileM * kChunksPerRow) of a stage: tile row c / kChunksPerRow, bytes
// 16 * (c % kChunksPerRow) .. +15 of that row. Thread tid copies chunks tid + i * kThreads.
PYIMGCLS_HD RowCol load_chunk(int c) { return {c / kChunksPerRow, (c % kChunksPerRow) * 16}; }

// A fragment of mma.m16n8k32 .u8 (16 x 32, row-major): register r (0..3) of `lane` holds the 4
// K-consecutive bytes at (row, col .. col + 3); PTX ISA: rows g (r = 0, 2) / g + 8 (r = 1, 3),
// columns 4t (r = 0, 1) / 4t + 16 (r = 2, 3), g = lane / 4, t = lane % 4.
PYIMGCLS_HD RowCol a_frag(int lane, int r) { return {(lane >> 2) + ((r & 1) << 3), 4 * (lane & 3) + ((r >> 1) << 4)}; }

// B fragment (32 x 8, "col": stored as the W tile [n][k]): register r (0..1) of `lane` holds the 4
// bytes k .. k + 3 of column n: n = g, k = 4t (r = 0) / 4t + 16 (r = 1).
PYIMGCLS_HD RowCol b_frag(int lane, int r) { return {lane >> 2, 4 * (lane & 3) + (r << 4)}; }

// Accumulator register r (0..3) of `lane`: element (row, col) of the m16n8 int32 D tile; rows are
// output rows (pixels), columns output channels.
PYIMGCLS_HD RowCol acc_frag(int lane, int r) { return {(lane >> 2) + ((r >> 1) << 3), 2 * (lane & 3) + (r & 1)}; }

// Valid bytes of a 16-byte A chunk starting at column k of row m (cp.async src-size; the rest is
// zero-filled): rows past M and columns past K read nothing.
PYIMGCLS_HD int a_chunk_bytes(int64_t m, int64_t M, int64_t k, int64_t K) {
  return m < M ? static_cast<int>(K - k < 0 ? 0 : (K - k > 16 ? 16 : K - k)) : 0;
}

// How the kernel stages A (template argument of quant_gemm_fwd_kernel):
//   kAGather   byte loads of any uint8 [M, K] matrix (rows of any alignment and stride);
//   kACpAsync  cp.async 16-byte chunks of a matrix with 16-byte aligned rows (lda % 16 == 0);
//   kAConv     implicit GEMM of a convolution: row m = output pixel (n, oh, ow), column k = (tap i, tap j,
//              channel c) of an NHWC-dense input (channel stride 1, C % 16 == 0 so that a chunk never
//              crosses a tap, 16-byte aligned base and pixel strides): chunks copied straight from the
//              image with cp.async, padding taps stored as 16 bytes of a_zero (im2col's pad), no
//              column matrix in memory.
inline constexpr int kAGather = 0, kACpAsync = 1, kAConv = 2;

// The packed weight's row length: K rounded up to whole K tiles and zero-filled, so weight chunks
// are never partial in K and a K tail contributes 0 whatever the A side holds there.
PYIMGCLS_HD int64_t packed_k(int64_t K) { return (K + kTileK - 1) / kTileK * kTileK; }

}  // namespace pyimgcls::cuda::q8

namespace pyimgcls::cuda {

// The launch decision of quant_gemm / quant_conv_gemm (also in CPU-only builds, for pyimgcls.explain):
// a_mode one of q8::kAGather, kACpAsync, kAConv (quant_gemm picks one of the first two).
inline LaunchPlan quant_gemm_plan(int64_t M, int64_t N, int64_t K, int a_mode) {
  LaunchPlan p;
  p.kernel = "quant_gemm_fwd_kernel<" + std::to_string(a_mode) + ">";
  p.tensor_cores = true;
  p.vectorized = a_mode != q8::kAGather;
  p.tile_m = q8::kTileM;
  p.tile_n = q8::kTileN;
  p.tile_k = q8::kTileK;
  p.ctas = ((M + q8::kTileM - 1) / q8::kTileM) * ((N + q8::kTileN - 1) / q8::kTileN);
  (void)K;
  return p;
}

// The requantisation epilogue's arguments (csrc/cpu/quant.h QuantEpilogue, plus the column sums and
// the activation zero point): device pointers.
struct QuantEpilogueArgs {
  const int32_t* colsum = nullptr;   // [N] sum_k W[n, k]
  const int32_t* bias = nullptr;     // [N] or null
  const float* mult = nullptr;       // [N]
  const uint8_t* res = nullptr;      // [M, N] row stride ldr, unit column stride; or null
  int64_t ldr = 0;
  int32_t a_zero = 0, res_zero = 0, out_zero = 0, qmin = 0, qmax = 255;
  float res_mult = 0.f;
  bool float_out = false;
  int act = 0;                       // float output only: 0 none, 1 relu, 2 relu6
};

// out[m, n] = epilogue(sum_k (A[m, k] - a_zero) * W[n, k] + bias[n]), m < M, n < N.
// a: uint8 [M, K], row stride lda, unit column stride; w: the packed weight int8 [N, packed_k(K)]
// (zero past K); out uint8 or float32 [M, N], row stride ldo. Asynchronous on `stream`; sm_80+.
void quant_gemm(const uint8_t* a, int64_t M, int64_t K, int64_t lda, const int8_t* w, int64_t N,
                const QuantEpilogueArgs& ep, void* out, int64_t ldo, int device, uintptr_t stream);

// Convolution geometry of the kAConv mode (element strides of x [N, C, H, W]; sC == 1).
struct QuantConvGeom {
  int64_t sN = 0, sH = 0, sW = 0;
  int H = 0, W = 0, C = 0, KW = 0, SH = 1, SW = 1, PH = 0, PW = 0, DH = 1, DW = 1, OH = 1, OW = 1;
};

// A groups = 1 convolution as one implicit GEMM (no column matrix): out [N * OH * OW, O] (row stride
// ldo) = epilogue of sum over (i, j, c) of (x[n, c, oh * SH - PH + i * DH, ow * SW - PW + j * DW] -
// a_zero) * W[o, (i * KW + j) * C + c], out-of-image taps reading a_zero; bit-identical to
// quant_im2col (pad a_zero) + quant_gemm. Requires quant_conv_gemm_ok.
void quant_conv_gemm(const uint8_t* x, int64_t N, const QuantConvGeom& g, int64_t KH, const int8_t* w, int64_t O,
                     const QuantEpilogueArgs& ep, void* out, int64_t ldo, int device, uintptr_t stream);
// Whether quant_conv_gemm takes this input (host-side test, CPU-only builds too).
inline bool quant_conv_gemm_ok(uintptr_t x, int64_t C, int64_t sC, int64_t sN, int64_t sH, int64_t sW) {
  return sC == 1 && C % 16 == 0 && x % 16 == 0 && sN % 16 == 0 && sH % 16 == 0 && sW % 16 == 0;
}

// col[(n * OH + oh) * OW + ow, (i * KW + j) * CG + c] = x[n, c0 + c, oh * SH - PH + i * DH,
// ow * SW - PW + j * DW] (element strides sN, sC, sH, sW), `pad` outside the image.
void quant_im2col(const uint8_t* x, int64_t N, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH,
                  int64_t sW, int64_t c0, int64_t CG, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,
                  int64_t PW, int64_t DH, int64_t DW, int64_t OH, int64_t OW, uint8_t pad, uint8_t* col, int device,
                  uintptr_t stream);

// out = clamp(rne(clamp(x * inv_scale, -256, 512)) + zero_point, 0, 255), NaN read as 0; n dense values.
void quant_quantize(const float* x, int64_t n, float inv_scale, int32_t zero_point, uint8_t* out, int device,
                    uintptr_t stream);

// Pools into a dense NHWC uint8 output from x [N, C, H, W] (element strides); semantics of
// csrc/cpu/quant.h's quant_max_pool2d / quant_adaptive_avg_pool2d.
void quant_max_pool2d(const uint8_t* x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sC,
                      int64_t sH, int64_t sW, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW,
                      int64_t DH, int64_t DW, int64_t OH, int64_t OW, uint8_t* out, int device, uintptr_t stream);
void quant_adaptive_avg_pool2d(const uint8_t* x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sC,
                               int64_t sH, int64_t sW, int64_t OH, int64_t OW, int32_t in_zero, double ratio,
                               int32_t out_zero, uint8_t* out, int device, uintptr_t stream);

}  // namespace pyimgcls::cuda
