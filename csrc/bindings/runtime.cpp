// Build facts and CUDA device queries.
#include "bind.h"

#ifdef PYIMGCLS_WITH_CUDA
namespace pyimgcls::cuda {
int device_count();
std::string device_name(int device);
int runtime_version();
}  // namespace pyimgcls::cuda
#endif

namespace pyimgcls::bind {

void bind_runtime(py::module_& m) {
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
