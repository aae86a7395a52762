"""pyimgcls.nn: torch.nn-compatible modules computed by pyimgcls kernels."""
from .activation import ReLU, ReLU6
from .linear import Linear

__all__ = ["Linear", "ReLU", "ReLU6"]
