"""pyimgcls.ops: functional ops with torch.nn.functional's argument names and defaults."""
from . import reference
from .activation import activation
from .batchnorm import batch_norm
from .conv import conv2d, conv2d_bias_relu
from .distill import distillation_loss
from .gemm import linear, matmul
from .pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from .quant import QuantizedWeight, dequantize, quantize_per_tensor, quantize_weight, quantized_conv2d, quantized_linear
from .quant import quantized_adaptive_avg_pool2d, quantized_max_pool2d
from .se import drop_path_add, squeeze_excitation, stochastic_depth
from .softmax_xent import cross_entropy, softmax_cross_entropy
from .sparse import compress_2_4, decompress_2_4, sparse_linear

__all__ = ["matmul", "linear", "conv2d", "conv2d_bias_relu", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "reference"]
__all__ += ["softmax_cross_entropy", "cross_entropy"]
__all__ += ["batch_norm"]
__all__ += ["distillation_loss"]
__all__ += ["quantized_linear", "quantized_conv2d", "QuantizedWeight", "quantize_weight", "quantize_per_tensor",
            "dequantize", "quantized_max_pool2d", "quantized_adaptive_avg_pool2d"]
__all__ += ["squeeze_excitation", "stochastic_depth", "drop_path_add"]
__all__ += ["activation"]
__all__ += ["sparse_linear", "compress_2_4", "decompress_2_4"]
