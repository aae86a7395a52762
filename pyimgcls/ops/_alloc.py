"""Output allocation for kernels. With poisoning on (tests, ``PYIMGCLS_POISON=1``), every output is
filled with NaN (or the dtype's max for integers) before the kernel runs, so an element the kernel
forgot to write shows up in the comparison instead of passing by luck.

Host outputs of at least ``HUGE_PAGE_BYTES`` are advised to use transparent huge pages
(``madvise(MADV_HUGEPAGE)``, Linux) before the kernel's first write: glibc maps blocks that large
afresh on every allocation, and writing a fresh mapping faults each 4 KiB page in (VGG-11's 411 MB
first-layer weight gradient: 80 ms of a batch-1 training step in page faults, 13-22 ms with the
advice). PyTorch offers the same for its own allocations behind ``THP_MEM_ALLOC_ENABLE=1``.
``PYIMGCLS_HUGE_PAGES=0`` turns the advice off (on a machine where compacting memory for huge
pages stalls)."""
from __future__ import annotations

import os

import torch

_poison = os.environ.get("PYIMGCLS_POISON", "0") == "1"
# glibc's largest dynamic mmap threshold (32 MiB on 64-bit): blocks of this size or more are always
# fresh mappings, whose untouched pages the advice can still shape; smaller ones come from the heap.
HUGE_PAGE_BYTES = 32 << 20
_advise = None


def set_poison(on: bool) -> None:
    global _poison
    _poison = bool(on)


def poisoning() -> bool:
    return _poison


def empty(shape, dtype: torch.dtype, device, memory_format=torch.contiguous_format) -> torch.Tensor:
    return _poisoned(torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format))


def _poisoned(out: torch.Tensor) -> torch.Tensor:
    if out.nbytes >= HUGE_PAGE_BYTES and out.device.type == "cpu":
        _advise_huge(out)
    if _poison:
        out.fill_(float("nan") if out.is_floating_point() else torch.iinfo(out.dtype).max)
    return out


def empty_like(x: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(x)``: x's layout when x is dense, else contiguous. Cheaper than
    :func:`empty` (0.86 against 1.5 us per call measured), which counts for small ops."""
    return _poisoned(torch.empty_like(x))


def new_empty(x: torch.Tensor, shape) -> torch.Tensor:
    """A contiguous tensor of ``shape`` with x's dtype and device (``x.new_empty``, ~0.3 us cheaper
    than :func:`empty`)."""
    return _poisoned(x.new_empty(shape))


def _advise_huge(out: torch.Tensor) -> None:
    global _advise
    if os.environ.get("PYIMGCLS_HUGE_PAGES", "1") == "0":   # read per call (rare: >= 32 MiB only)
        return
    if _advise is None:
        from .. import _native
        _advise = getattr(_native.C, "advise_huge_pages", None) or (lambda ptr, nbytes: False)
    _advise(out.data_ptr(), out.nbytes)
