"""2:4 semi-structured sparse weights: the compressed format and ``sparse_linear``.

``compress_2_4(weight)`` turns a 2:4 sparse weight (at most 2 non-zeros in every 4 consecutive
elements along the input dimension: ``pyimgcls.pruning.prune_2_4`` / ``mask_2_4`` make one) of a
Linear [N, K] or 1x1 Conv2d [N, K, 1, 1] into ``(values, metadata)``:

* ``values`` [N, K/2], the weight's dtype: the 2 kept elements of every group of 4, in k order;
* ``metadata`` [N, ceil(K/16)] int16 (bit patterns of uint16 words): word w of row n holds, in nibble
  j (bits 4j..4j+3), ``i0 | i1 << 2``, the in-group indices (i0 < i1) of group 4w + j's kept elements;
  nibbles past K are 0x4. These are the 16-bit halves of the metadata register of PTX
  ``mma.sp.m16n8k32`` (.f16/.bf16, sparsity selector 0), which the CUDA kernel loads as they are
  (csrc/cuda/sparse.h). A group with fewer than 2 non-zeros keeps its lowest-index zeros.

``sparse_linear(input, values, metadata, bias=None)`` = ``input @ W^T + bias`` ([*, K] -> [*, N]) with
W given compressed: on cpu (C++ kernel doing the sparse multiply-adds), cuda (float16 / bfloat16 on
the sparse tensor cores, sm_80+) and torch (decompress + F.linear, the yardstick). It is an inference
op: it has no backward, and refuses inputs that require a gradient (fine-tune with the masks of
``prune_2_4`` instead)."""
from __future__ import annotations

import torch

from .. import backends as _grid
from ..errors import ArgumentTypeError, ArgumentValueError, BackendError
from . import _checks, _eager

_PAD_NIBBLE = 0x4


def _weight_matrix(weight, op: str) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise ArgumentTypeError(f"{op}: argument 'weight' must be a float tensor, got "
                                + (str(weight.dtype) if isinstance(weight, torch.Tensor) else type(weight).__name__))
    if weight.dim() == 4 and weight.shape[2:] == (1, 1):
        weight = weight.reshape(weight.shape[0], weight.shape[1])
    if weight.dim() != 2:
        raise ArgumentValueError(f"{op}: argument 'weight' must be [N, K] (Linear) or [N, K, 1, 1] (1x1 Conv2d), "
                                 f"got shape {tuple(weight.shape)}")
    if weight.shape[1] % 4 or weight.shape[1] == 0:
        raise ArgumentValueError(f"{op}: argument 'weight' needs a positive multiple of 4 input features, "
                                 f"got shape {tuple(weight.shape)}")
    return weight


def compress_2_4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [N, K/2], metadata [N, ceil(K/16)] int16) of a 2:4 sparse weight (module docstring)."""
    op = "compress_2_4"
    w = _weight_matrix(weight, op).detach()
    N, K = w.shape
    g = w.reshape(N, K // 4, 4)
    nz = g != 0
    if bool((nz.sum(-1) > 2).any()):
        n, grp = (nz.sum(-1) > 2).nonzero()[0].tolist()
        raise ArgumentValueError(f"{op}: argument 'weight' is not 2:4 sparse: row {n}, elements {4 * grp}..{4 * grp + 3} "
                                 f"hold more than 2 non-zeros (prune with pyimgcls.pruning.mask_2_4 first)")
    # Non-zeros first (stable: lower index first among equals), then the two chosen in ascending order.
    pick = torch.sort((~nz).to(torch.int8), dim=-1, stable=True).indices[..., :2]
    pick = torch.sort(pick, dim=-1).values
    values = g.gather(-1, pick).reshape(N, K // 2).contiguous()
    nib = (pick[..., 0] | (pick[..., 1] << 2)).to(torch.int32)          # [N, K/4]
    words = -(-K // 16)
    pad = words * 4 - K // 4
    if pad:
        nib = torch.cat([nib, nib.new_full((N, pad), _PAD_NIBBLE)], 1)
    shifts = torch.tensor([0, 4, 8, 12], dtype=torch.int32, device=w.device)
    word = (nib.reshape(N, words, 4) << shifts).sum(-1)                  # 0..0xFFFF
    meta = torch.where(word >= 0x8000, word - 0x10000, word).to(torch.int16).contiguous()
    return values, meta


def _check_compressed(values, metadata, op: str) -> int:
    """K of a (values, metadata) pair, or a clear error naming the argument."""
    if not isinstance(values, torch.Tensor) or not values.is_floating_point() or values.dim() != 2:
        raise ArgumentTypeError(f"{op}: argument 'values' must be a 2-D float tensor [N, K/2] (see compress_2_4)")
    if not isinstance(metadata, torch.Tensor) or metadata.dtype != torch.int16 or metadata.dim() != 2:
        raise ArgumentTypeError(f"{op}: argument 'metadata' must be a 2-D int16 tensor [N, ceil(K/16)] "
                                "(see compress_2_4)")
    N, half = values.shape
    K = 2 * half
    if half % 2 or half == 0:
        raise ArgumentValueError(f"{op}: argument 'values' must have K/2 columns with K a positive multiple of 4, "
                                 f"got shape {tuple(values.shape)}")
    if tuple(metadata.shape) != (N, -(-K // 16)):
        raise ArgumentValueError(f"{op}: argument 'metadata' must have shape ({N}, {-(-K // 16)}) for values "
                                 f"{tuple(values.shape)}, got {tuple(metadata.shape)}")
    if metadata.device != values.device:
        raise ArgumentValueError(f"{op}: argument 'metadata' is on {metadata.device} but values on {values.device}")
    return K


def decompress_2_4(values: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
    """The dense [N, K] weight of a (values, metadata) pair (the inverse of compress_2_4)."""
    op = "decompress_2_4"
    K = _check_compressed(values, metadata, op)
    N = values.shape[0]
    word = metadata.to(torch.int32) & 0xFFFF
    shifts = torch.tensor([0, 4, 8, 12], dtype=torch.int32, device=values.device)
    nib = ((word.unsqueeze(-1) >> shifts) & 0xF).reshape(N, -1)[:, : K // 4]
    idx = torch.stack([nib & 3, nib >> 2], -1).to(torch.int64)            # [N, K/4, 2]
    if bool((idx[..., 0] >= idx[..., 1]).any()):
        raise ArgumentValueError(f"{op}: argument 'metadata' holds an invalid index pair (i0 >= i1)")
    dense = values.new_zeros(N, K // 4, 4)
    dense.scatter_(-1, idx, values.reshape(N, K // 4, 2))
    return dense.reshape(N, K)


def _forward(x, values, metadata, bias, backend):
    if x.storage_offset() % 2:   # the CUDA kernel reads element pairs as 32-bit words
        x = x.clone(memory_format=torch.contiguous_format)
    return _grid.kernels(backend, "sparse").sparse_linear(x, values, metadata, bias)


# The custom op torch.compile traces and register_fake describes (no autograd: an inference op); plain
# eager calls skip the dispatcher (ops/_eager.py) and run _forward directly.
@torch.library.custom_op("pyimgcls::sparse_linear", mutates_args=())
def _sparse_linear_op(x: torch.Tensor, values: torch.Tensor, metadata: torch.Tensor, bias: torch.Tensor | None,
                      backend: str) -> torch.Tensor:
    return _forward(x, values, metadata, bias, backend)


@_sparse_linear_op.register_fake
def _(x, values, metadata, bias, backend):
    return x.new_empty((x.shape[0], values.shape[0]))


def sparse_linear(input: torch.Tensor, values: torch.Tensor, metadata: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """``input @ W^T + bias`` ([*, K] -> [*, N]) with W 2:4 compressed (module docstring)."""
    op = "sparse_linear"
    if not isinstance(input, torch.Tensor):
        raise ArgumentTypeError(f"{op}: argument 'input' must be a Tensor, got {type(input).__name__}")
    K = _check_compressed(values, metadata, op)
    if input.dim() < 1 or input.shape[-1] != K:
        raise ArgumentValueError(f"{op}: argument 'input' must have last dimension {K} (2 x values.shape[1]), "
                                 f"got shape {tuple(input.shape)}")
    N = values.shape[0]
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (N,)):
        raise ArgumentValueError(f"{op}: argument 'bias' must be None or a tensor of shape ({N},), got "
                                 + (str(tuple(bias.shape)) if isinstance(bias, torch.Tensor) else type(bias).__name__))
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, values, bias)):
        raise ArgumentValueError(f"{op}: an inference op without a backward; an argument requires grad (run under "
                                 "torch.no_grad(), or fine-tune with pyimgcls.pruning.prune_2_4 masks)")
    backend, (x, v, b) = _checks.prepare(op, [("input", input), ("values", values), ("bias", bias)])
    if metadata.device != x.device:
        raise ArgumentValueError(f"{op}: argument 'metadata' is on {metadata.device} but input is on {x.device}")
    if not _grid.implements(backend, "sparse"):
        raise BackendError(f"{op}: backend '{backend}' has no 2:4 sparse kernels yet; use 'cpu', 'cuda' or 'torch'")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) != K):
        x2 = x2.contiguous()
    args = (x2, v.contiguous(), metadata.contiguous(), None if b is None else b.contiguous(), backend)
    out = _forward(*args) if _eager.plain_eager(*args[:4]) else _sparse_linear_op(*args)
    return out.reshape(*lead, N)


__all__ = ["compress_2_4", "decompress_2_4", "sparse_linear"]
