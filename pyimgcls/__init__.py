"""pyimgcls: from-scratch CUDA / Triton / C++ kernels for image classification in PyTorch."""
from ._backend import available_backends, get_backend, set_backend, use_backend
from . import ops, nn  # noqa: E402

__version__ = "0.1.0"

__all__ = ["ops", "nn", "set_backend", "get_backend", "use_backend", "available_backends", "__version__"]
