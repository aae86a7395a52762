// CUDA runtime helpers shared by every .cu file: error checking, the scoped device guard, device queries.
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
// Makes `device` current for the enclosing scope and restores the previous current device at scope
// exit, as ATen's DeviceGuard does: the current device is per-thread state PyTorch and the user own
// (torch.cuda.set_device, DDP's one process per cuda:N), so a launcher for a tensor on another device
// must not leave it switched. Every launcher opens one before its first launch or device query:
//   const DeviceGuard device_guard(device);
// Restoring after an asynchronous launch is safe: the kernel is already queued on its stream.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    PYIMGCLS_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) {
      PYIMGCLS_CUDA_CHECK(cudaSetDevice(device));
      switched_ = true;
    }
  }
  // A destructor must not throw (it also runs while a launcher's exception unwinds). Switching back to
  // a device that was current a moment ago fails only if the context is already broken, which the
  // next checked call reports; the non-sticky error is cleared so it is not misattributed to the next
  // launch's PYIMGCLS_CUDA_CHECK_LAUNCH.
  ~DeviceGuard() {
    if (switched_ && cudaSetDevice(previous_) != cudaSuccess) cudaGetLastError();
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
  bool switched_ = false;
};

// Streaming multiprocessors of `device`: launchers size their grids (tile shape, split count) so
// that every SM gets work.
inline int sm_count(int device) {
  int v = 0;
  PYIMGCLS_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device));
  return v;
}
}  // namespace pyimgcls::cuda
