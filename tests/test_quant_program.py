"""QuantizedModel's native forward (pyimgcls/quantization/_program.py): the same bytes as the
layer-by-layer interpreter, taken only where it applies, buffers shared by liveness, fallbacks."""
from __future__ import annotations

import copy
import threading
import warnings

import pytest
import torch

from pyimgcls import models
from pyimgcls.ops import quant as qops
from pyimgcls.quantization import _program, _ptq, quantize


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _model(name, size, seed=0, classes=10):
    torch.manual_seed(seed)
    m = getattr(models, name)(num_classes=classes).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize(m, [torch.randn(2, 3, size, size, generator=_gen(seed))])


def _programs(qm):
    return [p for p in qm.__dict__.get("_programs", {}).values() if isinstance(p, _program.Program)]


@pytest.mark.parametrize("name,size,batch", [("resnet18", 32, 1), ("resnet18", 24, 3), ("resnet50", 32, 2)])
def test_program_matches_interpreter_bit_for_bit(name, size, batch):
    qm = _model(name, size)
    x = torch.randn(batch, 3, size, size, generator=_gen(1))
    with torch.no_grad():
        want = qm._run(x)[0]
        got = [qm(x) for _ in range(4)]          # interpreter, build, program, program
        assert len(_programs(qm)) == 1
        x2 = torch.randn(batch, 3, size, size, generator=_gen(2))      # the same buffers, other values
        want2, got2 = qm._run(x2)[0], qm(x2)
    for g in got:
        assert torch.equal(g, want)
    assert torch.equal(got2, want2)


def test_program_runs_one_native_call_and_shares_buffers(monkeypatch):
    qm = _model("resnet18", 32)
    x = torch.randn(1, 3, 32, 32, generator=_gen(1))
    with torch.no_grad():
        qm(x)
        qm(x)
        calls = []
        orig = qops.BoundQuantizedLayer.__call__
        monkeypatch.setattr(qops.BoundQuantizedLayer, "__call__", lambda self, *a: calls.append(1) or orig(self, *a))
        qm(x)
    assert calls == []
    prog = _programs(qm)[0]
    assert len(prog.native) == 1 + 21 + 2           # quantise, 20 convs + fc, max and average pool
    # 22 uint8 values live one after the other: a ResNet block holds at most 3 (input, its conv1 output,
    # the downsample) plus the one being written
    assert len(prog.buffers) <= 5, len(prog.buffers)


def test_no_program_where_it_does_not_apply():
    qm = _model("mobilenet_v2", 32)                 # depthwise convs: no bound native call
    x = torch.randn(1, 3, 32, 32, generator=_gen(1))
    with torch.no_grad():
        want = qm._run(x)[0]
        got = [qm(x) for _ in range(3)]
    assert _programs(qm) == []
    assert all(torch.equal(g, want) for g in got)
    qm = _model("resnet18", 32)
    for x in (torch.randn(1, 32, 32, 3, generator=_gen(3)).permute(0, 3, 1, 2),      # channels_last
              torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=_gen(3))):
        with torch.no_grad():
            want = qm._run(x)[0]
            got = [qm(x) for _ in range(3)]
        assert all(torch.equal(g, want) for g in got)
    assert _programs(qm) == []


def test_busy_program_falls_back_and_bias_change_rebuilds():
    qm = _model("resnet18", 24)
    x = torch.randn(2, 3, 24, 24, generator=_gen(4))
    with torch.no_grad():
        qm(x)
        qm(x)
        prog = _programs(qm)[0]
        want = qm._run(x)[0]
        with prog.lock:                            # another thread inside this program
            assert torch.equal(qm(x), want)
        # an int32 bias changed in place: a new layout key, so the interpreter, then a new program
        bias = next(iter(qm.biases.values()))
        bias.add_(1000)
        want = qm._run(x)[0]
        assert all(torch.equal(qm(x), want) for _ in range(3))
        assert len(_programs(qm)) == 2


def test_threads_share_a_model():
    qm = _model("resnet18", 24)
    x = torch.randn(1, 3, 24, 24, generator=_gen(5))
    with torch.no_grad():
        want = qm._run(x)[0]
    bad = []

    def work():
        with torch.no_grad():
            for _ in range(20):
                if not torch.equal(qm(x), want):
                    bad.append(1)

    ts = [threading.Thread(target=work) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad


def test_copies_drop_programs():
    qm = _model("resnet18", 24)
    x = torch.randn(1, 3, 24, 24, generator=_gen(6))
    with torch.no_grad():
        for _ in range(3):
            want = qm(x)
        c = copy.deepcopy(qm)
        assert c.__dict__.get("_programs", {}) == {}
        assert all(torch.equal(c(x), want) for _ in range(3))
        assert len(_programs(c)) == 1 and _programs(c)[0].buffers[0].data_ptr() != _programs(qm)[0].buffers[0].data_ptr()


def test_no_program_for_other_plans():
    # an op the program cannot run (a float op between quantised layers) keeps the interpreter
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8 * 6 * 6, 5)

        def forward(self, x):
            return self.fc(torch.flatten(torch.tanh(self.c1(x)), 1))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qm = quantize(Net().eval(), [torch.randn(2, 3, 6, 6, generator=_gen(7))])
    x = torch.randn(2, 3, 6, 6, generator=_gen(8))
    with torch.no_grad():
        want = qm._run(x)[0]
        assert all(torch.equal(qm(x), want) for _ in range(3))
    assert _programs(qm) == [] and _ptq._NO_PROGRAM in qm._programs.values()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_padded_rgb_input_same_bytes(monkeypatch, layout):
    # the stem bound to a 4-channel weight (zero 4th channel) on the image quantised into 4 channels gives
    # the bytes of the 3-channel layer, through the interpreter (both quantisation routes) and the program
    qm = _model("resnet18", 32)
    monkeypatch.setenv("PYIMGCLS_QUANT_PAD_INPUT", "0")
    plain = _model("resnet18", 32)
    assert plain._pad_in == {} and list(qm._pad_in.values()) == [4]
    stem = qm._layers[next(iter(qm._pad_in))][3]
    assert tuple(stem.weight.q.shape) == (64, 4, 7, 7) and not stem.weight.q[:, 3].any()
    x = torch.randn(2, 3, 32, 32, generator=_gen(11))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = plain._run(x)[0]
        assert all(torch.equal(qm(x), want) for _ in range(4))
