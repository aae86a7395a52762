// CUDA study ladder: step tables, argument checks and dispatch (implements ladder.h).
//
// The steps themselves are the numbered headers under csrc/cuda/ladder/{gemm,conv}/ (each opens with
// what it changes, its FLOP / byte counts at the benchmark size and a predicted H100 throughput;
// csrc/cuda/ladder/PREDICTIONS.md collects the predictions). GEMM step 09 and conv step 05 call the
// production launchers (pyimgcls::cuda::gemm / conv2d_fwd); GEMM step 10 (wgmma + TMA) is in
// csrc/cuda/sm90/ladder_gemm_wgmma.cu, linked only into builds that include the 90a target.
//
// Cost: see each step. Every launch is checked; nothing here synchronises.
// Test and benchmark: pytest tests/test_ladder_cuda.py -m cuda; python benchmarks/bench_ladder.py
#include "ladder.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "ladder/common.cuh"
#include "ladder/conv/01_direct.cuh"
#include "ladder/conv/02_im2col_gemm.cuh"
#include "ladder/conv/03_implicit_gemm.cuh"
#include "ladder/conv/04_tensor_core_nhwc.cuh"
#include "ladder/conv/05_fused_epilogue.cuh"
#include "ladder/gemm/01_naive.cuh"
#include "ladder/gemm/02_coalesced.cuh"
#include "ladder/gemm/03_smem_tiled.cuh"
#include "ladder/gemm/04_blocktile_1d.cuh"
#include "ladder/gemm/05_blocktile_2d.cuh"
#include "ladder/gemm/06_vectorized.cuh"
#include "ladder/gemm/07_warptiled.cuh"
#include "ladder/gemm/08_tensor_core.cuh"
#include "ladder/gemm/09_cp_async_pipeline.cuh"
#include "ladder/gemm/10_wgmma_tma.cuh"
#include "runtime.h"

namespace pyimgcls::cuda::ladder {
namespace {

constexpr unsigned kF32 = 1u << static_cast<int>(DType::Float32);
constexpr unsigned kHalves = (1u << static_cast<int>(DType::Float16)) | (1u << static_cast<int>(DType::BFloat16));

const StepInfo& find_step(const std::vector<StepInfo>& steps, const char* family, int step, DType dt) {
  if (step < 1 || step > static_cast<int>(steps.size()))
    throw std::invalid_argument(std::string("ladder ") + family + ": step must be 1.." +
                                std::to_string(steps.size()) + ", got " + std::to_string(step));
  const StepInfo& info = steps[step - 1];
  if (!(info.dtype_mask & (1u << static_cast<int>(dt)))) {
    std::string ok;
    for (DType d : {DType::Float32, DType::Float64, DType::Float16, DType::BFloat16})
      if (info.dtype_mask & (1u << static_cast<int>(d))) ok += std::string(ok.empty() ? "" : ", ") + dtype_name(d);
    throw std::invalid_argument(std::string("ladder ") + family + " step " + std::to_string(step) + " (" +
                                info.name + ") takes " + ok + ", got " + dtype_name(dt));
  }
  return info;
}

// Step 10 needs the 90a object (weak symbol non-null) and an sm_90 device.
void require_sm90a(int step, int device) {
  if (detail::launch_ladder_gemm_wgmma_tma_fwd == nullptr)
    throw std::invalid_argument("ladder gemm step " + std::to_string(step) +
                                " (wgmma_tma) is not built: rebuild with \"90a\" in PYIMGCLS_CUDA_ARCHS");
  int major = 0, minor = 0;
  PYIMGCLS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  PYIMGCLS_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  if (major != 9)
    throw std::invalid_argument("ladder gemm step " + std::to_string(step) +
                                " (wgmma_tma) needs an sm_90 (Hopper) GPU; device " + std::to_string(device) +
                                " is sm_" + std::to_string(major) + std::to_string(minor));
}

template <typename T>
void gemm_halves(int step, const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K,
                 cudaStream_t st) {
  const T* A = static_cast<const T*>(a);
  const T* B = static_cast<const T*>(b);
  T* C = static_cast<T*>(c);
  if (step == 8) detail::launch_ladder_gemm_tensor_core_fwd<T>(A, B, C, M, N, K, st);
}

}  // namespace

const std::vector<StepInfo>& gemm_steps() {
  static const std::vector<StepInfo> steps = {
      {1, "naive", "one thread per output, threadIdx.x along rows: uncoalesced A loads and C stores (fp32)", kF32,
       false, false},
      {2, "coalesced", "threadIdx.x along columns: coalesced B loads and C stores, A broadcast (fp32)", kF32, false,
       false},
      {3, "smem_tiled", "32x32 tiles of A and B staged in shared memory, each reused by 32 threads (fp32)", kF32,
       false, false},
      {4, "blocktile_1d", "each thread computes 8 outputs in a column: 1.125 shared loads per FMA (fp32)", kF32,
       false, false},
      {5, "blocktile_2d", "8x8 register micro-tile per thread, 128x128 CTA tile: outer products (fp32)", kF32,
       false, false},
      {6, "vectorized", "float4 global loads/stores, A tile transposed in shared memory for float4 reads (fp32)",
       kF32, false, false},
      {7, "warptiled", "warp-level 64x32 tiles of 4x4 thread blocks, BK=16: conflict-free smem reads (fp32)", kF32,
       false, false},
      {8, "tensor_core", "mma.sync m16n8k16 + ldmatrix tensor cores, fp32 accumulate, no pipeline (fp16/bf16)",
       kHalves, false, false},
      {9, "cp_async_pipeline",
       "the production kernel: cp.async multi-stage ring, swizzled smem, tile choice, grouped raster (fp16/bf16)",
       kHalves, false, false},
      {10, "wgmma_tma",
       "Hopper wgmma m64n64k16 fed by TMA + mbarrier 4-stage ring, warp-specialised (fp16/bf16; sm_90a; needs "
       "K%8==0, N%8==0, K>0, 16-byte aligned pointers)",
       kHalves, false, true},
  };
  return steps;
}

const std::vector<StepInfo>& conv_steps() {
  static const std::vector<StepInfo> steps = {
      {1, "direct", "direct loops, one thread per output, NCHW (fp32)", kF32, false, false},
      {2, "im2col_gemm", "explicit im2col into scratch per image + GEMM ladder step 5, NCHW (fp32)", kF32, false,
       false},
      {3, "implicit_gemm", "implicit GEMM: the column tile is gathered into shared memory, one launch, NCHW (fp32)",
       kF32, false, false},
      {4, "tensor_core_nhwc", "tensor-core (mma.sync) implicit GEMM in NHWC with 16-byte gathers (fp16/bf16)",
       kHalves, true, false},
      {5, "fused_epilogue",
       "the production conv: cp.async pipelined gathers, bias + activation fused on the accumulators (fp16/bf16)",
       kHalves, true, false},
  };
  return steps;
}

void gemm(int step, DType dt, const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K, int device,
          uintptr_t stream) {
  find_step(gemm_steps(), "gemm", step, dt);
  if (M < 0 || N < 0 || K < 0)
    throw std::invalid_argument("ladder gemm: negative size M=" + std::to_string(M) + " N=" + std::to_string(N) +
                                " K=" + std::to_string(K));
  const DeviceGuard device_guard(device);
  if (step == 10) require_sm90a(step, device);
  if (M == 0 || N == 0) return;
  if ((K > 0 && (a == nullptr || b == nullptr)) || c == nullptr)
    throw std::invalid_argument("ladder gemm: null data pointer");
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  const float* A = static_cast<const float*>(a);
  const float* B = static_cast<const float*>(b);
  float* C = static_cast<float*>(c);
  switch (step) {
    case 1: detail::launch_ladder_gemm_naive_fwd(A, B, C, M, N, K, st); return;
    case 2: detail::launch_ladder_gemm_coalesced_fwd(A, B, C, M, N, K, st); return;
    case 3: detail::launch_ladder_gemm_smem_tiled_fwd(A, B, C, M, N, K, st); return;
    case 4: detail::launch_ladder_gemm_blocktile_1d_fwd(A, B, C, M, N, K, st); return;
    case 5: detail::launch_ladder_gemm_blocktile_2d_fwd(A, B, C, M, N, K, st); return;
    case 6: detail::launch_ladder_gemm_vectorized_fwd(A, B, C, M, N, K, st); return;
    case 7: detail::launch_ladder_gemm_warptiled_fwd(A, B, C, M, N, K, st); return;
    case 8:
      if (dt == DType::Float16) gemm_halves<__half>(step, a, b, c, M, N, K, st);
      else gemm_halves<__nv_bfloat16>(step, a, b, c, M, N, K, st);
      return;
    case 9: detail::launch_ladder_gemm_cp_async_pipeline_fwd(dt, a, b, c, M, N, K, device, stream); return;
    case 10: detail::launch_ladder_gemm_wgmma_tma_fwd(dt, a, b, c, M, N, K, st); return;
    default: throw std::invalid_argument("ladder gemm: unhandled step " + std::to_string(step));
  }
}

namespace {

void check_conv_geometry(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW, int64_t OH,
                         int64_t OW, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  auto bad = [](const std::string& what) { throw std::invalid_argument("ladder conv2d: " + what); };
  if (N < 0 || C < 0 || H < 0 || W < 0 || O < 0 || OH < 0 || OW < 0)
    bad("sizes must be non-negative (N=" + std::to_string(N) + " C=" + std::to_string(C) + " H=" +
        std::to_string(H) + " W=" + std::to_string(W) + " O=" + std::to_string(O) + " OH=" + std::to_string(OH) +
        " OW=" + std::to_string(OW) + ")");
  if (KH < 1 || KW < 1) bad("kernel size must be >= 1, got " + std::to_string(KH) + "x" + std::to_string(KW));
  if (sh < 1 || sw < 1) bad("stride must be >= 1, got " + std::to_string(sh) + "x" + std::to_string(sw));
  if (ph < 0 || pw < 0) bad("padding must be >= 0, got " + std::to_string(ph) + "x" + std::to_string(pw));
  // Every output window must start inside the padded input (a larger OH/OW would read past it).
  if (OH > 0 && (OH - 1) * sh > H + 2 * ph - KH)
    bad("OH=" + std::to_string(OH) + " is too large for H=" + std::to_string(H) + ", KH=" + std::to_string(KH) +
        ", stride " + std::to_string(sh) + ", padding " + std::to_string(ph));
  if (OW > 0 && (OW - 1) * sw > W + 2 * pw - KW)
    bad("OW=" + std::to_string(OW) + " is too large for W=" + std::to_string(W) + ", KW=" + std::to_string(KW) +
        ", stride " + std::to_string(sw) + ", padding " + std::to_string(pw));
}

}  // namespace

int64_t conv_scratch_bytes(int step, DType dt, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH,
                           int64_t KW, int64_t OH, int64_t OW) {
  find_step(conv_steps(), "conv2d", step, dt);
  if (step != 2) return 0;
  detail::LadderConvArgs s{N, C, H, W, O, KH, KW, OH, OW, 1, 1, 0, 0};
  return detail::ladder_im2col_scratch_bytes(s);
}

void conv2d(int step, DType dt, const void* x, const void* w, const void* bias, void* y, void* scratch, int64_t N,
            int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW, int64_t OH, int64_t OW,
            int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, Act act, int device,
            uintptr_t stream) {
  const StepInfo& info = find_step(conv_steps(), "conv2d", step, dt);
  check_conv_geometry(N, C, H, W, O, KH, KW, OH, OW, stride_h, stride_w, pad_h, pad_w);
  if (static_cast<int>(act) < 0 || static_cast<int>(act) > 2)
    throw std::invalid_argument("ladder conv2d: activation code must be 0, 1 or 2");
  const DeviceGuard device_guard(device);
  const int64_t total = N * O * OH * OW;
  if (total == 0) return;
  if (y == nullptr || (N * C * H * W > 0 && x == nullptr) || (O * C > 0 && w == nullptr))
    throw std::invalid_argument("ladder conv2d: null data pointer");
  if (step == 2 && C > 0 && scratch == nullptr)
    throw std::invalid_argument(
        "ladder conv2d step 2 (im2col_gemm) needs a scratch buffer of conv_scratch_bytes() bytes");
  const auto st = reinterpret_cast<cudaStream_t>(stream);
  const detail::LadderConvArgs s{N, C, H, W, O, KH, KW, OH, OW, stride_h, stride_w, pad_h, pad_w};
  const int64_t inner = info.channels_last ? 1 : OH * OW;  // channel index of y[i] is (i / inner) % O
  switch (step) {
    case 1:
      detail::launch_ladder_conv_direct_fwd(static_cast<const float*>(x), static_cast<const float*>(w),
                                            static_cast<float*>(y), s, st);
      break;
    case 2:
      detail::launch_ladder_conv_im2col_gemm_fwd(static_cast<const float*>(x), static_cast<const float*>(w),
                                                 static_cast<float*>(y), static_cast<float*>(scratch), s, st);
      break;
    case 3:
      detail::launch_ladder_conv_implicit_gemm_fwd(static_cast<const float*>(x), static_cast<const float*>(w),
                                                   static_cast<float*>(y), s, st);
      break;
    case 4:
      if (dt == DType::Float16)
        detail::launch_ladder_conv_tensor_core_nhwc_fwd<__half>(static_cast<const __half*>(x),
                                                                static_cast<const __half*>(w),
                                                                static_cast<__half*>(y), s, st);
      else
        detail::launch_ladder_conv_tensor_core_nhwc_fwd<__nv_bfloat16>(
            static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(w),
            static_cast<__nv_bfloat16*>(y), s, st);
      break;
    case 5:
      detail::launch_ladder_conv_fused_epilogue_fwd(dt, x, w, bias, y, s, act, device, stream);
      return;  // bias and activation are fused
    default: throw std::invalid_argument("ladder conv2d: unhandled step " + std::to_string(step));
  }
  // Steps 1-4: bias and activation in a separate elementwise pass over y.
  if (dt == DType::Float32)
    detail::launch_ladder_bias_act_fwd<float>(static_cast<float*>(y), static_cast<const float*>(bias), total, inner,
                                              O, act, st);
  else if (dt == DType::Float16)
    detail::launch_ladder_bias_act_fwd<__half>(static_cast<__half*>(y), static_cast<const __half*>(bias), total,
                                               inner, O, act, st);
  else
    detail::launch_ladder_bias_act_fwd<__nv_bfloat16>(static_cast<__nv_bfloat16*>(y),
                                                      static_cast<const __nv_bfloat16*>(bias), total, inner, O, act,
                                                      st);
}

}  // namespace pyimgcls::cuda::ladder
