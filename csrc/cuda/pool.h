// CUDA pooling family (float32 / float16 / bfloat16, fp32 accumulation). Host launchers; see pool.cu.
#pragma once
#include "../common.h"

namespace pyimgcls::cuda {

// Geometry of one pooling call (same meaning as cpu::Pool2dParams): input [N, C, H, W], output
// [N, C, OH, OW], window kh x kw, stride sh x sw, padding ph x pw, dilation dh x dw.
struct Pool2dParams {
  int64_t N, C, H, W, OH, OW;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// Every tensor is contiguous NCHW (channels_last == false) or NHWC (true); indices are int64 flat
// positions ih * W + iw per input plane. Each launcher makes `device` current, launches on `stream`
// and never synchronises. Semantics as in cpu/pool.h (ATen's NaN / tie / divisor rules).
void max_pool2d_fwd(DType dt, const void* x, void* y, int64_t* idx, const Pool2dParams& p, bool channels_last,
                    int device, uintptr_t stream);
void max_pool2d_bwd(DType dt, const void* gy, const int64_t* idx, void* gx, const Pool2dParams& p,
                    bool channels_last, int device, uintptr_t stream);
void avg_pool2d_fwd(DType dt, const void* x, void* y, const Pool2dParams& p, bool count_include_pad,
                    int64_t divisor_override, bool channels_last, int device, uintptr_t stream);
void avg_pool2d_bwd(DType dt, const void* gy, void* gx, const Pool2dParams& p, bool count_include_pad,
                    int64_t divisor_override, bool channels_last, int device, uintptr_t stream);
void adaptive_avg_pool2d_fwd(DType dt, const void* x, void* y, int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t OH, int64_t OW, bool channels_last, int device, uintptr_t stream);
void adaptive_avg_pool2d_bwd(DType dt, const void* gy, void* gx, int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t OH, int64_t OW, bool channels_last, int device, uintptr_t stream);

}  // namespace pyimgcls::cuda
