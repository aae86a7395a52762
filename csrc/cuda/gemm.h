// CUDA GEMM family (float32 / float16 / bfloat16). Host launchers (see gemm.cu) and the host-side
// launch decision, gemm_plan / bias_act_bwd_plan: plain C++ without CUDA headers, so the bindings
// expose the same decision in CPU-only builds (plan.h).
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../common.h"
#include "plan.h"

// gemm_split_k_range runs on the host (plans, tests) and in the split-K kernels.
#ifdef __CUDACC__
#define PYIMGCLS_GEMM_HD __host__ __device__
#else
#define PYIMGCLS_GEMM_HD
#endif

namespace pyimgcls::cuda {

// C[m, n] = act(sum_k A[m, k] * B[k, n] + bias[n]), fp32 accumulation, C in dt (row-major, ldc).
// A: a[m*sam + k*sak], B: b[k*sbk + n*sbn] (elements). Either operand may be row- or column-major
// (one of its strides == 1) — transposed views need no copy; fully strided operands take a
// slower generic path. bias may be null. Launches on `stream` of `device`; never synchronises.
// The kernel, tile and split-K count are gemm_plan(..., sm_count) of the same arguments. When that
// plan has splits > 1, `scratch` must hold plan.scratch float32 elements (16-byte aligned; the
// caller allocates it, scratch_floats is its size, checked); otherwise scratch may be null.
void gemm(DType dt, const void* a, int64_t sam, int64_t sak, const void* b, int64_t sbk, int64_t sbn,
          const void* bias, void* c, int64_t ldc, int64_t M, int64_t N, int64_t K, Act act, int sm_count,
          void* scratch, int64_t scratch_floats, int device, uintptr_t stream);

// The same GEMM without split-K (plan with split_k = false, SM count queried from `device`): the
// single-kernel path for callers that hold no scratch (the study ladder's step 9).
void gemm(DType dt, const void* a, int64_t sam, int64_t sak, const void* b, int64_t sbk, int64_t sbn,
          const void* bias, void* c, int64_t ldc, int64_t M, int64_t N, int64_t K, Act act, int device,
          uintptr_t stream);

// Standalone activation over n dense elements: y = act(x); grad_in = act_grad(grad, saved) with
// saved the output (relu / relu6 / sigmoid) or the input (silu / hardswish / hardsigmoid).
void act_fwd(DType dt, const void* x, void* y, int64_t n, Act act, int device, uintptr_t stream);
void act_bwd(DType dt, const void* grad, const void* saved, void* grad_in, int64_t n, Act act, int device,
             uintptr_t stream);

// Backward of the epilogue on contiguous row-major [M, N] tensors (see cpu/gemm.h); fp32 sums,
// deterministic (no atomics). grad_pre may alias grad; grad_bias may be null.
void bias_act_bwd(DType dt, const void* grad, const void* out, void* grad_pre, void* grad_bias,
                  int64_t M, int64_t N, Act act, int device, uintptr_t stream);

// ---------------------------------------------------------------------------------------------
// Launch decision (host only, CUDA-free)
// ---------------------------------------------------------------------------------------------

// CTA tile configurations of gemm.cu's kernels: the SIMT configs are instantiated from these; the
// tensor-core TcConfig types live in tc_maps.h (shared with the CPU emulation) and gemm.cu
// static_asserts that they describe the same tiles, so the plan and the kernels cannot disagree.
struct GemmTile {
  bool tensor_cores;
  int bm, bn, bk;                   // CTA tile
  int warps_m, warps_n, stages;     // tensor-core kernels only (0 for SIMT)
  int min_blocks;                   // __launch_bounds__ minimum CTAs per SM
  int threads;
};
inline constexpr GemmTile kGemmTcLarge{true, 128, 128, 32, 2, 4, 4, 2, 256};
inline constexpr GemmTile kGemmTcMedium{true, 64, 128, 32, 1, 4, 4, 4, 128};
inline constexpr GemmTile kGemmTcSmall{true, 64, 64, 32, 2, 2, 4, 4, 128};
inline constexpr GemmTile kGemmSimtLarge{false, 128, 128, 8, 0, 0, 0, 2, 256};
inline constexpr GemmTile kGemmSimtSmall{false, 64, 64, 8, 0, 0, 0, 1, 64};

enum class GemmConfig : int { TcLarge, TcMedium, TcSmall, SimtLarge, SimtSmall };

inline const GemmTile& gemm_tile(GemmConfig c) {
  switch (c) {
    case GemmConfig::TcLarge: return kGemmTcLarge;
    case GemmConfig::TcMedium: return kGemmTcMedium;
    case GemmConfig::TcSmall: return kGemmTcSmall;
    case GemmConfig::SimtLarge: return kGemmSimtLarge;
    case GemmConfig::SimtSmall: return kGemmSimtSmall;
  }
  throw std::logic_error("gemm_tile: unknown configuration");
}

// Split-K policy. A split is only considered for the smallest tile (the larger ones are chosen only
// when their CTAs already cover the SMs) and only while the tiles alone leave SMs idle. The split
// count aims at kGemmSplitWaves CTAs per SM (all resident at once: the small tiles fit 4 per SM), so
// a memory-bound classifier head keeps ~2x the bytes in flight of one CTA per SM; each split gets at
// least kGemmSplitMinK elements of K (4 tensor-core K tiles, 16 SIMT ones) so the per-split fp32
// partials (M x N floats written and read once) stay small next to the operand reads.
inline constexpr int64_t kGemmSplitWaves = 2;
inline constexpr int64_t kGemmSplitMinK = 128;
inline constexpr int64_t kGemmMaxSplits = 64;
inline constexpr int kGemmReduceThreads = 256;  // split-K reduction: one thread per 4 columns of a row

// K range [begin, end) of split `split` when each split owns k_chunk elements of K: every begin is a
// multiple of k_chunk (itself a multiple of the K tile), the last range ends at K. Shared by the plan
// and the split-K kernels.
PYIMGCLS_GEMM_HD inline void gemm_split_k_range(int64_t K, int64_t k_chunk, int64_t split, int64_t* begin,
                                                int64_t* end) {
  const int64_t b = split * k_chunk;
  *begin = b < K ? b : K;
  *end = b + k_chunk < K ? b + k_chunk : K;
}

// LaunchPlan plus what the launcher needs to dispatch on the same decision.
struct GemmPlan : LaunchPlan {
  GemmConfig config = GemmConfig::SimtSmall;
  int64_t sam = 0, sak = 0, sbk = 0, sbn = 0, ldc = 0;  // strides after normalising size-1 dimensions
  bool a_kc = false, b_kc = false;  // operand read along K (template arguments A_KC / B_KC)
  // Vector access is legal on: a / b (SIMT: 4-wide loads along the unit stride), c (the writer of C:
  // 16-byte stores of the tensor-core epilogue, else 4-element stores of the SIMT epilogue or the
  // split-K reduction).
  bool a_vec = false, b_vec = false, c_vec = false;
  int64_t tiles = 0;      // CTA tiles of C = CTAs per split
  int64_t k_chunk = 0;    // K elements per split (multiple of tile_k; K when splits == 1)
  int64_t ldw = 0;        // row pitch of the fp32 partials: N rounded up to 8 (0 when splits == 1)
  int64_t scratch = 0;    // float32 scratch elements, splits * M * ldw (0 when splits == 1)
  int64_t reduce_ctas = 0;
};

inline int64_t gemm_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t gemm_abs(int64_t v) { return v < 0 ? -v : v; }

inline std::string gemm_dtype_type(DType dt) {
  switch (dt) {
    case DType::Float32: return "float";
    case DType::Float16: return "__half";
    case DType::BFloat16: return "__nv_bfloat16";
    default: throw std::invalid_argument(std::string("CUDA GEMM takes float32, float16 or bfloat16, got ") + dtype_name(dt));
  }
}

// The decision gemm() makes for these arguments on a GPU with sm_count SMs. Addresses only matter
// through their alignment. split_k = false forbids splitting (callers without scratch).
//   kernel:  tensor cores (mma.sync m16n8k16) for float16 / bfloat16 with both operands row- or
//            column-major, 16-byte aligned and leading dimensions a multiple of 8 elements; the
//            SIMT FFMA kernel otherwise. Largest tile whose CTAs still cover the SMs.
//   splits:  see kGemmSplitWaves; splits > 1 adds gemm_splitk_reduce_kernel (second launch).
//   vectorized: both operands read with vector loads (cp.async 16 B on tensor cores; on SIMT 4-wide
//            loads, 16 B for float32 and 8 B for the 16-bit dtypes).
inline GemmPlan gemm_plan(DType dt, uintptr_t a, int64_t sam, int64_t sak, uintptr_t b, int64_t sbk, int64_t sbn,
                          uintptr_t c, int64_t ldc, int64_t M, int64_t N, int64_t K, int sm_count,
                          bool split_k = true) {
  if (M < 0 || N < 0 || K < 0)
    throw std::invalid_argument("gemm: negative size M=" + std::to_string(M) + " N=" + std::to_string(N) +
                                " K=" + std::to_string(K));
  if (sm_count < 1) throw std::invalid_argument("gemm: sm_count must be >= 1, got " + std::to_string(sm_count));
  const std::string type = gemm_dtype_type(dt);
  const int64_t elem = dt == DType::Float32 ? 4 : 2;
  GemmPlan p;

  // 1. A stride over a dimension of size 1 is never used (PyTorch gives such dimensions arbitrary
  //    strides): normalise it so that the operand reads as row- or column-major with an aligned
  //    leading dimension whenever its other stride allows.
  if (M == 1 && K == 1) {
    sam = 0;
    sak = 1;
  } else if (M == 1) {
    sam = sak == 1 ? 0 : 1;
  } else if (K == 1) {
    sak = sam == 1 ? 0 : 1;
  }
  if (K == 1 && N == 1) {
    sbk = 1;
    sbn = 0;
  } else if (K == 1) {
    sbk = sbn == 1 ? 0 : 1;
  } else if (N == 1) {
    sbn = sbk == 1 ? 0 : 1;
  }
  if (M == 1) ldc = 0;
  p.sam = sam, p.sak = sak, p.sbk = sbk, p.sbn = sbn, p.ldc = ldc;
  if (M == 0 || N == 0) {  // nothing to compute: no launch
    p.launches = 0;
    return p;
  }
  auto tiles_of = [&](const GemmTile& t) { return gemm_ceil_div(M, t.bm) * gemm_ceil_div(N, t.bn); };

  // 2. Tensor-core path: 16-bit dtype, each operand row- or column-major, 16-byte aligned base,
  //    leading dimension a multiple of 8 elements (so every 8-element chunk is a 16-byte cp.async).
  bool tc = false;
  if (elem == 2) {
    const bool a_ok16 = a % 16 == 0, b_ok16 = b % 16 == 0;
    const bool a_kc = a_ok16 && sak == 1 && sam % 8 == 0;
    const bool a_mc = a_ok16 && sam == 1 && sak % 8 == 0;
    const bool b_kc = b_ok16 && sbk == 1 && sbn % 8 == 0;
    const bool b_nc = b_ok16 && sbn == 1 && sbk % 8 == 0;
    if ((a_kc || a_mc) && (b_kc || b_nc)) {
      tc = true;
      p.a_kc = a_kc, p.b_kc = b_kc;
      p.c_vec = c % 16 == 0 && ldc % 8 == 0;
      // Largest tile that still gives every SM a CTA; small-M classifier shapes fall to 64-row tiles.
      p.config = tiles_of(kGemmTcLarge) >= sm_count    ? GemmConfig::TcLarge
                 : tiles_of(kGemmTcMedium) >= sm_count ? GemmConfig::TcMedium
                                                       : GemmConfig::TcSmall;
    }
  }

  // 3. SIMT path: load each operand along its unit-stride dimension (vectorised when aligned),
  //    or along the smaller stride when it has none.
  if (!tc) {
    const uintptr_t vec_bytes = static_cast<uintptr_t>(4 * elem);
    if (sak == 1) {
      p.a_kc = true;
      p.a_vec = a % vec_bytes == 0 && sam % 4 == 0;
    } else if (sam == 1) {
      p.a_kc = false;
      p.a_vec = a % vec_bytes == 0 && sak % 4 == 0;
    } else {
      p.a_kc = gemm_abs(sak) <= gemm_abs(sam);
    }
    if (sbn == 1) {
      p.b_kc = false;
      p.b_vec = b % vec_bytes == 0 && sbk % 4 == 0;
    } else if (sbk == 1) {
      p.b_kc = true;
      p.b_vec = b % vec_bytes == 0 && sbn % 4 == 0;
    } else {
      p.b_kc = gemm_abs(sbk) <= gemm_abs(sbn);
    }
    p.c_vec = c % vec_bytes == 0 && ldc % 4 == 0;
    p.config = tiles_of(kGemmSimtLarge) >= sm_count ? GemmConfig::SimtLarge : GemmConfig::SimtSmall;
  }
  const GemmTile& t = gemm_tile(p.config);
  p.tiles = tiles_of(t);
  if (p.tiles > INT32_MAX)
    throw std::invalid_argument("gemm: M x N = " + std::to_string(M) + " x " + std::to_string(N) +
                                " needs more CTAs than one launch allows");

  // 4. Split-K (smallest tile only, see kGemmSplitWaves): balance the K tiles over the splits so that
  //    no split is empty, then recount.
  p.splits = 1;
  p.k_chunk = K;
  const bool smallest = p.config == GemmConfig::TcSmall || p.config == GemmConfig::SimtSmall;
  if (split_k && smallest && p.tiles < sm_count) {
    const int64_t k_tiles = gemm_ceil_div(K, t.bk);
    int64_t s = gemm_ceil_div(kGemmSplitWaves * sm_count, p.tiles);
    s = s < k_tiles / (kGemmSplitMinK / t.bk) ? s : k_tiles / (kGemmSplitMinK / t.bk);
    s = s < kGemmMaxSplits ? s : kGemmMaxSplits;
    if (s > 1) {
      const int64_t per = gemm_ceil_div(k_tiles, s);
      p.splits = gemm_ceil_div(k_tiles, per);
      p.k_chunk = per * t.bk;
      // Rows of 32-byte sectors, so the tensor-core kernel's 8-column partial runs fill whole sectors.
      p.ldw = gemm_ceil_div(N, 8) * 8;
      p.scratch = p.splits * M * p.ldw;
      p.reduce_ctas = gemm_ceil_div(M * gemm_ceil_div(N, 4), kGemmReduceThreads);
      if (p.reduce_ctas > INT32_MAX) throw std::invalid_argument("gemm: M x N too large for the split-K reduction");
      // C is written by the reduction only, in 4-element runs (the main kernel writes the partials).
      p.c_vec = c % static_cast<uintptr_t>(4 * elem) == 0 && ldc % 4 == 0;
    }
  }

  // 5. The public part of the decision.
  const bool split = p.splits > 1;
  const auto tf = [](bool v) { return v ? "true" : "false"; };
  const std::string cfg =
      t.tensor_cores ? "TcConfig<" + std::to_string(t.bm) + ", " + std::to_string(t.bn) + ", " +
                           std::to_string(t.warps_m) + ", " + std::to_string(t.warps_n) + ", " +
                           std::to_string(t.stages) + ", " + std::to_string(t.min_blocks) + ">"
                     : "SimtConfig<" + std::to_string(t.bm) + ", " + std::to_string(t.bn) + ", " +
                           std::to_string(t.min_blocks) + ">";
  p.kernel = std::string(t.tensor_cores ? "gemm_fwd_kernel<" : "gemm_simt_fwd_kernel<") + type + ", " + cfg + ", " +
             tf(p.a_kc) + ", " + tf(p.b_kc) + ", " + tf(split) + ">";
  if (split) p.kernel += " + gemm_splitk_reduce_kernel<" + type + ">";
  p.tensor_cores = t.tensor_cores;
  p.vectorized = t.tensor_cores || (p.a_vec && p.b_vec);
  p.tile_m = t.bm, p.tile_n = t.bn, p.tile_k = t.bk;
  p.ctas = p.tiles * p.splits + p.reduce_ctas;
  p.launches = split ? 2 : 1;
  return p;
}

// bias_act_bwd_kernel's strip width: wider strips coalesce better, narrower ones give more CTAs when
// N is small. The summation order per column depends only on blockDim.y = 1024 / strip width.
inline constexpr int kBiasActBwdThreads = 1024;

// The decision bias_act_bwd() makes: one CTA per strip of tile_n columns walking all M rows (tile_m
// 0: not tiled along M), no split reduction.
inline LaunchPlan bias_act_bwd_plan(DType dt, int64_t M, int64_t N, bool has_bias) {
  if (M < 0 || N < 0)
    throw std::invalid_argument("bias_act_bwd: negative size M=" + std::to_string(M) + " N=" + std::to_string(N));
  LaunchPlan p;
  p.kernel = "bias_act_bwd_kernel<" + gemm_dtype_type(dt) + ">";
  p.tile_n = N >= 8192 ? 32 : (N >= 2048 ? 16 : 8);
  // With M == 0 the bias gradient is still defined (zeros), so only a missing bias skips the launch.
  if (N == 0 || (M == 0 && !has_bias)) {
    p.launches = 0;
    return p;
  }
  p.ctas = gemm_ceil_div(N, p.tile_n);
  if (p.ctas > INT32_MAX) throw std::invalid_argument("bias_act_bwd: N too large");
  return p;
}

// act_fwd_kernel / act_bwd_kernel (gemm.cu): kActThreads threads per CTA, each CTA covering
// kActThreads * kActPerThread elements, at most kActMaxCtas CTAs (grid-stride beyond that).
inline constexpr int kActThreads = 256;
inline constexpr int64_t kActPerThread = 4;
inline constexpr int64_t kActMaxCtas = 65536;

// The decision act_fwd() / act_bwd() make for n elements: one grid-stride launch, none when n == 0.
inline LaunchPlan act_plan(DType dt, int64_t n, bool backward) {
  if (n < 0) throw std::invalid_argument("activation: negative size n=" + std::to_string(n));
  LaunchPlan p;
  p.kernel = std::string(backward ? "act_bwd_kernel<" : "act_fwd_kernel<") + gemm_dtype_type(dt) + ">";
  if (n == 0) {
    p.launches = 0;
    return p;
  }
  p.ctas = std::min(kActMaxCtas, gemm_ceil_div(n, kActThreads * kActPerThread));
  return p;
}

}  // namespace pyimgcls::cuda
