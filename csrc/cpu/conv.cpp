// CPU convolution family: fused conv2d forward (bias + residual + activation) and its backward,
// float32 and float64, built on the GEMM family's kernel (cpu::gemm in gemm.h); bfloat16 natively
// for the large convs (bf16 im2col into the bf16 GEMM, float32 sums, one rounding: "bfloat16, native
// path") and through float32 copies for the rest (section "bfloat16" below). Float32 3x3 stride-1
// convs take Winograd F(2x2, 3x3) (forward and dgrad) and, on maps of at most 2x2, one dense GEMM
// over the image ("Tiny maps"); their weight transforms can be cached by the caller for inference
// (conv2d_fwd_cached).
//
// What it computes
//   fwd:   out[n,o,oh,ow] = act(sum_{c,i,j} x[n, g*Cg+c, oh*sh-ph+i*dh, ow*sw-pw+j*dw] * w[o,c,i,j]
//                               + bias[o] + residual[n,o,oh,ow]),   g = o / Og, Cg = C/groups
//   dgrad: dx = sum over taps of g * w   (the transpose of the forward's linear map)
//   wgrad: dw[o,c,i,j] = sum_{n,oh,ow} g[n,o,oh,ow] * x[n, g*Cg+c, ih, iw]
//   bias_act_bwd: grad_pre = grad * act'(out), grad_bias[o] = sum grad_pre[:, o]
//
// Algorithm: one GEMM per (group, chunk of images), the chunk's pixels side by side (q = n*P + p,
// P = OH*OW): explicit im2col of the chunk's images into one buffer, two orientations chosen by the
// output layout so the GEMM always writes unit-stride rows:
//   channels_last output (pixel-major, "path A"): C[q, o] = col[q, k] @ wt[o, k]^T, with the K axis
//     ordered (i, j, c) so im2col copies contiguous channel runs of NHWC input, and the weight
//     repacked once per call to [O, KH, KW, Cg]. out-channels are the GEMM's N dimension, so the
//     GEMM epilogue fuses bias + activation, writing out itself when its images are evenly spaced
//     (dense NHWC); a residual is added (then activated) in one extra pass.
//   NCHW output (channel-major, "path B"): tmp[o, q] = w[o, k] @ col[k, q], K ordered (c, i, j)
//     (the weight's own layout), then one scatter pass to out with bias + residual + activation.
//   1x1 / stride 1 / no padding on NHWC: no im2col at all - the input itself is the GEMM operand.
//   dgrad: col = g @ w (GEMM over the chunk) then col2im per image into dx (zeroed first); a
//     pixel-major 1x1 stride 1 writes dx directly. wgrad: tmp[o, k] = g[o, q] @ col[q, k], the
//     chunk's pixels as the GEMM's reduction axis, added into dw in chunk order.
//   Chunks: about kChunkRows = 256 GEMM rows (the column buffer stays in L2: the whole batch at
//     once made ResNet's 16x16 layers 1.6x slower), fewer images when the buffers would pass
//     kChunkBytes = 64 MB, one image at the least. The weight is packed once per chunk, not once
//     per image: at 2x2 outputs (ResNet-18 layer4 at 64x64) a 64-row GEMM instead of sixteen 4-row
//     ones re-packing 9.4 MB each.
// Depthwise (groups == C > 1, any channel multiplier) does not use the GEMM: direct kernels for
//   forward, dgrad and wgrad (section "Depthwise convolution" below; channel-vector kernels for
//   channels_last, rows kernels for other strides).
// Parallelism: the GEMM threads over its own M x N tiles (gemm.cpp); im2col, col2im, gathers and
// scatters over the chunk's images. Every output / weight-gradient element is summed by one thread
// in a fixed order, so all three are bit-identical for any thread count. Below 2^22 multiply-adds
// everything runs on one thread (SerialIfSmall).
//
// Cost: FLOPs = 2 * N * O * OH*OW * Cg*KH*KW for each of fwd, dgrad, wgrad. Minimum bytes =
//   sizeof(T) * (|x| + |w| + |out| (+ |residual| + O)). im2col adds a write + read of
//   Cg*KH*KW*OH*OW per (image, group) (chunks of ~256 rows, kept in L2); the NCHW paths add a
//   write + read of the O*OH*OW result (or gathered gradient) per image; the weight is packed once
//   per chunk (O*K elements), against 2*O*K*rows FLOPs.
//
// Test and benchmark
//   pytest tests/test_conv.py -k cpu
//   pytest tests/test_conv_cpu_fast.py          (depthwise kernels and whole-batch GEMM paths)
//   pytest tests/test_cpu_bf16.py               (bfloat16)
//   pytest benchmarks/test_bench_conv_cpu.py
#include "conv.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common.h"
#include "gemm.h"

namespace pyimgcls::cpu {
namespace {

template <typename T>
constexpr DType dtype_of() {
  return sizeof(T) == 4 ? DType::Float32 : DType::Float64;
}

// Smallest q >= 0 with q*s + off >= 0, and the first q with q*s + off >= lim: the output range
// [lo, hi) whose input coordinate q*s + off lies in [0, lim).
inline void valid_range(int64_t off, int64_t s, int64_t lim, int64_t count, int64_t& lo, int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + s - 1) / s;
  hi = off >= lim ? 0 : (lim - off + s - 1) / s;
  lo = std::min(lo, count);
  hi = std::max(lo, std::min(hi, count));
}

struct Plan {
  ConvGeometry s;
  int64_t Cg, Og, K, P;
  bool direct;  // 1x1, stride 1, no padding: the input is the GEMM operand (no im2col)
};

Plan make_plan(const ConvGeometry& s, Strides4 xs) {
  Plan p{s, s.C / s.groups, s.O / s.groups, 0, s.OH * s.OW, false};
  p.K = p.Cg * s.KH * s.KW;
  p.direct = s.KH == 1 && s.KW == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0 &&
             s.OH == s.H && s.OW == s.W && (s.H == 1 || xs.h == s.W * xs.w);
  return p;
}

// Short runs (an output row: 2-64 elements, the padding columns: 0-3) copied / zeroed inline. The
// library memcpy / memset a call each cost more than the run itself at ResNet's 4x4 and 8x8 maps
// (perf: memmove + memset 14 % of a DenseNet 3x3 conv against 39 % in the GEMM micro-kernel), and a
// runtime-stride loop (`src[ow * step]`) does not vectorise: unit-stride rows get this one. GCC turns
// such loops back into library calls (-ftree-loop-distribute-patterns), so the functions that use
// them switch that off (PYIMGCLS_INLINE_RUNS, isa.h).
template <typename T>
PYIMGCLS_INLINE void copy_run(T* __restrict dst, const T* __restrict src, int64_t n) {
  for (int64_t e = 0; e < n; ++e) dst[e] = src[e];
}
template <typename T>
PYIMGCLS_INLINE void add_run(T* __restrict dst, const T* __restrict src, int64_t n) {
  for (int64_t e = 0; e < n; ++e) dst[e] += src[e];
}
template <typename T>
PYIMGCLS_INLINE void zero_run(T* dst, int64_t n) {
#pragma GCC unroll 4
  for (int64_t e = 0; e < n; ++e) dst[e] = T(0);
}

// col[k, p], k = (c, i, j): rows of output pixels for each tap (channel-major GEMM operand).
// ld: row stride of col (P for one image; N*P when the images of a batch sit side by side).
// Each input plane is first copied into a zero-padded plane (Hp x Wp, thread-local, in L1/L2 for
// the maps this path sees), read by all KH*KW taps: every col row is then one run of OW elements
// with no bounds tests and no zero fills (per row the old clipped loop cost ~10x its copy at
// DenseNet's 16x16 maps). The plane spans every row / column a tap reads: (OH-1)*sh + (KH-1)*dh + 1
// rows, which passes H + 2*ph when "same" padding of an even kernel pads the bottom / right more.
template <typename T>
PYIMGCLS_INLINE_RUNS void im2col_kp(const Plan& pl, const T* x, Strides4 xs, T* col, int64_t ld) {
  const ConvGeometry& s = pl.s;
  if (pl.direct && xs.w == 1 && xs.h == s.W) {
    // 1x1 stride 1 on contiguous planes: each channel's plane is one run of P values (no padded plane;
    // ResNet-50's 2x2 / 4x4 maps made the two per-row copies below cost ~45% of their GEMM)
    for (int64_t c = 0; c < pl.Cg; ++c) copy_run(col + c * ld, x + c * xs.c, pl.P);
    return;
  }
  const int64_t Hp = std::max(s.pad_h + s.H, (s.OH - 1) * s.stride_h + (s.KH - 1) * s.dil_h + 1);
  const int64_t Wp = std::max(s.pad_w + s.W, (s.OW - 1) * s.stride_w + (s.KW - 1) * s.dil_w + 1);
  static thread_local std::vector<T> plane_buf;
  if (plane_buf.size() < static_cast<size_t>(Hp * Wp)) plane_buf.resize(static_cast<size_t>(Hp * Wp));
  T* const plane = plane_buf.data();
  // The padding frame is zeroed once per call; the interior is overwritten per channel.
  zero_run(plane, s.pad_h * Wp);
  zero_run(plane + (s.pad_h + s.H) * Wp, (Hp - s.pad_h - s.H) * Wp);
  for (int64_t h = 0; h < s.H; ++h) {
    zero_run(plane + (s.pad_h + h) * Wp, s.pad_w);
    zero_run(plane + (s.pad_h + h) * Wp + s.pad_w + s.W, Wp - s.pad_w - s.W);
  }
  for (int64_t c = 0; c < pl.Cg; ++c) {
    const T* xc = x + c * xs.c;
    for (int64_t h = 0; h < s.H; ++h) {
      T* prow = plane + (s.pad_h + h) * Wp + s.pad_w;
      const T* xrow = xc + h * xs.h;
      if (xs.w == 1)
        copy_run(prow, xrow, s.W);
      else
        for (int64_t w = 0; w < s.W; ++w) prow[w] = xrow[w * xs.w];
    }
    for (int64_t i = 0; i < s.KH; ++i)
      for (int64_t j = 0; j < s.KW; ++j) {
        T* dst = col + ((c * s.KH + i) * s.KW + j) * ld;
        const T* src = plane + i * s.dil_h * Wp + j * s.dil_w;
        for (int64_t oh = 0; oh < s.OH; ++oh, dst += s.OW, src += s.stride_h * Wp) {
          if (s.stride_w == 1)
            copy_run(dst, src, s.OW);
          else if (s.stride_w == 2)  // stride-2 layers (ResNet's stem and downsampling 3x3): a constant
            for (int64_t ow = 0; ow < s.OW; ++ow) dst[ow] = src[ow * 2];  // stride vectorises (shuffles)
          else
            for (int64_t ow = 0; ow < s.OW; ++ow) dst[ow] = src[ow * s.stride_w];
        }
      }
  }
}

// col[p, k], k = (i, j, c): one row of taps per output pixel (pixel-major GEMM operand).
template <typename T>
void im2col_pk(const Plan& pl, const T* x, Strides4 xs, T* col) {
  const ConvGeometry& s = pl.s;
  const bool packed_taps = xs.c == 1 && xs.w == pl.Cg && s.dil_w == 1;
  for (int64_t oh = 0; oh < s.OH; ++oh)
    for (int64_t ow = 0; ow < s.OW; ++ow) {
      T* row = col + (oh * s.OW + ow) * pl.K;
      const int64_t iw0 = ow * s.stride_w - s.pad_w;
      for (int64_t i = 0; i < s.KH; ++i) {
        const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
        if (packed_taps && ih >= 0 && ih < s.H && iw0 >= 0 && iw0 + s.KW <= s.W) {
          // NHWC with pixels of exactly Cg contiguous channels: the KW taps of this kernel row are one
          // contiguous run of KW * Cg elements (ResNet's stem, Cg = 3: 21 elements instead of 7
          // three-element copies).
          std::memcpy(row + i * s.KW * pl.Cg, x + ih * xs.h + iw0 * xs.w, sizeof(T) * static_cast<size_t>(s.KW * pl.Cg));
          continue;
        }
        for (int64_t j = 0; j < s.KW; ++j) {
          T* dst = row + (i * s.KW + j) * pl.Cg;
          const int64_t iw = ow * s.stride_w - s.pad_w + j * s.dil_w;
          if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) {
            std::fill(dst, dst + pl.Cg, T(0));
            continue;
          }
          const T* src = x + ih * xs.h + iw * xs.w;
          if (xs.c == 1 && pl.Cg >= 8)
            std::memcpy(dst, src, sizeof(T) * static_cast<size_t>(pl.Cg));
          else
            for (int64_t c = 0; c < pl.Cg; ++c) dst[c] = src[c * xs.c];
        }
      }
    }
}

// dx += col2im(col), col[k, p] with k = (c, i, j); ld: row stride of col (as im2col_kp).
template <typename T>
PYIMGCLS_INLINE_RUNS void col2im_kp(const Plan& pl, const T* col, T* dx, Strides4 xs, int64_t ld) {
  const ConvGeometry& s = pl.s;
  for (int64_t c = 0; c < pl.Cg; ++c)
    for (int64_t i = 0; i < s.KH; ++i)
      for (int64_t j = 0; j < s.KW; ++j) {
        const T* row = col + ((c * s.KH + i) * s.KW + j) * ld;
        const int64_t woff = j * s.dil_w - s.pad_w;
        int64_t lo, hi;
        valid_range(woff, s.stride_w, s.W, s.OW, lo, hi);
        for (int64_t oh = 0; oh < s.OH; ++oh) {
          const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
          if (ih < 0 || ih >= s.H) continue;
          T* dst = dx + c * xs.c + ih * xs.h + woff * xs.w;
          const T* src = row + oh * s.OW;
          const int64_t step = s.stride_w * xs.w;
          if (step == 1)
            add_run(dst + lo, src + lo, hi - lo);
          else
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow * step] += src[ow];
        }
      }
}

// dx += col2im(col), col[p, k] with k = (i, j, c).
template <typename T>
void col2im_pk(const Plan& pl, const T* col, T* dx, Strides4 xs) {
  const ConvGeometry& s = pl.s;
  for (int64_t oh = 0; oh < s.OH; ++oh)
    for (int64_t ow = 0; ow < s.OW; ++ow) {
      const T* row = col + (oh * s.OW + ow) * pl.K;
      for (int64_t i = 0; i < s.KH; ++i) {
        const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
        if (ih < 0 || ih >= s.H) continue;
        for (int64_t j = 0; j < s.KW; ++j) {
          const int64_t iw = ow * s.stride_w - s.pad_w + j * s.dil_w;
          if (iw < 0 || iw >= s.W) continue;
          const T* src = row + (i * s.KW + j) * pl.Cg;
          T* dst = dx + ih * xs.h + iw * xs.w;
          for (int64_t c = 0; c < pl.Cg; ++c) dst[c * xs.c] += src[c];
        }
      }
    }
}

// Grow-only scratch per (calling thread, slot, element type), never zero-filled: every user
// rewrites the part it reads (im2col writes its zeros, GEMMs overwrite C, gathers copy every
// element). A fresh zero-initialised std::vector per call cost a memset plus page faults of the
// whole column buffer (up to kChunkBytes) on every convolution: 3-4 % of a ResNet-18 forward.
// Each slot keeps its largest size for the thread's lifetime (at most the chunk budget per slot).
enum class Buf { Col, Tmp, Wt, G, Xt, Weff, kCount };
template <typename T>
T* scratch(Buf slot, int64_t n) {
  struct Slot {
    std::unique_ptr<T[]> p;
    int64_t cap = 0;
  };
  static thread_local Slot slots[static_cast<int>(Buf::kCount)];
  Slot& b = slots[static_cast<int>(slot)];
  n = std::max<int64_t>(n, 1);
  if (n > b.cap) {
    b.p.reset();
    b.p.reset(new T[static_cast<size_t>(n)]);  // default-initialised: no fill
    b.cap = n;
  }
  return b.p.get();
}

// w[o, c, i, j] -> wt[o, (i, j, c)]: the K order of the pixel-major path.
template <typename T>
void repack_weight_ijc(const Plan& pl, const T* w, T* wt) {
  const ConvGeometry& s = pl.s;
  const int64_t taps = s.KH * s.KW;
  for (int64_t o = 0; o < s.O; ++o)
    for (int64_t c = 0; c < pl.Cg; ++c)
      for (int64_t t = 0; t < taps; ++t) wt[o * pl.K + t * pl.Cg + c] = w[o * pl.K + c * taps + t];
}

// The weight in the pixel-major K order: repacked into buf, or w itself where (c, i, j) and
// (i, j, c) coincide (one tap, or one channel per group).
template <typename T>
const T* weight_ijc(const Plan& pl, const T* w) {
  if (pl.s.KH * pl.s.KW == 1 || pl.Cg == 1) return w;
  T* buf = scratch<T>(Buf::Wt, pl.s.O * pl.K);
  repack_weight_ijc(pl, w, buf);
  return buf;
}

// Below this many multiply-adds a convolution is "small" (LeNet-sized): it runs on one thread, and
// the small-problem paths (direct kernel, whole-batch GEMM) apply.
constexpr int64_t kSmallConvMacs = int64_t(1) << 22;
// Output planes from which an NCHW 1x1 stride-1 forward / dgrad runs one GEMM per image in place
// (conv2d_fwd_t, conv2d_bwd_data_t); PYIMGCLS_CPU_CONV_INPLACE_1X1=0 turns that off (A/B benchmarks,
// tests of the copying paths). A getenv per call costs well under a microsecond.
constexpr int64_t kDirectPlane = 64;
inline bool inplace_1x1_applies(const Plan& pl, int64_t plane_w, Strides4 in, int64_t in_w, Strides4 out) {
  const char* e = std::getenv("PYIMGCLS_CPU_CONV_INPLACE_1X1");
  if (e != nullptr && e[0] == '0') return false;
  return pl.direct && pl.P >= kDirectPlane && in.w == 1 && in.h == in_w && out.w == 1 && out.h == plane_w;
}

// Convolutions below kSmallConvMacs run their GEMMs on one thread: a fork/join costs more than the
// work (LeNet conv1 backward at batch 8 on 2 cores: 1.06 ms on one thread, 8.0 ms letting each
// GEMM fork). Sets the calling thread's OpenMP thread count for the scope (an ICV of this thread
// only) and restores it.
class SerialIfSmall {
 public:
  explicit SerialIfSmall(int64_t macs) : active_(macs < kSmallConvMacs), saved_(omp_get_max_threads()) {
    if (active_) omp_set_num_threads(1);
  }
  ~SerialIfSmall() {
    if (active_) omp_set_num_threads(saved_);
  }
  SerialIfSmall(const SerialIfSmall&) = delete;
  SerialIfSmall& operator=(const SerialIfSmall&) = delete;

 private:
  bool active_;
  int saved_;
};

// ---------------------------------------------------------------------------------------------
// Whole-batch GEMMs. Forward, dgrad and wgrad run ONE GEMM per (group, chunk of images) with the
// images' pixels side by side (q = n*P + p, M or K = nb*P), instead of one GEMM per (image, group):
// the weight is packed once per chunk, not once per image, and the GEMM's row panels span images,
// so a layer with 2x2 outputs gives a 64-row GEMM at batch 16 instead of sixteen 4-row ones. The
// GEMM threads over its own M x N tiles; im2col / col2im / gathers / scatters run in parallel over
// the chunk's images (each image owns its slice, so no write conflicts). Scratch per chunk: the
// column buffer (nb*P*K) plus the gathered / result matrices (nb*P*Og), at most kChunkBytes
// together (PYIMGCLS_CPU_CONV_CHUNK_BYTES overrides it, for tests of the chunk loop); one image per
// chunk at the least.
// ---------------------------------------------------------------------------------------------
constexpr int64_t kChunkBytes = int64_t(64) << 20;
constexpr int64_t kChunkRows = 256;

inline int64_t chunk_images(int64_t N, int64_t P, int64_t per_image_elems, size_t elem) {
  int64_t budget = kChunkBytes;
  if (const char* e = std::getenv("PYIMGCLS_CPU_CONV_CHUNK_BYTES")) {
    const long long v = std::atoll(e);
    if (v > 0) budget = v;
  }
  const int64_t per = std::max<int64_t>(1, per_image_elems * static_cast<int64_t>(elem));
  const int64_t by_rows = (kChunkRows + std::max<int64_t>(P, 1) - 1) / std::max<int64_t>(P, 1);
  return std::max<int64_t>(1, std::min({std::max<int64_t>(N, 1), budget / per, by_rows}));
}

// f(n) for the nb images of a chunk, spread over the team (one thread below kSmallConvMacs of
// `work`, or under SerialIfSmall).
template <typename F>
void for_images(int64_t nb, int64_t work, const F& f) {
  const int nt = work < kSmallConvMacs ? 1 : static_cast<int>(std::min<int64_t>(std::max(1, omp_get_max_threads()), nb));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t n = 0; n < nb; ++n) f(n);
}

// buf[(n*P + p)*ch + c] = src[n*ss.n + c*ss.c + p*ss.w]  (pixel-major, nb images, (h, w) collapsible)
template <typename T>
void gather_pk(const T* src, Strides4 ss, int64_t nb, int64_t ch, int64_t P, T* buf) {
  for_images(nb, nb * ch * P * 64, [&](int64_t n) {
    for (int64_t p = 0; p < P; ++p) {
      const T* sp = src + n * ss.n + p * ss.w;
      T* d = buf + (n * P + p) * ch;
      for (int64_t c = 0; c < ch; ++c) d[c] = sp[c * ss.c];
    }
  });
}

// buf[c*(nb*P) + n*P + p] = src[n*ss.n + c*ss.c + p*ss.w]  (channel-major)
template <typename T>
void gather_kp(const T* src, Strides4 ss, int64_t nb, int64_t ch, int64_t P, T* buf) {
  const int64_t M = nb * P;
  for_images(nb, nb * ch * P * 64, [&](int64_t n) {
    for (int64_t c = 0; c < ch; ++c) {
      const T* sc = src + n * ss.n + c * ss.c;
      T* d = buf + c * M + n * P;
      for (int64_t p = 0; p < P; ++p) d[p] = sc[p * ss.w];
    }
  });
}

inline void check_collapsible(const char* what, int64_t H, int64_t W, Strides4 st) {
  if (H > 1 && st.h != W * st.w)
    throw std::invalid_argument(std::string("conv2d (cpu): ") + what +
                                " must have collapsible (h, w) dimensions (stride_h == W * stride_w)");
}

// ---------------------------------------------------------------------------------------------
// bfloat16 (conv2d_fwd / bwd_data / bwd_weight with dt == BFloat16)
// ---------------------------------------------------------------------------------------------
// The bf16 tensors are widened to float32 (exact) into dense scratch copies in the layout their
// strides suggest (channels_last stays channels_last, so the same GEMM orientation is chosen), the
// float32 path above runs with every GEMM sent to the bf16 GEMM (gemm_bf16: its operands, copies
// of bf16 values, pack to bf16 exactly; vdpbf16ps where the CPU has it, else float32 FMAs on the
// same values), and the float32 result is rounded once to bf16 (nearest, ties to even) into the
// caller's tensor. So im2col / col2im, the chunked GEMMs, dgrad's col2im sums and wgrad's chunk
// sums all stay float32 until the one final rounding; the depthwise and small direct kernels
// compute in float32 on the widened values.
// Extra traffic against a native bf16 path: widening writes 4 bytes per input element and the
// result passes once more (4 bytes read, 2 written per output element); the GEMMs dominate at
// ResNet sizes (O(K) multiply-adds per output element).
// ---------------------------------------------------------------------------------------------
thread_local bool tls_bf16_gemm = false;

// Sends this thread's conv GEMMs to the bf16 GEMM for its lifetime.
class Bf16Gemms {
 public:
  Bf16Gemms() : saved_(tls_bf16_gemm) { tls_bf16_gemm = true; }
  ~Bf16Gemms() { tls_bf16_gemm = saved_; }
  Bf16Gemms(const Bf16Gemms&) = delete;
  Bf16Gemms& operator=(const Bf16Gemms&) = delete;

 private:
  bool saved_;
};

// cpu::gemm, or the bf16 GEMM (float32 in and out) inside a Bf16Gemms scope.
void conv_gemm(DType dt, const void* a, int64_t sam, int64_t sak, const void* b, int64_t sbk, int64_t sbn,
               const void* bias, void* c, int64_t scm, int64_t scn, int64_t M, int64_t N, int64_t K, Act act) {
  if (tls_bf16_gemm && dt == DType::Float32) {
    gemm_bf16(DType::Float32, a, sam, sak, b, sbk, sbn, static_cast<const float*>(bias), c, DType::Float32, scm, scn,
              M, N, K, act);
    return;
  }
  gemm(dt, a, sam, sak, b, sbk, sbn, bias, c, scm, scn, M, N, K, act);
}

// body(g, n0) for every (group g, chunk of NB images from n0) unit of a forward or dgrad.
// With a team of nt > 1 threads and at least nt units, ONE parallel region spreads the units over the
// team, each unit on one thread from end to end (gather / im2col, its GEMM, scatter / col2im in that
// core's own L2; the GEMMs and image loops inside run on one thread): the per-unit fork / joins of the
// GEMM-internal threading (3 per chunk, 48 per ResNet 16x16 layer at batch 16) each wait for the
// slowest thread, and on a shared or virtualised host a descheduled thread stalls every one of them.
// Fewer units than threads (small batches, small maps: one chunk) keep the in-GEMM threading. Each
// output element is still summed by one thread in the same order: bit-identical to one thread.
// body takes its buffers from scratch<T> (thread-local). The first exception thrown in a worker is
// rethrown here after the region.
template <typename F>
void for_chunks(int64_t groups, int64_t N, int64_t NB, const F& body) {
  const int64_t nchunks = (N + NB - 1) / NB, units = groups * nchunks;
  const int nt = omp_in_parallel() ? 1 : std::max(1, omp_get_max_threads());
  if (nt <= 1 || units < nt) {
    for (int64_t u = 0; u < units; ++u) body(u / nchunks, (u % nchunks) * NB);
    return;
  }
  const bool bf16 = tls_bf16_gemm;
  std::exception_ptr error;
  bool failed = false;
#pragma omp parallel num_threads(nt)
  {
    const int saved_threads = omp_get_max_threads();
    const bool saved_bf16 = tls_bf16_gemm;
    omp_set_num_threads(1);  // this thread's ICV: nested GEMM / image loops run on it alone
    tls_bf16_gemm = bf16;    // the caller's Bf16Gemms scope holds in the workers too
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; ++u) {
      bool skip;
#pragma omp atomic read
      skip = failed;
      if (skip) continue;
      try {
        body(u / nchunks, (u % nchunks) * NB);
      } catch (...) {
#pragma omp critical(pyimgcls_conv_chunks_error)
        {
          if (!error) error = std::current_exception();
        }
#pragma omp atomic write
        failed = true;
      }
    }
    tls_bf16_gemm = saved_bf16;
    omp_set_num_threads(saved_threads);
  }
  if (error) std::rethrow_exception(error);
}

// ---------------------------------------------------------------------------------------------
// Depthwise convolution (groups == C > 1, O = m*C: channel multiplier m, weight [O, 1, KH, KW])
// ---------------------------------------------------------------------------------------------
// out[n, o, oh, ow] = act(sum_{i,j} x[n, o/m, oh*sh - ph + i*dh, ow*sw - pw + j*dw] * w[o, i, j] + ...)
// One input channel per output channel, so there is no reduction over channels: the im2col + GEMM
// path runs one 1 x OH*OW x KH*KW GEMM per (image, channel), mostly packing and call overhead
// (MobileNetV2's 3x3 depthwise layers ran 3-100x slower than PyTorch through it, benchmarks/NOTES.md).
// These kernels read each input element KH*KW times from L1 and write each output once:
// FLOPs = 2*N*O*OH*OW*KH*KW for each of forward, dgrad, wgrad; minimum bytes = sizeof(T) * (|x| + |out| + |w|) (dgrad: |g| + |dx| + |w|; wgrad:
// |g| + |x| + |w|). Memory-bound at every MobileNet shape (2.25 FLOP per byte at 3x3, float32).
//
// Three kernels per pass:
//   channel-vector ("nhwc"): x / g / dx channels_last (unit channel stride) and m == 1. Each output
//     pixel is a run of channels, kDwLanes at a time held in registers across the KH*KW taps; the
//     weight is transposed once per call to wt[tap][C] so a tap's weights are one contiguous run.
//   row ("rows"): any strides, any m (NCHW, views, a channels_last tensor with m > 1). One (n, o)
//     plane at a time, an output row as a T[OW] accumulator: per tap one pass acc[ow] += w * x[...]
//     over the taps' valid range (unit stride in NCHW at stride 1: it vectorises).
//   plane ("plane"): not channels_last, output rows of 12..64 floats (dw_plane_fits): one (n, o)
//     plane copied with its padding into an L1 scratch split by column phase (stride 2 becomes unit
//     stride), L-wide vectors along the output row, four rows at a time; forward, stride-1 dgrad
//     (a forward over g with flipped taps), wgrad, and the strided dgrad at dx rows of 32..64 (one
//     stride-1 correlation of g with a sub-filter per output phase of dx).
// dgrad is a gather in the channel-vector kernel (each dx pixel sums the (oh, ow) that reach it: no
// write conflicts) and a scatter into a per-thread [H, W] plane buffer in the row kernel; wgrad
// accumulates per output channel (rows) or per (channel run, tap) (nhwc) over the whole batch, so
// each weight is summed by one thread in a fixed order: bit-identical for any thread count.
//
// Threading: units (planes, output rows, channel runs) in a static OpenMP loop; below
// kDwParallelMacs multiply-adds one thread (a fork/join costs more than the work).
constexpr int64_t kDwParallelMacs = int64_t(1) << 18;

// Channels per register-held run in the channel-vector kernels: 64 bytes (one zmm, two ymm, four xmm).
template <typename T>
constexpr int64_t kDwLanes = 64 / sizeof(T);
// That run as one GCC vector value (split into two ymm / four xmm below AVX-512); acc += a * b on
// unaligned runs, in place (a wide vector returned by value trips -Wpsabi, common.h).
template <typename T>
using DwVec = Vec<T, 64>;
template <typename V, typename T>
PYIMGCLS_INLINE void fma_run(V& acc, const T* a, const T* b) {
  V va, vb;
  __builtin_memcpy(&va, a, sizeof(V));
  __builtin_memcpy(&vb, b, sizeof(V));
  acc += va * vb;
}
// acc += w * b with w already in a register.
template <typename V, typename T>
PYIMGCLS_INLINE void fma_run_w(V& acc, const V& w, const T* b) {
  V vb;
  __builtin_memcpy(&vb, b, sizeof(V));
  acc += w * vb;
}

template <typename T>
struct DwArgs {
  ConvGeometry s;
  int64_t m;       // channel multiplier O / C
  const T* x;      // forward / wgrad input, dgrad: g (the output gradient)
  Strides4 xs;
  const T* w;      // [O][KH*KW] (rows kernels) or wt [KH*KW][O] (channel-vector kernels)
  const T* bias;   // [O] or null (forward only)
  const T* res;    // output-shaped or null (forward only)
  Strides4 rs;
  const T* g;      // wgrad: the output gradient
  Strides4 gs;
  T* out;          // forward: out, dgrad: dx, wgrad: dw [O][KH*KW]
  Strides4 os;
  Act act;
  const int64_t* wrange;  // rows kernels: [lo, hi) of ow for each tap column j, 2*KW entries; plane
                          // kernels: tap offsets in the scratch (KW forward, KH*KW wgrad)
};

inline bool depthwise(const ConvGeometry& s) { return s.groups > 1 && s.groups == s.C; }

// Body::run(u, args, scratch) for u in [0, units), static OpenMP schedule, on the widest instruction
// set active_isa() allows; scratch: per_thread elements owned by the calling thread.
template <class Body, typename T>
void dw_run(int64_t units, int64_t macs, const DwArgs<T>& a, size_t per_thread) {
  const auto fn = isa_variant<void (*)(int64_t, const DwArgs<T>&, T*), Body>(active_isa());
  const int nt = macs < kDwParallelMacs ? 1 : static_cast<int>(std::min<int64_t>(std::max(1, omp_get_max_threads()), units));
  std::vector<T> scratch(per_thread * static_cast<size_t>(std::max(nt, 1)));
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t u = 0; u < units; ++u)
    fn(u, a, scratch.data() + per_thread * static_cast<size_t>(nt > 1 ? omp_get_thread_num() : 0));
}

// Forward, rows kernel. Unit u = one (n, o) plane; scratch: OW accumulators.
template <typename T>
struct DwFwdRows {
  static PYIMGCLS_INLINE void run(int64_t u, const DwArgs<T>& a, T* acc) {
    const ConvGeometry& s = a.s;
    const int64_t n = u / s.O, o = u % s.O, KK = s.KH * s.KW;
    const T* xp = a.x + n * a.xs.n + (o / a.m) * a.xs.c;
    const T* wk = a.w + o * KK;
    const T b = a.bias ? a.bias[o] : T(0);
    T* op = a.out + n * a.os.n + o * a.os.c;
    const T* rp = a.res ? a.res + n * a.rs.n + o * a.rs.c : nullptr;
    const int64_t step = s.stride_w * a.xs.w;
    for (int64_t oh = 0; oh < s.OH; ++oh) {
      for (int64_t ow = 0; ow < s.OW; ++ow) acc[ow] = b;
      for (int64_t i = 0; i < s.KH; ++i) {
        const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
        if (ih < 0 || ih >= s.H) continue;
        for (int64_t j = 0; j < s.KW; ++j) {
          const int64_t woff = j * s.dil_w - s.pad_w, lo = a.wrange[2 * j], hi = a.wrange[2 * j + 1];
          const T wv = wk[i * s.KW + j];
          const T* src = xp + ih * a.xs.h + woff * a.xs.w;
          if (step == 1)
            for (int64_t ow = lo; ow < hi; ++ow) acc[ow] += wv * src[ow];
          else
            for (int64_t ow = lo; ow < hi; ++ow) acc[ow] += wv * src[ow * step];
        }
      }
      T* orow = op + oh * a.os.h;
      if (rp) {
        const T* rrow = rp + oh * a.rs.h;
        for (int64_t ow = 0; ow < s.OW; ++ow) orow[ow * a.os.w] = apply_act(acc[ow] + rrow[ow * a.rs.w], a.act);
      } else if (a.os.w == 1) {
        for (int64_t ow = 0; ow < s.OW; ++ow) orow[ow] = apply_act(acc[ow], a.act);
      } else {
        for (int64_t ow = 0; ow < s.OW; ++ow) orow[ow * a.os.w] = apply_act(acc[ow], a.act);
      }
    }
  }
};

// Forward, channel-vector kernel (x and out with unit channel stride, m == 1). Unit u = one output
// row (n, oh); for each run of L = kDwLanes channels, each pixel's run accumulates in one vector
// value over the taps (a register: a T[L] array was kept on the stack by GCC, a store-forward chain
// through every tap). Interior pixels (every tap of the row inside the input) take the tap loop
// without bounds checks. The last partial run (C % L channels) goes through scalars. a.w is wt[tap][C].
// Output rows of at most kDwShortRow pixels (EfficientNet / MobileNetV3 late stages: 2x2 .. 8x8
// maps) have few or no interior pixels, and the per-pixel border path below runs one dependent FMA
// chain per pixel with a bounds test per tap ([16, 672, 4, 4], 5x5: 0.72 ms against PyTorch's
// 0.32). Here the row's OWT pixels are OWT accumulators held in registers, tap-major: tap column j
// adds to the pixels of its valid range [lo, hi) (a.wrange, dw_column_ranges). Per pixel the same
// taps in the same order (i, then j) as the border path, so the same bits. Work per call: OWT x
// (valid taps) FMAs of L lanes for one L-channel run of one output row.
constexpr int64_t kDwShortRow = 8;
template <typename T, int OWT>
PYIMGCLS_INLINE void dw_fwd_short_row(const DwArgs<T>& a, const T* xn, int64_t oh, int64_t c0, DwVec<T>* acc) {
  using V = DwVec<T>;
  const ConvGeometry& s = a.s;
  const int64_t C = s.C;
  for (int64_t i = 0; i < s.KH; ++i) {
    const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
    if (ih < 0 || ih >= s.H) continue;
    const T* xr = xn + ih * a.xs.h + c0;
    const T* wr = a.w + i * s.KW * C + c0;
    for (int64_t j = 0; j < s.KW; ++j) {
      const int64_t lo = a.wrange[2 * j], hi = a.wrange[2 * j + 1];
      V wv;
      __builtin_memcpy(&wv, wr + j * C, sizeof(V));
      const T* xj = xr + (j * s.dil_w - s.pad_w) * a.xs.w;
#pragma GCC unroll 8
      for (int k = 0; k < OWT; ++k)
        if (k >= lo && k < hi) fma_run_w(acc[k], wv, xj + k * s.stride_w * a.xs.w);
    }
  }
}

template <typename T>
struct DwFwdNhwc {
  static PYIMGCLS_INLINE void run(int64_t u, const DwArgs<T>& a, T*) {
    constexpr int64_t L = kDwLanes<T>;
    using V = DwVec<T>;
    const ConvGeometry& s = a.s;
    const int64_t n = u / s.OH, oh = u % s.OH, C = s.C;
    const T* xn = a.x + n * a.xs.n;
    T* on = a.out + n * a.os.n + oh * a.os.h;
    const T* rn = a.res ? a.res + n * a.rs.n + oh * a.rs.h : nullptr;
    const int64_t xjs = s.dil_w * a.xs.w;  // input step between taps j
    for (int64_t c0 = 0; c0 < C; c0 += L) {
      const int64_t cb = std::min(L, C - c0);
      V bv = V{};
      if (a.bias && cb == L) __builtin_memcpy(&bv, a.bias + c0, sizeof(V));
      if (cb == L && s.OW <= kDwShortRow) {
        V acc[kDwShortRow];
        for (int64_t k = 0; k < s.OW; ++k) acc[k] = bv;
        switch (s.OW) {
          case 1: dw_fwd_short_row<T, 1>(a, xn, oh, c0, acc); break;
          case 2: dw_fwd_short_row<T, 2>(a, xn, oh, c0, acc); break;
          case 3: dw_fwd_short_row<T, 3>(a, xn, oh, c0, acc); break;
          case 4: dw_fwd_short_row<T, 4>(a, xn, oh, c0, acc); break;
          case 5: dw_fwd_short_row<T, 5>(a, xn, oh, c0, acc); break;
          case 6: dw_fwd_short_row<T, 6>(a, xn, oh, c0, acc); break;
          case 7: dw_fwd_short_row<T, 7>(a, xn, oh, c0, acc); break;
          default: dw_fwd_short_row<T, 8>(a, xn, oh, c0, acc); break;
        }
        for (int64_t ow = 0; ow < s.OW; ++ow) {
          const T* rp = rn ? rn + ow * a.rs.w + c0 * a.rs.c : nullptr;
          if (rp) {
            if (a.rs.c == 1) {
              V rv;
              __builtin_memcpy(&rv, rp, sizeof(V));
              acc[ow] += rv;
            } else {
              for (int64_t q = 0; q < L; ++q) acc[ow][q] += rp[q * a.rs.c];
            }
          }
          apply_act_in_place(acc[ow], a.act);
          __builtin_memcpy(on + ow * a.os.w + c0, &acc[ow], sizeof(V));
        }
        continue;
      }
      // Interior pixels [olo, ohi): every tap j inside the input row.
      int64_t olo, ohi;
      valid_range(-s.pad_w, s.stride_w, s.W - (s.KW - 1) * s.dil_w, s.OW, olo, ohi);
      for (int64_t ow = 0; ow < s.OW; ++ow) {
        if (cb == L && ow == olo && !rn) {
          // Four interior pixels at a time: four independent accumulator chains (one chain of
          // KH*KW dependent FMAs per pixel is latency-bound) sharing each weight load.
          for (; ow + 4 <= ohi; ow += 4) {
            V acc0 = bv, acc1 = bv, acc2 = bv, acc3 = bv;
            const int64_t iw0 = ow * s.stride_w - s.pad_w;
            const int64_t ps = s.stride_w * a.xs.w;  // input step between the four pixels
            for (int64_t i = 0; i < s.KH; ++i) {
              const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
              if (ih < 0 || ih >= s.H) continue;
              const T* xr = xn + ih * a.xs.h + iw0 * a.xs.w + c0;
              const T* wr = a.w + i * s.KW * C + c0;
              for (int64_t j = 0; j < s.KW; ++j) {
                V wv;
                __builtin_memcpy(&wv, wr + j * C, sizeof(V));
                const T* xj = xr + j * xjs;
                fma_run_w(acc0, wv, xj);
                fma_run_w(acc1, wv, xj + ps);
                fma_run_w(acc2, wv, xj + 2 * ps);
                fma_run_w(acc3, wv, xj + 3 * ps);
              }
            }
            T* op = on + ow * a.os.w + c0;
            apply_act_in_place(acc0, a.act);
            apply_act_in_place(acc1, a.act);
            apply_act_in_place(acc2, a.act);
            apply_act_in_place(acc3, a.act);
            __builtin_memcpy(op, &acc0, sizeof(V));
            __builtin_memcpy(op + a.os.w, &acc1, sizeof(V));
            __builtin_memcpy(op + 2 * a.os.w, &acc2, sizeof(V));
            __builtin_memcpy(op + 3 * a.os.w, &acc3, sizeof(V));
          }
          if (ow >= s.OW) break;
        }
        const int64_t iw0 = ow * s.stride_w - s.pad_w;
        const bool interior = ow >= olo && ow < ohi;
        T* op = on + ow * a.os.w + c0;
        const T* rp = rn ? rn + ow * a.rs.w + c0 * a.rs.c : nullptr;
        if (cb == L) {
          V acc = bv;
          for (int64_t i = 0; i < s.KH; ++i) {
            const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
            if (ih < 0 || ih >= s.H) continue;
            const T* xr = xn + ih * a.xs.h + iw0 * a.xs.w + c0;
            const T* wr = a.w + i * s.KW * C + c0;
            if (interior) {
              for (int64_t j = 0; j < s.KW; ++j) fma_run(acc, wr + j * C, xr + j * xjs);
            } else {
              for (int64_t j = 0; j < s.KW; ++j) {
                const int64_t iw = iw0 + j * s.dil_w;
                if (iw >= 0 && iw < s.W) fma_run(acc, wr + j * C, xr + j * xjs);
              }
            }
          }
          if (rp) {
            if (a.rs.c == 1) {
              V rv;
              __builtin_memcpy(&rv, rp, sizeof(V));
              acc += rv;
            } else {
              for (int64_t q = 0; q < L; ++q) acc[q] += rp[q * a.rs.c];
            }
          }
          apply_act_in_place(acc, a.act);
          __builtin_memcpy(op, &acc, sizeof(V));
        } else {
          T acc[L];
          for (int64_t q = 0; q < cb; ++q) acc[q] = a.bias ? a.bias[c0 + q] : T(0);
          for (int64_t i = 0; i < s.KH; ++i) {
            const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
            if (ih < 0 || ih >= s.H) continue;
            for (int64_t j = 0; j < s.KW; ++j) {
              const int64_t iw = iw0 + j * s.dil_w;
              if (iw < 0 || iw >= s.W) continue;
              const T* xv = xn + ih * a.xs.h + iw * a.xs.w + c0;
              const T* wv = a.w + (i * s.KW + j) * C + c0;
              for (int64_t q = 0; q < cb; ++q) acc[q] += wv[q] * xv[q];
            }
          }
          for (int64_t q = 0; q < cb; ++q) op[q] = apply_act(acc[q] + (rp ? rp[q * a.rs.c] : T(0)), a.act);
        }
      }
    }
  }
};

// dgrad, rows kernel. Unit u = one (n, c) plane of dx: the m output channels of c scatter their
// taps into a [H, W] buffer (scratch), which is then written to dx (every element once).
// a.x is g here (strides a.xs), a.out is dx (strides a.os).
template <typename T>
struct DwDgradRows {
  static PYIMGCLS_INLINE void run(int64_t u, const DwArgs<T>& a, T* buf) {
    const ConvGeometry& s = a.s;
    const int64_t n = u / s.C, c = u % s.C, KK = s.KH * s.KW;
    for (int64_t e = 0; e < s.H * s.W; ++e) buf[e] = T(0);
    for (int64_t r = 0; r < a.m; ++r) {
      const int64_t o = c * a.m + r;
      const T* gp = a.x + n * a.xs.n + o * a.xs.c;
      const T* wk = a.w + o * KK;
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        const T* grow = gp + oh * a.xs.h;
        for (int64_t i = 0; i < s.KH; ++i) {
          const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
          if (ih < 0 || ih >= s.H) continue;
          for (int64_t j = 0; j < s.KW; ++j) {
            const int64_t woff = j * s.dil_w - s.pad_w, lo = a.wrange[2 * j], hi = a.wrange[2 * j + 1];
            const T wv = wk[i * s.KW + j];
            T* dst = buf + ih * s.W + woff;
            if (s.stride_w == 1 && a.xs.w == 1)
              for (int64_t ow = lo; ow < hi; ++ow) dst[ow] += wv * grow[ow];
            else
              for (int64_t ow = lo; ow < hi; ++ow) dst[ow * s.stride_w] += wv * grow[ow * a.xs.w];
          }
        }
      }
    }
    T* dp = a.out + n * a.os.n + c * a.os.c;
    for (int64_t h = 0; h < s.H; ++h) {
      T* drow = dp + h * a.os.h;
      const T* brow = buf + h * s.W;
      if (a.os.w == 1)
        for (int64_t w_ = 0; w_ < s.W; ++w_) drow[w_] = brow[w_];
      else
        for (int64_t w_ = 0; w_ < s.W; ++w_) drow[w_ * a.os.w] = brow[w_];
    }
  }
};

// dgrad, channel-vector kernel (g and dx with unit channel stride, m == 1). Unit u = one dx row
// (n, ih); each dx pixel gathers the taps that reach it: oh = (ih + ph - i*dh) / sh when that
// divides exactly and lands in [0, OH) (same along w), so no two units write one element. Which taps
// reach a row / a column is tabulated once per call (dw_dgrad_nhwc_tables: no divisions per pixel
// and tap; at stride 2 the per-tap divisibility tests were most of the kernel's time). Pixels are
// walked by column phase ((iw + pw) % sw: iw, iw + sw, ...); four pixels of one phase whose tap
// lists are the same, shifted by one g column each, go together (four accumulator chains sharing
// each weight load), the others one at a time. a.x is g, a.w is wt[tap][C], a.out is dx, a.wrange
// the tables: per dx row ih at ih*(1 + 2*KH): count, then (i*KW*C, oh*gs.h) pairs; per dx column
// iw at H*(1 + 2*KH) + iw*(2 + 2*KW): count, four-pixel flag, then (j*C, ow*gs.w) pairs.
inline std::vector<int64_t> dw_dgrad_nhwc_tables(const ConvGeometry& s, Strides4 gs) {
  const int64_t RE = 1 + 2 * s.KH, CE = 2 + 2 * s.KW;
  std::vector<int64_t> t(static_cast<size_t>(s.H * RE + s.W * CE), 0);
  for (int64_t ih = 0; ih < s.H; ++ih) {
    int64_t* e = t.data() + ih * RE;
    for (int64_t i = 0; i < s.KH; ++i) {
      const int64_t th = ih + s.pad_h - i * s.dil_h;
      if (th < 0 || th % s.stride_h != 0 || th / s.stride_h >= s.OH) continue;
      e[1 + 2 * e[0]] = i * s.KW * s.C;
      e[2 + 2 * e[0]] = (th / s.stride_h) * gs.h;
      ++e[0];
    }
  }
  int64_t* cols = t.data() + s.H * RE;
  for (int64_t iw = 0; iw < s.W; ++iw) {
    int64_t* e = cols + iw * CE;
    for (int64_t j = 0; j < s.KW; ++j) {
      const int64_t tw = iw + s.pad_w - j * s.dil_w;
      if (tw < 0 || tw % s.stride_w != 0 || tw / s.stride_w >= s.OW) continue;
      e[2 + 2 * e[0]] = j * s.C;
      e[3 + 2 * e[0]] = (tw / s.stride_w) * gs.w;
      ++e[0];
    }
  }
  for (int64_t iw = 0; iw + 3 * s.stride_w < s.W; ++iw) {  // same taps at iw + t*sw, g column + t
    const int64_t* e = cols + iw * CE;
    bool same = e[0] > 0;
    for (int64_t q = 1; q <= 3 && same; ++q) {
      const int64_t* f = cols + (iw + q * s.stride_w) * CE;
      same = f[0] == e[0];
      for (int64_t k = 0; k < e[0] && same; ++k)
        same = f[2 + 2 * k] == e[2 + 2 * k] && f[3 + 2 * k] == e[3 + 2 * k] + q * gs.w;
    }
    cols[iw * CE + 1] = same ? 1 : 0;
  }
  return t;
}

template <typename T>
struct DwDgradNhwc {
  static PYIMGCLS_INLINE void run(int64_t u, const DwArgs<T>& a, T*) {
    constexpr int64_t L = kDwLanes<T>;
    using V = DwVec<T>;
    const ConvGeometry& s = a.s;
    const int64_t n = u / s.H, ih = u % s.H, C = s.C, sw = s.stride_w;
    const int64_t RE = 1 + 2 * s.KH, CE = 2 + 2 * s.KW;
    const T* gn = a.x + n * a.xs.n;
    T* dn = a.out + n * a.os.n + ih * a.os.h;
    const int64_t* rows = a.wrange + ih * RE;
    const int64_t* cols = a.wrange + s.H * RE;
    const int64_t nr = rows[0];
    const int64_t ps = a.xs.w;  // g step between the pixels of a four-pixel block
    for (int64_t c0 = 0; c0 < C; c0 += L) {
      const int64_t cb = std::min(L, C - c0);
      for (int64_t r = 0; r < std::min(sw, s.W); ++r) {
        for (int64_t iw = r; iw < s.W;) {
          const int64_t* ce = cols + iw * CE;
          const int64_t nc = ce[0];
          T* dp = dn + iw * a.os.w + c0;
          if (cb == L && ce[1]) {
            V acc0 = V{}, acc1 = V{}, acc2 = V{}, acc3 = V{};
            for (int64_t ri = 0; ri < nr; ++ri) {
              const T* wr = a.w + rows[1 + 2 * ri] + c0;
              const T* gr = gn + rows[2 + 2 * ri] + c0;
              for (int64_t ci = 0; ci < nc; ++ci) {
                V wv;
                __builtin_memcpy(&wv, wr + ce[2 + 2 * ci], sizeof(V));
                const T* gj = gr + ce[3 + 2 * ci];
                fma_run_w(acc0, wv, gj);
                fma_run_w(acc1, wv, gj + ps);
                fma_run_w(acc2, wv, gj + 2 * ps);
                fma_run_w(acc3, wv, gj + 3 * ps);
              }
            }
            const int64_t dstep = sw * a.os.w;
            __builtin_memcpy(dp, &acc0, sizeof(V));
            __builtin_memcpy(dp + dstep, &acc1, sizeof(V));
            __builtin_memcpy(dp + 2 * dstep, &acc2, sizeof(V));
            __builtin_memcpy(dp + 3 * dstep, &acc3, sizeof(V));
            iw += 4 * sw;
            continue;
          }
          if (cb == L) {
            V acc = V{};
            for (int64_t ri = 0; ri < nr; ++ri) {
              const T* wr = a.w + rows[1 + 2 * ri] + c0;
              const T* gr = gn + rows[2 + 2 * ri] + c0;
              for (int64_t ci = 0; ci < nc; ++ci) fma_run(acc, wr + ce[2 + 2 * ci], gr + ce[3 + 2 * ci]);
            }
            __builtin_memcpy(dp, &acc, sizeof(V));
          } else {
            T acc[L] = {};
            for (int64_t ri = 0; ri < nr; ++ri) {
              const T* wr = a.w + rows[1 + 2 * ri] + c0;
              const T* gr = gn + rows[2 + 2 * ri] + c0;
              for (int64_t ci = 0; ci < nc; ++ci) {
                const T* wv = wr + ce[2 + 2 * ci];
                const T* gv = gr + ce[3 + 2 * ci];
                for (int64_t q = 0; q < cb; ++q) acc[q] += wv[q] * gv[q];
              }
            }
            for (int64_t q = 0; q < cb; ++q) dp[q] = acc[q];
          }
          iw += sw;
        }
      }
    }
  }
};

// wgrad, rows kernel. Unit u = one output channel o: per tap a T[OW] accumulator row (scratch,
// KH*KW*OW elements) summed over (n, oh), then over ow: dw[o, tap] = sum_ow acc[tap][ow].
// a.x is x (strides a.xs), a.g is g (strides a.gs), a.out is dw [O][KH*KW].
template <typename T>
struct DwWgradRows {
  static PYIMGCLS_INLINE void run(int64_t o, const DwArgs<T>& a, T* acc) {
    const ConvGeometry& s = a.s;
    const int64_t KK = s.KH * s.KW, c = o / a.m;
    for (int64_t e = 0; e < KK * s.OW; ++e) acc[e] = T(0);
    const int64_t step = s.stride_w * a.xs.w;
    for (int64_t n = 0; n < s.N; ++n) {
      const T* xp = a.x + n * a.xs.n + c * a.xs.c;
      const T* gp = a.g + n * a.gs.n + o * a.gs.c;
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        const T* grow = gp + oh * a.gs.h;
        for (int64_t i = 0; i < s.KH; ++i) {
          const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
          if (ih < 0 || ih >= s.H) continue;
          for (int64_t j = 0; j < s.KW; ++j) {
            const int64_t woff = j * s.dil_w - s.pad_w, lo = a.wrange[2 * j], hi = a.wrange[2 * j + 1];
            const T* src = xp + ih * a.xs.h + woff * a.xs.w;
            T* arow = acc + (i * s.KW + j) * s.OW;
            if (step == 1 && a.gs.w == 1)
              for (int64_t ow = lo; ow < hi; ++ow) arow[ow] += grow[ow] * src[ow];
            else
              for (int64_t ow = lo; ow < hi; ++ow) arow[ow] += grow[ow * a.gs.w] * src[ow * step];
          }
        }
      }
    }
    for (int64_t t = 0; t < KK; ++t) {
      T sum = T(0);
      for (int64_t ow = 0; ow < s.OW; ++ow) sum += acc[t * s.OW + ow];
      a.out[o * KK + t] = sum;
    }
  }
};

// wgrad, channel-vector kernel (x and g with unit channel stride, m == 1). Unit u = (run of L
// channels, tap): four independent register accumulators of L lanes (consecutive ow round-robin,
// so the FMA latency chain is four deep) over every (n, oh, ow) the tap reaches, added in a fixed
// order at the end.
template <typename T>
struct DwWgradNhwc {
  static PYIMGCLS_INLINE void run(int64_t u, const DwArgs<T>& a, T*) {
    constexpr int64_t L = kDwLanes<T>;
    using V = DwVec<T>;
    const ConvGeometry& s = a.s;
    const int64_t KK = s.KH * s.KW, t = u % KK, c0 = (u / KK) * L, C = s.C;
    const int64_t cb = std::min(L, C - c0), i = t / s.KW, j = t % s.KW;
    V acc0 = V{}, acc1 = V{}, acc2 = V{}, acc3 = V{};
    T tail[L] = {};
    int64_t hlo, hhi, wlo, whi;
    valid_range(i * s.dil_h - s.pad_h, s.stride_h, s.H, s.OH, hlo, hhi);
    valid_range(j * s.dil_w - s.pad_w, s.stride_w, s.W, s.OW, wlo, whi);
    const int64_t xstep = s.stride_w * a.xs.w;
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t oh = hlo; oh < hhi; ++oh) {
        const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
        const T* grow = a.g + n * a.gs.n + oh * a.gs.h + c0;
        const T* xrow = a.x + n * a.xs.n + ih * a.xs.h + (j * s.dil_w - s.pad_w) * a.xs.w + c0;
        int64_t ow = wlo;
        if (cb == L) {
          for (; ow + 4 <= whi; ow += 4) {
            fma_run(acc0, grow + ow * a.gs.w, xrow + ow * xstep);
            fma_run(acc1, grow + (ow + 1) * a.gs.w, xrow + (ow + 1) * xstep);
            fma_run(acc2, grow + (ow + 2) * a.gs.w, xrow + (ow + 2) * xstep);
            fma_run(acc3, grow + (ow + 3) * a.gs.w, xrow + (ow + 3) * xstep);
          }
          for (; ow < whi; ++ow) fma_run(acc0, grow + ow * a.gs.w, xrow + ow * xstep);
        } else {
          for (; ow < whi; ++ow) {
            const T* gv = grow + ow * a.gs.w;
            const T* xv = xrow + ow * xstep;
            for (int64_t q = 0; q < cb; ++q) tail[q] += gv[q] * xv[q];
          }
        }
      }
    if (cb == L) {
      const V sum = (acc0 + acc1) + (acc2 + acc3);
      __builtin_memcpy(tail, &sum, sizeof(sum));
    }
    for (int64_t q = 0; q < cb; ++q) a.out[(c0 + q) * KK + t] = tail[q];
  }
};

// wgrad, channel-vector kernel by tap row (m == 1, x and g with unit channel stride, KW <=
// kDwWgradRowTaps). Unit u = (run of L channels, tap row i): the KW taps of row i are summed together,
// so each g vector is loaded once per tap row instead of once per tap, and each x vector once per
// (row, pixel) for all KW taps (the per-tap kernel above re-read g and x from L2 KK times: at stride
// 2, 16x16 C 240, it ran at 0.4-0.6x PyTorch). Accumulators: KW vectors per chain, two chains
// (pairs of interior output pixels alternate), added at the end; the output pixels where some tap of
// the row falls outside the input go through bounds checks. Each weight is summed by one thread in a
// fixed order (n, oh, ow): bit-identical for any thread count. a.x is x, a.g is g, a.out is dw [O][KK].
constexpr int64_t kDwWgradRowTaps = 8;

template <typename T>
struct DwWgradNhwcRow {
  static PYIMGCLS_INLINE void run(int64_t u, const DwArgs<T>& a, T*) {
    constexpr int64_t L = kDwLanes<T>;
    constexpr int64_t J = kDwWgradRowTaps;
    using V = DwVec<T>;
    const ConvGeometry& s = a.s;
    const int64_t KK = s.KH * s.KW, KW = s.KW, i = u % s.KH, c0 = (u / s.KH) * L, C = s.C;
    const int64_t cb = std::min(L, C - c0);
    V acc0[J], acc1[J];
    T tail[J][L];
    for (int64_t j = 0; j < J; ++j) {
      acc0[j] = V{};
      acc1[j] = V{};
      for (int64_t q = 0; q < L; ++q) tail[j][q] = T(0);
    }
    int64_t hlo, hhi, wlo[J], whi[J];
    valid_range(i * s.dil_h - s.pad_h, s.stride_h, s.H, s.OH, hlo, hhi);
    int64_t ilo = 0, ihi = s.OW;  // output pixels where every tap of the row is inside the input
    for (int64_t j = 0; j < KW; ++j) {
      valid_range(j * s.dil_w - s.pad_w, s.stride_w, s.W, s.OW, wlo[j], whi[j]);
      ilo = std::max(ilo, wlo[j]);
      ihi = std::min(ihi, whi[j]);
    }
    ihi = std::max(ihi, ilo);
    const int64_t xstep = s.stride_w * a.xs.w, xjs = s.dil_w * a.xs.w, gws = a.gs.w;
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t oh = hlo; oh < hhi; ++oh) {
        const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h;
        const T* grow = a.g + n * a.gs.n + oh * a.gs.h + c0;
        const T* xrow = a.x + n * a.xs.n + ih * a.xs.h - s.pad_w * a.xs.w + c0;  // + ow*xstep + j*xjs
        auto edge = [&](int64_t ow) {
          const T* gv = grow + ow * gws;
          const T* xv = xrow + ow * xstep;
          for (int64_t j = 0; j < KW; ++j) {
            if (ow < wlo[j] || ow >= whi[j]) continue;
            if (cb == L)
              fma_run(acc0[j], gv, xv + j * xjs);
            else
              for (int64_t q = 0; q < cb; ++q) tail[j][q] += gv[q] * xv[j * xjs + q];
          }
        };
        for (int64_t ow = 0; ow < ilo; ++ow) edge(ow);
        if (cb == L) {
          int64_t ow = ilo;
          for (; ow + 2 <= ihi; ow += 2) {
            V g0, g1;
            __builtin_memcpy(&g0, grow + ow * gws, sizeof(V));
            __builtin_memcpy(&g1, grow + (ow + 1) * gws, sizeof(V));
            const T* x0 = xrow + ow * xstep;
            for (int64_t j = 0; j < KW; ++j) {
              fma_run_w(acc0[j], g0, x0 + j * xjs);
              fma_run_w(acc1[j], g1, x0 + xstep + j * xjs);
            }
          }
          for (; ow < ihi; ++ow) edge(ow);
        } else {
          for (int64_t ow = ilo; ow < ihi; ++ow) edge(ow);
        }
        for (int64_t ow = ihi; ow < s.OW; ++ow) edge(ow);
      }
    for (int64_t j = 0; j < KW; ++j) {
      if (cb == L) {
        const V sum = acc0[j] + acc1[j];
        __builtin_memcpy(tail[j], &sum, sizeof(V));
      }
      for (int64_t q = 0; q < cb; ++q) a.out[(c0 + q) * KK + i * KW + j] = tail[j][q];
    }
  }
};

// w [O][KK] -> wt [KK][O]: one tap's weights across channels contiguous (channel-vector kernels).
template <typename T>
std::vector<T> dw_weight_by_tap(const ConvGeometry& s, const T* w) {
  const int64_t KK = s.KH * s.KW;
  std::vector<T> wt(static_cast<size_t>(KK * s.O));
  for (int64_t o = 0; o < s.O; ++o)
    for (int64_t t = 0; t < KK; ++t) wt[static_cast<size_t>(t * s.O + o)] = w[o * KK + t];
  return wt;
}

// The ow range [lo, hi) whose input column lies inside the row, for each tap column j (the rows
// kernels' inner loop bounds, computed once per call instead of once per row).
inline std::vector<int64_t> dw_column_ranges(const ConvGeometry& s) {
  std::vector<int64_t> r(static_cast<size_t>(2 * s.KW));
  for (int64_t j = 0; j < s.KW; ++j) valid_range(j * s.dil_w - s.pad_w, s.stride_w, s.W, s.OW, r[2 * j], r[2 * j + 1]);
  return r;
}

// Below this output width an NCHW (or other non-channels-last) depthwise convolution with m == 1 that
// the plane kernels do not take (dw_plane_fits; and the stride-2 dgrad) is
// run by the channel-vector kernels on channels_last copies: the rows kernels' inner loops are then
// too short to vectorise (MobileNetV2 at 64x64 input: 4x4 planes of 576 channels ran 15x slower in
// rows than the channel-vector kernel on the same data). Cost of the copies: one read and one
// write of the input and of the output (dgrad: g and dx; wgrad: x and g).
constexpr int64_t kDwRowsMinWidth = 32;

// dst[n, h, w, c] (dense NHWC) = src[n, c, h, w] (any strides), or back (to_nhwc false). Unit =
// one image; its channel planes are walked in memory order (sequential on the NCHW side, so the
// hardware prefetcher follows) and the image's NHWC block (H*W*C elements, in L2 at MobileNet
// sizes) at stride C. Walking a (n, h) row with all channels instead touches C lines a plane apart
// per row: no stream for the prefetcher, and 4 KiB planes alias in one L1 set (measured 3x slower).
template <typename T>
void dw_relayout(bool to_nhwc, int64_t N, int64_t C, int64_t H, int64_t W, const T* src, Strides4 ss, T* dst,
                 Strides4 ds) {
  const int nt = N * C * H * W < kDwParallelMacs ? 1 : std::max(1, omp_get_max_threads());
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t n = 0; n < N; ++n) {
    if (to_nhwc) {
      T* img = dst + n * H * W * C;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t h = 0; h < H; ++h) {
          const T* sp = src + n * ss.n + c * ss.c + h * ss.h;
          T* dp = img + h * W * C + c;
          for (int64_t w_ = 0; w_ < W; ++w_) dp[w_ * C] = sp[w_ * ss.w];
        }
    } else {
      const T* img = src + n * H * W * C;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t h = 0; h < H; ++h) {
          const T* sp = img + h * W * C + c;
          T* dp = dst + n * ds.n + c * ds.c + h * ds.h;
          for (int64_t w_ = 0; w_ < W; ++w_) dp[w_ * ds.w] = sp[w_ * C];
        }
    }
  }
}

// A dense NHWC scratch copy of an [N, C, H, W] tensor (or uninitialised scratch when src is null:
// no value-initialising memset, the kernel writes every element).
template <typename T>
struct DwNhwcCopy {
  std::unique_ptr<T[]> buf;
  Strides4 st;
  DwNhwcCopy(int64_t N, int64_t C, int64_t H, int64_t W, const T* src, Strides4 ss)
      : buf(new T[static_cast<size_t>(N * C * H * W)]), st{H * W * C, 1, W * C, C} {
    if (src) dw_relayout(true, N, C, H, W, src, ss, buf.get(), st);
  }
};

// Plane kernels for NCHW-like layouts (channel stride != 1) with a short output row
// (dw_plane_fits: 12..64 floats): EfficientNet / MobileNetV3 at 64x64 input have 32- and 16-wide
// planes, where the rows kernels' inner loops are 16-32 elements and the channels_last copies (the
// other option below 32) cost a read and a write of the input and of the output around the kernel.
// One (n, o) input plane is first copied into a per-thread scratch (in L1: at most 33 x 2 x 24
// floats at 32x32 input, stride 2) with its zero padding, each padded row split into stride_w
// phases (phase p holds padded columns p, p + sw, p + 2 sw, ...): tap (i, j) of output columns
// [c0, c0 + L) is then one unaligned vector load at row oh*sh + i*dh, phase (j*dw) % sw, column
// c0 + (j*dw) / sw, for stride 1 and 2 alike. Output rows are computed four at a time (four
// independent FMA chains sharing each weight broadcast); lanes past OW compute on padding and are not
// stored. Scratch row r holds input row r - pad_h, padded column k*sw + p input column
// k*sw + p - pad_w: any sign of padding (the stride-1 dgrad runs here as a forward over g with
// flipped taps and padding (K-1)*d - p).
struct DwPlane {
  int64_t Hp, Wq, RS, chunks;  // scratch rows, columns per phase, row stride (sw * Wq), L-chunks of OW
};

template <typename T>
inline DwPlane dw_plane(const ConvGeometry& s) {
  DwPlane p;
  p.chunks = (s.OW + kDwLanes<T> - 1) / kDwLanes<T>;
  p.Wq = p.chunks * kDwLanes<T> + ((s.KW - 1) * s.dil_w) / s.stride_w;
  p.RS = s.stride_w * p.Wq;
  p.Hp = (s.OH - 1) * s.stride_h + (s.KH - 1) * s.dil_h + 1;
  return p;
}

inline int64_t dw_plane_elems(const DwPlane& p) {
  return p.Hp * p.RS;
}

// Whether the plane kernels take a call with output rows of ow (the callers check the layout):
// 3/4 of a vector .. 2 * kDwRowsMinWidth (float: 12..64). Narrower rows leave most lanes of each
// vector idle (8-wide planes, 5x5, measured 2x slower than the channels_last copies). At 32 they
// beat the rows kernels 2-9x (1 thread, N = 16: C 16 / 32, 32x32, ms 0.16 / 0.30 vs 0.72 / 2.9);
// beyond 64 the plane leaves L1 and the rows kernels' inner loops are long.
template <typename T>
inline bool dw_plane_fits(int64_t ow) {
  return 4 * ow >= 3 * kDwLanes<T> && ow <= 2 * kDwRowsMinWidth;
}

// Scratch offset of tap column j within a padded row: phase (j*dw) % sw, column (j*dw) / sw. Once
// per call (two integer divisions per tap and row were a visible share of the forward's samples);
// the plane kernels read it through DwArgs::wrange.
inline std::vector<int64_t> dw_plane_tap_offsets(const ConvGeometry& s, const DwPlane& p) {
  std::vector<int64_t> off(static_cast<size_t>(s.KW));
  for (int64_t j = 0; j < s.KW; ++j) off[j] = ((j * s.dil_w) % s.stride_w) * p.Wq + (j * s.dil_w) / s.stride_w;
  return off;
}

// Copies plane xp (row stride hs, column stride ws) into the padded, phase-split scratch buf: one
// memset of the whole scratch (Hp * RS elements, ~1-3 KB), then each input row's span per phase
// (per-row zero loops of 1-2 elements cost more than the memset).
template <typename T>
PYIMGCLS_INLINE void dw_plane_fill(const ConvGeometry& s, const DwPlane& p, const T* xp, int64_t hs, int64_t ws,
                                   T* buf) {
  const int64_t sw = s.stride_w;
  std::memset(buf, 0, sizeof(T) * static_cast<size_t>(p.Hp * p.RS));
  int64_t rlo, rhi;  // scratch rows r holding input rows r - pad_h in [0, H)
  valid_range(-s.pad_h, 1, s.H, p.Hp, rlo, rhi);
  for (int64_t ph = 0; ph < sw; ++ph) {
    // columns k of phase ph with 0 <= k*sw + ph - pad_w < W
    int64_t lo, hi;
    valid_range(ph - s.pad_w, sw, s.W, p.Wq, lo, hi);
    const int64_t step = sw * ws, len = hi - lo;
    for (int64_t r = rlo; r < rhi; ++r) {
      T* q = buf + r * p.RS + ph * p.Wq + lo;
      const T* src = xp + (r - s.pad_h) * hs + (lo * sw + ph - s.pad_w) * ws;
      // unit and stride-2 steps as constants, so the copy vectorises (stride 2: a deinterleave)
      if (step == 1)
        for (int64_t k = 0; k < len; ++k) q[k] = src[k];
      else if (step == 2)
        for (int64_t k = 0; k < len; ++k) q[k] = src[2 * k];
      else
        for (int64_t k = 0; k < len; ++k) q[k] = src[k * step];
    }
  }
}

// Epilogue of one L-chunk of an output row: + residual, activation, store cnt lanes.
template <typename V, typename T>
PYIMGCLS_INLINE void dw_plane_store(V& acc, const DwArgs<T>& a, T* orow, const T* rrow, int64_t cnt) {
  constexpr int64_t L = kDwLanes<T>;
  T tmp[L];
  if (rrow) {
    __builtin_memcpy(tmp, &acc, sizeof(V));
    for (int64_t q = 0; q < cnt; ++q) tmp[q] += rrow[q * a.rs.w];
    __builtin_memcpy(&acc, tmp, sizeof(V));
  }
  apply_act_in_place(acc, a.act);
  if (cnt == L && a.os.w == 1) {
    __builtin_memcpy(orow, &acc, sizeof(V));
    return;
  }
  __builtin_memcpy(tmp, &acc, sizeof(V));
  for (int64_t q = 0; q < cnt; ++q) orow[q * a.os.w] = tmp[q];
}

// Forward, plane kernel. Unit u = one (n, o) plane; scratch: dw_plane(s).Hp * RS elements.
// a.w is w [O][KH*KW], a.wrange the tap column offsets (dw_plane_tap_offsets).
template <typename T>
struct DwFwdPlane {
  static PYIMGCLS_INLINE void run(int64_t u, const DwArgs<T>& a, T* buf) {
    constexpr int64_t L = kDwLanes<T>;
    using V = DwVec<T>;
    const ConvGeometry& s = a.s;
    const DwPlane p = dw_plane<T>(s);
    const int64_t n = u / s.O, o = u % s.O, KK = s.KH * s.KW, sh = s.stride_h;
    dw_plane_fill(s, p, a.x + n * a.xs.n + (o / a.m) * a.xs.c, a.xs.h, a.xs.w, buf);
    const T* wk = a.w + o * KK;
    const V bv = V{} + (a.bias ? a.bias[o] : T(0));
    T* op = a.out + n * a.os.n + o * a.os.c;
    const T* rp = a.res ? a.res + n * a.rs.n + o * a.rs.c : nullptr;
    for (int64_t c0 = 0; c0 < s.OW; c0 += L) {
      const int64_t cnt = std::min(L, s.OW - c0);
      int64_t oh = 0;
      for (; oh + 4 <= s.OH; oh += 4) {
        V acc0 = bv, acc1 = bv, acc2 = bv, acc3 = bv;
        const int64_t rstep = sh * p.RS;  // scratch step between the four output rows
        for (int64_t i = 0; i < s.KH; ++i) {
          const T* r0 = buf + (oh * sh + i * s.dil_h) * p.RS + c0;
          for (int64_t j = 0; j < s.KW; ++j) {
            const T* xj = r0 + a.wrange[j];
            const V wv = V{} + wk[i * s.KW + j];
            fma_run_w(acc0, wv, xj);
            fma_run_w(acc1, wv, xj + rstep);
            fma_run_w(acc2, wv, xj + 2 * rstep);
            fma_run_w(acc3, wv, xj + 3 * rstep);
          }
        }
        T* orow = op + oh * a.os.h + c0 * a.os.w;
        const T* rrow = rp ? rp + oh * a.rs.h + c0 * a.rs.w : nullptr;
        dw_plane_store(acc0, a, orow, rrow, cnt);
        dw_plane_store(acc1, a, orow + a.os.h, rrow ? rrow + a.rs.h : nullptr, cnt);
        dw_plane_store(acc2, a, orow + 2 * a.os.h, rrow ? rrow + 2 * a.rs.h : nullptr, cnt);
        dw_plane_store(acc3, a, orow + 3 * a.os.h, rrow ? rrow + 3 * a.rs.h : nullptr, cnt);
      }
      for (; oh < s.OH; ++oh) {
        V acc = bv;
        for (int64_t i = 0; i < s.KH; ++i) {
          const T* r0 = buf + (oh * sh + i * s.dil_h) * p.RS + c0;
          for (int64_t j = 0; j < s.KW; ++j) fma_run_w(acc, V{} + wk[i * s.KW + j], r0 + a.wrange[j]);
        }
        dw_plane_store(acc, a, op + oh * a.os.h + c0 * a.os.w, rp ? rp + oh * a.rs.h + c0 * a.rs.w : nullptr, cnt);
      }
    }
  }
};

// wgrad, plane kernel. Unit u = one output channel o, summed over the batch: per image the input
// plane goes through the same scratch as the forward and the gradient plane into rows of whole
// L-chunks (lanes past OW zero); then, four taps at a time, four register accumulators (one per
// tap) take gradient chunk x the tap's scratch chunk over every output row and chunk (the gradient
// plane is re-read from L1 per group of taps). The accumulators live in scratch between groups and
// images; their lanes are added in lane order at the end: one thread, a fixed order, bit-identical
// for any thread count. Lanes past OW read padding or input columns no output reaches; they are
// selected to 0 (a multiply by the zero gradient would turn an inf there into NaN).
// a.x is x, a.g is g, a.out is dw [O][KK], a.wrange the KK tap offsets in the scratch (row i*dh
// and column, dw_bwd_weight).
template <typename T>
struct DwWgradPlane {
  static PYIMGCLS_INLINE void run(int64_t o, const DwArgs<T>& a, T* buf) {
    constexpr int64_t L = kDwLanes<T>;
    using V = DwVec<T>;
    using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
    using M = Vec<I, 64>;
    const ConvGeometry& s = a.s;
    const DwPlane p = dw_plane<T>(s);
    const int64_t KK = s.KH * s.KW, c = o / a.m, GW = p.chunks * L, rstep = s.stride_h * p.RS;
    const int64_t last = (p.chunks - 1) * L;  // the only chunk that can be partial
    T* gbuf = buf + dw_plane_elems(p);
    T* acc = gbuf + s.OH * GW;
    for (int64_t e = 0; e < KK * L; ++e) acc[e] = T(0);
    M lane = M{};
    for (int64_t q = 0; q < L; ++q) lane[q] = static_cast<I>(q);
    const M keep = lane < static_cast<I>(s.OW - last);
    const bool masked = s.OW - last < L;
    for (int64_t n = 0; n < s.N; ++n) {
      dw_plane_fill(s, p, a.x + n * a.xs.n + c * a.xs.c, a.xs.h, a.xs.w, buf);
      const T* gp = a.g + n * a.gs.n + o * a.gs.c;
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        T* gr = gbuf + oh * GW;
        const T* grow = gp + oh * a.gs.h;
        if (a.gs.w == 1)
          for (int64_t k = 0; k < s.OW; ++k) gr[k] = grow[k];
        else
          for (int64_t k = 0; k < s.OW; ++k) gr[k] = grow[k * a.gs.w];
        for (int64_t k = s.OW; k < GW; ++k) gr[k] = T(0);
      }
      int64_t t = 0;
      for (; t + 4 <= KK; t += 4) {
        const int64_t f0 = a.wrange[t], f1 = a.wrange[t + 1], f2 = a.wrange[t + 2], f3 = a.wrange[t + 3];
        V a0, a1, a2, a3;
        __builtin_memcpy(&a0, acc + t * L, sizeof(V));
        __builtin_memcpy(&a1, acc + (t + 1) * L, sizeof(V));
        __builtin_memcpy(&a2, acc + (t + 2) * L, sizeof(V));
        __builtin_memcpy(&a3, acc + (t + 3) * L, sizeof(V));
        for (int64_t oh = 0; oh < s.OH; ++oh) {
          const T* xr = buf + oh * rstep;
          const T* gr = gbuf + oh * GW;
          for (int64_t c0 = 0; c0 < GW; c0 += L) {
            V gv, x0, x1, x2, x3;
            __builtin_memcpy(&gv, gr + c0, sizeof(V));
            __builtin_memcpy(&x0, xr + c0 + f0, sizeof(V));
            __builtin_memcpy(&x1, xr + c0 + f1, sizeof(V));
            __builtin_memcpy(&x2, xr + c0 + f2, sizeof(V));
            __builtin_memcpy(&x3, xr + c0 + f3, sizeof(V));
            if (masked && c0 == last) {
              x0 = keep ? x0 : V{};
              x1 = keep ? x1 : V{};
              x2 = keep ? x2 : V{};
              x3 = keep ? x3 : V{};
            }
            a0 += gv * x0;
            a1 += gv * x1;
            a2 += gv * x2;
            a3 += gv * x3;
          }
        }
        __builtin_memcpy(acc + t * L, &a0, sizeof(V));
        __builtin_memcpy(acc + (t + 1) * L, &a1, sizeof(V));
        __builtin_memcpy(acc + (t + 2) * L, &a2, sizeof(V));
        __builtin_memcpy(acc + (t + 3) * L, &a3, sizeof(V));
      }
      for (; t < KK; ++t) {
        const int64_t f0 = a.wrange[t];
        V a0;
        __builtin_memcpy(&a0, acc + t * L, sizeof(V));
        for (int64_t oh = 0; oh < s.OH; ++oh) {
          const T* xr = buf + oh * rstep;
          const T* gr = gbuf + oh * GW;
          for (int64_t c0 = 0; c0 < GW; c0 += L) {
            V gv, x0;
            __builtin_memcpy(&gv, gr + c0, sizeof(V));
            __builtin_memcpy(&x0, xr + c0 + f0, sizeof(V));
            if (masked && c0 == last) x0 = keep ? x0 : V{};
            a0 += gv * x0;
          }
        }
        __builtin_memcpy(acc + t * L, &a0, sizeof(V));
      }
    }
    for (int64_t t = 0; t < KK; ++t) {
      T sum = T(0);
      for (int64_t q = 0; q < L; ++q) sum += acc[t * L + q];
      a.out[o * KK + t] = sum;
    }
  }
};

// dgrad at stride > 1, plane kernel (m == 1), by output phase. Unit u = one (n, c) plane of dx.
// dx row ih = ka*sh + ra - ph (row phase ra, ka-th row of that phase) receives g row ka - qi from
// exactly the taps i with (i*dh) % sh == ra, qi = (i*dh) / sh; columns likewise (phase rb, taps j
// with (j*dw) % sw == rb, g column kb - qj). So each of the sh*sw phases of dx is a stride-1
// correlation of g with a sub-filter of about (KH/sh) x (KW/sw) taps: no divisibility tests, no
// scatter. The gradient plane g[n, c] is copied into a scratch with Pt zero rows on top and Pl zero
// columns on the left (the largest qi, qj) and zeros past OH / OW, so every tap reads in bounds.
// Per row phase, four dx rows at a time (four FMA chains per weight broadcast, as the forward's
// plane kernel), L-wide vectors along the phase's columns kb, one unaligned load per tap; the sw
// column phases of the four rows go to a row buffer and are interleaved into dx. Lanes and rows
// past dx's edge compute on the zero padding and are not stored. Every dx element is summed once,
// by one thread, in tap order. FLOPs 2*N*C*H*RW*sw*KH*KW/(sh*sw) ~ the forward's (lanes past the
// phase's columns: RW = whole L-chunks of (W + pw) / sw); bytes |g| + |dx| + |w|.
// a.x is g (strides a.xs), a.w is w [C][KH*KW], a.out is dx (strides a.os), a.wrange the phase
// tap lists (dw_dgrad_phase_taps).
struct DwDgradPlaneShape {
  int64_t Pt, Pl, GH, GWp, chunks;  // top / left zero rows / columns, scratch rows / row length, L-chunks per phase
};

template <typename T>
inline DwDgradPlaneShape dw_dgrad_plane_shape(const ConvGeometry& s) {
  DwDgradPlaneShape p;
  p.Pt = ((s.KH - 1) * s.dil_h) / s.stride_h;
  p.Pl = ((s.KW - 1) * s.dil_w) / s.stride_w;
  const int64_t kc = (s.W + s.pad_w + s.stride_w - 1) / s.stride_w;  // phase columns reaching dx
  const int64_t kr = (s.H + s.pad_h + s.stride_h - 1) / s.stride_h;  // phase rows reaching dx
  p.chunks = (kc + kDwLanes<T> - 1) / kDwLanes<T>;
  p.GWp = p.Pl + std::max(p.chunks * kDwLanes<T>, s.OW);
  p.GH = p.Pt + std::max(kr + 3, s.OH);  // the last four-row block may run 3 rows past
  return p;
}

template <typename T>
inline size_t dw_dgrad_plane_scratch(const ConvGeometry& s) {
  const DwDgradPlaneShape p = dw_dgrad_plane_shape<T>(s);
  return static_cast<size_t>(p.GH * p.GWp + 4 * s.stride_w * p.chunks * kDwLanes<T>);
}

// The taps of each phase (ra, rb): entries [2*sh*sw + 1 + 2*e] = tap index i*KW + j and
// [.. + 1] = its scratch offset -qi*GWp - qj, for e in [start[ra*sw + rb], start[ra*sw + rb + 1]),
// start = the first sh*sw + 1 entries; in tap order.
template <typename T>
std::vector<int64_t> dw_dgrad_phase_taps(const ConvGeometry& s) {
  const DwDgradPlaneShape p = dw_dgrad_plane_shape<T>(s);
  const int64_t np = s.stride_h * s.stride_w;
  std::vector<int64_t> out(static_cast<size_t>(np + 1));
  std::vector<int64_t> taps;
  for (int64_t ra = 0; ra < s.stride_h; ++ra)
    for (int64_t rb = 0; rb < s.stride_w; ++rb) {
      out[ra * s.stride_w + rb] = static_cast<int64_t>(taps.size() / 2);
      for (int64_t i = 0; i < s.KH; ++i) {
        if ((i * s.dil_h) % s.stride_h != ra) continue;
        for (int64_t j = 0; j < s.KW; ++j) {
          if ((j * s.dil_w) % s.stride_w != rb) continue;
          taps.push_back(i * s.KW + j);
          taps.push_back(-((i * s.dil_h) / s.stride_h) * p.GWp - (j * s.dil_w) / s.stride_w);
        }
      }
    }
  out[np] = static_cast<int64_t>(taps.size() / 2);
  out.insert(out.end(), taps.begin(), taps.end());
  return out;
}

template <typename T>
struct DwDgradPlaneStrided {
  static PYIMGCLS_INLINE void run(int64_t u, const DwArgs<T>& a, T* buf) {
    constexpr int64_t L = kDwLanes<T>;
    using V = DwVec<T>;
    const ConvGeometry& s = a.s;
    const DwDgradPlaneShape p = dw_dgrad_plane_shape<T>(s);
    const int64_t n = u / s.C, c = u % s.C, KK = s.KH * s.KW, sh = s.stride_h, sw = s.stride_w;
    const int64_t RW = p.chunks * L, G = p.GWp, np = sh * sw;
    T* gb = buf;
    T* rowbuf = buf + p.GH * G;  // [4][sw][RW]: four dx rows of one row phase, by column phase
    std::memset(gb, 0, sizeof(T) * static_cast<size_t>(p.GH * G));
    const T* gp = a.x + n * a.xs.n + c * a.xs.c;
    for (int64_t oh = 0; oh < s.OH; ++oh) {
      T* q = gb + (p.Pt + oh) * G + p.Pl;
      const T* grow = gp + oh * a.xs.h;
      if (a.xs.w == 1)
        for (int64_t k = 0; k < s.OW; ++k) q[k] = grow[k];
      else
        for (int64_t k = 0; k < s.OW; ++k) q[k] = grow[k * a.xs.w];
    }
    const T* wk = a.w + c * KK;
    const int64_t* start = a.wrange;
    const int64_t* taps = a.wrange + np + 1;
    T* dp = a.out + n * a.os.n + c * a.os.c;
    for (int64_t ra = 0; ra < sh; ++ra) {
      int64_t klo, khi;  // phase rows ka with dx row ka*sh + ra - ph in [0, H)
      valid_range(ra - s.pad_h, sh, s.H, p.GH, klo, khi);
      for (int64_t ka = klo; ka < khi; ka += 4) {
        const T* g0 = gb + (ka + p.Pt) * G + p.Pl;
        for (int64_t rb = 0; rb < sw; ++rb) {
          const int64_t e0 = start[ra * sw + rb], e1 = start[ra * sw + rb + 1];
          for (int64_t c0 = 0; c0 < RW; c0 += L) {
            V acc0 = V{}, acc1 = V{}, acc2 = V{}, acc3 = V{};
            for (int64_t e = e0; e < e1; ++e) {
              const V wv = V{} + wk[taps[2 * e]];
              const T* src = g0 + c0 + taps[2 * e + 1];
              fma_run_w(acc0, wv, src);
              fma_run_w(acc1, wv, src + G);
              fma_run_w(acc2, wv, src + 2 * G);
              fma_run_w(acc3, wv, src + 3 * G);
            }
            T* rq = rowbuf + rb * RW + c0;
            __builtin_memcpy(rq, &acc0, sizeof(V));
            __builtin_memcpy(rq + sw * RW, &acc1, sizeof(V));
            __builtin_memcpy(rq + 2 * sw * RW, &acc2, sizeof(V));
            __builtin_memcpy(rq + 3 * sw * RW, &acc3, sizeof(V));
          }
        }
        const int64_t rows = std::min<int64_t>(4, khi - ka);
        for (int64_t q = 0; q < rows; ++q) {
          T* drow = dp + ((ka + q) * sh + ra - s.pad_h) * a.os.h;
          if (sw == 2 && a.os.w == 1) {
            // dx columns 2m, 2m + 1 from phases (pw % 2, 1 - pw % 2) at kb = m + pw / 2, m + (pw + 1) / 2:
            // one pass of two unit-stride loads and interleaved stores (vectorised) instead of sw
            // strided scalar passes (a quarter of this kernel's time at 16x16).
            const int64_t pe = s.pad_w & 1;
            const T* re = rowbuf + (q * 2 + pe) * RW + s.pad_w / 2;
            const T* ro = rowbuf + (q * 2 + (1 - pe)) * RW + (s.pad_w + 1) / 2;
            const int64_t half = s.W / 2;
            for (int64_t mm = 0; mm < half; ++mm) {
              drow[2 * mm] = re[mm];
              drow[2 * mm + 1] = ro[mm];
            }
            if (s.W & 1) drow[s.W - 1] = re[half];
            continue;
          }
          for (int64_t rb = 0; rb < sw; ++rb) {  // dx columns iw = kb*sw + rb - pw of phase rb
            int64_t lo, hi;
            valid_range(rb - s.pad_w, sw, s.W, RW, lo, hi);
            const T* rq = rowbuf + (q * sw + rb) * RW;
            T* d0 = drow + (rb - s.pad_w) * a.os.w;
            const int64_t dstep = sw * a.os.w;
            for (int64_t k = lo; k < hi; ++k) d0[k * dstep] = rq[k];
          }
        }
      }
    }
  }
};

// Per-thread scratch of the plane kernels in elements: the plane, plus (wgrad) the gradient plane in
// whole chunks and KK runs of L accumulator lanes.
template <typename T>
inline size_t dw_plane_scratch(const ConvGeometry& s, bool wgrad) {
  const DwPlane p = dw_plane<T>(s);
  const int64_t extra = wgrad ? s.OH * p.chunks * kDwLanes<T> + s.KH * s.KW * kDwLanes<T> : 0;
  return static_cast<size_t>(dw_plane_elems(p) + extra);
}

template <typename T>
void dw_fwd(const ConvGeometry& s, const T* x, Strides4 xs, const T* w, const T* bias, const T* res, Strides4 rs,
            T* out, Strides4 os, Act act) {
  const int64_t m = s.O / s.C, macs = s.N * s.O * s.OH * s.OW * s.KH * s.KW;
  const std::vector<int64_t> wrange = dw_column_ranges(s);
  DwArgs<T> a{s, m, x, xs, w, bias, res, rs, nullptr, {}, out, os, act, wrange.data()};
  const bool nhwc = xs.c == 1 && os.c == 1;
  if (m == 1 && (nhwc || (s.OW < kDwRowsMinWidth && !dw_plane_fits<T>(s.OW)))) {
    const std::vector<T> wt = dw_weight_by_tap(s, w);
    a.w = wt.data();
    if (nhwc) return dw_run<DwFwdNhwc<T>>(s.N * s.OH, macs, a, 0);
    DwNhwcCopy<T> xt(s.N, s.C, s.H, s.W, x, xs), yt(s.N, s.O, s.OH, s.OW, nullptr, {});
    a.x = xt.buf.get();
    a.xs = xt.st;
    a.out = yt.buf.get();
    a.os = yt.st;
    dw_run<DwFwdNhwc<T>>(s.N * s.OH, macs, a, 0);
    dw_relayout(false, s.N, s.O, s.OH, s.OW, yt.buf.get(), yt.st, out, os);
    return;
  }
  if (!nhwc && dw_plane_fits<T>(s.OW)) {
    const std::vector<int64_t> joff = dw_plane_tap_offsets(s, dw_plane<T>(s));
    a.wrange = joff.data();
    return dw_run<DwFwdPlane<T>>(s.N * s.O, macs, a, dw_plane_scratch<T>(s, false));
  }
  dw_run<DwFwdRows<T>>(s.N * s.O, macs, a, static_cast<size_t>(s.OW));
}

template <typename T>
void dw_bwd_data(const ConvGeometry& s, const T* g, Strides4 gs, const T* w, T* dx, Strides4 xs) {
  const int64_t m = s.O / s.C, macs = s.N * s.O * s.OH * s.OW * s.KH * s.KW;
  const std::vector<int64_t> wrange = dw_column_ranges(s);
  DwArgs<T> a{s, m, g, gs, w, nullptr, nullptr, {}, nullptr, {}, dx, xs, Act::None, wrange.data()};
  if (m == 1 && !(gs.c == 1 && xs.c == 1) && s.stride_h == 1 && s.stride_w == 1 && dw_plane_fits<T>(s.W)) {
    // Stride 1: dx is the forward over g with the taps flipped and padding (K-1)*d - p (the plane
    // kernel, which takes any sign of padding).
    ConvGeometry f = s;
    f.H = s.OH;
    f.W = s.OW;
    f.OH = s.H;
    f.OW = s.W;
    f.pad_h = (s.KH - 1) * s.dil_h - s.pad_h;
    f.pad_w = (s.KW - 1) * s.dil_w - s.pad_w;
    const int64_t KK = s.KH * s.KW;
    std::vector<T> wf(static_cast<size_t>(KK * s.O));
    for (int64_t o = 0; o < s.O; ++o)
      for (int64_t t = 0; t < KK; ++t) wf[static_cast<size_t>(o * KK + t)] = w[o * KK + KK - 1 - t];
    const std::vector<int64_t> joff = dw_plane_tap_offsets(f, dw_plane<T>(f));
    const DwArgs<T> fa{f, 1, g, gs, wf.data(), nullptr, nullptr, {}, nullptr, {}, dx, xs, Act::None, joff.data()};
    return dw_run<DwFwdPlane<T>>(s.N * s.C, macs, fa, dw_plane_scratch<T>(f, false));
  }
  // Strided, dx rows of 32..64: the phase plane kernel. Narrower dx rows go to the channels_last
  // copies below: a phase of a 16-wide row fills 9 of 16 lanes, and the channel-vector kernel on
  // the copies measured 1.3-1.8x faster there (16x16 C 240 3x3, 16x16 C 144 5x5, N 16, 1 thread).
  if (m == 1 && !(gs.c == 1 && xs.c == 1) && s.stride_w > 1 && s.W >= kDwRowsMinWidth && dw_plane_fits<T>(s.W)) {
    const std::vector<int64_t> taps = dw_dgrad_phase_taps<T>(s);
    a.wrange = taps.data();
    return dw_run<DwDgradPlaneStrided<T>>(s.N * s.C, macs, a, dw_dgrad_plane_scratch<T>(s));
  }
  if (m == 1 && ((gs.c == 1 && xs.c == 1) || s.OW < kDwRowsMinWidth)) {
    const std::vector<T> wt = dw_weight_by_tap(s, w);
    a.w = wt.data();
    if (gs.c == 1 && xs.c == 1) {
      const std::vector<int64_t> tables = dw_dgrad_nhwc_tables(s, gs);
      a.wrange = tables.data();
      return dw_run<DwDgradNhwc<T>>(s.N * s.H, macs, a, 0);
    }
    DwNhwcCopy<T> gt(s.N, s.O, s.OH, s.OW, g, gs), dxt(s.N, s.C, s.H, s.W, nullptr, {});
    const std::vector<int64_t> tables = dw_dgrad_nhwc_tables(s, gt.st);
    a.wrange = tables.data();
    a.x = gt.buf.get();
    a.xs = gt.st;
    a.out = dxt.buf.get();
    a.os = dxt.st;
    dw_run<DwDgradNhwc<T>>(s.N * s.H, macs, a, 0);
    dw_relayout(false, s.N, s.C, s.H, s.W, dxt.buf.get(), dxt.st, dx, xs);
    return;
  }
  dw_run<DwDgradRows<T>>(s.N * s.C, macs, a, static_cast<size_t>(s.H * s.W));
}

template <typename T>
void dw_bwd_weight(const ConvGeometry& s, const T* g, Strides4 gs, const T* x, Strides4 xs, T* dw) {
  const int64_t m = s.O / s.C, macs = s.N * s.O * s.OH * s.OW * s.KH * s.KW;
  const std::vector<int64_t> wrange = dw_column_ranges(s);
  DwArgs<T> a{s, m, x, xs, nullptr, nullptr, nullptr, {}, g, gs, dw, {}, Act::None, wrange.data()};
  if (!(gs.c == 1 && xs.c == 1) && dw_plane_fits<T>(s.OW)) {
    const DwPlane p = dw_plane<T>(s);
    const std::vector<int64_t> joff = dw_plane_tap_offsets(s, p);
    std::vector<int64_t> toff(static_cast<size_t>(s.KH * s.KW));
    for (int64_t t = 0; t < s.KH * s.KW; ++t) toff[t] = (t / s.KW) * s.dil_h * p.RS + joff[t % s.KW];
    a.wrange = toff.data();
    return dw_run<DwWgradPlane<T>>(s.O, macs, a, dw_plane_scratch<T>(s, true));
  }
  if (m == 1 && ((gs.c == 1 && xs.c == 1) || s.OW < kDwRowsMinWidth)) {
    const int64_t runs = (s.C + kDwLanes<T> - 1) / kDwLanes<T>;
    const bool by_row = s.KW <= kDwWgradRowTaps;
    auto kernel = [&] {
      if (by_row) return dw_run<DwWgradNhwcRow<T>>(runs * s.KH, macs, a, 0);
      dw_run<DwWgradNhwc<T>>(runs * s.KH * s.KW, macs, a, 0);
    };
    if (gs.c == 1 && xs.c == 1) return kernel();
    DwNhwcCopy<T> xt(s.N, s.C, s.H, s.W, x, xs), gt(s.N, s.O, s.OH, s.OW, g, gs);
    a.x = xt.buf.get();
    a.xs = xt.st;
    a.g = gt.buf.get();
    a.gs = gt.st;
    kernel();
    return;
  }
  dw_run<DwWgradRows<T>>(s.O, macs, a, static_cast<size_t>(s.KH * s.KW * s.OW));
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------
// ---------------------------------------------------------------------------------------------
// Direct kernel for small float32 convolutions with few output channels (LeNet-sized)
// ---------------------------------------------------------------------------------------------
// out[n, o, oh, ow] for a register block of kPix output pixels along ow times 16 output channels:
//   acc[p][0..16) += xp[n, c, oh*sh + i*dh, (ow+p)*sw + j*dw] * wp[(c, i, j)][o0..o0+16)
// over the K = C*KH*KW taps: per tap one 16-lane weight load and kPix broadcast FMAs, no im2col
// buffer and no packing. xp is a zero-padded NCHW copy of the input (so the tap loop has no bounds
// checks), wp the weight repacked to [K][O rounded up to 16]. FLOPs = 2*N*O*OH*OW*K (the O
// padding to 16 lanes is wasted work: LeNet's conv1 with O = 6 uses 6 of 16 lanes). Bytes: the
// input and weight (L1/L2 resident at these sizes) and the output once. Why: the GEMM path's
// 14 x 32 micro-tile is mostly padding for O = 6 / 16 and re-packs its operands on every call;
// this kernel is FMA-bound instead (LeNet conv2 at batch 8: see BENCHMARKS.md, CPU conv).
constexpr int kPix = 8;
typedef float VF16 __attribute__((vector_size(64)));

struct DirectArgs {
  const float* xp;  // [N][C][Hp][Wp]
  const float* wp;  // [K][Opad]
  const float* bias;
  const float* res;
  Strides4 rs;
  float* out;
  Strides4 os;
  int64_t N, C, Hp, Wp, O, Opad, KH, KW, OH, OW, sh, sw, dh, dw;
  Act act;
};

struct DirectConvBody {
  static PYIMGCLS_INLINE void run(const DirectArgs& a) {
    const int64_t K = a.C * a.KH * a.KW;
    for (int64_t n = 0; n < a.N; ++n)
      for (int64_t oh = 0; oh < a.OH; ++oh)
        for (int64_t ow0 = 0; ow0 < a.OW; ow0 += kPix) {
          const int np = static_cast<int>(std::min<int64_t>(kPix, a.OW - ow0));
          for (int64_t o0 = 0; o0 < a.Opad; o0 += 16) {
            VF16 acc[kPix];
            for (int p = 0; p < kPix; ++p) acc[p] = VF16{} ;
            const float* wk = a.wp + o0;
            for (int64_t c = 0; c < a.C; ++c)
              for (int64_t i = 0; i < a.KH; ++i) {
                const float* xrow = a.xp + ((n * a.C + c) * a.Hp + oh * a.sh + i * a.dh) * a.Wp + ow0 * a.sw;
                for (int64_t j = 0; j < a.KW; ++j, wk += a.Opad) {
                  VF16 wv;
                  __builtin_memcpy(&wv, wk, sizeof(wv));
                  const float* xt = xrow + j * a.dw;
                  if (np == kPix) {
                    for (int p = 0; p < kPix; ++p) acc[p] += xt[p * a.sw] * wv;
                  } else {
                    for (int p = 0; p < np; ++p) acc[p] += xt[p * a.sw] * wv;
                  }
                }
              }
            (void)K;
            // Epilogue on the fp32 accumulators: + bias + residual, activation, strided store.
            const int64_t ocount = std::min<int64_t>(16, a.O - o0);
            for (int p = 0; p < np; ++p) {
              float v[16];
              __builtin_memcpy(v, &acc[p], sizeof(v));
              const int64_t ow = ow0 + p;
              float* o_ptr = a.out + n * a.os.n + oh * a.os.h + ow * a.os.w + o0 * a.os.c;
              const float* r_ptr = a.res ? a.res + n * a.rs.n + oh * a.rs.h + ow * a.rs.w + o0 * a.rs.c : nullptr;
              for (int64_t q = 0; q < ocount; ++q) {
                float y = v[q] + (a.bias ? a.bias[o0 + q] : 0.0f);
                if (r_ptr) y += r_ptr[q * a.rs.c];
                o_ptr[q * a.os.c] = apply_act(y, a.act);
              }
            }
          }
        }
  }
};

// Conditions: float32, groups 1, at most 64 output channels, under 4M multiply-adds in all.
bool direct_conv_applies(const ConvGeometry& s) {
  const int64_t macs = s.N * s.O * s.OH * s.OW * s.C * s.KH * s.KW;
  return s.groups == 1 && s.O <= 64 && macs < kSmallConvMacs;
}

void conv2d_fwd_direct_small(const ConvGeometry& s, const float* x, Strides4 xs, const float* w, const float* bias,
                             const float* res, Strides4 rs, float* out, Strides4 os, Act act) {
  // 1. Zero-padded NCHW copy of the rows / columns the windows touch.
  const int64_t Hp = (s.OH - 1) * s.stride_h + (s.KH - 1) * s.dil_h + 1;
  const int64_t Wp = (s.OW - 1) * s.stride_w + (s.KW - 1) * s.dil_w + 1;
  std::vector<float> xp(static_cast<size_t>(s.N * s.C * Hp * Wp), 0.0f);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t c = 0; c < s.C; ++c)
      for (int64_t r = 0; r < Hp; ++r) {
        const int64_t ih = r - s.pad_h;
        if (ih < 0 || ih >= s.H) continue;
        float* dst = xp.data() + ((n * s.C + c) * Hp + r) * Wp;
        const float* src = x + n * xs.n + c * xs.c + ih * xs.h;
        const int64_t q0 = std::max<int64_t>(0, s.pad_w), q1 = std::min<int64_t>(Wp, s.W + s.pad_w);
        for (int64_t q = q0; q < q1; ++q) dst[q] = src[(q - s.pad_w) * xs.w];
      }
  // 2. Weight [O, C, KH, KW] -> [(c, i, j)][Opad], zero-padded output channels.
  const int64_t Opad = (s.O + 15) / 16 * 16, K = s.C * s.KH * s.KW;
  std::vector<float> wp(static_cast<size_t>(K * Opad), 0.0f);
  for (int64_t o = 0; o < s.O; ++o)
    for (int64_t k = 0; k < K; ++k) wp[static_cast<size_t>(k * Opad + o)] = w[o * K + k];
  DirectArgs a{xp.data(), wp.data(), bias, res, rs, out, os, s.N, s.C, Hp, Wp, s.O, Opad, s.KH, s.KW,
               s.OH, s.OW, s.stride_h, s.stride_w, s.dil_h, s.dil_w, act};
  // 3. The register-blocked tap loop, compiled for the widest instruction set the CPU has.
  run_isa<DirectConvBody>(active_isa(), a);
}

// Small NCHW convolutions (LeNet-sized: under 4M multiply-adds in all): one GEMM for the whole
// batch instead of one per image. Per image the GEMM would be O x P x K (16 x 100 x 150 for LeNet's
// conv2): too thin for the 14x32 micro-tile, and the weight panel is re-packed per image. Here
//   col[k, n*P + p] = im2col of image n (K x N*P),  tmp[o, n*P + p] = w[o, k] @ col  (O x N*P x K),
// then one pass scatters tmp to out[n, o, p] with bias + residual + activation. Extra traffic:
// the O x N*P tmp (written once, read once: 51 KB for LeNet conv2 at batch 8, in L2).
template <typename T>
void conv2d_fwd_small_batched(const Plan& pl, const T* x, Strides4 xs, const T* w, const T* bias, const T* res,
                              Strides4 rs, T* out, Strides4 os, Act act) {
  const ConvGeometry& s = pl.s;
  const int64_t NP = s.N * pl.P;
  T* const col = scratch<T>(Buf::Col, pl.K * NP);
  T* const tmp = scratch<T>(Buf::Tmp, s.O * NP);
  // A channels_last input is first copied to NCHW (N*C*H*W elements, a few KiB here), so the
  // im2col rows below are contiguous runs instead of stride-C gathers.
  const T* xsrc = x;
  Strides4 xst = xs;
  if (xs.c < xs.w) {
    T* const xt = scratch<T>(Buf::Xt, s.N * s.C * s.H * s.W);
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t h = 0; h < s.H; ++h)
        for (int64_t w_ = 0; w_ < s.W; ++w_)
          for (int64_t c = 0; c < s.C; ++c)
            xt[static_cast<size_t>(((n * s.C + c) * s.H + h) * s.W + w_)] = x[n * xs.n + c * xs.c + h * xs.h + w_ * xs.w];
    xsrc = xt;
    xst = Strides4{s.C * s.H * s.W, s.H * s.W, s.W, 1};
  }
  for (int64_t n = 0; n < s.N; ++n) im2col_kp(pl, xsrc + n * xst.n, xst, col + n * pl.P, NP);
  // (called under SerialIfSmall: one thread, LeNet conv2 at batch 8 on 2 cores 154 us vs 210-236 us)
  conv_gemm(dtype_of<T>(), w, pl.K, 1, col, NP, 1, nullptr, tmp, NP, 1, s.O, NP, pl.K, Act::None);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t o = 0; o < s.O; ++o) {
      const T* trow = tmp + o * NP + n * pl.P;
      T* orow = out + n * os.n + o * os.c;
      const T bo = bias ? bias[o] : T(0);
      if (res) {
        const T* rrow = res + n * rs.n + o * rs.c;
        for (int64_t p = 0; p < pl.P; ++p)
          orow[p * os.w] = apply_act(trow[p] + bo + rrow[(p / s.OW) * rs.h + (p % s.OW) * rs.w], act);
      } else {
        for (int64_t p = 0; p < pl.P; ++p) orow[p * os.w] = apply_act(trow[p] + bo, act);
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Winograd F(2x2, 3x3): float32 3x3 stride-1 convolutions (groups 1), forward and dgrad
// ---------------------------------------------------------------------------------------------
// Each 2x2 output tile of channel o is  A^T [ sum_c U[o, c] .* V[c] ] A  with U = G f[o, c] G^T
// (the 3x3 filter as a 4x4 tile) and V = B^T d[c] B (the 4x4 input tile d[c] covering the 2x2
// outputs' windows; tiles overlap by 2 rows / columns). Per element xi of the 4x4 tile the sum over
// c is a GEMM over the tiles t of a chunk of images:
//   M[xi][t][o] = V[xi][t][c] @ U[xi][c][o]      16 GEMMs of Tc x Co x Ci
// so a 2x2 output block costs 16 multiply-adds per channel pair instead of the direct 36: 2.25x
// fewer FLOPs in the GEMMs (2*16*Co*Ci per tile), and no 9x im2col buffer (V holds 4 values per
// input pixel and channel). The transforms (adds only: input 32, output 24 per tile and channel) run
// on 16-channel vectors: the chunk's input is first copied into a zero-padded channels-last scratch
// xp[n][2*TH+2][2*TW+2][Cp] (Cp = Ci rounded up to 16), so a tile's 4x4 window is 16 vector loads
// whatever the input's layout; the output transform adds bias + residual, applies the activation
// and stores through the output's strides (a vector store for channels_last, 16 scalar stores per
// pixel otherwise). Scratch per chunk: xp, V (16*Tc*Cp floats) and M (16*Tc*Op), whole images per
// chunk (about kWinoChunkBytes, one image at the least), thread-local and reused across calls.
// Numerics: B^T, G and A^T hold only 0, +-1 and +-1/2 (exact in binary); the error is that of a sum
// of the same length as the direct conv's plus the transforms' few roundings (tests compare with
// float64). dgrad is the same algorithm: dx = correlation of g, padded by 2 - p, with the filters
// flipped and transposed (w'[c, o, i, j] = w[o, c, 2-i, 2-j]). Deterministic: each M element comes
// from one single-threaded GEMM (the 16 GEMMs spread over the threads), each output from one thread.
constexpr int64_t kWinoChunkBytes = int64_t(4) << 20;
constexpr int64_t kWinoMinTiles = 64;  // below, the filter transform (16*Ci*Co, ~18 ns per filter) is not amortised
// The forward's own rule (winograd_applies(s, true)): it depends on the shape only, never on whether
// the caller holds a cached filter transform, so a layer gives the same bits on its first call (and
// in training) as on later cached ones. Below this many tiles the 16 GEMMs stream U (16/9 x the
// weights) for too few rows.
constexpr int64_t kWinoMinTilesFwd = 32;

// Filter transform, U[xi][b][a] = (G f G^T)[xi] for the 3x3 filter f of output channel a and input
// channel b: f(r, s) = w[a][b][r][s] (forward) or w[b][a][2-r][2-s] (dgrad, flip_t); U is
// [16][B][Ap] with Ap = A rounded up to 16 (pad columns zero).
// G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
// 16 channels a at a time (one vector lane each), so the 16 rows of U are written as whole 64-byte
// vectors and the 9 taps of the 16 filters are read from 16 weight rows that stay in the L1 TLB
// across b (forward: rows C*9 floats apart). One filter at a time, a inner, touched a new page per
// filter and cost 20-50 ns each (ResNet's 256 x 256 layer: 1.3 ms, as much as its 16 GEMMs at 64 tiles).
struct WinoFilterArgs {
  const float* w;
  int64_t O, C, A, B, Ap;
  bool flip_t;
  float* U;
};

struct WinoFilterBody {
  static PYIMGCLS_INLINE void run(const WinoFilterArgs& p, int64_t a0) {
    for (int64_t b = 0; b < p.B; ++b) {
      float f[9][16];
      for (int l = 0; l < 16; ++l) {
        const int64_t a = a0 + l;
        if (a >= p.A) {
          for (int k = 0; k < 9; ++k) f[k][l] = 0.0f;
          continue;
        }
        const float* src = p.flip_t ? p.w + (b * p.C + a) * 9 : p.w + (a * p.C + b) * 9;
        for (int k = 0; k < 9; ++k) f[k][l] = src[p.flip_t ? 8 - k : k];
      }
      float gf[4][3][16];  // G f
      for (int s = 0; s < 3; ++s)
        for (int l = 0; l < 16; ++l) {
          const float f0 = f[s][l], f1 = f[3 + s][l], f2 = f[6 + s][l];
          gf[0][s][l] = f0;
          gf[1][s][l] = 0.5f * (f0 + f1 + f2);
          gf[2][s][l] = 0.5f * (f0 - f1 + f2);
          gf[3][s][l] = f2;
        }
      for (int r = 0; r < 4; ++r) {  // (G f) G^T
        float* u = p.U + ((r * 4) * p.B + b) * p.Ap + a0;
        const int64_t xs = p.B * p.Ap;  // next xi
        for (int l = 0; l < 16; ++l) {
          const float g0 = gf[r][0][l], g1 = gf[r][1][l], g2 = gf[r][2][l];
          u[l] = g0;
          u[xs + l] = 0.5f * (g0 + g1 + g2);
          u[2 * xs + l] = 0.5f * (g0 - g1 + g2);
          u[3 * xs + l] = g2;
        }
      }
    }
  }
};

void winograd_filters(const float* w, int64_t O, int64_t C, bool flip_t, float* U, int64_t Ap) {
  const int64_t A = flip_t ? C : O, B = flip_t ? O : C;
  const WinoFilterArgs args{w, O, C, A, B, Ap, flip_t, U};
  const Isa isa = active_isa();
#pragma omp parallel for schedule(static) if (A * B >= 4096 && omp_get_max_threads() > 1)
  for (int64_t a0 = 0; a0 < Ap; a0 += 16) run_isa<WinoFilterBody>(isa, args, a0);
}

struct WinoTiles {
  int64_t TH, TW, Hp, Wp, Cp, Tc;  // tiles per image, padded scratch dims, tiles in the chunk
  const float* xp;                 // [nb][Hp][Wp][Cp]
  float* V;                        // [16][Tc][Cp]
};

// (macros, not functions: a 64-byte vector by value in a baseline-compiled signature changes the ABI)
#define WINO_LOAD(v, p) __builtin_memcpy(&(v), (p), sizeof(VF16))
#define WINO_STORE(p, v)                 \
  do {                                   \
    const VF16 wino_tmp_ = (v);          \
    __builtin_memcpy((p), &wino_tmp_, sizeof(VF16)); \
  } while (0)

// Input transform of tile t (image nl, tile row th, column tw), all channel vectors:
// V = B^T d B with B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]] (rows, then columns).
struct WinoInBody {
  static PYIMGCLS_INLINE void run(const WinoTiles& a, int64_t t) {
    const int64_t nl = t / (a.TH * a.TW), th = (t / a.TW) % a.TH, tw = t % a.TW;
    const float* base = a.xp + ((nl * a.Hp + 2 * th) * a.Wp + 2 * tw) * a.Cp;
    const int64_t plane = a.Tc * a.Cp;
    float* vt = a.V + t * a.Cp;
    for (int64_t c = 0; c < a.Cp; c += 16) {
      VF16 d[4][4], e[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) WINO_LOAD(d[i][j], base + (i * a.Wp + j) * a.Cp + c);
      for (int j = 0; j < 4; ++j) {
        e[0][j] = d[0][j] - d[2][j];
        e[1][j] = d[1][j] + d[2][j];
        e[2][j] = d[2][j] - d[1][j];
        e[3][j] = d[1][j] - d[3][j];
      }
      for (int i = 0; i < 4; ++i) {
        float* v = vt + (4 * i) * plane + c;
        WINO_STORE(v, e[i][0] - e[i][2]);
        WINO_STORE(v + plane, e[i][1] + e[i][2]);
        WINO_STORE(v + 2 * plane, e[i][2] - e[i][1]);
        WINO_STORE(v + 3 * plane, e[i][1] - e[i][3]);
      }
    }
  }
};

struct WinoOut {
  const float* M;  // [16][Tc][Op]
  int64_t Co, Op, Ho, Wo, TH, TW, Tc, n0;
  float* out;
  Strides4 os;
  const float* bias;
  const float* res;
  Strides4 rs;
  Act act;
};

// Output transform of tile t: Y = A^T m A, A^T = [[1,1,1,0],[0,1,-1,-1]], + bias + residual,
// activation, store of the 2x2 block (the last tile row / column is cut at Ho / Wo).
struct WinoOutBody {
  static PYIMGCLS_INLINE void run(const WinoOut& a, int64_t t) {
    const int64_t nl = t / (a.TH * a.TW), th = (t / a.TW) % a.TH, tw = t % a.TW;
    const int64_t n = a.n0 + nl, plane = a.Tc * a.Op;
    const float* mt = a.M + t * a.Op;
    for (int64_t o0 = 0; o0 < a.Co; o0 += 16) {
      VF16 s[2][4];
      for (int j = 0; j < 4; ++j) {
        VF16 m0, m1, m2, m3;
        WINO_LOAD(m0, mt + j * plane + o0);
        WINO_LOAD(m1, mt + (4 + j) * plane + o0);
        WINO_LOAD(m2, mt + (8 + j) * plane + o0);
        WINO_LOAD(m3, mt + (12 + j) * plane + o0);
        s[0][j] = m0 + m1 + m2;
        s[1][j] = m1 - m2 - m3;
      }
      float y[2][2][16];
      for (int r = 0; r < 2; ++r) {
        WINO_STORE(y[r][0], s[r][0] + s[r][1] + s[r][2]);
        WINO_STORE(y[r][1], s[r][1] - s[r][2] - s[r][3]);
      }
      const int64_t oc = std::min<int64_t>(16, a.Co - o0);
      for (int r = 0; r < 2; ++r) {
        const int64_t oh = 2 * th + r;
        if (oh >= a.Ho) break;
        for (int q = 0; q < 2; ++q) {
          const int64_t ow = 2 * tw + q;
          if (ow >= a.Wo) break;
          float* op = a.out + n * a.os.n + oh * a.os.h + ow * a.os.w + o0 * a.os.c;
          const float* rp = a.res ? a.res + n * a.rs.n + oh * a.rs.h + ow * a.rs.w + o0 * a.rs.c : nullptr;
          for (int64_t k = 0; k < oc; ++k) {
            float v = y[r][q][k] + (a.bias ? a.bias[o0 + k] : 0.0f);
            if (rp) v += rp[k * a.rs.c];
            op[k * a.os.c] = apply_act(v, a.act);
          }
        }
      }
    }
  }
};

// Which convolutions take the Winograd path: float32 (caller), groups 1, 3x3, stride 1, dilation 1,
// at least 32 channels in and 48 out (DenseNet's 128 -> 32 layers ran 0.84x slower: the transforms and
// the 16 thin GEMMs outweigh the savings), at least
// kWinoMinTiles tiles over the batch, not small (kSmallConvMacs: the whole-batch GEMM paths are tuned
// for those): that is dgrad's rule. The forward's (`forward`) takes from 32 output channels and
// kWinoMinTilesFwd tiles, whether or not the filter transform is cached (conv2d_fwd_cached,
// inference): with it cached the thin GEMMs win there (DenseNet's 128 -> 32 layers at batch 16:
// 1.3-1.6x the GEMM path, thread CPU time); uncached (first call, training) they cost about the same
// as the GEMM path at 64 tiles. PYIMGCLS_CPU_WINOGRAD=0 turns it off, =1 drops the size conditions
// (benchmarks and tests compare the two paths, also on small shapes).
bool winograd_applies(const ConvGeometry& s, bool forward) {
  const char* e = std::getenv("PYIMGCLS_CPU_WINOGRAD");
  const bool force = e != nullptr && e[0] == '1';
  if (e != nullptr && e[0] == '0') return false;
  const bool shape = s.groups == 1 && s.KH == 3 && s.KW == 3 && s.stride_h == 1 && s.stride_w == 1 &&
                     s.dil_h == 1 && s.dil_w == 1 && s.OH > 0 && s.OW > 0 && s.N > 0 && s.C > 0 && s.O > 0;
  const int64_t macs = s.N * s.O * s.OH * s.OW * s.C * 9;
  const int64_t tiles = s.N * ((s.OH + 1) / 2) * ((s.OW + 1) / 2);
  // Not inside a bf16 conv (Bf16Gemms): there the im2col GEMM runs on vdpbf16ps, faster than these
  // float32 GEMMs (ResNet-18 bf16 step 0.84x with Winograd, benchmarks/NOTES.md).
  if (tls_bf16_gemm) return false;
  if (forward) return shape && (force || (s.C >= 32 && s.O >= 32 && tiles >= kWinoMinTilesFwd));
  return shape && (force || (s.C >= 32 && s.O >= 48 && tiles >= kWinoMinTiles && macs >= kSmallConvMacs));
}

thread_local std::vector<float> tls_wino;        // U of the last call (uncached filters), reused
thread_local std::vector<float> tls_wino_chunk;  // xp + V + M of the chunk this thread runs, reused

// out[n, o] (Ho x Wo, strides os) = act(corr3x3(in[n] padded top/left by pt/pl) + bias + res) with
// filters w (flip_t: dgrad's flipped, transposed filters; see winograd_filters).
// U_given: the forward filter transform of w, [16][Ci][Op] (the caller's cache; flip_t false), or null.
void winograd_run(int64_t N, const float* in, Strides4 is, int64_t Ci, int64_t Hi, int64_t Wi, int64_t pt,
                  int64_t pl, const float* w, bool flip_t, int64_t Co, float* out, Strides4 os, int64_t Ho,
                  int64_t Wo, const float* bias, const float* res, Strides4 rs, Act act,
                  const float* U_given = nullptr) {
  const int64_t TH = (Ho + 1) / 2, TW = (Wo + 1) / 2, per_img = TH * TW;
  const int64_t Hp = 2 * TH + 2, Wp = 2 * TW + 2, Cp = (Ci + 15) / 16 * 16, Op = (Co + 15) / 16 * 16;
  int64_t budget = kWinoChunkBytes;
  if (const char* e = std::getenv("PYIMGCLS_CPU_CONV_CHUNK_BYTES")) {
    const long long v = std::atoll(e);
    if (v > 0) budget = v;
  }
  const int64_t img_elems = Hp * Wp * Cp + 16 * per_img * (Cp + Op);
  int64_t NB = std::max<int64_t>(1, std::min<int64_t>(N, budget / std::max<int64_t>(4 * img_elems, 1)));
  // Chunks of NB images: with a team of nt > 1 and a batch that splits evenly (N a multiple of nt, or
  // at least 4 images per thread), NB is cut so that the chunks come in a multiple of nt (16 images,
  // 2 threads: 4 chunks of 4, not 3 of 6), and one parallel region runs each chunk on one thread
  // from end to end (its copy, transforms and 16 GEMMs in that core's buffers: for_chunks). Else the
  // chunks run one after another, each phase threaded over tiles (4 regions per chunk). Either way
  // every output element is computed by one thread in the same order: the same bits.
  const int team = omp_in_parallel() ? 1 : std::max(1, omp_get_max_threads());
  const bool whole_chunks = team > 1 && N >= team && (N % team == 0 || N >= 4 * team);
  if (whole_chunks)
    for (int64_t k = 1;; ++k) {
      const int64_t cand = (N + k * team - 1) / (k * team);
      if (cand <= NB) {
        NB = cand;
        break;
      }
    }
  const float* U = U_given;
  if (!U) {
    std::vector<float>& ubuf = tls_wino;
    const size_t u_elems = static_cast<size_t>(16 * Ci * Op);
    if (ubuf.size() < u_elems) ubuf.resize(u_elems);
    winograd_filters(w, flip_t ? Ci : Co, flip_t ? Co : Ci, flip_t, ubuf.data(), Op);
    U = ubuf.data();
  }
  const Isa isa = active_isa();
  const auto chunk = [&](int64_t, int64_t n0) {
    const int64_t nb = std::min(NB, N - n0), Tc = nb * per_img;
    const int nt = std::max(1, omp_get_max_threads());  // 1 inside for_chunks' region
    std::vector<float>& buf = tls_wino_chunk;
    const size_t need = static_cast<size_t>(NB * img_elems);
    if (buf.size() < need) buf.resize(need);
    float* xp = buf.data();
    float* V = xp + NB * Hp * Wp * Cp;
    float* M = V + NB * per_img * 16 * Cp;
    // 1. Zero-padded channels-last copy of the chunk (rows 2*TH + 2, columns 2*TW + 2).
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t u = 0; u < nb * Hp; ++u) {
      const int64_t nl = u / Hp, r = u % Hp, ih = r - pt;
      float* dst = xp + u * Wp * Cp;
      std::memset(dst, 0, sizeof(float) * static_cast<size_t>(Wp * Cp));
      if (ih < 0 || ih >= Hi) continue;
      const float* src = in + (n0 + nl) * is.n + ih * is.h;
      const int64_t q0 = std::max<int64_t>(0, pl), q1 = std::min<int64_t>(Wp, Wi + pl);
      if (is.c == 1) {
        for (int64_t q = q0; q < q1; ++q)
          std::memcpy(dst + q * Cp, src + (q - pl) * is.w, sizeof(float) * static_cast<size_t>(Ci));
      } else {
        for (int64_t c = 0; c < Ci; ++c) {
          const float* sc = src + c * is.c;
          for (int64_t q = q0; q < q1; ++q) dst[q * Cp + c] = sc[(q - pl) * is.w];
        }
      }
    }
    // 2. Input transform, tile by tile.
    const WinoTiles wt{TH, TW, Hp, Wp, Cp, Tc, xp, V};
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < Tc; ++t) run_isa<WinoInBody>(isa, wt, t);
    // 3. 16 independent GEMMs: one thread each (a nested region runs on one thread), spread by xi.
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int xi = 0; xi < 16; ++xi)
      gemm(DType::Float32, V + xi * Tc * Cp, Cp, 1, U + xi * Ci * Op, Op, 1, nullptr, M + xi * Tc * Op, Op, 1,
           Tc, Co, Ci, Act::None);
    // 4. Output transform + epilogue, tile by tile.
    const WinoOut wo{M, Co, Op, Ho, Wo, TH, TW, Tc, n0, out, os, bias, res, rs, act};
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t t = 0; t < Tc; ++t) run_isa<WinoOutBody>(isa, wo, t);
  };
  if (whole_chunks) {
    for_chunks(1, N, NB, chunk);
  } else {
    for (int64_t n0 = 0; n0 < N; n0 += NB) chunk(0, n0);
  }
}

void conv2d_fwd_winograd(const ConvGeometry& s, const float* x, Strides4 xs, const float* w, const float* bias,
                         const float* res, Strides4 rs, float* out, Strides4 os, Act act) {
  winograd_run(s.N, x, xs, s.C, s.H, s.W, s.pad_h, s.pad_w, w, false, s.O, out, os, s.OH, s.OW, bias, res, rs, act);
}

// dgrad: dx[n, c, ih, iw] = sum_{o, r, q} g[n, o, ih + ph - r, iw + pw - q] * w[o, c, r, q]
//      = correlation of g, padded top / left by 2 - ph / 2 - pw, with w'[c, o, r', q'] = w[o, c, 2-r', 2-q'].
void conv2d_bwd_data_winograd(const ConvGeometry& s, const float* g, Strides4 gs, const float* w, float* dx,
                              Strides4 xs) {
  winograd_run(s.N, g, gs, s.O, s.OH, s.OW, 2 - s.pad_h, 2 - s.pad_w, w, true, s.C, dx, xs, s.H, s.W, nullptr,
               nullptr, Strides4{0, 0, 0, 0}, Act::None);
}

// ---------------------------------------------------------------------------------------------
// Tiny maps: 3x3, stride 1, padding 1, dilation 1, groups 1 on inputs of at most 2x2 pixels (ResNet's
// last stage at 64x64 inputs: 2x2; at 32x32: 1x1). Every input pixel q reaches every output pixel p
// through the tap (qh - ph + 1, qw - pw + 1), and 5/9 (2x2) or 8/9 (1x1) of the im2col taps are
// padding zeros, so the conv is one dense layer over the image: out[n, (o, p)] = sum_{(c, q)}
// Weff[(o, p), (c, q)] x[n, (c, q)] with Weff built from w (P^2 * O * C entries: 16/9 of the weight
// for 2x2, 1/9 for 1x1), as one GEMM with the batch as its rows (the few-rows GEMM up to 16 images):
// 2*N*O*C*P^2 FLOPs against im2col's 2*N*O*C*9*P. Rows and columns of Weff follow the output's and
// the input's layout ((o, p) or (p, o); (c, q) or (q, c)), so dense NCHW and NHWC images are the GEMM
// operands themselves; other strides go through a copy. 2x2 maps only from 4 to 16 images (the
// few-rows GEMM; measured against the im2col path with thread CPU time, 512 -> 512: batch 16 3.8 vs
// 4.5 ms, PyTorch 4.0; batch 4 and batch 64 level): at batch 1 reading Weff (16/9 of the weight)
// for one image loses to the direct sum. 2x2: cached like the Winograd filters (conv2d_fwd_cached;
// the layout pair is folded into the fingerprint), else built in L2-sized row blocks per call.
// 1x1 maps at any batch: 512 -> 512 at batch 16 0.63 ms against 3.1 (im2col) and PyTorch's 1.5.
constexpr int64_t kFewRowsBatch = 16;

bool tiny_map_applies(const ConvGeometry& s) {
  const char* e = std::getenv("PYIMGCLS_CPU_CONV_TINY");
  if (e != nullptr && e[0] == '0') return false;
  const int64_t P = s.H * s.W;
  return s.groups == 1 && s.KH == 3 && s.KW == 3 && s.stride_h == 1 && s.stride_w == 1 && s.dil_h == 1 &&
         s.dil_w == 1 && s.pad_h == 1 && s.pad_w == 1 && s.OH == s.H && s.OW == s.W && s.H <= 2 && s.W <= 2 && P >= 1 &&
         s.N > 0 && s.C > 0 && s.O > 0 && (P == 1 || (s.N >= 4 && s.N <= kFewRowsBatch));
}

// Index order of an image's (channel, pixel) elements: 0 = channel-major (c * P + q, dense NCHW),
// 1 = pixel-major (q * C + c, dense NHWC), -1 = neither (copied).
int tiny_order(Strides4 st, int64_t C, int64_t H, int64_t W) {
  const int64_t P = H * W;
  const bool hw_ok = (H == 1 || st.h == W * st.w);
  if (hw_ok && st.w == 1 && (C == 1 || st.c == P)) return 0;
  if (hw_ok && st.c == 1 && (P == 1 || st.w == C)) return 1;
  return -1;
}

uint64_t tiny_salt(int in_order, int out_order) {
  return 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(1 + in_order * 2 + out_order);
}

// Rows [r0, r1) of Weff from w, into dst (row r0 first): row r is (o, p) = (r / P, r % P) for
// out_order 0, (r % O, r / O) for 1; its column for (c, q) is c * P + q (in_order 0) or q * C + c.
void tiny_weights(const ConvGeometry& s, const float* w, int in_order, int out_order, int64_t r0, int64_t r1,
                  float* dst) {
  const int64_t P = s.H * s.W, C = s.C, O = s.O, Kc = C * P;
  int64_t tap[4][4];
  for (int64_t p = 0; p < P; ++p)
    for (int64_t q = 0; q < P; ++q) tap[p][q] = (q / s.W - p / s.W + 1) * 3 + (q % s.W - p % s.W + 1);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = out_order == 0 ? r / P : r % O, p = out_order == 0 ? r % P : r / O;
    float* row = dst + (r - r0) * Kc;
    const float* wo = w + o * C * 9;
    if (in_order == 0) {
      for (int64_t c = 0; c < C; ++c)
        for (int64_t q = 0; q < P; ++q) row[c * P + q] = wo[c * 9 + tap[p][q]];
    } else {
      for (int64_t q = 0; q < P; ++q)
        for (int64_t c = 0; c < C; ++c) row[q * C + c] = wo[c * 9 + tap[p][q]];
    }
  }
}

// Rows of Weff per block when it is not cached: 32 rows of at most 4 * C floats stay in L2 between
// being written and the GEMM reading them (the whole Weff, 16/9 of the weight, written to memory and
// read back cost more than the im2col path saved: 2x2 512 -> 512 at batch 16 4.7 against 4.1 ms).
// Each output element's sum does not depend on the column blocking (few-rows and packed GEMMs sum
// every element over k in the same fixed order), so cached and blocked give the same bits.
constexpr int64_t kTinyRows = 32;

// out = act(conv(x, w) + bias + res) through Weff: the cached one (`weff`, whole, built unless
// `built`), or, with weff null, blocks of kTinyRows rows built on the fly.
void tiny_map_run(const ConvGeometry& s, const float* x, Strides4 xs, const float* w, const float* bias,
                  const float* res, Strides4 rs, float* out, Strides4 os, Act act, float* weff, bool built,
                  int in_order, int out_order) {
  const int64_t P = s.H * s.W, Kc = s.C * P, Nc = s.O * P;
  if (weff != nullptr && !built) {
#pragma omp parallel for schedule(static) if (Nc * Kc >= (int64_t(1) << 18) && omp_get_max_threads() > 1)
    for (int64_t r0 = 0; r0 < Nc; r0 += kTinyRows)
      tiny_weights(s, w, in_order, out_order, r0, std::min(Nc, r0 + kTinyRows), weff + r0 * Kc);
  }
  const float* a = x;
  int64_t sam = xs.n;
  if (tiny_order(xs, s.C, s.H, s.W) < 0) {  // a copy in channel-major order (in_order is then 0)
    float* xc = scratch<float>(Buf::Col, s.N * Kc);
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t c = 0; c < s.C; ++c)
        for (int64_t q = 0; q < P; ++q) xc[n * Kc + c * P + q] = x[n * xs.n + c * xs.c + (q / s.W) * xs.h + (q % s.W) * xs.w];
    a = xc;
    sam = Kc;
  }
  float* bexp = nullptr;
  if (bias) {
    bexp = scratch<float>(Buf::Wt, Nc);
    for (int64_t r = 0; r < Nc; ++r) bexp[r] = bias[out_order == 0 ? r / P : r % s.O];
  }
  const bool direct_out = tiny_order(os, s.O, s.H, s.W) >= 0;
  float* c = direct_out ? out : scratch<float>(Buf::Tmp, s.N * Nc);
  const int64_t scm = direct_out ? os.n : Nc;
  const Act gemm_act = res ? Act::None : act;
  if (weff != nullptr) {
    gemm(DType::Float32, a, sam, 1, weff, 1, Kc, bexp, c, scm, 1, s.N, Nc, Kc, gemm_act);
  } else {
    float* blk = scratch<float>(Buf::Weff, kTinyRows * Kc);
    for (int64_t r0 = 0; r0 < Nc; r0 += kTinyRows) {
      const int64_t rb = std::min(kTinyRows, Nc - r0);
      tiny_weights(s, w, in_order, out_order, r0, r0 + rb, blk);
      gemm(DType::Float32, a, sam, 1, blk, 1, Kc, bexp ? bexp + r0 : nullptr, c + r0, scm, 1, s.N, rb, Kc, gemm_act);
    }
  }
  if (direct_out && !res) return;
  // residual and / or a strided output: one pass over the N x O x P result
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t o = 0; o < s.O; ++o)
      for (int64_t p = 0; p < P; ++p) {
        const int64_t h = p / s.W, x0 = p % s.W;
        float v = c[n * scm + (out_order == 0 ? o * P + p : p * s.O + o)];
        if (res) v = apply_act(v + res[n * rs.n + o * rs.c + h * rs.h + x0 * rs.w], act);
        out[n * os.n + o * os.c + h * os.h + x0 * os.w] = v;
      }
}

// The Weff orders a call uses: the input's (or 0 when it is copied) and the output's (or 0).
void tiny_orders(const ConvGeometry& s, Strides4 xs, Strides4 os, int& in_order, int& out_order) {
  in_order = std::max(0, tiny_order(xs, s.C, s.H, s.W));
  out_order = std::max(0, tiny_order(os, s.O, s.H, s.W));
}

void conv2d_fwd_tiny(const ConvGeometry& s, const float* x, Strides4 xs, const float* w, const float* bias,
                     const float* res, Strides4 rs, float* out, Strides4 os, Act act) {
  int io, oo;
  tiny_orders(s, xs, os, io, oo);
  tiny_map_run(s, x, xs, w, bias, res, rs, out, os, act, nullptr, false, io, oo);
}

// 64-bit fingerprint of the weight's bytes for the caller-owned filter cache below: four independent
// multiply-rotate lanes over 8-byte words (xxHash64's round and merge constants), then the tail and
// the length. It reads the weight once (~0.3 ms for ResNet's 512 x 512 x 3 x 3, 9.4 MB) where the
// transform it saves costs several times that, and it catches every change, also those made
// through `.data`, which PyTorch's version counter does not see (accidental collisions: ~2^-64).
uint64_t fingerprint(const void* p, size_t bytes) {
  constexpr uint64_t P1 = 11400714785074694791ull, P2 = 14029467366897019727ull, P3 = 1609587929392839161ull;
  auto rotl = [](uint64_t v, int r) { return (v << r) | (v >> (64 - r)); };
  auto round = [&](uint64_t acc, uint64_t v) { return rotl(acc + v * P2, 31) * P1; };
  const unsigned char* b = static_cast<const unsigned char*>(p);
  uint64_t a0 = P1 + P2, a1 = P2, a2 = 0, a3 = 0 - P1;
  size_t i = 0;
  for (; i + 32 <= bytes; i += 32) {
    uint64_t v[4];
    std::memcpy(v, b + i, 32);
    a0 = round(a0, v[0]);
    a1 = round(a1, v[1]);
    a2 = round(a2, v[2]);
    a3 = round(a3, v[3]);
  }
  uint64_t h = rotl(a0, 1) + rotl(a1, 7) + rotl(a2, 12) + rotl(a3, 18);
  for (uint64_t a : {a0, a1, a2, a3}) h = (h ^ round(0, a)) * P1 + P3;
  for (; i < bytes; ++i) h = rotl(h ^ (b[i] * P1), 11) * P2;
  h ^= bytes;
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  return h;
}

}  // namespace

// Forward Winograd with a filter transform cached by the caller (pyimgcls/backends/cpu/conv.py keeps
// one per weight tensor that is used twice unchanged, i.e. at inference). The cache is U [16][C][Op]
// (winograd_cache_floats) plus the fingerprint of the weight it was built from; a weight whose bytes
// changed rebuilds U in place. Shapes below kWinoMinTiles take this path too (no per-call transform
// to amortise): ResNet-18's 4x4 256 -> 256 layer at batch 16 is 64 tiles. Same selection and same U
// as the uncached forward: the cache changes the time, never the result.
int64_t conv2d_winograd_cache_floats(DType dt, const ConvGeometry& s) {
  if (dt != DType::Float32) return 0;
  // 1x1 maps: Weff is the weight's centre taps, 1/9 of it, gathered per call for less than the
  // fingerprint of the whole weight would cost (so not cached); 2x2: 16/9 of it, cached.
  if (tiny_map_applies(s)) return s.H * s.W == 1 ? 0 : s.O * s.C * (s.H * s.W) * (s.H * s.W);
  if (!winograd_applies(s, true)) return 0;
  return 16 * s.C * ((s.O + 15) / 16 * 16);
}

uint64_t conv2d_fwd_cached(const ConvGeometry& s, const float* x, Strides4 xs, const float* w, const float* bias,
                           const float* res, Strides4 rs, float* out, Strides4 os, Act act, float* U,
                           uint64_t u_fingerprint, bool u_valid) {
  if (conv2d_winograd_cache_floats(DType::Float32, s) == 0)
    throw std::invalid_argument("conv2d_fwd_cached: this convolution does not take the cached Winograd path");
  check_collapsible("out", s.OH, s.OW, os);
  const SerialIfSmall serial(s.N * s.O * s.OH * s.OW * s.C * 9);
  if (tiny_map_applies(s) && s.H * s.W > 1) {
    int io, oo;
    tiny_orders(s, xs, os, io, oo);
    const uint64_t fp = fingerprint(w, sizeof(float) * static_cast<size_t>(s.O * s.C * 9)) ^ tiny_salt(io, oo);
    tiny_map_run(s, x, xs, w, bias, res, rs, out, os, act, U, u_valid && fp == u_fingerprint, io, oo);
    return fp;
  }
  const uint64_t fp = fingerprint(w, sizeof(float) * static_cast<size_t>(s.O * s.C * 9));
  if (!u_valid || fp != u_fingerprint) winograd_filters(w, s.O, s.C, false, U, (s.O + 15) / 16 * 16);
  winograd_run(s.N, x, xs, s.C, s.H, s.W, s.pad_h, s.pad_w, w, false, s.O, out, os, s.OH, s.OW, bias, res, rs, act,
               U);
  return fp;
}

namespace {

// Orientation of the NCHW forward GEMM. Path B puts the output channels on the GEMM's M axis, which
// the AVX-512 float32 micro-kernel (gemm.cpp) covers in MR = 14 rows: DenseNet's 32 growth channels
// become 42 computed rows (31 % wasted) against 4x4 maps' pixels on N. With the pixels on M and
// the channels on N (NR = 32: no waste at 32 or 64) the padded tile area is compared and the
// smaller taken; DenseNet-121's 3x3 layers ran 0.39x PyTorch's time through path B (profile in
// benchmarks/NOTES.md).
inline bool few_out_channels(int64_t Og, int64_t M) {
  constexpr int64_t MR = 14, NR = 32;
  auto up = [](int64_t v, int64_t m) { return (v + m - 1) / m * m; };
  return Og < 2 * MR * 4 && up(M, MR) * up(Og, NR) < up(Og, MR) * up(M, NR);
}

template <typename T>
void conv2d_fwd_t(const ConvGeometry& s, const T* x, Strides4 xs, const T* w, const T* bias, const T* res,
                  Strides4 rs, T* out, Strides4 os, Act act) {
  check_collapsible("out", s.OH, s.OW, os);
  const Plan pl = make_plan(s, xs);
  if (depthwise(s)) return dw_fwd(s, x, xs, w, bias, res, rs, out, os, act);
  const bool pixel_major = os.c == 1 && s.O > 1;
  const int64_t units = s.N * s.groups;
  if (units == 0 || pl.P == 0 || s.O == 0) return;
  const DType dt = dtype_of<T>();
  const int64_t macs = units * pl.Og * pl.P * pl.K;
  const SerialIfSmall serial(macs);
  const bool small_batch = s.groups == 1 && s.N > 1 && !pl.direct && macs < kSmallConvMacs;
  if constexpr (std::is_same_v<T, float>) {
    if (tiny_map_applies(s) && !tls_bf16_gemm) {
      conv2d_fwd_tiny(s, x, xs, w, bias, res, rs, out, os, act);
      return;
    }
    if (winograd_applies(s, true)) {
      conv2d_fwd_winograd(s, x, xs, w, bias, res, rs, out, os, act);
      return;
    }
    if (direct_conv_applies(s)) {
      conv2d_fwd_direct_small(s, x, xs, w, bias, res, rs, out, os, act);
      return;
    }
  }
  if (small_batch) {
    // (any output layout: the scatter pass writes through the output strides)
    conv2d_fwd_small_batched(pl, x, xs, w, bias, res, rs, out, os, act);
    return;
  }
  // NCHW 1x1 stride 1 on planes of >= kDirectPlane pixels: per image and group, out[n] = w @ x[n] with
  // x's channel rows read in place as the GEMM's B rows and the product written into out itself; bias,
  // residual and act then in one pass over that image's output while it is in cache. Path 2b below
  // would copy x into col (K*P values), write tmp (Og*P) and scatter it into out: for ResNet-50's
  // expansions (K 64-512, P 64-256) those passes cost about what the GEMM does. Smaller planes keep
  // 2b, whose GEMM spans the chunk's images (a P = 4..16 GEMM per image is all edge).
  if (!pixel_major && inplace_1x1_applies(pl, s.OW, xs, s.W, os)) {
    const bool post = bias != nullptr || res != nullptr || act != Act::None;
    for_chunks(s.groups, s.N, 1, [&](int64_t g, int64_t n) {
      T* og = out + n * os.n + g * pl.Og * os.c;
      conv_gemm(dt, w + g * pl.Og * pl.K, pl.K, 1, x + n * xs.n + g * pl.Cg * xs.c, xs.c, 1, nullptr, og, os.c, 1,
                pl.Og, pl.P, pl.K, Act::None);
      if (!post) return;
      const T* rg = res ? res + n * rs.n + g * pl.Og * rs.c : nullptr;
      for (int64_t o = 0; o < pl.Og; ++o) {
        T* orow = og + o * os.c;
        const T bo = bias ? bias[g * pl.Og + o] : T(0);
        const T* rrow = rg ? rg + o * rs.c : nullptr;
        if (rrow && rs.w == 1 && rs.h == s.OW) {
          for (int64_t p = 0; p < pl.P; ++p) orow[p] = apply_act(orow[p] + bo + rrow[p], act);
        } else if (rrow) {
          for (int64_t p = 0; p < pl.P; ++p)
            orow[p] = apply_act(orow[p] + bo + rrow[(p / s.OW) * rs.h + (p % s.OW) * rs.w], act);
        } else {
          for (int64_t p = 0; p < pl.P; ++p) orow[p] = apply_act(orow[p] + bo, act);
        }
      }
    });
    return;
  }
  // 1. Weight in the K order of the chosen path (pixel-major reads (i, j, c)), once per call.
  const T* wk = pixel_major && !pl.direct ? weight_ijc(pl, w) : w;
  // Pixel-major operands used in place when the rows of all images are evenly spaced: x itself as
  // the A operand (1x1 stride 1, e.g. NHWC), out itself as C (dense NHWC); else copies.
  const bool x_rows = pixel_major && pl.direct && (s.N == 1 || xs.n == pl.P * xs.w);
  const bool out_rows = pixel_major && (s.N == 1 || os.n == pl.P * os.w);
  const int64_t col_img = x_rows ? 0 : pl.P * pl.K;
  const int64_t tmp_img = out_rows ? 0 : pl.P * pl.Og;
  const int64_t NB = chunk_images(s.N, pl.P, col_img + tmp_img, sizeof(T));
  const int64_t img_work = pl.Og * pl.P * pl.K;  // multiply-adds per image and group
  const bool few_out = !pixel_major && few_out_channels(pl.Og, NB * pl.P);
  for_chunks(s.groups, s.N, NB, [&](int64_t g, int64_t n0) {
      T* const col = scratch<T>(Buf::Col, NB * col_img);
      T* const tmp = scratch<T>(Buf::Tmp, NB * tmp_img);
      const int64_t nb = std::min(NB, s.N - n0), M = nb * pl.P;
      const T* xg = x + n0 * xs.n + g * pl.Cg * xs.c;
      T* og = out + n0 * os.n + g * pl.Og * os.c;
      const T* rg = res ? res + n0 * rs.n + g * pl.Og * rs.c : nullptr;
      const T* bg = bias ? bias + g * pl.Og : nullptr;
      if (pixel_major) {
        // 2a. C[q, o] = col[q, k] @ wk[o, k]^T over the chunk's nb*P pixels (+ bias, and act when
        //     written in place without residual, in the GEMM epilogue).
        const T* a = xg;
        int64_t sam = xs.w, sak = xs.c;
        if (!x_rows) {
          for_images(nb, nb * img_work, [&](int64_t n) {
            if (pl.direct)
              gather_pk(xg + n * xs.n, xs, 1, pl.Cg, pl.P, col + n * pl.P * pl.K);
            else
              im2col_pk(pl, xg + n * xs.n, xs, col + n * pl.P * pl.K);
          });
          a = col;
          sam = pl.K;
          sak = 1;
        }
        T* c = out_rows ? og : tmp;
        const int64_t scm = out_rows ? os.w : pl.Og;
        const bool post = rg != nullptr || !out_rows;
        conv_gemm(dt, a, sam, sak, wk + g * pl.Og * pl.K, 1, pl.K, bg, c, scm, 1, M, pl.Og, pl.K, post ? Act::None : act);
        if (post)
          for_images(nb, nb * img_work, [&](int64_t n) {
            for (int64_t p = 0; p < pl.P; ++p) {
              T* orow = og + n * os.n + p * os.w;
              const T* crow = c + (n * pl.P + p) * scm;
              const T* rrow = rg ? rg + n * rs.n + (p / s.OW) * rs.h + (p % s.OW) * rs.w : nullptr;
              for (int64_t o = 0; o < pl.Og; ++o)
                orow[o] = apply_act(rrow ? crow[o] + rrow[o * rs.c] : crow[o], act);
            }
          });
      } else if (few_out) {
        // 2c. Few output channels: tmp[q, o] = col[k, q]^T @ w[o, k]^T, the pixels as the GEMM's rows,
        //     then the scatter transposes into out with bias + residual + act.
        for_images(nb, nb * img_work, [&](int64_t n) { im2col_kp(pl, xg + n * xs.n, xs, col + n * pl.P, M); });
        conv_gemm(dt, col, 1, M, w + g * pl.Og * pl.K, 1, pl.K, nullptr, tmp, pl.Og, 1, M, pl.Og, pl.K, Act::None);
        for_images(nb, nb * img_work, [&](int64_t n) {
          for (int64_t o = 0; o < pl.Og; ++o) {
            const T* tcol = tmp + n * pl.P * pl.Og + o;
            T* orow = og + n * os.n + o * os.c;
            const T bo = bg ? bg[o] : T(0);
            const T* rrow = rg ? rg + n * rs.n + o * rs.c : nullptr;
            for (int64_t p = 0; p < pl.P; ++p) {
              const T v = tcol[p * pl.Og] + bo;
              orow[p * os.w] = apply_act(rrow ? v + rrow[(p / s.OW) * rs.h + (p % s.OW) * rs.w] : v, act);
            }
          }
        });
      } else {
        // 2b. tmp[o, q] = w[o, k] @ col[k, q], then bias + residual + act in one scatter pass.
        for_images(nb, nb * img_work, [&](int64_t n) { im2col_kp(pl, xg + n * xs.n, xs, col + n * pl.P, M); });
        conv_gemm(dt, w + g * pl.Og * pl.K, pl.K, 1, col, M, 1, nullptr, tmp, M, 1, pl.Og, M, pl.K,
             Act::None);
        const bool dense_rows = os.w == 1 && os.h == s.OW && (!rg || (rs.w == 1 && rs.h == s.OW));
        for_images(nb, nb * img_work, [&](int64_t n) {
          for (int64_t o = 0; o < pl.Og; ++o) {
            const T* trow = tmp + o * M + n * pl.P;
            T* orow = og + n * os.n + o * os.c;
            const T bo = bg ? bg[o] : T(0);
            if (dense_rows) {
              // contiguous output (and residual) planes: unit-stride loops that vectorise
              const T* rrow = rg ? rg + n * rs.n + o * rs.c : nullptr;
              if (rrow)
                for (int64_t p = 0; p < pl.P; ++p) orow[p] = apply_act(trow[p] + bo + rrow[p], act);
              else
                for (int64_t p = 0; p < pl.P; ++p) orow[p] = apply_act(trow[p] + bo, act);
            } else if (rg) {
              const T* rrow = rg + n * rs.n + o * rs.c;
              for (int64_t p = 0; p < pl.P; ++p)
                orow[p * os.w] = apply_act(trow[p] + bo + rrow[(p / s.OW) * rs.h + (p % s.OW) * rs.w], act);
            } else {
              for (int64_t p = 0; p < pl.P; ++p) orow[p * os.w] = apply_act(trow[p] + bo, act);
            }
          }
        });
      }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward: data
// ---------------------------------------------------------------------------------------------
template <typename T>
void conv2d_bwd_data_t(const ConvGeometry& s, const T* gr, Strides4 gs, const T* w, T* dx, Strides4 xs) {
  check_collapsible("grad", s.OH, s.OW, gs);
  check_collapsible("grad_input", s.H, s.W, xs);
  if (depthwise(s)) return dw_bwd_data(s, gr, gs, w, dx, xs);
  if constexpr (std::is_same_v<T, float>) {
    if (winograd_applies(s, false)) {
      const SerialIfSmall serial(s.N * s.O * s.OH * s.OW * s.C * 9);
      conv2d_bwd_data_winograd(s, gr, gs, w, dx, xs);
      return;
    }
  }
  const Plan pl = make_plan(s, xs);
  const int64_t units = s.N * s.groups;
  if (units == 0 || s.C == 0) return;
  const DType dt = dtype_of<T>();
  const bool pixel_major = gs.c == 1 && s.O > 1;
  const SerialIfSmall serial(units * pl.Og * pl.P * pl.K);
  // NCHW 1x1 stride 1 on planes of >= kDirectPlane pixels (as the forward): per image and group,
  // dx[n] = w^T @ g[n] with g's channel rows read in place and dx written in place, every element
  // once (Og == 0: the empty sum, zeros); no gather of g, no col, no zero fill or col2im pass.
  if (!pixel_major && inplace_1x1_applies(pl, s.W, gs, s.OW, xs)) {
    for_chunks(s.groups, s.N, 1, [&](int64_t g, int64_t n) {
      conv_gemm(dt, w + g * pl.Og * pl.K, 1, pl.K, gr + n * gs.n + g * pl.Og * gs.c, gs.c, 1, nullptr,
                dx + n * xs.n + g * pl.Cg * xs.c, xs.c, 1, pl.Cg, pl.P, pl.Og, Act::None);
    });
    return;
  }
  const T* wk = pixel_major ? weight_ijc(pl, w) : w;
  // Pixel-major: g itself is the A operand when its image rows are evenly spaced; a 1x1 stride-1
  // dgrad writes dx directly (every element once) when dx's are too, else col + col2im.
  const bool g_rows = pixel_major && (s.N == 1 || gs.n == pl.P * gs.w);
  const bool dx_rows = pixel_major && pl.direct && (s.N == 1 || xs.n == pl.P * xs.w);
  const int64_t g_img = g_rows ? 0 : pl.P * pl.Og;
  const int64_t col_img = dx_rows ? 0 : pl.P * pl.K;
  const int64_t NB = chunk_images(s.N, pl.P, g_img + col_img, sizeof(T));
  const int64_t img_work = pl.Og * pl.P * pl.K;
  for_chunks(s.groups, s.N, NB, [&](int64_t g, int64_t n0) {
      T* const gbuf = scratch<T>(Buf::G, NB * g_img);
      T* const col = scratch<T>(Buf::Col, NB * col_img);
      const int64_t nb = std::min(NB, s.N - n0), M = nb * pl.P;
      const T* gg = gr + n0 * gs.n + g * pl.Og * gs.c;
      T* dxg = dx + n0 * xs.n + g * pl.Cg * xs.c;
      const T* wg = wk + g * pl.Og * pl.K;
      if (pixel_major) {
        const T* a = gg;
        int64_t sam = gs.w;
        if (!g_rows) {
          gather_pk(gg, gs, nb, pl.Og, pl.P, gbuf);
          a = gbuf;
          sam = pl.Og;
        }
        if (dx_rows) {
          // dx[q, c] = g[q, o] @ w[o, c] (Og == 0: the empty sum, zeros)
          conv_gemm(dt, a, sam, 1, wg, pl.K, 1, nullptr, dxg, xs.w, xs.c, M, pl.Cg, pl.Og, Act::None);
          return;
        }
        // col[q, k] = g[q, o] @ wt[o, k], then each image's col2im into its zeroed slice of dx
        conv_gemm(dt, a, sam, 1, wg, pl.K, 1, nullptr, col, pl.K, 1, M, pl.K, pl.Og, Act::None);
        for_images(nb, nb * img_work, [&](int64_t n) {
          T* d = dxg + n * xs.n;
          for (int64_t c = 0; c < pl.Cg; ++c)
            for (int64_t h = 0; h < s.H; ++h)
              for (int64_t x0 = 0; x0 < s.W; ++x0) d[c * xs.c + h * xs.h + x0 * xs.w] = T(0);
          col2im_pk(pl, col + n * pl.P * pl.K, d, xs);
        });
      } else {
        // col[k, q] = w[o, k]^T @ g[o, q] (g gathered channel-major), then col2im per image
        gather_kp(gg, gs, nb, pl.Og, pl.P, gbuf);
        conv_gemm(dt, wg, 1, pl.K, gbuf, M, 1, nullptr, col, M, 1, pl.K, M, pl.Og, Act::None);
        for_images(nb, nb * img_work, [&](int64_t n) {
          T* d = dxg + n * xs.n;
          for (int64_t c = 0; c < pl.Cg; ++c)
            for (int64_t h = 0; h < s.H; ++h)
              for (int64_t x0 = 0; x0 < s.W; ++x0) d[c * xs.c + h * xs.h + x0 * xs.w] = T(0);
          col2im_kp(pl, col + n * pl.P, d, xs, M);
        });
      }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward: weight
// ---------------------------------------------------------------------------------------------
// One GEMM per (group, chunk) with the chunk's pixels as the reduction axis (K = nb*P):
// tmp[o, k] = g[o, q] @ col[q, k], added into dw in chunk order. The GEMM gives each element of
// tmp to one thread and sums it in a fixed k order, so dw is bit-identical for any thread count.
template <typename T>
void conv2d_bwd_weight_t(const ConvGeometry& s, const T* gr, Strides4 gs, const T* x, Strides4 xs, T* dw) {
  check_collapsible("grad", s.OH, s.OW, gs);
  const Plan pl = make_plan(s, xs);
  const int64_t units = s.N * s.groups;
  if (depthwise(s)) return dw_bwd_weight(s, gr, gs, x, xs, dw);
  const size_t wsize = static_cast<size_t>(s.O * pl.K);
  std::fill(dw, dw + wsize, T(0));
  if (units == 0 || wsize == 0 || pl.P == 0) return;
  const DType dt = dtype_of<T>();
  const bool pixel_major = gs.c == 1 && s.O > 1;
  const bool ijc = pixel_major && s.KH * s.KW > 1 && pl.Cg > 1;  // result columns in (i, j, c) order
  const SerialIfSmall serial(units * pl.Og * pl.P * pl.K);
  const bool g_rows = pixel_major && (s.N == 1 || gs.n == pl.P * gs.w);
  const bool x_rows = pixel_major && pl.direct && (s.N == 1 || xs.n == pl.P * xs.w);
  const int64_t g_img = g_rows ? 0 : pl.P * pl.Og;
  const int64_t col_img = x_rows ? 0 : pl.P * pl.K;
  const int64_t NB = chunk_images(s.N, pl.P, g_img + col_img, sizeof(T));
  T* const gbuf = scratch<T>(Buf::G, NB * g_img);
  T* const col = scratch<T>(Buf::Col, NB * col_img);
  T* const tmp = scratch<T>(Buf::Tmp, pl.Og * pl.K);
  const int64_t img_work = pl.Og * pl.P * pl.K;
  for (int64_t g = 0; g < s.groups; ++g)
    for (int64_t n0 = 0; n0 < s.N; n0 += NB) {
      const int64_t nb = std::min(NB, s.N - n0), M = nb * pl.P;
      const T* gg = gr + n0 * gs.n + g * pl.Og * gs.c;
      const T* xg = x + n0 * xs.n + g * pl.Cg * xs.c;
      if (pixel_major) {
        // tmp[o, k] = g[q, o]^T @ col[q, k]
        const T* a = gg;
        int64_t sak = gs.w;
        if (!g_rows) {
          gather_pk(gg, gs, nb, pl.Og, pl.P, gbuf);
          a = gbuf;
          sak = pl.Og;
        }
        const T* b = xg;
        int64_t sbk = xs.w, sbn = xs.c;
        if (!x_rows) {
          for_images(nb, nb * img_work, [&](int64_t n) {
            if (pl.direct)
              gather_pk(xg + n * xs.n, xs, 1, pl.Cg, pl.P, col + n * pl.P * pl.K);
            else
              im2col_pk(pl, xg + n * xs.n, xs, col + n * pl.P * pl.K);
          });
          b = col;
          sbk = pl.K;
          sbn = 1;
        }
        conv_gemm(dt, a, 1, sak, b, sbk, sbn, nullptr, tmp, pl.K, 1, pl.Og, pl.K, M, Act::None);
      } else {
        // tmp[o, k] = g[o, q] @ col[k, q]^T
        gather_kp(gg, gs, nb, pl.Og, pl.P, gbuf);
        for_images(nb, nb * img_work, [&](int64_t n) { im2col_kp(pl, xg + n * xs.n, xs, col + n * pl.P, M); });
        conv_gemm(dt, gbuf, M, 1, col, 1, M, nullptr, tmp, pl.K, 1, pl.Og, pl.K, M, Act::None);
      }
      T* ag = dw + g * pl.Og * pl.K;
      if (ijc) {
        const int64_t taps = s.KH * s.KW;
        for (int64_t o = 0; o < pl.Og; ++o)
          for (int64_t c = 0; c < pl.Cg; ++c)
            for (int64_t t = 0; t < taps; ++t) ag[o * pl.K + c * taps + t] += tmp[o * pl.K + t * pl.Cg + c];
      } else {
        for (int64_t e = 0; e < pl.Og * pl.K; ++e) ag[e] += tmp[e];
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Epilogue backward
// ---------------------------------------------------------------------------------------------
template <typename T>
void conv2d_bias_act_bwd_t(int64_t N, int64_t O, int64_t P, const T* grad, Strides4 gs, const T* out,
                           Strides4 os, T* gp, T* gb, Act act) {
  const bool dense_nhwc = gs.c == 1 && gs.w == O && gs.n == P * O && os.c == 1 && os.w == O && os.n == P * O;
  if (dense_nhwc) {
    // A contiguous [N*P, O] matrix with the bias per column: exactly the GEMM family's kernel.
    bias_act_bwd(dtype_of<T>(), grad, out, gp, gb, N * P, O, act);
    return;
  }
  const int nt = (N * O * P < (int64_t(1) << 15)) ? 1 : std::max(1, omp_get_max_threads());
  dispatch_act(act, [&](auto a) {
    constexpr Act ACT = decltype(a)::value;
    // One channel per iteration: its sum runs over (n, p) in a fixed order (deterministic).
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t o = 0; o < O; ++o) {
      double acc = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        const T* g = grad + n * gs.n + o * gs.c;
        T* d = gp + n * gs.n + o * gs.c;
        const T* y = out ? out + n * os.n + o * os.c : nullptr;
        for (int64_t p = 0; p < P; ++p) {
          T v = g[p * gs.w];
          if constexpr (ACT != Act::None) v = act_grad<ACT>(y[p * os.w], v);
          if (ACT != Act::None || d != g) d[p * gs.w] = v;
          acc += static_cast<double>(v);
        }
      }
      if (gb) gb[o] = static_cast<T>(acc);
    }
  });
}

// (bfloat16, continued: the entry points)
// Dense strides for an [N, C, H, W] tensor laid out like `s`: channels_last (NHWC) when its channel
// stride is 1 and its width stride is not, else NCHW.
Strides4 dense_like(Strides4 s, int64_t C, int64_t H, int64_t W) {
  if (s.c == 1 && s.w != 1) return Strides4{H * W * C, 1, W * C, C};
  return Strides4{C * H * W, H * W, W, 1};
}

// dst[n, c, h, w] = f(src[n, c, h, w]) over [N, C, H, W], any source / destination strides (dst's
// from dense_like or the caller's tensor). One flat pass when both are dense in the same layout,
// else the loop order of dst's layout; OpenMP over images (elementwise: thread-count independent).
// ---------------------------------------------------------------------------------------------
// bfloat16, native path: no float32 copies of the bf16 tensors (conv2d_*_bf16 below choose it)
// ---------------------------------------------------------------------------------------------
// Non-depthwise convolutions of at least kSmallConvMacs multiply-adds (every ResNet layer at batch
// 16, 64x64) run the plan of conv2d_fwd_t / conv2d_bwd_data_t / conv2d_bwd_weight_t (GEMM
// orientation by the output / gradient layout, chunks of ~256 GEMM rows, copies over the chunk's
// images), with every bf16 tensor read as bf16:
//   - im2col, the gathers and the weight repack move bf16 values (the templates above with
//     T = uint16_t: copies only), the GEMM (gemm_bf16, in_dt BFloat16) packs them by copying pairs
//     (no rounding, half the bytes of float32 operands) and writes float32 into a chunk buffer
//     (rows x Og, ~256 rows: in L2; its K blocks accumulate there);
//   - one pass (Bf16OutBody, compiled per instruction set) adds bias and residual in float32,
//     applies the activation and rounds once (nearest even) into the bf16 output;
//   - dgrad: col2im sums in float32 into a per-thread float32 image, rounded once into dx; wgrad:
//     the chunk GEMMs add into a float32 weight gradient, rounded once at the end.
// The products, sums and their order are those of the widening path (same bf16 operand values, same
// GEMM calls, K order and epilogue order): forward and dgrad give the same bits, wgrad too when both
// paths chunk alike (tests/test_cpu_bf16.py; PYIMGCLS_CPU_BF16_CONV=widen selects the widening path,
// for those tests and benchmarks/bench_bf16_cpu.py).
// Traffic saved per call against the widening path (E = elements): forward 6|x| + 6|w| (+ 6|res|)
// + 6|out| bytes (the float32 copies written and read, the float32 output read before its
// rounding) and half the im2col bytes; dgrad 6|g| + 6|w| and half the gather bytes; wgrad 6|g| +
// 6|x| and half the im2col / gather bytes. Smaller or depthwise convolutions, and a residual whose
// (h, w) do not collapse, keep the widening path.
// ---------------------------------------------------------------------------------------------

// out(p, o) = bf16(act(t(p, o) [+ bias[o]] [+ res(p, o)])) over P pixels x O channels of one image:
// t(p, o) = t[p*tp + o*to] (float32), out(p, o) = out[p*op + o*oo], res(p, o) = res[p*rp + o*ro]
// (bf16, null: none). pixel_runs: the inner loop runs over channels (NHWC outputs; bias must then be
// null: the pixel-major GEMM adds it in its epilogue), else over pixels (bias per channel).
struct Bf16Out {
  const float* t;
  int64_t tp, to;
  uint16_t* out;
  int64_t op, oo;
  const uint16_t* res;
  int64_t rp, ro;
  const float* bias;
  int64_t P, O;
  Act act;
  bool pixel_runs;
};

// One run of n outputs; unit strides take the loop that vectorises (the rounding is branch-free).
template <Act ACT, bool HB, bool HR>
PYIMGCLS_INLINE void bf16_out_run(uint16_t* __restrict d, int64_t ds, const float* __restrict s, int64_t ss,
                                  const uint16_t* __restrict r, int64_t rs, float b, int64_t n) {
  if (ds == 1 && ss == 1 && (!HR || rs == 1)) {
    for (int64_t e = 0; e < n; ++e) {
      float v = s[e];
      if constexpr (HB) v += b;
      if constexpr (HR) v += bf16_to_float(r[e]);
      d[e] = float_to_bf16(apply_act<ACT>(v));
    }
    return;
  }
  for (int64_t e = 0; e < n; ++e) {
    float v = s[e * ss];
    if constexpr (HB) v += b;
    if constexpr (HR) v += bf16_to_float(r[e * rs]);
    d[e * ds] = float_to_bf16(apply_act<ACT>(v));
  }
}

struct Bf16OutBody {
  template <Act ACT, bool HB, bool HR>
  PYIMGCLS_INLINE static void image(const Bf16Out& a) {
    if (a.pixel_runs) {
      for (int64_t p = 0; p < a.P; ++p)
        bf16_out_run<ACT, false, HR>(a.out + p * a.op, a.oo, a.t + p * a.tp, a.to, HR ? a.res + p * a.rp : nullptr,
                                     a.ro, 0.0f, a.O);
    } else {
      for (int64_t o = 0; o < a.O; ++o)
        bf16_out_run<ACT, HB, HR>(a.out + o * a.oo, a.op, a.t + o * a.to, a.tp, HR ? a.res + o * a.ro : nullptr,
                                  a.rp, HB ? a.bias[o] : 0.0f, a.P);
    }
  }
  template <bool HB, bool HR>
  PYIMGCLS_INLINE static void by_act(const Bf16Out& a) {
    // a switch, not dispatch_act: a lambda's body would be compiled for the baseline target
    switch (a.act) {
      case Act::ReLU: return image<Act::ReLU, HB, HR>(a);
      case Act::ReLU6: return image<Act::ReLU6, HB, HR>(a);
      case Act::SiLU: return image<Act::SiLU, HB, HR>(a);
      case Act::Hardswish: return image<Act::Hardswish, HB, HR>(a);
      case Act::Sigmoid: return image<Act::Sigmoid, HB, HR>(a);
      case Act::Hardsigmoid: return image<Act::Hardsigmoid, HB, HR>(a);
      default: return image<Act::None, HB, HR>(a);
    }
  }
  PYIMGCLS_INLINE static void run(const Bf16Out& a) {
    const bool hb = a.bias != nullptr && !a.pixel_runs;
    if (hb)
      a.res ? by_act<true, true>(a) : by_act<true, false>(a);
    else
      a.res ? by_act<false, true>(a) : by_act<false, false>(a);
  }
};

// PYIMGCLS_CPU_BF16_CONV: unset / "native" (default) or "widen" (the widening path for every bf16
// conv: the reference of the bit-identity tests and the benchmark's before). Read per call, as
// PYIMGCLS_CPU_ISA.
bool bf16_native_conv(const ConvGeometry& s) {
  const char* env = std::getenv("PYIMGCLS_CPU_BF16_CONV");
  if (env != nullptr && env[0] != '\0') {
    const std::string v(env);
    if (v == "widen") return false;
    if (v != "native")
      throw std::invalid_argument("PYIMGCLS_CPU_BF16_CONV must be native or widen, got '" + v + "'");
  }
  const int64_t macs = s.N * s.O * s.OH * s.OW * (s.C / std::max<int64_t>(s.groups, 1)) * s.KH * s.KW;
  return !depthwise(s) && macs >= kSmallConvMacs;
}

// Forward: conv2d_fwd_t's pixel-major and channel-major orientations with bf16 operands and the
// float32 chunk result rounded by Bf16OutBody. bias: float32 [O] or null; res: collapsible (h, w)
// (the caller checks), or null. No "few output channels" orientation (the pixels as the GEMM's rows,
// as conv2d_fwd_t takes for Og < 112 on NCHW): here its transposing output pass cost more than the
// GEMM's tile fit saved (batch 16, 1 thread, ms few-out / channel-major: ResNet stem 7x7/2 3 -> 64
// 3.22 / 2.41, 3x3 64 -> 64 at 16x16 2.50 / 2.01, 32 -> 32 0.87 / 0.70, 128 -> 32 at 8x8 0.87 / 0.77,
// 16 -> 16 at 32x32 1.13 / 1.09; benchmarks/NOTES.md).
void conv2d_fwd_bf16_native(const ConvGeometry& s, const uint16_t* x, Strides4 xs, const uint16_t* w,
                            const float* bias, const uint16_t* res, Strides4 rs, uint16_t* out, Strides4 os, Act act) {
  const Plan pl = make_plan(s, xs);
  const Isa isa = active_isa();
  const bool pixel_major = os.c == 1 && s.O > 1;
  const uint16_t* wk = pixel_major && !pl.direct ? weight_ijc(pl, w) : w;
  const bool x_rows = pixel_major && pl.direct && (s.N == 1 || xs.n == pl.P * xs.w);
  const int64_t col_img = x_rows ? 0 : pl.P * pl.K;  // bf16 elements per image
  const int64_t tmp_img = pl.P * pl.Og;              // float32 elements per image
  const int64_t NB = chunk_images(s.N, pl.P, col_img + 2 * tmp_img, sizeof(uint16_t));
  const int64_t img_work = pl.Og * pl.P * pl.K;
  // one parallel region over the (group, chunk) units, as conv2d_fwd_t (for_chunks says why)
  for_chunks(s.groups, s.N, NB, [&](int64_t g, int64_t n0) {
      uint16_t* const col = scratch<uint16_t>(Buf::Col, NB * col_img);
      float* const tmp = scratch<float>(Buf::Tmp, NB * tmp_img);
      const int64_t nb = std::min(NB, s.N - n0), M = nb * pl.P;
      const uint16_t* xg = x + n0 * xs.n + g * pl.Cg * xs.c;
      uint16_t* og = out + n0 * os.n + g * pl.Og * os.c;
      const uint16_t* rg = res ? res + n0 * rs.n + g * pl.Og * rs.c : nullptr;
      const float* bg = bias ? bias + g * pl.Og : nullptr;
      if (pixel_major) {
        // tmp[q, o] = col[q, k] @ wk[o, k]^T (+ bias, + act without a residual, in the GEMM epilogue)
        const uint16_t* a = xg;
        int64_t sam = xs.w, sak = xs.c;
        if (!x_rows) {
          for_images(nb, nb * img_work, [&](int64_t n) {
            if (pl.direct)
              gather_pk(xg + n * xs.n, xs, 1, pl.Cg, pl.P, col + n * pl.P * pl.K);
            else
              im2col_pk(pl, xg + n * xs.n, xs, col + n * pl.P * pl.K);
          });
          a = col;
          sam = pl.K;
          sak = 1;
        }
        gemm_bf16(DType::BFloat16, a, sam, sak, wk + g * pl.Og * pl.K, 1, pl.K, bg, tmp, DType::Float32, pl.Og, 1, M,
                  pl.Og, pl.K, rg ? Act::None : act);
        for_images(nb, nb * img_work, [&](int64_t n) {
          const Bf16Out st{tmp + n * pl.P * pl.Og, pl.Og, 1, og + n * os.n, os.w, 1, rg ? rg + n * rs.n : nullptr,
                           rs.w, rs.c, nullptr, pl.P, pl.Og, rg ? act : Act::None, true};
          run_isa<Bf16OutBody>(isa, st);
        });
        return;
      }
      // tmp[o, q] = w[o, k] @ col[k, q]
      for_images(nb, nb * img_work, [&](int64_t n) { im2col_kp(pl, xg + n * xs.n, xs, col + n * pl.P, M); });
      gemm_bf16(DType::BFloat16, w + g * pl.Og * pl.K, pl.K, 1, col, M, 1, nullptr, tmp, DType::Float32, M, 1, pl.Og,
                M, pl.K, Act::None);
      for_images(nb, nb * img_work, [&](int64_t n) {
        const Bf16Out st{tmp + n * pl.P, 1, M, og + n * os.n, os.w, os.c, rg ? rg + n * rs.n : nullptr, rs.w, rs.c, bg,
                         pl.P, pl.Og, act, false};
        run_isa<Bf16OutBody>(isa, st);
      });
  });
}

// dgrad: conv2d_bwd_data_t's two orientations with bf16 operands; col2im in float32 into a per-thread
// image (Cg x H x W, dense in dx's layout), rounded once into dx.
void conv2d_bwd_data_bf16_native(const ConvGeometry& s, const uint16_t* gr, Strides4 gs, const uint16_t* w,
                                 uint16_t* dx, Strides4 xs) {
  const Plan pl = make_plan(s, xs);
  const Isa isa = active_isa();
  const bool pixel_major = gs.c == 1 && s.O > 1;
  const uint16_t* wk = pixel_major ? weight_ijc(pl, w) : w;
  const bool g_rows = pixel_major && (s.N == 1 || gs.n == pl.P * gs.w);
  const bool dx_rows = pixel_major && pl.direct && (s.N == 1 || xs.n == pl.P * xs.w);
  const int64_t g_img = g_rows ? 0 : pl.P * pl.Og;       // bf16
  const int64_t col_img = pl.P * pl.K;                    // float32 (dx_rows: the [P, Cg] result)
  const int64_t NB = chunk_images(s.N, pl.P, g_img + 2 * col_img, sizeof(uint16_t));
  // float32 image for col2im (the scratch of the thread that runs the image); dense NHWC when dx is
  // channels_last, else NCHW
  const int64_t HW = s.H * s.W, ximg = pl.Cg * HW;
  const bool x_cl = xs.c == 1 && xs.w != 1;
  const Strides4 xb = x_cl ? Strides4{ximg, 1, s.W * pl.Cg, pl.Cg} : Strides4{ximg, HW, s.W, 1};
  const int64_t img_work = pl.Og * pl.P * pl.K;
  // one parallel region over the (group, chunk) units, as conv2d_bwd_data_t (for_chunks says why)
  for_chunks(s.groups, s.N, NB, [&](int64_t g, int64_t n0) {
      uint16_t* const gbuf = scratch<uint16_t>(Buf::G, NB * g_img);
      float* const col = scratch<float>(Buf::Col, NB * col_img);
      const int64_t nb = std::min(NB, s.N - n0), M = nb * pl.P;
      const uint16_t* gg = gr + n0 * gs.n + g * pl.Og * gs.c;
      uint16_t* dxg = dx + n0 * xs.n + g * pl.Cg * xs.c;
      const uint16_t* wg = wk + g * pl.Og * pl.K;
      if (pixel_major) {
        const uint16_t* a = gg;
        int64_t sam = gs.w;
        if (!g_rows) {
          gather_pk(gg, gs, nb, pl.Og, pl.P, gbuf);
          a = gbuf;
          sam = pl.Og;
        }
        // col[q, k] = g[q, o] @ wt[o, k] (dx_rows: k = c, the dx pixel rows themselves)
        gemm_bf16(DType::BFloat16, a, sam, 1, wg, pl.K, 1, nullptr, col, DType::Float32, pl.K, 1, M, pl.K, pl.Og,
                  Act::None);
      } else {
        // col[k, q] = w[o, k]^T @ g[o, q] (g gathered channel-major)
        gather_kp(gg, gs, nb, pl.Og, pl.P, gbuf);
        gemm_bf16(DType::BFloat16, wg, 1, pl.K, gbuf, M, 1, nullptr, col, DType::Float32, M, 1, pl.K, M, pl.Og,
                  Act::None);
      }
      for_images(nb, nb * img_work, [&](int64_t n) {
        Bf16Out st{nullptr, 0, 0, dxg + n * xs.n, xs.w, xs.c, nullptr, 0, 0, nullptr, HW, pl.Cg, Act::None, x_cl};
        if (dx_rows) {
          st.t = col + n * pl.P * pl.K;
          st.tp = pl.K;
          st.to = 1;
        } else {
          float* d = scratch<float>(Buf::Xt, ximg);
          std::fill(d, d + ximg, 0.0f);
          if (pixel_major)
            col2im_pk(pl, col + n * pl.P * pl.K, d, xb);
          else
            col2im_kp(pl, col + n * pl.P, d, xb, M);
          st.t = d;
          st.tp = xb.w;
          st.to = xb.c;
        }
        run_isa<Bf16OutBody>(isa, st);
      });
  });
}

// wgrad: conv2d_bwd_weight_t's two orientations with bf16 operands; chunk results added in chunk order
// into a float32 weight gradient (dwf, in the GEMM's column order), rounded once into dw (the (i, j, c)
// -> (c, i, j) reorder of the pixel-major orientation done in that one pass, not once per chunk).
void conv2d_bwd_weight_bf16_native(const ConvGeometry& s, const uint16_t* gr, Strides4 gs, const uint16_t* x,
                                   Strides4 xs, uint16_t* dw) {
  const Plan pl = make_plan(s, xs);
  const int64_t wsize = s.O * pl.K;
  float* const dwf = scratch<float>(Buf::Wt, wsize);  // the GEMM's column order: (i, j, c) when ijc
  const bool pixel_major = gs.c == 1 && s.O > 1;
  const bool ijc = pixel_major && s.KH * s.KW > 1 && pl.Cg > 1;  // result columns in (i, j, c) order
  const bool g_rows = pixel_major && (s.N == 1 || gs.n == pl.P * gs.w);
  const bool x_rows = pixel_major && pl.direct && (s.N == 1 || xs.n == pl.P * xs.w);
  const int64_t g_img = g_rows ? 0 : pl.P * pl.Og;
  const int64_t col_img = x_rows ? 0 : pl.P * pl.K;
  const int64_t NB = chunk_images(s.N, pl.P, g_img + col_img, sizeof(uint16_t));
  uint16_t* const gbuf = scratch<uint16_t>(Buf::G, NB * g_img);
  uint16_t* const col = scratch<uint16_t>(Buf::Col, NB * col_img);
  float* const tmp = scratch<float>(Buf::Tmp, pl.Og * pl.K);
  const int64_t img_work = pl.Og * pl.P * pl.K;
  for (int64_t g = 0; g < s.groups; ++g)
    for (int64_t n0 = 0; n0 < s.N; n0 += NB) {
      const int64_t nb = std::min(NB, s.N - n0), M = nb * pl.P;
      const uint16_t* gg = gr + n0 * gs.n + g * pl.Og * gs.c;
      const uint16_t* xg = x + n0 * xs.n + g * pl.Cg * xs.c;
      // the group's first chunk writes its sum itself; later chunks go through tmp and are added
      float* const ag = dwf + g * pl.Og * pl.K;
      float* const c = n0 == 0 ? ag : tmp;
      if (pixel_major) {
        // tmp[o, k] = g[q, o]^T @ col[q, k]
        const uint16_t* a = gg;
        int64_t sak = gs.w;
        if (!g_rows) {
          gather_pk(gg, gs, nb, pl.Og, pl.P, gbuf);
          a = gbuf;
          sak = pl.Og;
        }
        const uint16_t* b = xg;
        int64_t sbk = xs.w, sbn = xs.c;
        if (!x_rows) {
          for_images(nb, nb * img_work, [&](int64_t n) {
            if (pl.direct)
              gather_pk(xg + n * xs.n, xs, 1, pl.Cg, pl.P, col + n * pl.P * pl.K);
            else
              im2col_pk(pl, xg + n * xs.n, xs, col + n * pl.P * pl.K);
          });
          b = col;
          sbk = pl.K;
          sbn = 1;
        }
        gemm_bf16(DType::BFloat16, a, 1, sak, b, sbk, sbn, nullptr, c, DType::Float32, pl.K, 1, pl.Og, pl.K, M,
                  Act::None);
      } else {
        // tmp[o, k] = g[o, q] @ col[k, q]^T
        gather_kp(gg, gs, nb, pl.Og, pl.P, gbuf);
        for_images(nb, nb * img_work, [&](int64_t n) { im2col_kp(pl, xg + n * xs.n, xs, col + n * pl.P, M); });
        gemm_bf16(DType::BFloat16, gbuf, M, 1, col, 1, M, nullptr, c, DType::Float32, pl.K, 1, pl.Og, pl.K, M,
                  Act::None);
      }
      if (n0 > 0)
        for (int64_t e = 0; e < pl.Og * pl.K; ++e) ag[e] += tmp[e];
    }
  const Isa isa = active_isa();
  if (!ijc) {
    const Bf16Out st{dwf, 0, 1, dw, 0, 1, nullptr, 0, 0, nullptr, 1, wsize, Act::None, true};
    run_isa<Bf16OutBody>(isa, st);
    return;
  }
  // dw[o, c, t] = bf16(dwf[o, t, c]), t = (i, j): per output channel a taps x Cg transpose
  const int64_t taps = s.KH * s.KW;
  for (int64_t o = 0; o < s.O; ++o) {
    const Bf16Out st{dwf + o * pl.K, pl.Cg, 1, dw + o * pl.K, 1, taps, nullptr, 0, 0, nullptr, taps, pl.Cg, Act::None,
                     false};
    run_isa<Bf16OutBody>(isa, st);
  }
}

template <typename S, typename D, typename F>
void convert4(const S* src, Strides4 ss, int64_t N, int64_t C, int64_t H, int64_t W, D* dst, Strides4 ds, F f) {
  const int64_t total = N * C * H * W;
  if (total <= 0) return;
  const int nt = total < (int64_t(1) << 16) ? 1 : std::max(1, omp_get_max_threads());
  const Strides4 nchw{C * H * W, H * W, W, 1}, nhwc{H * W * C, 1, W * C, C};
  auto same = [](Strides4 a, Strides4 b) { return a.n == b.n && a.c == b.c && a.h == b.h && a.w == b.w; };
  if ((same(ss, nchw) && same(ds, nchw)) || (same(ss, nhwc) && same(ds, nhwc))) {
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t e = 0; e < total; ++e) dst[e] = f(src[e]);
    return;
  }
  const bool cl = ds.c == 1 && ds.w != 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t n = 0; n < N; ++n) {
    const S* sn = src + n * ss.n;
    D* dn = dst + n * ds.n;
    if (cl) {
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w)
          for (int64_t c = 0; c < C; ++c) dn[c * ds.c + h * ds.h + w * ds.w] = f(sn[c * ss.c + h * ss.h + w * ss.w]);
    } else {
      for (int64_t c = 0; c < C; ++c)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w) dn[c * ds.c + h * ds.h + w * ds.w] = f(sn[c * ss.c + h * ss.h + w * ss.w]);
    }
  }
}

const auto widen = [](uint16_t v) { return bf16_to_float(v); };
const auto narrow = [](float v) { return float_to_bf16(v); };

// Grow-only float32 scratch per (thread, slot), never zero-filled: every use rewrites its buffer
// completely, and a fresh multi-megabyte vector per call costs page faults and a memset.
enum Slot { kSlotX, kSlotW, kSlotB, kSlotR, kSlotOut, kSlotG, kSlots };
float* f32_scratch(Slot slot, int64_t n) {
  struct Buf {
    std::unique_ptr<float[]> p;
    int64_t cap = 0;
  };
  static thread_local Buf bufs[kSlots];
  Buf& b = bufs[slot];
  if (n > b.cap) {
    b.p.reset(new float[static_cast<size_t>(n)]);  // default-initialised: no fill
    b.cap = n;
  }
  return b.p.get();
}

// A bf16 [N, C, H, W] tensor as a dense float32 copy in `slot` (strides in `st`).
const float* widen4(Slot slot, const uint16_t* src, Strides4 ss, int64_t N, int64_t C, int64_t H, int64_t W,
                    Strides4& st) {
  st = dense_like(ss, C, H, W);
  float* buf = f32_scratch(slot, std::max<int64_t>(N * C * H * W, 1));
  convert4(src, ss, N, C, H, W, buf, st, widen);
  return buf;
}

const float* widen_flat(Slot slot, const uint16_t* src, int64_t n) {
  float* buf = f32_scratch(slot, std::max<int64_t>(n, 1));
  for (int64_t e = 0; e < n; ++e) buf[e] = bf16_to_float(src[e]);
  return buf;
}

void conv2d_fwd_bf16(const ConvGeometry& s, const uint16_t* x, Strides4 xs, const uint16_t* w, const uint16_t* bias,
                     const uint16_t* res, Strides4 rs, uint16_t* out, Strides4 os, Act act) {
  check_collapsible("out", s.OH, s.OW, os);
  if (bf16_native_conv(s) && (res == nullptr || s.OH == 1 || rs.h == s.OW * rs.w)) {
    std::vector<float> bf(bias ? static_cast<size_t>(s.O) : 0);
    for (size_t o = 0; o < bf.size(); ++o) bf[o] = bf16_to_float(bias[o]);
    return conv2d_fwd_bf16_native(s, x, xs, w, bias ? bf.data() : nullptr, res, rs, out, os, act);
  }
  Strides4 xd, rd{};
  const float* xf = widen4(kSlotX, x, xs, s.N, s.C, s.H, s.W, xd);
  const float* wf = widen_flat(kSlotW, w, s.O * (s.C / s.groups) * s.KH * s.KW);
  const float* bf = bias ? widen_flat(kSlotB, bias, s.O) : nullptr;
  const float* rf = res ? widen4(kSlotR, res, rs, s.N, s.O, s.OH, s.OW, rd) : nullptr;
  // the output's layout decides the GEMM orientation (conv2d_fwd_t: os.c == 1 and O > 1 is pixel-major)
  const Strides4 od = (os.c == 1 && s.O > 1) ? Strides4{s.OH * s.OW * s.O, 1, s.OW * s.O, s.O}
                                             : Strides4{s.O * s.OH * s.OW, s.OH * s.OW, s.OW, 1};
  float* of = f32_scratch(kSlotOut, std::max<int64_t>(s.N * s.O * s.OH * s.OW, 1));
  {
    const Bf16Gemms scope;
    conv2d_fwd_t<float>(s, xf, xd, wf, bf, rf, rd, of, od, act);
  }
  convert4(of, od, s.N, s.O, s.OH, s.OW, out, os, narrow);
}

void conv2d_bwd_data_bf16(const ConvGeometry& s, const uint16_t* g, Strides4 gs, const uint16_t* w, uint16_t* dx,
                          Strides4 xs) {
  check_collapsible("grad", s.OH, s.OW, gs);
  check_collapsible("grad_input", s.H, s.W, xs);
  if (bf16_native_conv(s)) return conv2d_bwd_data_bf16_native(s, g, gs, w, dx, xs);
  Strides4 gd;
  const float* gf = widen4(kSlotG, g, gs, s.N, s.O, s.OH, s.OW, gd);
  const float* wf = widen_flat(kSlotW, w, s.O * (s.C / s.groups) * s.KH * s.KW);
  const Strides4 xd = dense_like(xs, s.C, s.H, s.W);
  float* dxf = f32_scratch(kSlotOut, std::max<int64_t>(s.N * s.C * s.H * s.W, 1));
  {
    const Bf16Gemms scope;
    conv2d_bwd_data_t<float>(s, gf, gd, wf, dxf, xd);
  }
  convert4(dxf, xd, s.N, s.C, s.H, s.W, dx, xs, narrow);
}

void conv2d_bwd_weight_bf16(const ConvGeometry& s, const uint16_t* g, Strides4 gs, const uint16_t* x, Strides4 xs,
                            uint16_t* dw) {
  check_collapsible("grad", s.OH, s.OW, gs);
  if (bf16_native_conv(s)) return conv2d_bwd_weight_bf16_native(s, g, gs, x, xs, dw);
  Strides4 gd, xd;
  const float* gf = widen4(kSlotG, g, gs, s.N, s.O, s.OH, s.OW, gd);
  const float* xf = widen4(kSlotX, x, xs, s.N, s.C, s.H, s.W, xd);
  const int64_t wsize = s.O * (s.C / s.groups) * s.KH * s.KW;
  float* dwf = f32_scratch(kSlotOut, std::max<int64_t>(wsize, 1));
  {
    const Bf16Gemms scope;
    conv2d_bwd_weight_t<float>(s, gf, gd, xf, xd, dwf);
  }
  for (int64_t e = 0; e < wsize; ++e) dw[e] = float_to_bf16(dwf[e]);
}

}  // namespace

void conv2d_fwd(DType dt, const ConvGeometry& s, const void* x, Strides4 xs, const void* w, const void* bias,
                const void* residual, Strides4 rs, void* out, Strides4 os, Act act) {
  if (dt == DType::BFloat16)
    return conv2d_fwd_bf16(s, static_cast<const uint16_t*>(x), xs, static_cast<const uint16_t*>(w),
                           static_cast<const uint16_t*>(bias), static_cast<const uint16_t*>(residual), rs,
                           static_cast<uint16_t*>(out), os, act);
  dispatch_float(dt, "CPU conv2d", [&](auto t) {
    using T = decltype(t);
    conv2d_fwd_t(s, static_cast<const T*>(x), xs, static_cast<const T*>(w), static_cast<const T*>(bias),
                 static_cast<const T*>(residual), rs, static_cast<T*>(out), os, act);
  });
}

void conv2d_bwd_data(DType dt, const ConvGeometry& s, const void* g, Strides4 gs, const void* w, void* dx,
                     Strides4 xs) {
  if (dt == DType::BFloat16)
    return conv2d_bwd_data_bf16(s, static_cast<const uint16_t*>(g), gs, static_cast<const uint16_t*>(w),
                                static_cast<uint16_t*>(dx), xs);
  dispatch_float(dt, "CPU conv2d backward (data)", [&](auto t) {
    using T = decltype(t);
    conv2d_bwd_data_t(s, static_cast<const T*>(g), gs, static_cast<const T*>(w), static_cast<T*>(dx), xs);
  });
}

void conv2d_bwd_weight(DType dt, const ConvGeometry& s, const void* g, Strides4 gs, const void* x, Strides4 xs,
                       void* dw) {
  if (dt == DType::BFloat16)
    return conv2d_bwd_weight_bf16(s, static_cast<const uint16_t*>(g), gs, static_cast<const uint16_t*>(x), xs,
                                  static_cast<uint16_t*>(dw));
  dispatch_float(dt, "CPU conv2d backward (weight)", [&](auto t) {
    using T = decltype(t);
    conv2d_bwd_weight_t(s, static_cast<const T*>(g), gs, static_cast<const T*>(x), xs, static_cast<T*>(dw));
  });
}

void conv2d_bias_act_bwd(DType dt, int64_t N, int64_t O, int64_t P, const void* grad, Strides4 gs,
                         const void* out, Strides4 os, void* grad_pre, void* grad_bias, Act act) {
  dispatch_float(dt, "CPU conv2d epilogue backward", [&](auto t) {
    using T = decltype(t);
    if (act != Act::None && out == nullptr && N * O * P > 0)
      throw std::invalid_argument(
          "conv2d_bias_act_bwd: out (the saved output, or the pre-activation for silu / hardswish / hardsigmoid) is "
          "required with an activation");
    conv2d_bias_act_bwd_t(N, O, P, static_cast<const T*>(grad), gs, static_cast<const T*>(out), os,
                          static_cast<T*>(grad_pre), static_cast<T*>(grad_bias), act);
  });
}

}  // namespace pyimgcls::cpu
