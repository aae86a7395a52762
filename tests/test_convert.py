"""pyimgcls.convert: torch.nn-built networks (a small ResNet-like and a VGG-like net) have their
compute layers swapped for pyimgcls's, sharing the very Parameter and buffer objects; outputs and
gradients are unchanged; the input model is untouched unless inplace=True; unsupported layers stay
PyTorch's with a warning; fuse_for_inference on top gives the same eval outputs."""
import warnings

import pytest
import torch

import pyimgcls
from pyimgcls import nn

tnn = torch.nn
CONVERTIBLE = (tnn.Conv2d, tnn.Linear, tnn.MaxPool2d, tnn.AvgPool2d, tnn.AdaptiveAvgPool2d, tnn.BatchNorm2d,
               tnn.ReLU, tnn.ReLU6)
OURS = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6)


class TorchBasicBlock(tnn.Module):
    """torchvision's BasicBlock, written with torch.nn layers."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(cout)
        self.relu = tnn.ReLU(inplace=True)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TorchResNetLike(tnn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(8)
        self.relu = tnn.ReLU(inplace=True)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        self.layer1 = tnn.Sequential(TorchBasicBlock(8, 8, 1), TorchBasicBlock(8, 16, 2))
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(16, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def torch_vgg_like(num_classes=5):
    return tnn.Sequential(
        tnn.Conv2d(3, 8, 3, padding=1), tnn.ReLU(inplace=True), tnn.MaxPool2d(2),
        tnn.Conv2d(8, 16, 3, padding=1), tnn.BatchNorm2d(16), tnn.ReLU6(), tnn.AvgPool2d(2),
        tnn.Conv2d(16, 16, 3, padding=1, groups=4), tnn.ReLU(),
        tnn.AdaptiveAvgPool2d((2, 2)), tnn.Flatten(),
        tnn.Linear(64, 32), tnn.ReLU(inplace=True), tnn.Dropout(0.5), tnn.Linear(32, num_classes))


def _prepare(model):
    torch.manual_seed(0)
    model = model.double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) - 0.5)
    return model


def _x(batch=2, size=16):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def _tensor_ids(model):
    return ({n: id(p) for n, p in model.named_parameters()}, {n: id(b) for n, b in model.named_buffers()})


def _kinds(model):
    return [type(m) for m in model.modules()]


@pytest.fixture(params=["resnet_like", "vgg_like"])
def torch_model(request):
    return _prepare(TorchResNetLike() if request.param == "resnet_like" else torch_vgg_like())


def test_convert_replaces_layers_and_shares_tensors(torch_model):
    before_kinds = _kinds(torch_model)
    ids = _tensor_ids(torch_model)
    keys = list(torch_model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing unsupported in these models
        ours = pyimgcls.convert(torch_model)
    assert ours is not torch_model
    left = [f"{n}: {type(m).__name__}" for n, m in ours.named_modules()
            if isinstance(m, CONVERTIBLE) and not isinstance(m, OURS)]
    assert not left
    assert sum(isinstance(m, OURS) for m in ours.modules()) == sum(isinstance(m, CONVERTIBLE)
                                                                   for m in torch_model.modules())
    # The very same Parameter and buffer objects, under the same names.
    assert _tensor_ids(ours) == ids
    assert list(ours.state_dict()) == keys
    # inplace=False left the original alone.
    assert _kinds(torch_model) == before_kinds
    assert not any(isinstance(m, OURS) for m in torch_model.modules())


def test_convert_eval_outputs_and_training_gradients_unchanged(torch_model):
    x = _x()
    torch_model.eval()
    with torch.no_grad():
        ref = torch_model(x)
    ours = pyimgcls.convert(torch_model)
    with torch.no_grad():
        got = ours(x)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)

    # Training mode: same batch-statistics outputs, same gradients into the shared parameters, and the
    # shared running statistics updated identically.
    torch_model.train(), ours.train()
    stats = {n: b.clone() for n, b in torch_model.named_buffers()}
    torch.manual_seed(5)
    ref = torch_model(x)
    ref_grads = torch.autograd.grad(ref.square().sum(), list(torch_model.parameters()))
    ref_stats = {n: b.clone() for n, b in torch_model.named_buffers()}
    with torch.no_grad():
        for n, b in torch_model.named_buffers():
            b.copy_(stats[n])
    torch.manual_seed(5)
    got = ours(x)
    grads = torch.autograd.grad(got.square().sum(), list(ours.parameters()))
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)
    for n, b in ours.named_buffers():
        torch.testing.assert_close(b, ref_stats[n], rtol=1e-12, atol=1e-12)


def test_convert_inplace_and_idempotent():
    model = _prepare(TorchResNetLike())
    ids = _tensor_ids(model)
    out = pyimgcls.convert(model, inplace=True)
    assert out is model
    assert isinstance(model.conv1, nn.Conv2d) and isinstance(model.layer1[1].downsample[1], nn.BatchNorm2d)
    assert _tensor_ids(model) == ids
    # Nothing left to convert: the same object comes back, unchanged.
    assert pyimgcls.convert(model) is model
    # Already-pyimgcls models pass through untouched.
    lenet = pyimgcls.models.lenet5()
    assert pyimgcls.convert(lenet) is lenet


def test_convert_copies_configuration():
    conv = tnn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, bias=False)
    bn = tnn.BatchNorm2d(6, eps=1e-3, momentum=None, affine=False)
    mp = tnn.MaxPool2d(3, 2, 1, ceil_mode=True)
    seq = tnn.Sequential(conv, bn, mp).eval()
    ours = pyimgcls.convert(seq)
    c, b, p = ours
    assert (c.stride, c.padding, c.dilation, c.groups, c.bias, c.activation) == ((2, 1), (1, 2), (1, 2), 2, None, None)
    assert (b.eps, b.momentum, b.affine, b.weight, b.activation) == (1e-3, None, False, None, None)
    assert (p.kernel_size, p.stride, p.padding, p.ceil_mode) == (3, 2, 1, True)
    assert not b.training
    x = torch.randn(2, 4, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), seq(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", [
    lambda: tnn.Conv2d(3, 4, 3, padding="same", dilation=2),
    lambda: tnn.MaxPool2d(3, 2, 1, return_indices=True),
    lambda: tnn.AdaptiveAvgPool2d((None, 3)),
    lambda: tnn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
    lambda: tnn.BatchNorm2d(3, track_running_stats=False),
    lambda: tnn.ReLU6(inplace=False),
], ids=["conv-same", "maxpool-indices", "adaptive-none", "avgpool-ceil", "bn-no-stats", "relu6"])
def test_convert_layer_configurations(layer):
    """Single layers in configurations PyTorch accepts convert and compute the same (train and eval)."""
    ref = layer().double()
    ours = pyimgcls.convert(ref)
    assert isinstance(ours, OURS) and type(ref) in CONVERTIBLE
    x = _x(size=9)
    for training in (True, False):
        ref.train(training), ours.train(training)
        got, want = ours(x), ref(x)
        if isinstance(want, tuple):
            assert torch.equal(got[1], want[1])
            got, want = got[0], want[0]
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_convert_unsupported_layers_are_kept_with_a_warning():
    class MyConv(tnn.Conv2d):  # a subclass may change forward: not ours to replace
        def forward(self, x):
            return super().forward(x) * 2

    model = tnn.Sequential(MyConv(3, 4, 1), tnn.Conv2d(4, 4, 1)).double()
    x = _x(size=6)
    with torch.no_grad():
        ref = model(x)
    with pytest.warns(UserWarning, match="MyConv"):
        ours = pyimgcls.convert(model)
    assert type(ours[0]) is MyConv and type(ours[1]) is nn.Conv2d
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref)

    lazy = tnn.Sequential(tnn.LazyConv2d(4, 3))
    with pytest.warns(UserWarning, match="lazy module"):
        kept = pyimgcls.convert(lazy)
    assert isinstance(kept[0], tnn.LazyConv2d)


def test_convert_padding_modes():
    """Every padding_mode torch.nn.Conv2d has converts to pyimgcls.nn.Conv2d (which pads with F.pad
    first, as torch.nn does), with no warning, sharing the parameters, and computes PyTorch's output
    and gradients. Asymmetric padding and a stride catch a reversed padding order. Fixed expectation:
    it no longer adapts to what the constructor happens to accept."""
    for mode in ("zeros", "reflect", "replicate", "circular"):
        conv = tnn.Conv2d(3, 4, 3, stride=2, padding=(1, 2), padding_mode=mode).double()
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            ours = pyimgcls.convert(conv)
        assert type(ours) is nn.Conv2d, mode
        assert not [str(w.message) for w in record], mode
        assert ours.padding_mode == mode and ours.weight is conv.weight and ours.bias is conv.bias
        x = _x(size=7).requires_grad_()
        want = conv(x)
        (gx_want, gw_want) = torch.autograd.grad(want.square().sum(), (x, conv.weight))
        with pyimgcls.use_backend("cpu"):
            got = ours(x)
            (gx, gw) = torch.autograd.grad(got.square().sum(), (x, ours.weight))
        assert got.shape == want.shape == (2, 4, 4, 5), mode
        for a, b in ((got, want), (gx, gx_want), (gw, gw_want)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=mode)


def test_convert_shared_module_converted_once():
    shared = tnn.Conv2d(4, 4, 3, padding=1)
    model = tnn.Sequential(shared, tnn.ReLU(), shared)
    ours = pyimgcls.convert(model)
    assert ours[0] is ours[2] and isinstance(ours[0], nn.Conv2d) and ours[0].weight is shared.weight
    assert model[0] is shared


def test_convert_root_layer_and_bad_arguments():
    lin = tnn.Linear(3, 2)
    ours = pyimgcls.convert(lin)
    assert isinstance(ours, nn.Linear) and ours.weight is lin.weight and ours.bias is lin.bias
    assert type(lin) is tnn.Linear
    with pytest.raises(TypeError, match="model"):
        pyimgcls.convert("resnet18")
    with pytest.raises(TypeError, match="inplace"):
        pyimgcls.convert(lin, inplace=1)


def test_convert_then_fuse_for_inference(torch_model):
    """convert -> fuse_for_inference gives a fused inference model with the original eval outputs."""
    if not hasattr(pyimgcls, "fuse_for_inference"):
        pytest.skip("pyimgcls.fuse_for_inference not available in this build")
    torch_model.eval()
    x = _x()
    with torch.no_grad():
        ref = torch_model(x)
        fused = pyimgcls.fuse_for_inference(pyimgcls.convert(torch_model))
        got = fused(x)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    left = [n for n, m in fused.named_modules() if isinstance(m, CONVERTIBLE) and not isinstance(m, OURS)]
    assert not left
