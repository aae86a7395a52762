"""Output allocation for kernels. With poisoning on (tests, ``PYIMGCLS_POISON=1``), every output is
filled with NaN (or the dtype's max for integers) before the kernel runs, so an element the kernel
forgot to write shows up in the comparison instead of passing by luck."""
from __future__ import annotations

import os

import torch

_poison = os.environ.get("PYIMGCLS_POISON", "0") == "1"


def set_poison(on: bool) -> None:
    global _poison
    _poison = bool(on)


def poisoning() -> bool:
    return _poison


def empty(shape, dtype: torch.dtype, device, memory_format=torch.contiguous_format) -> torch.Tensor:
    return _poisoned(torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format))


def _poisoned(out: torch.Tensor) -> torch.Tensor:
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
