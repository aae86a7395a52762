// Device queries for pyimgcls._C (no kernels). Safe to call on a machine without a driver:
// every query reports "no device" instead of failing.
#include <cuda_runtime.h>
#include <string>
#include "runtime.h"

namespace pyimgcls::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error so later calls report cleanly
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp prop;
  PYIMGCLS_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

int runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

}  // namespace pyimgcls::cuda
