// Study-ladder launchers (docs/ladder.md): numbered GEMM and conv steps on CPU and, when built, CUDA.
// Forward only and not torch custom ops: pyimgcls/ladder.py calls these directly.
// Steps are listed as dicts {step, name, description, dtypes, channels_last, ...} so Python never
// duplicates the C++ step tables.
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bind.h"
#include "../cpu/ladder.h"
#ifdef PYIMGCLS_WITH_CUDA
#include "../cuda/ladder.h"
#endif

namespace pyimgcls::bind {
namespace {

py::list dtype_names(unsigned mask) {
  py::list out;
  for (int d = 0; d < 4; ++d)
    if (mask & (1u << d)) out.append(dtype_name(static_cast<DType>(d)));
  return out;
}

void check_kind(const std::string& kind) {
  if (kind != "gemm" && kind != "conv")
    throw std::invalid_argument("kind must be 'gemm' or 'conv', got '" + kind + "'");
}

}  // namespace

void bind_ladder(py::module_& m) {
  m.def(
      "ladder_steps_cpu",
      [](const std::string& kind) {
        check_kind(kind);
        const auto& table = kind == "gemm" ? cpu::ladder::gemm_steps() : cpu::ladder::conv_steps();
        py::list out;
        for (const auto& s : table) {
          py::dict d;
          d["step"] = s.step;
          d["name"] = s.name;
          d["description"] = s.description;
          d["dtypes"] = dtype_names(s.dtype_mask);
          d["channels_last"] = s.channels_last;
          d["weight_oihw"] = s.weight_oihw;
          out.append(d);
        }
        return out;
      },
      "CPU ladder steps of kind 'gemm' or 'conv' as a list of dicts");
  m.def(
      "ladder_gemm_cpu",
      [](int step, int dt, uintptr_t a, uintptr_t b, uintptr_t c, int64_t M, int64_t N, int64_t K) {
        DType d = to_dtype(dt);
        py::gil_scoped_release nogil;
        cpu::ladder::gemm(step, d, cptr(a), cptr(b), mptr(c), M, N, K);
      },
      "C = A @ B with CPU GEMM ladder step `step` (contiguous row-major)");
  m.def(
      "ladder_conv_scratch_bytes_cpu",
      [](int step, int dt, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW,
         int64_t OH, int64_t OW) {
        return cpu::ladder::conv_scratch_bytes(step, to_dtype(dt), N, C, H, W, O, KH, KW, OH, OW);
      },
      "scratch bytes CPU conv ladder step `step` needs");
  m.def(
      "ladder_conv2d_cpu",
      [](int step, int dt, uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t y, uintptr_t scratch, int64_t N,
         int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh,
         int64_t sw, int64_t ph, int64_t pw, int act) {
        DType d = to_dtype(dt);
        Act ac = to_act(act);
        py::gil_scoped_release nogil;
        cpu::ladder::conv2d(step, d, cptr(x), cptr(w), cptr(bias), mptr(y), mptr(scratch), N, C, H, W, O, KH, KW,
                            OH, OW, sh, sw, ph, pw, ac);
      },
      "y = act(conv2d(x, w) + bias) with CPU conv ladder step `step`");
#ifdef PYIMGCLS_WITH_CUDA
  m.def(
      "ladder_steps_cuda",
      [](const std::string& kind) {
        check_kind(kind);
        const auto& table = kind == "gemm" ? cuda::ladder::gemm_steps() : cuda::ladder::conv_steps();
        py::list out;
        for (const auto& s : table) {
          py::dict d;
          d["step"] = s.step;
          d["name"] = s.name;
          d["description"] = s.description;
          d["dtypes"] = dtype_names(s.dtype_mask);
          d["channels_last"] = s.channels_last;
          d["needs_sm90a"] = s.needs_sm90a;
          out.append(d);
        }
        return out;
      },
      "CUDA ladder steps of kind 'gemm' or 'conv' as a list of dicts");
  m.def(
      "ladder_gemm_cuda",
      [](int step, int dt, uintptr_t a, uintptr_t b, uintptr_t c, int64_t M, int64_t N, int64_t K, int device,
         uintptr_t stream) {
        DType d = to_dtype(dt);
        py::gil_scoped_release nogil;
        cuda::ladder::gemm(step, d, cptr(a), cptr(b), mptr(c), M, N, K, device, stream);
      },
      "C = A @ B with CUDA GEMM ladder step `step` (contiguous row-major)");
  m.def(
      "ladder_conv_scratch_bytes_cuda",
      [](int step, int dt, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW,
         int64_t OH, int64_t OW) {
        return cuda::ladder::conv_scratch_bytes(step, to_dtype(dt), N, C, H, W, O, KH, KW, OH, OW);
      },
      "scratch bytes CUDA conv ladder step `step` needs");
  m.def(
      "ladder_conv2d_cuda",
      [](int step, int dt, uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t y, uintptr_t scratch, int64_t N,
         int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh,
         int64_t sw, int64_t ph, int64_t pw, int act, int device, uintptr_t stream) {
        DType d = to_dtype(dt);
        Act ac = to_act(act);
        py::gil_scoped_release nogil;
        cuda::ladder::conv2d(step, d, cptr(x), cptr(w), cptr(bias), mptr(y), mptr(scratch), N, C, H, W, O, KH, KW,
                             OH, OW, sh, sw, ph, pw, ac, device, stream);
      },
      "y = act(conv2d(x, w) + bias) with CUDA conv ladder step `step`");
#endif
}

}  // namespace pyimgcls::bind
