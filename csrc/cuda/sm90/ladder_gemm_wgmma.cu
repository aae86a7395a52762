// GEMM ladder, step 10: Hopper wgmma fed by TMA (sm_90a only). UNVERIFIED until run on an H100:
// this file was compiled (nvcc, sm_90a) but never executed when it was written; run
// `pytest tests/test_ladder_cuda.py -m cuda -k wgmma` on an H100 before trusting its numbers.
//
// What changed from step 09: the two Hopper engines replace mma.sync and cp.async.
//  * TMA: one thread issues 2-D bulk tensor copies (cp.async.bulk.tensor, tensor maps built on the host
//    with cuTensorMapEncodeTiled, obtained through cudaGetDriverEntryPointByVersion so nothing links
//    libcuda) of a 128x64 tile of A and two 64x64 tiles of B per K slice into 128-byte-swizzled shared
//    memory; out-of-range rows / columns are zero-filled by the TMA unit, so M is unrestricted and
//    partial K / N tiles need no predication. Completion is tracked by an mbarrier per stage
//    (arrive.expect_tx with the stage's byte count, consumers try_wait on its phase parity).
//  * wgmma: each of two consumer warpgroups (128 threads) computes a 64x128 half of the 128x128 CTA
//    tile with wgmma.mma_async.m64n64k16 (twice per k16 step, one per 64-column half of B), operands
//    read straight from shared memory through matrix descriptors (A K-major, B MN-major, i.e.
//    imm-trans-b = 1; 128-byte swizzle; no ldmatrix, no register staging of operands).
//  * Warp specialisation and a 4-stage ring: warpgroup 0 is the producer (one elected thread), the
//    consumers release a stage by arriving on its "empty" mbarrier after wgmma.wait_group 0, and the
//    producer waits on that before refilling it; so up to 3 slices are in flight during the math.
//    Kept simple on purpose: no clusters / multicast, no persistent scheduling, no setmaxnreg, and
//    each consumer waits for its wgmma group before releasing the stage (no wgmma/wgmma overlap).
//
// Requirements (checked, std::invalid_argument): K % 8 == 0 and N % 8 == 0 (TMA global strides are
// multiples of 16 bytes), K > 0, 16-byte aligned pointers, M, N, K < 2^31; fp16 / bf16 only.
//
// Counts at M = N = K = 4096 (fp16): FLOPs 137.4 GFLOP; global traffic per 128x128 tile = (128 + 128)
// * K * 2 B = 2.1 MB (2.1 GB through L2 for the 1024 tiles), 32 KB of shared memory per stage,
// 128 KB for the ring (1 CTA per SM).
//
// Prediction (H100 SXM, fp16; cuBLAS ~ 700 TFLOP/s): ~550 TFLOP/s, ~80% of cuBLAS: wgmma lifts the
// mma.sync ceiling (~660 TFLOP/s) to the ~990 TFLOP/s dense peak, TMA frees the consumer warps from
// address generation; what is left on the table is the serialised wgmma wait per stage, the one
// CTA per SM without a persistent tile scheduler, and no 2-CTA cluster multicast of B.
#if defined(PYIMGCLS_SM90A)
#include <cuda.h>  // CUtensorMap and its enums only; the encoder is fetched at run time
#include <cudaTypedefs.h>

#include "../ladder/common.cuh"
#include "../ladder/gemm/10_wgmma_tma.cuh"

namespace pyimgcls::cuda::ladder::detail {
namespace {

constexpr int kBM = 128, kBN = 128, kBK = 64, kStages = 4, kConsumers = 2;
constexpr int kThreads = 128 * (1 + kConsumers);
constexpr int kABytes = kBM * kBK * 2;         // 16 KB: A box, 128 rows x 128 B
constexpr int kBHalfBytes = kBK * 64 * 2;      // 8 KB: one B box, 64 k-rows x 128 B (64 columns)
constexpr int kStageBytes = kABytes + 2 * kBHalfBytes;
constexpr int kSmemBytes = kStages * kStageBytes + 1024;  // + slack to align the ring to 1024 B

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Spin until the barrier's phase with the given parity has completed.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}
// 2-D TMA load of the box at coordinates (c0 innermost, c1) into shared memory; completes on `bar`.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::
          "r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1)
      : "memory");
}

// wgmma shared-memory matrix descriptor: start address, leading / stride byte offsets (all >> 4),
// 128-byte swizzle (bits 62-63 = 1). Base offset 0: every tile starts 1024-byte aligned.
__device__ __forceinline__ uint64_t make_desc(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((saddr & 0x3FFFF) >> 4);
  d |= static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16;
  d |= static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32;
  d |= 1ull << 62;
  return d;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

// The f16 and bf16 forms differ only in the PTX type suffix, which must be part of the literal asm
// string: one macro body, expanded once per type.
#define PYIMGCLS_WGMMA_M64N64K16(TYPE)                                                                               \
  asm volatile(                                                                                                      \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                                   \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " "                                                \
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                      \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "                            \
      "%32, %33, p, 1, 1, 0, 1;\n}\n"                                                                                \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),              \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),        \
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),      \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])       \
      : "l"(da), "l"(db), "r"(1))

// D[64x64] += A[64x16] (K-major) * B[16x64] (MN-major: imm-trans-b = 1), fp32 accumulators. Thread t
// of the warpgroup holds, for n8 tile q = j / 4: d[j] = D[16*(t/32) + (t%32)/4 + 8*((j/2)%2)][8q + 2*(t%4) + j%2].
template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16(float (&d)[32], uint64_t da, uint64_t db) {
  if constexpr (std::is_same<T, __half>::value) {
    PYIMGCLS_WGMMA_M64N64K16("f16");
  } else {
    PYIMGCLS_WGMMA_M64N64K16("bf16");
  }
}
#undef PYIMGCLS_WGMMA_M64N64K16

template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    ladder_gemm_wgmma_tma_fwd_kernel(const __grid_constant__ CUtensorMap map_a,
                                     const __grid_constant__ CUtensorMap map_b, T* __restrict__ c, int M, int N,
                                     int K) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  __shared__ __align__(8) uint64_t full_bar[kStages];
  __shared__ __align__(8) uint64_t empty_bar[kStages];
  const uint32_t ring = (ptx::smem_addr(smem_raw) + 1023u) & ~1023u;  // 128B swizzle needs 1024-B alignment
  const int wg = threadIdx.x / 128, t = threadIdx.x % 128;
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  const int k_tiles = (K + kBK - 1) / kBK;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(ptx::smem_addr(&full_bar[s]), 1);                    // the producer's expect_tx arrival
      mbar_init(ptx::smem_addr(&empty_bar[s]), kConsumers * 128);    // every consumer thread
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {  // producer warpgroup: one thread issues the TMA copies
    if (t == 0) {
      for (int kt = 0; kt < k_tiles; ++kt) {
        const int s = kt % kStages;
        if (kt >= kStages) mbar_wait(ptx::smem_addr(&empty_bar[s]), ((kt / kStages) - 1) & 1);
        const uint32_t full = ptx::smem_addr(&full_bar[s]);
        const uint32_t sa = ring + s * kStageBytes, sb = sa + kABytes;
        mbar_arrive_expect_tx(full, kStageBytes);  // zero-filled out-of-range boxes still count in full
        tma_load_2d(sa, &map_a, full, kt * kBK, m0);
        tma_load_2d(sb, &map_b, full, n0, kt * kBK);
        tma_load_2d(sb + kBHalfBytes, &map_b, full, n0 + 64, kt * kBK);
      }
    }
    return;
  }

  const int cw = wg - 1;  // consumer warpgroup: rows cw*64 .. cw*64+63 of the CTA tile
  float acc[2][32];
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int j = 0; j < 32; ++j) acc[h][j] = 0.f;
  for (int kt = 0; kt < k_tiles; ++kt) {
    const int s = kt % kStages;
    mbar_wait(ptx::smem_addr(&full_bar[s]), (kt / kStages) & 1);
    const uint32_t sa = ring + s * kStageBytes + cw * 64 * 128, sb = ring + s * kStageBytes + kABytes;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      // A: 64 rows x 128 B, K-major; k16 step = +32 B inside the swizzle atom; SBO = 8 rows * 128 B.
      const uint64_t da = make_desc(sa + kk * 32, 16, 1024);
      // B: 64 k-rows x 128 B per 64-column box, MN-major; k16 step = +16 rows * 128 B;
      // SBO = 8 k-rows * 128 B, LBO = distance between the two 64-column boxes.
      const uint64_t db0 = make_desc(sb + kk * 2048, kBHalfBytes, 1024);
      const uint64_t db1 = make_desc(sb + kBHalfBytes + kk * 2048, kBHalfBytes, 1024);
      wgmma_m64n64k16<T>(acc[0], da, db0);
      wgmma_m64n64k16<T>(acc[1], da, db1);
    }
    wgmma_commit();
    wgmma_wait_all();
    mbar_arrive(ptx::smem_addr(&empty_bar[s]));
  }

  const int warp = t / 32, lane = t % 32;
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const int64_t row = m0 + cw * 64 + warp * 16 + lane / 4 + 8 * ((j / 2) % 2);
      const int64_t col = n0 + h * 64 + (j / 4) * 8 + 2 * (lane % 4) + (j % 2);
      if (row < M && col < N) c[row * N + col] = from_float<T>(acc[h][j]);
    }
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    PYIMGCLS_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess || p == nullptr)
      throw std::runtime_error("ladder gemm step 10: the driver does not provide cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// Row-major [rows, cols] 16-bit matrix, box of box_rows x box_cols (box_cols * 2 == 128 B), 128B swizzle.
CUtensorMap encode_2d(CUtensorMapDataType type, const void* ptr, int64_t rows, int64_t cols, uint32_t box_rows,
                      uint32_t box_cols) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols) * 2};
  const cuuint32_t box[2] = {box_cols, box_rows};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult r = tensor_map_encoder()(&map, type, 2, const_cast<void*>(ptr), dims, strides, box, elem_strides,
                                          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw std::invalid_argument("ladder gemm step 10: cuTensorMapEncodeTiled failed with CUresult " +
                                std::to_string(static_cast<int>(r)));
  return map;
}

template <typename T>
void launch_typed(CUtensorMapDataType type, const void* a, const void* b, void* c, int64_t M, int64_t N, int64_t K,
                  cudaStream_t stream) {
  const CUtensorMap map_a = encode_2d(type, a, M, K, kBM, kBK);
  const CUtensorMap map_b = encode_2d(type, b, K, N, kBK, 64);
  auto kernel = ladder_gemm_wgmma_tma_fwd_kernel<T>;
  PYIMGCLS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  const dim3 grid(grid_x(ceil_div(N, kBN), "gemm step 10"), grid_y(ceil_div(M, kBM), "gemm step 10"));
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(map_a, map_b, static_cast<T*>(c), static_cast<int>(M),
                                                 static_cast<int>(N), static_cast<int>(K));
  PYIMGCLS_CUDA_CHECK_LAUNCH();
}

}  // namespace

void launch_ladder_gemm_wgmma_tma_fwd(DType dt, const void* a, const void* b, void* c, int64_t M, int64_t N,
                                      int64_t K, cudaStream_t stream) {
  if (dt != DType::Float16 && dt != DType::BFloat16)
    throw std::invalid_argument(std::string("ladder gemm step 10 (wgmma_tma) takes float16 or bfloat16, got ") +
                                dtype_name(dt));
  if (K <= 0 || K % 8 != 0 || N % 8 != 0)
    throw std::invalid_argument("ladder gemm step 10 (wgmma_tma) needs K > 0, K % 8 == 0 and N % 8 == 0 (TMA rows "
                                "are 16-byte multiples), got M=" + std::to_string(M) + " N=" + std::to_string(N) +
                                " K=" + std::to_string(K));
  if (M >= (1LL << 31) || N >= (1LL << 31) || K >= (1LL << 31))
    throw std::invalid_argument("ladder gemm step 10 (wgmma_tma): M, N and K must be below 2^31");
  if (!aligned_to(a, 16) || !aligned_to(b, 16) || !aligned_to(c, 16))
    throw std::invalid_argument("ladder gemm step 10 (wgmma_tma) needs 16-byte aligned A, B and C");
  if (M == 0 || N == 0) return;
  if (dt == DType::Float16)
    launch_typed<__half>(CU_TENSOR_MAP_DATA_TYPE_FLOAT16, a, b, c, M, N, K, stream);
  else
    launch_typed<__nv_bfloat16>(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, a, b, c, M, N, K, stream);
}

}  // namespace pyimgcls::cuda::ladder::detail
#endif  // PYIMGCLS_SM90A
