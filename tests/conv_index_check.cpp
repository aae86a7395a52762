// CPU check of the implicit-GEMM index arithmetic of csrc/cuda/conv.cu (the helpers live in
// csrc/cuda/conv.h and are what the kernels call). For many geometries this program replays the
// walks the kernels make — per-CTA pixel-row tables (partial last tiles), each thread's k position
// advanced by BK per k-tile from its split's start, wgrad's fixed columns and per-pixel splits — and
// compares every gathered offset with the plain formula in 64-bit arithmetic. Prints "OK <checks>"
// and exits 0, or prints the first mismatch and exits 1. Built and run by tests/test_conv_cuda_plan.py
// (g++ -std=c++17 -O1 -I csrc).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <random>
#include <vector>

#include "cuda/conv.h"

using namespace pyimgcls;
using namespace pyimgcls::cuda;

static int64_t checks = 0;

#define EXPECT(cond, ...)              \
  do {                                 \
    ++checks;                          \
    if (!(cond)) {                     \
      std::printf("FAIL: " __VA_ARGS__); \
      std::printf("\n");               \
      std::exit(1);                    \
    }                                  \
  } while (0)

// Plain formulas (64-bit, / and %), straight from the definitions in conv.cu's header.
static int64_t ref_x(const ConvGeometry& s, Strides4 xs, int64_t pix, int64_t col, int64_t g) {
  const int64_t Cg = s.C / s.groups;
  const int64_t ow = pix % s.OW, oh = (pix / s.OW) % s.OH, n = pix / (s.OW * s.OH);
  const int64_t tap = col / Cg, c = col % Cg, i = tap / s.KW, j = tap % s.KW;
  if (i >= s.KH) return -1;
  const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dil_h, iw = ow * s.stride_w - s.pad_w + j * s.dil_w;
  if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) return -1;
  return n * xs.n + (g * Cg + c) * xs.c + ih * xs.h + iw * xs.w;
}

static int64_t ref_dgrad_a(const ConvGeometry& s, Strides4 gs, int64_t pix, int64_t k, int64_t g) {
  const int64_t Og = s.O / s.groups;
  const int64_t x = pix % s.W, y = (pix / s.W) % s.H, n = pix / (s.W * s.H);
  const int64_t tap = k / Og, o = k % Og, i = tap / s.KW, j = tap % s.KW;
  if (i >= s.KH) return -1;
  const int64_t th = y + s.pad_h - i * s.dil_h, tw = x + s.pad_w - j * s.dil_w;
  if (th < 0 || tw < 0 || th % s.stride_h || tw % s.stride_w) return -1;
  const int64_t oh = th / s.stride_h, ow = tw / s.stride_w;
  if (oh >= s.OH || ow >= s.OW) return -1;
  return n * gs.n + (g * Og + o) * gs.c + oh * gs.h + ow * gs.w;
}

static int64_t ref_weight(const ConvGeometry& s, Strides4 bs, int64_t b_group, int64_t row, int64_t k, int64_t kc,
                          int64_t g) {
  const int64_t tap = k / kc, c = k % kc, i = tap / s.KW, j = tap % s.KW;
  if (i >= s.KH) return -1;
  return g * b_group + row * bs.n + c * bs.c + i * bs.h + j * bs.w;
}

static int64_t ref_wgrad_a(const ConvGeometry& s, Strides4 gs, int64_t m, int64_t pix, int64_t g) {
  const int64_t Og = s.O / s.groups;
  const int64_t ow = pix % s.OW, oh = (pix / s.OW) % s.OH, n = pix / (s.OW * s.OH);
  return n * gs.n + (g * Og + m) * gs.c + oh * gs.h + ow * gs.w;
}

static int64_t out_size(int64_t in, int64_t pad, int64_t dil, int64_t k, int64_t stride) {
  const int64_t o = (in + 2 * pad - dil * (k - 1) - 1) / stride + 1;
  return o < 0 ? 0 : o;
}

// fwd (pass 0) / dgrad (pass 1): the CTA row table, each k offset's walk, A and B offsets.
static void check_pixel_rows(const ConvGeometry& s, int pass, int BM, int BK, Strides4 as, Strides4 bs,
                             int64_t b_group, int max_tiles) {
  const ConvIndex ix = make_conv_index(s, pass);
  const ConvGemm gm = conv_gemm(pass, s);
  const int64_t kc = pass == kFwd ? s.C / s.groups : s.O / s.groups;
  const int h = pass == kFwd ? ix.OH : ix.H, w = pass == kFwd ? ix.OW : ix.W;
  const FastDiv fh = pass == kFwd ? ix.f_OH : ix.f_H, fw = pass == kFwd ? ix.f_OW : ix.f_W;
  const int64_t m_tiles = conv_cdiv(gm.M, BM);
  const int64_t KT = conv_cdiv(gm.K, BK);
  std::vector<PixelRC> rows(BM);
  for (int64_t t = 0; t < m_tiles; t += std::max<int64_t>(1, m_tiles / max_tiles)) {
    const int bm = static_cast<int>(t * BM);
    for (int r = 0; r < BM; ++r) {
      const int m = bm + r;
      rows[r] = m < gm.M ? split_pixel(m, h, w, fh, fw) : PixelRC{-1, 0, 0, 0};
      if (m < gm.M) {
        EXPECT(rows[r].n == m / (h * w) && rows[r].y == (m / w) % h && rows[r].x == m % w,
               "split_pixel(%d) over %d x %d", m, h, w);
      }
    }
    for (int g = 0; g < s.groups; g += std::max<int64_t>(1, s.groups - 1)) {
      for (int koff = 0; koff < BK; ++koff) {
        KPos kp = k_position(ix, koff);
        for (int64_t kt = 0; kt < KT; ++kt) {
          const int64_t k = kt * BK + koff;
          const bool kin = k < gm.K;
          for (int r = 0; r < BM; r += 3) {
            const int64_t m = bm + r;
            const int64_t got = !kin ? -1
                                : pass == kFwd ? x_tap_offset(ix, as, rows[r], kp, g)
                                               : dgrad_tap_offset(ix, as, rows[r], kp, g);
            const int64_t want = (m >= gm.M || !kin) ? -1
                                 : pass == kFwd ? ref_x(s, as, m, k, g)
                                                : ref_dgrad_a(s, as, m, k, g);
            EXPECT(got == want, "pass %d A[m=%lld, k=%lld] g=%d: %lld, want %lld", pass, (long long)m, (long long)k, g,
                   (long long)got, (long long)want);
          }
          for (int n = 0; n < gm.N; n += std::max<int64_t>(1, gm.N / 5)) {
            const int64_t got = kin ? weight_offset(ix, bs, b_group, n, kp, g) : -1;
            const int64_t want = kin ? ref_weight(s, bs, b_group, n, k, kc, g) : -1;
            EXPECT(got == want, "pass %d B[n=%d, k=%lld]: %lld, want %lld", pass, n, (long long)k, (long long)got,
                   (long long)want);
          }
          k_advance(ix, kp, BK);
        }
      }
    }
  }
}

// wgrad: fixed columns (tap, c) split once, pixels per split and k-tile, A and B offsets.
static void check_wgrad(const ConvGeometry& s, int BK, Strides4 gs, Strides4 xs, int64_t splits) {
  const ConvIndex ix = make_conv_index(s, kWgrad);
  const ConvGemm gm = conv_gemm(kWgrad, s);
  const int64_t k_chunk = std::max<int64_t>(1, conv_cdiv(std::max<int64_t>(gm.K, 1), splits));
  for (int64_t sp = 0; sp < splits; ++sp) {
    const int k_begin = static_cast<int>(sp * k_chunk);
    const int k_end = static_cast<int>(std::min<int64_t>(gm.K, k_begin + k_chunk));
    for (int g = 0; g < s.groups; g += std::max<int64_t>(1, s.groups - 1)) {
      for (int kk = k_begin; kk < k_begin + k_chunk + BK; kk += 1 + (k_chunk > 400 ? 7 : 0)) {
        const PixelRC px = kk < k_end ? split_pixel(kk, ix.OH, ix.OW, ix.f_OH, ix.f_OW) : PixelRC{-1, 0, 0, 0};
        for (int n = 0; n < gm.N; n += std::max<int64_t>(1, gm.N / 7)) {
          const KPos col = k_position(ix, n);
          const int64_t got = x_tap_offset(ix, xs, px, col, g);
          const int64_t want = kk < k_end ? ref_x(s, xs, kk, n, g) : -1;
          EXPECT(got == want, "wgrad B[n=%d, k=%d]: %lld, want %lld", n, kk, (long long)got, (long long)want);
        }
        for (int m = 0; m < gm.M; m += std::max<int64_t>(1, gm.M / 5)) {
          const int64_t got = wgrad_a_offset(ix, gs, m, px, g);
          const int64_t want = kk < k_end ? ref_wgrad_a(s, gs, m, kk, g) : -1;
          EXPECT(got == want, "wgrad A[m=%d, k=%d]: %lld, want %lld", m, kk, (long long)got, (long long)want);
        }
      }
    }
  }
}

int main() {
  // 1. Fast division against plain division: small divisors exhaustively on a grid of dividends,
  //    edges of the 2^31 range, random large divisors.
  std::mt19937_64 rng(12345);
  const int big = static_cast<int>(kConvIndexLimit + 65535);
  for (int64_t d = 1; d <= 1200; ++d) {
    const FastDiv f(d);
    for (int n = 0; n < 5000; ++n) EXPECT(f.div(n) == n / d, "FastDiv(%lld).div(%d)", (long long)d, n);
    for (int n : {big, big - 1, big - static_cast<int>(d), 1 << 30, (1 << 30) - 1, (1 << 30) + 1}) {
      EXPECT(f.div(n) == n / d, "FastDiv(%lld).div(%d)", (long long)d, n);
    }
  }
  for (int t = 0; t < 200000; ++t) {
    const int64_t d = 1 + static_cast<int64_t>(rng() % (t % 2 ? 70000 : (uint64_t(1) << 31) - 1));
    const int n = static_cast<int>(rng() % (uint64_t(1) << 31));
    EXPECT(FastDiv(d).div(n) == n / d, "FastDiv(%lld).div(%d)", (long long)d, n);
  }

  // 2. Geometries: fixed corner cases, then random ones (strides, padding, dilation, groups, odd
  //    sizes, 1x1 and non-square kernels, batch 1, outputs with partial last tiles).
  struct G {
    int64_t N, C, H, W, O, KH, KW, sh, sw, ph, pw, dh, dw, groups;
  };
  std::vector<G> gs = {
      {1, 3, 7, 5, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1},       {2, 8, 9, 9, 16, 1, 1, 1, 1, 0, 0, 1, 1, 1},
      {2, 16, 11, 13, 24, 3, 3, 2, 2, 1, 1, 1, 1, 1},   {1, 12, 10, 7, 6, 3, 2, 2, 3, 2, 1, 2, 1, 3},
      {3, 5, 6, 6, 7, 5, 5, 1, 1, 2, 2, 1, 1, 1},       {1, 64, 5, 5, 64, 3, 3, 1, 1, 1, 1, 1, 1, 32},
      {2, 40, 14, 14, 40, 7, 7, 2, 2, 3, 3, 1, 1, 1},   {1, 3, 17, 1, 5, 3, 1, 3, 1, 1, 0, 2, 1, 1},
      {1, 33, 8, 9, 65, 2, 2, 2, 2, 0, 0, 1, 1, 1},     {4, 8, 3, 3, 8, 3, 3, 1, 1, 2, 2, 2, 2, 2},
  };
  for (int t = 0; t < 140; ++t) {
    auto r = [&](int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(rng() % (hi - lo + 1)); };
    G g{};
    g.groups = r(0, 3) == 0 ? r(2, 4) : 1;
    g.N = r(1, 3); g.C = g.groups * r(1, 20); g.O = g.groups * r(1, 20);
    g.KH = r(1, 5); g.KW = r(1, 5); g.sh = r(1, 3); g.sw = r(1, 3); g.dh = r(1, 3); g.dw = r(1, 3);
    g.ph = r(0, 3); g.pw = r(0, 3); g.H = r(1, 19); g.W = r(1, 19);
    gs.push_back(g);
  }
  int run = 0;
  for (const G& q : gs) {
    ConvGeometry s{q.N, q.C, q.H, q.W, q.O, q.KH, q.KW, out_size(q.H, q.ph, q.dh, q.KH, q.sh),
                   out_size(q.W, q.pw, q.dw, q.KW, q.sw), q.sh, q.sw, q.ph, q.pw, q.dh, q.dw, q.groups};
    if (s.OH <= 0 || s.OW <= 0) continue;
    ++run;
    const int64_t Cg = s.C / s.groups, Og = s.O / s.groups;
    // Distinct odd strides so that a swapped or dropped axis changes the offset.
    const Strides4 xs{100003, 7, 1009, 101}, gsr{200003, 11, 2003, 13}, ws{9001, 3, 97, 17};
    check_pixel_rows(s, kFwd, TC_BM, TC_BK, xs, ws, Og * ws.n, 6);
    check_pixel_rows(s, kFwd, SM_BM, SM_BK, xs, ws, Og * ws.n, 3);
    const Strides4 wsd{ws.c, ws.n, ws.h, ws.w};  // dgrad's view: rows = in channels, k-channel = out channel
    check_pixel_rows(s, kDgrad, TC_BM, TC_BK, gsr, wsd, Og * ws.n, 6);
    check_pixel_rows(s, kDgrad, SM_BM, SM_BK, gsr, wsd, Og * ws.n, 3);
    for (int64_t splits : {int64_t(1), int64_t(3), conv2d_wgrad_splits(DType::Float16, s, 132)})
      check_wgrad(s, TC_BK, gsr, xs, splits);
    (void)Cg;
  }
  std::printf("OK %lld checks over %d geometries\n", (long long)checks, run);
  return 0;
}
