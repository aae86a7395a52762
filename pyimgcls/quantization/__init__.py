"""pyimgcls.quantization: int8 post-training static quantisation on pyimgcls's quantised kernels.

    qmodel = pyimgcls.quantization.quantize(model, calibration_batches, observer="minmax", per_channel=True)
    logits = qmodel(images)          # float in, float out; uint8 activations and int8 weights inside
"""
from ._ptq import QTensor, QuantizedModel, quantize
from .observers import OBSERVERS

__all__ = ["quantize", "QuantizedModel", "QTensor", "OBSERVERS"]
