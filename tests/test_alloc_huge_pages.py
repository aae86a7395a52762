"""Huge-page advice for large host outputs (pyimgcls/ops/_alloc.py, csrc/bindings/runtime.cpp):
which allocations are advised, that the advice leaves the bytes alone, and the switch."""
import sys

import pytest
import torch

from pyimgcls import _native
from pyimgcls.ops import _alloc


@pytest.fixture
def recorder(monkeypatch):
    calls = []
    monkeypatch.setattr(_alloc, "_advise", lambda ptr, nbytes: calls.append((ptr, nbytes)) or True)
    return calls


def test_only_outputs_of_32_mib_or_more_are_advised(recorder, monkeypatch):
    monkeypatch.delenv("PYIMGCLS_HUGE_PAGES", raising=False)
    small = _alloc.empty((_alloc.HUGE_PAGE_BYTES // 4 - 1,), torch.float32, "cpu")
    assert recorder == []
    big = _alloc.empty((_alloc.HUGE_PAGE_BYTES // 4,), torch.float32, "cpu")
    like = _alloc.empty_like(big)
    new = _alloc.new_empty(small, (3, _alloc.HUGE_PAGE_BYTES // 8))
    assert recorder == [(t.data_ptr(), t.nbytes) for t in (big, like, new)]


def test_switch_turns_the_advice_off(recorder, monkeypatch):
    monkeypatch.setenv("PYIMGCLS_HUGE_PAGES", "0")
    _alloc.empty((_alloc.HUGE_PAGE_BYTES,), torch.uint8, "cpu")
    assert recorder == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise(MADV_HUGEPAGE) is Linux's")
def test_native_advice_keeps_the_bytes_and_is_taken():
    t = torch.arange(3 * (1 << 20), dtype=torch.float32) * 0.5 + 1.0   # 12 MiB: a 2 MiB-aligned interior
    before = t.clone()
    assert _native.C.advise_huge_pages(t.data_ptr(), t.nbytes) is True
    assert torch.equal(t, before)
    assert _native.C.advise_huge_pages(t.data_ptr(), 0) is False          # nothing to advise
    assert _native.C.advise_huge_pages(t.data_ptr() + 1, 4096) is False   # no whole huge page inside
    huge = 1 << 21
    lo = (t.data_ptr() + huge - 1) // huge * huge                          # an aligned 2 MiB page inside t
    assert lo + huge <= t.data_ptr() + t.nbytes
    assert _native.C.advise_huge_pages(lo, huge) is True                   # exactly one whole page
    assert _native.C.advise_huge_pages(lo, huge - 1) is False              # one byte short of it
    assert _native.C.advise_huge_pages(lo + 1, huge) is False              # starts past its first byte
    assert torch.equal(t, before)


def test_large_linear_gradients_are_right_with_the_advice():
    """A weight gradient above the threshold (the path VGG's first classifier layer takes), against
    float64 PyTorch, with poisoning on so an unwritten element would show."""
    from pyimgcls import ops
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4097, generator=g, dtype=torch.float64)
    w = torch.randn(2049, 4097, generator=g, dtype=torch.float64, requires_grad=True)   # 67 MB gradient
    prev = _alloc.poisoning()
    _alloc.set_poison(True)
    try:
        y = ops.linear(x, w)
        y.sum().backward()
    finally:
        _alloc.set_poison(prev)
    w2 = w.detach().clone().requires_grad_()
    torch.nn.functional.linear(x, w2).sum().backward()
    assert w.grad.nbytes >= _alloc.HUGE_PAGE_BYTES
    torch.testing.assert_close(w.grad, w2.grad)
