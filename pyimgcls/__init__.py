"""pyimgcls: from-scratch CUDA / Triton / C++ kernels for image classification in PyTorch."""
from ._backend import available_backends, get_backend, set_backend, use_backend
from . import ops, nn  # noqa: E402
from .fuse import fuse_for_inference  # noqa: E402
from . import models  # noqa: E402
from .convert import convert  # noqa: E402
from . import ladder  # noqa: E402
from ._explain import Explanation, explain  # noqa: E402

__version__ = "0.1.0"

__all__ = ["ops", "nn", "set_backend", "get_backend", "use_backend", "available_backends", "__version__"]
__all__ += ["models", "convert"]
__all__ += ["ladder"]
__all__ += ["fuse_for_inference"]
__all__ += ["explain", "Explanation"]


def load_model(path):
    """The model (CPU, eval mode) from any of our checkpoints: a training run's checkpoint.pt / best.pt
    or a ``pyimgcls prune`` file (its layer widths come from the file) or a ``pyimgcls quantize`` file
    (a ``pyimgcls.quantization.QuantizedModel``); loaded as data only."""
    from .training.loop import load_model as _load
    return _load(path)


__all__ += ["load_model"]
