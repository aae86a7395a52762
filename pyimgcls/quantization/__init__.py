"""pyimgcls.quantization: int8 post-training static quantisation on pyimgcls's quantised kernels.

    qmodel = pyimgcls.quantization.quantize(model, calibration_batches, observer="minmax", per_channel=True)
    logits = qmodel(images)          # float in, float out; uint8 activations and int8 weights inside

    qat = pyimgcls.quantization.prepare_qat(model)      # fake-quantised, trainable (quantisation-aware)
    ...fine-tune qat...
    qmodel = pyimgcls.quantization.convert(qat)
"""
from ._ptq import QTensor, QuantizedModel, quantize
from ._qat import QATModel, convert, fake_quantize_per_tensor, fake_quantize_weight, prepare_qat
from .observers import OBSERVERS

__all__ = ["quantize", "QuantizedModel", "QTensor", "OBSERVERS"]
__all__ += ["prepare_qat", "convert", "QATModel", "fake_quantize_per_tensor", "fake_quantize_weight"]
