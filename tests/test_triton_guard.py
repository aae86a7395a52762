"""The Triton backend's device guard (pyimgcls/backends/triton/__init__.py::on_tensor_device): every
kernel entry point makes its first CUDA tensor's device current for the call and restores the previous
one after. CPU-testable: fake CUDA tensors (FakeTensorMode, no storage) and a recording stand-in for
torch.cuda.device prove the guard is entered, with which device, around which call.
Test: pytest tests/test_triton_guard.py -q"""
from __future__ import annotations

import inspect

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import pyimgcls
from pyimgcls import backends
from pyimgcls.backends.triton import on_tensor_device

# Entry points that take no tensor and launch nothing.
NOT_LAUNCHERS = {("ladder", "step_records")}


class _Entered(Exception):
    pass


class _Recorder:
    """Stand-in for torch.cuda.device: logs enter/exit with the device it was given."""
    log: list = []

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        _Recorder.log.append(("enter", self.device))
        return self

    def __exit__(self, *exc):
        _Recorder.log.append(("exit", self.device))
        return False


class _StopOnEnter(_Recorder):
    """Stand-in that stops the call as the guard is entered, so the (GPU-only) body never runs."""

    def __enter__(self):
        raise _Entered(self.device)


def _fake_cuda(index=1):
    # With a real CUDA present, FakeTensorMode initialises the device it is given, so on a machine with
    # fewer GPUs the index is cut to the last one there (the device the guard must pick is the tensor's)
    if torch.cuda.is_available():
        index = min(index, torch.cuda.device_count() - 1)
    with FakeTensorMode():
        return torch.empty(2, 3, device=f"cuda:{index}")


def _entry_points():
    for family in backends.FAMILIES:
        mod = backends.kernels("triton", family)
        for name, fn in inspect.getmembers(mod, inspect.isfunction):
            if (fn.__module__ == mod.__name__ and not name.startswith(("_", "plan_"))   # plan_*: launch nothing
                    and (family, name) not in NOT_LAUNCHERS):
                yield pytest.param(fn, id=f"{family}.{name}")


@pytest.mark.parametrize("fn", list(_entry_points()))
def test_every_entry_point_enters_the_guard_first(fn, monkeypatch):
    # Every parameter gets a CPU tensor except the last, a CUDA tensor on cuda:1: the guard must pick
    # that device, and enter before the body runs (the body would fail on these arguments).
    monkeypatch.setattr(torch.cuda, "device", _StopOnEnter)
    n = len(inspect.signature(fn).parameters)
    last = _fake_cuda(1)
    args = [torch.zeros(1)] * (n - 1) + [last]
    with pytest.raises(_Entered) as e:
        fn(*args)
    assert e.value.args[0] == last.device


def test_guard_holds_the_device_for_the_call_and_leaves_it_after(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device", _Recorder)
    _Recorder.log = []
    seen = []

    @on_tensor_device
    def body(a, *, b):
        seen.append(list(_Recorder.log))
        return "result"

    b = _fake_cuda(3)
    assert body(torch.zeros(1), b=b) == "result"  # found among keyword arguments too
    assert seen == [[("enter", b.device)]]
    assert _Recorder.log == [("enter", b.device), ("exit", b.device)]

    @on_tensor_device
    def fails(a):
        raise RuntimeError("launch failed")

    _Recorder.log = []
    a = _fake_cuda(2)
    with pytest.raises(RuntimeError, match="launch failed"):
        fails(a)
    assert _Recorder.log == [("enter", a.device), ("exit", a.device)]


def test_guard_keeps_the_wrapped_signature():
    mod = backends.kernels("triton", "pool")
    assert mod.max_pool2d.device_guarded
    assert list(inspect.signature(mod.max_pool2d).parameters)[:2] == ["x", "kernel"]


@pytest.mark.skipif(not backends.triton_importable(), reason="triton is not importable")
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path under the interpreter")
def test_no_guard_for_cpu_tensors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device", _StopOnEnter)
    x = torch.randn(1, 3, 5, 7, dtype=torch.float64)
    with pyimgcls.use_backend("triton"):
        out = pyimgcls.ops.max_pool2d(x, 2)
    torch.testing.assert_close(out, torch.nn.functional.max_pool2d(x, 2), rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_launch_on_the_tensors_device_and_current_device_kept():
    torch.cuda.set_device(0)
    x = torch.randn(2, 3, 9, 11, device="cuda:1")
    with pyimgcls.use_backend("triton"):
        out = pyimgcls.ops.max_pool2d(x, 2)
    assert torch.cuda.current_device() == 0
    torch.testing.assert_close(out, torch.nn.functional.max_pool2d(x, 2), rtol=0, atol=0)
