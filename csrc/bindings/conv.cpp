// Convolution family launchers: fused conv2d forward, dgrad, wgrad and the epilogue backward.
// Geometry travels as one list of 16 ints in ConvGeometry order (csrc/conv_geometry.h)
//   [N, C, H, W, O, KH, KW, OH, OW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups]
// and every tensor as (pointer, [stride_n, stride_c, stride_h, stride_w]) in elements.
#include <pybind11/stl.h>

#include <vector>

#include "bind.h"
#include "../cpu/conv.h"
#include "../cuda/conv.h"  // CUDA-free: the plan functions exist in every build

namespace pyimgcls::bind {
namespace {

ConvGeometry to_geometry(const std::vector<int64_t>& g) {
  if (g.size() != 16) throw std::invalid_argument("conv2d geometry must have 16 entries, got " + std::to_string(g.size()));
  for (size_t i = 0; i < g.size(); ++i)
    if (g[i] < 0) throw std::invalid_argument("conv2d geometry entries must be non-negative");
  if (g[9] < 1 || g[10] < 1 || g[13] < 1 || g[14] < 1 || g[15] < 1)
    throw std::invalid_argument("conv2d stride, dilation and groups must be positive");
  if (g[1] % g[15] != 0 || g[4] % g[15] != 0)
    throw std::invalid_argument("conv2d groups must divide in and out channels");
  return ConvGeometry{g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8],
                      g[9], g[10], g[11], g[12], g[13], g[14], g[15]};
}

Strides4 to_strides(const std::vector<int64_t>& s) {
  if (s.size() != 4) throw std::invalid_argument("conv2d strides must have 4 entries, got " + std::to_string(s.size()));
  return Strides4{s[0], s[1], s[2], s[3]};
}

}  // namespace

void bind_conv(py::module_& m) {
  using V = std::vector<int64_t>;
  m.def(
      "conv2d_fwd_cpu",
      [](int dt, const V& geom, uintptr_t x, const V& xs, uintptr_t w, uintptr_t bias, uintptr_t res, const V& rs,
         uintptr_t out, const V& os, int act) {
        DType d = to_dtype(dt);
        if (d != DType::BFloat16) check_cpu_dtype(d);  // bfloat16: float32 copies + the bf16 GEMM
        Act ac = to_act(act);
        auto s = to_geometry(geom);
        auto xs4 = to_strides(xs), rs4 = to_strides(rs), os4 = to_strides(os);
        py::gil_scoped_release nogil;
        cpu::conv2d_fwd(d, s, cptr(x), xs4, cptr(w), cptr(bias), cptr(res), rs4, mptr(out), os4, ac);
      },
      "out = act(conv2d(x, w) + bias + residual) on CPU");
  m.def(
      "conv2d_winograd_cache_floats_cpu",
      [](int dt, const V& geom) { return cpu::conv2d_winograd_cache_floats(to_dtype(dt), to_geometry(geom)); },
      "Floats of the filter-transform cache conv2d_fwd_cached_cpu needs for this float32 conv (0: not that path)");
  m.def(
      "conv2d_fwd_cached_cpu",
      [](const V& geom, uintptr_t x, const V& xs, uintptr_t w, uintptr_t bias, uintptr_t res, const V& rs,
         uintptr_t out, const V& os, int act, uintptr_t u, uint64_t u_fingerprint, bool u_valid) {
        if (!x || !w || !out || !u) throw std::invalid_argument("conv2d_fwd_cached_cpu: x, w, out and u must be non-null");
        Act ac = to_act(act);
        auto s = to_geometry(geom);
        auto xs4 = to_strides(xs), rs4 = to_strides(rs), os4 = to_strides(os);
        py::gil_scoped_release nogil;
        return cpu::conv2d_fwd_cached(s, static_cast<const float*>(cptr(x)), xs4, static_cast<const float*>(cptr(w)),
                                      static_cast<const float*>(cptr(bias)), static_cast<const float*>(cptr(res)),
                                      rs4, static_cast<float*>(mptr(out)), os4, ac, static_cast<float*>(mptr(u)),
                                      u_fingerprint, u_valid);
      },
      "float32 out = act(conv2d(x, w) + bias + residual) by Winograd with a filter-transform cache u "
      "(rebuilt when !u_valid or w's fingerprint differs); returns w's fingerprint");
  m.def(
      "conv2d_bwd_data_cpu",
      [](int dt, const V& geom, uintptr_t g, const V& gs, uintptr_t w, uintptr_t dx, const V& xs) {
        DType d = to_dtype(dt);
        if (d != DType::BFloat16) check_cpu_dtype(d);  // bfloat16: float32 copies + the bf16 GEMM
        auto s = to_geometry(geom);
        auto gs4 = to_strides(gs), xs4 = to_strides(xs);
        py::gil_scoped_release nogil;
        cpu::conv2d_bwd_data(d, s, cptr(g), gs4, cptr(w), mptr(dx), xs4);
      },
      "conv2d grad_input on CPU");
  m.def(
      "conv2d_bwd_weight_cpu",
      [](int dt, const V& geom, uintptr_t g, const V& gs, uintptr_t x, const V& xs, uintptr_t dw) {
        DType d = to_dtype(dt);
        if (d != DType::BFloat16) check_cpu_dtype(d);  // bfloat16: float32 copies + the bf16 GEMM
        auto s = to_geometry(geom);
        auto gs4 = to_strides(gs), xs4 = to_strides(xs);
        py::gil_scoped_release nogil;
        cpu::conv2d_bwd_weight(d, s, cptr(g), gs4, cptr(x), xs4, mptr(dw));
      },
      "conv2d grad_weight on CPU");
  m.def(
      "conv2d_bias_act_bwd_cpu",
      [](int dt, int64_t N, int64_t O, int64_t P, uintptr_t grad, const V& gs, uintptr_t out, const V& os,
         uintptr_t grad_pre, uintptr_t grad_bias, int act) {
        DType d = to_cpu_dtype(dt);
        Act ac = to_act(act);
        auto gs4 = to_strides(gs), os4 = to_strides(os);
        py::gil_scoped_release nogil;
        cpu::conv2d_bias_act_bwd(d, N, O, P, cptr(grad), gs4, cptr(out), os4, mptr(grad_pre), mptr(grad_bias), ac);
      },
      "conv2d epilogue backward on CPU: activation mask and per-channel bias gradient");
  // The CUDA launchers' decisions, CPU-only builds included (pyimgcls.explain, tests without a GPU).
  m.def(
      "conv2d_wgrad_splits_cuda",
      [](int dt, const V& geom, int sm_count) {
        return cuda::conv2d_wgrad_splits(to_cuda_dtype(dt, "conv2d"), to_geometry(geom), sm_count);
      },
      "K splits (and float32 scratch multiples of O*C/groups*KH*KW) conv2d_bwd_weight_cuda uses");
  m.def(
      "conv2d_plan_cuda",
      [](int pass, int dt, const V& geom, const V& a_strides, const V& b_strides, uintptr_t a, uintptr_t b,
         int sm_count, int64_t splits, const V& c_strides, uintptr_t c) {
        if (pass < 0 || pass > 2)
          throw std::invalid_argument("conv2d plan: mode must be 0 (fwd), 1 (dgrad) or 2 (wgrad)");
        if (splits < 0) throw std::invalid_argument("conv2d plan: splits must be >= 0 (0: the launcher's own choice)");
        return plan_dict(cuda::conv2d_plan(pass, to_cuda_dtype(dt, "conv2d"), to_geometry(geom), to_strides(a_strides),
                                           to_strides(b_strides), a, b, sm_count, splits,
                                           c_strides.empty() ? Strides4{} : to_strides(c_strides), c));
      },
      py::arg("mode"), py::arg("dtype"), py::arg("geom"), py::arg("a_strides"), py::arg("b_strides"), py::arg("a_ptr"),
      py::arg("b_ptr"), py::arg("sm_count"), py::arg("splits") = 0, py::arg("c_strides") = V{}, py::arg("c_ptr") = 0,
      "What conv2d_fwd_cuda (pass 0: a = x, b = w), conv2d_bwd_data_cuda (1: a = grad, b = w) or "
      "conv2d_bwd_weight_cuda (2: a = grad, b = x) launches for these arguments, as a plan dict; c: the output "
      "(dgrad's dx, read by the depthwise dgrad's 16-byte choice; absent: not vectorised)");
#ifdef PYIMGCLS_WITH_CUDA
  m.def(
      "conv2d_fwd_cuda",
      [](int dt, const V& geom, uintptr_t x, const V& xs, uintptr_t w, const V& ws, uintptr_t bias, uintptr_t res,
         const V& rs, uintptr_t out, const V& os, int act, int device, uintptr_t stream) {
        DType d = to_cuda_dtype(dt, "conv2d");
        Act ac = to_act(act);
        auto s = to_geometry(geom);
        auto xs4 = to_strides(xs), ws4 = to_strides(ws), rs4 = to_strides(rs), os4 = to_strides(os);
        py::gil_scoped_release nogil;
        cuda::conv2d_fwd(d, s, cptr(x), xs4, cptr(w), ws4, cptr(bias), cptr(res), rs4, mptr(out), os4, ac, device,
                         stream);
      },
      "out = act(conv2d(x, w) + bias + residual) on CUDA");
  m.def(
      "conv2d_bwd_data_cuda",
      [](int dt, const V& geom, uintptr_t g, const V& gs, uintptr_t w, const V& ws, uintptr_t dx, const V& xs,
         int device, uintptr_t stream) {
        DType d = to_cuda_dtype(dt, "conv2d");
        auto s = to_geometry(geom);
        auto gs4 = to_strides(gs), ws4 = to_strides(ws), xs4 = to_strides(xs);
        py::gil_scoped_release nogil;
        cuda::conv2d_bwd_data(d, s, cptr(g), gs4, cptr(w), ws4, mptr(dx), xs4, device, stream);
      },
      "conv2d grad_input on CUDA");
  m.def(
      "conv2d_bwd_weight_cuda",
      [](int dt, const V& geom, uintptr_t g, const V& gs, uintptr_t x, const V& xs, uintptr_t dw, uintptr_t scratch,
         int64_t splits, int device, uintptr_t stream) {
        DType d = to_cuda_dtype(dt, "conv2d");
        auto s = to_geometry(geom);
        auto gs4 = to_strides(gs), xs4 = to_strides(xs);
        py::gil_scoped_release nogil;
        cuda::conv2d_bwd_weight(d, s, cptr(g), gs4, cptr(x), xs4, mptr(dw), mptr(scratch), splits, device, stream);
      },
      "conv2d grad_weight on CUDA (deterministic split-K through float32 scratch)");
  m.def(
      "conv2d_bias_act_bwd_cuda",
      [](int dt, int64_t N, int64_t O, int64_t P, uintptr_t grad, const V& gs, uintptr_t out, const V& os,
         uintptr_t grad_pre, uintptr_t grad_bias, uintptr_t scratch, int64_t splits, int act, int device,
         uintptr_t stream) {
        DType d = to_cuda_dtype(dt, "conv2d");
        Act ac = to_act(act);
        auto gs4 = to_strides(gs), os4 = to_strides(os);
        py::gil_scoped_release nogil;
        cuda::conv2d_bias_act_bwd(d, N, O, P, cptr(grad), gs4, cptr(out), os4, mptr(grad_pre), mptr(grad_bias),
                                  mptr(scratch), splits, ac, device, stream);
      },
      "conv2d epilogue backward on CUDA");
#endif
}

}  // namespace pyimgcls::bind
