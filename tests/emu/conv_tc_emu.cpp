// CPU emulation of the tensor-core implicit-GEMM convolution (csrc/cuda/conv.cu,
// conv2d_igemm_kernel<MODE, T, VEC>) for fwd, dgrad and wgrad, 16-byte cp.async gathers (vec) and
// element gathers (scalar). Built by tests/test_conv_tc_emulation.py with g++ (no CUDA, no GPU).
//
// What is emulated and where each part comes from
//   Index arithmetic of the gathers and stores (ConvIndex, fast division, per-CTA pixel-row table,
//     incremental (tap, channel) walk of GEMM-K, x / dgrad / weight / wgrad operand offsets, GEMM
//     sizes, the vec decision, the shared layout kLD / TC_LDT / TC_PIPE_BYTES / TC_EPI_LD):
//     csrc/cuda/conv.h, the functions and constants the kernel itself calls.
//   ldmatrix lane row addresses and the accumulator fragment map: csrc/cuda/tc_maps.h, which the
//     kernel calls (tc::ldsm_a_kc / ldsm_a_mc / ldsm_b_kc / ldsm_b_nc / acc_frag).
//   Control flow of one CTA (row table, per-thread k positions, prologue of STAGES-1 commits, wait /
//     barrier / refill / commit per k-tile, 2 k16 steps of 4 A + 2 B ldmatrix.x4 and 16 MMAs per
//     warp, drain, two fp32 staging halves, channel-chunk or pixel-major copy-out): a transcription
//     of conv2d_igemm_kernel and load_stage / store_chunk / store_one, statement by statement.
//   PTX semantics (cp.async zero-fill, commit / wait_group visibility, bar.sync, ldmatrix .x4 /
//     .trans, mma.m16n8k16 fragments): tests/emu/ptx_model.h, shared with gemm_tc_emu.cpp, from the
//     PTX ISA tables. Element gathers are st.shared stores visible to other threads after bar.sync.
//   Values: small integers (exact in fp16 / bf16 and double), accumulation in double, so any
//     difference from the plain conv / dgrad / wgrad computed here in double is a bug.
//
// Checks per case: every output element (fwd out, dgrad dx, each split's wgrad scratch cell)
//   written exactly once and nothing else; results equal the reference exactly (wgrad: the sum of
//   the splits, column (i*KW + j)*Cg + c as conv2d_wgrad_reduce_kernel reads it); every global read
//   inside its tensor's allocation (cp.async: 16-byte aligned); shared accesses aligned and inside
//   the ring; no poison (unlanded, unpublished, never written) reaches an output; nothing in flight
//   when the ring becomes the staging tile. ldmatrix bank conflicts are counted and, with
//   --strict-banks, fail the case (kLD / TC_LDT promise none).
//
// Planted bugs (test mutation cases only; never set by a real build):
//   EMU_PLANT_LANE=1..4   lanes 1 and 2 swapped in ldsm_a_kc / ldsm_a_mc / ldsm_b_kc / ldsm_b_nc
//   EMU_PLANT_WAIT        wait_group STAGES-1 instead of STAGES-2
//   EMU_PLANT_ACC         accumulator rows g and g+8 exchanged in acc_frag
//   EMU_PLANT_GATHER=1    x_tap_offset reads the next channel (fwd A, wgrad B)
//   EMU_PLANT_GATHER=2    dgrad_tap_offset without the stride-divisibility test (dgrad A, stride > 1)
//   EMU_PLANT_WALK        the per-thread k position advances BK - 8 per k-tile (fwd / dgrad)
//   EMU_PLANT_LD          unpadded [rows][BK] stages (TC_LD = BK): right numbers, ldmatrix bank conflicts
//
// Usage: conv_tc_emu [--strict-banks] PASS LAYOUT MODE N C H W O KH KW SH SW PH PW DH DW GROUPS SPLITS [...]
//   PASS in {fwd, dgrad, wgrad}; LAYOUT in {cl, nchw, pad} (activations channels_last, NCHW, or NCHW
//   with gaps after every row, plane and image; the weight [O, KH, KW, Cg] for cl (dgrad: out
//   channel fastest), else contiguous [O, Cg, KH, KW]); MODE in {vec, scalar}. One line per case ("ok ..." / "FAIL ..."); exit 1 if any failed, 2 on bad usage.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/conv.h"
#include "cuda/tc_maps.h"
#include "ptx_model.h"

using namespace pyimgcls;
using namespace pyimgcls::cuda;
using namespace emu;

namespace {

// ---------------------------------------------------------------------------------------------
// The shared helpers as this build sees them: the headers', or one with a planted bug.
// ---------------------------------------------------------------------------------------------
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

// Row pitch of the [rows][BK] stages (conv.h's TC_LD; the plant drops the padding: correct data,
// 64-byte rows, ldmatrix phases on 2 bank groups).
constexpr int kLD =
#if defined(EMU_PLANT_LD)
    TC_BK;
#else
    TC_LD;
#endif

// The kernel's cp_async_wait<TC_STAGES - 2>.
constexpr int kWaitPending =
#if defined(EMU_PLANT_WAIT)
    TC_STAGES - 1;
#else
    TC_STAGES - 2;
#endif

int64_t m_x_tap_offset(const ConvIndex& ix, const Strides4& xs, const PixelRC& o, const KPos& k, int g) {
  const int64_t off = x_tap_offset(ix, xs, o, k, g);
#if defined(EMU_PLANT_GATHER) && EMU_PLANT_GATHER == 1
  if (off >= 0) return off + xs.c;
#endif
  return off;
}

int64_t m_dgrad_tap_offset(const ConvIndex& ix, const Strides4& gs, const PixelRC& p, const KPos& k, int g) {
#if defined(EMU_PLANT_GATHER) && EMU_PLANT_GATHER == 2
  if (p.n < 0 || k.i >= ix.KH) return -1;
  const int th = p.y + ix.ph - k.i * ix.dh, tw = p.x + ix.pw - k.j * ix.dw;
  if (th < 0 || tw < 0) return -1;
  const int oh = ix.f_sh.div(th), ow = ix.f_sw.div(tw);
  if (oh >= ix.OH || ow >= ix.OW) return -1;
  return p.n * gs.n + (static_cast<int64_t>(g) * ix.Og + k.c) * gs.c + static_cast<int64_t>(oh) * gs.h +
         static_cast<int64_t>(ow) * gs.w;
#else
  return dgrad_tap_offset(ix, gs, p, k, g);
#endif
}

void m_k_advance(const ConvIndex& ix, KPos& p, int step) {
#if defined(EMU_PLANT_WALK)
  step -= 8;
#endif
  k_advance(ix, p, step);
}

// ---------------------------------------------------------------------------------------------
// IgemmParams as the launchers fill it, with the tensors as emulated global memory.
// ---------------------------------------------------------------------------------------------
struct Params {
  Global a, b;
  Strides4 as{}, bs{}, cs{};
  ConvIndex ix{};
  int M = 0, N = 0, K = 0, k_chunk = 0, splits = 1;
  int64_t b_group = 0;
  bool c_chunks = false;
  std::vector<double> bias;   // fwd: [O]
  std::vector<double> c;      // output allocation, poisoned before the run
  std::vector<int> c_writes;
};

double ld_global(const Global& g, int64_t off) {
  if (off < 0 || off >= static_cast<int64_t>(g.data.size()))
    fail("element gather at " + std::to_string(off) + " outside its tensor");
  return g.data[off];
}

void st_global(Params& p, int64_t idx, double v) {
  if (idx < 0 || idx >= static_cast<int64_t>(p.c.size())) fail("store at " + std::to_string(idx) + " outside the output");
  p.c[idx] = v;
  ++p.c_writes[idx];
}

// a_pixel_offset<MODE>
template <int MODE>
int64_t a_pixel_offset(const Params& p, const PixelRC& px, const KPos& kp, int g) {
  return MODE == kFwd ? m_x_tap_offset(p.ix, p.as, px, kp, g) : m_dgrad_tap_offset(p.ix, p.as, px, kp, g);
}

PixelRC wgrad_pixel(const Params& p, int k, int k_end) {
  return k < k_end ? split_pixel(k, p.ix.OH, p.ix.OW, p.ix.f_OH, p.ix.f_OW) : PixelRC{-1, 0, 0, 0};
}

constexpr int A_STAGE = TC_BM * TC_LD, B_STAGE = TC_BN * TC_LD;  // elements per stage
constexpr uint32_t kSA = 0, kSB = kSA + TC_STAGES * A_STAGE * 2;   // byte addresses in the ring

// load_stage<MODE, T, VEC> for thread tid; sA / sB are byte addresses of the stage.
template <int MODE, bool VEC>
void load_stage(const Params& p, Shared& sm, AsyncState& as, int tid, const std::vector<PixelRC>& rows, int g, int bm,
                int bn, int k0, int k_end, const KPos& kp, const KPos& bcol, uint32_t sA, uint32_t sB,
                std::vector<uint32_t>& issued) {
  auto el = [](uint32_t base, int e) { return base + static_cast<uint32_t>(e) * 2; };
  auto cp = [&](uint32_t dst, const Global& src, int64_t off) {
    cp_async_16(sm, as, dst, src, off >= 0 ? off : 0, off >= 0 ? 16 : 0);
    issued.push_back(dst);
  };
  auto st = [&](uint32_t dst, const Global& src, int64_t off) {
    st_shared_b16(sm, dst, static_cast<int16_t>(off >= 0 ? ld_global(src, off) : 0.0));
  };
  if (MODE != kWgrad && VEC) {
    const int kq = (tid & 3) * 8;
    const bool kin = k0 + kq < k_end;
    for (int it = 0; it < 2; ++it) {
      const int row = (tid >> 2) + it * (TC_THREADS / 4);
      const int64_t off = kin ? a_pixel_offset<MODE>(p, rows[row], kp, g) : -1;
      cp(el(sA, row * kLD + kq), p.a, off);
      const int n = bn + row;
      const int64_t boff = kin && n < p.N ? weight_offset(p.ix, p.bs, p.b_group, n, kp, g) : -1;
      cp(el(sB, row * kLD + kq), p.b, boff);
    }
  } else if (MODE != kWgrad) {
    const int kk = tid & 31;
    const bool kin = k0 + kk < k_end;
    for (int it = 0; it < 16; ++it) {
      const int row = (tid >> 5) + it * 8;
      const int n = bn + row;
      const int64_t off = kin ? a_pixel_offset<MODE>(p, rows[row], kp, g) : -1;
      const int64_t boff = kin && n < p.N ? weight_offset(p.ix, p.bs, p.b_group, n, kp, g) : -1;
      st(el(sA, row * kLD + kk), p.a, off);
      st(el(sB, row * kLD + kk), p.b, boff);
    }
  } else if (VEC) {
    const int mc = (tid & 15) * 8;
    const int m = bm + mc, n = bn + mc;
    for (int it = 0; it < 2; ++it) {
      const int kr = (tid >> 4) + it * (TC_THREADS / 16);
      const PixelRC px = wgrad_pixel(p, k0 + kr, k_end);
      const int64_t off = m < p.M ? wgrad_a_offset(p.ix, p.as, m, px, g) : -1;
      cp(el(sA, kr * TC_LDT + mc), p.a, off);
      const int64_t boff = n < p.N ? m_x_tap_offset(p.ix, p.bs, px, bcol, g) : -1;
      cp(el(sB, kr * TC_LDT + mc), p.b, boff);
    }
  } else {
    const int row = tid & (TC_BM - 1);
    const int m = bm + row, n = bn + row;
    for (int it = 0; it < 16; ++it) {
      const int kk = (tid >> 7) + it * 2;
      const PixelRC px = wgrad_pixel(p, k0 + kk, k_end);
      const int64_t off = m < p.M ? wgrad_a_offset(p.ix, p.as, m, px, g) : -1;
      const int64_t boff = n < p.N ? m_x_tap_offset(p.ix, p.bs, px, bcol, g) : -1;
      st(el(sA, row * kLD + kk), p.a, off);
      st(el(sB, row * kLD + kk), p.b, boff);
    }
  }
}

// store_chunk<MODE, T>: 8 staged values C[m, n0:n0+8] (fewer at the N edge).
template <int MODE>
void store_chunk(Params& p, const PixelRC& px, int g, int s, int m, int n0, const double* staged) {
  const int nv = std::min(8, p.N - n0);
  if (MODE == kWgrad) {
    const int64_t c = s * p.cs.n + (static_cast<int64_t>(g) * p.ix.Og + m) * p.cs.c + n0;
    for (int q = 0; q < nv; ++q) st_global(p, c + q, staged[q]);
    return;
  }
  const int64_t ch0 = static_cast<int64_t>(g) * p.N + n0;
  const int64_t c = px.n * p.cs.n + ch0 * p.cs.c + px.y * p.cs.h + px.x * p.cs.w;
  for (int q = 0; q < nv; ++q) st_global(p, c + q * p.cs.c, staged[q] + (MODE == kFwd ? p.bias[ch0 + q] : 0.0));
}

// store_one<MODE, T>
template <int MODE>
void store_one(Params& p, const PixelRC& px, int g, int s, int m, int n, double v) {
  if (MODE == kWgrad) {
    st_global(p, s * p.cs.n + (static_cast<int64_t>(g) * p.ix.Og + m) * p.cs.c + n, v);
    return;
  }
  const int64_t ch = static_cast<int64_t>(g) * p.N + n;
  if (MODE == kFwd) v += p.bias[ch];
  st_global(p, px.n * p.cs.n + ch * p.cs.c + px.y * p.cs.h + px.x * p.cs.w, v);
}

// conv2d_igemm_kernel<MODE, T, VEC>, block (bx, by, bz).
template <int MODE, bool VEC>
void run_cta(Params& p, int bx, int by, int bz, Counters& cnt) {
  constexpr bool TRANS = MODE == kWgrad && VEC;
  Shared sm(TC_PIPE_BYTES);
  std::vector<AsyncState> as(TC_THREADS);
  std::vector<PixelRC> rows(TC_BM);

  // 1. Block -> tiles, group, split; row table; per-thread k positions.
  const int bm = bx * TC_BM, bn = by * TC_BN;
  const int g = bz / p.splits, s = bz % p.splits;
  const int k_begin = s * p.k_chunk;
  const int k_end = std::min(p.K, k_begin + p.k_chunk);
  const int KT = k_end > k_begin ? (k_end - k_begin + TC_BK - 1) / TC_BK : 0;

  std::vector<KPos> kp(TC_THREADS, KPos{0, 0, 0}), bcol(TC_THREADS, KPos{0, 0, 0});
  if (MODE != kWgrad) {
    for (int r = 0; r < TC_BM; ++r) {  // fill_rows<MODE>
      const int m = bm + r;
      rows[r] = m >= p.M ? PixelRC{-1, 0, 0, 0}
                : MODE == kFwd ? split_pixel(m, p.ix.OH, p.ix.OW, p.ix.f_OH, p.ix.f_OW)
                               : split_pixel(m, p.ix.H, p.ix.W, p.ix.f_H, p.ix.f_W);
    }
    for (int tid = 0; tid < TC_THREADS; ++tid) kp[tid] = k_position(p.ix, k_begin + (VEC ? (tid & 3) * 8 : (tid & 31)));
  } else {
    for (int tid = 0; tid < TC_THREADS; ++tid)
      bcol[tid] = k_position(p.ix, bn + (VEC ? (tid & 15) * 8 : (tid & (TC_BN - 1))));
  }

  constexpr int WARPS = TC_THREADS / 32;
  std::vector<double> acc_store(static_cast<size_t>(WARPS) * 4 * 4 * 32 * 4, 0.0);
  auto acc = [&](int warp, int i, int j) -> double(&)[32][4] {
    return *reinterpret_cast<double(*)[32][4]>(&acc_store[((static_cast<size_t>(warp) * 4 + i) * 4 + j) * 128]);
  };
  auto stage_at = [&](int st, uint32_t base, int per) { return base + static_cast<uint32_t>(st * per * 2); };
  // cp.async destinations of each thread in issue order: the i-th copies of 8 consecutive threads
  // are one quarter-warp shared store (counted, not enforced: the kernel promises conflict-free
  // ldmatrix reads only).
  std::vector<std::vector<uint32_t>> issued(TC_THREADS);
  auto load = [&](int tid, int st, int k0) {
    load_stage<MODE, VEC>(p, sm, as[tid], tid, rows, g, bm, bn, k0, k_end, kp[tid], bcol[tid],
                          stage_at(st, kSA, A_STAGE), stage_at(st, kSB, B_STAGE), issued[tid]);
  };
  auto count_stores = [&]() {
    for (int q = 0; q < TC_THREADS / 8; ++q)
      for (size_t i = 0; i < issued[8 * q].size(); ++i) {
        uint32_t quarter[8];
        for (int t = 0; t < 8; ++t) quarter[t] = issued[8 * q + t].at(i);
        if (chunks_conflict(quarter)) ++cnt.cp_async_conflicts;
      }
    for (auto& v : issued) v.clear();
  };

  // 2. Prologue.
  for (int st = 0; st < TC_STAGES - 1; ++st) {
    for (int tid = 0; tid < TC_THREADS; ++tid) {
      if (st < KT) {
        load(tid, st, k_begin + st * TC_BK);
        if (MODE != kWgrad) m_k_advance(p.ix, kp[tid], TC_BK);
      }
      cp_async_commit(as[tid]);
    }
    count_stores();
  }

  // 3. Main loop.
  for (int kt = 0; kt < KT; ++kt) {
    for (int tid = 0; tid < TC_THREADS; ++tid) cp_async_wait(sm, as[tid], kWaitPending);
    syncthreads(sm);
    const int pre = kt + TC_STAGES - 1;
    for (int tid = 0; tid < TC_THREADS; ++tid) {
      if (pre < KT) {
        load(tid, pre % TC_STAGES, k_begin + pre * TC_BK);
        if (MODE != kWgrad) m_k_advance(p.ix, kp[tid], TC_BK);
      }
      cp_async_commit(as[tid]);
    }
    count_stores();
    const int cs = kt % TC_STAGES;
    const uint32_t tA = stage_at(cs, kSA, A_STAGE), tB = stage_at(cs, kSB, B_STAGE);
    for (int warp = 0; warp < WARPS; ++warp) {
      const int warp_m = warp >> 2, warp_n = warp & 3;
      for (int kk = 0; kk < TC_BK; kk += 16) {
        Reg af[4][32][4], bf[4][32][2];
        for (int mt = 0; mt < 4; ++mt) {
          const int m0 = warp_m * 64 + mt * 16;
          uint32_t addr[32];
          for (int lane = 0; lane < 32; ++lane) {
            int e;
            if (TRANS) {
              const tc::RowChunk la_mc = m_ldsm_a_mc(lane);
              e = (kk + la_mc.row) * TC_LDT + m0 + (la_mc.ch << 3);
            } else {
              const tc::RowChunk la_kc = m_ldsm_a_kc(lane);
              e = (m0 + la_kc.row) * kLD + kk + la_kc.ch * 8;
            }
            addr[lane] = tA + static_cast<uint32_t>(e) * 2;
          }
          ldmatrix_x4(sm, addr, TRANS, af[mt], cnt);
        }
        for (int np = 0; np < 2; ++np) {
          const int n0 = warp_n * 32 + np * 16;
          uint32_t addr[32];
          for (int lane = 0; lane < 32; ++lane) {
            int e;
            if (TRANS) {
              const tc::RowChunk lb_nc = m_ldsm_b_nc(lane);
              e = (kk + lb_nc.row) * TC_LDT + n0 + (lb_nc.ch << 3);
            } else {
              const tc::RowChunk lb_kc = m_ldsm_b_kc(lane);
              e = (n0 + lb_kc.row) * kLD + kk + lb_kc.ch * 8;
            }
            addr[lane] = tB + static_cast<uint32_t>(e) * 2;
          }
          Reg r[32][4];
          ldmatrix_x4(sm, addr, TRANS, r, cnt);
          for (int lane = 0; lane < 32; ++lane) {
            bf[2 * np][lane][0] = r[lane][0];
            bf[2 * np][lane][1] = r[lane][1];
            bf[2 * np + 1][lane][0] = r[lane][2];
            bf[2 * np + 1][lane][1] = r[lane][3];
          }
        }
        for (int mt = 0; mt < 4; ++mt)
          for (int nt = 0; nt < 4; ++nt) mma_16816(acc(warp, mt, nt), af[mt], bf[nt]);
      }
    }
  }

  // 4. Epilogue: drain, barrier, two halves through the fp32 staging tile [64][EPI_LD] in the ring.
  for (int tid = 0; tid < TC_THREADS; ++tid) {
    cp_async_wait(sm, as[tid], 0);
    if (!as[tid].uncommitted.empty() || !as[tid].pending.empty())
      fail("cp.async copies still in flight when the ring becomes the staging tile");
  }
  syncthreads(sm);
  constexpr int STAGE_FLOATS = TC_PIPE_BYTES / 4;
  std::vector<double> stage(STAGE_FLOATS);
  std::vector<int> stage_writes(STAGE_FLOATS);
  auto store2 = [&](int e, double v0, double v1) {
    if (e < 0 || e + 2 > STAGE_FLOATS || e % 2 != 0)
      fail("float2 staging store at " + std::to_string(e) + " misaligned or outside the ring");
    stage[e] = v0;
    stage[e + 1] = v1;
    ++stage_writes[e];
    ++stage_writes[e + 1];
  };
  // What a copy-out thread reads: a value this half wrote exactly once, else poison (a stale value
  // of the other half, or a race).
  auto staged = [&](int e) { return stage_writes[e] == 1 ? stage[e] : kPoison; };
  for (int h = 0; h < 2; ++h) {
    std::fill(stage.begin(), stage.end(), kPoison);
    std::fill(stage_writes.begin(), stage_writes.end(), 0);
    for (int warp = 0; warp < WARPS; ++warp) {
      const int warp_m = warp >> 2, warp_n = warp & 3;
      if (warp_m != h) continue;
      for (int mt = 0; mt < 4; ++mt)
        for (int nt = 0; nt < 4; ++nt)
          for (int lane = 0; lane < 32; ++lane) {
            const tc::RowCol f_lo = m_acc_frag(lane, 0), f_hi = m_acc_frag(lane, 2);
            const int r = mt * 16 + f_lo.row, c = warp_n * 32 + nt * 8 + f_lo.col;
            const int r_hi = mt * 16 + f_hi.row, c_hi = warp_n * 32 + nt * 8 + f_hi.col;
            const double(&d)[32][4] = acc(warp, mt, nt);
            store2(r * TC_EPI_LD + c, d[lane][0], d[lane][1]);
            store2(r_hi * TC_EPI_LD + c_hi, d[lane][2], d[lane][3]);
          }
    }
    if (MODE == kWgrad || p.c_chunks) {
      for (int it = 0; it < (TC_BM / 2) * (TC_BN / 8) / TC_THREADS; ++it)
        for (int tid = 0; tid < TC_THREADS; ++tid) {
          const int q = tid + it * TC_THREADS;
          const int r = q / (TC_BN / 8), cc = (q % (TC_BN / 8)) * 8;
          const int lr = h * (TC_BM / 2) + r;
          const int m = bm + lr, n0 = bn + cc;
          if (m < p.M && n0 < p.N) {
            const PixelRC px = MODE != kWgrad ? rows[lr] : PixelRC{0, 0, 0, 0};
            double v[8];
            for (int e = 0; e < 8; ++e) v[e] = staged(r * TC_EPI_LD + cc + e);
            store_chunk<MODE>(p, px, g, s, m, n0, v);
          }
        }
    } else {
      for (int it = 0; it < (TC_BM / 2) * TC_BN / TC_THREADS; ++it)
        for (int tid = 0; tid < TC_THREADS; ++tid) {
          const int e = tid + it * TC_THREADS;
          const int r = e % (TC_BM / 2), c = e / (TC_BM / 2);
          const int lr = h * (TC_BM / 2) + r;
          const int m = bm + lr, n = bn + c;
          if (m < p.M && n < p.N) {
            const PixelRC px = MODE != kWgrad ? rows[lr] : PixelRC{0, 0, 0, 0};
            store_one<MODE>(p, px, g, s, m, n, staged(r * TC_EPI_LD + c));
          }
        }
    }
  }
}

template <int MODE, bool VEC>
void run_grid(Params& p, int64_t groups, Counters& cnt) {
  const int64_t gx = conv_cdiv(p.M, TC_BM), gy = conv_cdiv(p.N, TC_BN), gz = groups * p.splits;
  for (int64_t z = 0; z < gz; ++z)
    for (int64_t y = 0; y < gy; ++y)
      for (int64_t x = 0; x < gx; ++x) run_cta<MODE, VEC>(p, static_cast<int>(x), static_cast<int>(y), static_cast<int>(z), cnt);
}

// ---------------------------------------------------------------------------------------------
// Tensors, the launchers' parameters, and the double reference.
// ---------------------------------------------------------------------------------------------
// cl: channels_last; nchw: contiguous; pad: NCHW with padded rows, planes and images (a
// non-contiguous view: its gaps hold values that must never reach an output).
Strides4 act_strides(const std::string& layout, int64_t C, int64_t H, int64_t W) {
  if (layout == "cl") return Strides4{H * W * C, 1, W * C, C};
  if (layout == "nchw") return Strides4{C * H * W, H * W, W, 1};
  const int64_t sh = W + 3, sc = H * sh + 5;
  return Strides4{C * sc + 7, sc, sh, 1};
}

int64_t extent(const Strides4& st, int64_t N, int64_t C, int64_t H, int64_t W) {
  return (N - 1) * st.n + (C - 1) * st.c + (H - 1) * st.h + (W - 1) * st.w + 1;
}

// Tensor [N, C, H, W] with strides st: its elements small integers, every gap 1000.
Global make_tensor(const Strides4& st, int64_t N, int64_t C, int64_t H, int64_t W, std::mt19937& rng) {
  Global g;
  g.data.assign(static_cast<size_t>(extent(st, N, C, H, W)), 1000);
  std::uniform_int_distribution<int> val(-3, 3);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) g.data[n * st.n + c * st.c + h * st.h + w * st.w] = static_cast<int16_t>(val(rng));
  return g;
}

struct Case {
  std::string pass, layout, mode;
  ConvGeometry s{};
  int64_t splits = 1;
};

std::string tag_of(const Case& c) {
  const ConvGeometry& s = c.s;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s %s %s N=%lld C=%lld H=%lld W=%lld O=%lld k=%lldx%lld s=%lld,%lld p=%lld,%lld "
                "d=%lld,%lld groups=%lld splits=%lld",
                c.pass.c_str(), c.layout.c_str(), c.mode.c_str(), (long long)s.N, (long long)s.C, (long long)s.H,
                (long long)s.W, (long long)s.O, (long long)s.KH, (long long)s.KW, (long long)s.stride_h,
                (long long)s.stride_w, (long long)s.pad_h, (long long)s.pad_w, (long long)s.dil_h, (long long)s.dil_w,
                (long long)s.groups, (long long)c.splits);
  return buf;
}

bool run_case(const Case& cs, bool strict_banks) {
  const ConvGeometry& s = cs.s;
  const std::string tag = tag_of(cs);
  const int pass = cs.pass == "fwd" ? kFwd : cs.pass == "dgrad" ? kDgrad : kWgrad;
  const bool cl = cs.layout == "cl", vec = cs.mode == "vec";
  const int64_t G = s.groups, Cg = s.C / G, Og = s.O / G;
  std::mt19937 rng(static_cast<unsigned>(s.N * 7919 + s.C * 104729 + s.H * 131 + s.O * 17 + pass));

  const Strides4 xs = act_strides(cs.layout, s.C, s.H, s.W), gs = act_strides(cs.layout, s.O, s.OH, s.OW);
  // Weight [O, Cg, KH, KW]: cl = [O, KH, KW, Cg] in memory (fwd / wgrad) or out channel fastest
  // = [Cg, KH, KW, O] (dgrad's fast path); nchw = contiguous.
  const Strides4 ws = !cl ? Strides4{Cg * s.KH * s.KW, s.KH * s.KW, s.KW, 1}
                      : pass == kDgrad ? Strides4{1, s.KH * s.KW * s.O, s.KW * s.O, s.O}
                                       : Strides4{s.KH * s.KW * Cg, 1, s.KW * Cg, Cg};
  const Global x = make_tensor(xs, s.N, s.C, s.H, s.W, rng), w = make_tensor(ws, s.O, Cg, s.KH, s.KW, rng),
               gr = make_tensor(gs, s.N, s.O, s.OH, s.OW, rng);
  auto X = [&](int64_t n, int64_t c, int64_t h, int64_t ww) { return double(x.data[n * xs.n + c * xs.c + h * xs.h + ww * xs.w]); };
  auto Wt = [&](int64_t o, int64_t c, int64_t i, int64_t j) { return double(w.data[o * ws.n + c * ws.c + i * ws.h + j * ws.w]); };
  auto Gr = [&](int64_t n, int64_t o, int64_t h, int64_t ww) { return double(gr.data[n * gs.n + o * gs.c + h * gs.h + ww * gs.w]); };

  // base_params + the pass's launcher (conv2d_fwd / conv2d_bwd_data / conv2d_bwd_weight).
  Params p;
  p.ix = make_conv_index(s, pass);
  const ConvGemm gm = conv_gemm(pass, s);
  p.M = static_cast<int>(gm.M); p.N = static_cast<int>(gm.N); p.K = static_cast<int>(gm.K);
  p.k_chunk = static_cast<int>(std::max<int64_t>(gm.K, 1));
  p.splits = 1;
  Strides4 a_st{}, b_st{};
  int64_t out_count = 0, logical = 0;  // allocation of the output; elements in it to write
  const int64_t total = s.O * Cg * s.KH * s.KW;
  if (pass == kFwd) {
    p.a = x; p.as = a_st = xs;
    p.b = w; p.bs = b_st = ws;
    p.cs = gs;  // out has the activations' layout
    p.b_group = p.ix.Og * ws.n;
    p.c_chunks = std::abs(p.cs.c) <= std::min(std::abs(p.cs.h), std::abs(p.cs.w));
    std::uniform_int_distribution<int> bval(-8, 8);
    p.bias.resize(s.O);
    for (auto& v : p.bias) v = bval(rng);
    out_count = extent(gs, s.N, s.O, s.OH, s.OW);
    logical = s.N * s.O * s.OH * s.OW;
  } else if (pass == kDgrad) {
    p.a = gr; p.as = a_st = gs;
    b_st = ws;
    p.b = w; p.bs = Strides4{ws.c, ws.n, ws.h, ws.w};
    p.cs = xs;
    p.b_group = p.ix.Og * ws.n;
    p.c_chunks = std::abs(p.cs.c) <= std::min(std::abs(p.cs.h), std::abs(p.cs.w));
    out_count = extent(xs, s.N, s.C, s.H, s.W);
    logical = s.N * s.C * s.H * s.W;
  } else {
    p.a = gr; p.as = a_st = gs;
    p.b = x; p.bs = b_st = xs;
    p.cs = Strides4{total, s.KH * s.KW * Cg, 0, 1};
    p.splits = static_cast<int>(cs.splits);
    p.k_chunk = static_cast<int>(std::max<int64_t>(1, conv_cdiv(std::max<int64_t>(p.K, 1), cs.splits)));
    out_count = logical = cs.splits * total;
  }
  if (vec != conv2d_vec_ok(pass, s, a_st, b_st, 0, 0)) {
    std::printf("FAIL %s: conv2d_vec_ok says %s path for this case\n", tag.c_str(), vec ? "scalar" : "vec");
    return false;
  }
  p.c.assign(static_cast<size_t>(out_count), kPoison);
  p.c_writes.assign(p.c.size(), 0);

  Counters cnt;
  try {
    if (pass == kFwd) vec ? run_grid<kFwd, true>(p, G, cnt) : run_grid<kFwd, false>(p, G, cnt);
    else if (pass == kDgrad) vec ? run_grid<kDgrad, true>(p, G, cnt) : run_grid<kDgrad, false>(p, G, cnt);
    else vec ? run_grid<kWgrad, true>(p, G, cnt) : run_grid<kWgrad, false>(p, G, cnt);
  } catch (const EmuError& e) {
    std::printf("FAIL %s: %s\n", tag.c_str(), e.what());
    return false;
  }

  long bad = 0;
  std::string first;
  auto check = [&](int64_t idx, double ref, const std::string& where) {
    std::string why;
    if (p.c_writes[idx] != 1) why = "written " + std::to_string(p.c_writes[idx]) + " times";
    else if (!(p.c[idx] == ref)) why = "got " + std::to_string(p.c[idx]) + " want " + std::to_string(ref);
    if (!why.empty() && bad++ == 0) first = where + " " + why;
  };
  if (pass == kFwd) {
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t o = 0; o < s.O; ++o)
        for (int64_t oh = 0; oh < s.OH; ++oh)
          for (int64_t ow = 0; ow < s.OW; ++ow) {
            const int64_t g = o / Og;
            double ref = p.bias[o];
            for (int64_t c = 0; c < Cg; ++c)
              for (int64_t i = 0; i < s.KH; ++i)
                for (int64_t j = 0; j < s.KW; ++j) {
                  const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h, iw = ow * s.stride_w - s.pad_w + j * s.dil_w;
                  if (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W) ref += X(n, g * Cg + c, ih, iw) * Wt(o, c, i, j);
                }
            check(n * gs.n + o * gs.c + oh * gs.h + ow * gs.w, ref,
                  "out[" + std::to_string(n) + "," + std::to_string(o) + "," + std::to_string(oh) + "," + std::to_string(ow) + "]");
          }
  } else if (pass == kDgrad) {
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t ci = 0; ci < s.C; ++ci)
        for (int64_t ih = 0; ih < s.H; ++ih)
          for (int64_t iw = 0; iw < s.W; ++iw) {
            const int64_t g = ci / Cg;
            double ref = 0;
            for (int64_t o = g * Og; o < (g + 1) * Og; ++o)
              for (int64_t i = 0; i < s.KH; ++i)
                for (int64_t j = 0; j < s.KW; ++j) {
                  const int64_t th = ih + s.pad_h - i * s.dil_h, tw = iw + s.pad_w - j * s.dil_w;
                  if (th < 0 || tw < 0 || th % s.stride_h || tw % s.stride_w) continue;
                  const int64_t oh = th / s.stride_h, ow = tw / s.stride_w;
                  if (oh < s.OH && ow < s.OW) ref += Gr(n, o, oh, ow) * Wt(o, ci % Cg, i, j);
                }
            check(n * xs.n + ci * xs.c + ih * xs.h + iw * xs.w, ref,
                  "dx[" + std::to_string(n) + "," + std::to_string(ci) + "," + std::to_string(ih) + "," + std::to_string(iw) + "]");
          }
  } else {
    // Each split's cells must be written once; their sum (the reduction) must equal dw.
    for (int64_t sp = 0; sp < cs.splits; ++sp)
      for (int64_t e = 0; e < total; ++e)
        if (p.c_writes[sp * total + e] != 1 && bad++ == 0)
          first = "scratch[" + std::to_string(sp) + "," + std::to_string(e) + "] written " +
                  std::to_string(p.c_writes[sp * total + e]) + " times";
    for (int64_t o = 0; o < s.O; ++o)
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t i = 0; i < s.KH; ++i)
          for (int64_t j = 0; j < s.KW; ++j) {
            const int64_t g = o / Og;
            double ref = 0;
            for (int64_t n = 0; n < s.N; ++n)
              for (int64_t oh = 0; oh < s.OH; ++oh)
                for (int64_t ow = 0; ow < s.OW; ++ow) {
                  const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h, iw = ow * s.stride_w - s.pad_w + j * s.dil_w;
                  if (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W) ref += Gr(n, o, oh, ow) * X(n, g * Cg + c, ih, iw);
                }
            const int64_t col = (i * s.KW + j) * Cg + c;
            double sum = 0;
            for (int64_t sp = 0; sp < cs.splits; ++sp) sum += p.c[sp * total + o * p.cs.c + col];
            if (!(sum == ref) && bad++ == 0)
              first = "dw[" + std::to_string(o) + "," + std::to_string(c) + "," + std::to_string(i) + "," +
                      std::to_string(j) + "] got " + std::to_string(sum) + " want " + std::to_string(ref);
          }
  }
  // Each logical element written once (checked above) and these are all the writes: no store into
  // a gap of a strided output.
  int64_t writes = 0;
  for (int v : p.c_writes) writes += v;
  if (writes != logical && bad++ == 0)
    first = std::to_string(writes) + " stores for " + std::to_string(logical) + " output elements";
  const std::string banks = " ldmatrix conflicts=" + std::to_string(cnt.ldsm_conflicts) +
                            " cp.async store conflicts=" + std::to_string(cnt.cp_async_conflicts);
  if (bad > 0) {
    std::printf("FAIL %s: %ld wrong, first %s;%s\n", tag.c_str(), bad, first.c_str(), banks.c_str());
    return false;
  }
  if (strict_banks && cnt.ldsm_conflicts > 0) {
    std::printf("FAIL %s: bank conflicts;%s\n", tag.c_str(), banks.c_str());
    return false;
  }
  std::printf("ok %s;%s\n", tag.c_str(), banks.c_str());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  constexpr int kArgs = 18;
  int i = 1;
  bool strict_banks = false;
  if (i < argc && std::string(argv[i]) == "--strict-banks") {
    strict_banks = true;
    ++i;
  }
  if (argc - i == 0 || (argc - i) % kArgs != 0) {
    std::fprintf(stderr, "usage: %s [--strict-banks] PASS LAYOUT MODE N C H W O KH KW SH SW PH PW DH DW GROUPS SPLITS [...]\n",
                 argv[0]);
    return 2;
  }
  bool ok = true;
  for (; i < argc; i += kArgs) {
    Case c;
    c.pass = argv[i];
    c.layout = argv[i + 1];
    c.mode = argv[i + 2];
    int64_t v[15];
    for (int k = 0; k < 15; ++k) v[k] = std::atoll(argv[i + 3 + k]);
    ConvGeometry& s = c.s;
    s.N = v[0]; s.C = v[1]; s.H = v[2]; s.W = v[3]; s.O = v[4]; s.KH = v[5]; s.KW = v[6];
    s.stride_h = v[7]; s.stride_w = v[8]; s.pad_h = v[9]; s.pad_w = v[10]; s.dil_h = v[11]; s.dil_w = v[12];
    s.groups = v[13];
    c.splits = v[14];
    const bool bad_names = (c.pass != "fwd" && c.pass != "dgrad" && c.pass != "wgrad") ||
                           (c.layout != "cl" && c.layout != "nchw" && c.layout != "pad") || (c.mode != "vec" && c.mode != "scalar");
    bool bad = bad_names || s.N < 1 || s.C < 1 || s.H < 1 || s.W < 1 || s.O < 1 || s.KH < 1 || s.KW < 1 ||
               s.stride_h < 1 || s.stride_w < 1 || s.pad_h < 0 || s.pad_w < 0 || s.dil_h < 1 || s.dil_w < 1 ||
               s.groups < 1 || s.C % s.groups || s.O % s.groups || c.splits < 1;
    if (!bad) {
      s.OH = (s.H + 2 * s.pad_h - s.dil_h * (s.KH - 1) - 1) / s.stride_h + 1;
      s.OW = (s.W + 2 * s.pad_w - s.dil_w * (s.KW - 1) - 1) / s.stride_w + 1;
      bad = s.OH < 1 || s.OW < 1;
    }
    if (bad) {
      std::fprintf(stderr, "bad case %d: %s\n", (i - 1) / kArgs, bad_names ? "unknown pass / layout / mode" : "bad sizes");
      return 2;
    }
    ok = run_case(c, strict_banks) && ok;
  }
  return ok ? 0 : 1;
}
