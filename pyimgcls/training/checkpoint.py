"""Checkpoints: written atomically (temporary file in the same directory, fsync, ``os.replace``),
so a process killed at any moment leaves either the previous complete checkpoint or the new one.

A training checkpoint holds the model, optimiser, LR scheduler and GradScaler states, the epoch,
the global step and the number of batches already done in the current epoch (the epoch's batch order
is a function of seed + epoch, so a resume skips exactly those), the python / numpy / torch RNG
states of every rank, the history so far, and ``meta``: what ``eval`` and ``predict`` need to rebuild
the model and its input pipeline (model name, num_classes, in_channels, image size, normalisation,
class names)."""
from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch

FORMAT = "pyimgcls-checkpoint/1"


def atomic_save(obj, path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rng_state() -> dict:
    """Python, numpy and torch RNG states as plain Python values and tensors, so that checkpoints
    load with ``torch.load(weights_only=True)`` (no arbitrary unpickling)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                     int(has_gauss), float(cached)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint written by ``pyimgcls train`` (a weights-only load: tensors and plain Python
    values, nothing that runs code)."""
    from ..data import DataError

    if not os.path.isfile(path):
        raise DataError(f"checkpoint file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DataError(f"{path} is not a pyimgcls checkpoint (no format tag {FORMAT!r})")
    return ckpt
