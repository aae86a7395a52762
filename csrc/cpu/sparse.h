// 2:4 sparse linear on the CPU (csrc/cpu/sparse.cpp); the compressed format is described in
// csrc/cuda/sparse.h (values [N, K/2], uint16 metadata [N, ceil(K/16)]).
#pragma once
#include <cstdint>

#include "../common.h"

namespace pyimgcls::cpu {

// out[m * ldo + n] = sum_k x[m * ldx + k] * W[n][k] + bias[n], W given compressed; T = float or
// double (dt). bias may be null. K % 4 == 0.
void sparse_linear(DType dt, const void* x, int64_t ldx, const void* values, int64_t ldv, const uint16_t* meta,
                   int64_t ldm, const void* bias, void* out, int64_t ldo, int64_t M, int64_t N, int64_t K);

}  // namespace pyimgcls::cpu
