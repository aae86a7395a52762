// PTX machine model shared by the tensor-core emulators (tests/emu/gemm_tc_emu.cpp for
// csrc/cuda/gemm.cu, tests/emu/conv_tc_emu.cpp for csrc/cuda/conv.cu): global operands, shared
// memory with per-byte visibility, per-thread cp.async groups, ldmatrix .x4 / .trans and
// mma.m16n8k16 as the PTX ISA tables define them (see gemm_tc_emu.cpp's header for the table
// entries and sources). Plain C++17, g++ only; header-only (inline) so each emulator is one TU.
//
// Planted model bugs (test mutation cases only): EMU_PLANT_MODEL_TRANS (ldmatrix ignores .trans),
// EMU_PLANT_MODEL_AFRAG (mma reads A registers 1 and 2 swapped).
#pragma once
#include <cstdint>
#include <cstring>
#include <deque>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace emu {

inline const double kPoison = std::numeric_limits<double>::quiet_NaN();

struct EmuError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail(const std::string& what) { throw EmuError(what); }

// ---------------------------------------------------------------------------------------------
// Machine model: global operands, shared memory with per-byte visibility, per-thread cp.async
// groups, 32-bit registers holding two 16-bit elements.
// ---------------------------------------------------------------------------------------------

// A global operand of 16-bit elements: `data` is exactly the allocation the kernel may read.
struct Global {
  std::vector<int16_t> data;
};

// Byte states. A byte is readable by ldmatrix only when kPublished.
enum : uint8_t { kUndefined = 0, kLanded = 1, kPublished = 2 };

struct Shared {
  std::vector<uint8_t> bytes, state;
  explicit Shared(int n) : bytes(n, 0xAB), state(n, kUndefined) {}
  int size() const { return static_cast<int>(bytes.size()); }
};

struct Copy {
  uint32_t dst;
  uint8_t data[16];
};

struct AsyncState {
  std::vector<Copy> uncommitted;
  std::deque<std::vector<Copy>> pending;  // oldest first
};

struct Reg {  // one 32-bit register as its two 16-bit halves (low first)
  double lo = kPoison, hi = kPoison;
};

struct Counters {
  long cp_async_conflicts = 0, ldsm_conflicts = 0, stage_conflicts = 0, copyout_conflicts = 0;
};

// cp.async.cg.shared.global [dst], [src], 16, src_bytes. src is an element index into g (the
// kernel's pointer g + off); src_bytes in 0..16 are read, the rest of the 16 bytes is zero-filled.
inline void cp_async_16(Shared& sm, AsyncState& as, uint32_t dst, const Global& g, int64_t src, int src_bytes) {
  if (dst % 16 != 0 || dst + 16 > static_cast<uint32_t>(sm.size()))
    fail("cp.async destination " + std::to_string(dst) + " misaligned or outside shared memory");
  if (src_bytes < 0 || src_bytes > 16 || src_bytes % 2 != 0) fail("cp.async src-size " + std::to_string(src_bytes));
  if (src < 0 || src > static_cast<int64_t>(g.data.size()) || (src * 2) % 16 != 0)
    fail("cp.async source element " + std::to_string(src) + " misaligned or outside the operand");
  if (src + src_bytes / 2 > static_cast<int64_t>(g.data.size()))
    fail("cp.async reads past the end of the operand (element " + std::to_string(src) + ", " +
         std::to_string(src_bytes) + " bytes)");
  Copy c{dst, {}};
  std::memset(c.data, 0, 16);
  if (src_bytes > 0) std::memcpy(c.data, g.data.data() + src, src_bytes);
  // The copy may land at any moment until its wait: the destination is undefined from now on.
  for (int i = 0; i < 16; ++i) sm.state[dst + i] = kUndefined;
  as.uncommitted.push_back(c);
}

inline void cp_async_commit(AsyncState& as) {
  as.pending.push_back(std::move(as.uncommitted));
  as.uncommitted.clear();
}

// cp.async.wait_group n: all but the n most recent groups land (visible to this thread only).
inline void cp_async_wait(Shared& sm, AsyncState& as, int n) {
  while (static_cast<int>(as.pending.size()) > n) {
    for (const Copy& c : as.pending.front()) {
      std::memcpy(sm.bytes.data() + c.dst, c.data, 16);
      for (int i = 0; i < 16; ++i) sm.state[c.dst + i] = kLanded;
    }
    as.pending.pop_front();
  }
}

// st.shared.b16 of one element by one thread (the element gathers): visible to the CTA only after
// the next bar.sync, like a landed copy.
inline void st_shared_b16(Shared& sm, uint32_t addr, int16_t v) {
  if (addr % 2 != 0 || addr + 2 > static_cast<uint32_t>(sm.size()))
    fail("st.shared.b16 at " + std::to_string(addr) + " misaligned or outside shared memory");
  std::memcpy(sm.bytes.data() + addr, &v, 2);
  sm.state[addr] = sm.state[addr + 1] = kLanded;
}

// bar.sync: whatever each thread has landed becomes visible to the CTA.
inline void syncthreads(Shared& sm) {
  for (uint8_t& s : sm.state)
    if (s == kLanded) s = kPublished;
}

inline double read_b16(const Shared& sm, uint32_t addr) {
  if (sm.state[addr] != kPublished || sm.state[addr + 1] != kPublished) return kPoison;
  int16_t v;
  std::memcpy(&v, sm.bytes.data() + addr, 2);
  return v;
}

// Quarter-warp (or ldmatrix phase) of 8 16-byte accesses: conflict-free when the 8 chunks fall in
// 8 distinct 16-byte bank groups of a 128-byte line.
inline bool chunks_conflict(const uint32_t (&addr)[8]) {
  unsigned seen = 0;
  for (uint32_t a : addr) {
    const unsigned bit = 1u << ((a / 16) % 8);
    if (seen & bit) return true;
    seen |= bit;
  }
  return false;
}

// ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16 r, [addr[lane]] for all 32 lanes of a warp.
inline void ldmatrix_x4(const Shared& sm, const uint32_t (&addr)[32], bool trans, Reg (&r)[32][4], Counters& cnt) {
#if defined(EMU_PLANT_MODEL_TRANS)
  trans = false;
#endif
  for (int lane = 0; lane < 32; ++lane)
    if (addr[lane] % 16 != 0 || addr[lane] + 16 > static_cast<uint32_t>(sm.size()))
      fail("ldmatrix row address " + std::to_string(addr[lane]) + " of lane " + std::to_string(lane) +
           " misaligned or outside shared memory");
  for (int i = 0; i < 4; ++i) {
    uint32_t phase[8];
    for (int q = 0; q < 8; ++q) phase[q] = addr[8 * i + q];
    if (chunks_conflict(phase)) ++cnt.ldsm_conflicts;
  }
  // m(i, row, col): element col of the row that lane 8i+row addressed.
  auto m = [&](int i, int row, int col) { return read_b16(sm, addr[8 * i + row] + 2 * col); };
  for (int t = 0; t < 32; ++t)
    for (int i = 0; i < 4; ++i) {
      if (!trans) {
        r[t][i].lo = m(i, t / 4, 2 * (t % 4));
        r[t][i].hi = m(i, t / 4, 2 * (t % 4) + 1);
      } else {
        r[t][i].lo = m(i, 2 * (t % 4), t / 4);
        r[t][i].hi = m(i, 2 * (t % 4) + 1, t / 4);
      }
    }
}

inline double half_of(const Reg& r, int h) { return h == 0 ? r.lo : r.hi; }

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: d = A * B + d with the PTX fragment layouts.
inline void mma_16816(double (&d)[32][4], const Reg (&a)[32][4], const Reg (&b)[32][2]) {
  double A[16][16], B[16][8], C[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane % 4;
    for (int i = 0; i < 8; ++i) {
      const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
      const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
#if defined(EMU_PLANT_MODEL_AFRAG)
      const int reg = (i / 2 == 1 || i / 2 == 2) ? 3 - i / 2 : i / 2;
#else
      const int reg = i / 2;
#endif
      A[row][col] = half_of(a[lane][reg], i % 2);
    }
    for (int i = 0; i < 4; ++i) {
      const int row = 2 * t + (i & 1) + (i >= 2 ? 8 : 0);
      B[row][g] = half_of(b[lane][i / 2], i % 2);
    }
    for (int i = 0; i < 4; ++i) C[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)] = d[lane][i];
  }
  for (int row = 0; row < 16; ++row)
    for (int col = 0; col < 8; ++col) {
      double s = C[row][col];
      for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
      C[row][col] = s;
    }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane % 4;
    for (int i = 0; i < 4; ++i) d[lane][i] = C[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)];
  }
}


}  // namespace emu
