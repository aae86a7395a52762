"""Memory-format vocabulary shared by the op families: which layout PyTorch gives a result, and the
one canonical layout the kernels read and write."""
from __future__ import annotations

import torch


def suggests_channels_last(t: torch.Tensor) -> bool:
    """``t.suggest_memory_format() == torch.channels_last`` for a 4-D tensor: a port of c10's
    is_channels_last_strides_2d, the rule PyTorch's convolution uses to pick its output format."""
    if t.dim() != 4:
        return False
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return False
    smallest = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < smallest:
            return False
        # ambiguous N111 / N11W cases default to NCHW, as in c10
        if d == 0 and smallest == strides[1]:
            return False
        smallest = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return True


def output_memory_format(input: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """PyTorch's conv2d output format: channels_last if the input or the weight suggests it."""
    if suggests_channels_last(input) or suggests_channels_last(weight):
        return torch.channels_last
    return torch.contiguous_format


def format_of(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if suggests_channels_last(t) else torch.contiguous_format


def match_format(t: torch.Tensor | None, fmt: torch.memory_format) -> torch.Tensor | None:
    """``t`` with exactly the strides ``torch.empty(t.shape, memory_format=fmt)`` has, copied only when
    needed. (``Tensor.contiguous(memory_format=...)`` keeps the old strides of ambiguous shapes such
    as C == 1 or H == W == 1; the kernels and the fake implementations need one canonical layout.)"""
    if t is None:
        return None
    want = torch.empty(t.shape, dtype=t.dtype, device="meta", memory_format=fmt).stride()
    if t.stride() == want:
        return t
    return torch.empty_strided(t.shape, want, dtype=t.dtype, device=t.device).copy_(t)
