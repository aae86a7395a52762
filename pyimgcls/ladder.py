"""The study ladder: numbered GEMM and convolution kernels, from the naive loop to production.

Each step is a real, selectable kernel (docs/ladder.md walks through them with measured and
predicted performance):

    import pyimgcls
    pyimgcls.ladder.steps("gemm", backend="cpu")          # list of Step records
    c = pyimgcls.ladder.matmul(a, b, step=3, backend="cpu")
    y = pyimgcls.ladder.conv2d(x, w, bias, stride=1, padding=1, step=2, backend="cpu",
                               activation="relu")

Backends: ``"cpu"`` (csrc/cpu/ladder/), ``"cuda"`` (csrc/cuda/ladder/, CUDA tensors, needs the
compiled CUDA kernels) and ``"triton"`` (triton_kernels/ladder.py, GEMM only). The last CPU step of
each ladder calls the production kernel (it is included, not copied).

These are study kernels: forward only, no autograd, and NOT ``torch.library`` custom ops (use
``pyimgcls.ops`` for the differentiable, compile-friendly ops). Arguments are validated with errors
that name the argument (pyimgcls.errors).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _native, backends
from .errors import ArgumentTypeError, ArgumentValueError
from .ops import _alloc

KINDS = ("gemm", "conv")
LADDER_BACKENDS = tuple(b for b in backends.NAMES if backends.implements(b, "ladder"))
_ACTS = (None, "relu", "relu6")


@dataclass(frozen=True)
class Step:
    """One ladder step. ``layout``: ``"row_major"`` for GEMM; ``"nchw"`` or ``"nhwc"`` for the conv
    input/output; ``weight_layout`` (conv): ``"oihw"`` ([O, C, KH, KW]) or ``"ohwi"``
    ([O, KH, KW, C]); ``needs_sm90a``: CUDA steps that run only on an sm_90a build and device."""

    number: int
    name: str
    description: str
    dtypes: tuple[str, ...]
    layout: str
    weight_layout: str | None = None
    needs_sm90a: bool = False

    @property
    def stem(self) -> str:
        """The step's source file stem, e.g. ``"03_cache_blocking"``."""
        return f"{self.number:02d}_{self.name}"


def _check_kind(kind) -> str:
    if kind not in KINDS:
        raise ArgumentValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def _check_backend(backend) -> str:
    if backend not in LADDER_BACKENDS:
        raise ArgumentValueError(f"backend must be one of {LADDER_BACKENDS}, got {backend!r}")
    return backend


def _from_native(kind: str, records) -> list[Step]:
    out = []
    for r in records:
        if kind == "gemm":
            layout, wl = "row_major", None
        else:
            layout = "nhwc" if r["channels_last"] else "nchw"
            wl = "oihw" if r.get("weight_oihw", not r["channels_last"]) else "ohwi"
        out.append(Step(int(r["step"]), str(r["name"]), str(r["description"]), tuple(r["dtypes"]), layout, wl,
                        bool(r.get("needs_sm90a", False))))
    return out


def steps(kind: str, backend: str = "cpu") -> list[Step]:
    """The steps of ladder ``kind`` ("gemm" | "conv") on ``backend`` ("cpu" | "cuda" | "triton"),
    numbered 1, 2, ... The CPU and CUDA lists come from the C++ step tables (the CUDA list needs a
    build with the CUDA kernels); the Triton list from triton_kernels/ladder.py (GEMM only)."""
    _check_kind(kind)
    _check_backend(backend)
    return _from_native(kind, backends.kernels(backend, "ladder").step_records(kind))


def _get_step(kind: str, step, backend: str) -> Step:
    table = steps(kind, backend)
    if isinstance(step, bool) or not isinstance(step, int):
        raise ArgumentTypeError(f"step must be an int, got {type(step).__name__}")
    if not 1 <= step <= len(table):
        listing = ", ".join(f"{s.number} ({s.name})" for s in table)
        raise ArgumentValueError(f"step: the {backend} {kind} ladder has steps {listing}; got {step}")
    return table[step - 1]


def _check_tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _check_dtype(name: str, t: torch.Tensor, info: Step, backend: str, kind: str) -> None:
    dt = str(t.dtype).replace("torch.", "")
    if dt not in info.dtypes:
        raise ArgumentTypeError(f"{name}: {backend} {kind} ladder step {info.number} ({info.name}) takes "
                                f"{', '.join(info.dtypes)}, got {dt}")


def _check_device(backend: str, device: torch.device, op: str) -> None:
    backends.resolve(backend, device, op)


def matmul(a: torch.Tensor, b: torch.Tensor, *, step: int, backend: str = "cpu") -> torch.Tensor:
    """``a @ b`` for 2-D ``a`` [M, K] and ``b`` [K, N] with ladder step ``step`` of ``backend``.
    Returns a new contiguous [M, N] tensor in the input dtype (fp16/bf16 accumulate in fp32)."""
    _check_backend(backend)
    _check_tensor("a", a)
    _check_tensor("b", b)
    info = _get_step("gemm", step, backend)
    if a.dim() != 2:
        raise ArgumentValueError(f"a must be 2-D [M, K], got shape {tuple(a.shape)}")
    if b.dim() != 2:
        raise ArgumentValueError(f"b must be 2-D [K, N], got shape {tuple(b.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ArgumentValueError(f"b: a is {tuple(a.shape)} and b is {tuple(b.shape)}: a.shape[1] must equal "
                                 "b.shape[0]")
    if a.dtype != b.dtype:
        raise ArgumentTypeError(f"b: dtype {b.dtype} differs from a's {a.dtype}")
    _check_dtype("a", a, info, backend, "gemm")
    if a.device != b.device:
        raise ArgumentValueError(f"b: device {b.device} differs from a's {a.device}")
    _check_device(backend, a.device, "ladder.matmul")
    M, K = a.shape
    N = b.shape[1]
    out = _alloc.empty((M, N), a.dtype, a.device)
    if M == 0 or N == 0:
        return out
    return backends.kernels(backend, "ladder").gemm(step, a, b, out)


def _pair(name: str, v, minimum: int) -> tuple[int, int]:
    if isinstance(v, bool):
        raise ArgumentTypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if isinstance(v, int):
        v = (v, v)
    if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(e, int) and not isinstance(e, bool)
                                                                for e in v)):
        raise ArgumentTypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if min(v) < minimum:
        raise ArgumentValueError(f"{name} must be >= {minimum}, got {tuple(v)}")
    return int(v[0]), int(v[1])


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0, *,
           step: int, backend: str = "cpu", activation: str | None = None) -> torch.Tensor:
    """``act(F.conv2d(input, weight, bias, stride, padding))`` (groups 1, dilation 1) with conv
    ladder step ``step`` of ``backend`` ("cpu" | "cuda"). ``input`` is 4-D (or 3-D unbatched) NCHW
    in either memory format; it is converted to the layout the step takes and the result comes back
    in the input's memory format. ``activation``: None | "relu" | "relu6"."""
    _check_backend(backend)
    _check_tensor("input", input)
    _check_tensor("weight", weight)
    info = _get_step("conv", step, backend)
    if activation not in _ACTS:
        raise ArgumentValueError(f"activation must be one of {_ACTS}, got {activation!r}")
    unbatched = input.dim() == 3
    if input.dim() not in (3, 4):
        raise ArgumentValueError(f"input must be 4-D [N, C, H, W] or 3-D [C, H, W], got shape {tuple(input.shape)}")
    x = input.unsqueeze(0) if unbatched else input
    if weight.dim() != 4:
        raise ArgumentValueError(f"weight must be 4-D [O, C, KH, KW], got shape {tuple(weight.shape)}")
    N, C, H, W = x.shape
    O, Cw, KH, KW = weight.shape
    if Cw != C:
        raise ArgumentValueError(f"weight: expected {C} input channels (input.shape[1]) in weight.shape[1], "
                                 f"got {Cw} (groups=1)")
    if KH < 1 or KW < 1 or O < 1:
        raise ArgumentValueError(f"weight: shape {tuple(weight.shape)} has an empty dimension")
    if bias is not None:
        _check_tensor("bias", bias)
        if bias.dim() != 1 or bias.shape[0] != O:
            raise ArgumentValueError(f"bias must be 1-D of size {O} (weight.shape[0]), got shape {tuple(bias.shape)}")
    sh, sw = _pair("stride", stride, 1)
    ph, pw = _pair("padding", padding, 0)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != input.dtype:
            raise ArgumentTypeError(f"{name}: dtype {t.dtype} differs from input's {input.dtype}")
    _check_dtype("input", input, info, backend, "conv")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != input.device:
            raise ArgumentValueError(f"{name}: device {t.device} differs from input's {input.device}")
    _check_device(backend, input.device, "ladder.conv2d")
    if H + 2 * ph < KH or W + 2 * pw < KW:
        raise ArgumentValueError(f"input: padded size ({H + 2 * ph} x {W + 2 * pw}) is smaller than the kernel "
                                 f"({KH} x {KW})")
    if C == 0:
        raise ArgumentValueError("input: has 0 channels")
    OH = (H + 2 * ph - KH) // sh + 1
    OW = (W + 2 * pw - KW) // sw + 1
    in_cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    nhwc = info.layout == "nhwc"
    dev = x.device
    if nhwc:
        xs = x.permute(0, 2, 3, 1).contiguous()                       # [N, H, W, C]
        ys = _alloc.empty((N, OH, OW, O), x.dtype, dev)               # [N, OH, OW, O]
    else:
        xs = x.contiguous()                                           # [N, C, H, W]
        ys = _alloc.empty((N, O, OH, OW), x.dtype, dev)               # [N, O, OH, OW]
    ws = weight.contiguous() if info.weight_layout == "oihw" else weight.permute(0, 2, 3, 1).contiguous()
    bs = bias.contiguous() if bias is not None else None
    if N > 0:
        backends.kernels(backend, "ladder").conv2d(step, xs, ws, bs, ys, (N, C, H, W, O, KH, KW, OH, OW), (sh, sw),
                                                   (ph, pw), _native.ACT_CODES[activation])
    y = ys.permute(0, 3, 1, 2) if nhwc else ys                        # logical [N, O, OH, OW]
    if in_cl:
        y = y.contiguous(memory_format=torch.channels_last)
    else:
        y = y.contiguous()
    return y.squeeze(0) if unbatched else y
