// CUDA runtime helpers shared by every .cu file: error checking, device selection and queries.
#pragma once
#include <cuda_runtime.h>
#include <stdexcept>
#include <string>

namespace pyimgcls::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t err, const char* what, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorName(err) + " (" +
                           cudaGetErrorString(err) + ") in " + what + " at " + file + ":" +
                           std::to_string(line));
}

}  // namespace pyimgcls::cuda

// Check every CUDA runtime call; the error name reaches Python as a RuntimeError.
#define PYIMGCLS_CUDA_CHECK(expr)                                                     \
  do {                                                                                \
    cudaError_t err_ = (expr);                                                        \
    if (err_ != cudaSuccess) ::pyimgcls::cuda::throw_cuda(err_, #expr, __FILE__, __LINE__); \
  } while (0)

// Check a kernel launch (configuration errors surface here, not at the next sync).
#define PYIMGCLS_CUDA_CHECK_LAUNCH() PYIMGCLS_CUDA_CHECK(cudaGetLastError())

namespace pyimgcls::cuda {
// Make `device` current for this thread (DDP: one process per cuda:N, but callers may switch).
inline void set_device(int device) {
  int cur = -1;
  PYIMGCLS_CUDA_CHECK(cudaGetDevice(&cur));
  if (cur != device) PYIMGCLS_CUDA_CHECK(cudaSetDevice(device));
}

// Streaming multiprocessors of `device`: launchers size their grids (tile shape, split count) so
// that every SM gets work.
inline int sm_count(int device) {
  int v = 0;
  PYIMGCLS_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
  return v;
}
}  // namespace pyimgcls::cuda
