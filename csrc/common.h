// Shared definitions for the torch-free native module pyimgcls._C.
// Every launcher takes raw pointers, sizes and strides in *elements*, plus a dtype code;
// the codes must match pyimgcls/_native.py (DTYPE_CODES).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

// Functions compiled twice, by nvcc into the kernels and by g++ into the host code and the CPU
// checks of their index arithmetic (csrc/cuda/conv.h, csrc/cuda/tc_maps.h).
#if defined(__CUDACC__)
#define PYIMGCLS_HD __host__ __device__ __forceinline__
#else
#define PYIMGCLS_HD inline
#endif

namespace pyimgcls {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// Epilogue activation applied on the fp32 (fp64) accumulator after the bias add. The codes are
// pyimgcls/_native.py ACT_CODES. ATen's formulas: silu x / (1 + exp(-x)), hardswish
// x * relu6(x + 3) / 6, sigmoid 1 / (1 + exp(-x)), hardsigmoid relu6(x + 3) / 6.
enum class Act : int { None = 0, ReLU = 1, ReLU6 = 2, SiLU = 3, Hardswish = 4, Sigmoid = 5, Hardsigmoid = 6 };

// Which tensor an activation's backward reads (the one saved for it): relu, relu6 and sigmoid
// differentiate from their output (ATen's threshold_backward, hardtanh_backward, sigmoid_backward),
// silu, hardswish and hardsigmoid from their input, the pre-activation (silu_backward,
// hardswish_backward, hardsigmoid_backward): the output does not determine their input.
constexpr bool act_grad_reads_input(Act a) { return a == Act::SiLU || a == Act::Hardswish || a == Act::Hardsigmoid; }

inline const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
  }
  return "unknown";
}

inline Act to_act(int a) {
  if (a < 0 || a > 6)
    throw std::invalid_argument("activation code must be 0 (none), 1 (relu), 2 (relu6), 3 (silu), 4 (hardswish), "
                                "5 (sigmoid) or 6 (hardsigmoid), got " + std::to_string(a));
  return static_cast<Act>(a);
}

// What one study-ladder step is (docs/ladder.md), for listing (pyimgcls.ladder.steps) and for
// argument checks before a call: the fields the CPU and CUDA ladders share. Each backend's
// ladder::StepInfo (csrc/cpu/ladder.h, csrc/cuda/ladder.h) adds its own flag after these.
struct LadderStep {
  int step;                 // 1, 2, ... consecutive
  const char* name;         // file stem without the number, e.g. "loop_order"
  const char* description;  // one line: what changed from the previous step
  unsigned dtype_mask;      // bit (1 << int(DType)) for every dtype the step accepts
  bool channels_last;       // conv steps: activations (on CUDA also the weight) in NHWC (true) or NCHW
                            // (false); GEMM: false
};

inline DType to_dtype(int d) {
  if (d < 0 || d > 3) throw std::invalid_argument("dtype code must be 0..3, got " + std::to_string(d));
  return static_cast<DType>(d);
}

}  // namespace pyimgcls
