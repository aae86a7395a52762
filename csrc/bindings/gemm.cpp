// GEMM family launchers: C = act(A @ B + bias) and the epilogue backward.
#include "bind.h"
#include "../cpu/gemm.h"
#include "../cuda/gemm.h"  // CUDA-free: the launch decisions; the launchers exist only in CUDA builds

namespace pyimgcls::bind {

namespace {

// The CUDA GEMM's launch decision for gemm_cuda's leading arguments (bias and act do not change it):
// plan_dict plus the split-K details, k_chunk, k_ranges (the [begin, end) of K each split sums, the
// same function the kernels call) and scratch (float32 elements gemm_cuda needs).
py::dict gemm_plan_dict(int dt, uintptr_t a, int64_t sam, int64_t sak, uintptr_t b, int64_t sbk, int64_t sbn,
                        uintptr_t bias, uintptr_t c, int64_t ldc, int64_t M, int64_t N, int64_t K, int act,
                        int sm_count) {
  (void)bias;
  to_act(act);
  const cuda::GemmPlan p =
      cuda::gemm_plan(to_cuda_dtype(dt, "GEMM"), a, sam, sak, b, sbk, sbn, c, ldc, M, N, K, sm_count);
  py::dict d = plan_dict(p);
  d["k_chunk"] = p.k_chunk;
  py::list ranges;
  for (int64_t s = 0; s < p.splits; ++s) {
    int64_t begin = 0, end = 0;
    cuda::gemm_split_k_range(K, p.k_chunk, s, &begin, &end);
    ranges.append(py::make_tuple(begin, end));
  }
  d["k_ranges"] = ranges;
  d["scratch"] = p.scratch;
  return d;
}

}  // namespace

void bind_gemm(py::module_& m) {
  m.def("gemm_plan_cuda", &gemm_plan_dict,
        "launch decision of gemm_cuda for the same leading arguments plus the SM count (CPU-only builds too)");
  // The entry point's per-call question, without building a dict (a few microseconds per GEMM).
  m.def(
      "gemm_scratch_cuda",
      [](int dt, uintptr_t a, int64_t sam, int64_t sak, uintptr_t b, int64_t sbk, int64_t sbn, uintptr_t bias,
         uintptr_t c, int64_t ldc, int64_t M, int64_t N, int64_t K, int act, int sm_count) {
        (void)bias;
        to_act(act);
        return cuda::gemm_plan(to_cuda_dtype(dt, "GEMM"), a, sam, sak, b, sbk, sbn, c, ldc, M, N, K, sm_count).scratch;
      },
      "gemm_plan_cuda(...)['scratch']: float32 scratch elements gemm_cuda needs for these arguments");
  m.def(
      "bias_act_bwd_plan_cuda",
      [](int dt, uintptr_t grad, uintptr_t out, uintptr_t grad_pre, uintptr_t grad_bias, int64_t M, int64_t N,
         int act) {
        (void)grad, (void)out, (void)grad_pre;
        to_act(act);
        return plan_dict(cuda::bias_act_bwd_plan(to_cuda_dtype(dt, "bias_act_bwd"), M, N, grad_bias != 0));
      },
      "launch decision of bias_act_bwd_cuda for the same leading arguments (CPU-only builds too)");
  m.def(
      "act_plan_cuda",
      [](int dt, int64_t n, int act, bool backward) {
        to_act(act);
        return plan_dict(cuda::act_plan(to_cuda_dtype(dt, "activation"), n, backward));
      },
      "launch decision of act_fwd_cuda (backward=False) / act_bwd_cuda (True) for n elements");
  m.def("gemm_isa", &cpu::gemm_isa, "instruction set the CPU GEMM micro-kernel uses here");
  m.def(
      "gemm_cpu",
      [](int dt, uintptr_t a, int64_t sam, int64_t sak, uintptr_t b, int64_t sbk, int64_t sbn,
         uintptr_t bias, uintptr_t c, int64_t scm, int64_t scn, int64_t M, int64_t N, int64_t K,
         int act) {
        DType d = to_dtype(dt);
        if (d != DType::BFloat16) check_cpu_dtype(d);  // bfloat16: the bf16 GEMM (cpu::gemm_bf16)
        Act ac = to_act(act);
        py::gil_scoped_release nogil;
        cpu::gemm(d, cptr(a), sam, sak, cptr(b), sbk, sbn, cptr(bias), mptr(c), scm, scn, M, N, K, ac);
      },
      "C = act(A @ B + bias) on CPU (float32, float64; bfloat16 with float32 accumulation)");
  m.def("gemm_bf16_kernel", &cpu::gemm_bf16_kernel,
        "which kernel the CPU bfloat16 GEMM runs here: avx512bf16 (vdpbf16ps) or the fallback's avx512 / avx2 / generic");
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
  m.def(
      "act_fwd_cpu",
      [](int dt, uintptr_t x, uintptr_t y, int64_t n, int act) {
        DType d = to_dtype(dt);
        check_cpu_dtype(d);
        Act ac = to_act(act);
        py::gil_scoped_release nogil;
        cpu::act_fwd(d, cptr(x), mptr(y), n, ac);
      },
      "standalone activation on CPU: y = act(x) over n dense elements");
  m.def(
      "act_bwd_cpu",
      [](int dt, uintptr_t grad, uintptr_t saved, uintptr_t grad_in, int64_t n, int act) {
        DType d = to_dtype(dt);
        check_cpu_dtype(d);
        Act ac = to_act(act);
        py::gil_scoped_release nogil;
        cpu::act_bwd(d, cptr(grad), cptr(saved), mptr(grad_in), n, ac);
      },
      "standalone activation backward on CPU: grad_in = act'(saved) * grad");
#ifdef PYIMGCLS_WITH_CUDA
  m.def(
      "gemm_cuda",
      [](int dt, uintptr_t a, int64_t sam, int64_t sak, uintptr_t b, int64_t sbk, int64_t sbn,
         uintptr_t bias, uintptr_t c, int64_t ldc, int64_t M, int64_t N, int64_t K, int act, int sm_count,
         uintptr_t scratch, int64_t scratch_floats, int device, uintptr_t stream) {
        const DType d = to_cuda_dtype(dt, "GEMM");
        Act ac = to_act(act);
        py::gil_scoped_release nogil;
        cuda::gemm(d, cptr(a), sam, sak, cptr(b), sbk, sbn, cptr(bias), mptr(c), ldc, M, N, K, ac, sm_count,
                   mptr(scratch), scratch_floats, device, stream);
      },
      "C = act(A @ B + bias) on CUDA (split-K partials in scratch: gemm_plan_cuda(...)['scratch'] floats)");
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
  m.def(
      "act_fwd_cuda",
      [](int dt, uintptr_t x, uintptr_t y, int64_t n, int act, int device, uintptr_t stream) {
        const DType d = to_cuda_dtype(dt, "activation");
        Act ac = to_act(act);
        py::gil_scoped_release nogil;
        cuda::act_fwd(d, cptr(x), mptr(y), n, ac, device, stream);
      },
      "standalone activation on CUDA: y = act(x) over n dense elements");
  m.def(
      "act_bwd_cuda",
      [](int dt, uintptr_t grad, uintptr_t saved, uintptr_t grad_in, int64_t n, int act, int device,
         uintptr_t stream) {
        const DType d = to_cuda_dtype(dt, "activation backward");
        Act ac = to_act(act);
        py::gil_scoped_release nogil;
        cuda::act_bwd(d, cptr(grad), cptr(saved), mptr(grad_in), n, ac, device, stream);
      },
      "standalone activation backward on CUDA: grad_in = act'(saved) * grad");
#endif
}

}  // namespace pyimgcls::bind
