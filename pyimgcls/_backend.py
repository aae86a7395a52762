"""Backend selection: which implementation an op runs.

The user chooses "auto" (default) or a backend name from the table in ``pyimgcls/backends``
(``cuda``, ``triton``, ``cpu``, ``torch``: what each runs, on which devices, in which dtypes); this
module keeps the choice (process-wide, or per thread inside ``use_backend``) and resolves it per op
call through the table. A backend that cannot serve the tensors' device raises ``BackendError``;
nothing falls back silently, and "auto" never picks the ``torch`` yardstick.
"""
from __future__ import annotations

import contextlib
import threading

import torch

from . import backends as _grid
from .backends import (cuda_backend_ready, triton_backend_ready, triton_importable,  # noqa: F401
                       triton_interpreting)  # re-exported: cli, ladder, tests

BACKENDS = _grid.CHOICES

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


def available_backends() -> list[str]:
    """Backends this install can run right now ("cpu" and "torch" always)."""
    return _grid.available()


def resolve(device: torch.device, op: str) -> str:
    """The concrete backend that runs ``op`` on tensors of ``device``; raises if it cannot."""
    return _grid.resolve(get_backend(), device, op)
