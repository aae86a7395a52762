"""pyimgcls.models: classic image-classification networks built from pyimgcls.nn layers.

Module, parameter and buffer names match torchvision's, so a torchvision state_dict loads with
``strict=True`` (LeNet-5 has no torchvision counterpart; its names are documented in lenet.py).
Pretrained-weight downloading is not provided: load a torchvision state_dict instead."""
from __future__ import annotations

from typing import Callable

import torch

from .alexnet import AlexNet, alexnet
from .efficientnet import (EfficientNet, efficientnet_b0, efficientnet_b1, efficientnet_b2, efficientnet_b3,
                           efficientnet_b4, efficientnet_b5, efficientnet_b6, efficientnet_b7, efficientnet_v2_s,
                           efficientnet_v2_m, efficientnet_v2_l)
from .densenet import DenseNet, densenet121, densenet161, densenet169, densenet201
from .googlenet import GoogLeNet, GoogLeNetOutputs, googlenet
from .inception import Inception3, InceptionOutputs, inception_v3
from .lenet import LeNet5, lenet5
from .mobilenet import MobileNetV2, mobilenet_v2
from .mobilenetv3 import MobileNetV3, mobilenet_v3_large, mobilenet_v3_small
from .resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from .resnet import resnext50_32x4d, resnext101_32x8d, resnext101_64x4d, wide_resnet50_2, wide_resnet101_2
from .shufflenetv2 import (ShuffleNetV2, shufflenet_v2_x0_5, shufflenet_v2_x1_0, shufflenet_v2_x1_5,
                           shufflenet_v2_x2_0)
from .squeezenet import SqueezeNet, squeezenet1_0, squeezenet1_1
from .vgg import VGG, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn

_MODELS: dict[str, Callable[..., torch.nn.Module]] = {
    "lenet5": lenet5,
    "alexnet": alexnet,
    "vgg11": vgg11, "vgg11_bn": vgg11_bn, "vgg13": vgg13, "vgg13_bn": vgg13_bn,
    "vgg16": vgg16, "vgg16_bn": vgg16_bn, "vgg19": vgg19, "vgg19_bn": vgg19_bn,
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101,
    "resnet152": resnet152,
    "densenet121": densenet121, "densenet161": densenet161, "densenet169": densenet169,
    "densenet201": densenet201,
    "mobilenet_v2": mobilenet_v2,
    "googlenet": googlenet,
    "inception_v3": inception_v3,
    "squeezenet1_0": squeezenet1_0, "squeezenet1_1": squeezenet1_1,
    "shufflenet_v2_x0_5": shufflenet_v2_x0_5, "shufflenet_v2_x1_0": shufflenet_v2_x1_0,
    "shufflenet_v2_x1_5": shufflenet_v2_x1_5, "shufflenet_v2_x2_0": shufflenet_v2_x2_0,
    "resnext50_32x4d": resnext50_32x4d, "resnext101_32x8d": resnext101_32x8d, "resnext101_64x4d": resnext101_64x4d,
    "wide_resnet50_2": wide_resnet50_2, "wide_resnet101_2": wide_resnet101_2,
    "efficientnet_b0": efficientnet_b0, "efficientnet_b1": efficientnet_b1, "efficientnet_b2": efficientnet_b2,
    "efficientnet_b3": efficientnet_b3, "efficientnet_b4": efficientnet_b4, "efficientnet_b5": efficientnet_b5,
    "efficientnet_b6": efficientnet_b6, "efficientnet_b7": efficientnet_b7,
    "efficientnet_v2_s": efficientnet_v2_s, "efficientnet_v2_m": efficientnet_v2_m,
    "efficientnet_v2_l": efficientnet_v2_l,
    "mobilenet_v3_small": mobilenet_v3_small, "mobilenet_v3_large": mobilenet_v3_large,
}


# Smallest square input each model accepts (torchvision's ``min_size``; LeNet-5 takes exactly 32x32),
# and whether it takes an ``in_channels`` argument (the others are 3-channel, as torchvision's).
_MIN_SIZE = {"alexnet": 63, "lenet5": 32, "densenet": 29, "vgg": 32, "resnet": 1, "mobilenet_v2": 1}
# GoogLeNet 15, Inception-v3 75 (with aux_logits, training needs 299: see inception.py), SqueezeNet
# 21 / 17, ShuffleNetV2 / ResNeXt / Wide ResNet 1: torchvision's min_size for each.
_MIN_SIZE.update({"googlenet": 15, "inception_v3": 75, "squeezenet1_0": 21, "squeezenet1_1": 17,
                  "shufflenet_v2": 1, "resnext": 1, "wide_resnet": 1})
# EfficientNet B0-B7 / V2 and MobileNetV3: every convolution is padded, so 1x1 runs (torchvision's min_size
# is 1 for B0-B7 and MobileNetV3, 33 for V2: the size its weights were trained at, not a graph limit).
_MIN_SIZE.update({"efficientnet": 1, "mobilenet_v3": 1})
_FIXED_SIZE = {"lenet5": 32}
_TAKES_IN_CHANNELS = ("lenet5",)


def input_spec(name: str) -> dict:
    """What ``name`` accepts as input: ``min_size`` (smallest side), ``fixed_size`` (the only side it
    takes, or None) and ``in_channels`` (None when the constructor takes ``in_channels``, else 3)."""
    key = name.lower()
    if key not in _MODELS:
        get_model(name)   # raises the unknown-name error
    family = next(f for f in _MIN_SIZE if key.startswith(f))
    return {"min_size": _MIN_SIZE[family], "fixed_size": _FIXED_SIZE.get(family),
            "in_channels": None if key in _TAKES_IN_CHANNELS else 3}


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`, sorted."""
    return sorted(_MODELS)


def get_model(name: str, num_classes: int = 1000, **kwargs) -> torch.nn.Module:
    """Build the model called ``name`` (see :func:`list_models`; case-insensitive) with
    ``num_classes`` outputs; further keyword arguments go to the model's constructor, as in
    ``torchvision.models.get_model`` (e.g. ``dropout``, ``zero_init_residual``, ``width_mult``)."""
    if not isinstance(name, str):
        raise TypeError(f"get_model: argument 'name' must be a str, got {type(name).__name__}")
    key = name.lower()
    if key not in _MODELS:
        raise ValueError(f"get_model: unknown model name {name!r}; available models: {', '.join(list_models())}")
    return _MODELS[key](num_classes=num_classes, **kwargs)


__all__ = ["get_model", "list_models", "input_spec",
           "LeNet5", "AlexNet", "VGG", "ResNet", "DenseNet", "MobileNetV2",
           "GoogLeNet", "GoogLeNetOutputs", "Inception3", "InceptionOutputs", "SqueezeNet",
           "ShuffleNetV2", "EfficientNet", "MobileNetV3"] + list_models()
