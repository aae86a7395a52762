// Vocabulary shared by the CPU kernels (csrc/cpu/*.cpp): PyTorch's relu / relu6 and their
// select-style backward, the float32 / float64 dispatch of the entry points, and the one way a
// kernel body is compiled for several instruction sets (baseline x86-64, AVX2, AVX-512) and picked
// at run time (isa.h decides which). Written once so that a rule (NaN propagation, the backward's
// select) or a new instruction set reaches every kernel instead of one of several hand-kept copies.
#pragma once
#include <stdexcept>
#include <string>

#include "../common.h"
#include "isa.h"

namespace pyimgcls::cpu {

// ---------------------------------------------------------------------------------------------
// Activations
// ---------------------------------------------------------------------------------------------
// Written as `v < 0` / `v > 6` selects so that NaN compares false and falls through unchanged, as
// torch.relu / relu6 propagate it (relu(NaN) = relu6(NaN) = NaN). On x86 these selects give
// exactly what maxps(0, v) / minps(6, v) give (-0 and NaN included): those return the second
// operand when either is NaN or both are zero.
//
// Scalar, activation known at run time. A flat function on purpose: the register-starved kernels
// that call it (the direct convolution) are allocated differently by GCC when it is built from
// nested helpers, a few per cent either way, though the arithmetic is the same.
template <typename T>
inline T apply_act(T v, Act act) {
  if (act == Act::ReLU) return v < T(0) ? T(0) : v;
  if (act == Act::ReLU6) return v < T(0) ? T(0) : (v > T(6) ? T(6) : v);
  return v;
}

// Scalar, activation as a template argument: a loop over elements then compiles to branch-free
// blends (a run-time switch inside it costs a branch per element).
template <Act ACT, typename T>
inline T apply_act(T v) {
  return apply_act(v, ACT);
}

// Vector form, lane by lane on a GCC vector-extension value (the 0 / 6 broadcast). In place: a
// wide vector passed or returned by value through a function compiled for the baseline target
// trips -Wpsabi, even when inlined.
template <typename V>
PYIMGCLS_INLINE void apply_act_in_place(V& v, Act act) {
  if (act == Act::ReLU) v = v < 0 ? 0 : v;
  else if (act == Act::ReLU6) v = v < 0 ? 0 : (v > 6 ? 6 : v);
}

// Backward, with the select semantics of ATen's threshold_backward (relu: the gradient is dropped
// where out <= 0) and hardtanh_backward (relu6: where out <= 0 or out >= 6), on the saved output:
// a NaN output passes its gradient, and a dropped position gives 0 even for an inf / NaN gradient
// (a select, never a multiply by 0 / 1).
template <Act ACT, typename T>
PYIMGCLS_INLINE bool act_drops(T out) {
  if constexpr (ACT == Act::ReLU) return out <= T(0);
  if constexpr (ACT == Act::ReLU6) return out <= T(0) || out >= T(6);
  return false;
}

// The gradient through the activation. g arrives as an argument, so it is loaded whether or not
// it is kept: the select becomes a vector blend (a conditional load would keep a loop scalar).
template <Act ACT, typename T>
PYIMGCLS_INLINE T act_grad(T out, T g) {
  return act_drops<ACT>(out) ? T(0) : g;
}

// ---------------------------------------------------------------------------------------------
// dtype dispatch
// ---------------------------------------------------------------------------------------------
// The entry points take untyped pointers and a dtype code; the kernels are templates on the
// element type. Returns f(float{}) or f(double{}) for dt; any other dtype is an error naming the
// operation (`what`): the Python layer computes float16 / bfloat16 in float32.
template <typename F>
decltype(auto) dispatch_float(DType dt, const char* what, F&& f) {
  if (dt == DType::Float32) return f(float{});
  if (dt == DType::Float64) return f(double{});
  throw std::invalid_argument(std::string(what) + " takes float32 or float64, got " + dtype_name(dt));
}

// ---------------------------------------------------------------------------------------------
// One body, several instruction sets
// ---------------------------------------------------------------------------------------------
// The module is compiled for the baseline x86-64 target (never -march=native). A kernel that gains
// from wider vectors is written once, as a struct `Body` with a PYIMGCLS_INLINE static
// `run(...)`; Compiled<isa, Body>::run is that body inlined into a wrapper compiled for `isa`
// (__attribute__((target)) on x86); isa_variant (a function pointer) or run_isa (a direct call)
// picks the wrapper for a run-time isa.
//
// The body itself is parsed for the baseline target, so it is written in portable code: scalar
// loops the compiler vectorises, or GCC vector extensions (Vec below), never intrinsics, and wide
// vectors never go by value through a function that is not inlined into the wrapper. A multiply
// feeding an add (`acc += a * b`) becomes one FMA where the target has it (GCC contracts within
// and across expressions by default, -ffp-contract=fast): the AVX2 / AVX-512 variants of a body
// round like vfmadd, the baseline one like a multiply then an add.
//
// Each wrapper starts on a 64-byte boundary, so where its hot loops fall relative to the fetch
// blocks does not depend on the code linked before it: the same LeNet direct-convolution code ran
// 5% slower or faster from its placement alone.
#define PYIMGCLS_KERNEL_ALIGN __attribute__((aligned(64)))

template <Isa isa, class Body>
struct Compiled;

template <class Body>
struct Compiled<Isa::Generic, Body> {
  template <class... A>
  PYIMGCLS_KERNEL_ALIGN static void run(A... a) { Body::run(a...); }
};

#ifdef PYIMGCLS_X86
template <class Body>
struct Compiled<Isa::Avx2, Body> {
  template <class... A>
  PYIMGCLS_TARGET_AVX2 PYIMGCLS_KERNEL_ALIGN static void run(A... a) { Body::run(a...); }
};

template <class Body>
struct Compiled<Isa::Avx512, Body> {
  template <class... A>
  PYIMGCLS_TARGET_AVX512 PYIMGCLS_KERNEL_ALIGN static void run(A... a) { Body::run(a...); }
};
#endif

// Body compiled for isa, as a pointer of type Fn: Fn's parameter types are the wrapper's (a
// `const X&` parameter stays a reference).
template <class Fn, class Body>
Fn isa_variant(Isa isa) {
#ifdef PYIMGCLS_X86
  if (isa == Isa::Avx512) return &Compiled<Isa::Avx512, Body>::run;
  if (isa == Isa::Avx2) return &Compiled<Isa::Avx2, Body>::run;
#endif
  (void)isa;
  return &Compiled<Isa::Generic, Body>::run;
}

// Runs Body for isa with direct calls (arguments by reference): where a body runs once per call,
// its baseline variant can then be inlined into the caller, as a call through isa_variant's
// pointer cannot.
template <class Body, class... A>
void run_isa(Isa isa, const A&... a) {
#ifdef PYIMGCLS_X86
  if (isa == Isa::Avx512) return Compiled<Isa::Avx512, Body>::template run<const A&...>(a...);
  if (isa == Isa::Avx2) return Compiled<Isa::Avx2, Body>::template run<const A&...>(a...);
#endif
  Compiled<Isa::Generic, Body>::template run<const A&...>(a...);
}

// The widest vector register of each instruction set, in bytes: SSE2 (or NEON) for the baseline.
constexpr int vec_bytes(Isa isa) { return isa == Isa::Avx512 ? 64 : isa == Isa::Avx2 ? 32 : 16; }

// A GCC / Clang vector-extension type of BYTES / sizeof(T) lanes of T.
template <typename T, int BYTES>
struct VecOf {
  typedef T type __attribute__((vector_size(BYTES)));
};
template <typename T, int BYTES>
using Vec = typename VecOf<T, BYTES>::type;

}  // namespace pyimgcls::cpu
