"""Structured channel pruning (pyimgcls.pruning) and pruned checkpoints (pyimgcls prune, load_model,
train --init).

The central check: a pruned model computes exactly what the original computes when the removed
channels are forced to zero after every layer (a forward hook masks each layer's output with the
channels the pruning kept). That holds only if every consumer sliced the right input channels
(through BN, residual adds, concatenations, depthwise convs, flatten into the head); it fails when a
tie across a residual add is dropped, because the pruned add then pairs different channels."""
from __future__ import annotations

import copy
import os

import pytest
import torch

import pyimgcls
from pyimgcls import cli, nn
from pyimgcls.errors import ArgumentTypeError, ArgumentValueError
from pyimgcls.models import get_model
from pyimgcls.models.alexnet import AlexNet
from pyimgcls.models.densenet import DenseNet
from pyimgcls.models.efficientnet import EfficientNet, FusedMBConvConfig, MBConvConfig
from pyimgcls.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3
from pyimgcls.models.shufflenetv2 import ShuffleNetV2
from pyimgcls.models.mobilenet import MobileNetV2
from pyimgcls.models.resnet import Bottleneck, ResNet
from pyimgcls.models.vgg import VGG, make_layers
from pyimgcls.pruning import _prune, _trace, apply_architecture, architecture, prune_channels


def _small_head(in_features, hidden=24, num_classes=10):
    # the zoo's 4096-wide heads cost seconds to build; the head's structure (Linear after flatten) is what matters
    return torch.nn.Sequential(torch.nn.Dropout(0.5), nn.Linear(in_features, hidden, activation="relu"),
                               torch.nn.Identity(), nn.Linear(hidden, num_classes))


def _vgg(bn):
    m = VGG(make_layers([8, "M", 12, 12, "M", 16, "M"], batch_norm=bn), num_classes=10)
    m.classifier = _small_head(16 * 7 * 7)
    return m


def _alexnet():
    m = AlexNet(num_classes=10)
    m.classifier = _small_head(256 * 6 * 6)
    return m


# name -> (builder, input shape): every family of the zoo, at the smallest sizes that keep each
# family's structure (residual stages with downsampling, dense blocks with transitions, depthwise
# inverted residuals with and without shortcut, flatten of a 7x7 / 6x6 / 5x5 map into the head)
FAMILIES = {
    "lenet5": (lambda: get_model("lenet5", num_classes=10), (2, 1, 32, 32)),
    "alexnet": (_alexnet, (2, 3, 63, 63)),
    "vgg": (lambda: _vgg(False), (2, 3, 32, 32)),
    "vgg_bn": (lambda: _vgg(True), (2, 3, 32, 32)),
    "resnet18": (lambda: get_model("resnet18", num_classes=10), (2, 3, 32, 32)),
    "resnet_bottleneck": (lambda: ResNet(Bottleneck, [1, 2, 1, 1], num_classes=10), (2, 3, 32, 32)),
    "densenet": (lambda: DenseNet(growth_rate=6, block_config=(2, 3, 2), num_init_features=10, bn_size=2,
                                  num_classes=10), (2, 3, 32, 32)),
    "mobilenet_v2": (lambda: MobileNetV2(num_classes=10, width_mult=0.25), (2, 3, 32, 32)),
}


def _efficientnet():
    # MBConv with SE (with and without shortcut), FusedMBConv at expand 4 and at expand 1 with a shortcut
    # (its ops.drop_path_add runs in eval mode too); stochastic depth on, so the train step draws it
    setting = [FusedMBConvConfig(1, 3, 1, 8, 8, 2), FusedMBConvConfig(4, 3, 2, 8, 16, 1),
               MBConvConfig(4, 3, 2, 16, 24, 2)]   # MBConvConfig rounds widths to multiples of 8
    return EfficientNet(setting, dropout=0.2, stochastic_depth_prob=0.5, num_classes=10, last_channel=32)


def _mobilenet_v3():
    # SE with a hardsigmoid gate, hardswish / relu blocks, the shortcut after an SE block (BN's residual=)
    conf = [InvertedResidualConfig(*row, width_mult=0.5) for row in (
        (16, 3, 16, 16, True, "RE", 2, 1), (16, 3, 72, 24, False, "RE", 2, 1), (24, 5, 96, 24, True, "HS", 1, 1))]
    return MobileNetV3(conf, last_channel=32, num_classes=10)


# the new families (GoogLeNet, Inception-v3 and SqueezeNet at their full widths and smallest inputs:
# their constructors take no width)
FAMILIES.update({
    "googlenet": (lambda: get_model("googlenet", num_classes=10), (2, 3, 15, 15)),
    "inception_v3": (lambda: get_model("inception_v3", num_classes=10), (2, 3, 75, 75)),
    "squeezenet1_0": (lambda: get_model("squeezenet1_0", num_classes=10), (2, 3, 21, 21)),
    "squeezenet1_1": (lambda: get_model("squeezenet1_1", num_classes=10), (2, 3, 17, 17)),
    "shufflenet_v2": (lambda: ShuffleNetV2([1, 2, 1], [8, 8, 16, 24, 32], num_classes=10), (2, 3, 33, 33)),
    "resnext": (lambda: ResNet(Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=4, num_classes=10),
                (2, 3, 16, 16)),
    "efficientnet": (_efficientnet, (2, 3, 16, 16)),
    "mobilenet_v3": (_mobilenet_v3, (2, 3, 16, 16)),
})
# GoogLeNet and Inception-v3 (full width: the slowest cases) are checked with criterion "l1" only: bn_scale
# changes only the scores, and the other BN families check it
HAS_BN = {"vgg_bn", "resnet18", "resnet_bottleneck", "densenet", "mobilenet_v2", "shufflenet_v2", "resnext",
          "efficientnet", "mobilenet_v3"}


def _build(name, seed=0):
    builder, shape = FAMILIES[name]
    torch.manual_seed(seed)
    m = builder()
    for mod in m.modules():   # distinct BN scales and statistics, so rankings and the masking are not degenerate
        if isinstance(mod, torch.nn.BatchNorm2d):
            with torch.no_grad():
                mod.weight.uniform_(0.2, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval(), torch.randn(shape)


def _masked_reference(model, x, amount, criterion):
    """The original model's output with the channels pruning removes zeroed after every layer."""
    g = _trace.trace(model, x)
    removed = _prune._removed_classes(g, _prune._element_scores(model, g, criterion), amount)
    # an SE op's squeeze channels are no module's output: zero fc2's columns that read the removed ones
    model = copy.deepcopy(model)
    mods = dict(model.named_modules())
    for fc1 in g.se_squeeze:
        fc2 = mods[fc1[: -len("fc1")] + "fc2"]
        gone = [j for j, e in enumerate(g.conv_out[fc1]) if g.find(e) in removed]
        with torch.no_grad():
            fc2.weight[:, gone] = 0
    hooks = []
    for name, space in g.out_space.items():
        keep = torch.tensor([g.find(e) not in removed for e in space], dtype=torch.float32)

        def hook(mod, args, out, keep=keep):
            return out * keep.view(1, -1, *([1] * (out.dim() - 2)))
        hooks.append(mods[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model(x), removed
    finally:
        for h in hooks:
            h.remove()


def _params(m):
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------------------- every family
@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_prunes_exactly_and_trains(name):
    model, x = _build(name)
    before = copy.deepcopy(model.state_dict())
    # amount=0: a copy that computes the same
    same = prune_channels(model, 0.0, example_input=x)
    assert same is not model and _params(same) == _params(model)
    with torch.no_grad():
        assert torch.equal(same(x), model(x))
    # amount=0.5: equal to the original with the removed channels zeroed, far fewer parameters
    for criterion in ("l1", "bn_scale") if name in HAS_BN else ("l1",):
        pruned = prune_channels(model, 0.5, criterion=criterion, example_input=x)
        ref, removed = _masked_reference(model, x, 0.5, criterion)
        assert removed, "nothing was pruned"
        with torch.no_grad():
            y = pruned(x)
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
        assert _params(pruned) < 0.7 * _params(model)
        assert all(isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) for m in pruned.modules()
                   if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear)))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # the pruned model trains: one SGD step with finite gradients for every parameter
    pruned.train()
    opt = torch.optim.SGD(pruned.parameters(), lr=0.01)
    w0 = [p.detach().clone() for p in pruned.parameters()]
    loss = nn.CrossEntropyLoss()(pruned(x), torch.tensor([1, 7]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pruned.parameters())
    assert sum(not torch.equal(a, b) for a, b in zip(w0, pruned.parameters())) > len(w0) // 2


# ---------------------------------------------------------------------------- the dependencies
def _kept_out(orig_conv, pruned_conv):
    """Which output channels of ``orig_conv`` survive, from its pruned weight (rows matched by content)."""
    rows = [set(r.tolist()) for r in orig_conv.weight.detach().flatten(1)]
    kept = []
    for r in pruned_conv.weight.detach().flatten(1):
        # a row of the pruned weight is an original row restricted to the kept input channels
        match = [i for i, o in enumerate(rows) if set(r.tolist()) <= o]
        assert len(match) == 1
        kept.append(match[0])
    return kept


def test_residual_group_is_pruned_together_by_summed_score():
    model, x = _build("resnet18")
    pruned = prune_channels(model, 0.5, example_input=x)
    # layer1's stream: the stem conv and both blocks' second convs are added channel by channel
    tied = [model.conv1, model.layer1[0].conv2, model.layer1[1].conv2]
    score = sum(c.weight.detach().double().abs().flatten(1).sum(1) for c in tied)
    expect = sorted(torch.argsort(score, descending=True)[:32].tolist())
    assert sorted(_kept_out(model.conv1, pruned.conv1)) == expect
    assert sorted(_kept_out(model.layer1[0].conv2, pruned.layer1[0].conv2)) == expect
    assert sorted(_kept_out(model.layer1[1].conv2, pruned.layer1[1].conv2)) == expect
    # a block's first conv is its own group: its top half by its own score
    own = model.layer1[0].conv1.weight.detach().double().abs().flatten(1).sum(1)
    assert sorted(_kept_out(model.layer1[0].conv1, pruned.layer1[0].conv1)) == \
        sorted(torch.argsort(own, descending=True)[:32].tolist())
    # downsample and the stage's second convs are tied in layer2
    assert pruned.layer2[0].downsample[0].out_channels == pruned.layer2[0].conv2.out_channels == 64
    assert pruned.layer2[1].conv1.in_channels == 64 and pruned.fc.in_features == 256


def test_densenet_concatenation_slices_each_consumer():
    model, x = _build("densenet")
    pruned = prune_channels(model, 0.5, example_input=x)
    f, pf = model.features, pruned.features
    stem = pf.conv0.out_channels
    assert stem == 5
    grow = [pf.denseblock1[f"denselayer{i}"].conv2.out_channels for i in (1, 2)]
    assert grow == [3, 3]
    assert pf.denseblock1.denselayer2.norm1.num_features == stem + grow[0]
    assert pf.denseblock1.denselayer2.conv1.in_channels == stem + grow[0]
    assert pf.transition1.norm.num_features == stem + sum(grow)
    # the second layer's BN keeps the stem's kept channels, then layer 1's, in concatenation order
    kept_stem = _kept_out(f.conv0, pf.conv0)
    kept_l1 = _kept_out(f.denseblock1.denselayer1.conv2, pf.denseblock1.denselayer1.conv2)
    want = [f.denseblock1.denselayer2.norm1.weight[i] for i in sorted(kept_stem)] + \
           [f.denseblock1.denselayer2.norm1.weight[10 + i] for i in sorted(kept_l1)]
    assert torch.equal(pf.denseblock1.denselayer2.norm1.weight.detach(), torch.stack(want).detach())


def test_depthwise_conv_is_pruned_with_its_producer():
    model, x = _build("mobilenet_v2")
    pruned = prune_channels(model, 0.5, example_input=x)
    blk, pblk = model.features[2].conv, pruned.features[2].conv     # expand 1x1, depthwise 3x3, project 1x1
    expand, dw = pblk[0][0], pblk[1][0]
    assert dw.groups == dw.in_channels == dw.out_channels == expand.out_channels == blk[0][0].out_channels // 2
    kept = sorted(_kept_out(blk[0][0], expand))
    assert torch.equal(dw.weight.detach(), blk[1][0].weight.detach()[kept])
    assert pblk[2].in_channels == expand.out_channels


def test_squeeze_excitation_op_and_drop_path_add_rules():
    model, x = _build("efficientnet")
    pruned = prune_channels(model, 0.5, example_input=x)
    f, pf = model.features, pruned.features
    # FusedMBConv at expand 1 adds its input with ops.drop_path_add (eval mode too): the stem's channels
    # and both blocks' convs are one tied group, pruned together
    stem, b0, b1 = (f[0][0], pf[0][0]), (f[1][0].block[0][0], pf[1][0].block[0][0]), \
        (f[1][1].block[0][0], pf[1][1].block[0][0])
    kept = sorted(_kept_out(*stem))
    assert len(kept) == 4 and sorted(_kept_out(*b0)) == kept and sorted(_kept_out(*b1)) == kept
    # MBConv: expand 1x1 -> depthwise -> SE(64, 4) -> project; the SE op reads and gates the expanded
    # channels (fc1's inputs and fc2's outputs are sliced with them) and its squeeze channels are halved
    blk, pblk = f[3][0].block, pf[3][0].block
    se, pse = blk[2], pblk[2]
    kept = sorted(_kept_out(blk[0][0], pblk[0][0]))
    expand_l1 = blk[0][0].weight.detach().double().abs().flatten(1).sum(1)   # its own score, not fc2's
    assert kept == sorted(torch.argsort(expand_l1, descending=True)[:32].tolist()) and pblk[1][0].groups == 32
    assert (pse.fc1.in_channels, pse.fc1.out_channels, pse.fc2.in_channels, pse.fc2.out_channels) == (32, 2, 2, 32)
    assert pblk[3][0].in_channels == 32
    sq = sorted(_kept_out(se.fc1, pse.fc1))
    own = se.fc1.weight.detach().double().abs().flatten(1).sum(1)
    assert sq == sorted(torch.argsort(own, descending=True)[:2].tolist())
    assert torch.equal(pse.fc2.weight.detach(), se.fc2.weight.detach()[kept][:, sq])
    assert torch.equal(pse.fc2.bias.detach(), se.fc2.bias.detach()[kept])
    # bn_scale ranks the squeeze channels (no BatchNorm after fc1) by fc1's L1 too
    assert sorted(_kept_out(se.fc1, prune_channels(model, 0.5, "bn_scale", x).features[3][0].block[2].fc1)) == sq


def test_grouped_conv_loses_whole_groups():
    model, x = _build("resnext")
    pruned = prune_channels(model, 0.5, example_input=x)
    for blk, pblk in ((model.layer1[0], pruned.layer1[0]), (model.layer3[0], pruned.layer3[0])):
        c1, c2, pc1, pc2 = blk.conv1, blk.conv2, pblk.conv1, pblk.conv2
        cg = og = c2.in_channels // c2.groups
        assert c2.groups == 4 and pc2.groups == 2 and pc2.in_channels == pc2.out_channels == 2 * og
        # a group's score: conv1's filters feeding it plus conv2's filters of it; the top two groups stay
        s1 = c1.weight.detach().double().abs().flatten(1).sum(1).view(4, cg).sum(1)
        s2 = c2.weight.detach().double().abs().flatten(1).sum(1).view(4, og).sum(1)
        groups = sorted(torch.argsort(s1 + s2, descending=True)[:2].tolist())
        chans = [k * og + i for k in groups for i in range(og)]
        assert sorted(_kept_out(c1, pc1)) == chans
        assert torch.equal(pc2.weight.detach(), c2.weight.detach()[chans])
        assert pblk.conv3.in_channels == 2 * og


class _CatAdd(torch.nn.Module):
    """A cat of two convs added to a third: all three tied channel by channel across the cat."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1)
        self.b = nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(3, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1) + self.c(x)
        return self.head(torch.flatten(pyimgcls.ops.adaptive_avg_pool2d(y, 1), 1))


class _Shuffle(torch.nn.Module):
    """A channel shuffle (view / transpose / reshape) has no rule: its input's channels must stay."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        n, c, h, w = (int(s) for s in self.a(x).shape)
        y = self.a(x).view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(torch.flatten(self.b(y), 1))


class _SqueezeExcite(torch.nn.Module):
    """An SE gate (global mean, squeeze conv, expand conv, sigmoid, multiply), as EfficientNet's: the
    expand conv's channels are tied to the gated ones; the head reads a global mean."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.squeeze = nn.Conv2d(8, 4, 1, activation="relu")
        self.expand = nn.Conv2d(4, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        y = self.conv(x)
        y = y * torch.sigmoid(self.expand(self.squeeze(y.mean((2, 3), keepdim=True))))
        return self.head(y.mean((-1, -2)))


def test_squeeze_excitation_gate_ties_and_global_mean():
    torch.manual_seed(0)
    m, x = _SqueezeExcite().eval(), torch.randn(1, 3, 5, 5)
    pruned = prune_channels(m, 0.5, example_input=x)
    assert (pruned.conv.out_channels, pruned.squeeze.out_channels, pruned.expand.out_channels,
            pruned.head.in_features) == (4, 2, 4, 4)
    assert sorted(_kept_out(m.conv, pruned.conv)) == sorted(_kept_out(m.expand, pruned.expand))
    ref, _ = _masked_reference(m, x, 0.5, "l1")
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref, rtol=1e-5, atol=1e-5)


def test_cat_added_to_a_conv_ties_across_the_concatenation():
    torch.manual_seed(0)
    m, x = _CatAdd().eval(), torch.randn(2, 3, 5, 5)
    pruned = prune_channels(m, 0.5, example_input=x)
    assert pruned.a.out_channels + pruned.b.out_channels == pruned.c.out_channels == 4
    ref, _ = _masked_reference(m, x, 0.5, "l1")
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        m.a.weight.zero_()      # a's channels score lowest in the tied group: 0.75 removes both of them
    with pytest.raises(ArgumentValueError, match=r"'amount'.*'a'.*zero channels"):
        prune_channels(m, 0.75, example_input=x)


def test_ops_without_a_rule_freeze_their_channels():
    torch.manual_seed(0)
    m, x = _Shuffle().eval(), torch.randn(2, 3, 4, 4)
    pruned = prune_channels(m, 0.5, example_input=x)
    assert pruned.a.out_channels == 8 and pruned.b.in_channels == 8 and pruned.b.out_channels == 4
    assert pruned.head.in_features == 4 * 16
    ref, _ = _masked_reference(m, x, 0.5, "l1")
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref, rtol=1e-5, atol=1e-5)


def _shufflenet():
    # 2 / 4 / 2 units: a stage with three stride-1 units after its stride-2 one, so the pass-through
    # halves of later units gather channels from several earlier shuffles (the uneven trunk classes)
    torch.manual_seed(0)
    m = ShuffleNetV2([2, 4, 2], [8, 16, 24, 32, 40], num_classes=10)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            with torch.no_grad():
                mod.weight.uniform_(0.2, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def test_shufflenet_prunes_through_the_shuffle_and_split():
    m, x = _shufflenet(), torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        assert torch.equal(prune_channels(m, 0.0, example_input=x)(x), m(x))
    for amount in (0.5, 0.75):
        pruned = prune_channels(m, amount, example_input=x)
        ref, _ = _masked_reference(m, x, amount, "l1")
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
        mods = dict(pruned.named_modules())
        for name, unit in m.named_modules():
            if not isinstance(unit, type(m.stage2[0])):
                continue
            p = mods[name]
            # the shuffle's tie keeps the two concatenated halves equal, and the split follows them
            half = getattr(p.branch2, "5").out_channels
            assert p.branch_features == half
            if unit.stride > 1:
                assert getattr(p.branch1, "2").out_channels == half
                # the shuffle ties output channel i of branch1 with output channel i of branch2
                assert sorted(_kept_out(getattr(unit.branch1, "2"), getattr(p.branch1, "2"))) == sorted(_kept_out(
                    getattr(unit.branch2, "5"), getattr(p.branch2, "5")))
            assert getattr(p.branch2, "0").in_channels >= 1      # a branch never loses its whole input
        # the trunk itself is pruned (before the shuffle rule it was frozen: only branch-inner convs shrank)
        assert getattr(pruned.stage3[2].branch2, "5").out_channels < getattr(m.stage3[2].branch2, "5").out_channels
        assert pruned.conv5[0].in_channels < m.conv5[0].in_channels
        assert _params(pruned) < (0.45 if amount == 0.5 else 0.2) * _params(m)
    pruned = prune_channels(m, 0.5, example_input=x)
    # channels_last input: the same function
    with torch.no_grad():
        torch.testing.assert_close(pruned(x.contiguous(memory_format=torch.channels_last)), pruned(x),
                                   rtol=1e-5, atol=1e-5)
    # a pruned checkpoint's widths rebuild it, branch_features included
    fresh = apply_architecture(ShuffleNetV2([2, 4, 2], [8, 16, 24, 32, 40], num_classes=10), architecture(pruned))
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), pruned(x))
    # batch 2, one training step
    pruned.train()
    xb = torch.randn(2, 3, 33, 33)
    loss = nn.CrossEntropyLoss()(pruned(xb), torch.tensor([3, 8]))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and torch.isfinite(p.grad).all()
                                        for p in pruned.parameters())


class _TorchShuffle(torch.nn.Module):
    """torch.channel_shuffle (3 groups) between two convolutions."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 12, 3, padding=1)
        self.b = nn.Conv2d(12, 5, 3, padding=1)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.b(torch.channel_shuffle(self.a(x), 3)).mean((2, 3)))


def test_channel_shuffle_ties_each_position_across_groups():
    torch.manual_seed(0)
    m, x = _TorchShuffle().eval(), torch.randn(2, 3, 5, 5)
    pruned = prune_channels(m, 0.5, example_input=x)
    assert pruned.a.out_channels == 6 and pruned.b.in_channels == 6
    kept = sorted(_kept_out(m.a, pruned.a))
    assert kept == sorted({i % 4 + 4 * k for i in kept for k in range(3)})   # position i kept in all 3 groups
    ref, _ = _masked_reference(m, x, 0.5, "l1")
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref, rtol=1e-5, atol=1e-5)


def test_channels_last_example_input_and_model():
    model, x = _build("mobilenet_v2")
    model = model.to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last)
    pruned = prune_channels(model, 0.5, example_input=x)
    ref, _ = _masked_reference(model, x, 0.5, "l1")
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


class _Two(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1, bias=False)
        self.c2 = nn.Conv2d(8, 8, 1, bias=False)
        self.head = nn.Linear(8 * 4, 2)

    def forward(self, x):
        return self.head(torch.flatten(self.c2(self.c1(x)), 1))


def test_global_ranking_prunes_uneven_layers_unevenly():
    torch.manual_seed(0)
    m, x = _Two().eval(), torch.randn(2, 3, 2, 2)
    with torch.no_grad():
        m.c1.weight.copy_(torch.tensor([1.0, -2.0, 3.0]).repeat(8, 1).view(8, 3, 1, 1))   # all filters alike
        m.c2.weight[4:].mul_(1e-3)      # half of c2's filters nearly zero: relative to c2's mean, the lowest
    uniform = prune_channels(m, 0.25, example_input=x)
    assert (uniform.c1.out_channels, uniform.c2.out_channels) == (6, 6)
    ranked = prune_channels(m, 0.25, example_input=x, global_ranking=True)
    assert (ranked.c1.out_channels, ranked.c2.out_channels) == (8, 4)
    assert sorted(_kept_out(m.c2, ranked.c2)) == [0, 1, 2, 3] and ranked.head.in_features == 16
    ref, _ = _masked_reference(m, x, 0.25, "l1")    # the uniform removal's reference
    with torch.no_grad():
        torch.testing.assert_close(uniform(x), ref, rtol=1e-5, atol=1e-5)
    # 12 of 16 removed globally: c1's eight alike filters rank below c2's four large ones
    with pytest.raises(ArgumentValueError, match=r"'amount'.*'c1'.*zero channels"):
        prune_channels(m, 0.75, example_input=x, global_ranking=True)
    with pytest.raises(ArgumentTypeError, match="'global_ranking'"):
        prune_channels(m, 0.5, example_input=x, global_ranking=1)


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kw, err, needle", [
    ({"amount": 1.0}, ArgumentValueError, "'amount'"),
    ({"amount": -0.1}, ArgumentValueError, "'amount'"),
    ({"amount": True}, ArgumentTypeError, "'amount'"),
    ({"amount": "0.5"}, ArgumentTypeError, "'amount'"),
    ({"criterion": "l2"}, ArgumentValueError, "'criterion'"),
    ({"example_input": [1, 2]}, ArgumentTypeError, "'example_input'"),
])
def test_bad_arguments_name_the_argument(kw, err, needle):
    model = get_model("lenet5")
    with pytest.raises(err, match=needle):
        prune_channels(model, **kw)
    with pytest.raises(ArgumentTypeError, match="'model'"):
        prune_channels("resnet18")


def test_bn_scale_needs_a_batchnorm():
    with pytest.raises(ArgumentValueError, match="bn_scale.*'features.0'"):
        prune_channels(get_model("lenet5"), 0.5, criterion="bn_scale")


# ------------------------------------------------------------------------ architecture as data
def test_architecture_round_trips_through_a_weights_only_file(tmp_path):
    model, x = _build("resnet18")
    pruned = prune_channels(model, 0.5, example_input=x)
    torch.save({"arch": architecture(pruned), "sd": pruned.state_dict()}, tmp_path / "p.pt")
    data = torch.load(tmp_path / "p.pt", weights_only=True)
    fresh = apply_architecture(get_model("resnet18", num_classes=10), data["arch"])
    fresh.load_state_dict(data["sd"])
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), pruned(x))
    bad = {"layers": {"conv1": {"kind": "conv2d", "in_channels": 3, "out_channels": 0, "groups": 1}}}
    with pytest.raises(ArgumentValueError, match="conv1"):
        apply_architecture(get_model("resnet18"), bad)
    with pytest.raises(ArgumentValueError, match="nope"):
        apply_architecture(get_model("resnet18"), {"layers": {"nope": {"kind": "linear"}}})


# ----------------------------------------------------------------------------------------- CLI
SMALL = ["--data", "digits", "--limit-train", "256", "--limit-test", "100", "--batch-size", "32", "--no-plots",
         "--kernels", "cpu", "--quiet"]


def _cli(*argv) -> int:
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    pyimgcls.set_backend("auto")
    assert _cli("train", *SMALL, "--epochs", 1, "--out", out) == 0
    return out


def test_prune_eval_predict_finetune_and_resume(trained, tmp_path, capsys):
    pfile = tmp_path / "pruned.pt"
    assert _cli("prune", "--checkpoint", trained / "best.pt", "--amount", 0.5, "--out", pfile) == 0
    assert "parameters" in capsys.readouterr().out
    pruned = pyimgcls.load_model(pfile)
    base = pyimgcls.load_model(trained / "best.pt")
    assert not pruned.training and pruned.features[0].out_channels == 3 and pruned.features[2].out_channels == 8
    assert pruned.classifier[0].in_features == 8 * 25 and _params(pruned) < _params(base)
    data = torch.load(pfile, weights_only=True)
    assert data["kind"] == "pruned" and data["meta"]["pruning"][0]["amount"] == 0.5
    assert _cli("eval", "--checkpoint", pfile, "--limit-test", 50, "--kernels", "cpu") == 0
    img = tmp_path / "d.png"
    from PIL import Image
    Image.new("L", (32, 32), 128).save(img)
    assert _cli("predict", "--checkpoint", pfile, img, "--kernels", "cpu") == 0
    # fine-tune: the architecture comes from the file, and its run's checkpoints keep it (resume, eval)
    run = tmp_path / "ft"
    assert _cli("train", *SMALL, "--init", pfile, "--epochs", 1, "--out", run) == 0
    ft = pyimgcls.load_model(run / "best.pt")
    assert ft.features[2].out_channels == 8
    assert not torch.equal(ft.features[2].weight, pruned.features[2].weight)
    assert _cli("train", "--resume", "--out", run, "--epochs", 2, "--quiet", "--no-plots") == 0
    assert pyimgcls.load_model(run / "checkpoint.pt").classifier[0].in_features == 8 * 25
    # --init also warm-starts from a training run's checkpoint (no recorded widths: the zoo model)
    assert _cli("train", *SMALL, "--init", trained / "best.pt", "--epochs", 1, "--out", tmp_path / "warm") == 0
    assert pyimgcls.load_model(tmp_path / "warm" / "best.pt").features[2].out_channels == 16
    # a pruned file prunes again
    assert _cli("prune", "--checkpoint", pfile, "--amount", 0.5, "--out", tmp_path / "p2.pt",
                "--global-ranking") == 0
    p2 = pyimgcls.load_model(tmp_path / "p2.pt")
    assert p2.features[0].out_channels + p2.features[2].out_channels == 3 + 8 - 5
    assert [h["global_ranking"] for h in torch.load(tmp_path / "p2.pt", weights_only=True)["meta"]["pruning"]] \
        == [False, True]


@pytest.mark.parametrize("argv, needle", [
    (["--amount", "1"], "--amount"),
    (["--amount", "-0.2"], "--amount"),
    (["--amount", "half"], "--amount"),
    (["--criterion", "bn_scale"], "bn_scale"),
    (["--checkpoint", "/nonexistent/x.pt"], "/nonexistent/x.pt"),
])
def test_prune_cli_errors_are_one_line_exit_2(trained, tmp_path, capsys, argv, needle):
    base = ["prune", "--checkpoint", trained / "best.pt", "--out", tmp_path / "o.pt"]
    assert _cli(*base, *argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "o.pt")


def test_init_errors(trained, tmp_path, capsys):
    ck = trained / "best.pt"
    assert _cli("train", *SMALL, "--init", ck, "--pretrained", ck, "--out", tmp_path / "a") == 2
    assert "--init" in capsys.readouterr().err
    assert _cli("train", *SMALL, "--init", ck, "--model", "resnet18", "--out", tmp_path / "b") == 2
    assert "--model resnet18" in capsys.readouterr().err
    assert _cli("train", *SMALL, "--init", tmp_path / "none.pt", "--out", tmp_path / "c") == 2
    assert "none.pt" in capsys.readouterr().err


def test_load_model_errors(trained, tmp_path):
    with pytest.raises(ArgumentTypeError, match="'path'"):
        pyimgcls.load_model(3)
    with pytest.raises(ArgumentValueError, match="missing.pt"):
        pyimgcls.load_model(tmp_path / "missing.pt")
    ck = torch.load(trained / "best.pt", weights_only=True)
    torch.save(dict(ck, kind="quantized"), tmp_path / "q.pt")
    with pytest.raises(ArgumentValueError, match="'quantized' checkpoint"):
        pyimgcls.load_model(tmp_path / "q.pt")
    meta = dict(ck["meta"], architecture=architecture(prune_channels(get_model("lenet5"), 0.5)))
    torch.save(dict(ck, meta=meta), tmp_path / "w.pt")     # widths that do not match the weights
    with pytest.raises(ArgumentValueError, match="w.pt.*do not fit"):
        pyimgcls.load_model(tmp_path / "w.pt")
