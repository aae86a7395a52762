// BatchNorm family launchers: batch statistics, fused normalize + residual + activation forward,
// running-statistics update and backward. Tensors are [N, C, S] views (S = spatial size), NCHW or
// NHWC (channels_last); per-channel vectors are contiguous [C]. A null pointer (0) means "absent".
#include "bind.h"
#include "../cpu/batchnorm.h"
#ifdef PYIMGCLS_WITH_CUDA
#include "../cuda/batchnorm.h"
#endif

namespace pyimgcls::bind {

void bind_batchnorm(py::module_& m) {
  m.def(
      "batch_norm_stats_cpu",
      [](int dt, uintptr_t x, uintptr_t mean, uintptr_t var, int64_t N, int64_t C, int64_t S, bool cl) {
        DType d = to_dtype(dt);
        if (d != DType::BFloat16) check_cpu_dtype(d);  // bfloat16 activations, float32 vectors
        py::gil_scoped_release nogil;
        cpu::batch_norm_stats(d, cptr(x), mptr(mean), mptr(var), N, C, S, cl);
      },
      "per-channel batch mean and biased variance on CPU (float64 shifted sums)");
  m.def(
      "batch_norm_fwd_cpu",
      [](int dt, uintptr_t x, uintptr_t mean, uintptr_t var, uintptr_t w, uintptr_t b, uintptr_t r, uintptr_t y,
         uintptr_t invstd, int64_t N, int64_t C, int64_t S, bool cl, double eps, int act) {
        DType d = to_dtype(dt);
        if (d != DType::BFloat16) check_cpu_dtype(d);  // bfloat16 activations, float32 vectors
        Act a = to_act(act);
        py::gil_scoped_release nogil;
        cpu::batch_norm_fwd(d, cptr(x), cptr(mean), cptr(var), cptr(w), cptr(b), cptr(r), mptr(y), mptr(invstd), N,
                            C, S, cl, eps, a);
      },
      "y = act((x - mean) / sqrt(var + eps) * w + b + r) on CPU; writes invstd");
  m.def(
      "batch_norm_update_stats_cpu",
      [](int dt, uintptr_t rm, uintptr_t rv, uintptr_t mean, uintptr_t var, int64_t C, double momentum,
         int64_t count) {
        DType d = to_dtype(dt);
        check_cpu_dtype(d);
        py::gil_scoped_release nogil;
        cpu::batch_norm_update_stats(d, mptr(rm), mptr(rv), cptr(mean), cptr(var), C, momentum, count);
      },
      "running statistics update in place on CPU (unbiased variance)");
  m.def(
      "batch_norm_bwd_cpu",
      [](int dt, uintptr_t g, uintptr_t out, uintptr_t x, uintptr_t w, uintptr_t mean, uintptr_t invstd,
         uintptr_t gx, uintptr_t gw, uintptr_t gb, uintptr_t gp, int64_t N, int64_t C, int64_t S, bool cl,
         bool training, int act) {
        DType d = to_dtype(dt);
        if (d != DType::BFloat16) check_cpu_dtype(d);  // bfloat16 activations, float32 vectors
        Act a = to_act(act);
        py::gil_scoped_release nogil;
        cpu::batch_norm_bwd(d, cptr(g), cptr(out), cptr(x), cptr(w), cptr(mean), cptr(invstd), mptr(gx), mptr(gw),
                            mptr(gb), mptr(gp), N, C, S, cl, training, a);
      },
      "batch norm backward on CPU (grad_input / grad_weight / grad_bias / grad_pre; 0 = not wanted)");
#ifdef PYIMGCLS_WITH_CUDA
  m.def(
      "batch_norm_stats_chunks_cuda",
      [](int64_t N, int64_t C, int64_t S, bool cl, int sm_count) {
        return cuda::batch_norm_chunks(N, C, S, cl, sm_count);
      },
      "row chunks of the CUDA two-level reductions for this shape");
  m.def(
      "batch_norm_stats_cuda",
      [](int dt, uintptr_t x, uintptr_t mean, uintptr_t var, uintptr_t scratch, int64_t chunks, int64_t N, int64_t C,
         int64_t S, bool cl, int device, uintptr_t stream) {
        DType d = to_dtype(dt);
        py::gil_scoped_release nogil;
        cuda::batch_norm_stats(d, cptr(x), static_cast<float*>(mptr(mean)), static_cast<float*>(mptr(var)),
                               static_cast<float*>(mptr(scratch)), chunks, N, C, S, cl, device, stream);
      },
      "per-channel batch mean and biased variance on CUDA (scratch: 2*chunks*C floats; no atomics)");
  m.def(
      "batch_norm_fwd_cuda",
      [](int dt, uintptr_t x, uintptr_t mean, uintptr_t var, uintptr_t w, uintptr_t b, uintptr_t r, uintptr_t y,
         uintptr_t invstd, uintptr_t scratch, int64_t N, int64_t C, int64_t S, bool cl, double eps, int act,
         int device, uintptr_t stream) {
        DType d = to_dtype(dt);
        Act a = to_act(act);
        py::gil_scoped_release nogil;
        cuda::batch_norm_fwd(d, cptr(x), static_cast<const float*>(cptr(mean)), static_cast<const float*>(cptr(var)),
                             static_cast<const float*>(cptr(w)), static_cast<const float*>(cptr(b)), cptr(r), mptr(y),
                             static_cast<float*>(mptr(invstd)), static_cast<float*>(mptr(scratch)), N, C, S, cl, eps,
                             a, device, stream);
      },
      "fused normalize + residual + activation on CUDA (scratch: C floats)");
  m.def(
      "batch_norm_update_stats_cuda",
      [](int dt, uintptr_t rm, uintptr_t rv, uintptr_t mean, uintptr_t var, int64_t C, double momentum,
         int64_t count, int device, uintptr_t stream) {
        if (to_dtype(dt) != DType::Float32)
          throw std::invalid_argument("CUDA batch_norm running statistics are updated in float32");
        py::gil_scoped_release nogil;
        cuda::batch_norm_update_stats(static_cast<float*>(mptr(rm)), static_cast<float*>(mptr(rv)),
                                      static_cast<const float*>(cptr(mean)), static_cast<const float*>(cptr(var)), C,
                                      momentum, count, device, stream);
      },
      "running statistics update in place on CUDA (float32, unbiased variance)");
  m.def(
      "batch_norm_bwd_cuda",
      [](int dt, uintptr_t g, uintptr_t out, uintptr_t x, uintptr_t w, uintptr_t mean, uintptr_t invstd,
         uintptr_t gx, uintptr_t gw, uintptr_t gb, uintptr_t gp, uintptr_t scratch, int64_t chunks, int64_t N,
         int64_t C, int64_t S, bool cl, bool training, int act, int device, uintptr_t stream) {
        DType d = to_dtype(dt);
        Act a = to_act(act);
        py::gil_scoped_release nogil;
        cuda::batch_norm_bwd(d, cptr(g), cptr(out), cptr(x), static_cast<const float*>(cptr(w)),
                             static_cast<const float*>(cptr(mean)), static_cast<const float*>(cptr(invstd)), mptr(gx),
                             static_cast<float*>(mptr(gw)), static_cast<float*>(mptr(gb)), mptr(gp),
                             static_cast<float*>(mptr(scratch)), chunks, N, C, S, cl, training, a, device, stream);
      },
      "batch norm backward on CUDA (scratch: 2*chunks*C + 3*C floats; no atomics)");
#endif
}

}  // namespace pyimgcls::bind
