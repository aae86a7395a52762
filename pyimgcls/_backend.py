"""Backend selection: which implementation an op runs.

Names: "cuda" (our CUDA C++), "triton" (our Triton), "cpu" (our C++), "torch" (plain PyTorch, the
yardstick) and "auto" (default: CUDA tensors -> "cuda" when compiled, else "triton"; CPU tensors ->
"cpu"). A backend that cannot serve the tensors' device raises ``BackendError``; nothing falls back
silently, and "auto" never picks "torch".
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading

import torch

from . import _native
from .errors import BackendError

BACKENDS = ("auto", "cuda", "triton", "cpu", "torch")

_state = threading.local()
_default = "auto"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Select the backend for every following op call in this process (all threads)."""
    global _default
    _default = _check_name(name)


def get_backend() -> str:
    """The backend in force for this thread: the innermost ``use_backend`` or ``set_backend``."""
    # Every op call asks this; while no thread is inside use_backend() (the usual case) it answers
    # without touching the thread-local stack (a threading.local lookup costs ~0.4 us).
    if _open_contexts:
        stack = getattr(_state, "stack", None)
        if stack:
            return stack[-1]
    return _default


_open_contexts = 0          # use_backend() blocks open in any thread
_open_lock = threading.Lock()


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager selecting a backend for the ops called inside it (this thread only)."""
    global _open_contexts
    _check_name(name)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    with _open_lock:
        _open_contexts += 1
    stack.append(name)
    try:
        yield name
    finally:
        stack.pop()
        with _open_lock:
            _open_contexts -= 1


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
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def cuda_backend_ready() -> bool:
    return _native.cuda_kernels_compiled() and _gpu_visible() and _native.cuda_device_count() > 0


def triton_backend_ready() -> bool:
    return triton_importable() and (_gpu_visible() or triton_interpreting())


def available_backends() -> list[str]:
    """Backends this install can run right now ("cpu" and "torch" always)."""
    names = []
    if cuda_backend_ready():
        names.append("cuda")
    if triton_backend_ready():
        names.append("triton")
    names += ["cpu", "torch"]
    return names


def resolve(device: torch.device, op: str) -> str:
    """The concrete backend that runs ``op`` on tensors of ``device``; raises if it cannot."""
    name = get_backend()
    kind = device.type
    if name == "auto":
        if kind == "cpu":
            return "cpu"
        if kind == "cuda":
            if cuda_backend_ready():
                return "cuda"
            if triton_backend_ready():
                return "triton"
            raise BackendError(
                f"{op}: no pyimgcls GPU backend can run on {device}: the CUDA kernels were not "
                "compiled and triton is not importable; reinstall with nvcc on PATH or install triton")
        raise BackendError(f"{op}: pyimgcls has no backend for tensors on {device}")
    if name == "torch":
        return name
    if name == "cpu":
        if kind != "cpu":
            raise BackendError(f"{op}: backend 'cpu' runs on CPU tensors only, got tensors on {device}")
        return name
    if name == "cuda":
        if kind != "cuda":
            raise BackendError(f"{op}: backend 'cuda' runs on CUDA tensors only, got tensors on {device}")
        if not _native.cuda_kernels_compiled():
            raise BackendError(f"{op}: backend 'cuda' is unavailable: pyimgcls was built without nvcc")
        return name
    # triton
    if not triton_importable():
        raise BackendError(f"{op}: backend 'triton' is unavailable: triton is not importable")
    if kind == "cuda":
        return name
    if kind == "cpu" and triton_interpreting():
        return name
    raise BackendError(
        f"{op}: backend 'triton' runs on CUDA tensors (or on CPU tensors under TRITON_INTERPRET=1), "
        f"got tensors on {device}")
