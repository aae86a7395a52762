// Run-time instruction-set selection shared by the CPU kernels. Kernels are compiled for the
// baseline x86-64 target; wider bodies are built inside __attribute__((target(...))) wrappers and
// chosen here, once per call, so the module runs on any x86-64 (never -march=native).
// PYIMGCLS_CPU_ISA=generic|avx2|avx512|avx512bf16 lowers the choice (clamped to what the CPU has),
// so tests can exercise every path on one machine. avx512bf16 is AVX-512 plus the bf16 dot product
// (vdpbf16ps) of the bfloat16 GEMM (gemm.cpp); every other value, "avx512" included, sends bfloat16
// GEMMs to their fallback (float32 math on the same bf16 operands).
#pragma once
#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 intrinsics (_mm512_max_ps, _mm512_scalef_ps, _mm512_roundscale_ps, ...) pass an
// _mm512_undefined_ps() operand to their masked builtins, which -Wuninitialized reports at every
// inlined use (GCC bug 105593, fixed in GCC 13). The warning's location is inside the header, so
// it is silenced for the header's lines only; our own code keeps the warning.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#define PYIMGCLS_X86 1
#define PYIMGCLS_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma,avx2")))
#define PYIMGCLS_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define PYIMGCLS_TARGET_AVX512BF16 \
  __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx512bf16,fma,avx2")))
#endif
// Always inlined, so a helper is compiled for the instruction set of the kernel that calls it.
#define PYIMGCLS_INLINE inline __attribute__((always_inline))
// On a function whose loops copy or zero short runs (tens of bytes): GCC's loop distribution would
// turn each run into a memcpy / memset call, costlier than the run itself (conv.cpp's im2col,
// gemm.cpp's packers; measured with perf).
#if defined(__GNUC__) && !defined(__clang__)
#define PYIMGCLS_INLINE_RUNS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define PYIMGCLS_INLINE_RUNS
#endif

namespace pyimgcls::cpu {

enum class Isa : int { Generic = 0, Avx2 = 1, Avx512 = 2 };

// What the CPU supports; detected once (cpuid does not change while the process runs).
inline Isa hardware_isa() {
#ifdef PYIMGCLS_X86
  static const Isa hw = [] {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return Isa::Generic;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
      return Isa::Avx512;
    return Isa::Avx2;
  }();
  return hw;
#else
  return Isa::Generic;
#endif
}

// The hardware answer capped by PYIMGCLS_CPU_ISA, read on every call (a getenv costs well under a
// microsecond) so a test can switch paths inside one process. An unknown value is an error.
inline Isa active_isa() {
  const Isa hw = hardware_isa();
  const char* env = std::getenv("PYIMGCLS_CPU_ISA");
  if (env == nullptr || env[0] == '\0') return hw;
  const std::string want(env);
  Isa req;
  if (want == "generic") req = Isa::Generic;
  else if (want == "avx2") req = Isa::Avx2;
  else if (want == "avx512" || want == "avx512bf16") req = Isa::Avx512;
  else
    throw std::invalid_argument("PYIMGCLS_CPU_ISA must be generic, avx2, avx512 or avx512bf16, got '" + want + "'");
  return static_cast<Isa>(std::min(static_cast<int>(req), static_cast<int>(hw)));
}

// The bf16 dot product (AVX512_BF16: vdpbf16ps), used by the bfloat16 GEMM only: on when the CPU has
// it with AVX-512 and PYIMGCLS_CPU_ISA is unset or "avx512bf16" (active_isa validates the value).
inline bool bf16_dot_active() {
#ifdef PYIMGCLS_X86
  static const bool hw = [] {
    __builtin_cpu_init();
    return hardware_isa() == Isa::Avx512 && __builtin_cpu_supports("avx512bf16");
  }();
  if (!hw || active_isa() != Isa::Avx512) return false;
  const char* env = std::getenv("PYIMGCLS_CPU_ISA");
  return env == nullptr || env[0] == '\0' || std::string(env) == "avx512bf16";
#else
  return false;
#endif
}

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    case Isa::Generic: return "generic";
  }
  return "generic";
}

}  // namespace pyimgcls::cpu
