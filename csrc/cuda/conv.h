// CUDA convolution family (float32 / float16 / bfloat16). Host launchers (conv.cu) and, CUDA-free so
// that g++ builds and tests them too:
//   * conv2d_plan(): the launchers' decision (kernel, tile, grid, splits, launches), which the
//     launchers dispatch on and the bindings expose in every build for pyimgcls.explain;
//   * the index arithmetic of the implicit-GEMM gathers (ConvIndex and friends): 32-bit fast
//     division, per-row pixel split, the incremental (tap, channel) walk of GEMM-K, and the element
//     offsets of each operand. The kernels call exactly these functions; tests/test_conv_cuda_plan.py
//     compiles them with g++ and checks them against the plain formula.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>

#include "../common.h"
#include "../conv_geometry.h"
#include "plan.h"

namespace pyimgcls::cuda {

// ConvGeometry and Strides4: csrc/conv_geometry.h, shared with the CPU kernels and the bindings.

// ---------------------------------------------------------------------------------------------
// Tiles of the implicit-GEMM kernels (conv.cu); the plan reports them and sizes the grids with them.
// ---------------------------------------------------------------------------------------------
enum ConvPass : int { kFwd = 0, kDgrad = 1, kWgrad = 2 };

constexpr int TC_BM = 128, TC_BN = 128, TC_BK = 32, TC_STAGES = 3, TC_THREADS = 256;  // fp16 / bf16
constexpr int SM_BM = 64, SM_BN = 64, SM_BK = 16, SM_THREADS = 256;                   // fp32 SIMT
constexpr int DW_THREADS = 256;                                                       // depthwise fwd

// Shared-memory layout of conv2d_igemm_kernel (conv.cu), also compiled into its CPU emulation
// (tests/emu/conv_tc_emu.cpp): padded rows instead of the GEMM's swizzle.
constexpr int TC_LD = TC_BK + 8;   // [rows][BK] tile row (80 bytes): ldmatrix rows hit 8 distinct 16-byte bank groups
constexpr int TC_LDT = TC_BM + 8;  // [BK][rows] tile row of wgrad's vector path (272 bytes), same property
constexpr int TC_PIPE_BYTES = TC_STAGES * (TC_BM + TC_BN) * TC_LD * 2;
constexpr int TC_EPI_LD = TC_BN + 8;  // fp32 staging row: float2 stores of a half-warp hit 32 distinct banks
static_assert(TC_BK * TC_LDT <= TC_BM * TC_LD, "wgrad's k-major stage must fit the row-major one");
static_assert(TC_BM / 2 * TC_EPI_LD * 4 <= TC_PIPE_BYTES, "half-tile fp32 staging must fit the pipeline ring");

// Largest pixel count / GEMM-K extent the 32-bit index arithmetic serves (see ConvIndex); the margin
// keeps a tile's row and k indices (base + up to one tile) below 2^31.
constexpr int64_t kConvIndexLimit = (int64_t(1) << 31) - (int64_t(1) << 16);

// ---------------------------------------------------------------------------------------------
// 32-bit fast division by a runtime divisor d >= 1 (Granlund-Montgomery round-up method): with
// s = ceil(log2 d) and mul = floor(2^32 (2^s - d) / d) + 1, n / d = (umulhi(n, mul) + n) >> s for
// every 0 <= n < 2^31 (the sum stays below 2^32). One IMAD.HI + IADD + SHF instead of the ~60-
// instruction 64-bit division subroutine.
// ---------------------------------------------------------------------------------------------
struct FastDiv {
  uint32_t d = 1, mul = 1, shift = 0;
  FastDiv() = default;
  explicit FastDiv(int64_t divisor) : d(static_cast<uint32_t>(divisor)) {
    while ((uint64_t(1) << shift) < d) ++shift;
    mul = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
  }
  PYIMGCLS_HD int div(int n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(static_cast<uint32_t>(n), mul);
#else
    const uint32_t hi = static_cast<uint32_t>((uint64_t(static_cast<uint32_t>(n)) * mul) >> 32);
#endif
    return static_cast<int>((hi + static_cast<uint32_t>(n)) >> shift);
  }
};

// 32-bit geometry of one pass plus the fast divisors its gathers need. Built once on the host.
// Limits (conv2d_index_fits; the launchers refuse larger problems): every pixel count (N*H*W,
// N*OH*OW) and every GEMM-K extent below 2^31; padded spatial sizes below 2^30.
struct ConvIndex {
  int H, W, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw;
  int Cg, Og;
  int kc;                     // channels per tap along GEMM-K: Cg (fwd), Og (dgrad); Cg (wgrad columns)
  FastDiv f_OW, f_OH, f_W, f_H, f_KW, f_kc, f_sh, f_sw;
};

inline ConvIndex make_conv_index(const ConvGeometry& s, int pass) {
  ConvIndex ix{};
  ix.H = static_cast<int>(s.H); ix.W = static_cast<int>(s.W);
  ix.OH = static_cast<int>(s.OH); ix.OW = static_cast<int>(s.OW);
  ix.KH = static_cast<int>(s.KH); ix.KW = static_cast<int>(s.KW);
  ix.sh = static_cast<int>(s.stride_h); ix.sw = static_cast<int>(s.stride_w);
  ix.ph = static_cast<int>(s.pad_h); ix.pw = static_cast<int>(s.pad_w);
  ix.dh = static_cast<int>(s.dil_h); ix.dw = static_cast<int>(s.dil_w);
  const int64_t groups = std::max<int64_t>(s.groups, 1);
  ix.Cg = static_cast<int>(s.C / groups); ix.Og = static_cast<int>(s.O / groups);
  ix.kc = pass == kDgrad ? ix.Og : ix.Cg;
  ix.f_OW = FastDiv(std::max<int64_t>(s.OW, 1)); ix.f_OH = FastDiv(std::max<int64_t>(s.OH, 1));
  ix.f_W = FastDiv(std::max<int64_t>(s.W, 1)); ix.f_H = FastDiv(std::max<int64_t>(s.H, 1));
  ix.f_KW = FastDiv(std::max<int64_t>(s.KW, 1)); ix.f_kc = FastDiv(std::max(ix.kc, 1));
  ix.f_sh = FastDiv(std::max<int64_t>(s.stride_h, 1)); ix.f_sw = FastDiv(std::max<int64_t>(s.stride_w, 1));
  return ix;
}

// A pixel of the grid a GEMM axis enumerates: (image, row, column); n = -1 marks a row past the end.
struct PixelRC {
  int n, y, x, pad;
};

// Pixel index m (< 2^31) over [N, h, w] -> (n, y, x); fh / fw divide by h / w.
PYIMGCLS_HD PixelRC split_pixel(int m, int h, int w, const FastDiv& fh, const FastDiv& fw) {
  const int t = fw.div(m);
  const int n = fh.div(t);
  return PixelRC{n, t - n * h, m - t * w, 0};
}

// Position along GEMM-K = (i * KW + j) * kc + c of a fwd / dgrad gather, or of a wgrad B column.
struct KPos {
  int c, j, i;
};

PYIMGCLS_HD KPos k_position(const ConvIndex& ix, int k) {
  const int tap = ix.f_kc.div(k);
  const int i = ix.f_KW.div(tap);
  return KPos{k - tap * ix.kc, tap - i * ix.KW, i};
}

// The walk: move a position `step` (0 <= step < 2^30) further along GEMM-K. Channel carries go into
// the tap column, column carries into the tap row, each by one fast division (no loop whose trip
// count depends on kc); the kernels advance each thread's position by BK per k-tile instead of
// re-splitting k.
PYIMGCLS_HD void k_advance(const ConvIndex& ix, KPos& p, int step) {
  p.c += step;
  if (p.c >= ix.kc) {
    const int q = ix.f_kc.div(p.c);
    p.c -= q * ix.kc;
    p.j += q;
    if (p.j >= ix.KW) {
      const int r = ix.f_KW.div(p.j);
      p.j -= r * ix.KW;
      p.i += r;
    }
  }
}

// Element offset in the conv input x (strides xs) that output pixel o = (n, oh, ow) reads at tap
// (i, j), channel c of group g; -1 in the padding, for a row past the end or a tap past the kernel
// (i >= KH: the k range's end). fwd A (rows = output pixels) and wgrad B (k = output pixels).
PYIMGCLS_HD int64_t x_tap_offset(const ConvIndex& ix, const Strides4& xs, const PixelRC& o, const KPos& k, int g) {
  if (o.n < 0 || k.i >= ix.KH) return -1;
  const int ih = o.y * ix.sh - ix.ph + k.i * ix.dh;
  const int iw = o.x * ix.sw - ix.pw + k.j * ix.dw;
  if (ih < 0 || ih >= ix.H || iw < 0 || iw >= ix.W) return -1;
  return o.n * xs.n + (static_cast<int64_t>(g) * ix.Cg + k.c) * xs.c + static_cast<int64_t>(ih) * xs.h +
         static_cast<int64_t>(iw) * xs.w;
}

// dgrad A: offset in the output gradient (strides gs) that input pixel p = (n, y, x) meets through tap
// (i, j) and out channel o of group g: oh = (y + ph - i*dh) / sh when that is integral and in range;
// -1 otherwise.
PYIMGCLS_HD int64_t dgrad_tap_offset(const ConvIndex& ix, const Strides4& gs, const PixelRC& p, const KPos& k,
                                     int g) {
  if (p.n < 0 || k.i >= ix.KH) return -1;
  const int th = p.y + ix.ph - k.i * ix.dh;
  const int tw = p.x + ix.pw - k.j * ix.dw;
  if (th < 0 || tw < 0) return -1;
  const int oh = ix.f_sh.div(th), ow = ix.f_sw.div(tw);
  if (oh * ix.sh != th || ow * ix.sw != tw || oh >= ix.OH || ow >= ix.OW) return -1;
  return p.n * gs.n + (static_cast<int64_t>(g) * ix.Og + k.c) * gs.c + static_cast<int64_t>(oh) * gs.h +
         static_cast<int64_t>(ow) * gs.w;
}

// fwd / dgrad B: weight element of GEMM row `row` (out channel in fwd, in channel in dgrad) at k.
// bs are the strides as the GEMM sees them (row, k-channel, kh, kw); group g starts b_group further.
PYIMGCLS_HD int64_t weight_offset(const ConvIndex& ix, const Strides4& bs, int64_t b_group, int row, const KPos& k,
                                  int g) {
  if (k.i >= ix.KH) return -1;
  return g * b_group + static_cast<int64_t>(row) * bs.n + static_cast<int64_t>(k.c) * bs.c +
         static_cast<int64_t>(k.i) * bs.h + static_cast<int64_t>(k.j) * bs.w;
}

// wgrad A: output-gradient element of out channel m (in group g) at output pixel o.
PYIMGCLS_HD int64_t wgrad_a_offset(const ConvIndex& ix, const Strides4& gs, int m, const PixelRC& o, int g) {
  if (o.n < 0) return -1;
  return o.n * gs.n + (static_cast<int64_t>(g) * ix.Og + m) * gs.c + static_cast<int64_t>(o.y) * gs.h +
         static_cast<int64_t>(o.x) * gs.w;
}

// ---------------------------------------------------------------------------------------------
// The launch plan
// ---------------------------------------------------------------------------------------------
inline int64_t conv_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// groups == C with one input channel per group (O = C * mult): the direct depthwise kernels.
inline bool conv2d_is_depthwise(const ConvGeometry& s) { return s.groups == s.C && s.C > 0; }

// Pixel splits of the depthwise wgrad: ~2 waves of 8 resident 256-thread blocks per SM, counting
// channel tiles of 32; each split keeps >= 1024 pixels (so the fixed per-block reduction stays small
// against the loop) and the grid's y extent <= 65535.
inline int64_t conv2d_depthwise_wgrad_splits(const ConvGeometry& s, int sm_count) {
  const int64_t blocks = conv_cdiv(s.O, 32) * s.KH * s.KW;
  const int64_t P = s.N * s.OH * s.OW;
  int64_t splits = conv_cdiv(16 * int64_t(std::max(sm_count, 1)), std::max<int64_t>(blocks, 1));
  splits = std::min(splits, std::max<int64_t>(1, P / 1024));
  return std::max<int64_t>(1, std::min<int64_t>(splits, 256));
}

// Channels per block of the depthwise wgrad: 32 consecutive channels per warp when the gradient is
// channels_last (fewer for fewer channels); else one channel per block and 256 consecutive pixels.
inline int conv2d_depthwise_wgrad_tile(const ConvGeometry& s, Strides4 gs) {
  int ct = 1;
  if (gs.c == 1)
    while (ct < 32 && ct < s.O) ct *= 2;
  return ct;
}

// The depthwise dgrad's 16-byte path: VEC (16 bytes of) consecutive channels of g and dx are one
// aligned pack, so channels_last g and dx, no channel multiplier, C and every other stride a multiple
// of VEC.
inline bool conv2d_depthwise_dgrad_vec(DType dt, const ConvGeometry& s, Strides4 gs, Strides4 xs, uintptr_t g_ptr,
                                       uintptr_t dx_ptr) {
  const int64_t VEC = dt == DType::Float32 ? 4 : 8;
  auto m = [VEC](int64_t v) { return v % VEC == 0; };
  return s.O == s.C && gs.c == 1 && xs.c == 1 && m(s.C) && m(gs.n) && m(gs.h) && m(gs.w) && m(xs.n) && m(xs.h) &&
         m(xs.w) && g_ptr % 16 == 0 && dx_ptr % 16 == 0;
}

// Number of K (pixel) splits conv2d_bwd_weight uses for this problem on a GPU with `sm_count` SMs;
// the caller allocates float32 scratch of splits * O * KH * KW * (C/groups) elements.
inline int64_t conv2d_wgrad_splits(DType dt, const ConvGeometry& s, int sm_count) {
  if (conv2d_is_depthwise(s)) return conv2d_depthwise_wgrad_splits(s, sm_count);
  const int64_t bm = dt == DType::Float32 ? SM_BM : TC_BM, bn = dt == DType::Float32 ? SM_BN : TC_BN;
  const int64_t Og = s.O / std::max<int64_t>(s.groups, 1), Cg = s.C / std::max<int64_t>(s.groups, 1);
  const int64_t tiles = conv_cdiv(Og, bm) * conv_cdiv(s.KH * s.KW * Cg, bn) * s.groups;
  const int64_t K = s.N * s.OH * s.OW;
  // Enough blocks for ~2 waves, but each split keeps >= 8 k-tiles of work, and gridDim.z <= 65535.
  int64_t splits = conv_cdiv(2 * std::max(sm_count, 1), std::max<int64_t>(tiles, 1));
  splits = std::min(splits, std::max<int64_t>(1, K / (8 * TC_BK)));
  splits = std::min(splits, std::max<int64_t>(1, 65535 / std::max<int64_t>(s.groups, 1)));
  return std::max<int64_t>(1, std::min<int64_t>(splits, 64));
}

// GEMM sizes of one pass per group (see conv.cu's header): rows M, columns N, reduction K.
struct ConvGemm {
  int64_t M, N, K;
};

inline ConvGemm conv_gemm(int pass, const ConvGeometry& s) {
  const int64_t groups = std::max<int64_t>(s.groups, 1), Cg = s.C / groups, Og = s.O / groups;
  if (pass == kFwd) return ConvGemm{s.N * s.OH * s.OW, Og, s.KH * s.KW * Cg};
  if (pass == kDgrad) return ConvGemm{s.N * s.H * s.W, Cg, s.KH * s.KW * Og};
  return ConvGemm{Og, s.KH * s.KW * Cg, s.N * s.OH * s.OW};
}

// A stride only matters along a dimension of more than one element: PyTorch gives size-1 dims
// arbitrary strides (a [O, C, 1, 1] weight made channels_last has strides (C, 1, 1, 1)).
inline bool stride_mult(int64_t stride, int64_t size, int64_t m) { return size <= 1 || stride % m == 0; }
inline bool stride_unit(int64_t stride, int64_t size) { return size <= 1 || stride == 1; }

// Operand of the 16-byte path: the chunked axis (8 elements) has unit stride, every other
// dimension's stride is a multiple of 8 elements, the base 16-byte aligned. dims = sizes (n, c, h, w).
inline bool vec_operand(Strides4 st, const int64_t (&dims)[4], uintptr_t ptr, int chunk_axis) {
  const int64_t s[4] = {st.n, st.c, st.h, st.w};
  if (ptr % 16 != 0) return false;
  for (int d = 0; d < 4; ++d) {
    if (d == chunk_axis ? !stride_unit(s[d], dims[d]) : !stride_mult(s[d], dims[d], 8)) return false;
  }
  return true;
}

// Whether the tensor-core kernel of `pass` may take its 16-byte cp.async path. a / b: the strides of
// the tensors as the caller passes them to the launcher (fwd: x, w; dgrad: grad, w; wgrad: grad, x).
inline bool conv2d_vec_ok(int pass, const ConvGeometry& s, Strides4 a, Strides4 b, uintptr_t a_ptr, uintptr_t b_ptr) {
  const int64_t groups = std::max<int64_t>(s.groups, 1), Cg = s.C / groups, Og = s.O / groups;
  const int64_t x_dims[4] = {s.N, s.C, s.H, s.W}, g_dims[4] = {s.N, s.O, s.OH, s.OW};
  const int64_t w_dims[4] = {s.O, Cg, s.KH, s.KW};
  if (pass == kFwd) {
    // A chunks: 8 channels of one tap of x; B chunks: 8 channels of one tap of the weight row.
    return Cg % 8 == 0 && vec_operand(a, x_dims, a_ptr, 1) && vec_operand(b, w_dims, b_ptr, 1);
  }
  if (pass == kDgrad) {
    // A chunks: 8 out channels of the gradient; B chunks: 8 out channels of one weight column.
    return Og % 8 == 0 && vec_operand(a, g_dims, a_ptr, 1) && vec_operand(b, w_dims, b_ptr, 0);
  }
  // wgrad: A chunks are 8 out channels of the gradient at one pixel, B chunks 8 input channels of x at
  // one pixel and tap (both land transposed in shared memory, k-major).
  return Og % 8 == 0 && Cg % 8 == 0 && vec_operand(a, g_dims, a_ptr, 1) && vec_operand(b, x_dims, b_ptr, 1);
}

inline const char* conv_pass_name(int pass) { return pass == kFwd ? "fwd" : pass == kDgrad ? "dgrad" : "wgrad"; }
inline const char* conv_type_name(DType dt) {
  return dt == DType::Float16 ? "half" : dt == DType::BFloat16 ? "bfloat16" : "float";
}

// Whether the problem fits the 32-bit index arithmetic (ConvIndex) of the implicit-GEMM kernels.
inline bool conv2d_index_fits(const ConvGeometry& s) {
  const int64_t L = kConvIndexLimit, half = int64_t(1) << 30;
  return s.N * s.OH * s.OW <= L && s.N * s.H * s.W <= L && s.KH * s.KW * s.C <= L && s.KH * s.KW * s.O <= L &&
         s.H + 2 * s.pad_h + s.KH * s.dil_h < half && s.W + 2 * s.pad_w + s.KW * s.dil_w < half &&
         s.OH * s.stride_h < half && s.OW * s.stride_w < half;
}

// The decision of conv2d_fwd (pass 0), conv2d_bwd_data (1) and conv2d_bwd_weight (2) for one call:
// a / b and a_ptr / b_ptr as the launcher receives them; splits: wgrad's split count (0: the one
// conv2d_wgrad_splits gives for sm_count); c / c_ptr: dgrad's dx (only the depthwise dgrad reads
// them). The launchers dispatch on the result: launches == 0 nothing to do; tile_m == 0 the direct
// depthwise kernels (fwd; dgrad with its 16-byte path when vectorized; wgrad + its reduction);
// !tensor_cores the fp32 SIMT kernel; otherwise the tensor-core kernel, 16-byte gathers when
// vectorized. Grids are cdiv(M, tile_m) x cdiv(N, tile_n) x groups * splits.
inline LaunchPlan conv2d_plan(int pass, DType dt, const ConvGeometry& s, Strides4 a, Strides4 b, uintptr_t a_ptr,
                              uintptr_t b_ptr, int sm_count, int64_t splits = 0, Strides4 c = Strides4{},
                              uintptr_t c_ptr = 0) {
  LaunchPlan pl;
  const std::string T = conv_type_name(dt), P = conv_pass_name(pass);
  const int64_t groups = std::max<int64_t>(s.groups, 1);
  const ConvGemm gm = conv_gemm(pass, s);
  pl.launches = 0;
  // Nothing to write. (K == 0 still launches: the output is the epilogue of zeros / zero partials.)
  if (gm.M == 0 || gm.N == 0) return pl;
  if (conv2d_is_depthwise(s)) {
    pl.launches = 1;
    if (pass == kFwd) {
      pl.kernel = "conv2d_dw_fwd_kernel<" + T + ">";
      pl.ctas = std::min<int64_t>(conv_cdiv(s.N * s.O * s.OH * s.OW, DW_THREADS), int64_t(1) << 20);
    } else if (pass == kDgrad) {
      // one thread per dx element (per 16-byte pack of channels on the vector path)
      pl.vectorized = c_ptr != 0 && conv2d_depthwise_dgrad_vec(dt, s, a, c, a_ptr, c_ptr);
      const int64_t per = pl.vectorized ? (dt == DType::Float32 ? 4 : 8) : 1;
      pl.kernel = "conv2d_depthwise_dgrad_kernel<" + T + "," + (pl.vectorized ? "vec" : "scalar") + ">";
      pl.ctas = std::min<int64_t>(conv_cdiv(s.N * s.H * s.W * (s.C / per), 256), int64_t(1) << 20);
    } else {
      // (channel tile, tap) x pixel-split blocks into fp32 partials, + conv2d_wgrad_reduce_kernel
      pl.splits = splits > 0 ? splits : conv2d_depthwise_wgrad_splits(s, sm_count);
      pl.kernel = "conv2d_depthwise_wgrad_kernel<" + T + ">";
      pl.ctas = conv_cdiv(s.O, conv2d_depthwise_wgrad_tile(s, a)) * s.KH * s.KW * pl.splits +
                std::min<int64_t>(conv_cdiv(s.O * s.KH * s.KW, 256), int64_t(1) << 20);
      pl.launches = 2;
    }
    return pl;
  }
  const bool fp32 = dt == DType::Float32;
  if (pass == kWgrad) pl.splits = splits > 0 ? splits : conv2d_wgrad_splits(dt, s, sm_count);
  pl.tensor_cores = !fp32;
  pl.vectorized = !fp32 && conv2d_vec_ok(pass, s, a, b, a_ptr, b_ptr);
  pl.tile_m = fp32 ? SM_BM : TC_BM;
  pl.tile_n = fp32 ? SM_BN : TC_BN;
  pl.tile_k = fp32 ? SM_BK : TC_BK;
  pl.kernel = fp32 ? "conv2d_simt_kernel<" + P + ">"
                   : "conv2d_igemm_kernel<" + P + "," + T + "," + (pl.vectorized ? "vec" : "scalar") + ">";
  pl.ctas = conv_cdiv(gm.M, pl.tile_m) * conv_cdiv(gm.N, pl.tile_n) * groups * pl.splits;
  pl.launches = 1;
  if (pass == kWgrad) {
    // + conv2d_wgrad_reduce_kernel<T>: the fixed-order sum of the splits, cast to dw's dtype
    pl.ctas += std::min<int64_t>(conv_cdiv(s.O * (s.C / groups) * s.KH * s.KW, 256), int64_t(1) << 20);
    pl.launches = 2;
  }
  return pl;
}

// out = act(conv2d(x, w) + bias + residual), fp32 accumulation, any strides for every tensor.
// Fast path (fp16/bf16): x channels_last, w channels_last ([O, KH, KW, C/groups] in memory), C/groups
// a multiple of 8, 16-byte aligned: tensor-core implicit GEMM with cp.async 16-byte gathers; other
// fp16/bf16 layouts take the same kernel with predicated element gathers; fp32 runs a SIMT implicit
// GEMM; groups == C with one input channel per group runs the direct depthwise kernel.
void conv2d_fwd(DType dt, const ConvGeometry& s, const void* x, Strides4 xs, const void* w, Strides4 ws,
                const void* bias, const void* residual, Strides4 rs, void* out, Strides4 os, Act act, int device,
                uintptr_t stream);

// dx = dgrad(g, w): implicit GEMM over (tap, out channel). Fast path: g channels_last and w with the
// out-channel axis contiguous (ws.n == 1), (O/groups) % 8 == 0.
void conv2d_bwd_data(DType dt, const ConvGeometry& s, const void* g, Strides4 gs, const void* w, Strides4 ws, void* dx,
                     Strides4 xs, int device, uintptr_t stream);

// dw (contiguous [O, C/groups, KH, KW]) = wgrad(g, x): each split writes fp32 partial sums to scratch,
// then one kernel adds them in split order (deterministic, no atomics) and casts to dw's dtype. Fast
// path (fp16/bf16): g and x channels_last, (O/groups) and (C/groups) multiples of 8.
void conv2d_bwd_weight(DType dt, const ConvGeometry& s, const void* g, Strides4 gs, const void* x, Strides4 xs,
                       void* dw, void* scratch, int64_t splits, int device, uintptr_t stream);

// Epilogue backward over a [N, O, P] gradient (strides gs; out shares the layout os; grad_pre is
// written with gs and may alias grad when act is none): grad_pre = grad * act'(out),
// grad_bias[o] = sum. Row splits write fp32 partials (scratch: splits * O floats) reduced in order.
void conv2d_bias_act_bwd(DType dt, int64_t N, int64_t O, int64_t P, const void* grad, Strides4 gs, const void* out,
                         Strides4 os, void* grad_pre, void* grad_bias, void* scratch, int64_t splits, Act act,
                         int device, uintptr_t stream);

}  // namespace pyimgcls::cuda
