// What a CUDA launcher runs for one call, decided on the host. Plain C++ (no CUDA headers): each
// family's header (conv.h, gemm.h, ...) defines an inline <op>_plan() that its launcher calls to pick
// the kernel, and the bindings expose the same function in every build, CPU-only included, so
// pyimgcls.explain reports the launchers' own decisions without a GPU (no second copy to drift).
#pragma once
#include <cstdint>
#include <string>

namespace pyimgcls::cuda {

struct LaunchPlan {
  std::string kernel;        // the kernel's name as in its SASS symbol, template arguments spelled out
  bool tensor_cores = false; // HMMA / HGMMA main loop
  bool vectorized = false;   // 16-byte global loads (cp.async or vector ld) on the operands
  int tile_m = 0, tile_n = 0, tile_k = 0;  // CTA tile of a GEMM-like kernel; 0 where not tiled so
  int64_t ctas = 0;          // CTAs over all of the call's launches
  int64_t splits = 1;        // split-K / row splits reduced afterwards in a fixed order
  int launches = 1;          // kernel launches the call makes (main kernel + reductions)
};

}  // namespace pyimgcls::cuda
