// Quantised (int8) family launchers: weight packing, the integer GEMM with its requantisation
// epilogue, and the uint8 im2col (csrc/cpu/quant.cpp), and the CUDA ones (csrc/cuda/quant.cu).
#include "bind.h"
#include "../cpu/quant.h"
#include "../cuda/quant.h"  // CUDA-free: the tile constants, the packed-weight row length, the launch decision

namespace pyimgcls::bind {


// The requantisation epilogue of quant_gemm_cpu and quant_conv_gemm_cpu from their integer arguments.
static cpu::QuantEpilogue epilogue(uintptr_t bias, uintptr_t mult, uintptr_t res, int64_t ldr, int res_zero, float res_mult,
                                   int out_zero, int qmin, int qmax, bool float_out, int act) {
  cpu::QuantEpilogue ep;
  ep.bias = reinterpret_cast<const int32_t*>(bias);
  ep.mult = reinterpret_cast<const float*>(mult);
  ep.res = reinterpret_cast<const uint8_t*>(res);
  ep.ldr = ldr;
  ep.res_zero = res_zero;
  ep.res_mult = res_mult;
  ep.out_zero = out_zero;
  ep.qmin = qmin;
  ep.qmax = qmax;
  ep.float_out = float_out;
  ep.act = to_act(act);
  return ep;
}

// The argument checks of the GEMM / conv / NHWC-quantisation launchers (CPU, CUDA and QuantProgram).
static void check_gemm(int64_t K, int a_zero) {
  if (K <= 0) throw std::invalid_argument("quant_gemm: K must be positive");
  if (a_zero < 0 || a_zero > 255) throw std::invalid_argument("quant_gemm: a_zero must be in [0, 255]");
}
static void check_conv(int64_t C, int64_t KH, int64_t KW, int a_zero) {
  if (C <= 0 || KH <= 0 || KW <= 0) throw std::invalid_argument("quant_conv_gemm: C, KH and KW must be positive");
  if (a_zero < 0 || a_zero > 255) throw std::invalid_argument("quant_conv_gemm: a_zero must be in [0, 255]");
}
static void check_quantize_nhwc(int64_t C, int64_t Cout) {
  if (Cout < C) throw std::invalid_argument("quant_quantize_nhwc: Cout must be at least C");
}

#ifdef PYIMGCLS_WITH_CUDA
// The same epilogue as the CUDA launchers take it (quant_gemm_cuda, quant_conv_gemm_cuda): the CPU
// fields plus the column sums and the activations' zero point, which the CUDA kernels fold in there.
static cuda::QuantEpilogueArgs cuda_epilogue(uintptr_t colsum, int a_zero, uintptr_t bias, uintptr_t mult,
                                             uintptr_t res, int64_t ldr, int res_zero, float res_mult, int out_zero,
                                             int qmin, int qmax, bool float_out, int act) {
  const cpu::QuantEpilogue c = epilogue(bias, mult, res, ldr, res_zero, res_mult, out_zero, qmin, qmax, float_out, act);
  cuda::QuantEpilogueArgs ep;
  ep.colsum = reinterpret_cast<const int32_t*>(colsum);
  ep.bias = c.bias;
  ep.mult = c.mult;
  ep.res = c.res;
  ep.ldr = c.ldr;
  ep.a_zero = a_zero;
  ep.res_zero = c.res_zero;
  ep.res_mult = c.res_mult;
  ep.out_zero = c.out_zero;
  ep.qmin = c.qmin;
  ep.qmax = c.qmax;
  ep.float_out = c.float_out;
  ep.act = static_cast<int>(c.act);
  return ep;
}
#endif

// A quantised model's forward on the CPU as one native call (pyimgcls/quantization/_program.py builds
// it): the calls the layer-by-layer forward makes, with the same arguments, in order, between buffers
// the program's owner keeps. Why: at batch 1 the Python around each call (the interpreter step, the
// bound layer's layout key, the output allocation, ~30 arguments converted by pybind11) cost 4-6 us a
// layer, ~20 % of a ResNet-18 64x64 forward. A pointer argument of -1 is the run's input, -2 its output.
class QuantProgram {
 public:
  void add_quantize_nhwc(int64_t x, int64_t N, int64_t C, int64_t HW, int64_t sN, int64_t sC, float inv_scale,
                         int zero_point, int64_t out, int64_t Cout) {
    check_quantize_nhwc(C, Cout);
    steps_.push_back({Kind::Quantize, {x, N, C, HW, sN, sC, zero_point, out, Cout}, inv_scale});
  }
  void add_conv(int64_t x, int64_t N, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH, int64_t sW, int64_t C,
                int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t DH, int64_t DW,
                int64_t OH, int64_t OW, int a_zero, int64_t packed, int64_t colsum, int64_t tapsum, int64_t O,
                int64_t bias, int64_t mult, int64_t res, int64_t ldr, int res_zero, float res_mult, int out_zero,
                int qmin, int qmax, bool float_out, int act, int64_t out, int64_t ldo) {
    check_conv(C, KH, KW, a_zero);
    steps_.push_back({Kind::Conv,
                      {x, N, H, W, sN, sC, sH, sW, C, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, a_zero, packed, colsum,
                       tapsum, O, bias, mult, res, ldr, res_zero, out_zero, qmin, qmax, float_out, act, out, ldo},
                      res_mult});
  }
  void add_gemm(int64_t a, int64_t M, int64_t K, int64_t lda, int a_zero, int64_t packed, int64_t colsum, int64_t N,
                int64_t bias, int64_t mult, int64_t res, int64_t ldr, int res_zero, float res_mult, int out_zero,
                int qmin, int qmax, bool float_out, int act, int64_t out, int64_t ldo) {
    check_gemm(K, a_zero);
    steps_.push_back({Kind::Gemm,
                      {a, M, K, lda, a_zero, packed, colsum, N, bias, mult, res, ldr, res_zero, out_zero, qmin, qmax,
                       float_out, act, out, ldo},
                      res_mult});
  }
  void add_max_pool(int64_t x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH,
                    int64_t sW, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t DH,
                    int64_t DW, int64_t OH, int64_t OW, int64_t out) {
    steps_.push_back({Kind::MaxPool, {x, N, C, H, W, sN, sC, sH, sW, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, out}, 0});
  }
  void add_avg_pool(int64_t x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH,
                    int64_t sW, int64_t OH, int64_t OW, int in_zero, double ratio, int out_zero, int64_t out) {
    steps_.push_back({Kind::AvgPool, {x, N, C, H, W, sN, sC, sH, sW, OH, OW, in_zero, out_zero, out}, ratio});
  }
  size_t size() const { return steps_.size(); }

  void run(uintptr_t x, uintptr_t y) const {
    const auto ptr = [&](int64_t v) -> uintptr_t {
      return v == -1 ? x : (v == -2 ? y : static_cast<uintptr_t>(v));
    };
    const auto u8 = [&](int64_t v) { return reinterpret_cast<const uint8_t*>(ptr(v)); };
    const auto wu8 = [&](int64_t v) { return reinterpret_cast<uint8_t*>(ptr(v)); };
    for (const Step& s : steps_) {
      const int64_t* a = s.i.data();
      switch (s.kind) {
        case Kind::Quantize:
          cpu::quant_quantize_nhwc(reinterpret_cast<const float*>(ptr(a[0])), a[1], a[2], a[3], a[4], a[5],
                                   static_cast<float>(s.f), static_cast<int32_t>(a[6]), wu8(a[7]), a[8]);
          break;
        case Kind::Conv: {
          const cpu::QuantEpilogue ep = step_epilogue(a + 24, s.f, ptr);
          cpu::quant_conv_gemm(u8(a[0]), a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12],
                               a[13], a[14], a[15], a[16], a[17], a[18], static_cast<int32_t>(a[19]),
                               reinterpret_cast<const int8_t*>(ptr(a[20])), reinterpret_cast<const int32_t*>(ptr(a[21])),
                               reinterpret_cast<const int32_t*>(ptr(a[22])), a[23], ep, mptr(ptr(a[34])), a[35]);
          break;
        }
        case Kind::Gemm: {
          const cpu::QuantEpilogue ep = step_epilogue(a + 8, s.f, ptr);
          cpu::quant_gemm(u8(a[0]), a[1], a[2], a[3], static_cast<int32_t>(a[4]),
                          reinterpret_cast<const int8_t*>(ptr(a[5])), reinterpret_cast<const int32_t*>(ptr(a[6])), a[7],
                          ep, mptr(ptr(a[18])), a[19]);
          break;
        }
        case Kind::MaxPool:
          cpu::quant_max_pool2d(u8(a[0]), a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12],
                                a[13], a[14], a[15], a[16], a[17], a[18], wu8(a[19]));
          break;
        case Kind::AvgPool:
          cpu::quant_adaptive_avg_pool2d(u8(a[0]), a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10],
                                         static_cast<int32_t>(a[11]), s.f, static_cast<int32_t>(a[12]), wu8(a[13]));
          break;
      }
    }
  }

 private:
  // The epilogue of a conv / GEMM step from its 10 stored arguments (bias, mult, res, ldr, res_zero,
  // out_zero, qmin, qmax, float_out, act: the same order in both) and its residual multiplier.
  template <class Ptr>
  static cpu::QuantEpilogue step_epilogue(const int64_t* e, double res_mult, const Ptr& ptr) {
    return epilogue(ptr(e[0]), ptr(e[1]), ptr(e[2]), e[3], static_cast<int>(e[4]), static_cast<float>(res_mult),
                    static_cast<int>(e[5]), static_cast<int>(e[6]), static_cast<int>(e[7]), e[8] != 0,
                    static_cast<int>(e[9]));
  }

  enum class Kind { Quantize, Conv, Gemm, MaxPool, AvgPool };
  struct Step {
    Kind kind;
    std::vector<int64_t> i;   // the call's integer and pointer arguments, in its order
    double f;                 // its one floating-point argument (scale, residual multiplier or ratio)
  };
  std::vector<Step> steps_;
};

void bind_quant(py::module_& m) {
  py::class_<QuantProgram>(m, "QuantProgram", "a quantised model's CPU forward as one native call")
      .def(py::init<>())
      .def("add_quantize_nhwc", &QuantProgram::add_quantize_nhwc)
      .def("add_conv", &QuantProgram::add_conv)
      .def("add_gemm", &QuantProgram::add_gemm)
      .def("add_max_pool", &QuantProgram::add_max_pool)
      .def("add_avg_pool", &QuantProgram::add_avg_pool)
      .def("__len__", &QuantProgram::size)
      .def(
          "run",
          [](const QuantProgram& p, uintptr_t x, uintptr_t y) {
            py::gil_scoped_release nogil;
            p.run(x, y);
          },
          "run every step; x, y: the addresses standing for -1 and -2");
  m.def("quant_isa", &cpu::quant_isa, "path of the CPU integer GEMM here: vnni, avx2 or generic");
  m.def("quant_packed_bytes", &cpu::quant_packed_bytes, "bytes of the packed int8 weight of an [N, K] matrix");
  m.def(
      "quant_pack_weight_cpu",
      [](uintptr_t w, int64_t N, int64_t K, int64_t swn, int64_t swk, uintptr_t packed, uintptr_t colsum) {
        if (N <= 0 || K <= 0) throw std::invalid_argument("quant_pack_weight: N and K must be positive");
        py::gil_scoped_release nogil;
        cpu::quant_pack_weight(reinterpret_cast<const int8_t*>(w), N, K, swn, swk, reinterpret_cast<int8_t*>(packed),
                               reinterpret_cast<int32_t*>(colsum));
      },
      "pack an int8 [N, K] weight (strides swn, swk) into quant_packed_bytes(N, K) bytes + int32 column sums");
  m.def(
      "quant_gemm_cpu",
      [](uintptr_t a, int64_t M, int64_t K, int64_t lda, int a_zero, uintptr_t packed, uintptr_t colsum, int64_t N,
         uintptr_t bias, uintptr_t mult, uintptr_t res, int64_t ldr, int res_zero, float res_mult, int out_zero,
         int qmin, int qmax, bool float_out, int act, uintptr_t out, int64_t ldo) {
        check_gemm(K, a_zero);
        const cpu::QuantEpilogue ep =
            epilogue(bias, mult, res, ldr, res_zero, res_mult, out_zero, qmin, qmax, float_out, act);
        py::gil_scoped_release nogil;
        cpu::quant_gemm(reinterpret_cast<const uint8_t*>(a), M, K, lda, a_zero, reinterpret_cast<const int8_t*>(packed),
                        reinterpret_cast<const int32_t*>(colsum), N, ep, mptr(out), ldo);
      },
      "out = requantise(sum_k (A - a_zero) W + bias) on CPU (uint8 or float32 out)");
  m.def(
      "quant_conv_gemm_cpu",
      [](uintptr_t x, int64_t N, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH, int64_t sW, int64_t C,
         int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t DH, int64_t DW, int64_t OH,
         int64_t OW, int a_zero, uintptr_t packed, uintptr_t colsum, uintptr_t tapsum, int64_t O, uintptr_t bias,
         uintptr_t mult, uintptr_t res, int64_t ldr, int res_zero, float res_mult, int out_zero, int qmin, int qmax,
         bool float_out, int act, uintptr_t out, int64_t ldo) {
        check_conv(C, KH, KW, a_zero);
        const cpu::QuantEpilogue ep =
            epilogue(bias, mult, res, ldr, res_zero, res_mult, out_zero, qmin, qmax, float_out, act);
        py::gil_scoped_release nogil;
        cpu::quant_conv_gemm(reinterpret_cast<const uint8_t*>(x), N, H, W, sN, sC, sH, sW, C, KH, KW, SH, SW, PH, PW,
                             DH, DW, OH, OW, a_zero, reinterpret_cast<const int8_t*>(packed),
                             reinterpret_cast<const int32_t*>(colsum), reinterpret_cast<const int32_t*>(tapsum), O, ep,
                             mptr(out), ldo);
      },
      "groups=1 conv as im2col + quant_gemm without the column matrix (rows gathered per task); tapsum: 0 or "
      "quant_tap_sums_cpu's sums (C % 4 == 0), to skip the padding's taps");
  m.def(
      "quant_tap_sums_cpu",
      [](uintptr_t packed, int64_t O, int64_t KH, int64_t KW, int64_t C, uintptr_t out) {
        if (O <= 0 || KH <= 0 || KW <= 0 || C <= 0 || C % 4 != 0)
          throw std::invalid_argument("quant_tap_sums: O, KH, KW, C must be positive and C a multiple of 4");
        py::gil_scoped_release nogil;
        cpu::quant_tap_sums(reinterpret_cast<const int8_t*>(packed), O, KH, KW, C, reinterpret_cast<int32_t*>(out));
      },
      "int32 [KH * KW, O]: the packed [O, KH * KW * C] conv weight's sum over each tap's C channels");
  m.def(
      "quant_im2col_cpu",
      [](uintptr_t x, int64_t N, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH, int64_t sW, int64_t c0,
         int64_t CG, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t DH, int64_t DW,
         int64_t OH, int64_t OW, int pad, uintptr_t col) {
        py::gil_scoped_release nogil;
        cpu::quant_im2col(reinterpret_cast<const uint8_t*>(x), N, H, W, sN, sC, sH, sW, c0, CG, KH, KW, SH, SW, PH, PW,
                          DH, DW, OH, OW, static_cast<uint8_t>(pad), reinterpret_cast<uint8_t*>(col));
      },
      "uint8 im2col of one channel group, padding with the zero point");
  m.def(
      "quant_quantize_cpu",
      [](uintptr_t x, int64_t n, float inv_scale, int zero_point, uintptr_t out) {
        py::gil_scoped_release nogil;
        cpu::quant_quantize(reinterpret_cast<const float*>(x), n, inv_scale, zero_point,
                            reinterpret_cast<uint8_t*>(out));
      },
      "uint8 q = clamp(rne(x * inv_scale) + zero_point, 0, 255) of n float32 values (NaN -> zero_point)");
  m.def(
      "quant_quantize_nhwc_cpu",
      [](uintptr_t x, int64_t N, int64_t C, int64_t HW, int64_t sN, int64_t sC, float inv_scale, int zero_point,
         uintptr_t out, int64_t Cout) {
        check_quantize_nhwc(C, Cout);
        py::gil_scoped_release nogil;
        cpu::quant_quantize_nhwc(reinterpret_cast<const float*>(x), N, C, HW, sN, sC, inv_scale, zero_point,
                                 reinterpret_cast<uint8_t*>(out), Cout);
      },
      "quant_quantize_cpu of a float32 [N, C, H, W] image (H, W dense) into a dense NHWC uint8 output of "
      "Cout >= C channels (those from C on: zero_point)");
  m.def(
      "quant_max_pool2d_cpu",
      [](uintptr_t x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH, int64_t sW,
         int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t DH, int64_t DW, int64_t OH,
         int64_t OW, uintptr_t out) {
        py::gil_scoped_release nogil;
        cpu::quant_max_pool2d(reinterpret_cast<const uint8_t*>(x), N, C, H, W, sN, sC, sH, sW, KH, KW, SH, SW, PH, PW,
                              DH, DW, OH, OW, reinterpret_cast<uint8_t*>(out));
      },
      "uint8 max pooling into an NHWC output");
  m.def(
      "quant_adaptive_avg_pool2d_cpu",
      [](uintptr_t x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH, int64_t sW,
         int64_t OH, int64_t OW, int in_zero, double ratio, int out_zero, uintptr_t out) {
        py::gil_scoped_release nogil;
        cpu::quant_adaptive_avg_pool2d(reinterpret_cast<const uint8_t*>(x), N, C, H, W, sN, sC, sH, sW, OH, OW, in_zero,
                                       ratio, out_zero, reinterpret_cast<uint8_t*>(out));
      },
      "uint8 adaptive average pooling (requantised) into an NHWC output");
  m.def("quant_packed_k_cuda", &cuda::q8::packed_k,
        "row length (bytes) of the CUDA packed int8 weight: K rounded up to the GEMM's K tile (CPU-only builds too)");
  m.def(
      "quant_gemm_plan_cuda",
      [](int64_t M, int64_t N, int64_t K, int a_mode) { return plan_dict(cuda::quant_gemm_plan(M, N, K, a_mode)); },
      "launch decision of quant_gemm_cuda / quant_conv_gemm_cuda (a_mode 0 gather, 1 cp.async, 2 implicit conv)");
  m.def("quant_conv_gemm_ok_cuda", &cuda::quant_conv_gemm_ok,
        "whether quant_conv_gemm_cuda takes an input (x address, C, sC, sN, sH, sW): NHWC-dense, C % 16 == 0, 16-byte "
        "aligned pixels");
#ifdef PYIMGCLS_WITH_CUDA
  m.def(
      "quant_gemm_cuda",
      [](uintptr_t a, int64_t M, int64_t K, int64_t lda, int a_zero, uintptr_t w, uintptr_t colsum, int64_t N,
         uintptr_t bias, uintptr_t mult, uintptr_t res, int64_t ldr, int res_zero, float res_mult, int out_zero,
         int qmin, int qmax, bool float_out, int act, uintptr_t out, int64_t ldo, int device, uintptr_t stream) {
        check_gemm(K, a_zero);
        const cuda::QuantEpilogueArgs ep = cuda_epilogue(colsum, a_zero, bias, mult, res, ldr, res_zero, res_mult,
                                                         out_zero, qmin, qmax, float_out, act);
        py::gil_scoped_release nogil;
        cuda::quant_gemm(reinterpret_cast<const uint8_t*>(a), M, K, lda, reinterpret_cast<const int8_t*>(w), N, ep,
                         mptr(out), ldo, device, stream);
      },
      "out = requantise(sum_k (A - a_zero) W + bias) on the IMMA tensor cores (sm_80+; W packed [N, packed_k(K)])");
  m.def(
      "quant_conv_gemm_cuda",
      [](uintptr_t x, int64_t N, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH, int64_t sW, int64_t C,
         int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t DH, int64_t DW, int64_t OH,
         int64_t OW, int a_zero, uintptr_t w, uintptr_t colsum, int64_t O, uintptr_t bias, uintptr_t mult,
         uintptr_t res, int64_t ldr, int res_zero, float res_mult, int out_zero, int qmin, int qmax, bool float_out,
         int act, uintptr_t out, int64_t ldo, int device, uintptr_t stream) {
        if (sC != 1) throw std::invalid_argument("quant_conv_gemm: x must be NHWC-dense (channel stride 1)");
        const auto i32 = [](int64_t v, const char* what) {
          if (v < INT32_MIN / 2 || v > INT32_MAX / 2)
            throw std::invalid_argument(std::string("quant_conv_gemm: ") + what + " out of range");
          return static_cast<int>(v);
        };
        cuda::QuantConvGeom g;
        g.sN = sN;
        g.sH = sH;
        g.sW = sW;
        g.H = i32(H, "H");
        g.W = i32(W, "W");
        g.C = i32(C, "C");
        g.KW = i32(KW, "KW");
        g.SH = i32(SH, "stride");
        g.SW = i32(SW, "stride");
        g.PH = i32(PH, "padding");
        g.PW = i32(PW, "padding");
        g.DH = i32(DH, "dilation");
        g.DW = i32(DW, "dilation");
        g.OH = i32(OH, "OH");
        g.OW = i32(OW, "OW");
        const cuda::QuantEpilogueArgs ep = cuda_epilogue(colsum, a_zero, bias, mult, res, ldr, res_zero, res_mult,
                                                         out_zero, qmin, qmax, float_out, act);
        py::gil_scoped_release nogil;
        cuda::quant_conv_gemm(reinterpret_cast<const uint8_t*>(x), N, g, KH, reinterpret_cast<const int8_t*>(w), O, ep,
                              mptr(out), ldo, device, stream);
      },
      "groups=1 conv as one implicit GEMM on the IMMA tensor cores (NHWC-dense x, C % 16 == 0), no column matrix");
  m.def(
      "quant_im2col_cuda",
      [](uintptr_t x, int64_t N, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH, int64_t sW, int64_t c0,
         int64_t CG, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t DH, int64_t DW,
         int64_t OH, int64_t OW, int pad, uintptr_t col, int device, uintptr_t stream) {
        py::gil_scoped_release nogil;
        cuda::quant_im2col(reinterpret_cast<const uint8_t*>(x), N, H, W, sN, sC, sH, sW, c0, CG, KH, KW, SH, SW, PH,
                           PW, DH, DW, OH, OW, static_cast<uint8_t>(pad), reinterpret_cast<uint8_t*>(col), device,
                           stream);
      },
      "uint8 im2col of one channel group on CUDA, padding with the zero point");
  m.def(
      "quant_quantize_cuda",
      [](uintptr_t x, int64_t n, float inv_scale, int zero_point, uintptr_t out, int device, uintptr_t stream) {
        py::gil_scoped_release nogil;
        cuda::quant_quantize(reinterpret_cast<const float*>(x), n, inv_scale, zero_point,
                             reinterpret_cast<uint8_t*>(out), device, stream);
      },
      "uint8 q = clamp(rne(x * inv_scale) + zero_point, 0, 255) of n float32 values on CUDA (NaN -> zero_point)");
  m.def(
      "quant_max_pool2d_cuda",
      [](uintptr_t x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH, int64_t sW,
         int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t DH, int64_t DW, int64_t OH,
         int64_t OW, uintptr_t out, int device, uintptr_t stream) {
        py::gil_scoped_release nogil;
        cuda::quant_max_pool2d(reinterpret_cast<const uint8_t*>(x), N, C, H, W, sN, sC, sH, sW, KH, KW, SH, SW, PH,
                               PW, DH, DW, OH, OW, reinterpret_cast<uint8_t*>(out), device, stream);
      },
      "uint8 max pooling into an NHWC output on CUDA");
  m.def(
      "quant_adaptive_avg_pool2d_cuda",
      [](uintptr_t x, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sN, int64_t sC, int64_t sH, int64_t sW,
         int64_t OH, int64_t OW, int in_zero, double ratio, int out_zero, uintptr_t out, int device,
         uintptr_t stream) {
        py::gil_scoped_release nogil;
        cuda::quant_adaptive_avg_pool2d(reinterpret_cast<const uint8_t*>(x), N, C, H, W, sN, sC, sH, sW, OH, OW,
                                        in_zero, ratio, out_zero, reinterpret_cast<uint8_t*>(out), device, stream);
      },
      "uint8 adaptive average pooling (requantised) into an NHWC output on CUDA");
#endif
}

}  // namespace pyimgcls::bind
