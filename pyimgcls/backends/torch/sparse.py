"""2:4 sparse family in plain PyTorch (the yardstick): decompress, then F.linear.
Entry points: pyimgcls/backends/cpu/sparse.py."""
from __future__ import annotations

import torch

from ...ops.sparse import decompress_2_4


def sparse_linear(x, values, metadata, bias):
    return torch.nn.functional.linear(x, decompress_2_4(values, metadata), bias)
