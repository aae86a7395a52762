// CUDA convolution family: fused conv2d forward (bias + residual + relu/relu6), dgrad, wgrad and the
// epilogue backward, for float16 / bfloat16 (tensor cores, fp32 accumulation) and float32 (SIMT).
//
// What it computes (g = group, Cg = C/groups, Og = O/groups)
//   fwd:   out[n,o,oh,ow] = act(sum_{i,j,c} x[n, g*Cg+c, oh*sh-ph+i*dh, ow*sw-pw+j*dw] * w[o,c,i,j]
//                               + bias[o] + residual[n,o,oh,ow])
//   dgrad: dx[n,c,ih,iw]  = sum_{i,j,o} g[n,o,oh,ow] * w[o,c,i,j], oh = (ih+ph-i*dh)/sh integral, in range
//   wgrad: dw[o,c,i,j]    = sum_{n,oh,ow} g[n,o,oh,ow] * x[n,c,ih,iw]
//
// Algorithm: implicit GEMM — the im2col matrix is never materialised; each tile of it is gathered
// from the activation tensor straight into shared memory. Per group, as GEMMs C[M,N] = A[M,K] B[N,K]^T:
//   fwd:   M = N*OH*OW pixels, N = Og, K = KH*KW*Cg ordered (i, j, c): A gathered from x, B = weight
//   dgrad: M = N*H*W pixels,   N = Cg, K = KH*KW*Og ordered (i, j, o): A gathered from g with the
//          transposed index map (taps that do not land on an output pixel read 0), B = weight
//   wgrad: M = Og, N = KH*KW*Cg, K = N*OH*OW pixels (split over gridDim.z): A gathered from g,
//          B gathered from x; partial sums to fp32 scratch, then a fixed-order reduction.
// Kernels:
//   conv2d_igemm_kernel<MODE, T, VEC> (fp16/bf16): 128x128x32 block tile, 8 warps of 64x32, mma.sync
//     m16n8k16 (fp32 accumulate), ldmatrix.x4 fragments from padded (conflict-free) shared rows, a
//     3-stage cp.async pipeline. VEC: each thread moves 16-byte chunks (8 channels of one tap) with
//     cp.async zero-fill for padding / out-of-range — needs channels_last activations with a channel
//     count per group that is a multiple of 8. !VEC: the same pipeline fed by predicated element
//     gathers (any layout, any channel count; wgrad always).
//   conv2d_simt_kernel<MODE> (fp32): 64x64x16 tile, 4x4 outputs per thread, IEEE fp32 FMA (no TF32).
//   conv2d_dw_fwd_kernel<T> (groups == C): direct stencil, one output per thread, fused epilogue.
//   conv2d_depthwise_dgrad_kernel<T, VEC> / conv2d_depthwise_wgrad_kernel<T> (groups == C): direct
//     backward stencils (dgrad: one dx element or 16-byte channel pack per thread; wgrad: per (channel, tap)
//     reductions over pixel splits into the wgrad scratch, reduced in split order).
//   Fused epilogue on the fp32 accumulator: + bias + residual, then relu / relu6 written as
//   v < 0 ? 0 : v (NaN compares false and propagates, unlike fmaxf), cast, store through strides.
// NCHW policy: these kernels take any strides, but the fast path needs channels_last; pyimgcls/ops/
// conv.py converts fp16/bf16 NCHW activations (and the small weight) to channels_last explicitly
// before the launch and writes the output in the layout PyTorch would return.
//
// Cost: FLOPs = 2*N*O*OH*OW*Cg*KH*KW per pass (fwd, dgrad, wgrad). Minimum bytes (fwd) =
//   (|x| + |w| + |out| (+ |residual| + O)) * itemsize; the epilogue saves the separate bias / add /
//   relu passes of eager PyTorch (one read + write of the output each).
//
// Test and benchmark
//   pytest tests/test_conv.py -k cuda
//   python benchmarks/bench_conv.py
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "conv.h"
#include "runtime.h"

namespace pyimgcls::cuda {
namespace {

enum Mode : int { kFwd = 0, kDgrad = 1, kWgrad = 2 };

struct Tensor4 {
  const void* p;
  int64_t sn, sc, sh, sw;
};

struct IgemmParams {
  Tensor4 a;  // fwd: x; dgrad / wgrad: grad at the conv output
  Tensor4 b;  // fwd / dgrad: weight with strides (row, k-channel, kh, kw); wgrad: x
  Tensor4 c;  // fwd: out; dgrad: dx; wgrad: fp32 scratch (sn = per split, sc = per out channel)
  Tensor4 r;  // fwd: residual (p may be null)
  const void* bias;
  int64_t H, W, OH, OW;  // conv input / output spatial sizes
  int64_t Cg, Og;
  int64_t M, N, K;       // per-group GEMM sizes (see the header)
  int64_t b_group;       // fwd / dgrad: element offset of group g+1's weight rows from group g's
  int64_t k_chunk;       // GEMM-K handled by one split (wgrad); K otherwise
  int KH, KW, sh, sw, ph, pw, dh, dw;
  int act;
  int splits;
};

template <typename T> __device__ __forceinline__ T zero_of() { return from_float<T>(0.0f); }

// ---------------------------------------------------------------------------------------------
// Index maps shared by every implicit-GEMM kernel. Rows of A / C are pixels (fwd, dgrad) or out
// channels (wgrad); columns of B / C are channels (fwd, dgrad) or (tap, in channel) (wgrad).
// ---------------------------------------------------------------------------------------------
struct Pix {
  int64_t n, y, x;  // image, row, column in the spatial grid the GEMM rows enumerate
};

__device__ __forceinline__ Pix split_pixel(int64_t m, int64_t h, int64_t w) {
  Pix p;
  p.x = m % w;
  const int64_t t = m / w;
  p.y = t % h;
  p.n = t / h;
  return p;
}

// Element of the conv input x (tensor t) that output pixel `pix` (index over N*OH*OW) reads for
// reduction column `col` = tap * Cg + channel, in group g; -1 where the tap falls in the padding.
// A of the forward pass (pix = m, col = k) and B of the weight gradient (pix = k, col = n).
__device__ __forceinline__ int64_t x_tap_offset(const IgemmParams& p, const Tensor4& t, int g, int64_t pix,
                                                int64_t col) {
  const Pix q = split_pixel(pix, p.OH, p.OW);
  const int64_t tap = col / p.Cg, c = col % p.Cg;
  const int64_t ih = q.y * p.sh - p.ph + (tap / p.KW) * p.dh;
  const int64_t iw = q.x * p.sw - p.pw + (tap % p.KW) * p.dw;
  if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) return -1;
  return q.n * t.sn + (g * p.Cg + c) * t.sc + ih * t.sh + iw * t.sw;
}

// A[m, k] (k already offset to the split's range); returns the element offset or -1 for a zero.
template <int MODE>
__device__ __forceinline__ int64_t a_offset(const IgemmParams& p, int g, int64_t m, int64_t k) {
  if (MODE == kFwd) {
    return x_tap_offset(p, p.a, g, m, k);
  } else if (MODE == kDgrad) {
    const Pix q = split_pixel(m, p.H, p.W);
    const int64_t tap = k / p.Og, o = k % p.Og;
    const int64_t th = q.y + p.ph - (tap / p.KW) * p.dh;
    const int64_t tw = q.x + p.pw - (tap % p.KW) * p.dw;
    if (th < 0 || tw < 0 || th % p.sh != 0 || tw % p.sw != 0) return -1;
    const int64_t oh = th / p.sh, ow = tw / p.sw;
    if (oh >= p.OH || ow >= p.OW) return -1;
    return q.n * p.a.sn + (g * p.Og + o) * p.a.sc + oh * p.a.sh + ow * p.a.sw;
  } else {
    const Pix q = split_pixel(k, p.OH, p.OW);
    return q.n * p.a.sn + (g * p.Og + m) * p.a.sc + q.y * p.a.sh + q.x * p.a.sw;
  }
}

// B[n, k]; element offset or -1.
template <int MODE>
__device__ __forceinline__ int64_t b_offset(const IgemmParams& p, int g, int64_t n, int64_t k) {
  if (MODE == kWgrad) {
    return x_tap_offset(p, p.b, g, k, n);
  } else {
    const int64_t kc = MODE == kFwd ? p.Cg : p.Og;
    const int64_t tap = k / kc, c = k % kc;
    return g * p.b_group + n * p.b.sn + c * p.b.sc + (tap / p.KW) * p.b.sh + (tap % p.KW) * p.b.sw;
  }
}

// Store one accumulator value C[m, n] of group g (and split s for wgrad) with the mode's epilogue.
template <int MODE, typename T>
__device__ __forceinline__ void store_c(const IgemmParams& p, int g, int s, int64_t m, int64_t n, float v) {
  if (MODE == kWgrad) {
    float* c = static_cast<float*>(const_cast<void*>(p.c.p));
    c[s * p.c.sn + (g * p.Og + m) * p.c.sc + n] = v;
    return;
  }
  T* c = static_cast<T*>(const_cast<void*>(p.c.p));
  if (MODE == kFwd) {
    const Pix q = split_pixel(m, p.OH, p.OW);
    const int64_t ch = g * p.Og + n;
    if (p.bias) v += to_float(static_cast<const T*>(p.bias)[ch]);
    if (p.r.p) v += to_float(static_cast<const T*>(p.r.p)[q.n * p.r.sn + ch * p.r.sc + q.y * p.r.sh + q.x * p.r.sw]);
    v = apply_act(v, p.act);
    c[q.n * p.c.sn + ch * p.c.sc + q.y * p.c.sh + q.x * p.c.sw] = from_float<T>(v);
  } else {
    const Pix q = split_pixel(m, p.H, p.W);
    c[q.n * p.c.sn + (g * p.Cg + n) * p.c.sc + q.y * p.c.sh + q.x * p.c.sw] = from_float<T>(v);
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core implicit GEMM (fp16 / bf16)
// ---------------------------------------------------------------------------------------------
constexpr int TC_BM = 128, TC_BN = 128, TC_BK = 32, TC_STAGES = 3, TC_THREADS = 256;
constexpr int TC_LD = TC_BK + 8;  // padded row (80 bytes): ldmatrix rows hit 8 distinct 16-byte bank groups
constexpr int TC_SMEM_BYTES = TC_STAGES * (TC_BM + TC_BN) * TC_LD * 2;

// Element gathers of the non-16-byte paths: A[m, k] into *a_dst and B[n, k] into *b_dst, zeros
// outside the matrix or past the split's K range.
template <int MODE, typename T>
__device__ __forceinline__ void gather_elems(const IgemmParams& p, int g, int64_t m, int64_t n, int64_t k,
                                             int64_t k_end, const T* A, const T* B, T* a_dst, T* b_dst) {
  int64_t off = -1, boff = -1;
  if (k < k_end) {
    if (m < p.M) off = a_offset<MODE>(p, g, m, k);
    if (n < p.N) boff = b_offset<MODE>(p, g, n, k);
  }
  *a_dst = off >= 0 ? A[off] : zero_of<T>();
  *b_dst = boff >= 0 ? B[boff] : zero_of<T>();
}

// Fill one pipeline stage: sA [BM][LD] <- A[bm:bm+BM, k0:k0+BK], sB [BN][LD] <- B[bn:bn+BN, k0:k0+BK].
template <int MODE, typename T, bool VEC>
__device__ __forceinline__ void load_stage(const IgemmParams& p, int g, int64_t bm, int64_t bn, int64_t k0,
                                           int64_t k_end, T* sA, T* sB) {
  const int tid = threadIdx.x;
  const T* A = static_cast<const T*>(p.a.p);
  const T* B = static_cast<const T*>(p.b.p);
  if (VEC) {
    // 512 chunks of 8 elements per operand: chunk q -> row q / 4, k offset (q % 4) * 8. A chunk never
    // straddles a tap because the per-tap channel count is a multiple of 8 (checked by the launcher).
#pragma unroll
    for (int it = 0; it < 2; ++it) {
      const int q = tid + it * TC_THREADS;
      const int row = q >> 2, kq = (q & 3) * 8;
      const int64_t k = k0 + kq;
      const int64_t m = bm + row;
      int64_t off = -1;
      if (m < p.M && k < k_end) off = a_offset<MODE>(p, g, m, k);
      ptx::cp_async_16(ptx::smem_addr(sA + row * TC_LD + kq), off >= 0 ? A + off : A, off >= 0 ? 16 : 0);
      const int64_t n = bn + row;
      int64_t boff = -1;
      if (n < p.N && k < k_end) boff = b_offset<MODE>(p, g, n, k);
      ptx::cp_async_16(ptx::smem_addr(sB + row * TC_LD + kq), boff >= 0 ? B + boff : B, boff >= 0 ? 16 : 0);
    }
  } else if (MODE != kWgrad) {
    // Element gathers, 16 per thread per operand; 32 consecutive threads cover one row's BK k values.
    const int kk = tid & 31;
    const int64_t k = k0 + kk;
#pragma unroll 4
    for (int it = 0; it < 16; ++it) {
      const int row = (tid >> 5) + it * 8;
      const int64_t m = bm + row, n = bn + row;
      gather_elems<MODE>(p, g, m, n, k, k_end, A, B, sA + row * TC_LD + kk, sB + row * TC_LD + kk);
    }
  } else {
    // wgrad: both operands are contiguous along the GEMM's M / N axis (channels) for channels_last,
    // so consecutive threads take consecutive rows of the tile.
    const int row = tid & 127;
#pragma unroll 4
    for (int it = 0; it < 16; ++it) {
      const int kk = (tid >> 7) + it * 2;
      const int64_t k = k0 + kk;
      const int64_t m = bm + row, n = bn + row;
      gather_elems<MODE>(p, g, m, n, k, k_end, A, B, sA + row * TC_LD + kk, sB + row * TC_LD + kk);
    }
  }
}

template <int MODE, typename T, bool VEC>
__global__ void __launch_bounds__(TC_THREADS) conv2d_igemm_kernel(IgemmParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sA = reinterpret_cast<T*>(smem_raw);                          // [STAGES][BM][LD]
  T* sB = sA + TC_STAGES * TC_BM * TC_LD;                          // [STAGES][BN][LD]

  // 1. Block -> (M tile, N tile, group, K split).
  const int64_t bm = static_cast<int64_t>(blockIdx.x) * TC_BM;
  const int64_t bn = static_cast<int64_t>(blockIdx.y) * TC_BN;
  const int g = blockIdx.z / p.splits;
  const int s = blockIdx.z % p.splits;
  const int64_t k_begin = static_cast<int64_t>(s) * p.k_chunk;
  const int64_t k_end = min(p.K, k_begin + p.k_chunk);
  const int64_t KT = k_end > k_begin ? (k_end - k_begin + TC_BK - 1) / TC_BK : 0;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warp_m = warp >> 2, warp_n = warp & 3;                 // 2 x 4 warps, each 64 x 32
  float acc[4][4][4];                                              // [m16 tile][n8 tile][fragment]
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  // 2. Prologue: STAGES-1 tiles in flight (empty commit groups keep the wait counts uniform).
#pragma unroll
  for (int st = 0; st < TC_STAGES - 1; ++st) {
    if (st < KT)
      load_stage<MODE, T, VEC>(p, g, bm, bn, k_begin + st * TC_BK, k_end, sA + st * TC_BM * TC_LD,
                               sB + st * TC_BN * TC_LD);
    ptx::cp_async_commit();
  }

  // 3. Main loop: wait for tile kt, prefetch tile kt+STAGES-1 into the stage freed at kt-1, compute.
  for (int64_t kt = 0; kt < KT; ++kt) {
    ptx::cp_async_wait<TC_STAGES - 2>();
    __syncthreads();  // tile kt visible to all; every warp finished reading the stage refilled below
    const int64_t pre = kt + TC_STAGES - 1;
    if (pre < KT) {
      const int ps = static_cast<int>(pre % TC_STAGES);
      load_stage<MODE, T, VEC>(p, g, bm, bn, k_begin + pre * TC_BK, k_end, sA + ps * TC_BM * TC_LD,
                               sB + ps * TC_BN * TC_LD);
    }
    ptx::cp_async_commit();

    const int cs = static_cast<int>(kt % TC_STAGES);
    const T* tA = sA + cs * TC_BM * TC_LD + (warp_m * 64) * TC_LD;
    const T* tB = sB + cs * TC_BN * TC_LD + (warp_n * 32) * TC_LD;
#pragma unroll
    for (int kk = 0; kk < TC_BK; kk += 16) {
      unsigned af[4][4], bf[4][2];
      // A fragments: 4 x (16 x 16); lanes 0-15 address rows 0-15 at k, lanes 16-31 at k+8.
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
        ptx::ldmatrix_x4(af[mt], ptx::smem_addr(tA + (mt * 16 + (lane & 15)) * TC_LD + kk + (lane >> 4) * 8));
      // B fragments: 2 x ldmatrix.x4, each two n8 tiles x k16 (sB rows are n, k contiguous = "col").
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        unsigned r[4];
        const int brow = np * 16 + (lane & 7) + ((lane >> 4) << 3);
        ptx::ldmatrix_x4(r, ptx::smem_addr(tB + brow * TC_LD + kk + ((lane >> 3) & 1) * 8));
        bf[2 * np][0] = r[0];
        bf[2 * np][1] = r[1];
        bf[2 * np + 1][0] = r[2];
        bf[2 * np + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) ptx::mma_16816<T>(acc[mt][nt], af[mt], bf[nt]);
    }
  }
  ptx::cp_async_wait<0>();

  // 4. Epilogue: fragment (mt, nt, e) holds C[row0 + (e >= 2) * 8, col0 + (e & 1)].
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t m = bm + warp_m * 64 + mt * 16 + (lane >> 2) + half * 8;
      if (m >= p.M) continue;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t n = bn + warp_n * 32 + nt * 8 + (lane & 3) * 2 + e;
          if (n < p.N) store_c<MODE, T>(p, g, s, m, n, acc[mt][nt][half * 2 + e]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SIMT implicit GEMM (fp32, IEEE: no TF32)
// ---------------------------------------------------------------------------------------------
constexpr int SM_BM = 64, SM_BN = 64, SM_BK = 16, SM_THREADS = 256;

template <int MODE>
__global__ void __launch_bounds__(SM_THREADS) conv2d_simt_kernel(IgemmParams p) {
  __shared__ float sA[SM_BK][SM_BM];  // k-major so the compute loop reads a row of M / N per k
  __shared__ float sB[SM_BK][SM_BN];
  const int64_t bm = static_cast<int64_t>(blockIdx.x) * SM_BM;
  const int64_t bn = static_cast<int64_t>(blockIdx.y) * SM_BN;
  const int g = blockIdx.z / p.splits;
  const int s = blockIdx.z % p.splits;
  const int64_t k_begin = static_cast<int64_t>(s) * p.k_chunk;
  const int64_t k_end = min(p.K, k_begin + p.k_chunk);
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const float* A = static_cast<const float*>(p.a.p);
  const float* B = static_cast<const float*>(p.b.p);
  float acc[4][4] = {};

  for (int64_t k0 = k_begin; k0 < k_end; k0 += SM_BK) {
    // Gathers: 4 elements of each operand per thread. fwd / dgrad walk k fastest (channels_last
    // coalescing); wgrad walks rows fastest (its rows are channels).
#pragma unroll
    for (int it = 0; it < 4; ++it) {
      const int e = tid + it * SM_THREADS;
      const int row = MODE == kWgrad ? (e & 63) : (e >> 4);
      const int kk = MODE == kWgrad ? (e >> 6) : (e & 15);
      const int64_t k = k0 + kk, m = bm + row, n = bn + row;
      int64_t off = -1, boff = -1;
      if (k < k_end) {
        if (m < p.M) off = a_offset<MODE>(p, g, m, k);
        if (n < p.N) boff = b_offset<MODE>(p, g, n, k);
      }
      sA[kk][row] = off >= 0 ? A[off] : 0.0f;
      sB[kk][row] = boff >= 0 ? B[boff] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < SM_BK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = sA[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = sB[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();  // the next iteration overwrites the tiles
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = bm + ty + 16 * i;
    if (m >= p.M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = bn + tx + 16 * j;
      if (n < p.N) store_c<MODE, float>(p, g, s, m, n, acc[i][j]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Depthwise forward (groups == C, one input channel per group, O = C * multiplier)
// ---------------------------------------------------------------------------------------------
struct DwParams {
  const void *x, *w, *bias, *res;
  void* out;
  Strides4 xs, ws, rs, os;
  int64_t N, C, H, W, O, OH, OW, total;
  int KH, KW, sh, sw, ph, pw, dh, dw, act;
  bool channels_fastest;  // thread index order: c fastest (channels_last output) or ow fastest
};

template <typename T>
__global__ void __launch_bounds__(256) conv2d_dw_fwd_kernel(DwParams p) {
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.w);
  T* out = static_cast<T*>(p.out);
  const int64_t mult = p.O / p.C;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < p.total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, o, oh, ow, t;
    if (p.channels_fastest) {
      o = e % p.O; t = e / p.O; ow = t % p.OW; t /= p.OW; oh = t % p.OH; n = t / p.OH;
    } else {
      ow = e % p.OW; t = e / p.OW; oh = t % p.OH; t /= p.OH; o = t % p.O; n = t / p.O;
    }
    const int64_t c = o / mult;
    const T* xc = x + n * p.xs.n + c * p.xs.c;
    const T* wo = w + o * p.ws.n;
    float acc = 0.0f;
    for (int i = 0; i < p.KH; ++i) {
      const int64_t ih = oh * p.sh - p.ph + static_cast<int64_t>(i) * p.dh;
      if (ih < 0 || ih >= p.H) continue;
      for (int j = 0; j < p.KW; ++j) {
        const int64_t iw = ow * p.sw - p.pw + static_cast<int64_t>(j) * p.dw;
        if (iw < 0 || iw >= p.W) continue;
        acc = fmaf(to_float(xc[ih * p.xs.h + iw * p.xs.w]), to_float(wo[i * p.ws.h + j * p.ws.w]), acc);
      }
    }
    if (p.bias) acc += to_float(static_cast<const T*>(p.bias)[o]);
    if (p.res) acc += to_float(static_cast<const T*>(p.res)[n * p.rs.n + o * p.rs.c + oh * p.rs.h + ow * p.rs.w]);
    out[n * p.os.n + o * p.os.c + oh * p.os.h + ow * p.os.w] = from_float<T>(apply_act(acc, p.act));
  }
}

// ---------------------------------------------------------------------------------------------
// Depthwise backward (groups == C, one input channel per group, O = C * mult): direct kernels. The
// implicit GEMM would see N = 1 (dgrad) / M = 1 (wgrad) per group and fill one row or column of a
// 128x128 tile; these kernels do only the KH*KW (x mult) multiply-adds each output needs.
//   dgrad: dx[n,c,ih,iw] = sum_{m<mult, i, j} g[n, c*mult+m, oh, ow] * w[c*mult+m, 0, i, j],
//          oh = (ih + ph - i*dh) / sh (must divide exactly and lie in [0, OH)), ow likewise.
//          FLOPs 2*N*O*H*W*KH*KW / (sh*sw) (taps that land on an output); min bytes (|g| + |dx| + |w|) * itemsize.
//   wgrad: dw[o,0,i,j] = sum_{n,oh,ow} g[n,o,oh,ow] * x[n, o/mult, oh*sh-ph+i*dh, ow*sw-pw+j*dw].
//          FLOPs 2*N*O*OH*OW*KH*KW; min bytes (|g| + |x|) * itemsize + splits * O*KH*KW * 4 (scratch).
// Spatial coordinates are 32-bit (the launchers check that they fit); element offsets are 64-bit.
// ---------------------------------------------------------------------------------------------
struct DwBwdParams {
  const void* g;    // gradient at the conv output [N, O, OH, OW], strides gs
  const void* src;  // dgrad: weight [O, 1, KH, KW] (strides ss = (o, -, kh, kw)); wgrad: x [N, C, H, W]
  void* dst;        // dgrad: dx [N, C, H, W] (strides ds); wgrad: fp32 scratch [splits, O, KH*KW]
  Strides4 gs, ss, ds;
  int64_t C, O, mult;
  int64_t total;  // dgrad: dx elements / VEC; wgrad: N*OH*OW pixels (the reduction length)
  int64_t chunk;  // wgrad: pixels per split
  int H, W, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw;
  int ct;                 // wgrad: channels per block (a power of two <= 32); 256 / ct pixel lanes each
  bool channels_fastest;  // dgrad: thread index order c fastest (channels_last dx) or iw fastest
  bool w_vec;             // dgrad, VEC > 1: the weight's channel axis is contiguous and aligned too
};

// 16 bytes (VEC values of T) with one st.global.v4: for this kernel NVVM splits the equivalent
// store_vec into 2- and 4-byte stores (seen in its PTX), so the store is written out.
template <typename T, int VEC>
__device__ __forceinline__ void store_pack16(T* p, const float (&v)[VEC]) {
  static_assert(sizeof(T) * VEC == 16, "one 16-byte pack");
  Pack<T, VEC> pk;
#pragma unroll
  for (int k = 0; k < VEC; ++k) pk.v[k] = from_float<T>(v[k]);
  uint32_t w[4];
  __builtin_memcpy(w, &pk, 16);
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3])
               : "memory");
}

// dgrad: one thread per dx element (VEC == 1, any layout, any mult) or per 16-byte group of VEC
// consecutive channels (VEC > 1: channels_last g and dx, mult == 1; one LDG.128 of g per tap).
template <typename T, int VEC>
__global__ void __launch_bounds__(256) conv2d_depthwise_dgrad_kernel(DwBwdParams p) {
  const T* g = static_cast<const T*>(p.g);
  const T* w = static_cast<const T*>(p.src);
  T* dx = static_cast<T*>(p.dst);
  const int64_t groups = p.C / VEC;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < p.total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, cv, t;
    int ih, iw;
    if (p.channels_fastest) {
      cv = e % groups; t = e / groups; iw = static_cast<int>(t % p.W); t /= p.W; ih = static_cast<int>(t % p.H);
      n = t / p.H;
    } else {
      iw = static_cast<int>(e % p.W); t = e / p.W; ih = static_cast<int>(t % p.H); t /= p.H; cv = t % groups;
      n = t / groups;
    }
    const int64_t c = cv * VEC;
    const T* gn = g + n * p.gs.n + c * p.mult * p.gs.c;
    const T* wc = w + c * p.mult * p.ss.n;
    float acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = 0.0f;
    // th = ih + ph - i*dh falls as i grows: once negative, no later row lands on an output.
    for (int i = 0; i < p.KH; ++i) {
      const int th = ih + p.ph - i * p.dh;
      if (th < 0) break;
      if (th % p.sh != 0) continue;
      const int oh = th / p.sh;
      if (oh >= p.OH) continue;
      for (int j = 0; j < p.KW; ++j) {
        const int tw = iw + p.pw - j * p.dw;
        if (tw < 0) break;
        if (tw % p.sw != 0) continue;
        const int ow = tw / p.sw;
        if (ow >= p.OW) continue;
        const T* gp = gn + oh * p.gs.h + ow * p.gs.w;
        const T* wp = wc + i * p.ss.h + j * p.ss.w;
        if constexpr (VEC == 1) {
          for (int64_t m = 0; m < p.mult; ++m)
            acc[0] = fmaf(to_float(gp[m * p.gs.c]), to_float(wp[m * p.ss.n]), acc[0]);
        } else {
          float gv[VEC], wv[VEC];
          load_vec<T, VEC>(gp, gv);
          if (p.w_vec) {
            load_vec<T, VEC>(wp, wv);
          } else {
#pragma unroll
            for (int k = 0; k < VEC; ++k) wv[k] = to_float(wp[k * p.ss.n]);
          }
#pragma unroll
          for (int k = 0; k < VEC; ++k) acc[k] = fmaf(gv[k], wv[k], acc[k]);
        }
      }
    }
    T* d = dx + n * p.ds.n + c * p.ds.c + ih * p.ds.h + iw * p.ds.w;
    if constexpr (VEC == 1) *d = from_float<T>(acc[0]);
    else store_pack16<T, VEC>(d, acc);
  }
}

// wgrad: block (channel tile of ct, tap) x split. Thread (cl, r) = (threadIdx % ct, threadIdx / ct)
// walks pixels begin + r, + lanes, ... of its split for channel o and the block's tap; the lanes are
// then added by a fixed-order tree in shared memory and the block writes scratch[split, o, tap]
// (every cell written, 0 for an empty range). ct = 32 for channels_last g (a warp reads 32
// consecutive channels of one pixel), 1 otherwise (a block walks 256 consecutive pixels of one
// channel). The taps of one channel tile are adjacent in blockIdx.x, so they run together and
// re-read the same g / x lines from L2 instead of DRAM.
template <typename T>
__global__ void __launch_bounds__(256) conv2d_depthwise_wgrad_kernel(DwBwdParams p) {
  __shared__ float red[256];
  const T* g = static_cast<const T*>(p.g);
  const T* x = static_cast<const T*>(p.src);
  const int taps = p.KH * p.KW;
  const int tap = static_cast<int>(blockIdx.x % taps);
  const int64_t o = static_cast<int64_t>(blockIdx.x / taps) * p.ct + threadIdx.x % p.ct;
  const int r = threadIdx.x / p.ct, lanes = blockDim.x / p.ct;
  const int i = tap / p.KW, j = tap % p.KW;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * p.chunk;
  const int64_t end = min(p.total, begin + p.chunk);
  float acc = 0.0f;
  if (o < p.O && begin + r < end) {
    const T* go = g + o * p.gs.c;
    const T* xc = x + (o / p.mult) * p.ss.c;
    // Mixed-radix (n, oh, ow) of the first pixel and of the step, so the loop adds with carries
    // instead of dividing 64-bit integers per pixel (dow < OW and doh < OH: one carry each at most).
    int64_t m = begin + r;
    int ow = static_cast<int>(m % p.OW), oh = static_cast<int>((m / p.OW) % p.OH);
    int64_t n = m / (static_cast<int64_t>(p.OW) * p.OH);
    const int dow = lanes % p.OW, doh = (lanes / p.OW) % p.OH;
    const int64_t dn = lanes / (static_cast<int64_t>(p.OW) * p.OH);
    for (; m < end; m += lanes) {
      const int ih = oh * p.sh - p.ph + i * p.dh;
      const int iw = ow * p.sw - p.pw + j * p.dw;
      if (ih >= 0 && ih < p.H && iw >= 0 && iw < p.W)
        acc = fmaf(to_float(go[n * p.gs.n + oh * p.gs.h + ow * p.gs.w]),
                   to_float(xc[n * p.ss.n + ih * p.ss.h + iw * p.ss.w]), acc);
      ow += dow;
      oh += doh;
      n += dn;
      if (ow >= p.OW) { ow -= p.OW; ++oh; }
      if (oh >= p.OH) { oh -= p.OH; ++n; }
    }
  }
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int half = lanes >> 1; half > 0; half >>= 1) {  // lanes is a power of two
    if (r < half) red[threadIdx.x] += red[threadIdx.x + half * p.ct];
    __syncthreads();
  }
  if (r == 0 && o < p.O)
    static_cast<float*>(p.dst)[(static_cast<int64_t>(blockIdx.y) * p.O + o) * taps + tap] = red[threadIdx.x];
}

// ---------------------------------------------------------------------------------------------
// Reductions (deterministic: fixed order, no atomics)
// ---------------------------------------------------------------------------------------------
// dw[o, c, i, j] = sum_s scratch[s, o, (i*KW + j)*Cg + c]
template <typename T>
__global__ void conv2d_wgrad_reduce_kernel(const float* __restrict__ scratch, T* __restrict__ dw, int64_t O,
                                           int64_t Cg, int KH, int KW, int64_t splits) {
  const int64_t taps = static_cast<int64_t>(KH) * KW, per_o = Cg * taps, total = O * per_o;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = e / per_o, rem = e % per_o, c = rem / taps, tap = rem % taps;
    const int64_t src = o * per_o + tap * Cg + c;
    float v = 0.0f;
    for (int64_t s = 0; s < splits; ++s) v += scratch[s * total + src];
    dw[e] = from_float<T>(v);
  }
}

// Pass 1: block (channel tile of 32, row split) -> grad_pre and a partial per-channel sum.
template <typename T>
__global__ void __launch_bounds__(256) conv2d_bias_act_bwd_kernel(const T* __restrict__ grad, Strides4 gs,
                                                                  const T* __restrict__ out, Strides4 os, T* grad_pre,
                                                                  float* __restrict__ partial, int64_t N, int64_t O,
                                                                  int64_t P, int64_t rows_per_split, int act) {
  __shared__ float red[8][32];
  const int cl = threadIdx.x & 31, r = threadIdx.x >> 5;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * 32 + cl;
  const int64_t s = blockIdx.y;
  const int64_t row_begin = s * rows_per_split;
  const int64_t row_end = min(N * P, row_begin + rows_per_split);
  float sum = 0.0f;
  if (o < O) {
    for (int64_t m = row_begin + r; m < row_end; m += 8) {
      const int64_t n = m / P, px = m % P;
      const int64_t gi = n * gs.n + o * gs.c + px * gs.w;
      float v = to_float(grad[gi]);
      if (act != 0) {
        const float y = to_float(out[n * os.n + o * os.c + px * os.w]);
        // act_drops (common.cuh) written out for act != 0, as in gemm.cu's bias_act_bwd_kernel:
        // calling it changes how the compiler unswitches and unrolls this loop.
        const bool keep = act == 1 ? !(y <= 0.0f) : !(y <= 0.0f || y >= 6.0f);
        v = keep ? v : 0.0f;
        grad_pre[gi] = from_float<T>(v);
      }
      sum += v;
    }
  }
  red[r][cl] = sum;
  __syncthreads();
  if (r == 0 && o < O && partial != nullptr) {
    float t = 0.0f;
    for (int q = 0; q < 8; ++q) t += red[q][cl];
    partial[s * O + o] = t;
  }
}

template <typename T>
__global__ void conv2d_bias_reduce_kernel(const float* __restrict__ partial, T* __restrict__ grad_bias, int64_t O,
                                          int64_t splits) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= O) return;
  float v = 0.0f;
  for (int64_t s = 0; s < splits; ++s) v += partial[s * O + o];
  grad_bias[o] = from_float<T>(v);
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------
inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_grid(int64_t x, int64_t y, int64_t z, const char* what) {
  if (x > 2147483647LL || y > 65535 || z > 65535)
    throw std::invalid_argument(std::string(what) + ": problem too large for one launch (grid " + std::to_string(x) +
                                " x " + std::to_string(y) + " x " + std::to_string(z) + ")");
}

// The 16-byte cp.async path: every chunk of 8 consecutive k must be 8 contiguous, aligned elements
// in both operands.
bool vec_ok(int mode, const IgemmParams& p) {
  const int64_t kc = mode == kFwd ? p.Cg : p.Og;
  if (kc % 8 != 0 || !aligned_to(p.a.p, 16) || !aligned_to(p.b.p, 16)) return false;
  if (p.a.sc != 1 || p.a.sn % 8 || p.a.sh % 8 || p.a.sw % 8 || (mode == kFwd ? p.Cg : p.Og) % 8) return false;
  if (p.b.sc != 1 || p.b.sn % 8 || p.b.sh % 8 || p.b.sw % 8 || p.b_group % 8) return false;
  return true;
}

template <int MODE, typename T, bool VEC>
void launch_tc(const IgemmParams& p, int groups, cudaStream_t st) {
  const int64_t gx = cdiv(p.M, TC_BM), gy = cdiv(p.N, TC_BN), gz = static_cast<int64_t>(groups) * p.splits;
  check_grid(gx, gy, gz, "conv2d (cuda, tensor cores)");
  auto kernel = conv2d_igemm_kernel<MODE, T, VEC>;
  // 60 KiB of pipeline stages: above the 48 KiB default, so opt in (cheap, idempotent).
  PYIMGCLS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, TC_SMEM_BYTES));
  kernel<<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(gz)), TC_THREADS,
           TC_SMEM_BYTES, st>>>(p);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

template <int MODE>
void launch_simt(const IgemmParams& p, int groups, cudaStream_t st) {
  const int64_t gx = cdiv(p.M, SM_BM), gy = cdiv(p.N, SM_BN), gz = static_cast<int64_t>(groups) * p.splits;
  check_grid(gx, gy, gz, "conv2d (cuda, fp32)");
  conv2d_simt_kernel<MODE><<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(gz)),
                             SM_THREADS, 0, st>>>(p);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

template <int MODE>
void launch_igemm(DType dt, const IgemmParams& p, int groups, cudaStream_t st) {
  const bool vec = MODE != kWgrad && vec_ok(MODE, p);
  dispatch_dtype(dt, "conv2d", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same<T, float>::value) launch_simt<MODE>(p, groups, st);
    else if (vec) launch_tc<MODE, T, MODE != kWgrad>(p, groups, st);
    else launch_tc<MODE, T, false>(p, groups, st);
  });
}

IgemmParams base_params(const ConvGeometry& s) {
  IgemmParams p{};
  p.H = s.H; p.W = s.W; p.OH = s.OH; p.OW = s.OW;
  p.Cg = s.C / s.groups; p.Og = s.O / s.groups;
  p.KH = static_cast<int>(s.KH); p.KW = static_cast<int>(s.KW);
  p.sh = static_cast<int>(s.stride_h); p.sw = static_cast<int>(s.stride_w);
  p.ph = static_cast<int>(s.pad_h); p.pw = static_cast<int>(s.pad_w);
  p.dh = static_cast<int>(s.dil_h); p.dw = static_cast<int>(s.dil_w);
  p.splits = 1;
  return p;
}

void check_geom(const ConvGeometry& s) {
  if (s.groups < 1 || s.C % s.groups || s.O % s.groups)
    throw std::invalid_argument("conv2d (cuda): groups must divide in and out channels");
  const int64_t lim = 1 << 30;  // tap geometry travels as int
  if (s.KH > lim || s.KW > lim || s.stride_h > lim || s.stride_w > lim || s.pad_h > lim || s.pad_w > lim ||
      s.dil_h > lim || s.dil_w > lim)
    throw std::invalid_argument("conv2d (cuda): kernel / stride / padding / dilation too large");
}

template <typename T>
void launch_dw(const DwParams& p, cudaStream_t st) {
  const int64_t blocks = std::min<int64_t>(cdiv(p.total, 256), int64_t(1) << 20);
  conv2d_dw_fwd_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, st>>>(p);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

// groups == C with one input channel per group (O = C * mult): the direct depthwise kernels.
bool is_depthwise(const ConvGeometry& s) { return s.groups == s.C && s.C > 0; }

// Both depthwise backward kernels keep spatial coordinates in int: |ih|, |th| stay below 2^31 when
// every term below is under 2^30.
DwBwdParams depthwise_bwd_params(const ConvGeometry& s) {
  const int64_t lim = int64_t(1) << 30;
  for (int64_t v : {s.H, s.W, s.OH, s.OW, s.OH * s.stride_h, s.OW * s.stride_w, (s.KH - 1) * s.dil_h,
                    (s.KW - 1) * s.dil_w, s.KH * s.KW})
    if (v >= lim) throw std::invalid_argument("conv2d (cuda, depthwise backward): spatial sizes too large");
  DwBwdParams p{};
  p.C = s.C; p.O = s.O; p.mult = s.O / s.C;
  p.H = static_cast<int>(s.H); p.W = static_cast<int>(s.W);
  p.OH = static_cast<int>(s.OH); p.OW = static_cast<int>(s.OW);
  p.KH = static_cast<int>(s.KH); p.KW = static_cast<int>(s.KW);
  p.sh = static_cast<int>(s.stride_h); p.sw = static_cast<int>(s.stride_w);
  p.ph = static_cast<int>(s.pad_h); p.pw = static_cast<int>(s.pad_w);
  p.dh = static_cast<int>(s.dil_h); p.dw = static_cast<int>(s.dil_w);
  return p;
}

template <typename T>
void launch_depthwise_dgrad(DwBwdParams p, int64_t N, cudaStream_t st) {
  constexpr int VEC = 16 / sizeof(T);
  auto mult_of = [](int64_t v) { return v % VEC == 0; };
  // 16-byte path: VEC consecutive channels of g, dx (and, when w_vec, w) are one aligned pack.
  const bool vec = p.mult == 1 && p.gs.c == 1 && p.ds.c == 1 && mult_of(p.C) && mult_of(p.gs.n) &&
                   mult_of(p.gs.h) && mult_of(p.gs.w) && mult_of(p.ds.n) && mult_of(p.ds.h) && mult_of(p.ds.w) &&
                   aligned_to(p.g, 16) && aligned_to(p.dst, 16);
  p.w_vec = vec && p.ss.n == 1 && mult_of(p.ss.h) && mult_of(p.ss.w) && aligned_to(p.src, 16);
  p.channels_fastest = vec || p.ds.c == 1;
  p.total = N * p.H * p.W * (vec ? p.C / VEC : p.C);
  const int64_t blocks = std::min<int64_t>(cdiv(p.total, 256), int64_t(1) << 20);
  if (vec) conv2d_depthwise_dgrad_kernel<T, VEC><<<static_cast<unsigned>(blocks), 256, 0, st>>>(p);
  else conv2d_depthwise_dgrad_kernel<T, 1><<<static_cast<unsigned>(blocks), 256, 0, st>>>(p);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

// Pixel splits of the depthwise wgrad: ~2 waves of 8 resident 256-thread blocks per SM, counting
// channel tiles of 32; each split keeps >= 1024 pixels (so the fixed per-block reduction stays small
// against the loop) and the grid's y extent <= 65535.
int64_t depthwise_wgrad_splits(const ConvGeometry& s, int sm_count) {
  const int64_t blocks = cdiv(s.O, 32) * s.KH * s.KW;
  const int64_t P = s.N * s.OH * s.OW;
  int64_t splits = cdiv(16 * int64_t(std::max(sm_count, 1)), std::max<int64_t>(blocks, 1));
  splits = std::min(splits, std::max<int64_t>(1, P / 1024));
  return std::max<int64_t>(1, std::min<int64_t>(splits, 256));
}

// Per-split partials into scratch [splits, O, KH*KW], then conv2d_wgrad_reduce_kernel (Cg = 1: the
// same layout) adds them in split order into dw.
template <typename T>
void launch_depthwise_wgrad(DwBwdParams p, void* dw, int64_t splits, cudaStream_t st) {
  // 32 consecutive channels per warp when g is channels_last (fewer for fewer channels); else one
  // channel per block and 256 consecutive pixels.
  int ct = 1;
  if (p.gs.c == 1)
    while (ct < 32 && ct < p.O) ct *= 2;
  p.ct = ct;
  const int64_t gx = cdiv(p.O, ct) * p.KH * p.KW;
  check_grid(gx, splits, 1, "conv2d (cuda, depthwise wgrad)");
  conv2d_depthwise_wgrad_kernel<T><<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(splits)), 256, 0, st>>>(p);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
  const int64_t total = p.O * p.KH * p.KW;
  conv2d_wgrad_reduce_kernel<T><<<static_cast<unsigned>(std::min<int64_t>(cdiv(total, 256), int64_t(1) << 20)), 256,
                                  0, st>>>(static_cast<const float*>(p.dst), static_cast<T*>(dw), p.O, 1, p.KH, p.KW,
                                           splits);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace

void conv2d_fwd(DType dt, const ConvGeometry& s, const void* x, Strides4 xs, const void* w, Strides4 ws,
                const void* bias, const void* residual, Strides4 rs, void* out, Strides4 os, Act act, int device,
                uintptr_t stream) {
  check_geom(s);
  set_device(device);
  cudaStream_t st = as_stream(stream);
  if (s.N == 0 || s.O == 0 || s.OH * s.OW == 0) return;
  if (s.groups == s.C && s.C > 0) {
    DwParams d{x, w, bias, residual, out, xs, ws, rs, os, s.N, s.C, s.H, s.W, s.O, s.OH, s.OW,
               s.N * s.O * s.OH * s.OW, static_cast<int>(s.KH), static_cast<int>(s.KW),
               static_cast<int>(s.stride_h), static_cast<int>(s.stride_w), static_cast<int>(s.pad_h),
               static_cast<int>(s.pad_w), static_cast<int>(s.dil_h), static_cast<int>(s.dil_w),
               static_cast<int>(act), os.c == 1};
    dispatch_dtype(dt, "conv2d", [&](auto tag) { launch_dw<decltype(tag)>(d, st); });
    return;
  }
  IgemmParams p = base_params(s);
  p.a = Tensor4{x, xs.n, xs.c, xs.h, xs.w};
  p.b = Tensor4{w, ws.n, ws.c, ws.h, ws.w};
  p.c = Tensor4{out, os.n, os.c, os.h, os.w};
  p.r = Tensor4{residual, rs.n, rs.c, rs.h, rs.w};
  p.bias = bias;
  p.M = s.N * s.OH * s.OW;
  p.N = p.Og;
  p.K = s.KH * s.KW * p.Cg;
  p.k_chunk = std::max<int64_t>(p.K, 1);
  p.b_group = p.Og * ws.n;
  p.act = static_cast<int>(act);
  launch_igemm<kFwd>(dt, p, static_cast<int>(s.groups), st);
}

void conv2d_bwd_data(DType dt, const ConvGeometry& s, const void* g, Strides4 gs, const void* w, Strides4 ws, void* dx,
                     Strides4 xs, int device, uintptr_t stream) {
  check_geom(s);
  set_device(device);
  if (s.N == 0 || s.C == 0 || s.H * s.W == 0) return;
  if (is_depthwise(s)) {
    DwBwdParams d = depthwise_bwd_params(s);
    d.g = g; d.src = w; d.dst = dx; d.gs = gs; d.ss = ws; d.ds = xs;
    dispatch_dtype(dt, "conv2d", [&](auto tag) { launch_depthwise_dgrad<decltype(tag)>(d, s.N, as_stream(stream)); });
    return;
  }
  IgemmParams p = base_params(s);
  p.a = Tensor4{g, gs.n, gs.c, gs.h, gs.w};
  // B rows are input channels, the k-channel axis is the out channel: swap the weight's strides.
  p.b = Tensor4{w, ws.c, ws.n, ws.h, ws.w};
  p.c = Tensor4{dx, xs.n, xs.c, xs.h, xs.w};
  p.M = s.N * s.H * s.W;
  p.N = p.Cg;
  p.K = s.KH * s.KW * p.Og;
  p.k_chunk = std::max<int64_t>(p.K, 1);
  p.b_group = p.Og * ws.n;
  launch_igemm<kDgrad>(dt, p, static_cast<int>(s.groups), as_stream(stream));
}

int64_t conv2d_wgrad_splits(DType dt, const ConvGeometry& s, int sm_count) {
  if (is_depthwise(s)) return depthwise_wgrad_splits(s, sm_count);
  const int64_t bm = dt == DType::Float32 ? SM_BM : TC_BM, bn = dt == DType::Float32 ? SM_BN : TC_BN;
  const int64_t Og = s.O / std::max<int64_t>(s.groups, 1), Cg = s.C / std::max<int64_t>(s.groups, 1);
  const int64_t tiles = cdiv(Og, bm) * cdiv(s.KH * s.KW * Cg, bn) * s.groups;
  const int64_t K = s.N * s.OH * s.OW;
  // Enough blocks for ~2 waves, but each split keeps >= 8 k-tiles of work, and gridDim.z <= 65535.
  int64_t splits = cdiv(2 * std::max(sm_count, 1), std::max<int64_t>(tiles, 1));
  splits = std::min(splits, std::max<int64_t>(1, K / (8 * TC_BK)));
  splits = std::min(splits, std::max<int64_t>(1, 65535 / std::max<int64_t>(s.groups, 1)));
  return std::max<int64_t>(1, std::min<int64_t>(splits, 64));
}

void conv2d_bwd_weight(DType dt, const ConvGeometry& s, const void* g, Strides4 gs, const void* x, Strides4 xs,
                       void* dw, void* scratch, int64_t splits, int device, uintptr_t stream) {
  check_geom(s);
  set_device(device);
  cudaStream_t st = as_stream(stream);
  const int64_t Cg = s.C / s.groups, total = s.O * Cg * s.KH * s.KW;
  if (total == 0) return;
  if (splits < 1) throw std::invalid_argument("conv2d_bwd_weight (cuda): splits must be >= 1");
  if (is_depthwise(s)) {
    // scratch [splits, O, KH*KW] is the layout conv2d_wgrad_reduce_kernel reads with Cg = 1.
    DwBwdParams d = depthwise_bwd_params(s);
    d.g = g; d.src = x; d.dst = scratch; d.gs = gs; d.ss = xs;
    d.total = s.N * s.OH * s.OW;
    d.chunk = std::max<int64_t>(1, cdiv(d.total, splits));
    dispatch_dtype(dt, "conv2d", [&](auto tag) { launch_depthwise_wgrad<decltype(tag)>(d, dw, splits, st); });
    return;
  }
  IgemmParams p = base_params(s);
  p.a = Tensor4{g, gs.n, gs.c, gs.h, gs.w};
  p.b = Tensor4{x, xs.n, xs.c, xs.h, xs.w};
  p.c = Tensor4{scratch, total, s.KH * s.KW * Cg, 0, 1};
  p.M = p.Og;
  p.N = s.KH * s.KW * Cg;
  p.K = s.N * s.OH * s.OW;
  p.splits = static_cast<int>(splits);
  p.k_chunk = std::max<int64_t>(1, cdiv(std::max<int64_t>(p.K, 1), splits));
  // Every (split, o, column) cell of the scratch is written by exactly one thread (zeros for an
  // empty K range), so the reduction never reads uninitialised memory.
  launch_igemm<kWgrad>(dt, p, static_cast<int>(s.groups), st);
  const int64_t blocks = std::min<int64_t>(cdiv(total, 256), int64_t(1) << 20);
  const float* sc = static_cast<const float*>(scratch);
  dispatch_dtype(dt, "conv2d", [&](auto tag) {
    using T = decltype(tag);
    conv2d_wgrad_reduce_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, st>>>(sc, static_cast<T*>(dw), s.O, Cg,
                                                                                 p.KH, p.KW, splits);
  });
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

void conv2d_bias_act_bwd(DType dt, int64_t N, int64_t O, int64_t P, const void* grad, Strides4 gs, const void* out,
                         Strides4 os, void* grad_pre, void* grad_bias, void* scratch, int64_t splits, Act act,
                         int device, uintptr_t stream) {
  set_device(device);
  cudaStream_t st = as_stream(stream);
  if (O == 0) return;
  if (splits < 1 || splits > 65535) throw std::invalid_argument("conv2d_bias_act_bwd (cuda): splits out of range");
  if (act != Act::None && out == nullptr)
    throw std::invalid_argument("conv2d_bias_act_bwd (cuda): out is required when the activation is relu or relu6");
  if (grad_bias != nullptr && scratch == nullptr)
    throw std::invalid_argument("conv2d_bias_act_bwd (cuda): scratch is required for the bias gradient");
  const int64_t rows = N * P;
  const int64_t per_split = std::max<int64_t>(1, cdiv(rows, splits));
  const dim3 grid(static_cast<unsigned>(cdiv(O, 32)), static_cast<unsigned>(splits));
  float* partial = grad_bias != nullptr ? static_cast<float*>(scratch) : nullptr;
  const int a = static_cast<int>(act);
  dispatch_dtype(dt, "conv2d", [&](auto tag) {
    using T = decltype(tag);
    conv2d_bias_act_bwd_kernel<T><<<grid, 256, 0, st>>>(static_cast<const T*>(grad), gs, static_cast<const T*>(out),
                                                        os, static_cast<T*>(grad_pre), partial, N, O, P, per_split,
                                                        a);
  });
  PYIMGCLS_CUDA_CHECK_LAUNCH();
  if (grad_bias == nullptr) return;
  const unsigned blocks = static_cast<unsigned>(cdiv(O, 256));
  dispatch_dtype(dt, "conv2d", [&](auto tag) {
    using T = decltype(tag);
    conv2d_bias_reduce_kernel<T><<<blocks, 256, 0, st>>>(partial, static_cast<T*>(grad_bias), O, splits);
  });
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace pyimgcls::cuda
