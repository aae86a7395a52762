// Index maps of the sm_80 tensor-core GEMM (csrc/cuda/gemm.cu, gemm_fwd_kernel), written once and
// compiled twice: by nvcc into the kernel and by g++ into its CPU emulation
// (tests/emu/gemm_tc_emu.cpp, run by tests/test_tc_emulation.py). The emulator implements the
// PTX instructions (cp.async zero-fill and wait_group, ldmatrix .x4 / .trans, mma.m16n8k16
// fragments) from the PTX ISA tables and feeds them the addresses these functions produce, so a
// wrong lane map, swizzle or chunk assignment here fails a CPU test instead of only a GPU one; and
// since the kernel calls the same functions, the emulated maps cannot drift from the real ones.
//
// Plain C++17 when not compiled by nvcc: no CUDA header, no device intrinsic.
#pragma once
#include <cstdint>

#include "../common.h"  // PYIMGCLS_HD

namespace pyimgcls::cuda::tc {

// Tile configuration of gemm_fwd_kernel: a CTA computes a BM x BN tile of C walking K in BK = 32
// slices through a STAGES-deep ring of shared [A | B] slices, WARPS_M x WARPS_N warps each owning a
// WTM x WTN warp tile of MT x NT m16n8 MMA tiles.
template <int BM_, int BN_, int WARPS_M_, int WARPS_N_, int STAGES_, int MIN_BLOCKS_>
struct TcConfig {
  static constexpr int BM = BM_, BN = BN_, BK = 32;
  static constexpr int WARPS_M = WARPS_M_, WARPS_N = WARPS_N_, STAGES = STAGES_;
  static constexpr int MIN_BLOCKS = MIN_BLOCKS_;
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  static constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // warp tile
  static constexpr int MT = WTM / 16, NT = WTN / 8;             // m16n8 MMA tiles per warp
  static constexpr int A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2;
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
  static constexpr int PIPE_BYTES = STAGES * STAGE_BYTES;
  static constexpr int C_LD = BN + 8;  // staging row pitch (elements): +16 B keeps the fragment
                                       // writes of 8 rows x 4 threads on 32 distinct banks
  static constexpr int C_BYTES = BM * C_LD * 2;
  static constexpr int SMEM_BYTES = PIPE_BYTES > C_BYTES ? PIPE_BYTES : C_BYTES;
  // cp.async groups a thread may leave pending at the top of main-loop iteration kt: STAGES-1+kt
  // groups are committed by then (group i holds slice i), so at most STAGES-2 pending means slice
  // kt has landed.
  static constexpr int WAIT_PENDING = STAGES - 2;
  static_assert(BM % (16 * WARPS_M) == 0 && BN % (16 * WARPS_N) == 0, "warp tile must be 16-aligned");
  static_assert(NT % 2 == 0, "B fragments are loaded two n8 tiles at a time");
  static_assert((BM * BK / 8) % THREADS == 0 && (BN * BK / 8) % THREADS == 0, "copy split");
  static_assert((BM * BN / 8) % THREADS == 0, "epilogue split");
  static_assert(BM % 32 == 0 && BN % 32 == 0 && STAGES >= 2, "tile shape");
};

// 128x128x32, 8 warps as 2 (M) x 4 (N), warp tile 64x32 (4 x 4 MMA tiles, 64 fp32 accumulators
// per thread), 4 stages = 64 KB of shared memory; two CTAs per SM.
using TcLarge = TcConfig<128, 128, 2, 4, 4, 2>;
// 64x128x32, 4 warps as 1 x 4, warp tile 64x32 as in TcLarge, 4 stages = 48 KB.
using TcMedium = TcConfig<64, 128, 1, 4, 4, 4>;
// 64x64x32, 4 warps as 2 x 2, warp tile 32x32 (2 x 4 MMA tiles), 4 stages = 32 KB.
using TcSmall = TcConfig<64, 64, 2, 2, 4, 4>;

// Number of elements of a run of `len` starting at `start` that lie below `end`, clamped to [0, len]:
// the valid elements of a partial chunk (the cp.async src-size is this times the element size).
PYIMGCLS_HD int clamp_count(int64_t end, int64_t start, int len) {
  const int64_t r = end - start;
  return r <= 0 ? 0 : (r >= len ? len : static_cast<int>(r));
}

// A stored row of a shared tile and a 16-byte (8-element) chunk of it.
struct RowChunk {
  int row, ch;
};

// Byte offset of 16-byte chunk `ch` of row `row` in a shared tile whose rows are CH chunks long.
// Chunks are XOR-swizzled inside each 128-byte line (8 chunks = all 32 banks), chosen so that the
// 8 rows an ldmatrix phase reads at one chunk column, and the 8 consecutive chunks a quarter-warp
// writes with cp.async, each land on 8 distinct bank groups.
template <int CH>
PYIMGCLS_HD uint32_t swz(int row, int ch) {
  if constexpr (CH == 4) {
    // 64-byte rows: rows 2i and 2i+1 share line i; XOR the 3-bit in-line index with the line.
    const int line = row >> 1;
    const int w = ((row & 1) << 2) | ch;
    return static_cast<uint32_t>((line * 8 + (w ^ (line & 7))) * 16);
  } else {
    static_assert(CH % 8 == 0, "rows must be 64 bytes or a multiple of 128 bytes");
    return static_cast<uint32_t>((row * CH + (ch ^ (row & 7))) * 16);
  }
}

// Chunk c (0 <= c < rows * CH) of a tile walked row by row, CH chunks per row: the cp.async copy
// of a BK-slice (thread tid takes chunks tid, tid + THREADS, ...; CH = 4 for a K-contiguous
// [R][BK] slice, R / 8 for a [BK][R] one) and the epilogue's copy-out of the staging tile.
template <int CH>
PYIMGCLS_HD RowChunk chunk_row_col(int c) {
  if constexpr (CH == 4) return {c >> 2, c & 3};
  else return {c / CH, c % CH};
}

// ldmatrix.x4 row addresses: lanes 8i..8i+7 address the 8 rows of matrix i. Each map gives lane's
// stored row and chunk as offsets from the fragment's first stored row and first chunk.
//
// A fragment of an m16 tile, K-contiguous [BM][BK] tile (plain ldmatrix): matrices 0..3 = (rows
// 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15) = a[0..3]. Offsets from
// (m16 tile row, k-chunk 2*ks).
PYIMGCLS_HD RowChunk ldsm_a_kc(int lane) { return {lane & 15, lane >> 4}; }
// Same fragment from an M-contiguous [BK][BM] tile (ldmatrix .trans, stored rows are k): offsets
// from (k row 16*ks, m-chunk of the m16 tile).
PYIMGCLS_HD RowChunk ldsm_a_mc(int lane) { return {(lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1}; }
// B fragments of a pair of n8 tiles: matrices 0..3 = (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15,
// k 0-7), (n 8-15, k 8-15) = b[2jp][0], b[2jp][1], b[2jp+1][0], b[2jp+1][1].
// K-contiguous [BN][BK] tile (plain ldmatrix, stored rows are n): offsets from (n of the pair,
// k-chunk 2*ks).
PYIMGCLS_HD RowChunk ldsm_b_kc(int lane) { return {(lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1}; }
// N-contiguous [BK][BN] tile (ldmatrix .trans, stored rows are k): offsets from (k row 16*ks,
// n-chunk of the pair).
PYIMGCLS_HD RowChunk ldsm_b_nc(int lane) { return {(lane & 7) + (((lane >> 3) & 1) << 3), lane >> 4}; }

// Element of the m16n8 tile that accumulator register r (0..3) of `lane` holds, as the epilogue
// stores it: registers 0, 1 are written as one pair at (row, col), (row, col + 1) of acc_frag(lane,
// 0), registers 2, 3 likewise at acc_frag(lane, 2).
struct RowCol {
  int row, col;
};
PYIMGCLS_HD RowCol acc_frag(int lane, int r) { return {(lane >> 2) + ((r >> 1) << 3), 2 * (lane & 3) + (r & 1)}; }

}  // namespace pyimgcls::cuda::tc
