"""pyimgcls.quantization.quantize: post-training static int8 quantisation of whole models."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

from pyimgcls import models
from pyimgcls import nn as pnn
from pyimgcls.errors import ArgumentTypeError, ArgumentValueError
from pyimgcls.quantization import QuantizedModel, quantize


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _bn_stats(model, seed):
    g = _gen(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
    return model.eval()


def _rel_err(y, ref):
    return float((y - ref).norm() / ref.norm())


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_lenet5_ptq_tracks_float(observer):
    torch.manual_seed(0)
    model = models.lenet5().eval()
    before = copy.deepcopy(model.state_dict())
    g = _gen(1)
    calib = [torch.randn(16, 1, 32, 32, generator=g) for _ in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")         # every LeNet-5 layer has a quantised kernel
        qm = quantize(model, calib, observer=observer)
    assert isinstance(qm, QuantizedModel) and qm.float_layers == []
    assert len(qm.weights) == 5
    x = torch.randn(5, 1, 32, 32, generator=g)
    with torch.no_grad():
        y, ref = qm(x), model(x)
    assert y.dtype == torch.float32 and y.shape == (5, 10)
    assert _rel_err(y, ref) < 0.05
    # the model is left unchanged
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_resnet18_ptq_with_input_target_pairs():
    model = _bn_stats(models.resnet18(num_classes=7), seed=2)
    g = _gen(3)
    # 24x24: layer3 and layer4 run at 2x2 and 1x1, the smallest images that keep every stride non-trivial
    calib = [(torch.randn(4, 3, 24, 24, generator=g), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qm = quantize(model, calib, per_channel=True)
    # 20 convolutions (BN folded, residual adds and relus fused) + fc
    assert len(qm.weights) == 21
    x = torch.randn(2, 3, 24, 24, generator=g)
    with torch.no_grad():
        ref = model(x)
        y = qm(x)
    assert _rel_err(y, ref) < 0.1


def test_per_tensor_weights():
    model = models.lenet5().eval()
    g = _gen(4)
    qt = quantize(model, [torch.randn(8, 1, 32, 32, generator=g)], per_channel=False)
    assert all(w.scale.unique().numel() == 1 for w in qt.weights.values())
    x = torch.randn(3, 1, 32, 32, generator=g)
    with torch.no_grad():
        assert _rel_err(qt(x), model(x)) < 0.1


class _WithSilu(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = pnn.Conv2d(1, 4, 3, activation="relu")
        self.act = torch.nn.SiLU()
        self.fc = torch.nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.act(self.conv(x)), 1))


def test_unsupported_layers_stay_float_with_a_warning():
    model = _WithSilu().eval()
    g = _gen(5)
    calib = [torch.randn(8, 1, 8, 8, generator=g) for _ in range(4)]
    with pytest.warns(UserWarning, match=r"kept in float.*act \(SiLU\)"):
        qm = quantize(model, calib)
    assert qm.float_layers == ["act (SiLU)"]
    x = torch.randn(3, 1, 8, 8, generator=g)
    with torch.no_grad():
        assert _rel_err(qm(x), model(x)) < 0.1


def test_constant_calibration_data_gives_finite_outputs():
    model = models.lenet5().eval()
    qm = quantize(model, [torch.zeros(2, 1, 32, 32)])     # zero range everywhere: fallback scale 1
    with torch.no_grad():
        y = qm(torch.zeros(2, 1, 32, 32))
        y2 = qm(torch.randn(2, 1, 32, 32))
    assert torch.isfinite(y).all() and torch.isfinite(y2).all()
    with torch.no_grad():
        assert (y - model(torch.zeros(2, 1, 32, 32))).abs().max() < 0.05


def test_bad_inputs():
    model = models.lenet5().eval()
    with pytest.raises(ArgumentValueError, match="no batches"):
        quantize(model, [])
    with pytest.raises(ArgumentTypeError, match="model"):
        quantize("lenet", [torch.zeros(1, 1, 32, 32)])
    with pytest.raises(ArgumentValueError, match="observer"):
        quantize(model, [torch.zeros(1, 1, 32, 32)], observer="kl")
    with pytest.raises(ArgumentTypeError, match="calibration_batches"):
        quantize(model, torch.zeros(1, 1, 32, 32))
    with pytest.raises(ArgumentValueError, match="calibration batch 0"):
        quantize(model, [torch.zeros(1, 32, 32)])
    with pytest.raises(ValueError, match="NaN"):
        quantize(model, [torch.full((1, 1, 32, 32), float("nan"))])
