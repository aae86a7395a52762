// CPU pooling family (float32 / float64, and bfloat16 through float32 blocks staged in cache,
// pool.cpp "bfloat16"): max, average and adaptive average pooling, forward and
// backward. See pool.cpp for the algorithms.
#pragma once
#include "../common.h"

namespace pyimgcls::cpu {

// Geometry of one pooling call. Input [N, C, H, W], output [N, C, OH, OW]; window kh x kw, stride
// sh x sw, zero-based padding ph x pw on both sides, dilation dh x dw (1 for average pooling).
// OH / OW are computed by the caller (ATen's pooling_output_shape, ceil_mode included).
struct Pool2dParams {
  int64_t N, C, H, W, OH, OW;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// Every tensor is contiguous in one layout: NCHW (channels_last == false) or NHWC (true).
// Indices are int64 flat positions ih * W + iw inside each input plane (PyTorch's convention).

// y = max over the window (padding = -inf; NaN propagates; first maximum wins ties, the last NaN
// wins when there are NaNs); idx = its flat position. idx may be null (indices not wanted).
void max_pool2d_fwd(DType dt, const void* x, void* y, int64_t* idx, const Pool2dParams& p, bool channels_last);

// gx[n, c, i] = sum of gy[n, c, o] over the outputs o with idx[n, c, o] == i (zero elsewhere).
void max_pool2d_bwd(DType dt, const void* gy, const int64_t* idx, void* gx, const Pool2dParams& p,
                    bool channels_last);

// y = sum over the window / divisor, where divisor = divisor_override when non-zero, else the
// window clipped to the padded input (count_include_pad) or to the input.
void avg_pool2d_fwd(DType dt, const void* x, void* y, const Pool2dParams& p, bool count_include_pad,
                    int64_t divisor_override, bool channels_last);

// gx[i] = sum over the windows containing i of gy[o] / divisor(o).
void avg_pool2d_bwd(DType dt, const void* gy, void* gx, const Pool2dParams& p, bool count_include_pad,
                    int64_t divisor_override, bool channels_last);

// y[oh, ow] = mean of x over [floor(oh*H/OH), ceil((oh+1)*H/OH)) x [floor(ow*W/OW), ceil((ow+1)*W/OW)).
// OH == OW == 1 is a plain per-(n, c) reduction (H * W == 0 gives NaN, as ATen's mean).
void adaptive_avg_pool2d_fwd(DType dt, const void* x, void* y, int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t OH, int64_t OW, bool channels_last);

// gx[i] = sum over the windows containing i of gy[o] / area(o).
void adaptive_avg_pool2d_bwd(DType dt, const void* gy, void* gx, int64_t N, int64_t C, int64_t H, int64_t W,
                             int64_t OH, int64_t OW, bool channels_last);

}  // namespace pyimgcls::cpu
