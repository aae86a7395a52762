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

#ifdef PYIMGCLS_WITH_CUDA
DType cuda_dtype(int dt) {
  DType d = to_dtype(dt);
  if (d == DType::Float64)
    throw std::invalid_argument("CUDA pooling takes float32, float16 or bfloat16, got float64");
  return d;
}
#endif

}  // namespace

void bind_pool(py::module_& m) {
  m.def(
      "max_pool2d_fwd_cpu",
      [](int dt, uintptr_t x, uintptr_t y, uintptr_t idx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH,
         int64_t OW, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
         bool cl) {
        DType d = to_dtype(dt);
        check_cpu_dtype(d);
        auto p = make_params<cpu::Pool2dParams>(N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw);
        py::gil_scoped_release nogil;
        cpu::max_pool2d_fwd(d, cptr(x), mptr(y), static_cast<int64_t*>(mptr(idx)), p, cl);
      },
      "max pooling forward on CPU (idx may be 0: indices not written)");
  m.def(
      "max_pool2d_bwd_cpu",
      [](int dt, uintptr_t gy, uintptr_t idx, uintptr_t gx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH,
         int64_t OW, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
         bool cl) {
        DType d = to_dtype(dt);
        check_cpu_dtype(d);
        auto p = make_params<cpu::Pool2dParams>(N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw);
        py::gil_scoped_release nogil;
        cpu::max_pool2d_bwd(d, cptr(gy), static_cast<const int64_t*>(cptr(idx)), mptr(gx), p, cl);
      },
      "max pooling backward on CPU");
  m.def(
      "avg_pool2d_fwd_cpu",
      [](int dt, uintptr_t x, uintptr_t y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW,
         int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool cip, int64_t div, bool cl) {
        DType d = to_dtype(dt);
        check_cpu_dtype(d);
        auto p = make_params<cpu::Pool2dParams>(N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, 1, 1);
        py::gil_scoped_release nogil;
        cpu::avg_pool2d_fwd(d, cptr(x), mptr(y), p, cip, div, cl);
      },
      "average pooling forward on CPU (div 0: no divisor_override)");
  m.def(
      "avg_pool2d_bwd_cpu",
      [](int dt, uintptr_t gy, uintptr_t gx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW,
         int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool cip, int64_t div, bool cl) {
        DType d = to_dtype(dt);
        check_cpu_dtype(d);
        auto p = make_params<cpu::Pool2dParams>(N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, 1, 1);
        py::gil_scoped_release nogil;
        cpu::avg_pool2d_bwd(d, cptr(gy), mptr(gx), p, cip, div, cl);
      },
      "average pooling backward on CPU");
  m.def(
      "adaptive_avg_pool2d_fwd_cpu",
      [](int dt, uintptr_t x, uintptr_t y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW,
         bool cl) {
        DType d = to_dtype(dt);
        check_cpu_dtype(d);
        py::gil_scoped_release nogil;
        cpu::adaptive_avg_pool2d_fwd(d, cptr(x), mptr(y), N, C, H, W, OH, OW, cl);
      },
      "adaptive average pooling forward on CPU (1x1: global mean)");
  m.def(
      "adaptive_avg_pool2d_bwd_cpu",
      [](int dt, uintptr_t gy, uintptr_t gx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW,
         bool cl) {
        DType d = to_dtype(dt);
        check_cpu_dtype(d);
        py::gil_scoped_release nogil;
        cpu::adaptive_avg_pool2d_bwd(d, cptr(gy), mptr(gx), N, C, H, W, OH, OW, cl);
      },
      "adaptive average pooling backward on CPU");
#ifdef PYIMGCLS_WITH_CUDA
  m.def(
      "max_pool2d_fwd_cuda",
      [](int dt, uintptr_t x, uintptr_t y, uintptr_t idx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH,
         int64_t OW, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
         bool cl, int device, uintptr_t stream) {
        DType d = cuda_dtype(dt);
        auto p = make_params<cuda::Pool2dParams>(N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw);
        py::gil_scoped_release nogil;
        cuda::max_pool2d_fwd(d, cptr(x), mptr(y), static_cast<int64_t*>(mptr(idx)), p, cl, device, stream);
      },
      "max pooling forward on CUDA (idx may be 0: indices not written)");
  m.def(
      "max_pool2d_bwd_cuda",
      [](int dt, uintptr_t gy, uintptr_t idx, uintptr_t gx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH,
         int64_t OW, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
         bool cl, int device, uintptr_t stream) {
        DType d = cuda_dtype(dt);
        auto p = make_params<cuda::Pool2dParams>(N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw);
        py::gil_scoped_release nogil;
        cuda::max_pool2d_bwd(d, cptr(gy), static_cast<const int64_t*>(cptr(idx)), mptr(gx), p, cl, device, stream);
      },
      "max pooling backward on CUDA (gather, no atomics)");
  m.def(
      "avg_pool2d_fwd_cuda",
      [](int dt, uintptr_t x, uintptr_t y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW,
         int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool cip, int64_t div, bool cl,
         int device, uintptr_t stream) {
        DType d = cuda_dtype(dt);
        auto p = make_params<cuda::Pool2dParams>(N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, 1, 1);
        py::gil_scoped_release nogil;
        cuda::avg_pool2d_fwd(d, cptr(x), mptr(y), p, cip, div, cl, device, stream);
      },
      "average pooling forward on CUDA");
  m.def(
      "avg_pool2d_bwd_cuda",
      [](int dt, uintptr_t gy, uintptr_t gx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW,
         int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, bool cip, int64_t div, bool cl,
         int device, uintptr_t stream) {
        DType d = cuda_dtype(dt);
        auto p = make_params<cuda::Pool2dParams>(N, C, H, W, OH, OW, kh, kw, sh, sw, ph, pw, 1, 1);
        py::gil_scoped_release nogil;
        cuda::avg_pool2d_bwd(d, cptr(gy), mptr(gx), p, cip, div, cl, device, stream);
      },
      "average pooling backward on CUDA (gather, no atomics)");
  m.def(
      "adaptive_avg_pool2d_fwd_cuda",
      [](int dt, uintptr_t x, uintptr_t y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW,
         bool cl, int device, uintptr_t stream) {
        DType d = cuda_dtype(dt);
        py::gil_scoped_release nogil;
        cuda::adaptive_avg_pool2d_fwd(d, cptr(x), mptr(y), N, C, H, W, OH, OW, cl, device, stream);
      },
      "adaptive average pooling forward on CUDA (1x1: global mean reduction)");
  m.def(
      "adaptive_avg_pool2d_bwd_cuda",
      [](int dt, uintptr_t gy, uintptr_t gx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW,
         bool cl, int device, uintptr_t stream) {
        DType d = cuda_dtype(dt);
        py::gil_scoped_release nogil;
        cuda::adaptive_avg_pool2d_bwd(d, cptr(gy), mptr(gx), N, C, H, W, OH, OW, cl, device, stream);
      },
      "adaptive average pooling backward on CUDA (gather, no atomics)");
#endif
}

}  // namespace pyimgcls::bind
