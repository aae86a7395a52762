"""Argument checks shared by every op family. Each message names the offending argument."""
from __future__ import annotations


import torch

from .. import _backend, backends
from ..errors import ArgumentTypeError, ArgumentValueError

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
ACTIVATIONS = (None, "relu", "relu6", "silu", "hardswish", "sigmoid", "hardsigmoid")
# Activations whose backward reads the pre-activation (silu_backward, hardswish_backward,
# hardsigmoid_backward in ATen); the others read their output (csrc/common.h act_grad_reads_input).
ACT_GRAD_READS_INPUT = ("silu", "hardswish", "hardsigmoid")


def check_tensor(x, name: str, op: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"{op}: argument '{name}' must be a Tensor, got {type(x).__name__}")
    return x


def check_float(x: torch.Tensor, name: str, op: str) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise ArgumentTypeError(
            f"{op}: argument '{name}' must be a floating tensor (float32, float64, float16, bfloat16), "
            f"got {x.dtype}")


def check_same_dtype(ref: torch.Tensor, ref_name: str, x: torch.Tensor, name: str, op: str) -> None:
    if x.dtype != ref.dtype:
        raise ArgumentTypeError(
            f"{op}: argument '{name}' has dtype {x.dtype} but '{ref_name}' has dtype {ref.dtype}; "
            "they must match")


def check_same_device(ref: torch.Tensor, ref_name: str, x: torch.Tensor, name: str, op: str) -> None:
    if x.device != ref.device:
        raise ArgumentValueError(
            f"{op}: argument '{name}' is on {x.device} but '{ref_name}' is on {ref.device}; "
            "expected all tensors on the same device")


def check_dim(x: torch.Tensor, name: str, op: str, dims) -> None:
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if x.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ArgumentValueError(f"{op}: argument '{name}' must be {want}, got {x.dim()}-D of shape {tuple(x.shape)}")


def check_activation(activation, op: str):
    if activation not in ACTIVATIONS:
        raise ArgumentValueError(f"{op}: argument 'activation' must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def check_backend_dtype(backend: str, x: torch.Tensor, name: str, op: str) -> None:
    """Dtypes each backend computes in (the backend table, docs/architecture.md): CUDA kernels have no float64."""
    backends.check_dtype(backend, x, name, op)


def autocast_dtype(device_type: str):
    """The autocast dtype if autocast is on for ``device_type``, else None (PyTorch's AMP rule:
    conv / linear / matmul run in the autocast dtype)."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


# Autocast casts every call, parameters included. A cache of parameter casts keyed by the version
# counter was measured (~5 % of a ResNet-18 bf16 forward) and not kept: writes through ``param.data``
# bypass the version counter, and a stale cast would be a silent wrong result. (The float32 Winograd
# filter cache, pyimgcls/backends/cpu/conv.py, checks a fingerprint of the weight's bytes instead;
# that costs as much as the cast itself, so it buys nothing here.)
def _cast(t: torch.Tensor, dtype) -> torch.Tensor:
    return t.to(dtype)


def prepare(op, tensors):
    """Validate dtype/device of (name, tensor-or-None) pairs, apply autocast, pick the backend."""
    first_name, first = tensors[0]
    for name, t in tensors:
        if t is None:
            continue
        check_tensor(t, name, op)
        check_float(t, name, op)
    for name, t in tensors[1:]:
        if t is not None:
            check_same_device(first, first_name, t, name, op)
    cast = autocast_dtype(first.device.type)
    if cast is not None:
        tensors = [(n, None if t is None else _cast(t, cast)) for n, t in tensors]
        first = tensors[0][1]
    for name, t in tensors[1:]:
        if t is not None:
            check_same_dtype(first, first_name, t, name, op)
    backend = _backend.resolve(first.device, op)
    for name, t in tensors:
        if t is not None:
            check_backend_dtype(backend, t, name, op)
    return backend, [t for _, t in tensors]
