// CPU emulation of the tensor-core GEMM data path (csrc/cuda/gemm.cu, gemm_fwd_kernel), built by
// tests/test_tc_emulation.py with g++ (no CUDA headers, no GPU).
//
// What is emulated and where each part comes from
//   Index maps (swizzle, cp.async chunk -> (row, chunk), partial-chunk element counts, ldmatrix
//     lane row addresses, accumulator register -> (row, col), tile configurations): called from
//     csrc/cuda/tc_maps.h, the very functions the kernel calls.
//   Control flow of one CTA (prologue of STAGES-1 commits, per-iteration wait / barrier / refill /
//     commit, fragment loads and MMAs, wait<0> + staging + copy-out): a transcription of
//     gemm_fwd_kernel, statement by statement, with the kernel's expressions.
//   PTX semantics, from the PTX ISA tables (not from the kernel's comments), in tests/emu/ptx_model.h
//   (shared with tests/emu/conv_tc_emu.cpp):
//     cp.async.cg.shared.global [dst], [src], 16, src-size: reads src-size bytes, fills the rest of
//       the 16 with zeros; completes at an unspecified time before the wait_group that covers its
//       group, so the destination holds undefined bytes (poison here) from issue until then.
//     cp.async.commit_group: the thread's uncommitted copies become one group (possibly empty).
//     cp.async.wait_group N: the thread's groups except the N most recent are complete and visible
//       to it; bar.sync then makes them visible to the CTA (until then: poison to other threads).
//     ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 (PTX ISA 9.7.14.5.15): lanes 8i..8i+7
//       supply the 8 row addresses of matrix i; without .trans lane t receives row t/4, elements
//       2(t%4) and 2(t%4)+1 in register i (lower element in the low half); with .trans it receives
//       elements (2(t%4), t/4) and (2(t%4)+1, t/4) of the 8x8 matrix whose rows were addressed.
//     mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16} (PTX ISA 9.7.14.5.8), g = lane>>2, t = lane%4:
//       A: a0..a7 in 4 registers (a_{2r}, a_{2r+1} in register r, low half first),
//          row = g for i in {0,1,4,5}, g+8 otherwise; col = 2t + (i&1) + (i >= 4 ? 8 : 0).
//       B: b0..b3 in 2 registers, row (k) = 2t + (i&1) + (i >= 2 ? 8 : 0), col (n) = g.
//       C/D: c0..c3, row = g + (i >= 2 ? 8 : 0), col = 2t + (i&1).
//     Source: the PTX ISA (https://docs.nvidia.com/cuda/parallel-thread-execution/), sections on
//     cp.async / cp.async.commit_group / cp.async.wait_group, "Matrix Fragments for mma.m16n8k16
//     with floating point type" (9.7.14.5.8 in recent versions) and ldmatrix (9.7.14.5.15).
//   Values: elements are small integers (exact in fp16 / bf16 and in double), accumulation is in
//     double, so any result other than the triple-loop reference is a bug, not rounding.
//
// Checks per case: C equals the reference exactly; every C element inside [M, N] is written
//   exactly once and nothing outside it (ldc padding included); every global read of a cp.async
//   lies inside its operand's allocation and is 16-byte aligned; shared accesses are aligned and
//   inside the ring / staging tile; no poison (unlanded, unpublished or never written data)
//   reaches an output; no copy is pending when the ring is reused for staging. Bank conflicts of
//   the cp.async stores, ldmatrix phases, staging stores and copy-out reads are counted and, with
//   --strict-banks, fail the case (the kernel's comments promise none).
//
// Planted bugs (only for the test's mutation cases; never set by a real build), each an edit of
// one shared map or of the pipeline depth as the kernel would see it:
//   EMU_PLANT_LANE=1..4  swap lanes 1 and 2 in ldsm_a_kc / ldsm_a_mc / ldsm_b_kc / ldsm_b_nc
//   EMU_PLANT_WAIT       wait_group STAGES-1 instead of STAGES-2
//   EMU_PLANT_SWZ_WIDE   128-byte-row swizzle on 64-byte rows (XOR reaches the next row)
//   EMU_PLANT_SWZ_NONE   no XOR at all (correct data, bank conflicts)
//   EMU_PLANT_ACC        accumulator rows g and g+8 exchanged in acc_frag
//   EMU_PLANT_CLAMP      partial chunks copy one element too many
// and two that exercise the machine model on the kernel's own control flow:
//   EMU_PLANT_SLOT       the refill goes to the slot being read in the same iteration (a WAR race)
//   EMU_PLANT_NO_BARRIER the main loop's __syncthreads() left out (other threads' copies unseen)
// and two in the PTX model itself, showing that the kernel's maps agree with the tables only as
// written (a model that ignored them would pass anything):
//   EMU_PLANT_MODEL_TRANS     ldmatrix ignores .trans
//   EMU_PLANT_MODEL_AFRAG     mma reads A registers 1 and 2 swapped (a2,a3 <-> a4,a5: rows 8-15 <-> k 8-15)
//
// Usage: gemm_tc_emu [--strict-banks] CFG A_KC B_KC M N K [CFG A_KC B_KC M N K ...]
//   CFG in {large, medium, small}; A_KC, B_KC in {0, 1}. One line per case ("ok ..." or
//   "FAIL ..."); exit status 1 if any case failed, 2 on bad usage.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/tc_maps.h"
#include "ptx_model.h"

namespace tc = pyimgcls::cuda::tc;

namespace {

using namespace emu;

// ---------------------------------------------------------------------------------------------
// The shared maps as this build sees them: the header's, or one of them with a planted bug.
// ---------------------------------------------------------------------------------------------
template <int CH>
uint32_t m_swz(int row, int ch) {
#if defined(EMU_PLANT_SWZ_WIDE)
  if constexpr (CH == 4) return static_cast<uint32_t>((row * CH + (ch ^ (row & 7))) * 16);
#endif
#if defined(EMU_PLANT_SWZ_NONE)
  return static_cast<uint32_t>((row * CH + ch) * 16);
#endif
  return tc::swz<CH>(row, ch);
}

#if defined(EMU_PLANT_LANE)
int planted_lane(int lane, int which) {
  if (which != EMU_PLANT_LANE) return lane;
  return lane == 1 ? 2 : (lane == 2 ? 1 : lane);
}
#else
int planted_lane(int lane, int) { return lane; }
#endif
tc::RowChunk m_ldsm_a_kc(int lane) { return tc::ldsm_a_kc(planted_lane(lane, 1)); }
tc::RowChunk m_ldsm_a_mc(int lane) { return tc::ldsm_a_mc(planted_lane(lane, 2)); }
tc::RowChunk m_ldsm_b_kc(int lane) { return tc::ldsm_b_kc(planted_lane(lane, 3)); }
tc::RowChunk m_ldsm_b_nc(int lane) { return tc::ldsm_b_nc(planted_lane(lane, 4)); }

tc::RowCol m_acc_frag(int lane, int r) {
#if defined(EMU_PLANT_ACC)
  r ^= 2;
#endif
  return tc::acc_frag(lane, r);
}

int m_clamp_count(int64_t end, int64_t start, int len) {
#if defined(EMU_PLANT_CLAMP)
  const int c = tc::clamp_count(end, start, len);
  return c > 0 && c < len ? c + 1 : c;
#else
  return tc::clamp_count(end, start, len);
#endif
}

template <typename Cfg>
constexpr int wait_pending() {
#if defined(EMU_PLANT_WAIT)
  return Cfg::WAIT_PENDING + 1;
#else
  return Cfg::WAIT_PENDING;
#endif
}

// ---------------------------------------------------------------------------------------------
// gemm_fwd_kernel, one CTA at a time.
// ---------------------------------------------------------------------------------------------
struct Problem {
  int64_t M, N, K;
  bool a_kc, b_kc;
  Global a, b;         // A[m, k] = a[m*lda + k] (a_kc) or a[k*lda + m]; B[k, n] = b[n*ldb + k] (b_kc) or b[k*ldb + n]
  int64_t lda, ldb;
  std::vector<double> bias;  // [N]
  int64_t ldc;
  std::vector<double> c;     // [M rows of ldc], poisoned before the run
  std::vector<int> c_writes;

  double A(int64_t m, int64_t k) const { return a.data[a_kc ? m * lda + k : k * lda + m]; }
  double B(int64_t k, int64_t n) const { return b.data[b_kc ? n * ldb + k : k * ldb + n]; }
};

// load_tile_async<T, THREADS, R, K_CONTIG> for thread tid.
template <int THREADS, int R, bool K_CONTIG>
void load_tile_async(Shared& sm, AsyncState& as, uint32_t s_tile, const Global& g, int64_t ld, int64_t outer0,
                     int64_t outer_size, int64_t k0, int64_t K, int tid, Counters& cnt, uint32_t (*quarter)[8]) {
  constexpr int BK = 32;
  constexpr int CHUNKS = R * BK / 8;
  for (int it = 0; it < CHUNKS / THREADS; ++it) {
    const int c = tid + it * THREADS;
    uint32_t dst;
    int valid;
    int64_t off;
    if constexpr (K_CONTIG) {
      const auto [row, ch] = tc::chunk_row_col<4>(c);
      const int64_t o = outer0 + row, k = k0 + ch * 8;
      valid = o < outer_size ? m_clamp_count(K, k, 8) : 0;
      off = o * ld + k;
      dst = s_tile + m_swz<4>(row, ch);
    } else {
      constexpr int CH = R / 8;
      const auto [row, ch] = tc::chunk_row_col<CH>(c);
      const int64_t k = k0 + row, o = outer0 + ch * 8;
      valid = k < K ? m_clamp_count(outer_size, o, 8) : 0;
      off = k * ld + o;
      dst = s_tile + m_swz<CH>(row, ch);
    }
    cp_async_16(sm, as, dst, g, valid > 0 ? off : 0, valid * 2);
    quarter[it][tid % 8] = dst;
    if (tid % 8 == 7 && chunks_conflict(quarter[it])) ++cnt.cp_async_conflicts;
  }
}

template <typename Cfg, bool A_KC, bool B_KC>
void run_cta(Problem& p, int64_t m0, int64_t n0, Counters& cnt) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, STAGES = Cfg::STAGES;
  constexpr int THREADS = Cfg::THREADS, MT = Cfg::MT, NT = Cfg::NT, WARPS = THREADS / 32;
  static_assert(Cfg::C_BYTES <= Cfg::SMEM_BYTES && Cfg::PIPE_BYTES <= Cfg::SMEM_BYTES, "shared layout");

  Shared sm(Cfg::SMEM_BYTES);
  std::vector<AsyncState> as(THREADS);
  const int64_t lda = p.lda, ldb = p.ldb;
  const uint32_t s_base = 0;
  const int k_tiles = static_cast<int>((p.K + BK - 1) / BK);

  // One tid's load_stage; quarter-warp destinations collected for the bank-conflict count.
  constexpr int A_IT = BM * BK / 8 / THREADS, B_IT = BN * BK / 8 / THREADS;
  uint32_t qa[A_IT][8], qb[B_IT][8];
  auto load_stage = [&](int tid, int stage, int kt) {
    const uint32_t s_a = s_base + stage * Cfg::STAGE_BYTES;
    const int64_t k0 = static_cast<int64_t>(kt) * BK;
    load_tile_async<THREADS, BM, A_KC>(sm, as[tid], s_a, p.a, lda, m0, p.M, k0, p.K, tid, cnt, qa);
    load_tile_async<THREADS, BN, B_KC>(sm, as[tid], s_a + Cfg::A_BYTES, p.b, ldb, n0, p.N, k0, p.K, tid, cnt, qb);
  };

  // acc[warp][i][j][lane][r]
  std::vector<double> acc_store(static_cast<size_t>(WARPS) * MT * NT * 32 * 4, 0.0);
  auto acc = [&](int warp, int i, int j) -> double(&)[32][4] {
    return *reinterpret_cast<double(*)[32][4]>(&acc_store[((static_cast<size_t>(warp) * MT + i) * NT + j) * 128]);
  };

  // 2. Prologue.
  for (int s = 0; s < STAGES - 1; ++s)
    for (int tid = 0; tid < THREADS; ++tid) {
      if (s < k_tiles) load_stage(tid, s, s);
      cp_async_commit(as[tid]);
    }

  // 3. Main loop. Between two barriers: every thread's wait, the barrier, every thread's refill
  //    (its destination undefined from issue on), then every warp's reads of slice kt.
  for (int kt = 0; kt < k_tiles; ++kt) {
    for (int tid = 0; tid < THREADS; ++tid) cp_async_wait(sm, as[tid], wait_pending<Cfg>());
#if !defined(EMU_PLANT_NO_BARRIER)
    syncthreads(sm);
#endif
    const int next = kt + STAGES - 1;
#if defined(EMU_PLANT_SLOT)
    const int slot = (next + 1) % STAGES;
#else
    const int slot = next % STAGES;
#endif
    for (int tid = 0; tid < THREADS; ++tid) {
      if (next < k_tiles) load_stage(tid, slot, next);
      cp_async_commit(as[tid]);
    }

    const uint32_t s_a = s_base + (kt % STAGES) * Cfg::STAGE_BYTES;
    const uint32_t s_b = s_a + Cfg::A_BYTES;
    for (int warp = 0; warp < WARPS; ++warp) {
      const int wm0 = (warp / Cfg::WARPS_N) * Cfg::WTM;
      const int wn0 = (warp % Cfg::WARPS_N) * Cfg::WTN;
      for (int ks = 0; ks < BK / 16; ++ks) {
        Reg bf[NT][32][2];
        for (int jp = 0; jp < NT / 2; ++jp) {
          uint32_t addr[32];
          for (int lane = 0; lane < 32; ++lane) {
            if constexpr (B_KC) {
              const tc::RowChunk l = m_ldsm_b_kc(lane);
              const int n = wn0 + jp * 16 + l.row;
              addr[lane] = s_b + m_swz<4>(n, ks * 2 + l.ch);
            } else {
              const tc::RowChunk l = m_ldsm_b_nc(lane);
              const int krow = ks * 16 + l.row;
              const int n = wn0 + jp * 16 + (l.ch << 3);
              addr[lane] = s_b + m_swz<BN / 8>(krow, n >> 3);
            }
          }
          Reg r[32][4];
          ldmatrix_x4(sm, addr, !B_KC, r, cnt);
          for (int lane = 0; lane < 32; ++lane) {
            bf[2 * jp][lane][0] = r[lane][0];
            bf[2 * jp][lane][1] = r[lane][1];
            bf[2 * jp + 1][lane][0] = r[lane][2];
            bf[2 * jp + 1][lane][1] = r[lane][3];
          }
        }
        for (int i = 0; i < MT; ++i) {
          uint32_t addr[32];
          for (int lane = 0; lane < 32; ++lane) {
            if constexpr (A_KC) {
              const tc::RowChunk l = m_ldsm_a_kc(lane);
              const int row = wm0 + i * 16 + l.row;
              addr[lane] = s_a + m_swz<4>(row, ks * 2 + l.ch);
            } else {
              const tc::RowChunk l = m_ldsm_a_mc(lane);
              const int krow = ks * 16 + l.row;
              const int m = wm0 + i * 16 + (l.ch << 3);
              addr[lane] = s_a + m_swz<BM / 8>(krow, m >> 3);
            }
          }
          Reg af[32][4];
          ldmatrix_x4(sm, addr, !A_KC, af, cnt);
          for (int j = 0; j < NT; ++j) mma_16816(acc(warp, i, j), af, bf[j]);
        }
      }
    }
  }

  // 4. Epilogue: drain, barrier, then the ring is reused as the [BM][C_LD] staging tile.
  for (int tid = 0; tid < THREADS; ++tid) {
    cp_async_wait(sm, as[tid], 0);
    if (!as[tid].uncommitted.empty() || !as[tid].pending.empty())
      fail("cp.async copies still in flight when the ring becomes the staging tile");
  }
  syncthreads(sm);
  constexpr int C_ELEMS = Cfg::C_BYTES / 2;
  std::vector<double> stage(C_ELEMS, kPoison);
  std::vector<int> stage_writes(C_ELEMS, 0);
  auto stage_store2 = [&](int elem, double v0, double v1) {
    if (elem < 0 || elem + 2 > C_ELEMS || (elem * 2) % 4 != 0)
      fail("staging store at element " + std::to_string(elem) + " misaligned or outside the staging tile");
    stage[elem] = v0;
    stage[elem + 1] = v1;
    ++stage_writes[elem];
    ++stage_writes[elem + 1];
  };

  // 4a. Fragments -> staging tile (bias added; the activation is not index arithmetic).
  for (int warp = 0; warp < WARPS; ++warp) {
    const int wm0 = (warp / Cfg::WARPS_N) * Cfg::WTM;
    const int wn0 = (warp % Cfg::WARPS_N) * Cfg::WTN;
    for (int j = 0; j < NT; ++j)
      for (int i = 0; i < MT; ++i) {
        uint32_t word_lo[32], word_hi[32];
        for (int lane = 0; lane < 32; ++lane) {
          const tc::RowCol f_lo = m_acc_frag(lane, 0), f_hi = m_acc_frag(lane, 2);
          const int col = wn0 + j * 8 + f_lo.col;
          const int64_t gcol = n0 + col;
          const double b0 = gcol < p.N ? p.bias[gcol] : 0.0, b1 = gcol + 1 < p.N ? p.bias[gcol + 1] : 0.0;
          const int row = wm0 + i * 16 + f_lo.row;
          const int row_hi = wm0 + i * 16 + f_hi.row, col_hi = wn0 + j * 8 + f_hi.col;
          const double(&d)[32][4] = acc(warp, i, j);
          stage_store2(row * Cfg::C_LD + col, d[lane][0] + b0, d[lane][1] + b1);
          stage_store2(row_hi * Cfg::C_LD + col_hi, d[lane][2] + b0, d[lane][3] + b1);
          word_lo[lane] = static_cast<uint32_t>(row * Cfg::C_LD + col) / 2;
          word_hi[lane] = static_cast<uint32_t>(row_hi * Cfg::C_LD + col_hi) / 2;
        }
        for (const uint32_t* w : {word_lo, word_hi}) {
          unsigned long long seen = 0;
          for (int lane = 0; lane < 32; ++lane) {
            const unsigned long long bit = 1ull << (w[lane] % 32);
            if (seen & bit) {
              ++cnt.stage_conflicts;
              break;
            }
            seen |= bit;
          }
        }
      }
  }

  // 4b. Coalesced copy-out.
  constexpr int CPR = BN / 8;
  for (int it = 0; it < BM * CPR / THREADS; ++it) {
    uint32_t quarter[THREADS / 8][8];
    for (int tid = 0; tid < THREADS; ++tid) {
      const int c = tid + it * THREADS;
      const auto [row, cc] = tc::chunk_row_col<CPR>(c);
      const int elem = row * Cfg::C_LD + cc * 8;
      quarter[tid / 8][tid % 8] = static_cast<uint32_t>(elem) * 2;
      const int64_t grow = m0 + row, gcol = n0 + cc * 8;
      if (grow < p.M && gcol < p.N) {
        if (elem < 0 || elem + 8 > C_ELEMS || (elem * 2) % 16 != 0)
          fail("copy-out read at staging element " + std::to_string(elem) + " misaligned or outside the tile");
        const int n_valid = m_clamp_count(p.N, gcol, 8);
        for (int q = 0; q < 8; ++q)
          if (q < n_valid) {
            if (grow * p.ldc + gcol + q >= static_cast<int64_t>(p.c.size()))
              fail("copy-out writes past the end of C");
            const double v = stage_writes[elem + q] == 1 ? stage[elem + q] : kPoison;
            p.c[grow * p.ldc + gcol + q] = v;
            ++p.c_writes[grow * p.ldc + gcol + q];
          }
      }
    }
    for (auto& q : quarter)
      if (chunks_conflict(q)) ++cnt.copyout_conflicts;
  }
}

template <typename Cfg, bool A_KC, bool B_KC>
void run_grid(Problem& p, Counters& cnt) {
  for (int64_t m0 = 0; m0 < p.M; m0 += Cfg::BM)
    for (int64_t n0 = 0; n0 < p.N; n0 += Cfg::BN) run_cta<Cfg, A_KC, B_KC>(p, m0, n0, cnt);
}

template <typename Cfg>
void dispatch(Problem& p, Counters& cnt) {
  if (p.a_kc) {
    if (p.b_kc) run_grid<Cfg, true, true>(p, cnt);
    else run_grid<Cfg, true, false>(p, cnt);
  } else {
    if (p.b_kc) run_grid<Cfg, false, true>(p, cnt);
    else run_grid<Cfg, false, false>(p, cnt);
  }
}

int64_t round8(int64_t v) { return (v + 7) / 8 * 8; }

// Operands with the host's guarantees (leading dimension a multiple of 8 elements, 16-byte aligned
// base) and nothing more: the leading dimension has 8 elements of padding filled with values that
// must never reach C, and the allocation ends right after the last element of the matrix.
Global make_operand(int64_t rows, int64_t cols, int64_t ld, std::mt19937& rng) {
  Global g;
  if (rows == 0 || cols == 0) return g;
  g.data.assign(static_cast<size_t>((rows - 1) * ld + cols), 0);
  std::uniform_int_distribution<int> val(-4, 4);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < ld && r * ld + c < static_cast<int64_t>(g.data.size()); ++c)
      g.data[r * ld + c] = static_cast<int16_t>(c < cols ? val(rng) : 1000 + static_cast<int>(c));
  return g;
}

bool run_case(const std::string& cfg, bool a_kc, bool b_kc, int64_t M, int64_t N, int64_t K, bool strict_banks) {
  std::mt19937 rng(static_cast<unsigned>(M * 1000003 + N * 10007 + K * 101 + a_kc * 2 + b_kc));
  Problem p;
  p.M = M;
  p.N = N;
  p.K = K;
  p.a_kc = a_kc;
  p.b_kc = b_kc;
  p.lda = round8(a_kc ? K : M) + 8;
  p.ldb = round8(b_kc ? K : N) + 8;
  p.a = a_kc ? make_operand(M, K, p.lda, rng) : make_operand(K, M, p.lda, rng);
  p.b = b_kc ? make_operand(N, K, p.ldb, rng) : make_operand(K, N, p.ldb, rng);
  std::uniform_int_distribution<int> bval(-8, 8);
  p.bias.resize(N);
  for (auto& v : p.bias) v = bval(rng);
  p.ldc = round8(N) + 8;
  p.c.assign(static_cast<size_t>(M * p.ldc), kPoison);
  p.c_writes.assign(p.c.size(), 0);

  const std::string tag = cfg + " a_kc=" + std::to_string(a_kc) + " b_kc=" + std::to_string(b_kc) +
                          " M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K);
  Counters cnt;
  try {
    if (cfg == "large") dispatch<tc::TcLarge>(p, cnt);
    else if (cfg == "medium") dispatch<tc::TcMedium>(p, cnt);
    else if (cfg == "small") dispatch<tc::TcSmall>(p, cnt);
    else fail("unknown config " + cfg);
  } catch (const EmuError& e) {
    std::printf("FAIL %s: %s\n", tag.c_str(), e.what());
    return false;
  }

  long bad = 0;
  std::string first;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < p.ldc; ++n) {
      const size_t idx = static_cast<size_t>(m * p.ldc + n);
      std::string why;
      if (n >= N) {
        if (p.c_writes[idx] != 0) why = "written outside [M, N]";
      } else if (p.c_writes[idx] != 1) {
        why = "written " + std::to_string(p.c_writes[idx]) + " times";
      } else {
        double ref = p.bias[n];
        for (int64_t k = 0; k < K; ++k) ref += p.A(m, k) * p.B(k, n);
        if (!(p.c[idx] == ref)) why = "got " + std::to_string(p.c[idx]) + " want " + std::to_string(ref);
      }
      if (!why.empty()) {
        if (bad++ == 0) first = "C[" + std::to_string(m) + ", " + std::to_string(n) + "] " + why;
      }
    }
  const std::string banks = " conflicts: cp.async=" + std::to_string(cnt.cp_async_conflicts) +
                            " ldmatrix=" + std::to_string(cnt.ldsm_conflicts) +
                            " staging=" + std::to_string(cnt.stage_conflicts) +
                            " copy-out=" + std::to_string(cnt.copyout_conflicts);
  const bool conflicts = cnt.cp_async_conflicts + cnt.ldsm_conflicts + cnt.stage_conflicts + cnt.copyout_conflicts > 0;
  if (bad > 0) {
    std::printf("FAIL %s: %ld wrong elements, first %s;%s\n", tag.c_str(), bad, first.c_str(), banks.c_str());
    return false;
  }
  if (strict_banks && conflicts) {
    std::printf("FAIL %s: bank conflicts;%s\n", tag.c_str(), banks.c_str());
    return false;
  }
  std::printf("ok %s;%s\n", tag.c_str(), banks.c_str());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int i = 1;
  bool strict_banks = false;
  if (i < argc && std::string(argv[i]) == "--strict-banks") {
    strict_banks = true;
    ++i;
  }
  if (argc - i == 0 || (argc - i) % 6 != 0) {
    std::fprintf(stderr, "usage: %s [--strict-banks] CFG A_KC B_KC M N K [...]\n", argv[0]);
    return 2;
  }
  bool ok = true;
  for (; i < argc; i += 6) {
    const std::string cfg = argv[i];
    const bool a_kc = std::atoi(argv[i + 1]) != 0, b_kc = std::atoi(argv[i + 2]) != 0;
    const int64_t M = std::atoll(argv[i + 3]), N = std::atoll(argv[i + 4]), K = std::atoll(argv[i + 5]);
    if (M < 1 || N < 1 || K < 0) {
      std::fprintf(stderr, "bad sizes M=%lld N=%lld K=%lld\n", static_cast<long long>(M), static_cast<long long>(N),
                   static_cast<long long>(K));
      return 2;
    }
    ok = run_case(cfg, a_kc, b_kc, M, N, K, strict_banks) && ok;
  }
  return ok ? 0 : 1;
}
