"""2:4 semi-structured sparsity: prune_2_4 masks (fine-tuning keeps the pattern), the compressed
format (compress_2_4: values + mma.sp metadata) and ops.sparse_linear on every backend, the CUDA
kernel's data path through its CPU emulation (tests/emu/sparse_tc_emu.cpp)."""
from __future__ import annotations

import copy
import io

import pytest
import torch

import pyimgcls
from pyimgcls import nn as pnn
from pyimgcls import pruning
from pyimgcls.errors import ArgumentTypeError, ArgumentValueError

BACKENDS = ["cpu", "triton", "torch"]


class Net(torch.nn.Module):
    """Every branch of prune_2_4: a conv with 3 input channels (skipped), a 3x3 and a 1x1 conv with
    C_in % 4 == 0 (pruned), a grouped conv (skipped), a Linear with in % 4 == 0 (pruned) and one
    without (skipped)."""

    def __init__(self):
        super().__init__()
        self.c1 = pnn.Conv2d(3, 8, 3, padding=1, activation="relu")
        self.c2 = pnn.Conv2d(8, 12, 3, padding=1, activation="relu")
        self.c3 = pnn.Conv2d(12, 16, 1)
        self.dw = pnn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.fc1 = pnn.Linear(16, 10, activation="relu")
        self.fc2 = pnn.Linear(10, 5)

    def forward(self, x):
        x = self.dw(self.c3(self.c2(self.c1(x))))
        return self.fc2(self.fc1(x.mean((2, 3))))


PRUNED = ["c2", "c3", "fc1"]


def _net(seed=0):
    torch.manual_seed(seed)
    return Net()


def _groups(w):
    """Groups of 4 consecutive input channels (at each kernel tap), as prune_2_4 defines them."""
    if w.dim() == 4:
        w = w.permute(0, 2, 3, 1)
    return w.reshape(-1, 4)


def _assert_exactly_2_of_4(model, names=PRUNED):
    mods = dict(model.named_modules())
    for n in names:
        nz = (_groups(mods[n].weight.detach()) != 0).sum(1)
        assert bool((nz == 2).all()), f"{n}: groups with {sorted(set(nz.tolist()))} non-zeros"


def test_prune_report_and_pattern():
    m = _net()
    rep = pruning.prune_2_4(m)
    assert rep["pruned"] == PRUNED
    assert set(rep["skipped"]) == {"c1", "dw", "fc2"}
    assert "in_channels=3" in rep["skipped"]["c1"] and "groups=4" in rep["skipped"]["dw"]
    assert "in_features=10" in rep["skipped"]["fc2"]
    _assert_exactly_2_of_4(m)
    # the kept ones are the two largest of each group (weights before pruning)
    ref = _net()
    for n in PRUNED:
        w0 = _groups(getattr(ref, n).weight.detach()).abs()
        kept = _groups(getattr(m, n).weight.detach()) != 0
        top2 = w0.topk(2, dim=1).indices
        assert bool(kept.gather(1, top2).all())
    assert not (m.c1.weight == 0).any() and not (m.fc2.weight == 0).any()
    assert all(v["is_2_4"] and v["masked"] for k, v in pruning.sparsity_report(m).items() if k in PRUNED)


def test_kxk_groups_run_along_input_channels():
    """For a 3x3 conv, the 4-groups are 4 consecutive input channels at one (kh, kw) tap."""
    w = torch.randn(5, 8, 3, 3)
    mask = pruning.mask_2_4(w)
    assert torch.equal(mask.reshape(5, 2, 4, 3, 3).sum(2), torch.full((5, 2, 3, 3), 2))
    lin = torch.tensor([[1.0, -3.0, 2.0, 0.5, 0.0, 0.0, 0.0, 0.0]])
    assert pruning.mask_2_4(lin).tolist() == [[False, True, True, False, True, True, False, False]]


# Triton runs through the interpreter here (about 25 s a step of this net): one case, one step.
@pytest.mark.parametrize("backend,opt,steps", [("cpu", "sgd", 3), ("cpu", "adam", 3), ("cpu", "adamw", 3),
                                                ("torch", "adam", 2), ("triton", "adamw", 1)])
def test_fine_tuning_keeps_the_pattern(backend, opt, steps):
    """After optimizer steps (momentum, weight decay, Adam moments revive pruned weights in the stored
    tensor), what every forward uses is exactly 2:4 with the original mask, and equals the masked
    dense model computed on the same backend."""
    torch.manual_seed(1)
    m = _net(1)
    pruning.prune_2_4(m)
    masks = {n: getattr(m, n).weight_mask_2_4.clone() for n in PRUNED}
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
            "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
            "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1)}[opt]
    o = make(m.parameters())
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 5, (2,))
    with pyimgcls.use_backend(backend):
        for _ in range(steps):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            o.step()
        if opt != "sgd":   # Adam's update of a zero-gradient weight is not 0: the stored weight is revived
            assert any(bool((getattr(m, n).weight[~masks[n]] != 0).any()) for n in PRUNED)
        out = m(x)
        _assert_exactly_2_of_4(m)
        for n in PRUNED:
            assert torch.equal(getattr(m, n).weight_mask_2_4, masks[n])
            assert torch.equal(getattr(m, n).weight != 0, masks[n])
        dense = copy.deepcopy(m)
        pruning.remove_masks(dense)
        assert torch.equal(dense(x), out)


def test_two_forwards_one_backward_and_eval_do_not_rewrite():
    m = _net()
    pruning.prune_2_4(m)
    x = torch.randn(2, 3, 4, 4)
    v = m.c2.weight._version
    loss = m(x).sum() + m(x).sum()
    loss.backward()
    assert m.c2.weight._version == v
    m.c2.weight.data[0, 0, 0, 0] = 5.0    # data writes bump no version: apply_masks is the explicit path
    pruning.apply_masks(m)
    with torch.no_grad():
        m.c2.weight.add_(1.0)
    m(x)
    _assert_exactly_2_of_4(m)


def test_checkpoint_round_trip_weights_only(tmp_path):
    m = _net(2)
    pruning.prune_2_4(m)
    x = torch.randn(2, 3, 6, 6)
    out = m(x)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert all(f"{n}.weight_mask_2_4" in sd for n in PRUNED)
    fresh = _net(7)
    pruning.prune_2_4(fresh)     # masks of other weights: load_state_dict replaces them
    fresh.load_state_dict(sd)
    assert torch.equal(fresh(x), out)
    for n in PRUNED:
        assert torch.equal(getattr(fresh, n).weight_mask_2_4, getattr(m, n).weight_mask_2_4)
    # baked: the keys of the unpruned model, loadable into a plain one; hooks gone
    assert pruning.remove_masks(fresh) == PRUNED
    assert set(fresh.state_dict()) == set(_net().state_dict())
    assert all(not mod._forward_pre_hooks for mod in fresh.modules())
    plain = _net(9)
    plain.load_state_dict(fresh.state_dict())
    assert torch.equal(plain(x), out)
    _assert_exactly_2_of_4(plain)
    # deepcopy keeps a working hook bound to the copy
    pruning.prune_2_4(plain)
    twin = copy.deepcopy(plain)
    with torch.no_grad():
        twin.fc1.weight.fill_(1.0)
    twin(x)
    _assert_exactly_2_of_4(twin)
    assert not torch.equal(twin.fc1.weight, plain.fc1.weight)


def test_bad_input():
    with pytest.raises(ArgumentTypeError, match="'model'"):
        pruning.prune_2_4("resnet")
    with pytest.raises(ArgumentValueError, match="'criterion'"):
        pruning.prune_2_4(_net(), criterion="l1")
    with pytest.raises(ArgumentValueError, match="no Conv2d or Linear"):
        pruning.prune_2_4(torch.nn.ReLU())
    m = _net()
    pruning.prune_2_4(m)
    with pytest.raises(ArgumentValueError, match="already has 2:4 masks"):
        pruning.prune_2_4(m)
    with pytest.raises(ArgumentValueError, match="multiple of 4"):
        pruning.mask_2_4(torch.randn(3, 6))
    with pytest.raises(ArgumentTypeError, match="'weight'"):
        pruning.mask_2_4(torch.ones(4, 4, dtype=torch.int64))
    with pytest.raises(ArgumentTypeError, match="'model'"):
        pruning.remove_masks(None)
