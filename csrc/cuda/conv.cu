// CUDA convolution family: fused conv2d forward (bias + residual + activation), dgrad, wgrad and the
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
//     count per group that is a multiple of 8 (wgrad: 8 out channels of g / 8 input channels of x at
//     one pixel, stored k-major and read with ldmatrix.trans). !VEC: the same pipeline fed by
//     predicated element gathers (any layout, any channel count). The decision: conv2d_plan (conv.h).
//     Index arithmetic in 32 bits (conv.h: per-CTA pixel-row table, incremental (tap, channel) walk
//     of GEMM-K, fast division), so no 64-bit division routine is called; the epilogue stages each
//     half tile in fp32 through shared memory and writes 8 channels per thread (16-byte stores for
//     channels_last outputs).
//   conv2d_simt_kernel<MODE> (fp32): 64x64x16 tile, 4x4 outputs per thread, IEEE fp32 FMA (no TF32),
//     the same index helpers.
//   conv2d_dw_fwd_kernel<T> (groups == C): direct stencil, one output per thread, fused epilogue.
//   conv2d_depthwise_dgrad_kernel<T, VEC> / conv2d_depthwise_wgrad_kernel<T> (groups == C): direct
//     backward stencils (dgrad: one dx element or 16-byte channel pack per thread; wgrad: per (channel, tap)
//     reductions over pixel splits into the wgrad scratch, reduced in split order).
//   Fused epilogue on the fp32 accumulator: + bias + residual, then the activation (common.cuh
//   apply_act; relu as v < 0 ? 0 : v: NaN compares false and propagates, unlike fmaxf), cast, store
//   through strides.
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
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "conv.h"
#include "tc_maps.h"
#include "runtime.h"

namespace pyimgcls::cuda {
namespace {

// Operand pointers with the strides as the GEMM gathers them; index geometry in 32 bits (ConvIndex,
// conv.h): every pixel count and GEMM-K extent is below 2^31 (check_geom), offsets are 64-bit.
struct IgemmParams {
  const void *a, *b, *r, *bias;
  void* c;
  Strides4 as;  // fwd: x; dgrad / wgrad: grad at the conv output
  Strides4 bs;  // fwd / dgrad: weight with strides (row, k-channel, kh, kw); wgrad: x
  Strides4 cs;  // fwd: out; dgrad: dx; wgrad: fp32 scratch (n = per split, c = per out channel)
  Strides4 rs;  // fwd: residual (r may be null)
  ConvIndex ix;
  int M, N, K;       // per-group GEMM sizes (see the header)
  int k_chunk;       // GEMM-K handled by one split (wgrad); K otherwise
  int splits;
  int act;
  int64_t b_group;   // fwd / dgrad: element offset of group g+1's weight rows from group g's
  bool c_vec;        // C rows take 16-byte stores: unit channel stride, 8-aligned rows, N % 8 == 0
  bool r_vec;        // the residual likewise takes 16-byte loads
  bool c_chunks;     // fwd / dgrad: C's channel axis is its contiguous one (epilogue thread mapping)
};

template <typename T> __device__ __forceinline__ T zero_of() { return from_float<T>(0.0f); }

// ---------------------------------------------------------------------------------------------
// Index plan of every implicit-GEMM kernel (helpers in conv.h, tested on the CPU):
//   * fwd / dgrad: rows of A and C are pixels. Each CTA splits its BM rows into (n, y, x) once
//     (split_pixel, two fast divisions per row) into a shared table that the gathers and the
//     epilogue read; rows past M are marked n = -1.
//   * fwd / dgrad GEMM-K = (tap, channel): each thread gathers at a fixed offset inside the k-tile,
//     so it keeps one KPos (c, j, i) and advances it by BK per tile (k_advance: compare, and a fast
//     division only when the channel count wraps a tap).
//   * wgrad: rows are out channels, columns (tap, in channel) — a thread's column is fixed, split
//     once; GEMM-K = pixels, split per gathered pixel by two fast divisions.
// No 64-bit division remains in the tensor-core kernels; the dgrad stride test is a fast division.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ void fill_row_table(PixelRC* rows, int rows_n, int bm, int M, int h, int w,
                                               const FastDiv& fh, const FastDiv& fw) {
  for (int r = threadIdx.x; r < rows_n; r += blockDim.x) {
    const int m = bm + r;
    rows[r] = m < M ? split_pixel(m, h, w, fh, fw) : PixelRC{-1, 0, 0, 0};
  }
}

template <int MODE>
__device__ __forceinline__ void fill_rows(const IgemmParams& p, PixelRC* rows, int rows_n, int bm) {
  if (MODE == kFwd) fill_row_table(rows, rows_n, bm, p.M, p.ix.OH, p.ix.OW, p.ix.f_OH, p.ix.f_OW);
  else fill_row_table(rows, rows_n, bm, p.M, p.ix.H, p.ix.W, p.ix.f_H, p.ix.f_W);
}

// A[row, k] of fwd / dgrad for the pixel row `px` at k position kp; -1 for a zero.
template <int MODE>
__device__ __forceinline__ int64_t a_pixel_offset(const IgemmParams& p, const PixelRC& px, const KPos& kp, int g) {
  return MODE == kFwd ? x_tap_offset(p.ix, p.as, px, kp, g) : dgrad_tap_offset(p.ix, p.as, px, kp, g);
}

// GEMM-K index k (< k_end) of wgrad -> output pixel, n = -1 past the split's range.
__device__ __forceinline__ PixelRC wgrad_pixel(const IgemmParams& p, int k, int k_end) {
  return k < k_end ? split_pixel(k, p.ix.OH, p.ix.OW, p.ix.f_OH, p.ix.f_OW) : PixelRC{-1, 0, 0, 0};
}

// One accumulator value C[m, n] (m < M, n < N) with the pass's epilogue: the SIMT kernel's store.
template <int MODE, typename T>
__device__ __forceinline__ void store_one(const IgemmParams& p, const PixelRC& px, int g, int s, int m, int n,
                                          float v) {
  if (MODE == kWgrad) {
    static_cast<float*>(p.c)[s * p.cs.n + (static_cast<int64_t>(g) * p.ix.Og + m) * p.cs.c + n] = v;
    return;
  }
  const int64_t ch = static_cast<int64_t>(g) * p.N + n;
  if (MODE == kFwd) {
    if (p.bias) v += to_float(static_cast<const T*>(p.bias)[ch]);
    if (p.r) v += to_float(static_cast<const T*>(p.r)[px.n * p.rs.n + ch * p.rs.c + px.y * p.rs.h + px.x * p.rs.w]);
    v = apply_act<sizeof(T) == 2>(v, p.act);
  }
  static_cast<T*>(p.c)[px.n * p.cs.n + ch * p.cs.c + px.y * p.cs.h + px.x * p.cs.w] = from_float<T>(v);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core implicit GEMM (fp16 / bf16)
// ---------------------------------------------------------------------------------------------
// TC_LD, TC_LDT, TC_PIPE_BYTES, TC_EPI_LD: conv.h (shared with tests/emu/conv_tc_emu.cpp).
constexpr int TC_ROWS_BYTES = TC_BM * static_cast<int>(sizeof(PixelRC));
constexpr int TC_SMEM_BYTES = TC_PIPE_BYTES + TC_ROWS_BYTES;

// Fill one pipeline stage with A[bm:bm+BM, k0:k0+BK] and B[bn:bn+BN, k0:k0+BK].
//   fwd / dgrad: sA [BM][LD], sB [BN][LD] (k contiguous); kp = this thread's k position.
//   wgrad VEC:   sA [BK][LDT], sB [BK][LDT] (rows contiguous); bcol = this thread's B column.
//   wgrad !VEC:  as fwd, element gathers; bcol = this thread's B column.
template <int MODE, typename T, bool VEC>
__device__ __forceinline__ void load_stage(const IgemmParams& p, const PixelRC* rows, int g, int bm, int bn, int k0,
                                           int k_end, const KPos& kp, const KPos& bcol, T* sA, T* sB) {
  const int tid = threadIdx.x;
  const T* A = static_cast<const T*>(p.a);
  const T* B = static_cast<const T*>(p.b);
  if (MODE != kWgrad && VEC) {
    // 512 16-byte chunks per operand: chunk q -> row q / 4, k offset (q % 4) * 8. A chunk never
    // straddles a tap because the per-tap channel count is a multiple of 8 (conv2d_vec_ok).
    const int kq = (tid & 3) * 8;
    const bool kin = k0 + kq < k_end;
#pragma unroll
    for (int it = 0; it < 2; ++it) {
      const int row = (tid >> 2) + it * (TC_THREADS / 4);
      const int64_t off = kin ? a_pixel_offset<MODE>(p, rows[row], kp, g) : -1;
      ptx::cp_async_16(ptx::smem_addr(sA + row * TC_LD + kq), off >= 0 ? A + off : A, off >= 0 ? 16 : 0);
      const int n = bn + row;
      const int64_t boff = kin && n < p.N ? weight_offset(p.ix, p.bs, p.b_group, n, kp, g) : -1;
      ptx::cp_async_16(ptx::smem_addr(sB + row * TC_LD + kq), boff >= 0 ? B + boff : B, boff >= 0 ? 16 : 0);
    }
  } else if (MODE != kWgrad) {
    // Element gathers, 16 per thread per operand; 32 consecutive threads cover one row's BK k values.
    const int kk = tid & 31;
    const bool kin = k0 + kk < k_end;
#pragma unroll 4
    for (int it = 0; it < 16; ++it) {
      const int row = (tid >> 5) + it * 8;
      const int n = bn + row;
      const int64_t off = kin ? a_pixel_offset<MODE>(p, rows[row], kp, g) : -1;
      const int64_t boff = kin && n < p.N ? weight_offset(p.ix, p.bs, p.b_group, n, kp, g) : -1;
      sA[row * TC_LD + kk] = off >= 0 ? A[off] : zero_of<T>();
      sB[row * TC_LD + kk] = boff >= 0 ? B[boff] : zero_of<T>();
    }
  } else if (VEC) {
    // wgrad, 16-byte chunks of 8 out channels (A) / 8 input channels of one tap (B) at one pixel,
    // stored k-major: chunk q -> k row q / 16, column chunk (q % 16) * 8.
    const int mc = (tid & 15) * 8;
    const int m = bm + mc, n = bn + mc;
#pragma unroll
    for (int it = 0; it < 2; ++it) {
      const int kr = (tid >> 4) + it * (TC_THREADS / 16);
      const PixelRC px = wgrad_pixel(p, k0 + kr, k_end);
      const int64_t off = m < p.M ? wgrad_a_offset(p.ix, p.as, m, px, g) : -1;
      ptx::cp_async_16(ptx::smem_addr(sA + kr * TC_LDT + mc), off >= 0 ? A + off : A, off >= 0 ? 16 : 0);
      const int64_t boff = n < p.N ? x_tap_offset(p.ix, p.bs, px, bcol, g) : -1;
      ptx::cp_async_16(ptx::smem_addr(sB + kr * TC_LDT + mc), boff >= 0 ? B + boff : B, boff >= 0 ? 16 : 0);
    }
  } else {
    // wgrad, element gathers: both operands are contiguous along the GEMM's M / N axis (channels) for
    // channels_last, so consecutive threads take consecutive rows of the tile.
    const int row = tid & (TC_BM - 1);
    const int m = bm + row, n = bn + row;
#pragma unroll 4
    for (int it = 0; it < 16; ++it) {
      const int kk = (tid >> 7) + it * 2;
      const PixelRC px = wgrad_pixel(p, k0 + kk, k_end);
      const int64_t off = m < p.M ? wgrad_a_offset(p.ix, p.as, m, px, g) : -1;
      const int64_t boff = n < p.N ? x_tap_offset(p.ix, p.bs, px, bcol, g) : -1;
      sA[row * TC_LD + kk] = off >= 0 ? A[off] : zero_of<T>();
      sB[row * TC_LD + kk] = boff >= 0 ? B[boff] : zero_of<T>();
    }
  }
}

// Write 8 staged fp32 values C[m, n0:n0+8] (fewer at the N edge) with the pass's epilogue; 16-byte
// stores (and residual loads) where the launcher found the layout allows them.
template <int MODE, typename T>
__device__ __forceinline__ void store_chunk(const IgemmParams& p, const PixelRC& px, int g, int s, int m, int n0,
                                            const float* staged) {
  float v[8];
  *reinterpret_cast<float4*>(v) = *reinterpret_cast<const float4*>(staged);
  *reinterpret_cast<float4*>(v + 4) = *reinterpret_cast<const float4*>(staged + 4);
  const int nv = min(8, p.N - n0);
  if (MODE == kWgrad) {
    float* c = static_cast<float*>(p.c) + s * p.cs.n + (static_cast<int64_t>(g) * p.ix.Og + m) * p.cs.c + n0;
    if (p.c_vec && nv == 8) {
      reinterpret_cast<float4*>(c)[0] = *reinterpret_cast<const float4*>(v);
      reinterpret_cast<float4*>(c)[1] = *reinterpret_cast<const float4*>(v + 4);
    } else {
#pragma unroll
      for (int q = 0; q < 8; ++q)
        if (q < nv) c[q] = v[q];
    }
    return;
  }
  const int64_t ch0 = static_cast<int64_t>(g) * p.N + n0;
  if (MODE == kFwd) {
    if (p.bias) {
      const T* bias = static_cast<const T*>(p.bias) + ch0;
#pragma unroll
      for (int q = 0; q < 8; ++q)
        if (q < nv) v[q] += to_float(bias[q]);
    }
    if (p.r) {
      const T* r = static_cast<const T*>(p.r) + px.n * p.rs.n + ch0 * p.rs.c + px.y * p.rs.h + px.x * p.rs.w;
      if (p.r_vec && nv == 8) {
        float rv[8];
        load_vec<T, 8>(r, rv);
#pragma unroll
        for (int q = 0; q < 8; ++q) v[q] += rv[q];
      } else {
#pragma unroll
        for (int q = 0; q < 8; ++q)
          if (q < nv) v[q] += to_float(r[q * p.rs.c]);
      }
    }
#pragma unroll
    for (int q = 0; q < 8; ++q) v[q] = apply_act<sizeof(T) == 2>(v[q], p.act);
  }
  T* c = static_cast<T*>(p.c) + px.n * p.cs.n + ch0 * p.cs.c + px.y * p.cs.h + px.x * p.cs.w;
  if (p.c_vec && nv == 8) {
    store_vec<T, 8>(c, v);
  } else {
#pragma unroll
    for (int q = 0; q < 8; ++q)
      if (q < nv) c[q * p.cs.c] = from_float<T>(v[q]);
  }
}

template <int MODE, typename T, bool VEC>
__global__ void __launch_bounds__(TC_THREADS) conv2d_igemm_kernel(IgemmParams p) {
  constexpr bool TRANS = MODE == kWgrad && VEC;                    // k-major stages (wgrad's vector path)
  constexpr int A_STAGE = TC_BM * TC_LD, B_STAGE = TC_BN * TC_LD;  // elements per stage (k-major ones fit)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sA = reinterpret_cast<T*>(smem_raw);                          // [STAGES][BM][LD] or [STAGES][BK][LDT]
  T* sB = sA + TC_STAGES * A_STAGE;                                // [STAGES][BN][LD] or [STAGES][BK][LDT]
  PixelRC* rows = reinterpret_cast<PixelRC*>(smem_raw + TC_PIPE_BYTES);  // [BM] (fwd / dgrad)

  // 1. Block -> (M tile, N tile, group, K split); the CTA's row table; each thread's k position.
  const int bm = static_cast<int>(blockIdx.x) * TC_BM;
  const int bn = static_cast<int>(blockIdx.y) * TC_BN;
  const int g = blockIdx.z / p.splits;
  const int s = blockIdx.z % p.splits;
  const int k_begin = s * p.k_chunk;
  const int k_end = min(p.K, k_begin + p.k_chunk);
  const int KT = k_end > k_begin ? (k_end - k_begin + TC_BK - 1) / TC_BK : 0;
  const int tid = threadIdx.x;

  KPos kp{0, 0, 0}, bcol{0, 0, 0};
  if (MODE != kWgrad) {
    fill_rows<MODE>(p, rows, TC_BM, bm);
    kp = k_position(p.ix, k_begin + (VEC ? (tid & 3) * 8 : (tid & 31)));
  } else {
    bcol = k_position(p.ix, bn + (VEC ? (tid & 15) * 8 : (tid & (TC_BN - 1))));
  }
  __syncthreads();  // the row table is read by every thread's gathers

  const int lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp >> 2, warp_n = warp & 3;                 // 2 x 4 warps, each 64 x 32
  // ldmatrix.x4 row addresses of this lane (tc_maps.h, the GEMM's maps, emulated on the CPU).
  const tc::RowChunk la_kc = tc::ldsm_a_kc(lane), la_mc = tc::ldsm_a_mc(lane);
  const tc::RowChunk lb_kc = tc::ldsm_b_kc(lane), lb_nc = tc::ldsm_b_nc(lane);
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
    if (st < KT) {
      load_stage<MODE, T, VEC>(p, rows, g, bm, bn, k_begin + st * TC_BK, k_end, kp, bcol, sA + st * A_STAGE,
                               sB + st * B_STAGE);
      if (MODE != kWgrad) k_advance(p.ix, kp, TC_BK);
    }
    ptx::cp_async_commit();
  }

  // 3. Main loop: wait for tile kt, prefetch tile kt+STAGES-1 into the stage freed at kt-1, compute.
  for (int kt = 0; kt < KT; ++kt) {
    ptx::cp_async_wait<TC_STAGES - 2>();
    __syncthreads();  // tile kt visible to all; every warp finished reading the stage refilled below
    const int pre = kt + TC_STAGES - 1;
    if (pre < KT) {
      const int ps = pre % TC_STAGES;
      load_stage<MODE, T, VEC>(p, rows, g, bm, bn, k_begin + pre * TC_BK, k_end, kp, bcol, sA + ps * A_STAGE,
                               sB + ps * B_STAGE);
      if (MODE != kWgrad) k_advance(p.ix, kp, TC_BK);
    }
    ptx::cp_async_commit();

    const int cs = kt % TC_STAGES;
    const T* tA = sA + cs * A_STAGE;
    const T* tB = sB + cs * B_STAGE;
#pragma unroll
    for (int kk = 0; kk < TC_BK; kk += 16) {
      unsigned af[4][4], bf[4][2];
      // A fragments: 4 x (16 x 16). Row-major tile: lanes 0-15 address rows 0-15 at k, lanes 16-31
      // at k+8. k-major tile (transposed load): lanes address k rows (l % 8) + 8 * (l / 16) at m
      // chunk (l / 8) % 2.
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
        const int m0 = warp_m * 64 + mt * 16;
        if (TRANS)
          ptx::ldmatrix_x4_trans(af[mt], ptx::smem_addr(tA + (kk + la_mc.row) * TC_LDT + m0 + (la_mc.ch << 3)));
        else
          ptx::ldmatrix_x4(af[mt], ptx::smem_addr(tA + (m0 + la_kc.row) * TC_LD + kk + la_kc.ch * 8));
      }
      // B fragments: 2 x ldmatrix.x4, each two n8 tiles x k16. Row-major tile (rows n, k contiguous =
      // "col"): plain load. k-major tile: transposed load, lanes address k rows (l % 8) + 8 * ((l / 8)
      // % 2) at n chunk l / 16.
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        unsigned r[4];
        const int n0 = warp_n * 32 + np * 16;
        if (TRANS)
          ptx::ldmatrix_x4_trans(r, ptx::smem_addr(tB + (kk + lb_nc.row) * TC_LDT + n0 + (lb_nc.ch << 3)));
        else
          ptx::ldmatrix_x4(r, ptx::smem_addr(tB + (n0 + lb_kc.row) * TC_LD + kk + lb_kc.ch * 8));
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

  // 4. Epilogue, one half of the tile (64 rows = the warps with warp_m == h) at a time through an
  //    fp32 staging tile [64][EPI_LD] in the pipeline ring, then copied out 8 columns per thread
  //    (16-byte stores for channels_last outputs) or pixel-major for NCHW outputs. Fragment
  //    (mt, nt, e) holds C[row0 + (e >= 2) * 8, col0 + (e & 1)]. Why the barriers: the ring is still
  //    read by the last tile's ldmatrix, and the copy-out reads rows written by other warps.
  ptx::cp_async_wait<0>();
  __syncthreads();
  float* stage = reinterpret_cast<float*>(smem_raw);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (warp_m == h) {
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const tc::RowCol f_lo = tc::acc_frag(lane, 0), f_hi = tc::acc_frag(lane, 2);
          const int r = mt * 16 + f_lo.row, c = warp_n * 32 + nt * 8 + f_lo.col;
          const int r_hi = mt * 16 + f_hi.row, c_hi = warp_n * 32 + nt * 8 + f_hi.col;
          *reinterpret_cast<float2*>(stage + r * TC_EPI_LD + c) = make_float2(acc[mt][nt][0], acc[mt][nt][1]);
          *reinterpret_cast<float2*>(stage + r_hi * TC_EPI_LD + c_hi) = make_float2(acc[mt][nt][2], acc[mt][nt][3]);
        }
    }
    __syncthreads();
    if (MODE == kWgrad || p.c_chunks) {
      // Channels (columns) contiguous in C: each thread takes 8 columns of one row.
#pragma unroll
      for (int it = 0; it < (TC_BM / 2) * (TC_BN / 8) / TC_THREADS; ++it) {
        const int q = tid + it * TC_THREADS;
        const int r = q / (TC_BN / 8), cc = (q % (TC_BN / 8)) * 8;
        const int lr = h * (TC_BM / 2) + r;
        const int m = bm + lr, n0 = bn + cc;
        if (m < p.M && n0 < p.N) {
          const PixelRC px = MODE != kWgrad ? rows[lr] : PixelRC{0, 0, 0, 0};
          store_chunk<MODE, T>(p, px, g, s, m, n0, stage + r * TC_EPI_LD + cc);
        }
      }
    } else {
      // Pixels contiguous in C (NCHW outputs): consecutive threads take consecutive rows of one
      // column, so a warp writes 32 neighbouring pixels of a channel (the column read of the staging
      // tile is 8-way bank-conflicted; the global stores coalesce, which matters more).
#pragma unroll 4
      for (int it = 0; it < (TC_BM / 2) * TC_BN / TC_THREADS; ++it) {
        const int e = tid + it * TC_THREADS;
        const int r = e % (TC_BM / 2), c = e / (TC_BM / 2);
        const int lr = h * (TC_BM / 2) + r;
        const int m = bm + lr, n = bn + c;
        if (m < p.M && n < p.N) {
          const PixelRC px = MODE != kWgrad ? rows[lr] : PixelRC{0, 0, 0, 0};
          store_one<MODE, T>(p, px, g, s, m, n, stage[r * TC_EPI_LD + c]);
        }
      }
    }
    __syncthreads();  // the next half overwrites the staging tile
  }
}

// ---------------------------------------------------------------------------------------------
// SIMT implicit GEMM (fp32, IEEE: no TF32)
// ---------------------------------------------------------------------------------------------
template <int MODE>
__global__ void __launch_bounds__(SM_THREADS, 2) conv2d_simt_kernel(IgemmParams p) {
  __shared__ float sA[SM_BK][SM_BM];  // k-major so the compute loop reads a row of M / N per k
  __shared__ float sB[SM_BK][SM_BN];
  __shared__ PixelRC rows[SM_BM];     // fwd / dgrad: the CTA's pixel rows
  const int bm = static_cast<int>(blockIdx.x) * SM_BM;
  const int bn = static_cast<int>(blockIdx.y) * SM_BN;
  const int g = blockIdx.z / p.splits;
  const int s = blockIdx.z % p.splits;
  const int k_begin = s * p.k_chunk;
  const int k_end = min(p.K, k_begin + p.k_chunk);
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const float* A = static_cast<const float*>(p.a);
  const float* B = static_cast<const float*>(p.b);
  float acc[4][4] = {};

  // Gathers: 4 elements of each operand per thread. fwd / dgrad walk k fastest (channels_last
  // coalescing; the thread's k offset tid % 16 is fixed, so one KPos walks with it); wgrad walks rows
  // fastest (its rows are channels; the thread's B column tid % 64 is fixed).
  KPos kp{0, 0, 0}, bcol{0, 0, 0};
  if (MODE != kWgrad) {
    fill_rows<MODE>(p, rows, SM_BM, bm);
    kp = k_position(p.ix, k_begin + (tid & 15));
  } else {
    bcol = k_position(p.ix, bn + (tid & 63));
  }
  __syncthreads();

  for (int k0 = k_begin; k0 < k_end; k0 += SM_BK) {
#pragma unroll
    for (int it = 0; it < 4; ++it) {
      const int e = tid + it * SM_THREADS;
      const int row = MODE == kWgrad ? (e & 63) : (e >> 4);
      const int kk = MODE == kWgrad ? (e >> 6) : (e & 15);
      const int n = bn + row;
      int64_t off = -1, boff = -1;
      if (MODE != kWgrad) {
        if (k0 + kk < k_end) {
          off = a_pixel_offset<MODE>(p, rows[row], kp, g);
          if (n < p.N) boff = weight_offset(p.ix, p.bs, p.b_group, n, kp, g);
        }
      } else {
        const PixelRC px = wgrad_pixel(p, k0 + kk, k_end);
        if (bm + row < p.M) off = wgrad_a_offset(p.ix, p.as, bm + row, px, g);
        if (n < p.N) boff = x_tap_offset(p.ix, p.bs, px, bcol, g);
      }
      sA[kk][row] = off >= 0 ? A[off] : 0.0f;
      sB[kk][row] = boff >= 0 ? B[boff] : 0.0f;
    }
    if (MODE != kWgrad) k_advance(p.ix, kp, SM_BK);
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
    const int m = bm + ty + 16 * i;
    if (m >= p.M) continue;
    const PixelRC px = MODE != kWgrad ? rows[ty + 16 * i] : PixelRC{0, 0, 0, 0};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = bn + tx + 16 * j;
      if (n < p.N) store_one<MODE, float>(p, px, g, s, m, n, acc[i][j]);
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
    out[n * p.os.n + o * p.os.c + oh * p.os.h + ow * p.os.w] = from_float<T>(apply_act<sizeof(T) == 2>(acc, p.act));
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
        if (act <= 2) {
          // act_drops (common.cuh) written out for relu / relu6, as in gemm.cu's bias_act_bwd_kernel:
          // calling it changes how the compiler unswitches and unrolls this loop.
          const bool keep = act == 1 ? !(y <= 0.0f) : !(y <= 0.0f || y >= 6.0f);
          v = keep ? v : 0.0f;
        } else {
          v = act_grad(v, y, act);   // sigmoid from the output; silu / hardswish / hardsigmoid: y is pre
        }
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
inline uintptr_t addr(const void* p) { return reinterpret_cast<uintptr_t>(p); }

void check_grid(int64_t x, int64_t y, int64_t z, const char* what) {
  if (x > 2147483647LL || y > 65535 || z > 65535)
    throw std::invalid_argument(std::string(what) + ": problem too large for one launch (grid " + std::to_string(x) +
                                " x " + std::to_string(y) + " x " + std::to_string(z) + ")");
}

// 16-byte rows of C (or of the residual): unit stride along the channel axis, the other strides
// multiples of 8 elements (size-1 dims ignored), `per_group` channels a multiple of 8, aligned base.
bool rows_vec(const void* p, Strides4 st, int64_t N, int64_t C, int64_t H, int64_t W, int64_t per_group) {
  const int64_t dims[4] = {N, C, H, W};
  return p != nullptr && per_group % 8 == 0 && vec_operand(st, dims, addr(p), 1);
}

template <int MODE, typename T, bool VEC>
void launch_tc(const IgemmParams& p, dim3 grid, cudaStream_t st) {
  auto kernel = conv2d_igemm_kernel<MODE, T, VEC>;
  // 62 KiB of pipeline stages + row table: above the 48 KiB default, so opt in (cheap, idempotent).
  PYIMGCLS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, TC_SMEM_BYTES));
  kernel<<<grid, TC_THREADS, TC_SMEM_BYTES, st>>>(p);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

// Launch the implicit GEMM the plan chose (conv2d_plan in conv.h: the same decision explain reports).
template <int MODE>
void launch_igemm(DType dt, const IgemmParams& p, const LaunchPlan& pl, int groups, cudaStream_t st) {
  const int64_t gx = cdiv(p.M, pl.tile_m), gy = cdiv(p.N, pl.tile_n), gz = static_cast<int64_t>(groups) * p.splits;
  check_grid(gx, gy, gz, pl.tensor_cores ? "conv2d (cuda, tensor cores)" : "conv2d (cuda, fp32)");
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(gz));
  dispatch_dtype(dt, "conv2d", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same<T, float>::value) {
      conv2d_simt_kernel<MODE><<<grid, SM_THREADS, 0, st>>>(p);
      PYIMGCLS_CUDA_CHECK_LAUNCH();
    } else if (pl.vectorized) {
      launch_tc<MODE, T, true>(p, grid, st);
    } else {
      launch_tc<MODE, T, false>(p, grid, st);
    }
  });
}

// The implicit-GEMM parameters common to every pass; refuses problems beyond the 32-bit index
// arithmetic (the direct depthwise kernel indexes in 64 bits and has no such limit).
IgemmParams base_params(const ConvGeometry& s, int pass) {
  if (!conv2d_index_fits(s))
    throw std::invalid_argument("conv2d (cuda): problem too large for one launch (pixel count or "
                                "KH*KW*channels at or above 2^31 - 2^16, or padded extent at or above 2^30)");
  IgemmParams p{};
  p.ix = make_conv_index(s, pass);
  const ConvGemm gm = conv_gemm(pass, s);
  p.M = static_cast<int>(gm.M); p.N = static_cast<int>(gm.N); p.K = static_cast<int>(gm.K);
  p.k_chunk = static_cast<int>(std::max<int64_t>(gm.K, 1));
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

// vec: the 16-byte path (conv2d_depthwise_dgrad_vec, conv.h): VEC consecutive channels of g, dx (and,
// when w_vec, w) are one aligned pack.
template <typename T>
void launch_depthwise_dgrad(DwBwdParams p, int64_t N, bool vec, cudaStream_t st) {
  constexpr int VEC = 16 / sizeof(T);
  auto mult_of = [](int64_t v) { return v % VEC == 0; };
  p.w_vec = vec && p.ss.n == 1 && mult_of(p.ss.h) && mult_of(p.ss.w) && aligned_to(p.src, 16);
  p.channels_fastest = vec || p.ds.c == 1;
  p.total = N * p.H * p.W * (vec ? p.C / VEC : p.C);
  const int64_t blocks = std::min<int64_t>(cdiv(p.total, 256), int64_t(1) << 20);
  if (vec) conv2d_depthwise_dgrad_kernel<T, VEC><<<static_cast<unsigned>(blocks), 256, 0, st>>>(p);
  else conv2d_depthwise_dgrad_kernel<T, 1><<<static_cast<unsigned>(blocks), 256, 0, st>>>(p);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

// Per-split partials into scratch [splits, O, KH*KW], then conv2d_wgrad_reduce_kernel (Cg = 1: the
// same layout) adds them in split order into dw.
template <typename T>
void launch_depthwise_wgrad(DwBwdParams p, void* dw, int64_t splits, cudaStream_t st) {
  // p.ct channels per block: conv2d_depthwise_wgrad_tile (conv.h)
  const int64_t gx = cdiv(p.O, p.ct) * p.KH * p.KW;
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
  const DeviceGuard device_guard(device);
  cudaStream_t st = as_stream(stream);
  const LaunchPlan pl = conv2d_plan(kFwd, dt, s, xs, ws, addr(x), addr(w), 0);
  if (pl.launches == 0) return;
  if (pl.tile_m == 0) {  // the direct depthwise kernel
    DwParams d{x, w, bias, residual, out, xs, ws, rs, os, s.N, s.C, s.H, s.W, s.O, s.OH, s.OW,
               s.N * s.O * s.OH * s.OW, static_cast<int>(s.KH), static_cast<int>(s.KW),
               static_cast<int>(s.stride_h), static_cast<int>(s.stride_w), static_cast<int>(s.pad_h),
               static_cast<int>(s.pad_w), static_cast<int>(s.dil_h), static_cast<int>(s.dil_w),
               static_cast<int>(act), os.c == 1};
    dispatch_dtype(dt, "conv2d", [&](auto tag) { launch_dw<decltype(tag)>(d, st); });
    return;
  }
  IgemmParams p = base_params(s, kFwd);
  p.a = x; p.as = xs;
  p.b = w; p.bs = ws;
  p.c = out; p.cs = os;
  p.r = residual; p.rs = rs;
  p.bias = bias;
  p.b_group = p.ix.Og * ws.n;
  p.act = static_cast<int>(act);
  p.c_vec = rows_vec(out, os, s.N, s.O, s.OH, s.OW, p.ix.Og);
  p.r_vec = rows_vec(residual, rs, s.N, s.O, s.OH, s.OW, p.ix.Og);
  p.c_chunks = p.c_vec || std::abs(os.c) <= std::min(std::abs(os.h), std::abs(os.w));
  launch_igemm<kFwd>(dt, p, pl, static_cast<int>(s.groups), st);
}

void conv2d_bwd_data(DType dt, const ConvGeometry& s, const void* g, Strides4 gs, const void* w, Strides4 ws, void* dx,
                     Strides4 xs, int device, uintptr_t stream) {
  check_geom(s);
  const DeviceGuard device_guard(device);
  const LaunchPlan pl = conv2d_plan(kDgrad, dt, s, gs, ws, addr(g), addr(w), 0, 0, xs, addr(dx));
  if (pl.launches == 0) return;
  if (pl.tile_m == 0) {  // the direct depthwise kernel
    DwBwdParams d = depthwise_bwd_params(s);
    d.g = g; d.src = w; d.dst = dx; d.gs = gs; d.ss = ws; d.ds = xs;
    dispatch_dtype(dt, "conv2d", [&](auto tag) {
      launch_depthwise_dgrad<decltype(tag)>(d, s.N, pl.vectorized, as_stream(stream));
    });
    return;
  }
  IgemmParams p = base_params(s, kDgrad);
  p.a = g; p.as = gs;
  // B rows are input channels, the k-channel axis is the out channel: swap the weight's strides.
  p.b = w; p.bs = Strides4{ws.c, ws.n, ws.h, ws.w};
  p.c = dx; p.cs = xs;
  p.b_group = p.ix.Og * ws.n;
  p.c_vec = rows_vec(dx, xs, s.N, s.C, s.H, s.W, p.ix.Cg);
  p.c_chunks = p.c_vec || std::abs(xs.c) <= std::min(std::abs(xs.h), std::abs(xs.w));
  launch_igemm<kDgrad>(dt, p, pl, static_cast<int>(s.groups), as_stream(stream));
}

void conv2d_bwd_weight(DType dt, const ConvGeometry& s, const void* g, Strides4 gs, const void* x, Strides4 xs,
                       void* dw, void* scratch, int64_t splits, int device, uintptr_t stream) {
  check_geom(s);
  const DeviceGuard device_guard(device);
  cudaStream_t st = as_stream(stream);
  const int64_t Cg = s.C / s.groups, total = s.O * Cg * s.KH * s.KW;
  if (total == 0) return;
  if (splits < 1) throw std::invalid_argument("conv2d_bwd_weight (cuda): splits must be >= 1");
  const LaunchPlan pl = conv2d_plan(kWgrad, dt, s, gs, xs, addr(g), addr(x), 0, splits);
  if (pl.tile_m == 0) {
    // the direct depthwise kernel; scratch [splits, O, KH*KW] is the layout
    // conv2d_wgrad_reduce_kernel reads with Cg = 1.
    DwBwdParams d = depthwise_bwd_params(s);
    d.g = g; d.src = x; d.dst = scratch; d.gs = gs; d.ss = xs;
    d.total = s.N * s.OH * s.OW;
    d.chunk = std::max<int64_t>(1, cdiv(d.total, splits));
    d.ct = conv2d_depthwise_wgrad_tile(s, gs);
    dispatch_dtype(dt, "conv2d", [&](auto tag) { launch_depthwise_wgrad<decltype(tag)>(d, dw, splits, st); });
    return;
  }
  IgemmParams p = base_params(s, kWgrad);
  p.a = g; p.as = gs;
  p.b = x; p.bs = xs;
  p.c = scratch; p.cs = Strides4{total, s.KH * s.KW * Cg, 0, 1};
  p.splits = static_cast<int>(splits);
  p.k_chunk = static_cast<int>(std::max<int64_t>(1, cdiv(std::max<int64_t>(p.K, 1), splits)));
  p.c_vec = addr(scratch) % 16 == 0 && total % 4 == 0 && p.cs.c % 4 == 0;
  // Every (split, o, column) cell of the scratch is written by exactly one thread (zeros for an
  // empty K range), so the reduction never reads uninitialised memory.
  launch_igemm<kWgrad>(dt, p, pl, static_cast<int>(s.groups), st);
  const int64_t blocks = std::min<int64_t>(cdiv(total, 256), int64_t(1) << 20);
  const float* sc = static_cast<const float*>(scratch);
  dispatch_dtype(dt, "conv2d", [&](auto tag) {
    using T = decltype(tag);
    conv2d_wgrad_reduce_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, st>>>(sc, static_cast<T*>(dw), s.O, Cg,
                                                                                 p.ix.KH, p.ix.KW, splits);
  });
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

void conv2d_bias_act_bwd(DType dt, int64_t N, int64_t O, int64_t P, const void* grad, Strides4 gs, const void* out,
                         Strides4 os, void* grad_pre, void* grad_bias, void* scratch, int64_t splits, Act act,
                         int device, uintptr_t stream) {
  const DeviceGuard device_guard(device);
  cudaStream_t st = as_stream(stream);
  if (O == 0) return;
  if (splits < 1 || splits > 65535) throw std::invalid_argument("conv2d_bias_act_bwd (cuda): splits out of range");
  if (act != Act::None && out == nullptr)
    throw std::invalid_argument("conv2d_bias_act_bwd (cuda): out (or the pre-activation) is required with an activation");
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
