"""pyimgcls.ops: functional ops with torch.nn.functional's argument names and defaults."""
from . import reference
from .activation import activation
from .batchnorm import batch_norm
from .conv import conv2d, conv2d_bias_relu
from .gemm import linear, matmul
from .pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from .softmax_xent import cross_entropy, softmax_cross_entropy

__all__ = ["matmul", "linear", "conv2d", "conv2d_bias_relu", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "reference"]
__all__ += ["softmax_cross_entropy", "cross_entropy"]
__all__ += ["batch_norm"]
__all__ += ["activation"]
