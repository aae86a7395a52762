// Squeeze-and-excitation family launchers: the SE block forward / backward and the stochastic-depth
// scale(-and-add). Tensors are [N, C, HW] views, NCHW or NHWC (channels_last); weights contiguous;
// a null pointer (0) means "absent" (no bias, gradient not wanted, no residual).
#include "bind.h"
#include "../cpu/se.h"
#ifdef PYIMGCLS_WITH_CUDA
#include "../cuda/se.h"
#endif

namespace pyimgcls::bind {

namespace {
void check_se_codes(int act, int gate) {
  if (act != 0 && act != 1)
    throw std::invalid_argument("squeeze_excitation activation code must be 0 (relu) or 1 (silu), got " +
                                std::to_string(act));
  if (gate != 0 && gate != 1)
    throw std::invalid_argument("squeeze_excitation gate code must be 0 (sigmoid) or 1 (hardsigmoid), got " +
                                std::to_string(gate));
}
}  // namespace

void bind_se(py::module_& m) {
  m.def(
      "se_fwd_cpu",
      [](int dt, uintptr_t x, uintptr_t w1, uintptr_t b1, uintptr_t w2, uintptr_t b2, uintptr_t y, uintptr_t pooled,
         uintptr_t hidden, uintptr_t z, int64_t N, int64_t C, int64_t HW, int64_t R, bool cl, int act, int gate) {
        const DType d = to_cpu_dtype(dt);
        check_se_codes(act, gate);
        py::gil_scoped_release nogil;
        cpu::se_fwd(d, cptr(x), cptr(w1), cptr(b1), cptr(w2), cptr(b2), mptr(y), mptr(pooled), mptr(hidden), mptr(z),
                    N, C, HW, R, cl, act, gate);
      },
      "squeeze-and-excitation forward on CPU: y = x * gate(W2 act(W1 mean(x) + b1) + b2); writes pooled, hidden, z");
  m.def(
      "se_bwd_cpu",
      [](int dt, uintptr_t g, uintptr_t x, uintptr_t w1, uintptr_t w2, uintptr_t pooled, uintptr_t hidden, uintptr_t z,
         uintptr_t gx, uintptr_t gw1, uintptr_t gb1, uintptr_t gw2, uintptr_t gb2, int64_t N, int64_t C, int64_t HW,
         int64_t R, bool cl, int act, int gate) {
        const DType d = to_cpu_dtype(dt);
        check_se_codes(act, gate);
        py::gil_scoped_release nogil;
        cpu::se_bwd(d, cptr(g), cptr(x), cptr(w1), cptr(w2), cptr(pooled), cptr(hidden), cptr(z), mptr(gx), mptr(gw1),
                    mptr(gb1), mptr(gw2), mptr(gb2), N, C, HW, R, cl, act, gate);
      },
      "squeeze-and-excitation backward on CPU (grad_input, gw1, gb1, gw2, gb2; 0 = not wanted)");
  m.def(
      "drop_path_cpu",
      [](int dt, uintptr_t x, uintptr_t scale, uintptr_t r, uintptr_t out, int64_t N, int64_t M) {
        const DType d = to_cpu_dtype(dt);
        py::gil_scoped_release nogil;
        cpu::drop_path(d, cptr(x), cptr(scale), cptr(r), mptr(out), N, M);
      },
      "stochastic depth on CPU: out[n, :] = x[n, :] * scale[n] (+ residual[n, :])");
#ifdef PYIMGCLS_WITH_CUDA
  m.def(
      "se_fwd_cuda",
      [](int dt, uintptr_t x, uintptr_t w1, uintptr_t b1, uintptr_t w2, uintptr_t b2, uintptr_t y, uintptr_t pooled,
         uintptr_t hidden, uintptr_t z, int64_t N, int64_t C, int64_t HW, int64_t R, bool cl, int act, int gate,
         int device, uintptr_t stream) {
        const DType d = to_cuda_dtype(dt, "squeeze_excitation");
        check_se_codes(act, gate);
        py::gil_scoped_release nogil;
        cuda::se_fwd(d, cptr(x), static_cast<const float*>(cptr(w1)), static_cast<const float*>(cptr(b1)),
                     static_cast<const float*>(cptr(w2)), static_cast<const float*>(cptr(b2)), mptr(y),
                     static_cast<float*>(mptr(pooled)), static_cast<float*>(mptr(hidden)), static_cast<float*>(mptr(z)),
                     N, C, HW, R, cl, act, gate, device, stream);
      },
      "squeeze-and-excitation forward on CUDA (float32 weights, pooled, hidden, z)");
  m.def(
      "se_bwd_cuda",
      [](int dt, uintptr_t g, uintptr_t x, uintptr_t w1, uintptr_t w2, uintptr_t pooled, uintptr_t hidden, uintptr_t z,
         uintptr_t gx, uintptr_t gw1, uintptr_t gb1, uintptr_t gw2, uintptr_t gb2, uintptr_t scratch, int64_t N,
         int64_t C, int64_t HW, int64_t R, bool cl, int act, int gate, int device, uintptr_t stream) {
        const DType d = to_cuda_dtype(dt, "squeeze_excitation");
        check_se_codes(act, gate);
        py::gil_scoped_release nogil;
        cuda::se_bwd(d, cptr(g), cptr(x), static_cast<const float*>(cptr(w1)), static_cast<const float*>(cptr(w2)),
                     static_cast<const float*>(cptr(pooled)), static_cast<const float*>(cptr(hidden)),
                     static_cast<const float*>(cptr(z)), mptr(gx), static_cast<float*>(mptr(gw1)),
                     static_cast<float*>(mptr(gb1)), static_cast<float*>(mptr(gw2)), static_cast<float*>(mptr(gb2)),
                     static_cast<float*>(mptr(scratch)), N, C, HW, R, cl, act, gate, device, stream);
      },
      "squeeze-and-excitation backward on CUDA (scratch: 2*N*C + N*R floats; no atomics)");
  m.def(
      "drop_path_cuda",
      [](int dt, uintptr_t x, uintptr_t scale, uintptr_t r, uintptr_t out, int64_t N, int64_t M, int device,
         uintptr_t stream) {
        const DType d = to_cuda_dtype(dt, "drop_path");
        py::gil_scoped_release nogil;
        cuda::drop_path(d, cptr(x), static_cast<const float*>(cptr(scale)), cptr(r), mptr(out), N, M, device, stream);
      },
      "stochastic depth on CUDA: out[n, :] = x[n, :] * scale[n] (+ residual[n, :]); scale float32");
#endif
}

}  // namespace pyimgcls::bind
