// CPU study ladder: step tables and dispatch (see ladder.h and docs/ladder.md).
//
// Every step of csrc/cpu/ladder/ is a template; this file instantiates it for float32 / float64
// and, for the steps whose inner loops the compiler vectorises (GEMM 2-5, conv 2-4), once per
// instruction set, chosen at run time (isa_variant, common.h), exactly as the production kernels
// are built (the module targets baseline x86-64). So every vectorised step uses the same vector
// width as the production step it is compared with: the ladder measures algorithm, not compiler
// flags. Steps 1 (naive loops) stay scalar baseline code.
//
// Test: pytest tests/test_ladder.py     Benchmark: python benchmarks/bench_ladder.py
#include "ladder.h"

#include <stdexcept>
#include <string>

#include "common.h"
#include "ladder/conv/01_direct.h"
#include "ladder/conv/02_im2col_gemm.h"
#include "ladder/conv/03_implicit_gemm.h"
#include "ladder/conv/04_nhwc_implicit_gemm.h"
#include "ladder/conv/05_fused_epilogue.h"
#include "ladder/gemm/01_naive.h"
#include "ladder/gemm/02_loop_order.h"
#include "ladder/gemm/03_cache_blocking.h"
#include "ladder/gemm/04_packing.h"
#include "ladder/gemm/05_openmp.h"
#include "ladder/gemm/06_microkernel.h"

namespace pyimgcls::cpu::ladder {
namespace {

constexpr unsigned kF32F64 = (1u << int(DType::Float32)) | (1u << int(DType::Float64));

// ----- per-ISA instantiations ---------------------------------------------------------------
// Each vectorised step as a body (common.h) over the signature its caller takes, compiled once per
// instruction set; pick() returns the variant of the active one (PYIMGCLS_CPU_ISA can lower it, as
// for the production kernels).
using GemmFn = void (*)(const void*, const void*, void*, int64_t, int64_t, int64_t);

template <typename T>
struct LoopOrder {
  static PYIMGCLS_INLINE void run(const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K) {
    gemm_loop_order<T>(static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(c), M, N, K);
  }
};

template <typename T>
struct CacheBlocking {
  static PYIMGCLS_INLINE void run(const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K) {
    gemm_cache_blocking<T>(static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(c), M, N, K);
  }
};

template <typename T>
struct Packing {
  static PYIMGCLS_INLINE void run(const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K) {
    gemm_packing<T>(static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(c), M, N, K);
  }
};

template <typename T>
struct Block {
  static PYIMGCLS_INLINE void run(const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc, int64_t mc,
                                  int64_t nc, int64_t kc, bool first) {
    block_ikj<T>(a, lda, b, ldb, c, ldc, mc, nc, kc, first);
  }
};

template <typename T>
struct NhwcRow {
  static PYIMGCLS_INLINE void run(const T* x, const T* w, T* y, const ConvGeom& g, int64_t n, int64_t oh) {
    conv_nhwc_row<T>(x, w, y, g, n, oh);
  }
};

template <class Fn, class Body>
Fn pick() {
  return isa_variant<Fn, Body>(active_isa());
}

template <typename T>
void naive_any(const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K) {
  gemm_naive<T>(static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(c), M, N, K);
}

template <typename T>
void openmp_any(const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K) {
  gemm_openmp<T>(static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(c), M, N, K,
                 pick<BlockFn<T>, Block<T>>());
}

template <typename T>
void microkernel_any(const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K) {
  gemm_microkernel<T>(static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(c), M, N, K);
}

template <typename T>
GemmFn gemm_fn(int step) {
  switch (step) {
    case 1: return &naive_any<T>;
    case 2: return pick<GemmFn, LoopOrder<T>>();
    case 3: return pick<GemmFn, CacheBlocking<T>>();
    case 4: return pick<GemmFn, Packing<T>>();
    case 5: return &openmp_any<T>;
    default: return &microkernel_any<T>;
  }
}

template <typename T>
void conv_run(int step, const void* xv, const void* wv, const void* bv, void* yv, void* scratch,
              const ConvGeom& g, Act act) {
  const T* x = static_cast<const T*>(xv);
  const T* w = static_cast<const T*>(wv);
  const T* bias = static_cast<const T*>(bv);
  T* y = static_cast<T*>(yv);
  const int64_t P = g.OH * g.OW;
  switch (step) {
    case 1: conv_direct<T>(x, w, y, g); break;
    case 2: conv_im2col_gemm<T>(x, w, y, static_cast<T*>(scratch), g, pick<BlockFn<T>, Block<T>>()); break;
    case 3: conv_implicit_gemm<T>(x, w, y, g, pick<BlockFn<T>, Block<T>>()); break;
    case 4: conv_nhwc_implicit_gemm<T>(x, w, y, g, pick<NhwcRowFn<T>, NhwcRow<T>>()); break;
    default: conv_fused_epilogue<T>(x, w, bias, y, g, act); return;  // epilogue fused
  }
  bias_act_pass<T>(y, bias, act, g.N, g.O, P, step == 4);  // steps 1-4: separate pass
}

const StepInfo& find_step(const std::vector<StepInfo>& table, const char* kind, int step, DType dt) {
  if (step < 1 || step > static_cast<int>(table.size())) {
    std::string names;
    for (const auto& s : table) names += (names.empty() ? "" : ", ") + std::to_string(s.step) + " (" + s.name + ")";
    throw std::invalid_argument(std::string("step: the CPU ") + kind + " ladder has steps " + names + "; got " +
                                std::to_string(step));
  }
  const StepInfo& info = table[step - 1];
  if (!(info.dtype_mask & (1u << int(dt))))
    throw std::invalid_argument(std::string("dtype: CPU ") + kind + " ladder step " + std::to_string(step) +
                                " takes float32 or float64, got " + dtype_name(dt));
  return info;
}

void check_nonneg(const char* what, int64_t v) {
  if (v < 0) throw std::invalid_argument(std::string(what) + " must be non-negative, got " + std::to_string(v));
}

}  // namespace

const std::vector<StepInfo>& gemm_steps() {
  static const std::vector<StepInfo> steps = {
      {1, "naive", "i-j-k triple loop, one scalar dot product per output (B read down columns)", kF32F64, false, false},
      {2, "loop_order", "i-k-j order: unit-stride rows of B and C, inner loop vectorised", kF32F64, false, false},
      {3, "cache_blocking", "MC x KC x NC blocks so the B block stays in L2 and the C row in L1", kF32F64, false,
       false},
      {4, "packing", "copy each A and B block into contiguous buffers (no 4 KiB-stride conflicts)", kF32F64, false,
       false},
      {5, "openmp", "all cores: shared packed B block, C tiles split over OpenMP threads", kF32F64, false, false},
      {6, "microkernel",
       "register-tiled SIMD micro-kernel (production pyimgcls::cpu::gemm, called not copied)", kF32F64, false, false},
  };
  return steps;
}

const std::vector<StepInfo>& conv_steps() {
  static const std::vector<StepInfo> steps = {
      {1, "direct", "seven nested loops over NCHW, bias/act in a separate pass", kF32F64, false, true},
      {2, "im2col_gemm", "explicit im2col column matrix + GEMM ladder step 5 (openmp)", kF32F64, false, true},
      {3, "implicit_gemm", "im2col gathered straight into the GEMM's packed B block, no column buffer", kF32F64,
       false, true},
      {4, "nhwc_implicit_gemm", "NHWC: channel axis as the vectorised reduction (CPU analogue of the MMA step)",
       kF32F64, true, false},
      {5, "fused_epilogue",
       "production conv (pyimgcls::cpu::conv2d_fwd, called not copied): micro-kernel GEMM, bias/act fused",
       kF32F64, true, true},
  };
  return steps;
}

void gemm(int step, DType dt, const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K) {
  find_step(gemm_steps(), "gemm", step, dt);
  check_nonneg("M", M);
  check_nonneg("N", N);
  check_nonneg("K", K);
  if (M == 0 || N == 0) return;
  dispatch_float(dt, "CPU GEMM ladder", [&](auto t) { gemm_fn<decltype(t)>(step)(a, b, c, M, N, K); });
}

int64_t conv_scratch_bytes(int step, DType dt, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH,
                           int64_t KW, int64_t OH, int64_t OW) {
  find_step(conv_steps(), "conv", step, dt);
  (void)N, (void)H, (void)W, (void)O;
  if (step != 2) return 0;
  const int64_t elt = dt == DType::Float32 ? 4 : 8;
  return C * KH * KW * OH * OW * elt;  // one image's column matrix, reused image by image
}

void conv2d(int step, DType dt, const void* x, const void* w, const void* bias, void* y, void* scratch, int64_t N,
            int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW, int64_t OH, int64_t OW,
            int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, Act act) {
  find_step(conv_steps(), "conv", step, dt);
  const char* names[] = {"N", "C", "H", "W", "O", "KH", "KW", "OH", "OW", "padding", "padding"};
  const int64_t vals[] = {N, C, H, W, O, KH, KW, OH, OW, pad_h, pad_w};
  for (int i = 0; i < 11; ++i) check_nonneg(names[i], vals[i]);
  if (stride_h < 1 || stride_w < 1) throw std::invalid_argument("stride must be positive");
  if (KH < 1 || KW < 1) throw std::invalid_argument("weight: kernel size must be positive");
  if (OH != (H + 2 * pad_h - KH) / stride_h + 1 || OW != (W + 2 * pad_w - KW) / stride_w + 1 ||
      H + 2 * pad_h < KH || W + 2 * pad_w < KW)
    throw std::invalid_argument("OH/OW do not match the input size, kernel, stride and padding");
  if (step == 2 && scratch == nullptr && C * KH * KW * OH * OW > 0)
    throw std::invalid_argument("scratch: step 2 needs conv_scratch_bytes(...) bytes of scratch");
  if (N == 0 || O == 0 || OH == 0 || OW == 0) return;
  const ConvGeom g{N, C, H, W, O, KH, KW, OH, OW, stride_h, stride_w, pad_h, pad_w};
  dispatch_float(dt, "CPU conv ladder",
                 [&](auto t) { conv_run<decltype(t)>(step, x, w, bias, y, scratch, g, act); });
}

}  // namespace pyimgcls::cpu::ladder
