// CPU emulation of the 2:4 sparse tensor-core kernel's data path (csrc/cuda/sparse.cu,
// sparse_linear_fwd_kernel), run by tests/test_sparse24.py.
//
// The kernel side (grid, warps, K steps, which lane loads which element pair and metadata word, the
// epilogue's stores) is this file's copy of the kernel's loops, calling the index maps of
// csrc/cuda/sparse.h that the kernel itself calls. The instruction side, mma.sp.m16n8k32 .f16/.bf16
// with sparsity selector 0, is modelled from the PTX ISA text ("Matrix fragments for sparse
// mma.m16n8k32 with .f16/.bf16": A as the dense m16n8k16 layout of the 16x16 compressed tile, B
// b0..b7 at rows 2t + (i & 1) + 8 * (i >> 1), column g; metadata: lane 4g holds row g's indices for
// columns 0-15 in bits 15..0 and row g + 8's in bits 31..16, lane 4g + 1 the same for columns 16-31;
// C/D as in m16n8k16), independently of the maps. Values are small integers (exact in fp16) and
// accumulation is double, so the result must equal the float64 reference exactly.
//
// Checks: every global read inside its allocation (a read past the end fails), every output element
// written exactly once, metadata nibbles valid (i0 < i1; 0b0000, 0b0101, 0b1010, 0b1111 are invalid
// in PTX).
//
// Usage: sparse_tc_emu IN OUT. IN: int64 M, N, K, has_bias; double x[M*K]; double values[N*K/2];
// uint16 meta[N*ceil(K/16)]; double bias[N] if has_bias. OUT: double out[M*N]. Exit 0 = ran clean,
// 1 = a check failed (message on stdout).
//
// Planted bugs (test mutation cases, -D at compile time):
//   EMU_PLANT_LANE   lanes 1 and 2 exchange their A-fragment addresses (a wrong lane map);
//   EMU_PLANT_META   the metadata register's halves exchanged (rows g and g + 8);
//   EMU_PLANT_BFRAG  B registers 1 and 2 exchanged (a wrong k offset map).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/sparse.h"

namespace sp = pyimgcls::cuda::sp;

namespace {

struct Fail : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A global allocation: reads are bounds-checked like a real fault would be (at least loudly).
template <typename T>
struct Global {
  std::vector<T> data;
  std::string name;
  T at(int64_t i) const {
    if (i < 0 || i >= static_cast<int64_t>(data.size()))
      throw Fail("out-of-bounds read of " + name + " at " + std::to_string(i));
    return data[static_cast<size_t>(i)];
  }
};

// One 32-bit register: two 16-bit elements (low, high), held as doubles.
struct Pair {
  double lo = NAN, hi = NAN;
};

// ---- instruction model (PTX ISA text; independent of sparse.h) ----------------------------------
// D[16][8] += expand(A, e)[16][32] * B[32][8]; a[lane][4], b[lane][4] registers, e[lane].
void mma_sp_16832(const Pair (&a)[32][4], const Pair (&b)[32][4], const uint32_t (&e)[32], double (&d)[32][4]) {
  double A[16][16], B[32][8], W[16][32] = {};
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 8; ++i) {  // a0..a7
      const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
      const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      const Pair& r = a[lane][i / 2];
      A[row][col] = (i & 1) ? r.hi : r.lo;
    }
    for (int i = 0; i < 8; ++i) {  // b0..b7
      const int row = t * 2 + (i & 1) + 8 * (i >> 1);
      const Pair& r = b[lane][i / 2];
      B[row][g] = (i & 1) ? r.hi : r.lo;
    }
  }
  for (int row = 0; row < 16; ++row)
    for (int chunk = 0; chunk < 8; ++chunk) {
      const int lane = 4 * (row % 8) + chunk / 4;  // selector 0: threads 0 and 1 of each quad
      const int shift = (row < 8 ? 0 : 16) + 4 * (chunk % 4);
      const unsigned nib = (e[lane] >> shift) & 0xFu;
      const unsigned i0 = nib & 3u, i1 = nib >> 2;
      if (i0 >= i1)
        throw Fail("invalid metadata nibble " + std::to_string(nib) + " (row " + std::to_string(row) + ", chunk " +
                   std::to_string(chunk) + ")");
      W[row][4 * chunk + i0] = A[row][2 * chunk];
      W[row][4 * chunk + i1] = A[row][2 * chunk + 1];
    }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
      const int row = g + (i >= 2 ? 8 : 0), col = t * 2 + (i & 1);
      double s = 0;
      for (int k = 0; k < 32; ++k) s += W[row][k] * B[k][col];
      d[lane][i] += s;
    }
  }
}

// ---- kernel side: the loops of sparse_linear_fwd_kernel with the maps of sparse.h --------------
sp::RowCol a_map(int lane, int r) {
#ifdef EMU_PLANT_LANE
  if (lane == 1) lane = 2;
  else if (lane == 2) lane = 1;
#endif
  return sp::a_frag(lane, r);
}

sp::RowCol b_map(int lane, int r) {
#ifdef EMU_PLANT_BFRAG
  if (r == 1) r = 2;
  else if (r == 2) r = 1;
#endif
  return sp::b_frag(lane, r);
}

Pair ld_pair(const Global<double>& g, int64_t i, bool ok) {
  Pair p;
  if (!ok) {
    p.lo = p.hi = 0.0;
    return p;
  }
  if (i % 2) throw Fail("misaligned 32-bit load of " + g.name + " at element " + std::to_string(i));
  p.lo = g.at(i);
  p.hi = g.at(i + 1);
  return p;
}

void run(const Global<double>& x, const Global<double>& v, const Global<uint16_t>& meta, const Global<double>& bias,
         bool has_bias, std::vector<double>& out, std::vector<int>& writes, int M, int N, int K) {
  const int64_t ldx = K, ldv = K / 2, ldm = sp::meta_cols(K), ldo = N;
  const int half_k = K / 2;
  const int gx = (M + sp::kTileM - 1) / sp::kTileM, gy = (N + sp::kTileN - 1) / sp::kTileN;
  for (int by = 0; by < gy; ++by)
    for (int bx = 0; bx < gx; ++bx)
      for (int warp = 0; warp < sp::kWarpsN * sp::kWarpsM; ++warp) {
        const int n0 = by * sp::kTileN + (warp % sp::kWarpsN) * 16;
        const int m0 = bx * sp::kTileM + (warp / sp::kWarpsN) * (8 * sp::kNT);
        double acc[sp::kNT][32][4] = {};
        for (int kb = 0; kb < K; kb += sp::kStepK) {
          Pair a[32][4];
          uint32_t e[32];
          for (int lane = 0; lane < 32; ++lane) {
            for (int r = 0; r < 4; ++r) {
              const sp::RowCol rc = a_map(lane, r);
              const int n = n0 + rc.row, c = kb / 2 + rc.col;
              a[lane][r] = ld_pair(v, static_cast<int64_t>(n) * ldv + c, n < N && c < half_k);
            }
            const sp::MetaWords mw = sp::meta_words(lane);
            const int64_t w = kb / 16 + mw.half;
            const bool wok = w < ldm;
            const uint32_t lo = (wok && n0 + mw.row_lo < N) ? meta.at((n0 + mw.row_lo) * ldm + w) : 0x4444u;
            const uint32_t hi = (wok && n0 + mw.row_hi < N) ? meta.at((n0 + mw.row_hi) * ldm + w) : 0x4444u;
#ifdef EMU_PLANT_META
            e[lane] = hi | (lo << 16);
#else
            e[lane] = lo | (hi << 16);
#endif
          }
          for (int j = 0; j < sp::kNT; ++j) {
            Pair b[32][4];
            for (int lane = 0; lane < 32; ++lane)
              for (int r = 0; r < 4; ++r) {
                const sp::RowCol rc = b_map(lane, r);
                const int m = m0 + 8 * j + rc.col, k = kb + rc.row;
                b[lane][r] = ld_pair(x, static_cast<int64_t>(m) * ldx + k, m < M && k < K);
              }
            mma_sp_16832(a, b, e, acc[j]);
          }
        }
        for (int j = 0; j < sp::kNT; ++j)
          for (int lane = 0; lane < 32; ++lane)
            for (int r = 0; r < 4; ++r) {
              const sp::RowCol rc = sp::acc_frag(lane, r);
              const int n = n0 + rc.row, m = m0 + 8 * j + rc.col;
              if (n < N && m < M) {
                const int64_t o = static_cast<int64_t>(m) * ldo + n;
                out[o] = acc[j][lane][r] + (has_bias ? bias.at(n) : 0.0);
                ++writes[o];
              }
            }
      }
}

template <typename T>
void read(std::ifstream& f, T* p, size_t n) {
  f.read(reinterpret_cast<char*>(p), static_cast<std::streamsize>(n * sizeof(T)));
  if (!f) throw std::runtime_error("short input file");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
    return 2;
  }
  std::ifstream f(argv[1], std::ios::binary);
  int64_t hdr[4];
  read(f, hdr, 4);
  const int M = static_cast<int>(hdr[0]), N = static_cast<int>(hdr[1]), K = static_cast<int>(hdr[2]);
  const bool has_bias = hdr[3] != 0;
  Global<double> x{std::vector<double>(static_cast<size_t>(M) * K), "x"};
  Global<double> v{std::vector<double>(static_cast<size_t>(N) * (K / 2)), "values"};
  Global<uint16_t> meta{std::vector<uint16_t>(static_cast<size_t>(N) * sp::meta_cols(K)), "metadata"};
  Global<double> bias{std::vector<double>(has_bias ? N : 0), "bias"};
  read(f, x.data.data(), x.data.size());
  read(f, v.data.data(), v.data.size());
  read(f, meta.data.data(), meta.data.size());
  read(f, bias.data.data(), bias.data.size());
  std::vector<double> out(static_cast<size_t>(M) * N, NAN);  // poisoned
  std::vector<int> writes(out.size(), 0);
  int rc = 0;
  try {
    run(x, v, meta, bias, has_bias, out, writes, M, N, K);
    for (size_t i = 0; i < writes.size(); ++i)
      if (writes[i] != 1) throw Fail("output element " + std::to_string(i) + " written " + std::to_string(writes[i]) +
                                     " times");
    std::printf("ok M=%d N=%d K=%d\n", M, N, K);
  } catch (const Fail& e) {
    std::printf("FAIL M=%d N=%d K=%d: %s\n", M, N, K, e.what());
    rc = 1;
  }
  std::ofstream o(argv[2], std::ios::binary);
  o.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size() * sizeof(double)));
  return rc;
}
