"""The backend grid: one table of backends, one module per (backend, op family).

``pyimgcls/backends/<backend>/<family>.py`` implements the kernel entry points of one op family
(``gemm``, ``conv``, ``pool``, ``batchnorm``, ``softmax_xent``) on one backend, with the same
signature in every backend folder; it mirrors ``csrc/<backend>/<family>.*`` / ``triton_kernels/
<family>.py``. The op files (``pyimgcls/ops/<family>.py``) check arguments, compute shapes and wire
autograd, and name no backend: they ask :func:`kernels` for the family module of the backend the
call resolved to, and call its entry points. ``docs/architecture.md`` walks one call through the
layers and lists the steps to add an op or a backend.

This module holds the table (:data:`TABLE`: names, what runs, devices, dtypes, readiness) and the
resolution of the user's choice (``auto`` or a name) to the backend that runs an op.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import os
from types import ModuleType
from typing import Callable

# Aliased: importing the subpackage pyimgcls.backends.torch binds the name ``torch`` in this
# package's namespace, which would shadow the library.
import torch as _torch

from .. import _native
from ..errors import BackendError

_ALL_FLOAT = (_torch.float32, _torch.float64, _torch.float16, _torch.bfloat16)


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken triton install means "not available", not a crash at import
        return False
    return True


def _gpu_visible() -> bool:
    return _torch.cuda.is_available() and _torch.cuda.device_count() > 0


def cuda_backend_ready() -> bool:
    return _native.cuda_kernels_compiled() and _gpu_visible() and _native.cuda_device_count() > 0


def triton_backend_ready() -> bool:
    return triton_importable() and (_gpu_visible() or triton_interpreting())


def _cuda_missing(op: str) -> str | None:
    if not _native.cuda_kernels_compiled():
        return f"{op}: backend 'cuda' is unavailable: pyimgcls was built without nvcc"
    return None


def _triton_missing(op: str) -> str | None:
    if not triton_importable():
        return f"{op}: backend 'triton' is unavailable: triton is not importable"
    return None


@dataclasses.dataclass(frozen=True)
class Backend:
    """One row of the backend table."""
    name: str
    summary: str                      # what runs (training logs, CLI help)
    devices: tuple[str, ...]          # tensor device types served
    dtypes: tuple[_torch.dtype, ...]  # dtypes accepted (others raise BackendError naming the argument)
    ready: Callable[[], bool]         # can run right now on this machine (available_backends)
    missing: Callable[[str], str | None] = lambda op: None   # why it cannot run at all, or None
    auto_for: tuple[str, ...] = ()    # device types for which "auto" may pick it (first ready row wins)
    interpreted_devices: tuple[str, ...] = ()   # devices served only under TRITON_INTERPRET=1
    yardstick: bool = False           # plain PyTorch: the reference, never picked by "auto"
    # docs/architecture.md: float16/bfloat16 inputs computed in float32 and returned in their dtype (the family
    # modules do the casts; op files read this where it changes a saved tensor's dtype)
    upcasts_low_precision: bool = False

    def serves(self, device_type: str) -> bool:
        return device_type in self.devices or (device_type in self.interpreted_devices and triton_interpreting())


# Table order is the "auto" priority.
TABLE: dict[str, Backend] = {b.name: b for b in (
    Backend("cuda", "pyimgcls CUDA C++ kernels", ("cuda",),
            (_torch.float32, _torch.float16, _torch.bfloat16), cuda_backend_ready, _cuda_missing, auto_for=("cuda",)),
    Backend("triton", "pyimgcls Triton kernels", ("cuda",), _ALL_FLOAT, triton_backend_ready,
            _triton_missing, auto_for=("cuda",), interpreted_devices=("cpu",)),
    Backend("cpu", "pyimgcls C++ CPU kernels", ("cpu",), _ALL_FLOAT, lambda: True, auto_for=("cpu",),
            upcasts_low_precision=True),
    Backend("torch", "plain PyTorch reference (not ours)", ("cpu", "cuda"), _ALL_FLOAT,
            lambda: True, yardstick=True),
)}

NAMES: tuple[str, ...] = tuple(TABLE)            # concrete backends
CHOICES: tuple[str, ...] = ("auto", *NAMES)      # what users may select

FAMILIES = ("gemm", "conv", "pool", "batchnorm", "softmax_xent", "ladder", "quant", "distill", "se")
FAMILIES += ("sparse",)  # 2:4 sparse weights (cpu, cuda, torch; triton: triton_kernels/sparse.py)

_modules: dict[tuple[str, str], ModuleType] = {}


def family_module(backend: str, family: str) -> ModuleType:
    """The module implementing ``family``'s kernel entry points on ``backend`` (imported once)."""
    mod = _modules.get((backend, family))
    if mod is None:
        if backend not in TABLE or family not in FAMILIES:
            raise ValueError(f"unknown backend/family {backend!r}/{family!r}")
        mod = _modules[(backend, family)] = importlib.import_module(f"{__name__}.{backend}.{family}")
    return mod


def kernels(backend: str, family: str) -> ModuleType:
    """What the op files call: :func:`family_module`, or the explain recorder's stand-in for it."""
    mod = family_module(backend, family)
    if _recorder is not None:
        return _recorder.family(backend, family, mod)
    return mod


# pyimgcls.explain runs a model on "meta" tensors (shapes, strides and dtypes, no data) with a
# recorder installed here: resolve() answers the backend being explained for meta tensors, and
# kernels() hands out the recorder's stand-in for the family module, which asks the real module's
# plan_<entry>() what it would launch and computes the outputs' shapes with the torch yardstick on
# the meta tensors. Every op runs its real checks, layouts and autograd on the way (nothing is a
# second copy of the dispatch). Only explain() installs one; it is process-wide and not re-entrant.
_recorder = None


def set_recorder(recorder) -> None:
    global _recorder
    _recorder = recorder


def implements(backend: str, family: str) -> bool:
    """Whether ``backend`` has a module for ``family`` (every backend has the op families; the study
    ladder exists on cpu, cuda and triton)."""
    return importlib.util.find_spec(f"{__name__}.{backend}.{family}") is not None


def available() -> list[str]:
    """Backends this install can run right now, in table order."""
    return [b.name for b in TABLE.values() if b.ready()]


_DEVICE_WORDS = {"cpu": "CPU", "cuda": "CUDA"}


def _device_error(b: Backend, device: _torch.device, op: str) -> BackendError:
    served = " or ".join(_DEVICE_WORDS.get(d, d) for d in b.devices)
    extra = "".join(f" (or on {_DEVICE_WORDS.get(d, d)} tensors under TRITON_INTERPRET=1)"
                    for d in b.interpreted_devices)
    only = "" if extra else " only"
    return BackendError(f"{op}: backend '{b.name}' runs on {served} tensors{only}{extra}, got tensors on {device}")


def resolve(choice: str, device: _torch.device, op: str) -> str:
    """The concrete backend that runs ``op`` on tensors of ``device`` when the user chose ``choice``
    ("auto" or a name); raises BackendError saying why it cannot."""
    kind = device.type
    if _recorder is not None and kind == "meta":
        return _recorder.backend
    if choice == "auto":
        candidates = [b for b in TABLE.values() if kind in b.auto_for]
        for b in candidates:
            if b.ready():
                return b.name
        if candidates:
            raise BackendError(
                f"{op}: no pyimgcls GPU backend can run on {device}: the CUDA kernels were not "
                "compiled and triton is not importable; reinstall with nvcc on PATH or install triton")
        raise BackendError(f"{op}: pyimgcls has no backend for tensors on {device}")
    b = TABLE[choice]
    if not b.serves(kind):
        raise _device_error(b, device, op)
    why = b.missing(op)
    if why is not None:
        raise BackendError(why)
    return b.name


def check_dtype(backend: str, x: _torch.Tensor, name: str, op: str) -> None:
    """The backend's dtypes (the table); float64 on CUDA kernels is the case that occurs."""
    b = TABLE[backend]
    if x.dtype not in b.dtypes:
        others = ", ".join(str(d).replace("torch.", "") for d in b.dtypes)
        raise BackendError(f"{op}: backend '{backend}' does not take {str(x.dtype).replace('torch.', '')} "
                           f"(argument '{name}'); use {others}, or the 'cpu' backend")
