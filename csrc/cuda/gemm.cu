// CUDA GEMM family: C = act(A @ B + bias) and the backward of its epilogue.
//
// What it computes
//   gemm:         C[m, n] = act(sum_k A[m, k] * B[k, n] + bias[n]),   act: none, relu, relu6, silu, hardswish, sigmoid, hardsigmoid,
//                 A [M, K] and B [K, N] in float32 / float16 / bfloat16 with any strides, fp32
//                 accumulation, C [M, N] row-major (leading dimension ldc) in the input dtype.
//   bias_act_bwd: grad_pre[m, n] = act_grad(grad[m, n], out[m, n]) (relu / relu6: a select),   grad_bias[n] = sum_m grad_pre[m, n].
//
// Algorithm
//   float16 / bfloat16, both operands row- or column-major with 16-byte aligned rows
//     (gemm_fwd_kernel): tensor cores through mma.sync.m16n8k16 (fp32 accumulators). A CTA owns a
//     BM x BN tile of C and walks K in BK = 32 slices. Each slice of A and B is brought into shared
//     memory by 16-byte cp.async copies (zero-filled past the matrix edge through the src-size
//     operand) into a STAGES-deep ring, so STAGES - 1 slices are in flight while one is multiplied.
//     Shared tiles are XOR-swizzled in 16-byte chunks, so both the cp.async stores and the ldmatrix
//     reads (.trans for the operand whose K is the strided dimension) are free of bank conflicts.
//     The epilogue adds bias and applies the activation on the fp32 accumulators, rounds to the
//     dtype, stages the tile through shared memory and writes it with coalesced 16-byte stores.
//     Three tile configurations (128x128 with 8 warps, 64x128 and 64x64 with 4 warps) are chosen
//     by how many CTAs the problem yields, so small-M classifier GEMMs still fill the SMs; CTAs are
//     rasterised in groups of 8 tile-rows for L2 reuse of B.
//   float32, and the 16-bit dtypes with misaligned or fully strided operands
//     (gemm_simt_fwd_kernel): SIMT FFMA in IEEE fp32 (no TF32). 128x128 (or 64x64) CTA tile,
//     BK = 8, each thread an 8x8 register micro-tile; operands go through registers into
//     double-buffered shared memory (4-wide vector loads where aligned, bounds-checked scalar loads
//     otherwise).
//   split-K (both kernels, smallest tile only): when even the 64x64 tiles leave SMs idle (the
//     classifier heads: M = 32..256, N = 1000, K = 2048..9216 give 16..64 tiles for 132 SMs), the
//     host (gemm_plan, gemm.h) splits K into `splits` ranges of whole K tiles so that tiles * splits
//     reaches ~2 CTAs per SM. Grid (tiles, splits): each CTA sums its K range and stores the fp32
//     accumulators to its own partial (caller-allocated scratch [splits][M][ldw]); then
//     gemm_splitk_reduce_kernel adds the partials in split order, applies the bias + activation
//     epilogue and rounds to the dtype. No atomics: for a given shape and SM count the result is
//     bitwise reproducible (it differs from the unsplit sum only in the fp32 summation order).
//     Extra bytes: 2 * splits * M * ldw * 4 (partials written and read, mostly in L2).
//   bias_act_bwd (bias_act_bwd_kernel): one CTA per strip of SW columns walks all M rows; every
//     column is summed by 1024 / SW threads in a fixed row order, then reduced by a fixed-shape
//     tree in shared memory. SW depends only on N, and there are no atomics: for a given shape the
//     result is bitwise reproducible.
//
// Cost
//   gemm:         FLOPs = 2 * M * N * K;  minimum bytes = (M*K + K*N + M*N + N) * sizeof(dtype).
//   bias_act_bwd: FLOPs ~ 2 * M * N;      minimum bytes = (3*M*N + N) * sizeof(dtype) (2*M*N for none).
//
// Test and benchmark
//   pytest tests/test_gemm.py -m cuda
//   python benchmarks/bench_gemm.py
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "gemm.h"
#include "runtime.h"
#include "tc_maps.h"

namespace pyimgcls::cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// 16-bit element bits (conversions to / from fp32 and the activation come from common.cuh): the
// tensor-core epilogue and the SIMT vector paths move two 16-bit values per 32-bit word.
// ---------------------------------------------------------------------------------------------
template <typename T>
struct Bits16;

template <>
struct Bits16<__half> {
  static __device__ __forceinline__ uint32_t bits(float v) { return __half_as_ushort(__float2half_rn(v)); }
  static __device__ __forceinline__ float from_bits(uint32_t b) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(b)));
  }
};

template <>
struct Bits16<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t bits(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
  static __device__ __forceinline__ float from_bits(uint32_t b) {
    return __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(b)));
  }
};

// The tensor-core epilogue's activations: none, relu, relu6 (the smooth ones run in act_rows_kernel).
__device__ __forceinline__ float relu_family(float v, int act) {
  if (act == static_cast<int>(Act::ReLU)) return v < 0.f ? 0.f : v;
  if (act == static_cast<int>(Act::ReLU6)) return relu6f(v);
  return v;
}

// clamp_count (elements of a run that lie inside the matrix): tc_maps.h, shared with the emulation.
using tc::clamp_count;

// CTA tile origin under grouped rasterisation: consecutive CTAs (blockIdx.x) sweep a band of GROUP
// tile-rows column by column, so the band's A rows and each B column tile are reused from L2.
template <int BM, int BN>
__device__ __forceinline__ void grouped_tile_origin(int64_t M, int64_t N, int64_t& m0, int64_t& n0) {
  constexpr int GROUP = 8;
  const int tiles_m = static_cast<int>((M + BM - 1) / BM);
  const int tiles_n = static_cast<int>((N + BN - 1) / BN);
  const int pid = blockIdx.x;
  const int per_group = GROUP * tiles_n;
  const int first_tm = (pid / per_group) * GROUP;
  const int group_rows = min(tiles_m - first_tm, GROUP);
  const int tm = first_tm + (pid % per_group) % group_rows;
  const int tn = (pid % per_group) / group_rows;
  m0 = static_cast<int64_t>(tm) * BM;
  n0 = static_cast<int64_t>(tn) * BN;
}

// Kernel arguments (passed by value). Strides are in elements.
template <typename T>
struct GemmParams {
  const T* a;
  const T* b;
  const T* bias;  // may be null
  T* c;
  int64_t sam, sak;  // A[m, k] = a[m*sam + k*sak]
  int64_t sbk, sbn;  // B[k, n] = b[k*sbk + n*sbn]
  int64_t ldc;       // C[m, n] = c[m*ldc + n]
  int64_t M, N, K;
  int act;
  bool a_vec, b_vec, c_vec;  // SIMT path: 4-wide vector access is legal along the unit stride
  // Split-K kernels only (SPLIT = true): split blockIdx.y sums K range gemm_split_k_range(K, k_chunk,
  // blockIdx.y) into the fp32 partial ws[blockIdx.y][M][ldw] (no bias, no activation).
  float* ws;
  int64_t ldw, k_chunk;
};

// ---------------------------------------------------------------------------------------------
// Tensor-core GEMM (float16 / bfloat16)
// ---------------------------------------------------------------------------------------------
// Tile configurations (TcConfig: TcLarge, TcMedium, TcSmall), the shared-tile swizzle and the
// lane / chunk / fragment index maps live in tc_maps.h, shared with the CPU emulation; the shapes
// gemm_plan chooses among are gemm.h's kGemmTc* table, which must describe the same tiles.
using tc::TcLarge;
using tc::TcMedium;
using tc::TcSmall;
using tc::swz;
template <typename Cfg>
constexpr bool same_tile(const GemmTile& g) {
  return Cfg::BM == g.bm && Cfg::BN == g.bn && Cfg::BK == g.bk && Cfg::WARPS_M == g.warps_m &&
         Cfg::WARPS_N == g.warps_n && Cfg::STAGES == g.stages && Cfg::MIN_BLOCKS == g.min_blocks &&
         Cfg::THREADS == g.threads;
}
static_assert(same_tile<TcLarge>(kGemmTcLarge) && same_tile<TcMedium>(kGemmTcMedium) &&
                  same_tile<TcSmall>(kGemmTcSmall),
              "gemm.h tile table and tc_maps.h TcConfig disagree");

// Issue the cp.async copies of one BK-slice of an operand into shared memory.
//   K_CONTIG (K is the unit-stride dimension): the shared tile is [R][BK]  (R rows of 4 chunks),
//     element (o, k) = g[o*ld + k].
//   otherwise (the M or N dimension is unit-stride): the shared tile is [BK][R] (BK rows of R/8
//     chunks), element (o, k) = g[k*ld + o].
// `o` is the M index for A and the N index for B; outer0 is the tile's first o.
template <typename T, int THREADS, int R, bool K_CONTIG>
__device__ __forceinline__ void load_tile_async(uint32_t s_tile, const T* __restrict__ g, int64_t ld,
                                                int64_t outer0, int64_t outer_size, int64_t k0, int64_t K,
                                                int tid) {
  constexpr int BK = 32;
  constexpr int CHUNKS = R * BK / 8;
#pragma unroll
  for (int it = 0; it < CHUNKS / THREADS; ++it) {
    const int c = tid + it * THREADS;
    uint32_t dst;
    int valid;  // elements of this 8-element chunk inside the matrix
    int64_t off;
    if constexpr (K_CONTIG) {
      const auto [row, ch] = tc::chunk_row_col<4>(c);
      const int64_t o = outer0 + row, k = k0 + ch * 8;
      valid = o < outer_size ? clamp_count(K, k, 8) : 0;
      off = o * ld + k;
      dst = s_tile + swz<4>(row, ch);
    } else {
      constexpr int CH = R / 8;
      const auto [row, ch] = tc::chunk_row_col<CH>(c);
      const int64_t k = k0 + row, o = outer0 + ch * 8;
      valid = k < K ? clamp_count(outer_size, o, 8) : 0;
      off = k * ld + o;
      dst = s_tile + swz<CH>(row, ch);
    }
    // Out-of-range chunks read nothing (src_bytes = 0); point them at the matrix base anyway so
    // no out-of-bounds address is ever formed.
    ptx::cp_async_16(dst, valid > 0 ? static_cast<const void*>(g + off) : static_cast<const void*>(g),
                     valid * static_cast<int>(sizeof(T)));
  }
}

// C tile = act(A tile @ B tile + bias), tensor cores. A_KC: A is row-major (sak == 1, lda = sam);
// otherwise column-major (sam == 1, lda = sak). B_KC: B is column-major (sbk == 1, ldb = sbn,
// e.g. nn.Linear's weight [N, K] viewed as B = W^T); otherwise row-major (sbn == 1, ldb = sbk).
// Host guarantees: 16-byte aligned a and b, lda and ldb multiples of 8 elements.
// SPLIT: grid (tiles, splits); CTA (tile, s) sums only split s's K range and stores its fp32
// accumulators to the partial p.ws[s] (gemm_splitk_reduce_kernel adds bias and activation later).
template <typename T, typename Cfg, bool A_KC, bool B_KC, bool SPLIT>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS) gemm_fwd_kernel(const GemmParams<T> p) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, STAGES = Cfg::STAGES;
  constexpr int THREADS = Cfg::THREADS, MT = Cfg::MT, NT = Cfg::NT;
  extern __shared__ __align__(128) unsigned char smem[];

  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int wm0 = (warp / Cfg::WARPS_N) * Cfg::WTM;  // warp tile origin inside the CTA tile
  const int wn0 = (warp % Cfg::WARPS_N) * Cfg::WTN;

  // 1. CTA tile coordinates, grouped rasterisation (L2 reuse of A rows and B column tiles).
  int64_t m0, n0;
  grouped_tile_origin<BM, BN>(p.M, p.N, m0, n0);

  const int64_t lda = A_KC ? p.sam : p.sak;
  const int64_t ldb = B_KC ? p.sbn : p.sbk;
  const uint32_t s_base = ptx::smem_addr(smem);
  // K range of this CTA: all of K, or split blockIdx.y's (k_begin a multiple of BK; reads past
  // k_end are zero-filled exactly as reads past K are).
  int64_t k_begin = 0, k_end = p.K;
  if constexpr (SPLIT) gemm_split_k_range(p.K, p.k_chunk, blockIdx.y, &k_begin, &k_end);
  const int k_tiles = static_cast<int>((k_end - k_begin + BK - 1) / BK);

  auto load_stage = [&](int stage, int kt) {
    const uint32_t s_a = s_base + stage * Cfg::STAGE_BYTES;
    const int64_t k0 = k_begin + static_cast<int64_t>(kt) * BK;
    load_tile_async<T, THREADS, BM, A_KC>(s_a, p.a, lda, m0, p.M, k0, k_end, tid);
    load_tile_async<T, THREADS, BN, B_KC>(s_a + Cfg::A_BYTES, p.b, ldb, n0, p.N, k0, k_end, tid);
  };

  // acc[i][j]: the m16n8 tile (wm0 + 16i, wn0 + 8j) of this warp, in the C/D fragment layout.
  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

  // 2. Prologue: put the first STAGES-1 K-slices in flight. One commit per slot even when the slice
  //    does not exist (K small), so that group i always holds slice i and wait_group counts work.
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    ptx::cp_async_commit();
  }

  // 3. Main loop over K-slices. Before iteration kt, STAGES-1+kt groups were committed; waiting
  //    until at most STAGES-2 are pending means groups 0..kt (so slice kt) have landed for this
  //    thread, and the barrier makes every thread's copies visible to the whole CTA. The barrier
  //    also proves all warps finished slice kt-1, whose slot ((kt-1) % STAGES) is refilled next.
  for (int kt = 0; kt < k_tiles; ++kt) {
    ptx::cp_async_wait<Cfg::WAIT_PENDING>();
    __syncthreads();
    const int next = kt + STAGES - 1;
    if (next < k_tiles) load_stage(next % STAGES, next);
    ptx::cp_async_commit();

    const uint32_t s_a = s_base + (kt % STAGES) * Cfg::STAGE_BYTES;
    const uint32_t s_b = s_a + Cfg::A_BYTES;
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks) {
      // 3a. B fragments: one ldmatrix.x4 per pair of n8 tiles. Matrices 0..3 = (n 0-7, k 0-7),
      //     (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) = b[2jp][0], b[2jp][1],
      //     b[2jp+1][0], b[2jp+1][1].
      uint32_t bf[NT][2];
#pragma unroll
      for (int jp = 0; jp < NT / 2; ++jp) {
        uint32_t r[4];
        if constexpr (B_KC) {
          // [BN][BK] tile (k contiguous): stored rows are n, the b fragment is a plain load; lane l
          // addresses n = (l % 8) + 8 * (l / 16) at k-chunk (l / 8) % 2.
          const tc::RowChunk l = tc::ldsm_b_kc(lane);
          const int n = wn0 + jp * 16 + l.row;
          ptx::ldmatrix_x4(r, s_b + swz<4>(n, ks * 2 + l.ch));
        } else {
          // [BK][BN] tile (n contiguous): stored rows are k, load transposed; lane l addresses
          // k = (l % 8) + 8 * ((l / 8) % 2) at n-chunk l / 16.
          const tc::RowChunk l = tc::ldsm_b_nc(lane);
          const int krow = ks * 16 + l.row;
          const int n = wn0 + jp * 16 + (l.ch << 3);
          ptx::ldmatrix_x4_trans(r, s_b + swz<BN / 8>(krow, n >> 3));
        }
        bf[2 * jp][0] = r[0];
        bf[2 * jp][1] = r[1];
        bf[2 * jp + 1][0] = r[2];
        bf[2 * jp + 1][1] = r[3];
      }
      // 3b. Per m16 tile: its A fragment (one ldmatrix.x4; matrices 0..3 = (rows 0-7, k 0-7),
      //     (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15) = a[0..3]), then NT MMAs.
      //     Loading A per tile rather than all at once keeps 4 fragment registers live, not 4*MT.
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        uint32_t af[4];
        if constexpr (A_KC) {
          // [BM][BK] tile: lane l addresses row (l % 16), k-chunk (l / 16) of the tile.
          const tc::RowChunk l = tc::ldsm_a_kc(lane);
          const int row = wm0 + i * 16 + l.row;
          ptx::ldmatrix_x4(af, s_a + swz<4>(row, ks * 2 + l.ch));
        } else {
          // [BK][BM] tile (m contiguous): stored rows are k, so load transposed; lane l addresses
          // k = (l % 8) + 8 * (l / 16) at m-chunk (l / 8) % 2.
          const tc::RowChunk l = tc::ldsm_a_mc(lane);
          const int krow = ks * 16 + l.row;
          const int m = wm0 + i * 16 + (l.ch << 3);
          ptx::ldmatrix_x4_trans(af, s_a + swz<BM / 8>(krow, m >> 3));
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) ptx::mma_16816<T>(acc[i][j], af, bf[j]);
      }
    }
  }

  // 4. Epilogue. Drain the (empty) trailing groups and make sure no warp still reads the ring
  //    before it is reused as the [BM][C_LD] staging tile.
  ptx::cp_async_wait<0>();
  // Thread (g, t) of a warp holds columns 2t, 2t+1 of rows g and g+8 of every m16n8 tile
  // (f_lo: registers 0, 1; f_hi: registers 2, 3; tc::acc_frag, the PTX fragment map).
  const tc::RowCol f_lo = tc::acc_frag(lane, 0), f_hi = tc::acc_frag(lane, 2);
  if constexpr (SPLIT) {
    // Split-K: the raw fp32 accumulators go to this split's partial, [M][ldw] with ldw = N rounded
    // up to 8. Each quad of lanes stores one whole 32-byte sector of a row (four 8-byte stores at a
    // column multiple of 8). Columns in [N, ldw) get the zeros of the zero-filled B, so every
    // element the reduction reads was written.
    float* ws = p.ws + static_cast<int64_t>(blockIdx.y) * p.M * p.ldw;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int64_t gcol = n0 + wn0 + j * 8 + f_lo.col;  // even; ldw % 8 == 0, so gcol + 1 < ldw too
      if (gcol >= p.ldw) continue;
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const int64_t grow = m0 + wm0 + i * 16 + f_lo.row, grow_hi = m0 + wm0 + i * 16 + f_hi.row;
        const int64_t gcol_hi = n0 + wn0 + j * 8 + f_hi.col;
        if (grow < p.M) *reinterpret_cast<float2*>(ws + grow * p.ldw + gcol) = make_float2(acc[i][j][0], acc[i][j][1]);
        if (grow_hi < p.M)
          *reinterpret_cast<float2*>(ws + grow_hi * p.ldw + gcol_hi) = make_float2(acc[i][j][2], acc[i][j][3]);
      }
    }
  } else {
    __syncthreads();

    // 4a. bias + activation on the fp32 accumulators, rounded once to T, into the staging tile.
    //     Only none / relu / relu6 here: gemm_typed launches this kernel with the smooth activations
    //     (silu, hardswish, sigmoid, hardsigmoid) taken out and applies them in a second pass
    //     (act_rows_kernel), because their expf / divisions in this epilogue cost registers:
    //     TcConfig<64,128,...> half / bf16 spilled 4 bytes on sm_80 with them, even when applied to
    //     the staged values after the accumulators were dead.
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int col = wn0 + j * 8 + f_lo.col;
      const int64_t gcol = n0 + col;
      float b0 = 0.f, b1 = 0.f;
      if (p.bias != nullptr) {
        if (gcol < p.N) b0 = to_float(p.bias[gcol]);
        if (gcol + 1 < p.N) b1 = to_float(p.bias[gcol + 1]);
      }
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const int row = wm0 + i * 16 + f_lo.row;
        const int row_hi = wm0 + i * 16 + f_hi.row, col_hi = wn0 + j * 8 + f_hi.col;
        const uint32_t lo = Bits16<T>::bits(relu_family(acc[i][j][0] + b0, p.act)) |
                            (Bits16<T>::bits(relu_family(acc[i][j][1] + b1, p.act)) << 16);
        const uint32_t hi = Bits16<T>::bits(relu_family(acc[i][j][2] + b0, p.act)) |
                            (Bits16<T>::bits(relu_family(acc[i][j][3] + b1, p.act)) << 16);
        *reinterpret_cast<uint32_t*>(smem + (row * Cfg::C_LD + col) * 2) = lo;
        *reinterpret_cast<uint32_t*>(smem + (row_hi * Cfg::C_LD + col_hi) * 2) = hi;
      }
    }
    // Why: the copy-out below reads rows written by other warps.
    __syncthreads();

    // 4b. Coalesced copy-out: each thread moves 8-element (16-byte) row chunks; 16-byte stores where
    //     C is aligned and the chunk is inside N, element-wise guarded stores on the edges.
    constexpr int CPR = BN / 8;  // chunks per tile row
#pragma unroll
    for (int it = 0; it < BM * CPR / THREADS; ++it) {
      const int c = tid + it * THREADS;
      const auto [row, cc] = tc::chunk_row_col<CPR>(c);
      const int64_t grow = m0 + row, gcol = n0 + cc * 8;
      if (grow < p.M && gcol < p.N) {
        const uint4 v = *reinterpret_cast<const uint4*>(smem + (row * Cfg::C_LD + cc * 8) * 2);
        T* dst = p.c + grow * p.ldc + gcol;
        if (p.c_vec && gcol + 8 <= p.N) {
          *reinterpret_cast<uint4*>(dst) = v;
        } else {
          const uint32_t w[4] = {v.x, v.y, v.z, v.w};
          const int n_valid = clamp_count(p.N, gcol, 8);
          unsigned short* d16 = reinterpret_cast<unsigned short*>(dst);
#pragma unroll
          for (int q = 0; q < 8; ++q)
            if (q < n_valid) d16[q] = static_cast<unsigned short>(w[q >> 1] >> (16 * (q & 1)));
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SIMT GEMM (IEEE fp32 FFMA): float32 everywhere, and the generic path for 16-bit dtypes.
// ---------------------------------------------------------------------------------------------
template <int BM_, int BN_, int MIN_BLOCKS_>
struct SimtConfig {
  static constexpr int BM = BM_, BN = BN_, BK = 8, MIN_BLOCKS = MIN_BLOCKS_;
  static constexpr int TX = BN / 8, TY = BM / 8;  // thread grid; each thread owns 8 x 8 outputs
  static constexpr int THREADS = TX * TY;
  static constexpr int AS_LD = BM + 4, BS_LD = BN + 4;  // +4 floats: the transposing scalar
                                                        // stores of a warp hit 32 distinct banks
  static constexpr int A_VECS = BM * BK / 4 / THREADS;  // 4-element loads per thread per slice
  static constexpr int B_VECS = BN * BK / 4 / THREADS;
  static_assert(A_VECS >= 1 && B_VECS >= 1 && (BM * BK / 4) % THREADS == 0 && (BN * BK / 4) % THREADS == 0,
                "copy split");
};

// 128x128x8, 256 threads, 8x8 outputs per thread (two 4x4 quadrants 64 rows / 64 columns apart,
// so the float4 shared reads of a warp are broadcast or contiguous); 2 x 8.25 KB shared memory;
// registers capped at 128 so two CTAs (16 warps) share an SM.
using SimtLarge = SimtConfig<kGemmSimtLarge.bm, kGemmSimtLarge.bn, kGemmSimtLarge.min_blocks>;
// 64x64x8, 64 threads, same micro-tile; for problems too small to fill the SMs with 128x128.
using SimtSmall = SimtConfig<kGemmSimtSmall.bm, kGemmSimtSmall.bn, kGemmSimtSmall.min_blocks>;
static_assert(SimtLarge::BK == kGemmSimtLarge.bk && SimtLarge::THREADS == kGemmSimtLarge.threads &&
                  SimtSmall::BK == kGemmSimtSmall.bk && SimtSmall::THREADS == kGemmSimtSmall.threads,
              "gemm.h tile table and SimtConfig disagree");

// 4 elements g[off + e*stride] (e < cnt valid, the rest 0) as fp32; one vector load when allowed.
template <typename T>
__device__ __forceinline__ float4 load4(const T* __restrict__ g, int64_t off, int64_t stride, int cnt, bool vec) {
  float v[4] = {0.f, 0.f, 0.f, 0.f};
  if (vec && cnt == 4) {
    if constexpr (sizeof(T) == 4) {
      const float4 q = *reinterpret_cast<const float4*>(g + off);
      return q;
    } else {
      const uint2 q = *reinterpret_cast<const uint2*>(g + off);
      v[0] = Bits16<T>::from_bits(q.x & 0xffffu);
      v[1] = Bits16<T>::from_bits(q.x >> 16);
      v[2] = Bits16<T>::from_bits(q.y & 0xffffu);
      v[3] = Bits16<T>::from_bits(q.y >> 16);
    }
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (i < cnt) v[i] = to_float(g[off + i * stride]);
  }
  return make_float4(v[0], v[1], v[2], v[3]);
}

// Stores the first n_valid of 4 consecutive outputs (rounded to T); one vector store when allowed.
template <typename T>
__device__ __forceinline__ void store4(T* dst, const float (&v)[4], int n_valid, bool vec) {
  if (vec && n_valid == 4) {
    if constexpr (sizeof(T) == 4) {
      *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
      *reinterpret_cast<uint2*>(dst) = make_uint2(Bits16<T>::bits(v[0]) | (Bits16<T>::bits(v[1]) << 16),
                                                  Bits16<T>::bits(v[2]) | (Bits16<T>::bits(v[3]) << 16));
    }
  } else {
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (q < n_valid) dst[q] = from_float<T>(v[q]);
  }
}

// Global -> registers for one BK = 8 slice of an operand (R = BM for A, BN for B; `o` = m or n).
//   KC: 4 consecutive k of one o per load (K is the unit-stride dimension or the cheaper one).
//   otherwise: 4 consecutive o of one k per load.
template <typename T, int THREADS, int R, int NV, bool KC>
__device__ __forceinline__ void simt_load(float4 (&r)[NV], const T* __restrict__ g, int64_t s_o, int64_t s_k,
                                          int64_t o0, int64_t o_size, int64_t k0, int64_t K, bool vec,
                                          int tid) {
#pragma unroll
  for (int v = 0; v < NV; ++v) {
    const int c = tid + v * THREADS;
    if constexpr (KC) {
      const int64_t o = o0 + (c >> 1), k = k0 + (c & 1) * 4;
      const int cnt = o < o_size ? clamp_count(K, k, 4) : 0;
      r[v] = load4(g, cnt > 0 ? o * s_o + k * s_k : 0, s_k, cnt, vec);
    } else {
      const int64_t k = k0 + c / (R / 4), o = o0 + (c % (R / 4)) * 4;
      const int cnt = k < K ? clamp_count(o_size, o, 4) : 0;
      r[v] = load4(g, cnt > 0 ? k * s_k + o * s_o : 0, s_o, cnt, vec);
    }
  }
}

// Registers -> shared [BK][LD] tile (k-major, o contiguous), same thread mapping as simt_load.
template <int THREADS, int R, int LD, int NV, bool KC>
__device__ __forceinline__ void simt_store(float* s, const float4 (&r)[NV], int tid) {
#pragma unroll
  for (int v = 0; v < NV; ++v) {
    const int c = tid + v * THREADS;
    if constexpr (KC) {
      const int o = c >> 1, k = (c & 1) * 4;
      s[(k + 0) * LD + o] = r[v].x;
      s[(k + 1) * LD + o] = r[v].y;
      s[(k + 2) * LD + o] = r[v].z;
      s[(k + 3) * LD + o] = r[v].w;
    } else {
      const int k = c / (R / 4), o = (c % (R / 4)) * 4;
      *reinterpret_cast<float4*>(s + k * LD + o) = r[v];
    }
  }
}

// C tile = act(A tile @ B tile + bias) with fp32 FFMA. A_KC: A is loaded along k (sak == 1, or
// the smaller stride when neither is 1); otherwise along m. B_KC likewise along k, else along n.
// SPLIT: as in gemm_fwd_kernel, CTA (tile, s) stores split s's fp32 sums to the partial p.ws[s].
template <typename T, typename Cfg, bool A_KC, bool B_KC, bool SPLIT>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS) gemm_simt_fwd_kernel(const GemmParams<T> p) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, THREADS = Cfg::THREADS;
  constexpr int AS_LD = Cfg::AS_LD, BS_LD = Cfg::BS_LD;
  __shared__ __align__(16) float As[2][BK * AS_LD];  // [k][m]
  __shared__ __align__(16) float Bs[2][BK * BS_LD];  // [k][n]

  const int tid = threadIdx.x;
  const int tx = tid % Cfg::TX, ty = tid / Cfg::TX;

  // 1. CTA tile coordinates, grouped rasterisation as in gemm_fwd_kernel; K range as there.
  int64_t m0, n0;
  grouped_tile_origin<BM, BN>(p.M, p.N, m0, n0);
  int64_t k_begin = 0, k_end = p.K;
  if constexpr (SPLIT) gemm_split_k_range(p.K, p.k_chunk, blockIdx.y, &k_begin, &k_end);
  const int k_tiles = static_cast<int>((k_end - k_begin + BK - 1) / BK);

  float4 ra[Cfg::A_VECS], rb[Cfg::B_VECS];
  auto load = [&](int kt) {
    const int64_t k0 = k_begin + static_cast<int64_t>(kt) * BK;
    simt_load<T, THREADS, BM, Cfg::A_VECS, A_KC>(ra, p.a, p.sam, p.sak, m0, p.M, k0, k_end, p.a_vec, tid);
    simt_load<T, THREADS, BN, Cfg::B_VECS, B_KC>(rb, p.b, p.sbn, p.sbk, n0, p.N, k0, k_end, p.b_vec, tid);
  };
  auto store = [&](int buf) {
    simt_store<THREADS, BM, AS_LD, Cfg::A_VECS, A_KC>(As[buf], ra, tid);
    simt_store<THREADS, BN, BS_LD, Cfg::B_VECS, B_KC>(Bs[buf], rb, tid);
  };

  // acc[i][j]: row (i < 4 ? 4ty + i : BM/2 + 4ty + i-4), column (j < 4 ? 4tx + j : BN/2 + 4tx + j-4).
  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

  // 2. Prologue: slice 0 into buffer 0.
  if (k_tiles > 0) {
    load(0);
    store(0);
  }
  __syncthreads();

  // 3. Main loop: the global loads of slice kt+1 are issued before the FMAs on slice kt so their
  //    latency is hidden; they are written to the other buffer afterwards. That buffer was last read
  //    in iteration kt-1, which the barrier at its end has closed; the barrier at the end of this
  //    iteration publishes it for iteration kt+1.
  for (int kt = 0; kt < k_tiles; ++kt) {
    const int buf = kt & 1;
    if (kt + 1 < k_tiles) load(kt + 1);
    const float* as = As[buf];
    const float* bs = Bs[buf];
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      const float4 a0 = *reinterpret_cast<const float4*>(as + k * AS_LD + 4 * ty);
      const float4 a1 = *reinterpret_cast<const float4*>(as + k * AS_LD + BM / 2 + 4 * ty);
      const float4 b0 = *reinterpret_cast<const float4*>(bs + k * BS_LD + 4 * tx);
      const float4 b1 = *reinterpret_cast<const float4*>(bs + k * BS_LD + BN / 2 + 4 * tx);
      const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    if (kt + 1 < k_tiles) store(buf ^ 1);
    __syncthreads();
  }

  // 4. Split-K: the raw fp32 sums go to this split's partial [M][ldw] as 16-byte stores (ldw is a
  //    multiple of 8, every column run of 4 starts at a multiple of 4; columns in [N, ldw) get the
  //    zeros of the zero-filled B).
  if constexpr (SPLIT) {
    float* ws = p.ws + static_cast<int64_t>(blockIdx.y) * p.M * p.ldw;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t row = m0 + (i < 4 ? 4 * ty + i : BM / 2 + 4 * ty + (i - 4));
      if (row >= p.M) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t col = n0 + h * (BN / 2) + 4 * tx;
        if (col < p.ldw)
          *reinterpret_cast<float4*>(ws + row * p.ldw + col) =
              make_float4(acc[i][4 * h], acc[i][4 * h + 1], acc[i][4 * h + 2], acc[i][4 * h + 3]);
      }
    }
  } else {
    // 5. Epilogue: bias + activation in fp32, 4-wide stores where C allows, guarded scalars otherwise.
    float bias[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t col = n0 + (j < 4 ? 4 * tx + j : BN / 2 + 4 * tx + (j - 4));
      bias[j] = (p.bias != nullptr && col < p.N) ? to_float(p.bias[col]) : 0.f;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t row = m0 + (i < 4 ? 4 * ty + i : BM / 2 + 4 * ty + (i - 4));
      if (row >= p.M) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t col = n0 + h * (BN / 2) + 4 * tx;
        if (col >= p.N) continue;
        float out[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) out[q] = apply_act(acc[i][4 * h + q] + bias[4 * h + q], p.act);
        store4(p.c + row * p.ldc + col, out, clamp_count(p.N, col, 4), p.c_vec);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Split-K reduction: C[m, n] = act(sum_s ws[s][m][n] + bias[n]).
// ---------------------------------------------------------------------------------------------
// The partials are added in split order 0, 1, ..., splits-1 by one thread, so the result depends
// only on the shape and the split count (gemm_plan: shape and SM count), never on timing; no atomics.
// Thread = one run of 4 columns of one row: 16-byte loads of every partial (ldw % 8 == 0, ws 16-byte
// aligned), one 4-element store of C. Grid: ceil(M * ceil(N / 4) / 256) CTAs of 256 threads.
// Bytes: ~splits * M * N * 4 read + (M * N + N) * sizeof(T); FLOPs: (splits + 1) * M * N.
template <typename T>
__global__ void __launch_bounds__(kGemmReduceThreads) gemm_splitk_reduce_kernel(const GemmParams<T> p, int splits) {
  const int64_t runs = (p.N + 3) / 4;  // runs per row, each starting inside N
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kGemmReduceThreads + threadIdx.x;
  if (idx >= p.M * runs) return;
  const int64_t row = idx / runs, col = (idx % runs) * 4;
  const int64_t plane = p.M * p.ldw;
  const float* __restrict__ src = p.ws + row * p.ldw + col;
  auto add = [](float4& a, const float4 v) {
    a.x += v.x;
    a.y += v.y;
    a.z += v.z;
    a.w += v.w;
  };
  float4 acc = *reinterpret_cast<const float4*>(src);
  int s = 1;
  // Four partials are loaded before they are added (still in split order) to keep loads in flight.
  for (; s + 4 <= splits; s += 4) {
    const float4 v0 = *reinterpret_cast<const float4*>(src + s * plane);
    const float4 v1 = *reinterpret_cast<const float4*>(src + (s + 1) * plane);
    const float4 v2 = *reinterpret_cast<const float4*>(src + (s + 2) * plane);
    const float4 v3 = *reinterpret_cast<const float4*>(src + (s + 3) * plane);
    add(acc, v0);
    add(acc, v1);
    add(acc, v2);
    add(acc, v3);
  }
  for (; s < splits; ++s) add(acc, *reinterpret_cast<const float4*>(src + s * plane));

  // The epilogue of the single-kernel path: bias on the fp32 sum, then the activation, rounded once.
  const int n_valid = clamp_count(p.N, col, 4);
  const float sum[4] = {acc.x, acc.y, acc.z, acc.w};
  float out[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const float b = (p.bias != nullptr && q < n_valid) ? to_float(p.bias[col + q]) : 0.f;
    out[q] = apply_act(sum[q] + b, p.act);
  }
  store4(p.c + row * p.ldc + col, out, n_valid, p.c_vec);
}

// ---------------------------------------------------------------------------------------------
// Epilogue backward: activation mask and deterministic bias gradient.
// ---------------------------------------------------------------------------------------------
constexpr int kBwdThreads = kBiasActBwdThreads;

// Block (SW, 1024/SW): threadIdx.x = column inside the SW-wide strip, threadIdx.y = row phase.
// Thread (x, y) handles rows y, y + Y, y + 2Y, ... of its column in that order (Y = blockDim.y),
// then the Y partial sums of a column are combined by a fixed binary tree in shared memory.
template <typename T>
__global__ void __launch_bounds__(kBwdThreads) bias_act_bwd_kernel(const T* grad, const T* out, T* grad_pre,
                                                                    T* grad_bias, int64_t M, int64_t N, int act) {
  __shared__ float part[kBwdThreads];
  const int SW = blockDim.x, Y = blockDim.y;
  const int x = threadIdx.x, y = threadIdx.y;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * SW + x;

  // 1. Mask and column partial sums. The mask follows PyTorch's threshold_backward /
  //    hardtanh_backward on the saved output: the gradient is zeroed where out <= 0 (relu) or
  //    out <= 0 || out >= 6 (relu6) and passed through unchanged otherwise (NaN outputs included);
  //    the other activations by act_grad (common.cuh; `out` holds the pre-activation for silu /
  //    hardswish / hardsigmoid),
  //    selected rather than multiplied so inf/NaN gradients in masked positions become 0.
  //    grad_pre may alias grad: each element is read and then written by the same thread.
  //    Four rows are loaded before they are added (in row order) to keep loads in flight.
  float sum = 0.f;
  if (n < N) {
    // none / relu / relu6: the four-row loop below. act_drops (common.cuh) written out for act != None:
    // calling it here makes the compiler branch per row on the activation instead of issuing the four
    // rows' loads back to back.
    auto one = [&](int64_t m) -> float {
      const int64_t idx = m * N + n;
      float gv = to_float(grad[idx]);
      if (act != static_cast<int>(Act::None)) {
        const float o = to_float(out[idx]);
        const bool zero = act == static_cast<int>(Act::ReLU) ? (o <= 0.f) : (o <= 0.f || o >= 6.f);
        if (zero) gv = 0.f;
      }
      return gv;
    };
    // The smooth activations by act_grad (sigmoid from the output; silu / hardswish / hardsigmoid: `out`
    // holds the pre-activation), one row at a time: with expf inlined four times the four-row loop
    // spilled (2 LDL + 2 STL: half / bf16 on sm_80, float on sm_90a).
    const bool smooth = act > static_cast<int>(Act::ReLU6);
    auto one_any = [&](int64_t m) -> float {
      return smooth ? act_grad(to_float(grad[m * N + n]), to_float(out[m * N + n]), act) : one(m);
    };
    int64_t m = y;
    for (; !smooth && m + 3 * Y < M; m += 4 * static_cast<int64_t>(Y)) {
      const float v0 = one(m), v1 = one(m + Y), v2 = one(m + 2 * Y), v3 = one(m + 3 * Y);
      if (grad_pre != nullptr) {
        grad_pre[m * N + n] = from_float<T>(v0);
        grad_pre[(m + Y) * N + n] = from_float<T>(v1);
        grad_pre[(m + 2 * Y) * N + n] = from_float<T>(v2);
        grad_pre[(m + 3 * Y) * N + n] = from_float<T>(v3);
      }
      sum += v0;
      sum += v1;
      sum += v2;
      sum += v3;
    }
    for (; m < M; m += Y) {
      const float v = one_any(m);
      if (grad_pre != nullptr) grad_pre[m * N + n] = from_float<T>(v);
      sum += v;
    }
  }
  if (grad_bias == nullptr) return;  // uniform across the block: no barrier is skipped by a subset

  // 2. Fixed-order tree over the Y row phases (Y is a power of two).
  part[y * SW + x] = sum;
  __syncthreads();
  for (int s = Y / 2; s > 0; s >>= 1) {
    if (y < s) part[y * SW + x] += part[(y + s) * SW + x];
    // Why: the next level reads the sums this level wrote.
    __syncthreads();
  }
  if (y == 0 && n < N) grad_bias[n] = from_float<T>(part[x]);
}

// ---------------------------------------------------------------------------------------------
// Second pass of a tensor-core GEMM with a smooth activation: C[m, n] = act(C[m, n]) in place over the
// M x N matrix of leading dimension ldc (rows may be padded). Memory-bound: 2 * M * N * sizeof(T)
// bytes; the value it reads is the pre-activation already rounded to T, so the output is rounded
// twice, as PyTorch's unfused linear + activation rounds it.
// ---------------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kActThreads) act_rows_kernel(T* __restrict__ c, int64_t M, int64_t N, int64_t ldc,
                                                                int act) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < M * N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T* e = c + (i / N) * ldc + i % N;
    *e = from_float<T>(apply_act(to_float(*e), act));
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: gemm_plan (gemm.h) decides, the launchers below only dispatch on its decision.
// ---------------------------------------------------------------------------------------------
template <typename T, typename Cfg, bool A_KC, bool B_KC, bool SPLIT>
void launch_gemm_tc(const GemmParams<T>& p, const GemmPlan& plan, int device, cudaStream_t stream) {
  auto kernel = gemm_fwd_kernel<T, Cfg, A_KC, B_KC, SPLIT>;
  // The opt-in above 48 KB of dynamic shared memory is per function and device; set it once per
  // device (setting it twice from racing threads is harmless).
  static std::atomic<uint64_t> smem_opted_in{0};
  const uint64_t bit = device >= 0 && device < 64 ? (uint64_t{1} << device) : 0;
  if (bit == 0 || (smem_opted_in.load(std::memory_order_relaxed) & bit) == 0) {
    PYIMGCLS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::SMEM_BYTES));
    smem_opted_in.fetch_or(bit, std::memory_order_relaxed);
  }
  // 1-D grid of CTA tiles (gridDim.x allows 2^31 - 1, checked by the plan); split-K adds y = split.
  const dim3 grid(static_cast<unsigned>(plan.tiles), static_cast<unsigned>(plan.splits));
  kernel<<<grid, Cfg::THREADS, Cfg::SMEM_BYTES, stream>>>(p);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

template <typename T, typename Cfg, bool SPLIT>
void dispatch_gemm_tc(const GemmParams<T>& p, const GemmPlan& plan, int device, cudaStream_t stream) {
  if (plan.a_kc) {
    if (plan.b_kc) launch_gemm_tc<T, Cfg, true, true, SPLIT>(p, plan, device, stream);
    else launch_gemm_tc<T, Cfg, true, false, SPLIT>(p, plan, device, stream);
  } else {
    if (plan.b_kc) launch_gemm_tc<T, Cfg, false, true, SPLIT>(p, plan, device, stream);
    else launch_gemm_tc<T, Cfg, false, false, SPLIT>(p, plan, device, stream);
  }
}

template <typename T, typename Cfg, bool A_KC, bool B_KC, bool SPLIT>
void launch_gemm_simt(const GemmParams<T>& p, const GemmPlan& plan, cudaStream_t stream) {
  auto kernel = gemm_simt_fwd_kernel<T, Cfg, A_KC, B_KC, SPLIT>;
  const dim3 grid(static_cast<unsigned>(plan.tiles), static_cast<unsigned>(plan.splits));
  kernel<<<grid, Cfg::THREADS, 0, stream>>>(p);
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

template <typename T, typename Cfg, bool SPLIT>
void dispatch_gemm_simt(const GemmParams<T>& p, const GemmPlan& plan, cudaStream_t stream) {
  if (plan.a_kc) {
    if (plan.b_kc) launch_gemm_simt<T, Cfg, true, true, SPLIT>(p, plan, stream);
    else launch_gemm_simt<T, Cfg, true, false, SPLIT>(p, plan, stream);
  } else {
    if (plan.b_kc) launch_gemm_simt<T, Cfg, false, true, SPLIT>(p, plan, stream);
    else launch_gemm_simt<T, Cfg, false, false, SPLIT>(p, plan, stream);
  }
}

template <typename T>
void gemm_typed(const GemmPlan& plan, const void* a, const void* b, const void* bias, void* c, int64_t M, int64_t N,
                int64_t K, Act act, void* scratch, int device, cudaStream_t stream) {
  // Members in declaration order; strides and vector flags as the plan normalised / decided them.
  const GemmParams<T> p0{static_cast<const T*>(a), static_cast<const T*>(b), static_cast<const T*>(bias),
                        static_cast<T*>(c), plan.sam, plan.sak, plan.sbk, plan.sbn, plan.ldc, M, N, K,
                        static_cast<int>(act), plan.a_vec, plan.b_vec, plan.c_vec, static_cast<float*>(scratch),
                        plan.ldw, plan.k_chunk};
  const bool split = plan.splits > 1;
  // Tensor-core tiles without split-K: a smooth activation runs as a second pass (act_rows_kernel).
  const bool act_after = plan.tensor_cores && !split && static_cast<int>(act) > static_cast<int>(Act::ReLU6);
  GemmParams<T> p = p0;
  if (act_after) p.act = static_cast<int>(Act::None);
  const auto no_split_kernel = [] { throw std::logic_error("gemm: split-K planned for a tile without a split kernel"); };
  if (plan.tensor_cores) {
    if constexpr (sizeof(T) == 2) {
      switch (plan.config) {
        case GemmConfig::TcLarge:
          if (split) no_split_kernel();
          dispatch_gemm_tc<T, TcLarge, false>(p, plan, device, stream);
          break;
        case GemmConfig::TcMedium:
          if (split) no_split_kernel();
          dispatch_gemm_tc<T, TcMedium, false>(p, plan, device, stream);
          break;
        case GemmConfig::TcSmall:
          if (split) dispatch_gemm_tc<T, TcSmall, true>(p, plan, device, stream);
          else dispatch_gemm_tc<T, TcSmall, false>(p, plan, device, stream);
          break;
        default: throw std::logic_error("gemm: tensor-core plan with a SIMT tile");
      }
    } else {
      throw std::logic_error("gemm: tensor-core kernel planned for float32");
    }
  } else if (plan.config == GemmConfig::SimtLarge) {
    if (split) no_split_kernel();
    dispatch_gemm_simt<T, SimtLarge, false>(p, plan, stream);
  } else if (plan.config == GemmConfig::SimtSmall) {
    if (split) dispatch_gemm_simt<T, SimtSmall, true>(p, plan, stream);
    else dispatch_gemm_simt<T, SimtSmall, false>(p, plan, stream);
  } else {
    throw std::logic_error("gemm: SIMT plan with a tensor-core tile");
  }
  if (split) {
    // Same stream, so the reduction starts after every split has written its partial.
    gemm_splitk_reduce_kernel<T><<<dim3(static_cast<unsigned>(plan.reduce_ctas)), kGemmReduceThreads, 0, stream>>>(
        p, static_cast<int>(plan.splits));
    PYIMGCLS_CUDA_CHECK_LAUNCH();
  }
  if (act_after && M > 0 && N > 0) {
    const int64_t ctas = std::min<int64_t>((M * N + kActThreads - 1) / kActThreads, 65535);
    act_rows_kernel<T><<<dim3(static_cast<unsigned>(ctas)), kActThreads, 0, stream>>>(static_cast<T*>(c), M, N,
                                                                                        plan.ldc, static_cast<int>(act));
    PYIMGCLS_CUDA_CHECK_LAUNCH();
  }
}

template <typename T>
void bias_act_bwd_typed(const LaunchPlan& plan, const void* grad, const void* out, void* grad_pre, void* grad_bias,
                        int64_t M, int64_t N, Act act, cudaStream_t stream) {
  const int sw = plan.tile_n;
  const dim3 block(sw, kBwdThreads / sw);
  bias_act_bwd_kernel<T><<<dim3(static_cast<unsigned>(plan.ctas)), block, 0, stream>>>(
      static_cast<const T*>(grad), static_cast<const T*>(out), static_cast<T*>(grad_pre),
      static_cast<T*>(grad_bias), M, N, static_cast<int>(act));
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

void gemm_planned(DType dt, const GemmPlan& plan, const void* a, const void* b, const void* bias, void* c, int64_t M,
                  int64_t N, int64_t K, Act act, void* scratch, int64_t scratch_floats, int device,
                  uintptr_t stream) {
  if (plan.launches == 0) return;
  if ((K > 0 && (a == nullptr || b == nullptr)) || c == nullptr)
    throw std::invalid_argument("gemm: null data pointer");
  if (plan.splits > 1 && (scratch == nullptr || scratch_floats < plan.scratch || !aligned_to(scratch, 16)))
    throw std::invalid_argument("gemm: split-K (" + std::to_string(plan.splits) + " splits) needs " +
                                std::to_string(plan.scratch) + " float32 scratch elements at a 16-byte aligned "
                                "address, got " + std::to_string(scratch_floats) +
                                (scratch == nullptr ? " (null)" : ""));
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dt, "GEMM", [&](auto tag) {
    gemm_typed<decltype(tag)>(plan, a, b, bias, c, M, N, K, act, scratch, device, st);
  });
}

uintptr_t addr(const void* p) { return reinterpret_cast<uintptr_t>(p); }

}  // namespace

void gemm(DType dt, const void* a, int64_t sam, int64_t sak, const void* b, int64_t sbk, int64_t sbn,
          const void* bias, void* c, int64_t ldc, int64_t M, int64_t N, int64_t K, Act act, int sm_count,
          void* scratch, int64_t scratch_floats, int device, uintptr_t stream) {
  const GemmPlan plan = gemm_plan(dt, addr(a), sam, sak, addr(b), sbk, sbn, addr(c), ldc, M, N, K, sm_count);
  const DeviceGuard device_guard(device);
  gemm_planned(dt, plan, a, b, bias, c, M, N, K, act, scratch, scratch_floats, device, stream);
}

// ---------------------------------------------------------------------------------------------
// Standalone activation over n dense elements (ops.activation; the training path of silu /
// hardswish / hardsigmoid): act_fwd_kernel y = act(x), act_bwd_kernel gx = act_grad(g, s) (common.cuh).
// Grid-stride loop, kActThreads threads per CTA, fp32 math. Memory-bound: bytes 2n (fwd) / 3n (bwd)
// times sizeof(T); FLOPs ~ 4n plus n expf for silu / sigmoid.
// ---------------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kActThreads) act_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n,
                                                               int act) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = from_float<T>(apply_act(to_float(x[i]), act));
}

template <typename T>
__global__ void __launch_bounds__(kActThreads) act_bwd_kernel(const T* __restrict__ g, const T* __restrict__ s,
                                                               T* __restrict__ gx, int64_t n, int act) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    gx[i] = from_float<T>(act_grad(to_float(g[i]), to_float(s[i]), act));
}

void act_fwd(DType dt, const void* x, void* y, int64_t n, Act act, int device, uintptr_t stream) {
  const LaunchPlan plan = act_plan(dt, n, false);
  if (plan.launches == 0) return;
  const DeviceGuard device_guard(device);
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dt, "act_fwd", [&](auto tag) {
    using T = decltype(tag);
    act_fwd_kernel<T><<<static_cast<unsigned>(plan.ctas), kActThreads, 0, st>>>(
        static_cast<const T*>(x), static_cast<T*>(y), n, static_cast<int>(act));
  });
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

void act_bwd(DType dt, const void* grad, const void* saved, void* grad_in, int64_t n, Act act, int device,
             uintptr_t stream) {
  const LaunchPlan plan = act_plan(dt, n, true);
  if (plan.launches == 0) return;
  const DeviceGuard device_guard(device);
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dt, "act_bwd", [&](auto tag) {
    using T = decltype(tag);
    act_bwd_kernel<T><<<static_cast<unsigned>(plan.ctas), kActThreads, 0, st>>>(
        static_cast<const T*>(grad), static_cast<const T*>(saved), static_cast<T*>(grad_in), n,
        static_cast<int>(act));
  });
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

void gemm(DType dt, const void* a, int64_t sam, int64_t sak, const void* b, int64_t sbk, int64_t sbn,
          const void* bias, void* c, int64_t ldc, int64_t M, int64_t N, int64_t K, Act act, int device,
          uintptr_t stream) {
  if (M < 0 || N < 0 || K < 0)
    throw std::invalid_argument("gemm: negative size M=" + std::to_string(M) + " N=" + std::to_string(N) +
                                " K=" + std::to_string(K));
  const DeviceGuard device_guard(device);
  const GemmPlan plan = gemm_plan(dt, addr(a), sam, sak, addr(b), sbk, sbn, addr(c), ldc, M, N, K,
                                  sm_count(device), /*split_k=*/false);
  gemm_planned(dt, plan, a, b, bias, c, M, N, K, act, nullptr, 0, device, stream);
}

void bias_act_bwd(DType dt, const void* grad, const void* out, void* grad_pre, void* grad_bias, int64_t M,
                  int64_t N, Act act, int device, uintptr_t stream) {
  const LaunchPlan plan = bias_act_bwd_plan(dt, M, N, grad_bias != nullptr);
  const DeviceGuard device_guard(device);
  if (plan.launches == 0) return;
  if (M > 0 && grad == nullptr) throw std::invalid_argument("bias_act_bwd: grad is null");
  if (act != Act::None && M > 0 && out == nullptr)
    throw std::invalid_argument("bias_act_bwd: out (or the pre-activation) is required with an activation");
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dt, "bias_act_bwd", [&](auto tag) {
    bias_act_bwd_typed<decltype(tag)>(plan, grad, out, grad_pre, grad_bias, M, N, act, st);
  });
}

}  // namespace pyimgcls::cuda
