// Pooling family launchers: max / average / adaptive average pooling, forward and backward.
// Geometry arrives as plain ints (N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw[, dh, dw]).
#include "bind.h"
#include "../cpu/pool.h"
#ifdef PYIMGCLS_WITH_CUDA
#include "../cuda/pool.h"
#endif

namespace pyimgcls::bind {
namespace {

template <typename P>
P make_params(int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW, int64_t kh, int64_t kw,
              int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
  return P{N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw};
}

// How one backend's pooling launchers are named, documented and checked.
struct PoolBackend {
  const char* name;      // launcher suffix: "cpu" / "cuda"
  const char* label;     // in docstrings: "CPU" / "CUDA"
  const char* bwd_note;  // appended to the backward docstrings
  DType (*dtype)(int);   // dtype code -> DType, refusing the dtypes the backend does not take
};

std::string pool_doc(const char* what, const PoolBackend& backend, const char* note) {
  return std::string(what) + " on " + backend.label + note;
}

// Registers one backend's six launchers. P (the backend's Pool2dParams) and Extra... (its trailing
// launcher arguments, see bind.h) are deduced from the launchers' types.
template <typename P, typename... Extra>
void def_pool(py::module_& m, const PoolBackend& backend,
              void (*max_fwd)(DType, const void*, void*, int64_t*, const P&, bool, Extra...),
              void (*max_bwd)(DType, const void*, const int64_t*, void*, const P&, bool, Extra...),
              void (*avg_fwd)(DType, const void*, void*, const P&, bool, int64_t, bool, Extra...),
              void (*avg_bwd)(DType, const void*, void*, const P&, bool, int64_t, bool, Extra...),
              void (*adaptive_fwd)(DType, const void*, void*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                   bool, Extra...),
              void (*adaptive_bwd)(DType, const void*, void*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                   bool, Extra...)) {
  const auto dtype = backend.dtype;
  // Max pooling: three pointers (forward x, y, idx; backward gy, idx, gx), then the window with
  // dilation; `launch` passes the pointers in the launcher's order and types.
  const auto def_max = [&m, &backend, dtype](const char* op, auto launch, const std::string& doc) {
    m.def(
        launcher_name(op, backend.name).c_str(),
        [dtype, launch](int dt, uintptr_t p0, uintptr_t p1, uintptr_t p2, int64_t N, int64_t C, int64_t H, int64_t W,
                        int64_t OH, int64_t OW, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                        int64_t pw, int64_t dh, int64_t dw, bool cl, Extra... extra) {
          DType d = dtype(dt);
          auto p = make_params<P>(N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw);
          py::gil_scoped_release nogil;
          launch(d, p0, p1, p2, p, cl, extra...);
        },
        doc.c_str());
  };
  def_max(
      "max_pool2d_fwd",
      [max_fwd](DType d, uintptr_t x, uintptr_t y, uintptr_t idx, const P& p, bool cl, Extra... extra) {
        max_fwd(d, cptr(x), mptr(y), static_cast<int64_t*>(mptr(idx)), p, cl, extra...);
      },
      pool_doc("max pooling forward", backend, " (idx may be 0: indices not written)"));
  def_max(
      "max_pool2d_bwd",
      [max_bwd](DType d, uintptr_t gy, uintptr_t idx, uintptr_t gx, const P& p, bool cl, Extra... extra) {
        max_bwd(d, cptr(gy), static_cast<const int64_t*>(cptr(idx)), mptr(gx), p, cl, extra...);
      },
      pool_doc("max pooling backward", backend, backend.bwd_note));
  // Average pooling: (in, out) pointers, the window without dilation, count_include_pad, divisor.
  const auto def_avg = [&m, &backend, dtype](const char* op, auto launch, const std::string& doc) {
    m.def(
        launcher_name(op, backend.name).c_str(),
        [dtype, launch](int dt, uintptr_t in, uintptr_t out, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH,
                        int64_t OW, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool cip,
                        int64_t div, bool cl, Extra... extra) {
          DType d = dtype(dt);
          auto p = make_params<P>(N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, 1, 1);
          py::gil_scoped_release nogil;
          launch(d, cptr(in), mptr(out), p, cip, div, cl, extra...);
        },
        doc.c_str());
  };
  def_avg("avg_pool2d_fwd", avg_fwd, pool_doc("average pooling forward", backend, " (div 0: no divisor_override)"));
  def_avg("avg_pool2d_bwd", avg_bwd, pool_doc("average pooling backward", backend, backend.bwd_note));
  // Adaptive average pooling: (in, out) pointers and the sizes.
  const auto def_adaptive = [&m, &backend, dtype](const char* op, auto launch, const std::string& doc) {
    m.def(
        launcher_name(op, backend.name).c_str(),
        [dtype, launch](int dt, uintptr_t in, uintptr_t out, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH,
                        int64_t OW, bool cl, Extra... extra) {
          DType d = dtype(dt);
          py::gil_scoped_release nogil;
          launch(d, cptr(in), mptr(out), N, C, H, W, OH, OW, cl, extra...);
        },
        doc.c_str());
  };
  def_adaptive("adaptive_avg_pool2d_fwd", adaptive_fwd,
               pool_doc("adaptive average pooling forward", backend, " (1x1: global mean)"));
  def_adaptive("adaptive_avg_pool2d_bwd", adaptive_bwd,
               pool_doc("adaptive average pooling backward", backend, backend.bwd_note));
}

}  // namespace

void bind_pool(py::module_& m) {
  // bfloat16 besides float32 / float64: the kernels stage it through float32 blocks (cpu/pool.cpp)
  const auto cpu_dtype = [](int dt) {
    const DType d = to_dtype(dt);
    if (d != DType::BFloat16) check_cpu_dtype(d);
    return d;
  };
  def_pool(m, PoolBackend{"cpu", "CPU", "", cpu_dtype}, cpu::max_pool2d_fwd, cpu::max_pool2d_bwd,
           cpu::avg_pool2d_fwd, cpu::avg_pool2d_bwd, cpu::adaptive_avg_pool2d_fwd, cpu::adaptive_avg_pool2d_bwd);
#ifdef PYIMGCLS_WITH_CUDA
  const auto cuda_dtype = [](int dt) { return to_cuda_dtype(dt, "pooling"); };
  def_pool(m, PoolBackend{"cuda", "CUDA", " (gather, no atomics)", cuda_dtype}, cuda::max_pool2d_fwd,
           cuda::max_pool2d_bwd, cuda::avg_pool2d_fwd, cuda::avg_pool2d_bwd, cuda::adaptive_avg_pool2d_fwd,
           cuda::adaptive_avg_pool2d_bwd);
#endif
}

}  // namespace pyimgcls::bind
