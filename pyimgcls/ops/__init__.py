"""pyimgcls.ops: functional ops with torch.nn.functional's argument names and defaults."""
from . import reference
from .gemm import linear, matmul

__all__ = ["matmul", "linear", "reference"]
