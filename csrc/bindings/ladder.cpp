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

// How one backend's ladder launchers are named and documented, and its own StepInfo flag.
template <typename Info>
struct LadderBackend {
  const char* name;        // launcher suffix: "cpu" / "cuda"
  const char* label;       // in docstrings: "CPU" / "CUDA"
  const char* flag_name;   // key of the backend's own StepInfo field in the step dicts
  bool Info::*flag;        // that field
};

// Registers one backend's four launchers. Info (its StepInfo) and Extra... (its trailing launcher
// arguments, see bind.h) are deduced from the arguments' types.
template <typename Info, typename... Extra>
void def_ladder(py::module_& m, const LadderBackend<Info>& backend, const std::vector<Info>& (*gemm_steps)(),
                const std::vector<Info>& (*conv_steps)(),
                void (*gemm)(int, DType, const void*, const void*, void*, int64_t, int64_t, int64_t, Extra...),
                int64_t (*scratch_bytes)(int, DType, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                         int64_t, int64_t),
                void (*conv2d)(int, DType, const void*, const void*, const void*, void*, void*, int64_t, int64_t,
                               int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                               int64_t, int64_t, Act, Extra...)) {
  const std::string label = backend.label;
  m.def(
      launcher_name("ladder_steps", backend.name).c_str(),
      [gemm_steps, conv_steps, flag_name = backend.flag_name, flag = backend.flag](const std::string& kind) {
        check_kind(kind);
        const auto& table = kind == "gemm" ? gemm_steps() : conv_steps();
        py::list out;
        for (const auto& s : table) {
          py::dict d;
          d["step"] = s.step;
          d["name"] = s.name;
          d["description"] = s.description;
          d["dtypes"] = dtype_names(s.dtype_mask);
          d["channels_last"] = s.channels_last;
          d[flag_name] = s.*flag;
          out.append(d);
        }
        return out;
      },
      (label + " ladder steps of kind 'gemm' or 'conv' as a list of dicts").c_str());
  m.def(
      launcher_name("ladder_gemm", backend.name).c_str(),
      [gemm](int step, int dt, uintptr_t a, uintptr_t b, uintptr_t c, int64_t M, int64_t N, int64_t K,
             Extra... extra) {
        DType d = to_dtype(dt);
        py::gil_scoped_release nogil;
        gemm(step, d, cptr(a), cptr(b), mptr(c), M, N, K, extra...);
      },
      ("C = A @ B with " + label + " GEMM ladder step `step` (contiguous row-major)").c_str());
  m.def(
      launcher_name("ladder_conv_scratch_bytes", backend.name).c_str(),
      [scratch_bytes](int step, int dt, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH,
                      int64_t KW, int64_t OH, int64_t OW) {
        return scratch_bytes(step, to_dtype(dt), N, C, H, W, O, KH, KW, OH, OW);
      },
      ("scratch bytes " + label + " conv ladder step `step` needs").c_str());
  m.def(
      launcher_name("ladder_conv2d", backend.name).c_str(),
      [conv2d](int step, int dt, uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t y, uintptr_t scratch, int64_t N,
               int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW, int64_t OH, int64_t OW, int64_t sh,
               int64_t sw, int64_t ph, int64_t pw, int act, Extra... extra) {
        DType d = to_dtype(dt);
        Act ac = to_act(act);
        py::gil_scoped_release nogil;
        conv2d(step, d, cptr(x), cptr(w), cptr(bias), mptr(y), mptr(scratch), N, C, H, W, O, KH, KW, OH, OW, sh, sw,
               ph, pw, ac, extra...);
      },
      ("y = act(conv2d(x, w) + bias) with " + label + " conv ladder step `step`").c_str());
}

}  // namespace

void bind_ladder(py::module_& m) {
  namespace cl = cpu::ladder;
  def_ladder(m, LadderBackend<cl::StepInfo>{"cpu", "CPU", "weight_oihw", &cl::StepInfo::weight_oihw},
             cl::gemm_steps, cl::conv_steps, cl::gemm, cl::conv_scratch_bytes, cl::conv2d);
#ifdef PYIMGCLS_WITH_CUDA
  namespace gl = cuda::ladder;
  def_ladder(m, LadderBackend<gl::StepInfo>{"cuda", "CUDA", "needs_sm90a", &gl::StepInfo::needs_sm90a},
             gl::gemm_steps, gl::conv_steps, gl::gemm, gl::conv_scratch_bytes, gl::conv2d);
#endif
}

}  // namespace pyimgcls::bind
