// Distillation-loss family launchers: the fused loss + gradient forward (its backward is the
// softmax_xent scaling backward, bound in softmax_xent.cpp).
#include "bind.h"
#include "../cpu/distill.h"
#include "../cuda/distill.h"  // CUDA-free: the plan function exists in every build

namespace pyimgcls::bind {

void bind_distill(py::module_& m) {
  m.def("distill_isa", &cpu::distill_isa, "instruction set the CPU distillation rows use here");
  m.def(
      "distill_fwd_cpu",
      [](int dt, uintptr_t s, int64_t ssn, uintptr_t t, int64_t stn, uintptr_t target, bool target_i32, int64_t N,
         int64_t C, int64_t ignore_index, double label_smoothing, double temperature, double alpha, int reduction,
         uintptr_t loss, uintptr_t grad, uintptr_t denom) {
        DType d = to_cpu_dtype(dt);
        if (reduction < 0 || reduction > 2)
          throw std::invalid_argument("reduction code must be 0 (none), 1 (mean) or 2 (sum)");
        py::gil_scoped_release nogil;
        return cpu::distill_fwd(d, cptr(s), ssn, cptr(t), stn, cptr(target), target_i32, N, C, ignore_index,
                                label_smoothing, temperature, alpha, static_cast<cpu::XentReduction>(reduction),
                                mptr(loss), mptr(grad), mptr(denom));
      },
      "fused distillation loss + student gradient on CPU; returns -1 or the first row with an out-of-range "
      "target");
  // The CUDA launcher's decision, CPU-only builds included (pyimgcls.explain).
  m.def(
      "distill_fwd_plan_cuda", [](int64_t N, int64_t C) { return plan_dict(cuda::distill_fwd_plan(N, C)); },
      py::arg("N"), py::arg("C"), "what distill_fwd_cuda launches for [N, C] logits");
#ifdef PYIMGCLS_WITH_CUDA
  m.def(
      "distill_fwd_cuda",
      [](int dt, uintptr_t s, int64_t ssn, uintptr_t t, int64_t stn, uintptr_t target, bool target_i32, int64_t N,
         int64_t C, int64_t ignore_index, double label_smoothing, double temperature, double alpha, int reduction,
         uintptr_t loss, uintptr_t grad, uintptr_t row_scratch, uintptr_t denom, uintptr_t counter, int device,
         uintptr_t stream) {
        DType d = to_dtype(dt);
        if (d == DType::Float64)
          throw std::invalid_argument("CUDA kernels take float32, float16 or bfloat16, got float64");
        if (reduction < 0 || reduction > 2)
          throw std::invalid_argument("reduction code must be 0 (none), 1 (mean) or 2 (sum)");
        py::gil_scoped_release nogil;
        cuda::distill_fwd(d, cptr(s), ssn, cptr(t), stn, cptr(target), target_i32, N, C, ignore_index,
                          static_cast<float>(label_smoothing), static_cast<float>(temperature),
                          static_cast<float>(alpha), reduction, mptr(loss), mptr(grad),
                          static_cast<float*>(mptr(row_scratch)), static_cast<float*>(mptr(denom)),
                          static_cast<unsigned long long*>(mptr(counter)), device, stream);
      },
      "fused distillation loss + student gradient on CUDA (one launch)");
#endif
}

}  // namespace pyimgcls::bind
