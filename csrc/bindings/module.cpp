// pyimgcls._C: the torch-free native module. Launchers take raw data pointers (Python ints from
// tensor.data_ptr()), sizes, strides in elements, a dtype code (csrc/common.h) and, for CUDA, the
// device index and stream handle as integers. Nothing here includes or links PyTorch.
// Each op family binds its launchers in csrc/bindings/<family>.cpp.
#include "bind.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyimgcls native kernels (torch-free)";
  pyimgcls::bind::bind_runtime(m);
  pyimgcls::bind::bind_gemm(m);
  pyimgcls::bind::bind_softmax_xent(m);
  pyimgcls::bind::bind_pool(m);
  pyimgcls::bind::bind_conv(m);
  pyimgcls::bind::bind_batchnorm(m);
  pyimgcls::bind::bind_ladder(m);
  pyimgcls::bind::bind_quant(m);
  pyimgcls::bind::bind_distill(m);
  pyimgcls::bind::bind_se(m);
  pyimgcls::bind::bind_sparse(m);
}
