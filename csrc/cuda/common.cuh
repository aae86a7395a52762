// Device vocabulary shared by the production kernels (csrc/cuda/*.cu) and the study ladder
// (csrc/cuda/ladder/, csrc/cuda/sm90/): conversion between the storage dtypes and the fp32 compute
// type, 16-byte vector loads and stores, the activation epilogues and their backward, and the
// PTX wrappers of the sm_80 tensor-core pipeline (cp.async, ldmatrix, mma.sync), and the host-side
// dtype dispatch and alignment test of the launchers.
// Written once so that a fix (a NaN rule, a missing "memory" clobber) reaches every kernel at once
// instead of one of several hand-kept copies. Host-side runtime helpers (error checks, device
// selection, SM count) live in runtime.h, included here.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "../common.h"
#include "runtime.h"

namespace pyimgcls::cuda {

// ---------------------------------------------------------------------------------------------
// dtype conversion. All arithmetic is fp32; results are rounded to nearest even once, on store.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Declared only: an unsupported T fails to compile instead of converting silently.
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// VEC elements moved as one aligned access (16 bytes when sizeof(T) * VEC == 16): the alignment
// lets the compiler emit a single LDG.128 / STG.128. Callers guarantee the pointer is aligned.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// p is __restrict__, so the compiler may read through the non-coherent read-only path
// (LDG.CONSTANT): only for data that no thread writes while the kernel runs.
template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float (&out)[VEC]) {
  const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(p);
#pragma unroll
  for (int k = 0; k < VEC; ++k) out[k] = to_float(pk.v[k]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const float (&in)[VEC]) {
  Pack<T, VEC> pk;
#pragma unroll
  for (int k = 0; k < VEC; ++k) pk.v[k] = from_float<T>(in[k]);
  *reinterpret_cast<Pack<T, VEC>*>(p) = pk;
}

// ---------------------------------------------------------------------------------------------
// Activations (codes of Act, csrc/common.h: 0 none, 1 relu, 2 relu6, 3 silu, 4 hardswish, 5 sigmoid,
// 6 hardsigmoid).
// ---------------------------------------------------------------------------------------------
// Forward on the fp32 value, written with `v < 0` tests so that NaN propagates as in PyTorch
// (relu(NaN) = relu6(NaN) = NaN); fminf / fmaxf would silently drop it. ATen's formulas for the
// others, with expf (full precision, as ATen's CUDA sigmoid / silu; __expf's error grows with |x|):
// silu v / (1 + exp(-v)), hardswish v * relu6(v + 3) / 6, sigmoid 1 / (1 + exp(-v)), hardsigmoid
// relu6(v + 3) / 6. exp(-v) overflowing to inf gives ATen's 0 / -0 for v < -88.7.
__device__ __forceinline__ float relu6f(float v) { return v < 0.f ? 0.f : (v > 6.f ? 6.f : v); }

// FAST16 (16-bit outputs): __expf / __fdividef and a multiply by 1/6 in place of expf and the IEEE
// divisions, a few fp32 ulp off, far below the 16-bit rounding of the result. The IEEE division is a
// called routine: the conv tensor-core kernels' epilogues made 288 such calls with it.
template <bool FAST16 = false>
__device__ __forceinline__ float apply_act(float v, int act) {
  if (act == static_cast<int>(Act::ReLU)) return v < 0.f ? 0.f : v;
  if (act == static_cast<int>(Act::ReLU6)) return relu6f(v);
  if (act == static_cast<int>(Act::SiLU)) return FAST16 ? __fdividef(v, 1.f + __expf(-v)) : v / (1.f + expf(-v));
  if (act == static_cast<int>(Act::Hardswish))
    return FAST16 ? v * relu6f(v + 3.f) * (1.f / 6.f) : v * relu6f(v + 3.f) / 6.f;
  if (act == static_cast<int>(Act::Sigmoid)) return FAST16 ? __fdividef(1.f, 1.f + __expf(-v)) : 1.f / (1.f + expf(-v));
  if (act == static_cast<int>(Act::Hardsigmoid)) return FAST16 ? relu6f(v + 3.f) * (1.f / 6.f) : relu6f(v + 3.f) / 6.f;
  return v;
}

// Backward mask from the saved output o, with the select semantics of ATen's threshold_backward
// (relu: dropped where o <= 0) and hardtanh_backward (relu6: dropped where o <= 0 or o >= 6). A NaN
// output keeps its gradient; callers select (never multiply) so inf / NaN gradients at dropped
// positions become 0.
__device__ __forceinline__ bool act_drops(float o, int act) {
  if (act == static_cast<int>(Act::ReLU)) return o <= 0.f;
  if (act == static_cast<int>(Act::ReLU6)) return o <= 0.f || o >= 6.f;
  return false;
}

// The gradient through any activation from the saved tensor s: the output for relu / relu6 /
// sigmoid, the pre-activation for silu / hardswish / hardsigmoid (act_grad_reads_input, common.h).
// ATen's backward formulas: sigmoid g * (1 - y) * y; silu g * sig * (1 + x * (1 - sig));
// hardswish x <= -3: 0, x < 3: g * (x / 3 + 0.5), else g (NaN x passes g); hardsigmoid g / 6 on the
// open interval (-3, 3), else 0 (NaN x gives 0).
// FAST16 for 16-bit tensors: __expf / __fdividef (a few fp32 ulp, far below the 16-bit rounding) in
// place of expf and the IEEE division, fewer registers: batch_norm_reduce_nchw_kernel<half / bf16>
// spilled 12 bytes with expf (sm_80, sm_90a), none with these.
template <bool FAST16 = false>
__device__ __forceinline__ float act_grad(float g, float s, int act) {
  if (act == static_cast<int>(Act::ReLU) || act == static_cast<int>(Act::ReLU6)) return act_drops(s, act) ? 0.f : g;
  if (act == static_cast<int>(Act::Sigmoid)) return g * (1.f - s) * s;
  if (act == static_cast<int>(Act::SiLU)) {
    const float sig = FAST16 ? __fdividef(1.f, 1.f + __expf(-s)) : 1.f / (1.f + expf(-s));
    return g * sig * (1.f + s * (1.f - sig));
  }
  if (act == static_cast<int>(Act::Hardswish)) return s <= -3.f ? 0.f : (s < 3.f ? g * (s / 3.f + 0.5f) : g);
  if (act == static_cast<int>(Act::Hardsigmoid)) return (s > -3.f && s < 3.f) ? g / 6.f : 0.f;
  return g;
}

// ---------------------------------------------------------------------------------------------
// PTX wrappers (sm_80+). Every asm that reads or writes memory carries a "memory" clobber: without
// it the compiler may move ordinary shared-memory loads and stores across the copy, the wait or the
// ldmatrix, since it cannot see what the asm touches.
// ---------------------------------------------------------------------------------------------
namespace ptx {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy (L2 only, .cg) that reads `src_bytes` (0..16) bytes and zero-fills
// the rest: src_bytes == 0 reads nothing, which is how padding taps and out-of-range chunks become
// zeros. src must still be a valid address; callers point those chunks at the tensor's base.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Wait until at most N of this thread's most recent cp.async groups are still pending (the copies
// of the others are then visible to this thread; a barrier makes them visible to the CTA).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, and lane l receives
// row l/4, columns 2*(l%4) and 2*(l%4)+1 of matrix i in r[i] (lower column in the low half).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// As ldmatrix_x4 but transposed: lane l receives rows 2*(l%4) and 2*(l%4)+1 of column l/4.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// D[16x8] += A[16x16] * B[16x8], fp32 accumulators, T = __half or __nv_bfloat16. Fragments
// (g = lane/4, t = lane%4):
//   a[0]: A[g][2t..2t+1]   a[1]: A[g+8][2t..2t+1]   a[2]: A[g][2t+8..2t+9]   a[3]: A[g+8][2t+8..2t+9]
//   b[0]: B[2t..2t+1][g]   b[1]: B[2t+8..2t+9][g]
//   d[0..1]: D[g][2t..2t+1]   d[2..3]: D[g+8][2t..2t+1]
// Registers only, so no "memory" clobber: the compiler stays free to schedule it.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same<T, __half>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    static_assert(std::is_same<T, __nv_bfloat16>::value, "mma_16816 takes __half or __nv_bfloat16");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

}  // namespace ptx

// ---------------------------------------------------------------------------------------------
// Host side of the launchers.
// ---------------------------------------------------------------------------------------------
inline bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Calls f(T{}) with T the storage type of dt (float, __half, __nv_bfloat16); any other dtype throws
// "CUDA <what> takes float32, float16 or bfloat16, got <dtype>".
template <typename F>
void dispatch_dtype(DType dt, const char* what, F&& f) {
  switch (dt) {
    case DType::Float32: return f(float{});
    case DType::Float16: return f(__half{});
    case DType::BFloat16: return f(__nv_bfloat16{});
    default:
      throw std::invalid_argument(std::string("CUDA ") + what + " takes float32, float16 or bfloat16, got " +
                                  dtype_name(dt));
  }
}

}  // namespace pyimgcls::cuda
