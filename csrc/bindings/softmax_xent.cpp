// Softmax-cross-entropy family launchers: fused loss + gradient forward and the scaling backward.
#include "bind.h"
#include "../cpu/softmax_xent.h"
#ifdef PYIMGCLS_WITH_CUDA
#include "../cuda/softmax_xent.h"
#endif

namespace pyimgcls::bind {
namespace {

cpu::XentReduction to_reduction(int r) {
  if (r < 0 || r > 2)
    throw std::invalid_argument("reduction code must be 0 (none), 1 (mean) or 2 (sum), got " + std::to_string(r));
  return static_cast<cpu::XentReduction>(r);
}

}  // namespace

void bind_softmax_xent(py::module_& m) {
  m.def("softmax_xent_isa", &cpu::softmax_xent_isa, "instruction set the CPU cross-entropy rows use here");
  m.def(
      "softmax_xent_fwd_cpu",
      [](int dt, uintptr_t x, int64_t sxn, uintptr_t target, bool target_i32, uintptr_t weight, int64_t N,
         int64_t C, int64_t ignore_index, double label_smoothing, int reduction, uintptr_t loss, uintptr_t grad,
         uintptr_t denom) {
        DType d = to_dtype(dt);
        check_cpu_dtype(d);
        cpu::XentReduction r = to_reduction(reduction);
        py::gil_scoped_release nogil;
        return cpu::softmax_xent_fwd(d, cptr(x), sxn, cptr(target), target_i32, cptr(weight), N, C, ignore_index,
                                     label_smoothing, r, mptr(loss), mptr(grad), mptr(denom));
      },
      "fused cross-entropy forward on CPU; returns -1 or the first row with an out-of-range target");
  m.def(
      "softmax_xent_prob_fwd_cpu",
      [](int dt, uintptr_t x, int64_t sxn, uintptr_t target, int64_t stn, uintptr_t weight, int64_t N, int64_t C,
         double label_smoothing, int reduction, uintptr_t loss, uintptr_t grad, uintptr_t denom) {
        DType d = to_dtype(dt);
        check_cpu_dtype(d);
        cpu::XentReduction r = to_reduction(reduction);
        py::gil_scoped_release nogil;
        cpu::softmax_xent_prob_fwd(d, cptr(x), sxn, cptr(target), stn, cptr(weight), N, C, label_smoothing, r,
                                   mptr(loss), mptr(grad), mptr(denom));
      },
      "fused cross-entropy forward with class-probability targets on CPU");
  m.def(
      "softmax_xent_bwd_cpu",
      [](int dt, uintptr_t saved, uintptr_t target, bool target_i32, uintptr_t grad_loss, int64_t go_stride,
         bool per_row, uintptr_t denom, int64_t N, int64_t C, int64_t ignore_index, uintptr_t grad_in) {
        DType d = to_dtype(dt);
        check_cpu_dtype(d);
        py::gil_scoped_release nogil;
        cpu::softmax_xent_bwd(d, cptr(saved), cptr(target), target_i32, cptr(grad_loss), go_stride, per_row,
                              cptr(denom), N, C, ignore_index, mptr(grad_in));
      },
      "cross-entropy backward on CPU: scale the saved gradient");
#ifdef PYIMGCLS_WITH_CUDA
  m.def(
      "softmax_xent_fwd_cuda",
      [](int dt, uintptr_t x, int64_t sxn, uintptr_t target, bool target_i32, uintptr_t weight, int64_t N,
         int64_t C, int64_t ignore_index, double label_smoothing, int reduction, uintptr_t loss, uintptr_t grad,
         uintptr_t row_scratch, uintptr_t denom, uintptr_t counter, int device, uintptr_t stream) {
        DType d = to_dtype(dt);
        if (d == DType::Float64)
          throw std::invalid_argument("CUDA kernels take float32, float16 or bfloat16, got float64");
        to_reduction(reduction);
        py::gil_scoped_release nogil;
        cuda::softmax_xent_fwd(d, cptr(x), sxn, cptr(target), target_i32, cptr(weight), N, C, ignore_index,
                               static_cast<float>(label_smoothing), reduction, mptr(loss), mptr(grad),
                               static_cast<float*>(mptr(row_scratch)), static_cast<float*>(mptr(denom)),
                               static_cast<unsigned long long*>(mptr(counter)), device, stream);
      },
      "fused cross-entropy forward on CUDA (one launch)");
  m.def(
      "softmax_xent_prob_fwd_cuda",
      [](int dt, uintptr_t x, int64_t sxn, uintptr_t target, int64_t stn, uintptr_t weight, int64_t N, int64_t C,
         double label_smoothing, int reduction, uintptr_t loss, uintptr_t grad, uintptr_t row_scratch,
         uintptr_t denom, int device, uintptr_t stream) {
        DType d = to_dtype(dt);
        if (d == DType::Float64)
          throw std::invalid_argument("CUDA kernels take float32, float16 or bfloat16, got float64");
        to_reduction(reduction);
        py::gil_scoped_release nogil;
        cuda::softmax_xent_prob_fwd(d, cptr(x), sxn, cptr(target), stn, cptr(weight), N, C,
                                    static_cast<float>(label_smoothing), reduction, mptr(loss), mptr(grad),
                                    static_cast<float*>(mptr(row_scratch)), static_cast<float*>(mptr(denom)), device,
                                    stream);
      },
      "fused cross-entropy forward with class-probability targets on CUDA (1 launch, 2 for mean / sum)");
  m.def(
      "softmax_xent_bwd_cuda",
      [](int dt, uintptr_t saved, uintptr_t target, bool target_i32, uintptr_t grad_loss, int64_t go_stride,
         bool per_row, uintptr_t denom, int64_t N, int64_t C, int64_t ignore_index, uintptr_t grad_in, int device,
         uintptr_t stream) {
        DType d = to_dtype(dt);
        if (d == DType::Float64)
          throw std::invalid_argument("CUDA kernels take float32, float16 or bfloat16, got float64");
        py::gil_scoped_release nogil;
        cuda::softmax_xent_bwd(d, cptr(saved), cptr(target), target_i32, cptr(grad_loss), go_stride, per_row,
                               static_cast<const float*>(cptr(denom)), N, C, ignore_index, mptr(grad_in), device,
                               stream);
      },
      "cross-entropy backward on CUDA: scale the saved gradient (one launch)");
#endif
}

}  // namespace pyimgcls::bind
