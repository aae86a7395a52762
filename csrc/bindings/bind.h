// Shared helpers for the per-family binding files of pyimgcls._C (torch-free).
#pragma once
#include <pybind11/pybind11.h>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../common.h"
#include "../cuda/plan.h"

namespace pyimgcls::bind {
namespace py = pybind11;

// A launcher's decision (cuda::LaunchPlan) as the dict pyimgcls.explain reads.
inline py::dict plan_dict(const cuda::LaunchPlan& p) {
  py::dict d;
  d["kernel"] = p.kernel;
  d["tensor_cores"] = p.tensor_cores;
  d["vectorized"] = p.vectorized;
  d["tile"] = py::make_tuple(p.tile_m, p.tile_n, p.tile_k);
  d["ctas"] = p.ctas;
  d["splits"] = p.splits;
  d["launches"] = p.launches;
  return d;
}

inline const void* cptr(uintptr_t p) { return reinterpret_cast<const void*>(p); }
inline void* mptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

inline void check_cpu_dtype(DType dt) {
  if (dt != DType::Float32 && dt != DType::Float64)
    throw std::invalid_argument(std::string("CPU kernels take float32 or float64, got ") + dtype_name(dt));
}

inline DType to_cpu_dtype(int dt) {
  const DType d = to_dtype(dt);
  check_cpu_dtype(d);
  return d;
}

// The CUDA families take float32, float16 and bfloat16; `family` names the one refusing float64.
inline DType to_cuda_dtype(int dt, const char* family) {
  const DType d = to_dtype(dt);
  if (d == DType::Float64)
    throw std::invalid_argument(std::string("CUDA ") + family + " takes float32, float16 or bfloat16, got float64");
  return d;
}

// A family's CPU and CUDA launchers take the same leading arguments; CUDA's add (int device,
// uintptr_t stream). The pool and ladder binding files therefore register both backends from one
// template per family that takes the backend's launchers as function pointers and deduces their
// trailing arguments as a pack Extra... (empty on CPU), so each Python-facing signature is written
// once. launcher_name gives the names of such a pair: "<op>_cpu" / "<op>_cuda".
inline std::string launcher_name(const char* op, const char* backend) { return std::string(op) + "_" + backend; }

// One function per op family registers that family's CPU (and, when built, CUDA) launchers.
void bind_runtime(py::module_& m);
void bind_gemm(py::module_& m);
void bind_softmax_xent(py::module_& m);
void bind_distill(py::module_& m);
void bind_pool(py::module_& m);
void bind_conv(py::module_& m);
void bind_batchnorm(py::module_& m);
void bind_ladder(py::module_& m);
void bind_quant(py::module_& m);
void bind_se(py::module_& m);
void bind_sparse(py::module_& m);

}  // namespace pyimgcls::bind
