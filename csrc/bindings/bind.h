// Shared helpers for the per-family binding files of pyimgcls._C (torch-free).
#pragma once
#include <pybind11/pybind11.h>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../common.h"

namespace pyimgcls::bind {
namespace py = pybind11;

inline const void* cptr(uintptr_t p) { return reinterpret_cast<const void*>(p); }
inline void* mptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

inline void check_cpu_dtype(DType dt) {
  if (dt != DType::Float32 && dt != DType::Float64)
    throw std::invalid_argument(std::string("CPU kernels take float32 or float64, got ") + dtype_name(dt));
}

// One function per op family registers that family's CPU (and, when built, CUDA) launchers.
void bind_runtime(py::module_& m);
void bind_gemm(py::module_& m);
void bind_softmax_xent(py::module_& m);
void bind_pool(py::module_& m);
void bind_conv(py::module_& m);
void bind_batchnorm(py::module_& m);
void bind_ladder(py::module_& m);

}  // namespace pyimgcls::bind
