"""Standalone activations. Where a ReLU follows a conv/linear/batch-norm, prefer the layer's fused
``activation=`` (one pass over memory instead of two); these exist for parity with torch.nn."""
import torch


class ReLU(torch.nn.ReLU):
    """torch.nn.ReLU (same arguments); pyimgcls.convert and fuse_for_inference fold it into the
    preceding layer's epilogue."""


class ReLU6(torch.nn.ReLU6):
    """torch.nn.ReLU6 (same arguments); foldable like ReLU."""


class _OnOurKernels:
    """forward through pyimgcls.ops.activation (our elementwise kernels on the resolved backend). The
    ``inplace`` argument of the torch.nn originals is accepted and kept, but the result is a new tensor:
    the op's backward reads its saved input (silu / hardswish / hardsigmoid), which an in-place write
    would destroy."""
    _pyimgcls_activation: str

    def forward(self, input):
        from ..ops.activation import activation
        return activation(input, self._pyimgcls_activation)


class SiLU(_OnOurKernels, torch.nn.SiLU):
    """torch.nn.SiLU on our kernels; convert / fuse_for_inference fold it into the preceding layer's
    epilogue."""
    _pyimgcls_activation = "silu"


class Hardswish(_OnOurKernels, torch.nn.Hardswish):
    """torch.nn.Hardswish on our kernels; foldable like SiLU."""
    _pyimgcls_activation = "hardswish"


class Sigmoid(_OnOurKernels, torch.nn.Sigmoid):
    """torch.nn.Sigmoid on our kernels; foldable like SiLU."""
    _pyimgcls_activation = "sigmoid"


class Hardsigmoid(_OnOurKernels, torch.nn.Hardsigmoid):
    """torch.nn.Hardsigmoid on our kernels; foldable like SiLU."""
    _pyimgcls_activation = "hardsigmoid"
