// CPU quantised (int8) family: uint8 activations x per-output-channel symmetric int8 weights ->
// int32 accumulation -> requantised uint8 (or float) output. See quant.cpp for the algorithm and
// the exact integer / rounding semantics every backend reproduces bit for bit.
#pragma once
#include <cstdint>

#include "../common.h"

namespace pyimgcls::cpu {

// Packed weight layout, the same for every instruction-set path: output channels in blocks of
// kQuantNB = 16, K in groups of 4; block nb holds K4 = ceil(K / 4) groups of 64 bytes, byte
// [c * 4 + j] of group k4 being W[nb * 16 + c, 4 * k4 + j] (0 past N or K). One 64-byte group is
// one zmm operand of vpdpbusd (16 int32 lanes x 4 bytes) or two ymm operands of the AVX2 path.
constexpr int64_t kQuantNB = 16;

inline int64_t quant_k4(int64_t K) { return (K + 3) / 4; }
inline int64_t quant_nblocks(int64_t N) { return (N + kQuantNB - 1) / kQuantNB; }
inline int64_t quant_packed_bytes(int64_t N, int64_t K) { return quant_nblocks(N) * quant_k4(K) * 64; }

// w: int8 [N, K] through element strides (swn, swk); packed: quant_packed_bytes(N, K) bytes;
// colsum: int32 [N], colsum[n] = sum_k W[n, k] (the zero-point correction of the GEMM).
void quant_pack_weight(const int8_t* w, int64_t N, int64_t K, int64_t swn, int64_t swk, int8_t* packed,
                       int32_t* colsum);

// The requantisation epilogue's arguments (quant.cpp: "Semantics").
struct QuantEpilogue {
  const int32_t* bias = nullptr;      // [N] int32 in the accumulator's scale, or null
  const float* mult = nullptr;        // [N] combined scale: s_in * s_w[n] / s_out (float output: s_in * s_w[n])
  const uint8_t* res = nullptr;       // residual [M, N] uint8, row stride ldr, unit column stride; or null
  int64_t ldr = 0;
  int32_t res_zero = 0;
  float res_mult = 0.f;               // s_res / s_out
  int32_t out_zero = 0;
  int32_t qmin = 0, qmax = 255;       // clamp in the quantised domain (relu / relu6 are clamps here)
  bool float_out = false;             // write float32 float(acc) * mult[n] instead (then act applies)
  Act act = Act::None;                // float output only
};

// out[m, n] = epilogue(sum_k (A[m, k] - a_zero) * W[n, k] + bias[n]) for m < M, n < N.
// a: uint8 [M, K], row stride lda, unit column stride; out: uint8 or float32 [M, N], row stride ldo,
// unit column stride.
void quant_gemm(const uint8_t* a, int64_t M, int64_t K, int64_t lda, int32_t a_zero, const int8_t* packed,
                const int32_t* colsum, int64_t N, const QuantEpilogue& ep, void* out, int64_t ldo);

// im2col of one group of a uint8 image batch for a k x k convolution, padding with `pad` (the
// input zero point, i.e. real 0): col[(n * OH + oh) * OW + ow, (i * KW + j) * CG + c] =
// x[n, c0 + c, oh * SH - PH + i * DH, ow * SW - PW + j * DW] (element strides sN, sC, sH, sW).
void quant_im2col(const uint8_t* x, int64_t N, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH,
                  int64_t sW, int64_t c0, int64_t CG, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,
                  int64_t PW, int64_t DH, int64_t DW, int64_t OH, int64_t OW, uint8_t pad, uint8_t* col);

// A whole groups = 1 convolution: quant_gemm of the im2col of x (channels 0 .. C, padding a_zero)
// against the packed [O, KH * KW * C] weight, without the column matrix: each task gathers its rows
// into a thread-local buffer (on the vnni path with NHWC input, sC == 1, sW == C, DW == 1 and
// KW * C % 4 == 0, none: the kernel rows are read in place, quant.cpp: micro_vnni_ind). out
// [N * OH * OW, O] (row stride ldo), results identical to quant_im2col + quant_gemm. tapsum: null,
// or quant_tap_sums of the packed weight (C % 4 == 0): the taps of the padding are then skipped on
// that path instead of multiplied with the zero point (same results).
void quant_conv_gemm(const uint8_t* x, int64_t N, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH,
                     int64_t sW, int64_t C, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW,
                     int64_t DH, int64_t DW, int64_t OH, int64_t OW, int32_t a_zero, const int8_t* packed,
                     const int32_t* colsum, const int32_t* tapsum, int64_t O, const QuantEpilogue& ep, void* out,
                     int64_t ldo);

// The packed [O, KH * KW * C] conv weight's sums per tap: out int32 [KH * KW, O], out[t, n] = sum over
// c < C of W[n, t * C + c] (quant_conv_gemm's tapsum). C % 4 == 0.
void quant_tap_sums(const int8_t* packed, int64_t O, int64_t KH, int64_t KW, int64_t C, int32_t* out);

// Quantisation of n dense float32 values: out = clamp(rne(clamp(x * inv_scale, -256, 512)) +
// zero_point, 0, 255), NaN read as 0 (one fp32 multiply, as pyimgcls/ops/quant.py defines it).
void quant_quantize(const float* x, int64_t n, float inv_scale, int32_t zero_point, uint8_t* out);
// The same rule from a float32 [N, C, H, W] image (element strides sN, sC; H and W dense: pixel p of
// plane (n, c) at x[n * sN + c * sC + p], p < HW = H * W) into a dense NHWC uint8 output of Cout >= C
// channels, out[(n * HW + p) * Cout + c], the channels from C on set to zero_point (real 0: an RGB
// image padded to 4 channels, whose 7x7 kernel rows are then 28 bytes, a multiple of 4).
void quant_quantize_nhwc(const float* x, int64_t N, int64_t C, int64_t HW, int64_t sN, int64_t sC, float inv_scale,
                         int32_t zero_point, uint8_t* out, int64_t Cout);

// Pooling on uint8 NHWC outputs (out [N, OH, OW, C] contiguous) from x [N, C, H, W] (element
// strides). Max: taps outside the image are skipped (padding is -inf), the result keeps the input's
// scale and zero point. Adaptive average: window rows [floor(oh * H / OH), ceil((oh + 1) * H / OH))
// (same for columns); out = clamp(rne(clamp(float(sum(x - in_zero)) * float(ratio / count), +-2^22))
// + out_zero, 0, 255), ratio = s_in / s_out, the float32 factor rounded once from double.
void quant_max_pool2d(const uint8_t* x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sC,
                      int64_t sH, int64_t sW, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW,
                      int64_t DH, int64_t DW, int64_t OH, int64_t OW, uint8_t* out);
void quant_adaptive_avg_pool2d(const uint8_t* x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sC,
                               int64_t sH, int64_t sW, int64_t OH, int64_t OW, int32_t in_zero, double ratio,
                               int32_t out_zero, uint8_t* out);

// Which GEMM path runs here: "vnni" (AVX-512 VNNI vpdpbusd), "avx2" (vpmaddwd on 16-bit widened
// operands) or "generic". PYIMGCLS_CPU_ISA=generic|avx2|avx512 lowers it (avx512 means VNNI here).
const char* quant_isa();

}  // namespace pyimgcls::cpu
