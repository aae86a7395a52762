// Vocabulary shared by the CPU kernels (csrc/cpu/*.cpp): PyTorch's activations (relu, relu6, silu,
// hardswish, sigmoid, hardsigmoid; scalar and vector, a vectorised exp) and their backward, the float32 / float64 dispatch of the entry points, and the one way a
// kernel body is compiled for several instruction sets (baseline x86-64, AVX2, AVX-512) and picked
// at run time (isa.h decides which). Written once so that a rule (NaN propagation, the backward's
// select) or a new instruction set reaches every kernel instead of one of several hand-kept copies.
#pragma once
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

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
// exp for the activations: float by the same Cephes steps as vec_exp below (branch-free, so loops
// over it vectorise, and scalar and vector paths give the same bits), double by libm.
inline double act_exp(double x) { return std::exp(x); }
inline float act_exp(float x) {
  x = x < -104.0f ? -104.0f : x;
  x = x > 89.0f ? 89.0f : x;
  float fn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  fn = fn == fn ? fn : 0.0f;
  float r = x - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + (r + 1.0f);
  const int32_t n = static_cast<int32_t>(fn);
  const int32_t e1 = ((n >> 1) + 127) << 23, e2 = ((n - (n >> 1)) + 127) << 23;
  float s1, s2;
  __builtin_memcpy(&s1, &e1, 4);
  __builtin_memcpy(&s2, &e2, 4);
  return y * s1 * s2;
}

template <typename T>
inline T apply_act(T v, Act act) {
  if (act == Act::ReLU) return v < T(0) ? T(0) : v;
  if (act == Act::ReLU6) return v < T(0) ? T(0) : (v > T(6) ? T(6) : v);
  if (act == Act::SiLU) return v / (T(1) + act_exp(-v));
  if (act == Act::Sigmoid) return T(1) / (T(1) + act_exp(-v));
  if (act == Act::Hardswish || act == Act::Hardsigmoid) {
    // relu6(v + 3) / 6 with relu6's selects: NaN stays NaN
    const T u = v + T(3);
    const T r = (u < T(0) ? T(0) : (u > T(6) ? T(6) : u)) / T(6);
    return act == Act::Hardswish ? v * r : r;
  }
  return v;
}

// Scalar, activation as a template argument: a loop over elements then compiles to branch-free
// blends (a run-time switch inside it costs a branch per element).
template <Act ACT, typename T>
inline T apply_act(T v) {
  return apply_act(v, ACT);
}

// exp on a GCC vector of float or double. float: the Cephes expf (as softmax_xent.cpp's exp512,
// written with vector extensions so that one body serves SSE2 / AVX2 / AVX-512): exp(x) = 2^n exp(r),
// n = round(x / ln 2), r = x - n ln 2 (ln 2 in two parts, an exact reduction), exp(r) by a degree-7
// polynomial, ~1 ulp. 2^n is applied as two exponent-field factors 2^(n/2) 2^(n - n/2), so results
// below FLT_MIN round once into the subnormals (as expf) and x > 88.73 overflows to inf; x is clamped
// to [-104, 89], beyond which the result is 0 / inf anyway. NaN passes the clamps (comparisons with
// it are false) and the polynomial, and comes out NaN. double: libm's exp lane by lane.
// In place: a wide vector passed or returned by value trips -Wpsabi (below).
template <typename V>
PYIMGCLS_INLINE void vec_exp_in_place(V& x) {
  using T = std::remove_cv_t<std::remove_reference_t<decltype(x[0])>>;
  constexpr int L = sizeof(V) / sizeof(T);
  if constexpr (std::is_same_v<T, float>) {
    typedef int32_t I __attribute__((vector_size(sizeof(V))));
    x = x < -104.0f ? -104.0f : x;
    x = x > 89.0f ? 89.0f : x;
    // round to nearest by the 1.5 * 2^23 shift (|x / ln 2| < 2^22); a NaN lane becomes n = 0
    V fn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    fn = fn == fn ? fn : 0.0f;
    V r = x - fn * 0.693359375f;
    r = r - fn * -2.12194440e-4f;
    V y = V{} + 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * (r * r) + (r + 1.0f);
    const I n = __builtin_convertvector(fn, I);
    const I n1 = n >> 1;
    const I n2 = n - n1;
    x = y * (V)((n1 + 127) << 23) * (V)((n2 + 127) << 23);
  } else {
    for (int i = 0; i < L; ++i) x[i] = std::exp(x[i]);
  }
}

// Vector form, lane by lane on a GCC vector-extension value (the 0 / 6 broadcast). In place: a
// wide vector passed or returned by value through a function compiled for the baseline target
// trips -Wpsabi, even when inlined.
template <typename V>
PYIMGCLS_INLINE void apply_act_in_place(V& v, Act act) {
  if (act == Act::ReLU) v = v < 0 ? 0 : v;
  else if (act == Act::ReLU6) v = v < 0 ? 0 : (v > 6 ? 6 : v);
  else if (act == Act::SiLU || act == Act::Sigmoid) {
    V e = -v;
    vec_exp_in_place(e);
    v = act == Act::SiLU ? v / (1 + e) : 1 / (1 + e);
  }
  else if (act == Act::Hardswish || act == Act::Hardsigmoid) {
    V u = v + 3;
    u = (u < 0 ? 0 : (u > 6 ? 6 : u)) / 6;
    v = act == Act::Hardswish ? v * u : u;
  }
}

// Backward. relu / relu6 with the select semantics of ATen's threshold_backward (relu: the gradient
// is dropped where out <= 0) and hardtanh_backward (relu6: where out <= 0 or out >= 6), on the saved
// output: a NaN output passes its gradient, and a dropped position gives 0 even for an inf / NaN
// gradient (a select, never a multiply by 0 / 1).
template <Act ACT, typename T>
PYIMGCLS_INLINE bool act_drops(T out) {
  if constexpr (ACT == Act::ReLU) return out <= T(0);
  if constexpr (ACT == Act::ReLU6) return out <= T(0) || out >= T(6);
  return false;
}

// The gradient through the activation from the saved tensor s: the output for relu / relu6 /
// sigmoid, the pre-activation for silu / hardswish / hardsigmoid (act_grad_reads_input). ATen's
// formulas, comparisons included:
//   sigmoid_backward      g * (1 - y) * y
//   silu_backward         g * sig * (1 + x * (1 - sig)),  sig = 1 / (1 + exp(-x))
//   hardswish_backward    x <= -3: 0;  x < 3: g * (x / 3 + 0.5);  else g   (NaN x passes g)
//   hardsigmoid_backward  -3 < x < 3: g / 6;  else 0                        (NaN x gives 0)
// g arrives as an argument, so it is loaded whether or not it is kept: the select becomes a vector
// blend (a conditional load would keep a loop scalar).
template <Act ACT, typename T>
PYIMGCLS_INLINE T act_grad(T s, T g) {
  if constexpr (ACT == Act::Sigmoid) {
    return g * (T(1) - s) * s;
  } else if constexpr (ACT == Act::SiLU) {
    const T sig = T(1) / (T(1) + act_exp(-s));
    return g * sig * (T(1) + s * (T(1) - sig));
  } else if constexpr (ACT == Act::Hardswish) {
    return s <= T(-3) ? T(0) : (s < T(3) ? g * (s / T(3) + T(0.5)) : g);
  } else if constexpr (ACT == Act::Hardsigmoid) {
    return (s > T(-3) && s < T(3)) ? g / T(6) : T(0);
  } else {
    return act_drops<ACT>(s) ? T(0) : g;
  }
}

// Calls f(std::integral_constant<Act, ACT>) for a run-time act, so loops compile per activation.
// Always inlined: called out of line, it and the lambda bodies it calls were compiled once for the
// baseline target even inside the AVX-512 / AVX2 wrappers (Compiled<isa>), so every activation loop
// ran scalar SSE code (standalone SiLU 13x, eval batch norm + SiLU 9x PyTorch's time).
template <typename F>
PYIMGCLS_INLINE decltype(auto) dispatch_act(Act act, F&& f) {
  switch (act) {
    case Act::ReLU: return f(std::integral_constant<Act, Act::ReLU>{});
    case Act::ReLU6: return f(std::integral_constant<Act, Act::ReLU6>{});
    case Act::SiLU: return f(std::integral_constant<Act, Act::SiLU>{});
    case Act::Hardswish: return f(std::integral_constant<Act, Act::Hardswish>{});
    case Act::Sigmoid: return f(std::integral_constant<Act, Act::Sigmoid>{});
    case Act::Hardsigmoid: return f(std::integral_constant<Act, Act::Hardsigmoid>{});
    default: return f(std::integral_constant<Act, Act::None>{});
  }
}

// ---------------------------------------------------------------------------------------------
// dtype dispatch
// ---------------------------------------------------------------------------------------------
// The entry points take untyped pointers and a dtype code; the kernels are templates on the
// element type. Returns f(float{}) or f(double{}) for dt; any other dtype is an error naming the
// operation (`what`): the Python layer computes float16 / bfloat16 in float32, except the GEMM and
// convolution families, which take bfloat16 in their own entry points (gemm_bf16, conv.cpp).
template <typename F>
decltype(auto) dispatch_float(DType dt, const char* what, F&& f) {
  if (dt == DType::Float32) return f(float{});
  if (dt == DType::Float64) return f(double{});
  throw std::invalid_argument(std::string(what) + " takes float32 or float64, got " + dtype_name(dt));
}

// ---------------------------------------------------------------------------------------------
// bfloat16 storage (the bf16 GEMM and convolution: gemm.cpp, conv.cpp)
// ---------------------------------------------------------------------------------------------
// A bf16 value is the high half of a float32: widening is a 16-bit shift (exact). Narrowing rounds
// to nearest, ties to even, as c10::BFloat16 does (round_to_nearest_even); every NaN becomes the
// quiet NaN 0x7FC0, as there. Branch-free, so loops over it vectorise.
PYIMGCLS_INLINE float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
PYIMGCLS_INLINE uint16_t float_to_bf16(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t(0x7FC0) : static_cast<uint16_t>(rounded);
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
