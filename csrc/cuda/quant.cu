// CUDA quantised (int8) family: the integer GEMM with the requantisation epilogue on the IMMA tensor
// cores, the uint8 im2col that turns a k x k convolution into that GEMM, quantisation, and the
// uint8 pools. Every result is bit-identical to csrc/cpu/quant.cpp ("Semantics" there):
//   acc[m, n] = sum_k (A[m, k] - a_zero) * W[n, k] + bias[n]                   exact, int32
//   uint8 out: clamp(rne(clamp(float(acc) * mult[n], +-2^22))
//                    + rne(clamp(float(R[m, n] - res_zero) * res_mult, +-2^22)) + out_zero, qmin, qmax)
//   float out: act(float(acc) * mult[n])
// float(int32) is __int2float_rn, each product __fmul_rn (never contracted into an FMA, as on the
// CPU where no path has an add to fuse), rne __float2int_rn (round half to even): the same IEEE
// operations as the CPU's cvtsi2ss / mulss / cvtss2si.
//
// GEMM algorithm (quant_gemm_fwd_kernel): mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 on the
// raw uint8 activations (A, row-major 16 x 32) and int8 weights (B = W^T, "col": the W tile [n][k]),
// so the K loop multiplies without any shift and the zero point is applied once in the epilogue:
// acc = sum A W - a_zero * colsum[n] + bias[n] (int32 wraps identically on both sides; the Python
// layer keeps the sums below 2^31). A CTA of 2 x 2 warps computes a 64 x 64 output tile, a warp
// 32 x 32 (2 x 4 m16n8 tiles, 8 IMMA per 32 of K, each A fragment used 4 times, each B twice).
// K walks in 64-byte tiles, double-buffered in shared memory (row stride 80 bytes: conflict-free
// 32-bit fragment loads, quant.h): cp.async 16-byte copies with zero-fill for the weight (packed to
// [N, packed_k(K)], zero past K, so its chunks are whole) and, when A's rows are 16-byte aligned,
// for the activations; otherwise A is gathered with byte loads into the same layout (the stem conv's
// im2col, K = 147). Fragment and chunk maps: quant.h (shared with the CPU emulation of this path,
// tests/test_quant_cuda_emulation.py).
// Convolutions (quant_conv_gemm, the kAConv instance of the same kernel): implicit GEMM on an
// NHWC-dense input with C % 16 == 0: each 16-byte A chunk is 16 channels of one tap of one output
// pixel, copied from the image by cp.async; a padding tap is stored as 16 bytes of a_zero (real 0, as
// im2col pads), so the epilogue's a_zero * colsum correction stays exact. Each thread decodes its two
// rows' pixels once; per chunk it divides k by C and the tap by KW (32-bit). No column matrix: a 3x3
// conv reads its input ~9 times from L2 instead of writing and re-reading 9 copies through DRAM.
//
// Cost: 2 * M * N * K integer ops; bytes M * K + N * packed_k(K) + 8N (colsum, mult) (+4N bias) +
// M * N (x4 float out; + M * N residual), A re-read once per 64 output channels (L2).
// im2col: N * OH * OW * KH * KW * CG bytes written, as many read (L1/L2 hits for overlapping taps);
// implicit conv: A bytes N * H * W * C compulsory (each re-read KH * KW / (SH * SW) times, mostly L2).
//
// Test: tests/test_quant_cuda_emulation.py (CPU emulation), tests/test_quant_cuda.py (GPU, cuda mark);
// tools/check_gpu_build.py --sass-only (IMMA present, no spills). Benchmark: benchmarks/bench_quant.py.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "quant.h"
#include "runtime.h"

namespace pyimgcls::cuda {

namespace {

constexpr float kClampF = 4194304.0f;  // 2^22: each rounded term exactly representable (quant.cpp)

// D[16x8] += A[16x32] (uint8) * B[32x8] (int8), int32 accumulators (wrapping, no saturation).
// Fragments: quant.h a_frag / b_frag / acc_frag. Registers only: no "memory" clobber.
__device__ __forceinline__ void mma_16832_u8s8(int32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();  // sm_80+ only; the launcher refuses older devices
#endif
}

__device__ __forceinline__ int32_t rne_term(float v) {
  v = v < -kClampF ? -kClampF : (v > kClampF ? kClampF : v);
  return __float2int_rn(v);
}

struct QuantGemmParams {
  const uint8_t* a;   // A [M, K] (kAGather / kACpAsync) or the NHWC image x (kAConv)
  const int8_t* w;
  void* out;
  int64_t M, N, K, lda, ldw, ldo;
  QuantEpilogueArgs ep;
  QuantConvGeom g;    // kAConv only
};

// One output element of the epilogue (quant.cpp epilogue_generic, operation for operation).
__device__ __forceinline__ void requant_store(const QuantGemmParams& p, int64_t m, int64_t n, int32_t sum) {
  const QuantEpilogueArgs& e = p.ep;
  const int32_t acc = sum - e.a_zero * __ldg(e.colsum + n) + (e.bias != nullptr ? __ldg(e.bias + n) : 0);
  const float y = __fmul_rn(__int2float_rn(acc), __ldg(e.mult + n));
  if (e.float_out) {
    float v = y;
    if (e.act == static_cast<int>(Act::ReLU)) v = v < 0.f ? 0.f : v;
    else if (e.act == static_cast<int>(Act::ReLU6)) v = v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
    static_cast<float*>(p.out)[m * p.ldo + n] = v;
    return;
  }
  int32_t q = rne_term(y) + e.out_zero;
  if (e.res != nullptr)
    q += rne_term(__fmul_rn(__int2float_rn(static_cast<int32_t>(__ldg(e.res + m * e.ldr + n)) - e.res_zero),
                            e.res_mult));
  q = q < e.qmin ? e.qmin : (q > e.qmax ? e.qmax : q);
  static_cast<uint8_t*>(p.out)[m * p.ldo + n] = static_cast<uint8_t>(q);
}

// Shapes: a uint8 [M, K] (lda), w int8 [N, ldw = packed_k(K)], out [M, N] (ldo). Grid (ceil(M / 64),
// ceil(N / 64)), 128 threads, 20 KB static shared memory (A and W tiles, 2 stages, 64 x 80 bytes).
// kAMode (quant.h): kAGather byte loads of A; kACpAsync cp.async of 16-byte aligned rows; kAConv the
// implicit-GEMM convolution (A's chunks copied from the NHWC image, padding taps = a_zero).
// Minimum 1 CTA per SM in the launch bounds: with the thread count alone ptxas (CUDA 13, sm_90a) capped
// the cp.async variant at 72 registers and spilled 12 bytes; with it, <0> 107-109, <1> 96, <2> 104-106
// registers on sm_80 / sm_90a and no spill: 4 CTAs (16 warps) per SM by registers.
template <int kAMode>
__global__ void __launch_bounds__(q8::kThreads, 1) quant_gemm_fwd_kernel(const QuantGemmParams p) {
  using namespace q8;
  __shared__ __align__(16) uint8_t smem[kSmemBytes];
  uint8_t* const As = smem;                         // [kStages][kTileM][kSmemStride]
  uint8_t* const Ws = smem + kStages * kTileBytes;  // [kStages][kTileN][kSmemStride]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / kWarpsN, wn = warp % kWarpsN;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const int64_t ktiles = (p.K + kTileK - 1) / kTileK;

  // kAConv: the output pixel of each A row this thread copies (row rc.row of chunk tid + i * kThreads,
  // the same in every K tile), decoded once: image offset and the top-left tap's (ih, iw).
  int64_t img_off[kChunkIters];
  int ih0[kChunkIters], iw0[kChunkIters];
  if constexpr (kAMode == kAConv) {
#pragma unroll
    for (int i = 0; i < kChunkIters; ++i) {
      const RowCol rc = load_chunk(tid + i * kThreads);
      const int64_t m = m0 + rc.row < p.M ? m0 + rc.row : 0;
      const int64_t img = m / (p.g.OH * p.g.OW);
      const int pix = static_cast<int>(m % (p.g.OH * p.g.OW));
      img_off[i] = img * p.g.sN;
      ih0[i] = (pix / p.g.OW) * p.g.SH - p.g.PH;
      iw0[i] = (pix % p.g.OW) * p.g.SW - p.g.PW;
    }
  }
  const uint32_t zero4 = static_cast<uint32_t>(p.ep.a_zero) * 0x01010101u;   // 4 bytes of a_zero

  // Stage `stage` <- K tile starting at k0: kChunkIters chunks of A and of W per thread.
  auto load_stage = [&](int stage, int64_t k0) {
#pragma unroll
    for (int i = 0; i < kChunkIters; ++i) {
      const RowCol rc = load_chunk(tid + i * kThreads);
      const int64_t m = m0 + rc.row, n = n0 + rc.row, k = k0 + rc.col;
      uint8_t* const dst_a = As + stage * kTileBytes + rc.row * kSmemStride + rc.col;
      const int nb = a_chunk_bytes(m, p.M, k, p.K);
      if constexpr (kAMode == kACpAsync) {
        ptx::cp_async_16(ptx::smem_addr(dst_a), nb > 0 ? p.a + m * p.lda + k : p.a, nb);
      } else if constexpr (kAMode == kAConv) {
        // column k = (tap, channel c); C % 16 == 0: the chunk is 16 channels of one tap (nb is 0 or 16)
        const int tap = static_cast<int>(k) / p.g.C, c = static_cast<int>(k) % p.g.C;
        const int ih = ih0[i] + (tap / p.g.KW) * p.g.DH, iw = iw0[i] + (tap % p.g.KW) * p.g.DW;
        const bool inside = ih >= 0 && ih < p.g.H && iw >= 0 && iw < p.g.W;
        if (nb > 0 && !inside)
          *reinterpret_cast<uint4*>(dst_a) = make_uint4(zero4, zero4, zero4, zero4);   // padding tap
        else
          ptx::cp_async_16(ptx::smem_addr(dst_a), nb > 0 ? p.a + img_off[i] + ih * p.g.sH + iw * p.g.sW + c : p.a,
                           nb);
      } else {
        // byte j of the chunk in byte j % 4 of word j / 4 (little-endian, as the 32-bit fragment
        // loads read it); bytes past nb are 0 as cp.async's zero-fill
        uint32_t v[4] = {0u, 0u, 0u, 0u};
        if (nb > 0) {
          const uint8_t* src = p.a + m * p.lda + k;
#pragma unroll
          for (int j = 0; j < 16; ++j)
            if (j < nb) v[j >> 2] |= static_cast<uint32_t>(__ldg(src + j)) << (8 * (j & 3));
        }
        *reinterpret_cast<uint4*>(dst_a) = make_uint4(v[0], v[1], v[2], v[3]);
      }
      uint8_t* const dst_w = Ws + stage * kTileBytes + rc.row * kSmemStride + rc.col;
      const bool w_ok = n < p.N;
      ptx::cp_async_16(ptx::smem_addr(dst_w), w_ok ? p.w + n * p.ldw + k : p.w, w_ok ? 16 : 0);
    }
  };

  int32_t acc[kMI][kNI][4];
#pragma unroll
  for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
    for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0;

  load_stage(0, 0);
  ptx::cp_async_commit();
  for (int64_t kt = 0; kt < ktiles; ++kt) {
    // prefetch K tile kt + 1 into the other stage (freed by the barrier that ended iteration kt - 1);
    // an empty group on the last tile keeps "all but the newest group" = tile kt for the wait
    if (kt + 1 < ktiles) load_stage(static_cast<int>((kt + 1) & 1), (kt + 1) * kTileK);
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();
    __syncthreads();
    const uint8_t* const a_st = As + (kt & 1) * kTileBytes;
    const uint8_t* const w_st = Ws + (kt & 1) * kTileBytes;
#pragma unroll
    for (int ks = 0; ks < kTileK / kStepK; ++ks) {
      uint32_t a[kMI][4], b[kNI][2];
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const RowCol rc = a_frag(lane, r);
          a[mi][r] = *reinterpret_cast<const uint32_t*>(
              a_st + (wm * 16 * kMI + mi * 16 + rc.row) * kSmemStride + ks * kStepK + rc.col);
        }
#pragma unroll
      for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const RowCol rc = b_frag(lane, r);
          b[ni][r] = *reinterpret_cast<const uint32_t*>(
              w_st + (wn * 8 * kNI + ni * 8 + rc.row) * kSmemStride + ks * kStepK + rc.col);
        }
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
        for (int ni = 0; ni < kNI; ++ni) mma_16832_u8s8(acc[mi][ni], a[mi], b[ni]);
    }
    __syncthreads();  // every warp is done with this stage before iteration kt + 1 refills it
  }

#pragma unroll
  for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
    for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const RowCol rc = acc_frag(lane, r);
        const int64_t m = m0 + wm * 16 * kMI + mi * 16 + rc.row;
        const int64_t n = n0 + wn * 8 * kNI + ni * 8 + rc.col;
        if (m < p.M && n < p.N) requant_store(p, m, n, acc[mi][ni][r]);
      }
}

// One thread per column byte: col [rows = N * OH * OW, width = KH * KW * CG], written in order
// (coalesced); reads x through its strides (NHWC: consecutive channels, coalesced too).
__global__ void quant_im2col_kernel(const uint8_t* __restrict__ x, uint8_t* __restrict__ col, int64_t total,
                                    int64_t width, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH,
                                    int64_t sW, int64_t c0, int64_t CG, int64_t KW, int64_t SH, int64_t SW, int64_t PH,
                                    int64_t PW, int64_t DH, int64_t DW, int64_t OH, int64_t OW, uint8_t pad) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / width, c = e % width;
    const int64_t n = r / (OH * OW), oh = (r / OW) % OH, ow = r % OW;
    const int64_t tap = c / CG, ch = c % CG, i = tap / KW, j = tap % KW;
    const int64_t ih = oh * SH - PH + i * DH, iw = ow * SW - PW + j * DW;
    col[e] = (ih >= 0 && ih < H && iw >= 0 && iw < W) ? x[n * sN + (c0 + ch) * sC + ih * sH + iw * sW] : pad;
  }
}

// 1 float read, 1 byte written per element.
__global__ void quant_quantize_kernel(const float* __restrict__ x, uint8_t* __restrict__ out, int64_t n,
                                      float inv_scale, int32_t zero_point) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = __fmul_rn(x[i], inv_scale);
    v = v != v ? 0.f : (v < -256.f ? -256.f : (v > 512.f ? 512.f : v));  // NaN -> real 0
    const int32_t q = __float2int_rn(v) + zero_point;
    out[i] = static_cast<uint8_t>(q < 0 ? 0 : (q > 255 ? 255 : q));
  }
}

// One thread per output byte out[p * C + c] (NHWC), KH * KW taps read.
__global__ void quant_max_pool2d_kernel(const uint8_t* __restrict__ x, uint8_t* __restrict__ out, int64_t total,
                                        int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH,
                                        int64_t sW, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,
                                        int64_t PW, int64_t DH, int64_t DW, int64_t OH, int64_t OW) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = e / C, c = e % C;
    const int64_t n = p / (OH * OW), oh = (p / OW) % OH, ow = p % OW;
    uint32_t best = 0;  // 0 is the least uint8; every window has a tap in the image
    for (int64_t i = 0; i < KH; ++i) {
      const int64_t ih = oh * SH - PH + i * DH;
      if (ih < 0 || ih >= H) continue;
      for (int64_t j = 0; j < KW; ++j) {
        const int64_t iw = ow * SW - PW + j * DW;
        if (iw < 0 || iw >= W) continue;
        best = max(best, static_cast<uint32_t>(x[n * sN + c * sC + ih * sH + iw * sW]));
      }
    }
    out[e] = static_cast<uint8_t>(best);
  }
}

// One thread per output byte; the window's count * in_zero subtracted once, the factor
// float(ratio / count) rounded from double as on the CPU (IEEE double division on the device).
__global__ void quant_adaptive_avg_pool2d_kernel(const uint8_t* __restrict__ x, uint8_t* __restrict__ out,
                                                 int64_t total, int64_t C, int64_t H, int64_t W, int64_t sN,
                                                 int64_t sC, int64_t sH, int64_t sW, int64_t OH, int64_t OW,
                                                 int32_t in_zero, double ratio, int32_t out_zero) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = e / C, c = e % C;
    const int64_t n = p / (OH * OW), oh = (p / OW) % OH, ow = p % OW;
    const int64_t h0 = oh * H / OH, h1 = ((oh + 1) * H + OH - 1) / OH;
    const int64_t w0 = ow * W / OW, w1 = ((ow + 1) * W + OW - 1) / OW;
    const int64_t count = (h1 - h0) * (w1 - w0);
    const float mult = __double2float_rn(__ddiv_rn(ratio, static_cast<double>(count)));
    int32_t s = 0;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) s += x[n * sN + c * sC + ih * sH + iw * sW];
    const int32_t q = rne_term(__fmul_rn(__int2float_rn(s - static_cast<int32_t>(count) * in_zero), mult)) + out_zero;
    out[e] = static_cast<uint8_t>(q < 0 ? 0 : (q > 255 ? 255 : q));
  }
}

constexpr int kEltThreads = 256;

unsigned elt_blocks(int64_t total) {
  return static_cast<unsigned>(std::min<int64_t>((total + kEltThreads - 1) / kEltThreads, int64_t{1} << 30));
}

}  // namespace

void quant_gemm(const uint8_t* a, int64_t M, int64_t K, int64_t lda, const int8_t* w, int64_t N,
                const QuantEpilogueArgs& ep, void* out, int64_t ldo, int device, uintptr_t stream) {
  if (M < 0 || N < 0 || K <= 0) throw std::invalid_argument("CUDA quant_gemm: M, N must be >= 0 and K positive");
  if (lda < K && M > 1) throw std::invalid_argument("CUDA quant_gemm: lda must be >= K");
  if (ep.a_zero < 0 || ep.a_zero > 255) throw std::invalid_argument("CUDA quant_gemm: a_zero must be in [0, 255]");
  if (ep.colsum == nullptr || ep.mult == nullptr)
    throw std::invalid_argument("CUDA quant_gemm: colsum and mult are required");
  if (!aligned_to(w, 16)) throw std::invalid_argument("CUDA quant_gemm: the packed weight must be 16-byte aligned");
  if (M == 0 || N == 0) return;
  const int64_t mtiles = (M + q8::kTileM - 1) / q8::kTileM, ntiles = (N + q8::kTileN - 1) / q8::kTileN;
  if (mtiles > INT32_MAX || ntiles > 65535) throw std::invalid_argument("CUDA quant_gemm: M or N too large");
  const DeviceGuard device_guard(device);
  int major = 0;
  PYIMGCLS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 8) throw std::invalid_argument("CUDA quant_gemm needs sm_80 or newer (mma.sync m16n8k32 s8)");
  const bool vec_a = aligned_to(a, 16) && lda % 16 == 0;
  const QuantGemmParams p{a, w, out, M, N, K, lda, q8::packed_k(K), ldo, ep, QuantConvGeom{}};
  const dim3 grid(static_cast<unsigned>(mtiles), static_cast<unsigned>(ntiles));
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  if (vec_a)
    quant_gemm_fwd_kernel<q8::kACpAsync><<<grid, q8::kThreads, 0, st>>>(p);
  else
    quant_gemm_fwd_kernel<q8::kAGather><<<grid, q8::kThreads, 0, st>>>(p);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

void quant_conv_gemm(const uint8_t* x, int64_t N, const QuantConvGeom& g, int64_t KH, const int8_t* w, int64_t O,
                     const QuantEpilogueArgs& ep, void* out, int64_t ldo, int device, uintptr_t stream) {
  if (N < 0 || O < 0 || KH <= 0 || g.KW <= 0 || g.C <= 0 || g.OH <= 0 || g.OW <= 0 || g.SH <= 0 || g.SW <= 0 ||
      g.DH <= 0 || g.DW <= 0)
    throw std::invalid_argument("CUDA quant_conv_gemm: sizes, strides and dilations must be positive");
  if (!quant_conv_gemm_ok(reinterpret_cast<uintptr_t>(x), g.C, 1, g.sN, g.sH, g.sW))
    throw std::invalid_argument("CUDA quant_conv_gemm: x must be NHWC-dense with C % 16 == 0 and 16-byte aligned "
                                "pixels");
  if (ep.a_zero < 0 || ep.a_zero > 255) throw std::invalid_argument("CUDA quant_conv_gemm: a_zero must be in [0, 255]");
  if (ep.colsum == nullptr || ep.mult == nullptr)
    throw std::invalid_argument("CUDA quant_conv_gemm: colsum and mult are required");
  if (!aligned_to(w, 16)) throw std::invalid_argument("CUDA quant_conv_gemm: the packed weight must be 16-byte aligned");
  const int64_t K = KH * g.KW * g.C, M = N * g.OH * g.OW;
  if (K > INT32_MAX / 2 || static_cast<int64_t>(g.H) * g.W > INT32_MAX / 2)
    throw std::invalid_argument("CUDA quant_conv_gemm: the kernel or image is too large");
  if (M == 0 || O == 0) return;
  const int64_t mtiles = (M + q8::kTileM - 1) / q8::kTileM, ntiles = (O + q8::kTileN - 1) / q8::kTileN;
  if (mtiles > INT32_MAX || ntiles > 65535) throw std::invalid_argument("CUDA quant_conv_gemm: M or O too large");
  const DeviceGuard device_guard(device);
  int major = 0;
  PYIMGCLS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 8) throw std::invalid_argument("CUDA quant_conv_gemm needs sm_80 or newer (mma.sync m16n8k32 s8)");
  const QuantGemmParams p{x, w, out, M, O, K, 0, q8::packed_k(K), ldo, ep, g};
  const dim3 grid(static_cast<unsigned>(mtiles), static_cast<unsigned>(ntiles));
  quant_gemm_fwd_kernel<q8::kAConv><<<grid, q8::kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(p);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

void quant_im2col(const uint8_t* x, int64_t N, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH,
                  int64_t sW, int64_t c0, int64_t CG, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,
                  int64_t PW, int64_t DH, int64_t DW, int64_t OH, int64_t OW, uint8_t pad, uint8_t* col, int device,
                  uintptr_t stream) {
  if (CG <= 0 || KH <= 0 || KW <= 0 || SH <= 0 || SW <= 0 || DH <= 0 || DW <= 0 || OH < 0 || OW < 0 || N < 0)
    throw std::invalid_argument("CUDA quant_im2col: sizes, strides and dilations must be positive");
  const int64_t width = KH * KW * CG, total = N * OH * OW * width;
  if (total == 0) return;
  const DeviceGuard device_guard(device);
  quant_im2col_kernel<<<elt_blocks(total), kEltThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      x, col, total, width, H, W, sN, sC, sH, sW, c0, CG, KW, SH, SW, PH, PW, DH, DW, OH, OW, pad);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

void quant_quantize(const float* x, int64_t n, float inv_scale, int32_t zero_point, uint8_t* out, int device,
                    uintptr_t stream) {
  if (n < 0) throw std::invalid_argument("CUDA quant_quantize: n must be >= 0");
  if (n == 0) return;
  const DeviceGuard device_guard(device);
  quant_quantize_kernel<<<elt_blocks(n), kEltThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      x, out, n, inv_scale, zero_point);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

void quant_max_pool2d(const uint8_t* x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sC,
                      int64_t sH, int64_t sW, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW,
                      int64_t DH, int64_t DW, int64_t OH, int64_t OW, uint8_t* out, int device, uintptr_t stream) {
  if (KH <= 0 || KW <= 0 || SH <= 0 || SW <= 0 || DH <= 0 || DW <= 0 || N < 0 || C < 0 || OH < 0 || OW < 0)
    throw std::invalid_argument("CUDA quant_max_pool2d: kernel, stride and dilation must be positive");
  const int64_t total = N * OH * OW * C;
  if (total == 0) return;
  const DeviceGuard device_guard(device);
  quant_max_pool2d_kernel<<<elt_blocks(total), kEltThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      x, out, total, C, H, W, sN, sC, sH, sW, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

void quant_adaptive_avg_pool2d(const uint8_t* x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sC,
                               int64_t sH, int64_t sW, int64_t OH, int64_t OW, int32_t in_zero, double ratio,
                               int32_t out_zero, uint8_t* out, int device, uintptr_t stream) {
  if (OH <= 0 || OW <= 0 || H <= 0 || W <= 0 || N < 0 || C < 0)
    throw std::invalid_argument("CUDA quant_adaptive_avg_pool2d: sizes must be positive");
  const int64_t total = N * OH * OW * C;
  if (total == 0) return;
  const DeviceGuard device_guard(device);
  quant_adaptive_avg_pool2d_kernel<<<elt_blocks(total), kEltThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      x, out, total, C, H, W, sN, sC, sH, sW, OH, OW, in_zero, ratio, out_zero);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace pyimgcls::cuda
