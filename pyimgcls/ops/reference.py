"""Plain-PyTorch reference implementations (ATen / cuBLAS / cuDNN): the yardstick every kernel is
compared against. Selected only explicitly, with backend "torch"; never a silent fallback."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._native import ACT_NAMES


def activation(x: torch.Tensor, act: int) -> torch.Tensor:
    name = ACT_NAMES[act]
    if name == "relu":
        return F.relu(x)
    if name == "relu6":
        return F.relu6(x)
    return x


def gemm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, act: int) -> torch.Tensor:
    out = a @ b
    if bias is not None:
        out = out + bias
    return activation(out, act).contiguous()


def activation_backward(grad: torch.Tensor, out: torch.Tensor | None, act: int) -> torch.Tensor:
    name = ACT_NAMES[act]
    if name == "relu":
        return grad * (out > 0).to(grad.dtype)
    if name == "relu6":
        return grad * ((out > 0) & (out < 6)).to(grad.dtype)
    return grad
