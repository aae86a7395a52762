"""pyimgcls Triton kernels (installed as ``pyimgcls.triton_kernels``). One file per op family; each
holds its ``@triton.jit`` kernels and the host functions that launch them on torch tensors."""
