"""pyimgcls.nn: torch.nn-compatible modules computed by pyimgcls kernels."""
from .activation import Hardsigmoid, Hardswish, ReLU, ReLU6, Sigmoid, SiLU
from .batchnorm import BatchNorm2d
from .conv import Conv2d
from .linear import Linear
from .pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .se import SqueezeExcitation, StochasticDepth
from .softmax_xent import CrossEntropyLoss
from .distill import DistillationLoss

__all__ = ["Linear", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "ReLU", "ReLU6"]
__all__ += ["CrossEntropyLoss"]
__all__ += ["Conv2d"]
__all__ += ["BatchNorm2d"]
__all__ += ["DistillationLoss"]
__all__ += ["SqueezeExcitation", "StochasticDepth"]
__all__ += ["SiLU", "Hardswish", "Sigmoid", "Hardsigmoid"]
