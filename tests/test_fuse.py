"""pyimgcls.fuse_for_inference: Conv2d -> BatchNorm2d (-> ReLU / ReLU6) folding through torch.fx and
through the nn.Sequential fallback; eval outputs equal the unfused model's; the caller's model is
untouched; chains that must not fold are left alone."""
import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import nn


def _randomise_bn(model, seed=0):
    """Non-trivial running statistics and affine parameters, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None:
                C = m.num_features
                m.running_mean.copy_(torch.rand(C, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(C, generator=g) * 1.5 + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(C, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(C, generator=g) * 2 - 1)
    return model


def _count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


def _fused_convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


class ResidualBlock(torch.nn.Module):
    """ResNet basic block written with the fused-residual interface, plus a torch.nn tail."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c, activation="relu")
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c, activation="relu")
        self.conv3 = torch.nn.Conv2d(c, c, 1)
        self.bn3 = torch.nn.BatchNorm2d(c)
        self.relu = torch.nn.ReLU(inplace=True)
        self.conv4 = nn.Conv2d(c, c, 1)
        self.bn4 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out), residual=x)
        out = self.relu(self.bn3(self.conv3(out)))
        c = self.conv4(out)
        return F.relu6(self.bn4(c)) + c  # conv4's output has a second user: must not fold


class Untraceable(torch.nn.Module):
    """Data-dependent control flow defeats torch.fx: the nn.Sequential rule applies."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
            nn.Conv2d(6, 5, 3, stride=2, bias=False), nn.BatchNorm2d(5, activation="relu6"),
            nn.Conv2d(5, 4, 1), nn.BatchNorm2d(4), nn.ReLU6())

    def forward(self, x):
        y = self.features(x)
        if y.sum() > 0:
            return y
        return -y


def _check_same_eval(model, fused, x, atol=1e-5):
    with pyimgcls.use_backend("cpu"):
        ref = model(x)
        out = fused(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=atol)


def test_conv_bn_relu_sequential_traced():
    torch.manual_seed(0)
    model = _randomise_bn(torch.nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, groups=2, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
        nn.MaxPool2d(2)))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = pyimgcls.fuse_for_inference(model)
    assert _count(fused, torch.nn.BatchNorm2d) == 0
    assert sorted(c.activation for c in _fused_convs(fused)) == ["relu", "relu6"]
    assert not fused.training
    # the caller's model is untouched: still training, same modules and values
    assert model.training and _count(model, torch.nn.BatchNorm2d) == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    model.eval()
    x = torch.randn(2, 3, 9, 9)
    _check_same_eval(model, fused, x)
    _check_same_eval(model, fused, x.contiguous(memory_format=torch.channels_last))


def test_residual_block_folds_residual_into_conv_epilogue():
    torch.manual_seed(1)
    model = _randomise_bn(ResidualBlock(4), seed=1).eval()
    fused = pyimgcls.fuse_for_inference(model)
    assert isinstance(fused, torch.fx.GraphModule)
    # bn1, bn2 (with residual), bn3 + relu fold; bn4 stays because conv4 has two users
    assert _count(fused, torch.nn.BatchNorm2d) == 1
    code = fused.code
    assert "residual = x" in code and "bn4" in code and "bn1" not in code and "bn3" not in code
    convs = {name: m for name, m in fused.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert convs["conv1"].activation == "relu" and convs["conv2"].activation == "relu"
    assert isinstance(convs["conv3"], nn.Conv2d) and convs["conv3"].activation == "relu"
    assert convs["conv4"].activation is None
    _check_same_eval(model, fused, torch.randn(2, 4, 6, 7))


def test_untraceable_model_uses_sequential_fallback():
    torch.manual_seed(2)
    model = _randomise_bn(Untraceable(), seed=2).eval()
    fused = pyimgcls.fuse_for_inference(model)
    assert type(fused) is Untraceable  # not a GraphModule: tracing failed, the class is kept
    assert _count(fused, torch.nn.BatchNorm2d) == 0
    assert [c.activation for c in _fused_convs(fused)] == ["relu", "relu6", "relu6"]
    _check_same_eval(model, fused, torch.randn(2, 3, 8, 8))


def test_chains_that_must_not_fold_are_left_alone():
    model = torch.nn.Sequential(
        nn.Conv2d(3, 4, 3, activation="relu"), nn.BatchNorm2d(4),          # conv already has an activation
        nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))  # BN without running statistics
    model = _randomise_bn(model).eval()
    fused = pyimgcls.fuse_for_inference(model)
    assert _count(fused, torch.nn.BatchNorm2d) == 2
    _check_same_eval(model, fused, torch.randn(2, 3, 6, 6))


def test_fuse_rejects_non_module():
    with pytest.raises(TypeError, match="model"):
        pyimgcls.fuse_for_inference(lambda x: x)
