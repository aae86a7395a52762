// Build facts, CUDA device queries and the host memory advice for large outputs.
#include "bind.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#ifdef PYIMGCLS_WITH_CUDA
namespace pyimgcls::cuda {
int device_count();
std::string device_name(int device);
int runtime_version();
}  // namespace pyimgcls::cuda
#endif

namespace pyimgcls::bind {

namespace {

// madvise(MADV_HUGEPAGE) over the 2 MiB-aligned interior of [ptr, ptr + nbytes): a fresh mapping's
// first touch then faults 2 MiB pages instead of 4 KiB ones (a 411 MB gradient: 100 K faults and
// 80 ms of first writes, against 0.7 K faults and 13-22 ms; one thread, this machine). Advice
// only: the kernel may ignore it (transparent huge pages "never"), and the bytes are unchanged.
// Returns whether the advice was taken.
bool advise_huge_pages(uintptr_t ptr, int64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (nbytes <= 0) return false;
  const uintptr_t lo = (ptr + kHuge - 1) & ~(kHuge - 1), hi = (ptr + static_cast<uintptr_t>(nbytes)) & ~(kHuge - 1);
  if (hi <= lo) return false;
  return madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE) == 0;
#else
  (void)ptr;
  (void)nbytes;
  return false;
#endif
}

}  // namespace

void bind_runtime(py::module_& m) {
  m.def("advise_huge_pages", &advise_huge_pages, py::arg("ptr"), py::arg("nbytes"),
        "madvise(MADV_HUGEPAGE) over the 2 MiB-aligned interior of a host buffer; False where not taken");
#ifdef PYIMGCLS_WITH_CUDA
  m.attr("cuda_compiled") = true;
  m.attr("cuda_archs") = std::string(PYIMGCLS_CUDA_ARCHS_STR);
  m.def("cuda_device_count", &cuda::device_count, "GPUs visible to the CUDA runtime (0 without a driver)");
  m.def("cuda_device_name", &cuda::device_name);
  m.def("cuda_runtime_version", &cuda::runtime_version);
#else
  m.attr("cuda_compiled") = false;
  m.attr("cuda_archs") = std::string("");
#endif
}

}  // namespace pyimgcls::bind
