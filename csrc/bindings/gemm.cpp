// GEMM family launchers: C = act(A @ B + bias) and the epilogue backward.
#include "bind.h"
#include "../cpu/gemm.h"
#ifdef PYIMGCLS_WITH_CUDA
#include "../cuda/gemm.h"
#endif

namespace pyimgcls::bind {

void bind_gemm(py::module_& m) {
  m.def("gemm_isa", &cpu::gemm_isa, "instruction set the CPU GEMM micro-kernel uses here");
  m.def(
      "gemm_cpu",
      [](int dt, uintptr_t a, int64_t sam, int64_t sak, uintptr_t b, int64_t sbk, int64_t sbn,
         uintptr_t bias, uintptr_t c, int64_t scm, int64_t scn, int64_t M, int64_t N, int64_t K,
         int act) {
        DType d = to_dtype(dt);
        check_cpu_dtype(d);
        Act ac = to_act(act);
        py::gil_scoped_release nogil;
        cpu::gemm(d, cptr(a), sam, sak, cptr(b), sbk, sbn, cptr(bias), mptr(c), scm, scn, M, N, K, ac);
      },
      "C = act(A @ B + bias) on CPU");
  m.def(
      "bias_act_bwd_cpu",
      [](int dt, uintptr_t grad, uintptr_t out, uintptr_t grad_pre, uintptr_t grad_bias, int64_t M,
         int64_t N, int act) {
        DType d = to_dtype(dt);
        check_cpu_dtype(d);
        Act ac = to_act(act);
        py::gil_scoped_release nogil;
        cpu::bias_act_bwd(d, cptr(grad), cptr(out), mptr(grad_pre), mptr(grad_bias), M, N, ac);
      },
      "epilogue backward on CPU: activation mask and bias gradient");
#ifdef PYIMGCLS_WITH_CUDA
  m.def(
      "gemm_cuda",
      [](int dt, uintptr_t a, int64_t sam, int64_t sak, uintptr_t b, int64_t sbk, int64_t sbn,
         uintptr_t bias, uintptr_t c, int64_t ldc, int64_t M, int64_t N, int64_t K, int act,
         int device, uintptr_t stream) {
        DType d = to_dtype(dt);
        if (d == DType::Float64)
          throw std::invalid_argument("CUDA GEMM takes float32, float16 or bfloat16, got float64");
        Act ac = to_act(act);
        py::gil_scoped_release nogil;
        cuda::gemm(d, cptr(a), sam, sak, cptr(b), sbk, sbn, cptr(bias), mptr(c), ldc, M, N, K, ac, device, stream);
      },
      "C = act(A @ B + bias) on CUDA");
  m.def(
      "bias_act_bwd_cuda",
      [](int dt, uintptr_t grad, uintptr_t out, uintptr_t grad_pre, uintptr_t grad_bias, int64_t M,
         int64_t N, int act, int device, uintptr_t stream) {
        DType d = to_dtype(dt);
        if (d == DType::Float64)
          throw std::invalid_argument("CUDA kernels take float32, float16 or bfloat16, got float64");
        Act ac = to_act(act);
        py::gil_scoped_release nogil;
        cuda::bias_act_bwd(d, cptr(grad), cptr(out), mptr(grad_pre), mptr(grad_bias), M, N, ac, device, stream);
      },
      "epilogue backward on CUDA");
#endif
}

}  // namespace pyimgcls::bind
