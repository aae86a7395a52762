// CUDA BatchNorm family (float32 / float16 / bfloat16 activations; float32 statistics, weight,
// bias and parameter gradients). Host launchers; see batchnorm.cu.
//
// Activation tensors are [N, C, S] views (S = H*W), contiguous NCHW (channels_last == false) or
// NHWC (true); per-channel vectors are contiguous float32 [C]. Null pointers mean "absent". Scratch
// is float32 device memory allocated by the caller (PyTorch's caching allocator). Every launcher
// makes `device` current, launches on `stream` and never synchronises. No float atomics: every sum
// is a two-level reduction in a fixed order, so results are bitwise repeatable.
#pragma once
#include "../common.h"

namespace pyimgcls::cuda {

// Row chunks of the two-level reductions for this shape (depends on the shape and SM count only).
int64_t batch_norm_chunks(int64_t N, int64_t C, int64_t S, bool channels_last, int sm_count);

// mean[c], var[c] (biased) of the batch; scratch holds 2 * chunks * C floats.
void batch_norm_stats(DType dt, const void* x, float* mean, float* var, float* scratch, int64_t chunks, int64_t N,
                      int64_t C, int64_t S, bool channels_last, int device, uintptr_t stream);

// y = act((x - mean) * invstd * w + b + r), invstd = 1 / sqrt(var + eps) written to invstd;
// scratch holds C floats.
void batch_norm_fwd(DType dt, const void* x, const float* mean, const float* var, const float* w, const float* b,
                    const void* r, void* y, float* invstd, float* scratch, int64_t N, int64_t C, int64_t S,
                    bool channels_last, double eps, Act act, int device, uintptr_t stream);

// In place: rm = (1-m) rm + m mean; rv = (1-m) rv + m var * count / (count - 1). rm / rv float32.
void batch_norm_update_stats(float* rm, float* rv, const float* mean, const float* var, int64_t C, double momentum,
                             int64_t count, int device, uintptr_t stream);

// Backward (see cpu/batchnorm.h for the formulas); gw / gb float32; gp (= the residual's gradient)
// in the activation dtype; scratch holds 2 * chunks * C + 3 * C floats.
void batch_norm_bwd(DType dt, const void* grad, const void* out, const void* x, const float* w, const float* mean,
                    const float* invstd, void* gx, float* gw, float* gb, void* gp, float* scratch, int64_t chunks,
                    int64_t N, int64_t C, int64_t S, bool channels_last, bool training, Act act, int device,
                    uintptr_t stream);

}  // namespace pyimgcls::cuda
