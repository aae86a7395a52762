"""Checkpoints: written atomically (temporary file in the same directory, fsync, ``os.replace``, fsync
of the directory), so a process killed at any moment leaves either the previous complete checkpoint or
the new one, and read with ``torch.load(weights_only=True)`` only: a file is data, never code.

A training checkpoint holds the model, optimiser, LR scheduler and GradScaler states, the epoch,
the global step and the number of batches already done in the current epoch (the epoch's batch order
is a function of seed + epoch, so a resume skips exactly those), the python / numpy / torch RNG
states of every rank, the history so far, and ``meta``: what ``eval`` and ``predict`` need to rebuild
the model and its input pipeline (model name, num_classes, in_channels, image size, normalisation,
class names)."""
from __future__ import annotations

import os
import random
import re
import tempfile

import numpy as np
import torch

FORMAT = "pyimgcls-checkpoint/1"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj, path: str) -> None:
    """Write ``obj`` to ``path`` through a temporary file in the same directory, fsync it, ``os.replace``
    it over ``path`` and fsync the directory (so the rename itself survives a power loss). On any
    failure, KeyboardInterrupt included, the temporary file is removed and ``path`` is untouched."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
        # mkstemp creates the file 0600; a checkpoint gets the permissions open() would give it
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    _fsync_dir(d)


def _fsync_dir(d: str) -> None:
    # Some platforms (Windows) cannot open or fsync a directory; the data itself is already synced.
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def nonfinite_tensors(obj, prefix: str = "") -> list[str]:
    """Names (dotted paths) of the floating-point tensors in ``obj`` (nested dicts, lists, tuples) that
    hold a NaN or an infinity. One device-to-host transfer per device, however many tensors."""
    names, flags = [], []

    def walk(o, name):
        if isinstance(o, torch.Tensor):
            if (o.is_floating_point() or o.is_complex()) and o.numel():
                names.append(name)
                flags.append(torch.isfinite(o.detach()).all())
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{name}.{i}" if name else str(i))

    walk(obj, prefix)
    ok = [True] * len(flags)
    by_device: dict = {}
    for i, f in enumerate(flags):
        by_device.setdefault(f.device, []).append(i)
    for idx in by_device.values():
        for i, good in zip(idx, torch.stack([flags[i] for i in idx]).tolist()):
            ok[i] = good
    return [n for n, good in zip(names, ok) if not good]


def load_weights_only(path: str, what: str):
    """``torch.load(path, weights_only=True)``: tensors and plain Python values, never code from the
    file. Any failure (a file that needs more than that is refused, not retried unsafely) is a
    one-line DataError naming ``what`` and the file."""
    from ..data import DataError

    if not os.path.isfile(path):
        raise DataError(f"{what} file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if text.startswith("Weights only load failed"):
            # torch's message spans lines and suggests an unsafe load; keep only the reason.
            glob = re.search(r"GLOBAL ([\w.]+)", text)
            other = re.search(r"WeightsUnpickler error: ([^\n]*?)(?:\. Please|$)", text, re.M)
            why = (f"unsupported global {glob.group(1)}" if glob else other.group(1) if other
                   else "it holds objects other than tensors and plain Python values")
            raise DataError(f"{what} {path} refused: {why}; files are only ever loaded as data "
                            f"(torch.load weights_only=True), so this one cannot be used") from None
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        raise DataError(f"cannot read {what} {path}: {type(e).__name__}: {first}") from None


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

    ckpt = load_weights_only(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DataError(f"{path} is not a pyimgcls checkpoint (no format tag {FORMAT!r})")
    return ckpt
