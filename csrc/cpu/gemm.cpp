// TEMPORARY simple CPU GEMM (being replaced by the packed, ISA-dispatched kernel).
#include "gemm.h"
#include <algorithm>

namespace pyimgcls::cpu {
namespace {
template <typename T>
inline T apply_act(T v, Act act) {
  if (act == Act::ReLU) return v > T(0) ? v : T(0);
  if (act == Act::ReLU6) return std::min(std::max(v, T(0)), T(6));
  return v;
}
template <typename T>
void gemm_t(const T* a, int64_t sam, int64_t sak, const T* b, int64_t sbk, int64_t sbn, const T* bias,
            T* c, int64_t scm, int64_t scn, int64_t M, int64_t N, int64_t K, Act act) {
#pragma omp parallel for
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      T acc = bias ? bias[n] : T(0);
      for (int64_t k = 0; k < K; ++k) acc += a[m * sam + k * sak] * b[k * sbk + n * sbn];
      c[m * scm + n * scn] = apply_act(acc, act);
    }
}
template <typename T>
void bwd_t(const T* g, const T* o, T* gp, T* gb, int64_t M, int64_t N, Act act) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      T y = o ? o[m * N + n] : T(0);
      T mask = act == Act::None ? T(1) : act == Act::ReLU ? T(y > 0) : T(y > 0 && y < 6);
      gp[m * N + n] = g[m * N + n] * mask;
    }
  if (gb)
    for (int64_t n = 0; n < N; ++n) {
      T s = 0;
      for (int64_t m = 0; m < M; ++m) s += gp[m * N + n];
      gb[n] = s;
    }
}
}  // namespace
void gemm(DType dt, const void* a, int64_t sam, int64_t sak, const void* b, int64_t sbk, int64_t sbn,
          const void* bias, void* c, int64_t scm, int64_t scn, int64_t M, int64_t N, int64_t K, Act act) {
  if (dt == DType::Float32)
    gemm_t((const float*)a, sam, sak, (const float*)b, sbk, sbn, (const float*)bias, (float*)c, scm, scn, M, N, K, act);
  else
    gemm_t((const double*)a, sam, sak, (const double*)b, sbk, sbn, (const double*)bias, (double*)c, scm, scn, M, N, K, act);
}
void bias_act_bwd(DType dt, const void* grad, const void* out, void* grad_pre, void* grad_bias, int64_t M,
                  int64_t N, Act act) {
  if (dt == DType::Float32)
    bwd_t((const float*)grad, (const float*)out, (float*)grad_pre, (float*)grad_bias, M, N, act);
  else
    bwd_t((const double*)grad, (const double*)out, (double*)grad_pre, (double*)grad_bias, M, N, act);
}
const char* gemm_isa() { return "generic"; }
}  // namespace pyimgcls::cpu
