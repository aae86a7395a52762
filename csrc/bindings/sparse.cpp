// 2:4 sparse family launchers: sparse_linear on CPU (csrc/cpu/sparse.cpp) and CUDA (csrc/cuda/sparse.cu).
#include "bind.h"
#include "../cpu/sparse.h"
#include "../cuda/sparse.h"  // CUDA-free: the index maps and the launch decision

namespace pyimgcls::bind {

void bind_sparse(py::module_& m) {
  m.def(
      "sparse_linear_cpu",
      [](int dt, uintptr_t x, int64_t ldx, uintptr_t values, int64_t ldv, uintptr_t meta, int64_t ldm, uintptr_t bias,
         uintptr_t out, int64_t ldo, int64_t M, int64_t N, int64_t K) {
        const DType d = to_cpu_dtype(dt);
        if (K % 4 != 0) throw std::invalid_argument("sparse_linear: K must be a multiple of 4");
        py::gil_scoped_release nogil;
        cpu::sparse_linear(d, cptr(x), ldx, cptr(values), ldv, reinterpret_cast<const uint16_t*>(meta), ldm, cptr(bias),
                           mptr(out), ldo, M, N, K);
      },
      "out = x @ W^T + bias with W 2:4 compressed (values [N, K/2], uint16 metadata [N, ceil(K/16)]) on CPU");
  m.def(
      "sparse_linear_plan_cuda",
      [](int dt, int64_t M, int64_t N, int64_t K) {
        return plan_dict(cuda::sparse_linear_plan(to_cuda_dtype(dt, "sparse_linear"), M, N, K));
      },
      "launch decision of sparse_linear_cuda (CPU-only builds too)");
#ifdef PYIMGCLS_WITH_CUDA
  m.def(
      "sparse_linear_cuda",
      [](int dt, uintptr_t x, int64_t ldx, uintptr_t values, int64_t ldv, uintptr_t meta, int64_t ldm, uintptr_t bias,
         uintptr_t out, int64_t ldo, int64_t M, int64_t N, int64_t K, int device, uintptr_t stream) {
        const DType d = to_cuda_dtype(dt, "sparse_linear");
        py::gil_scoped_release nogil;
        cuda::sparse_linear(d, cptr(x), ldx, cptr(values), ldv, cptr(meta), ldm, cptr(bias), mptr(out), ldo, M, N, K,
                            device, stream);
      },
      "out = x @ W^T + bias with W 2:4 compressed, on the sparse tensor cores (float16 / bfloat16, sm_80+)");
#endif
}

}  // namespace pyimgcls::bind
