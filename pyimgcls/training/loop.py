"""The training loop behind ``pyimgcls train``, and ``eval`` / ``predict`` on its checkpoints.

One epoch = the batches of a DistributedSampler (shuffled from seed + epoch; one replica without
torchrun), so the batch order of any epoch can be rebuilt after a restart and a mid-epoch resume skips
exactly the batches already done. Augmentation draws from a generator seeded by (seed, epoch, step,
rank) (see ``pyimgcls.data.augment``). Every op of the model runs on the pyimgcls backend chosen by
``--kernels`` (``pyimgcls.set_backend``); ``auto`` never means plain PyTorch.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import re
import shlex
import signal
import sys
import threading
import time
import warnings

import numpy as np
import torch

from .. import _backend, backends
from ..data import Augment, DataError, TensorSplit, batch_generator, load_dataset, load_image
from ..data import normalize, split_validation, standard_augment
from ..data.mix import mix_batch
from ..errors import ArgumentValueError, BackendError
from . import checkpoint as ckpt_mod
from . import distributed as D
from .metrics import classification_metrics, plot_confusion, plot_curves, write_history_csv, write_json

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("none", "cosine", "step", "onecycle")
AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}
KERNEL_DESCRIPTIONS = {name: b.summary for name, b in backends.TABLE.items()}
# Settings a resume must share with the run it continues (anything else may change, e.g. --save-every).
RESUME_KEYS = ("model", "data", "epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov", "weight_decay",
               "schedule", "warmup_epochs", "step_size", "gamma", "label_smoothing", "seed", "augment", "image_size",
               "in_channels", "num_classes", "synthetic_size", "limit_train", "limit_test", "pretrained",
               "freeze_backbone", "amp", "val_fraction", "accumulate", "ema_decay", "clip_grad_norm", "randaugment",
               "randaugment_magnitude", "random_erasing", "mixup", "cutmix", "init")
# Distillation settings a resume must keep (the loss changes with them); only checked when the checkpoint
# has them (runs written before --teacher existed ran without a teacher).
RESUME_KEYS += ("teacher", "kd_temperature", "kd_alpha")
# Settings a resume never takes from the checkpoint: they say where and how this command runs.
_RUN_LOCAL_KEYS = ("out", "resume", "overwrite", "config")


class _Log:
    """Per-epoch lines on rank 0; tqdm bars when stderr is a terminal."""

    def __init__(self, rank: int, quiet: bool = False):
        self.on = rank == 0 and not quiet
        self.tty = self.on and sys.stderr.isatty()

    def __call__(self, msg: str = "") -> None:
        if self.on:
            print(msg, flush=True)

    def bar(self, total: int, initial: int, desc: str):
        if not self.tty:
            return None
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, unit="batch")


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite. Raised before anything non-finite is saved, so
    the last checkpoint written stays the last good one; ``pyimgcls train`` exits with status 3."""


class Interrupted(Exception):
    """Ctrl-C (SIGINT) stopped ``pyimgcls train`` after it saved its checkpoint; the message says where
    it stopped and the command that resumes it. The CLI prints it and exits with status 130."""


class _SigintGuard:
    """While active (main thread, one process): the first Ctrl-C only raises a flag, which the loop
    reads after each step and at the end of each epoch, so it stops at a consistent point and saves; a
    second Ctrl-C interrupts at once (KeyboardInterrupt). Under torchrun the ranks could not agree on
    the step to stop at without a collective per step, so there Ctrl-C keeps its default behaviour."""

    def __init__(self, enabled: bool):
        self.hit = False
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __enter__(self) -> "_SigintGuard":
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)


class _LossWatch:
    """Notices the first training step whose loss is NaN or infinite, and the last finite loss before it.

    ``eager``: read each loss as it comes (on the CPU that costs nothing). Otherwise (CUDA) reading it
    would make every step wait for the GPU, so the record is kept on the device, a few tiny kernels per
    step, and ``state()`` fetches it where the loop syncs anyway (checkpoints, end of epoch)."""

    def __init__(self, device: torch.device, global_step: int, eager: bool):
        self.eager = eager
        self.bad_step, self.bad_loss, self.last_loss = None, None, None
        if not eager:
            self.step_t = torch.tensor(global_step, dtype=torch.int64, device=device)
            self.bad_step_t = torch.tensor(-1, dtype=torch.int64, device=device)
            self.bad_loss_t = torch.tensor(0.0, dtype=torch.float64, device=device)
            self.last_loss_t = torch.tensor(math.nan, dtype=torch.float64, device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        """Record the loss of global step ``step`` (1-based)."""
        if self.eager:
            if self.bad_step is None:
                v = float(loss.detach())
                if math.isfinite(v):
                    self.last_loss = v
                else:
                    self.bad_step, self.bad_loss = step, v
            return
        v = loss.detach().double()
        self.step_t += 1
        clean = self.bad_step_t < 0
        finite = torch.isfinite(v)
        self.last_loss_t = torch.where(clean & finite, v, self.last_loss_t)
        first_bad = clean & ~finite
        self.bad_loss_t = torch.where(first_bad, v, self.bad_loss_t)
        self.bad_step_t = torch.where(first_bad, self.step_t, self.bad_step_t)

    def state(self) -> tuple[int | None, float | None, float | None]:
        """(first global step with a non-finite loss or None, its loss, the last finite loss or None)."""
        if not self.eager:
            bad, bad_loss, last = torch.stack([self.bad_step_t.double(), self.bad_loss_t, self.last_loss_t]).tolist()
            self.bad_step = int(bad) if bad >= 0 else None
            self.bad_loss = bad_loss
            self.last_loss = last if math.isfinite(last) else None
        return self.bad_step, self.bad_loss, self.last_loss


# ------------------------------------------------------------------------------------- devices
def pick_device(kernels: str, device: str, dist_local_rank: int = 0) -> torch.device:
    if device == "auto":
        # a backend that serves one device type decides it; "auto" and the torch yardstick take the GPU
        # when there is one
        served = backends.TABLE[kernels].devices if kernels in backends.TABLE else ()
        if len(served) == 1:
            device = served[0]
        else:
            device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise BackendError(f"--kernels {kernels} / --device cuda: no CUDA GPU is visible to torch")
        return torch.device("cuda", dist_local_rank)
    if device != "cpu":
        raise ArgumentValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    return torch.device("cpu")


def resolve_kernels(kernels: str, device: torch.device) -> str:
    """Select ``kernels`` process-wide and return the concrete backend that will run on ``device``
    (raises BackendError, naming why, if it cannot)."""
    import pyimgcls
    pyimgcls.set_backend(kernels)
    return _backend.resolve(device, "--kernels")


# ---------------------------------------------------------------------------------------- models
def classifier_name(model: torch.nn.Module) -> str:
    """Qualified name of the last Linear layer: the classifier that transfer learning replaces."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            name = n
    if name is None:
        raise ArgumentValueError("model has no Linear classifier layer to replace")
    return name


def build_model(name: str, num_classes: int, in_channels: int, dropout: float | None = None) -> torch.nn.Module:
    from .. import models

    kw = {}
    if in_channels != 3 or name.lower().startswith("lenet"):
        kw["in_channels"] = in_channels
    if dropout is not None:
        kw["dropout"] = dropout
    try:
        return models.get_model(name, num_classes=num_classes, **kw)
    except ValueError as e:      # unknown name
        raise ArgumentValueError(f"--model: {e}") from None
    except TypeError as e:
        hint = " (this model takes 3-channel input: add --in-channels 3)" if "in_channels" in str(e) else ""
        raise ArgumentValueError(f"--model {name}: cannot build it with {kw or 'these settings'}: {e}{hint}") from None


def _unwrap_state_dict(obj, path: str) -> dict:
    if isinstance(obj, dict) and obj.get("format") == ckpt_mod.FORMAT:
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"--pretrained {path}: not a state_dict (a dict of tensors)")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_pretrained(model: torch.nn.Module, path: str) -> list[str]:
    """Load a (torchvision-compatible) state_dict into ``model`` except a classifier whose shape
    differs (another class count): that one keeps its fresh initialisation. Returns replaced keys. The
    file is loaded weights-only: one that needs more (code) is refused with a DataError, never retried."""
    obj = ckpt_mod.load_weights_only(path, "--pretrained")
    sd = _unwrap_state_dict(obj, path)
    bad = ckpt_mod.nonfinite_tensors(sd)
    if bad:
        raise DataError(f"--pretrained {path} holds NaN or infinite values (in {', '.join(bad[:3])})")
    head = classifier_name(model)
    own = model.state_dict()
    replaced = [k for k in (f"{head}.weight", f"{head}.bias") if k in sd and k in own and sd[k].shape != own[k].shape]
    for k in replaced:
        del sd[k]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k not in replaced]
    if missing or unexpected:
        raise DataError(f"--pretrained {path} does not fit the model: missing keys {missing[:8]}, "
                        f"unexpected keys {unexpected[:8]}")
    return replaced


def freeze_backbone(model: torch.nn.Module) -> None:
    head = classifier_name(model)
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith(head + "."))


# ----------------------------------------------------------------------------- optimiser, schedule
def build_optimizer(args, params) -> torch.optim.Optimizer:
    o = args.optimizer
    if o == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov and args.momentum > 0,
                               weight_decay=args.weight_decay)
    if o == "adam":
        return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    if o == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    if o == "rmsprop":
        return torch.optim.RMSprop(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    if o == "adagrad":
        return torch.optim.Adagrad(params, lr=args.lr, weight_decay=args.weight_decay)
    raise ArgumentValueError(f"--optimizer must be one of {OPTIMIZERS}, got {o!r}")


def build_scheduler(args, optimizer, steps_per_epoch: int):
    """Stepped once per batch. Linear warm-up over ``warmup_epochs`` then cosine / step / constant;
    ``onecycle`` is torch's OneCycleLR (its own warm-up: ``warmup_epochs`` or 25 % of the run)."""
    total = max(1, args.epochs * steps_per_epoch)
    warm = int(round(args.warmup_epochs * steps_per_epoch))
    if args.schedule == "onecycle":
        pct = min(0.99, warm / total) if warm > 0 else 0.25
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total, pct_start=pct)
    step_size = args.step_size or max(1, args.epochs // 3)

    def factor(s: int) -> float:
        f = min(1.0, (s + 1) / warm) if warm > 0 else 1.0
        if args.schedule == "cosine":
            t = min(1.0, max(0, s - warm) / max(1, total - warm))
            f *= 0.5 * (1 + math.cos(math.pi * t))
        elif args.schedule == "step":
            f *= args.gamma ** ((s // steps_per_epoch) // step_size)
        return f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------------------------ data
def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, info: D.DistInfo) -> list[list[int]]:
    """This rank's batches for ``epoch``: DistributedSampler order (a function of seed + epoch only)."""
    sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=info.world_size, rank=info.rank,
                                                  shuffle=True, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    idx = list(sampler)
    return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]


def iterate(split, batches: list[list[int]], workers: int, device: torch.device):
    """Yield (images [B, C, H, W] float in [0, 1], labels [B]) for each batch of indices."""
    if isinstance(split, TensorSplit):
        for b in batches:
            idx = torch.as_tensor(b, dtype=torch.long)
            yield split.images[idx], split.labels[idx]
        return
    loader = torch.utils.data.DataLoader(split, batch_sampler=batches, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    try:
        yield from loader
    except DataError as e:
        # A worker's error arrives wrapped in its traceback; keep the message that names the file.
        last = str(e).strip().splitlines()[-1]
        raise DataError(last.split("DataError: ", 1)[-1]) from None


def set_cpu_threads(n: int) -> tuple[int, int | None]:
    """Set the intra-op threads of torch and of our C++ kernels (OpenMP in the system libgomp, which
    torch's ``set_num_threads`` does not reach); returns the previous (torch, libgomp) counts."""
    import ctypes

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        gomp = ctypes.CDLL("libgomp.so.1")
        gomp_before = gomp.omp_get_max_threads()
        gomp.omp_set_num_threads(ctypes.c_int(n))
    except (OSError, AttributeError):   # no libgomp (e.g. another OpenMP runtime): its default stays
        gomp_before = None
    return before, gomp_before


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: a container or ``taskset`` may allow fewer than
    ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def busy_cpus(interval: float = 0.2) -> float | None:
    """CPUs' worth of time the machine spent busy over the next ``interval`` seconds (``/proc/stat``:
    everything but idle and iowait, so a hypervisor's steal counts as busy), while this process
    sleeps: what the other processes use now. None where ``/proc/stat`` cannot be read."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4]
    try:
        t0, i0 = sample()
        time.sleep(interval)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = t1 - t0
    if total <= 0:
        return None
    return (total - (i1 - i0)) / total * (os.cpu_count() or 1)


def idle_cores(cores: int, load: float | None = None) -> int:
    """Cores not busy with other processes: ``cores`` minus ``load`` (rounded), at least one; by
    default ``load`` is what the machine's CPUs are doing now (``busy_cpus``, a 0.2 s sample), else
    the 1-minute load average. An OpenMP team larger than this loses far more than it gains: every
    barrier waits for a thread the kernel has descheduled, and libgomp's spinning waiters take the CPU
    from it (a ResNet-18 step on 2 threads measured 2-3x slower than on 1 with the other core busy,
    ``benchmarks/bench_thread_policy.py``). Not the load average first: it remembers the last minute,
    so a job that has just finished (or this program's own start-up) passed for a busy core on a
    quiet machine, and ResNet-18 trained on 1 thread at 0.6x the speed of 2."""
    if load is None:
        load = busy_cpus()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):   # no load average on this platform: trust the core count
            return cores
    return max(1, min(cores, cores - int(round(load))))


def auto_threads(threads: int, n_params: int, distributed: bool = False, load: float | None = None) -> int:
    """``--threads 0``: one thread per process under torchrun (the processes share the cores); else the
    cores that are idle when the run starts (``idle_cores``: all of them on a quiet machine), whatever
    the model's size (``n_params``, kept for the callers): the kernels keep their small ops on one
    thread themselves, and on a quiet 2-core machine LeNet-5 trained 1.1x (batch 8) to 1.4x (batch 32)
    faster on 2 threads than on 1 (``benchmarks/bench_thread_policy.py``). ``--threads N`` is taken
    as given."""
    if threads > 0:
        return threads
    if distributed:
        return 1
    return idle_cores(usable_cores(), load)


def restore_cpu_threads(saved: tuple[int, int | None]) -> None:
    import ctypes

    torch.set_num_threads(saved[0])
    if saved[1] is not None:
        ctypes.CDLL("libgomp.so.1").omp_set_num_threads(ctypes.c_int(saved[1]))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(model, split, mean_t, std_t, device, batch_size: int, info: D.DistInfo, amp: str = "off",
             channels_last: bool = False, workers: int = 0):
    """Test loss and scores over ``split``, each rank taking every world_size-th image; gathered on
    all ranks. Returns (targets [N] int64, scores [N, C] float32, mean loss). ``model`` is the bare
    module, not the DDP wrapper: ranks may run different numbers of test batches, and DDP's forward
    would wait on collectives (buffer broadcast) that the others never join."""
    was_training = model.training
    model.eval()
    n = len(split)
    mine = list(range(info.rank, n, info.world_size))
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    targets, scores, loss_sum = [], [], 0.0
    dt = AMP_DTYPES[amp]
    for x, y in iterate(split, batches, workers, device):
        x = normalize(x.to(device, non_blocking=True), mean_t, std_t)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dt or torch.float32, enabled=dt is not None):
            logits = model(x)
        logits = logits.float()
        loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        targets.append(y.cpu())
        scores.append(logits.cpu())
    t = torch.cat(targets).numpy() if targets else np.zeros(0, dtype=np.int64)
    s = torch.cat(scores).numpy() if scores else np.zeros((0, 0), dtype=np.float32)
    model.train(was_training)
    parts = D.all_gather_object(info, (t, s, loss_sum))
    t = np.concatenate([p[0] for p in parts])
    s = np.concatenate([p[1] for p in parts if len(p[1])]) if any(len(p[1]) for p in parts) else s
    total_loss = sum(p[2] for p in parts)
    return t, s, total_loss / max(1, len(t))


def _tensorboard_writer(log_dir: str, first_epoch: int):
    """TensorBoard event files in the run folder, one point per epoch. ``purge_step``: a resumed run
    drops events a crash left after its checkpoint, so the curves never double back."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ArgumentValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(log_dir, purge_step=first_epoch)


# --------------------------------------------------------------------------------- model summary
def model_summary(model: torch.nn.Module, in_channels: int, image_size: int, device: torch.device) -> str:
    """One line: the layer count by type and the multiply-accumulates of one image, counted with
    forward hooks during one eval-mode forward of a zero image (convolutions: output elements x
    C/groups x KH x KW; linear layers: output elements x in_features; the rest is not counted)."""
    counts: dict[str, int] = {}
    macs = 0

    def hook(module, inputs, output):
        nonlocal macs
        counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
        w = getattr(module, "weight", None)
        if isinstance(w, torch.Tensor) and isinstance(output, torch.Tensor) and w.dim() in (2, 4):
            macs += output[0].numel() * math.prod(w.shape[1:])

    handles = [m.register_forward_hook(hook) for m in model.modules() if not any(True for _ in m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    kinds = ", ".join(f"{n} {c}" for n, c in sorted(counts.items(), key=lambda kv: -kv[1]))
    scaled = next((f"{macs / d:.3g} {u}" for d, u in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if macs >= d), str(macs))
    return (f"{sum(counts.values())} layers ({kinds}); {scaled}MACs per {in_channels}x{image_size}x{image_size} "
            f"image")


# ------------------------------------------------------------------------------------ run folder
RUN_FILES = ("checkpoint.pt", "best.pt", "metrics.json", "history.csv", "config.json", "curves.png",
             "confusion_matrix.png")
RUNS_ROOT = "runs"


def _make_dir(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise ArgumentValueError(f"--out: {out} exists and is not a directory")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".pyimgcls-write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ArgumentValueError(f"--out: cannot write to {out}: {e.strerror or e}") from None


def _point_latest(folder: str) -> str:
    """Point runs/latest at ``folder`` (a relative symlink, replaced atomically); returns a note for the
    log when it cannot (a runs/latest directory left by an older pyimgcls, or no symlinks here)."""
    link = os.path.join(RUNS_ROOT, "latest")
    tmp = f"{link}.tmp-{os.getpid()}"
    try:
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.symlink(os.path.basename(folder), tmp)
        os.replace(tmp, link)
        return ""
    except OSError as e:
        if os.path.lexists(tmp):
            os.remove(tmp)
        return f"{link} not updated ({e.strerror or e}); resume this run with --out {folder}"


def run_folder(args, info: D.DistInfo) -> tuple[str, str]:
    """The folder this run writes to, and a note for the log (or ""). ``--out DIR`` is the folder itself;
    a non-empty one is refused unless ``--resume`` (continue it) or ``--overwrite`` (its run files are
    deleted first). Without ``--out``: ``--resume`` continues runs/latest, else a new folder
    runs/<model>-<data>-<time>/ that runs/latest then points at."""
    overwrite = getattr(args, "overwrite", False)
    if args.out is not None:
        out = args.out
        if not args.resume and not overwrite and os.path.isdir(out) and os.listdir(out):
            raise ArgumentValueError(f"--out: {out} is not empty (an earlier run?); pass --resume to continue it, "
                                     f"--overwrite to replace it, or another --out")
    elif args.resume:
        latest = os.path.join(RUNS_ROOT, "latest")
        if not os.path.isdir(latest):
            raise ArgumentValueError(f"--resume: no earlier run to continue ({latest} does not exist here); "
                                     f"pass --out DIR")
        out = os.path.join(RUNS_ROOT, os.readlink(latest)) if os.path.islink(latest) else latest
    else:
        data = re.sub(r"[^A-Za-z0-9_.-]+", "_", args.data.split(":", 1)[0].lower())
        base = os.path.join(RUNS_ROOT, f"{args.model.lower()}-{data}-{time.strftime('%Y%m%d-%H%M%S')}")
        out, n = base, 1
        while os.path.exists(out):
            n += 1
            out = f"{base}-{n}"
        out = D.broadcast_object(info, out)   # ranks may see another second or another folder list
    note = ""
    if info.is_main and not args.resume:
        _make_dir(out)
        if overwrite:
            for f in RUN_FILES:
                if os.path.exists(os.path.join(out, f)):
                    os.remove(os.path.join(out, f))
        if args.out is None:
            note = _point_latest(out)
    D.barrier(info)
    return out, note


def model_input(model: str, image_size: int | None, in_channels: int | None) -> tuple[int, int | None]:
    """(image size, input channels) for ``model``: the model's smallest input side when --image-size is
    not given and 32 is too small; 3 channels for models that take RGB input, the data set's grayscale
    images then replicated (as torchvision's ``Grayscale(num_output_channels=3)``)."""
    from .. import models
    try:
        spec = models.input_spec(model)
    except ValueError as e:
        raise ArgumentValueError(f"--model: {e}") from None
    if image_size is None:
        image_size = spec["fixed_size"] or max(32, spec["min_size"])
    elif spec["fixed_size"] and image_size != spec["fixed_size"]:
        raise ArgumentValueError(f"--image-size {image_size}: {model} takes {spec['fixed_size']}x"
                                 f"{spec['fixed_size']} input only")
    elif image_size < spec["min_size"]:
        raise ArgumentValueError(f"--image-size {image_size}: {model} needs at least {spec['min_size']}x"
                                 f"{spec['min_size']} input")
    if spec["in_channels"] is not None:
        if in_channels not in (None, spec["in_channels"]):
            raise ArgumentValueError(f"--in-channels {in_channels}: {model} takes {spec['in_channels']}-channel "
                                     f"input (grayscale data sets are replicated to 3 channels)")
        in_channels = spec["in_channels"]
    return image_size, in_channels


# -------------------------------------------------------------------------------------- training
def _augment_for(args, ds) -> Augment:
    """--augment's recipe with the command line's overrides; RandAugment and random erasing are added
    to either recipe when asked for."""
    aug = Augment() if args.augment == "none" else standard_augment(ds.name, ds.image_size, ds.hflip_ok)
    aug.randaugment_ops = getattr(args, "randaugment", 0)
    aug.randaugment_magnitude = getattr(args, "randaugment_magnitude", 9)
    aug.random_erasing = getattr(args, "random_erasing", 0.0)
    if args.augment == "none":
        return aug
    if args.hflip != "auto":
        aug.hflip = args.hflip == "on"
    if args.rotation is not None:
        aug.rotation = args.rotation
    if args.crop_padding is not None:
        aug.crop_padding = args.crop_padding
    if args.jitter is not None:
        aug.brightness = aug.contrast = args.jitter
    return aug


def _config(args) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
            for k, v in sorted(vars(args).items()) if k not in ("func", "command", "explicit")}


def _check_args(args) -> None:
    for name in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(args, name) < 1:
            raise ArgumentValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.lr > 0:
        raise ArgumentValueError(f"--lr must be > 0, got {args.lr}")
    if args.weight_decay < 0 or args.warmup_epochs < 0 or args.save_every < 0:
        raise ArgumentValueError("--weight-decay, --warmup-epochs and --save-every must be >= 0")
    if not 0 <= args.label_smoothing < 1:
        raise ArgumentValueError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    for name in ("limit_train", "limit_test"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ArgumentValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if getattr(args, "patience", None) and not getattr(args, "val_fraction", 0):
        raise ArgumentValueError("--patience needs a validation split (--val-fraction > 0) to watch")
    if getattr(args, "teacher", None):
        if not getattr(args, "kd_temperature", 4.0) > 0:
            raise ArgumentValueError(f"--kd-temperature must be > 0, got {args.kd_temperature}")
        if not 0 <= getattr(args, "kd_alpha", 0.5) <= 1:
            raise ArgumentValueError(f"--kd-alpha must be in [0, 1], got {args.kd_alpha}")
        if getattr(args, "mixup", 0.0) > 0 or getattr(args, "cutmix", 0.0) > 0:
            raise ArgumentValueError("--teacher does not combine with --mixup / --cutmix (the distillation loss "
                                     "takes class-index targets)")


def train(args) -> dict:
    """Run ``pyimgcls train`` with parsed ``args``; returns the metrics dict (on every rank)."""
    _check_args(args)
    wall0 = time.perf_counter()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(args.kernels, args.device, local_rank if world > 1 else 0)
    kernels = resolve_kernels(args.kernels, device)
    info = D.init_distributed(device.type)
    saved_threads: list = []
    try:
        with _SigintGuard(not info.enabled) as sigint:
            return _train(args, info, device, kernels, wall0, saved_threads, sigint)
    finally:
        for saved in saved_threads:   # train() may be called in-process (tests, notebooks)
            restore_cpu_threads(saved)
        D.shutdown(info)


def _train(args, info: D.DistInfo, device: torch.device, kernels: str, wall0: float, saved_threads: list,
           sigint: _SigintGuard) -> dict:
    run = _Run(args, info, device, kernels, wall0, saved_threads, sigint)
    run.log_start()
    for epoch in range(run.start_epoch, args.epochs):
        if run.stop_early():
            run.log(f"early stop: no better validation accuracy for {args.patience} epochs (best: epoch "
                    f"{run.best_epoch})")
            break
        run.train_epoch(epoch)
        run.end_epoch(epoch)
    return run.finish()


class _Run:
    """The state of one ``pyimgcls train`` run and its phases: set-up (data, model, optimiser, resume),
    one epoch of steps, the end of an epoch (evaluation, history, best.pt, checkpoint), the report."""

    def __init__(self, args, info: D.DistInfo, device: torch.device, kernels: str, wall0: float,
                 saved_threads: list, sigint: _SigintGuard):
        self.args, self.info, self.device, self.kernels, self.wall0 = args, info, device, kernels, wall0
        self.sigint = sigint
        self.log = _Log(info.rank, args.quiet)
        self.init = _init_checkpoint(args) if getattr(args, "init", None) and not args.resume else None
        if not args.resume:   # a bad --model / --image-size fails before a run folder is made
            model_input(args.model, args.image_size, args.in_channels)
        self.out, self.latest_note = run_folder(args, info)
        self.ckpt_path = os.path.join(self.out, "checkpoint.pt")
        self.extended_from = None
        resume = self._load_resume() if args.resume else None
        # a run started with --init (a pruned model) resumes with the layer widths it saved
        self.architecture = (resume["meta"].get("architecture") if resume is not None
                             else self.init[0].get("architecture") if self.init is not None else None)
        # 2:4 weights (a file of `pyimgcls prune --2:4`, or a run fine-tuned from one): the masks are put
        # back on the model (prune_2_4's pre-hook re-applies them before every forward, the EMA copy
        # included; checkpoints are written masked), so fine-tuning keeps the pattern; a resumed run
        # gets the exact masks its checkpoint kept
        from ..pruning import recorded_2_4
        source = resume["meta"] if resume is not None else self.init[0] if self.init is not None else None
        what = f"--resume {self.ckpt_path}" if resume is not None else f"--init {getattr(args, 'init', None)}"
        self.sparse_2_4 = recorded_2_4(source, what) if source is not None else None
        self.resume_masks = resume.get("masks_2_4") if resume is not None else None
        _seed_everything(args.seed)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self._build_data()
        self._build_model(saved_threads)
        # steps_per_epoch counts batches (checkpoint positions, logs); the optimiser and the schedule
        # step once per --accumulate batches
        self.steps_per_epoch = len(epoch_batches(len(self.ds.train), args.batch_size, 0, args.seed, info))
        self.accumulate = getattr(args, "accumulate", 1)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(args, self.params)
        self.scheduler = build_scheduler(args, self.optimizer, math.ceil(self.steps_per_epoch / self.accumulate))
        self.ema = None
        if getattr(args, "ema_decay", None):
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
            # Buffers averaged too (batch-norm statistics), as timm's ModelEmaV3 does.
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay), use_buffers=True)
        self.pending_save = False
        self.amp_dtype = AMP_DTYPES[args.amp]
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
        from ..nn import CrossEntropyLoss, DistillationLoss
        self.criterion = CrossEntropyLoss(label_smoothing=args.label_smoothing)
        self.teacher = self.teacher_info = None
        if getattr(args, "teacher", None):
            self._build_teacher()
            self.criterion = DistillationLoss(temperature=args.kd_temperature, alpha=args.kd_alpha,
                                              label_smoothing=args.label_smoothing)

        self.start_epoch, self.start_step, self.global_step = 0, 0, 0
        self.history, self.best_acc, self.best_epoch, self.train_time = [], -1.0, None, 0.0
        self.acc = [0.0, 0.0, 0.0]   # this rank's running (loss sum, correct, images) for the current epoch
        self.resumed_from = None
        if resume is not None:
            self._restore(resume)
        self.watch = _LossWatch(device, self.global_step, eager=device.type != "cuda" or self.log.tty)
        self.net = self.model
        if info.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if args.compile:
            self.net = torch.compile(self.net)
        self.kill_at = int(os.environ.get("PYIMGCLS_TEST_KILL_AFTER_STEP", "0"))   # tests: SIGKILL after step N
        self.tb = None
        if info.is_main:
            write_json(_config(args), os.path.join(self.out, "config.json"))
            if getattr(args, "tensorboard", False):
                self.tb = _tensorboard_writer(os.path.join(self.out, "tensorboard"), len(self.history) + 1)

    # ---------------------------------------------------------------------------------- set-up
    def _load_resume(self) -> dict:
        args, info = self.args, self.info
        resume = ckpt_mod.load_checkpoint(self.ckpt_path)
        old = resume["config"]
        explicit = getattr(args, "explicit", None)   # None: called in-process, every setting is given
        if explicit is not None:
            for k, v in old.items():
                if k not in explicit and k not in _RUN_LOCAL_KEYS and hasattr(args, k):
                    setattr(args, k, v)
        if args.epochs != old.get("epochs"):
            if args.epochs < resume["epoch"]:
                raise ArgumentValueError(f"--epochs {args.epochs}: the run in {self.out} has already finished "
                                         f"{resume['epoch']} epochs; pass at least that many to continue it")
            self.extended_from = old.get("epochs")
        # (a key the checkpoint lacks is a setting added since it was written: it ran with the default)
        diff = {k: (old.get(k), getattr(args, k)) for k in RESUME_KEYS
                if k != "epochs" and k in old and old[k] != getattr(args, k)}
        if diff:
            raise ArgumentValueError(f"--resume: {self.ckpt_path} was written with other settings; pass the same "
                                     f"ones (checkpoint value, this command's value): {diff}")
        if resume["world_size"] != info.world_size:
            raise ArgumentValueError(f"--resume: {self.ckpt_path} was written by {resume['world_size']} "
                                     f"process(es), this run has {info.world_size}")
        return resume

    def _build_data(self) -> None:
        args, device = self.args, self.device
        image_size, in_channels = model_input(args.model, args.image_size, args.in_channels)
        ds = load_dataset(args.data, image_size=image_size, in_channels=in_channels,
                          num_classes=args.num_classes, synthetic_size=args.synthetic_size, seed=args.seed)
        ds.train = ds.train.subset(args.limit_train)
        ds.test = ds.test.subset(args.limit_test)
        # best.pt and the best epoch are chosen on images carved from the training data; the test
        # split is evaluated once, at the end
        ds.train, self.val = split_validation(ds.train, getattr(args, "val_fraction", 0.0), args.seed)
        self.ds = ds
        self.meta = dict(ds.meta(), model=args.model)
        if self.architecture is not None:
            self.meta["architecture"] = self.architecture
        if self.sparse_2_4:
            self.meta["sparsity"] = {"pattern": "2:4", "layers": list(self.sparse_2_4)}
        self.aug = _augment_for(args, ds)
        self.mean_t = torch.tensor(ds.mean, dtype=torch.float32, device=device)
        self.std_t = torch.tensor(ds.std, dtype=torch.float32, device=device)

    def _build_model(self, saved_threads: list) -> None:
        args, ds = self.args, self.ds
        if self.init is not None:
            meta, ck = self.init
            for key in ("num_classes", "in_channels"):
                if meta[key] != getattr(ds, key):
                    raise ArgumentValueError(f"--init {args.init}: its model has {key} {meta[key]}, the data "
                                             f"{args.data} has {getattr(ds, key)}")
            model = _load_float_state(_build_checkpoint_model(meta, f"--init {args.init}", args.dropout),
                                      ck, args.init)
        elif self.architecture is not None:     # resumed fine-tuning: the weights come from _restore
            model = _build_checkpoint_model(self.meta, f"--resume {self.ckpt_path}", args.dropout)
        else:
            model = build_model(args.model, ds.num_classes, ds.in_channels, args.dropout)
        self.replaced = load_pretrained(model, args.pretrained) if args.pretrained else []
        if args.freeze_backbone:
            if not args.pretrained:
                raise ArgumentValueError("--freeze-backbone needs --pretrained FILE (a random backbone is not "
                                         "worth freezing)")
            freeze_backbone(model)
        model.to(self.device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.sparse_2_4:
            from ..pruning import restore_2_4
            what = f"--resume {self.ckpt_path}" if args.resume else f"--init {args.init}"
            restore_2_4(model, self.sparse_2_4, self.resume_masks, what)
        self.model = model
        self.n_params = sum(p.numel() for p in model.parameters())
        self.threads = args.threads
        if self.device.type == "cpu":   # only there does the count matter (and its 0.2 s CPU sample get taken)
            self.threads = auto_threads(args.threads, self.n_params, self.info.enabled)
            saved_threads.append(set_cpu_threads(self.threads))
        self.n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def _build_teacher(self) -> None:
        """--teacher: the model of a checkpoint of ours (_model_from_checkpoint), fused for inference (a
        copy, eval mode, frozen), checked against the student's data: same class count, input channels
        and image size. Its inputs are the student's, renormalised to the teacher's mean / std when its
        data set statistics differ."""
        from ..fuse import fuse_for_inference
        args, ds = self.args, self.ds
        if not os.path.isfile(args.teacher):
            raise ArgumentValueError(f"--teacher: no such checkpoint file: {args.teacher}")
        saved = set_cpu_threads(torch.get_num_threads())   # _model_from_checkpoint picks eval's threads
        try:
            model, meta, _ = _model_from_checkpoint(args.teacher, self.device)
        except ArgumentValueError as e:
            raise ArgumentValueError(f"--teacher: {str(e).removeprefix('--checkpoint: ')}") from None
        finally:
            restore_cpu_threads(saved)
        for key, name, want in (("num_classes", "classes", ds.num_classes), ("in_channels", "input channels",
                                                                             ds.in_channels),
                                ("image_size", "image size", ds.image_size)):
            if meta.get(key) != want:
                raise ArgumentValueError(
                    f"--teacher: {args.teacher} was trained with {meta.get(key)} {name} ({meta.get('model')} on "
                    f"{meta.get('dataset')}), the student's data has {want}; teacher and student must agree on "
                    "the class count and the input size and channels"
                    + (" (train the student with --in-channels 3)" if key == "in_channels" and want == 1 else ""))
        teacher = fuse_for_inference(model)
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher.to(self.device).eval()
        t_mean = torch.tensor(meta.get("mean", ds.mean), dtype=torch.float32, device=self.device)
        t_std = torch.tensor(meta.get("std", ds.std), dtype=torch.float32, device=self.device)
        self.teacher_norm = None
        if not (torch.equal(t_mean, self.mean_t) and torch.equal(t_std, self.std_t)):
            # x_t = (x * std + mean - mean_t) / std_t = x * a + b
            a = self.std_t / t_std
            self.teacher_norm = (a.view(1, -1, 1, 1), ((self.mean_t - t_mean) / t_std).view(1, -1, 1, 1))
        self.teacher_info = {"checkpoint": args.teacher, "model": meta.get("model"), "dataset": meta.get("dataset"),
                             "temperature": args.kd_temperature, "alpha": args.kd_alpha}

    def _teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for the student's (normalised, augmented) batch: eval mode, no graph."""
        with torch.no_grad():
            if self.teacher_norm is not None:
                x = x * self.teacher_norm[0] + self.teacher_norm[1]
            return self.teacher(x).float()

    def _restore(self, resume: dict) -> None:
        state = resume["model"]
        if self.sparse_2_4:   # a plain state_dict (see _state); _build_model put the saved masks on the model
            from ..pruning import masks_of
            state = dict(state, **{f"{n}.weight_mask_2_4": m for n, m in masks_of(self.model).items()})
        self.model.load_state_dict(state)
        self.optimizer.load_state_dict(resume["optimizer"])
        if self.extended_from is None:
            self.scheduler.load_state_dict(resume["scheduler"])
        else:
            self._continue_schedule(resume["scheduler"])
        if resume.get("scaler"):
            self.scaler.load_state_dict(resume["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(resume["ema"])
        self.start_epoch, self.start_step = resume["epoch"], resume["step_in_epoch"]
        self.global_step = resume["global_step"]
        self.history, self.best_acc, self.best_epoch = resume["history"], resume["best_accuracy"], resume["best_epoch"]
        self.train_time = resume["train_time_s"]
        self.acc = list(resume["epoch_accum"][self.info.rank])
        ckpt_mod.set_rng_state(resume["rng"][self.info.rank])
        self.resumed_from = self.global_step

    def _continue_schedule(self, saved: dict) -> None:
        """A run extended to more epochs (``--resume --epochs N``) keeps its step count but follows the
        schedule built for the new length from here on, as timm does: the learning rate of the current
        step is recomputed (for cosine it rises to where the longer curve is)."""
        sched = self.scheduler
        sched.last_epoch, sched._step_count = saved["last_epoch"], saved["_step_count"]
        with warnings.catch_warnings():   # get_lr() outside step() warns; here it is the point
            warnings.simplefilter("ignore")
            lrs = sched.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        sched._last_lr = list(lrs)


    def _threads_reason(self, args) -> str:
        """Why ``--threads 0`` chose this count (the choice depends on the machine's load at start)."""
        if args.threads > 0 or self.device.type != "cpu":
            return ""
        if self.info.enabled:
            return " (auto: torchrun)"
        return f" (auto: {self.threads} of {usable_cores()} cores idle)"
    def log_start(self) -> None:
        args, ds, info, log = self.args, self.ds, self.info, self.log
        log(f"pyimgcls train: {args.model} ({self.n_params:,} parameters, {self.n_trainable:,} trained) on "
            f"{ds.spec} ({len(ds.train)} train / {len(self.val) if self.val else 0} validation / {len(ds.test)} "
            f"test images, {ds.in_channels}x{ds.image_size}x"
            f"{ds.image_size}, {ds.num_classes} classes)")
        log(f"  kernels: {self.kernels} ({KERNEL_DESCRIPTIONS[self.kernels]}) on {self.device}; world size "
            f"{info.world_size}{' (' + info.backend + ')' if info.enabled else ''}"
            f"{f'; {self.threads} CPU thread(s){self._threads_reason(args)}' if self.device.type == 'cpu' else ''}"
            f"; amp {args.amp}; "
            f"augment: {self.aug.describe()}")
        log(f"  {args.optimizer} lr {args.lr:g}, {args.schedule} schedule, batch {args.batch_size} x "
            f"{info.world_size}, {args.epochs} epochs x {self.steps_per_epoch} steps; out: {self.out}")
        if self.latest_note:
            log(f"  {self.latest_note}")
        if info.is_main and not args.quiet:
            log(f"  model: {model_summary(self.model, ds.in_channels, ds.image_size, self.device)}")
        if self.replaced:
            log(f"  pretrained {args.pretrained}: classifier {', '.join(self.replaced)} replaced for "
                f"{ds.num_classes} classes")
        if self.resumed_from is not None:
            log(f"  resumed from {self.ckpt_path}: epoch {self.start_epoch + 1}, step {self.start_step}/"
                f"{self.steps_per_epoch} (global step {self.global_step})"
                + (f"; extended from {self.extended_from} to {args.epochs} epochs (schedule rebuilt)"
                   if self.extended_from is not None else ""))

    # ------------------------------------------------------------------------ divergence, saving
    def where(self, g: int, prep: str = "at") -> str:
        if g == 0:
            return "before the first step"
        return (f"{prep} epoch {(g - 1) // self.steps_per_epoch + 1}, step {(g - 1) % self.steps_per_epoch + 1} "
                f"(global step {g})")

    def health(self) -> tuple:
        """This rank's (first step with a non-finite loss, that loss, last finite loss, non-finite
        tensors among the weights and optimiser state)."""
        bad_step, bad_loss, last = self.watch.state()
        tensors = [] if bad_step is not None else ckpt_mod.nonfinite_tensors(
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()})
        return bad_step, bad_loss, last, tensors

    def raise_if_diverged(self, reports: list) -> None:
        """Stop every rank alike (``reports``: one ``health()`` per rank) if any saw a non-finite value."""
        losses = [r for r in reports if r[0] is not None]
        if losses:
            step, value, last, _ = min(losses, key=lambda r: r[0])
            what = f"the loss became {value} {self.where(step)}"
        else:
            tensors = next((r[3] for r in reports if r[3]), None)
            if not tensors:
                return
            last = reports[0][2]
            what = (f"non-finite values in {', '.join(tensors[:3])}{' ...' if len(tensors) > 3 else ''} "
                    f"{self.where(self.global_step, 'after')}")
        last_s = f"last finite loss {last:.4g}" if last is not None else "no finite loss before it"
        raise TrainingDiverged(f"training diverged: {what}; {last_s}; nothing non-finite was saved "
                               f"(the last checkpoint written stays as it was); lower --lr (it is {self.args.lr:g})")

    def save(self, epoch: int, step_in_epoch: int) -> None:
        # Collectives first (every rank), then only rank 0 writes.
        parts = D.all_gather_object(self.info, (ckpt_mod.rng_state(), list(self.acc), self.health()))
        self.raise_if_diverged([p[2] for p in parts])
        rngs, accs = [p[0] for p in parts], [p[1] for p in parts]
        if not self.info.is_main:
            return
        ckpt_mod.atomic_save({
            "format": ckpt_mod.FORMAT, "meta": self.meta, "model": self._state(self.model),
            **({"masks_2_4": self._masks()} if self.sparse_2_4 else {}),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch, "world_size": self.info.world_size, "rng": rngs,
            "epoch_accum": accs, "history": self.history, "best_accuracy": self.best_acc,
            "best_epoch": self.best_epoch, "train_time_s": self.train_time, "config": _config(self.args)},
            self.ckpt_path)

    def _state(self, model: torch.nn.Module) -> dict:
        """The state_dict saved: with 2:4 masks, the plain one (masks applied, no mask keys), so every
        loader of our checkpoints reads it; the masks themselves go to checkpoint.pt (``_masks``)."""
        if self.sparse_2_4:
            from ..pruning import plain_state_dict
            return plain_state_dict(model)
        return model.state_dict()

    def _masks(self) -> dict:
        from ..pruning import masks_of
        return masks_of(self.model)

    # ------------------------------------------------------------------------------------ epochs
    def train_epoch(self, epoch: int) -> None:
        """The steps of one epoch (from the resume point on the first one); leaves this epoch's sums
        in ``self.acc``."""
        args, device, info = self.args, self.device, self.info
        self.net.train()
        time_before = self.train_time
        batches = epoch_batches(len(self.ds.train), args.batch_size, epoch, args.seed, info)
        first = self.start_step if epoch == self.start_epoch else 0
        if first == 0:
            self.acc = [0.0, 0.0, 0.0]
        bar = self.log.bar(len(batches), first, f"epoch {epoch + 1}/{args.epochs}")
        t0 = time.perf_counter()
        loss_t = torch.zeros((), dtype=torch.float64, device=device)
        correct_t = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for step, (x, y) in enumerate(iterate(self.ds.train, batches[first:], args.workers, device), start=first):
            loss, logits, y, boundary = self._step(x, y, epoch, step, len(batches))
            loss_t += loss.detach().double() * y.numel()
            correct_t += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if self.kill_at and self.global_step == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            # Checkpoints (periodic, Ctrl-C) only between optimiser steps: accumulated gradients are not saved.
            self.pending_save |= bool(args.save_every) and self.global_step % args.save_every == 0
            if boundary and step + 1 < len(batches) and (self.pending_save or self.sigint.hit):
                self.pending_save = False
                self.acc = [self.acc[0] + float(loss_t), self.acc[1] + float(correct_t), self.acc[2] + seen]
                loss_t.zero_(), correct_t.zero_()
                seen = 0
                self.train_time += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save(epoch, step + 1)
                if self.sigint.hit:
                    self._interrupted(epoch, step + 1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.train_time += time.perf_counter() - t0
        self.epoch_time = self.train_time - time_before
        if bar is not None:
            bar.close()
        self.acc = [self.acc[0] + float(loss_t), self.acc[1] + float(correct_t), self.acc[2] + seen]

    def _step(self, x, y, epoch: int, step: int, n_batches: int):
        """Forward and backward of batch (x, y); the optimiser steps after every --accumulate batches
        and after the epoch's last. Returns (loss, logits, y on the device, whether it stepped)."""
        args, device, k = self.args, self.device, self.accumulate
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        gen = batch_generator(args.seed, epoch, step, self.info.rank)
        # erased rectangles get the data set mean, i.e. 0 after normalisation (as torchvision's RandomErasing)
        x = self.aug(x, gen, erase_fill=self.mean_t)
        x = normalize(x, self.mean_t, self.std_t)
        target = y
        mixup, cutmix = getattr(args, "mixup", 0.0), getattr(args, "cutmix", 0.0)
        if mixup > 0 or cutmix > 0:
            # probability targets [N, classes] for the loss; accuracy is still counted against y
            x, target, _, _ = mix_batch(x, y, self.ds.num_classes, mixup, cutmix, gen)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        boundary = (step + 1) % k == 0 or step + 1 == n_batches
        # DDP: no gradient all-reduce for the batches that only accumulate
        ddp = isinstance(self.net, torch.nn.parallel.DistributedDataParallel)
        sync = self.net.no_sync() if ddp and not boundary else contextlib.nullcontext()
        amp_dtype = self.amp_dtype
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = self.net(x)
                if self.teacher is not None:
                    loss = self.criterion(logits.float(), self._teacher_logits(x), target)
                else:
                    loss = self.criterion(logits.float(), target)
            self.watch.update(loss, self.global_step + 1)
            if self.watch.bad_step is not None and not self.info.enabled:
                # Known without a sync (eager): stop before the non-finite update. Under torchrun the
                # ranks stop together, at the next collective (checkpoint or end of epoch).
                self.raise_if_diverged([self.health()])
            if step % k == 0:
                self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss / k if k > 1 else loss).backward()
        if boundary:
            if getattr(args, "clip_grad_norm", None):
                self.scaler.unscale_(self.optimizer)   # clip the true gradients, not the loss-scaled ones
                torch.nn.utils.clip_grad_norm_(self.params, args.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
        self.global_step += 1
        return loss, logits, y, boundary

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated, tested and saved as best.pt: the EMA ones with --ema-decay."""
        return self.ema.module if self.ema is not None else self.model

    def _evaluate(self, split) -> tuple:
        """(classification_metrics, mean loss) of the model on ``split``."""
        args = self.args
        targets, scores, loss = evaluate(self.eval_model, split, self.mean_t, self.std_t, self.device,
                                         args.eval_batch_size, self.info, args.amp, args.channels_last, args.workers)
        return classification_metrics(targets, scores, self.ds.num_classes), loss

    def end_epoch(self, epoch: int) -> None:
        """Validation, the history row (also history.csv), best.pt and the end-of-epoch checkpoint."""
        args, info = self.args, self.info
        # Before evaluating (non-finite weights give non-finite scores) and before best.pt, which holds
        # these same weights.
        self.raise_if_diverged(D.all_gather_object(info, self.health()))
        tot_loss, tot_correct, tot_seen = D.all_reduce_sum(info, self.acc, self.device)
        rec = {"epoch": epoch + 1, "train_loss": tot_loss / max(1, tot_seen),
               "train_accuracy": tot_correct / max(1, tot_seen)}
        if self.val is not None:
            m, val_loss = self._evaluate(self.val)
            rec.update(val_loss=val_loss, val_accuracy=m["test_accuracy"], val_top5_accuracy=m["test_top5_accuracy"])
        rec.update(lr=self.optimizer.param_groups[0]["lr"], train_time_s=round(self.train_time, 3),
                   elapsed_s=round(time.perf_counter() - self.wall0, 3), global_step=self.global_step,
                   images_per_s=round(tot_seen / self.epoch_time, 1) if self.epoch_time > 0 else None)
        self.history.append(rec)
        val = (f"  val loss {rec['val_loss']:.4f} acc {100 * rec['val_accuracy']:6.2f}%" if self.val is not None
               else "")
        self.log(f"epoch {epoch + 1:>3}/{args.epochs}  train loss {rec['train_loss']:.4f} "
                 f"acc {100 * rec['train_accuracy']:6.2f}%{val}  lr {rec['lr']:.3g}  {self.train_time:6.1f}s")
        # Without a validation split every epoch is "best": best.pt is then the latest model.
        score = rec.get("val_accuracy", math.inf)
        improved = score > self.best_acc or self.val is None
        if improved:
            self.best_acc, self.best_epoch = rec.get("val_accuracy"), epoch + 1
        self.acc = [0.0, 0.0, 0.0]
        if info.is_main:
            write_history_csv(self.history, os.path.join(self.out, "history.csv"))
            if self.tb is not None:
                for key, value in rec.items():
                    if key != "epoch" and value is not None:
                        self.tb.add_scalar(key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key,
                                           value, epoch + 1)
                self.tb.flush()
            if improved:
                ckpt_mod.atomic_save({"format": ckpt_mod.FORMAT, "meta": self.meta,
                                      "model": self._state(self.eval_model), "epoch": epoch + 1, "val_accuracy": self.best_acc, "config": _config(args)},
                                     os.path.join(self.out, "best.pt"))
        self.save(epoch + 1, 0)
        self.pending_save = False
        if self.sigint.hit and epoch + 1 < args.epochs and not self.stop_early():
            self._interrupted(epoch + 1, 0)

    def stop_early(self) -> bool:
        """--patience N: true once N epochs have passed without a better validation accuracy (computed
        from the history, so a resumed run decides the same)."""
        patience = getattr(self.args, "patience", None)
        return bool(patience) and self.val is not None and bool(self.history) and \
            self.history[-1]["epoch"] - self.best_epoch >= patience

    def _interrupted(self, epoch: int, step: int):
        """After Ctrl-C and the checkpoint of (epoch, step): stop with the command that resumes."""
        at = f"epoch {epoch + 1}, step {step}/{self.steps_per_epoch}" if step else f"the end of epoch {epoch}"
        raise Interrupted(f"interrupted at {at}; checkpoint saved to {self.ckpt_path}; resume with: "
                          f"pyimgcls train --resume --out {shlex.quote(self.out)}")

    # ------------------------------------------------------------------------------------ report
    def finish(self) -> dict:
        """The test split, evaluated once on the final model; metrics.json, the plots and the closing
        lines; returns the metrics."""
        args, ds, info, out = self.args, self.ds, self.info, self.out
        m, test_loss = self._evaluate(ds.test)
        train_time, history = self.train_time, self.history
        last = history[-1] if history else {}
        # Images trained on over the whole run (DistributedSampler pads each rank to the same count).
        n_seen = math.ceil(len(ds.train) / info.world_size) * info.world_size * len(history)
        metrics = {
            "test_accuracy": m["test_accuracy"], "test_loss": test_loss, "test_top5_accuracy": m["test_top5_accuracy"],
            "precision_macro": m["precision_macro"], "recall_macro": m["recall_macro"], "f1_macro": m["f1_macro"],
            "confusion_matrix": m["confusion_matrix"], "val_accuracy": last.get("val_accuracy"),
            "val_loss": last.get("val_loss"), "best_val_accuracy": self.best_acc if self.val is not None else None,
            "best_epoch": self.best_epoch, "epochs": len(history), "train_time_s": round(train_time, 3),
            "wall_time_s": round(time.perf_counter() - self.wall0, 3),
            "images_per_s": round(n_seen / train_time, 1) if train_time > 0 else None,
            "kernels": self.kernels, "device": str(self.device), "model": args.model, "dataset": ds.spec,
            "amp": args.amp, "world_size": info.world_size, "resumed_from_step": self.resumed_from,
            "global_step": self.global_step, "num_train": len(ds.train),
            "num_val": len(self.val) if self.val is not None else 0, "num_test": len(ds.test),
            "num_classes": ds.num_classes, "class_names": ds.class_names, "parameters": self.n_params,
            "trainable_parameters": self.n_trainable, "augment": self.aug.describe(), "seed": args.seed,
            "history": history, "config": _config(args)}
        if self.teacher_info is not None:
            metrics["distillation"] = dict(self.teacher_info)
        if info.is_main:
            write_json(metrics, os.path.join(out, "metrics.json"))
            if self.tb is not None:
                for key in ("test_accuracy", "test_loss", "test_top5_accuracy"):
                    self.tb.add_scalar(key.replace("_", "/", 1), metrics[key], len(history))
                self.tb.close()
            if not args.no_plots:
                plot_curves(history, os.path.join(out, "curves.png"))
                plot_confusion(m["confusion_matrix"], ds.class_names, os.path.join(out, "confusion_matrix.png"),
                               f"{args.model} on {ds.name}: test accuracy {100 * m['test_accuracy']:.2f}%")
        log, kernels = self.log, self.kernels
        best = (f"; best validation {100 * self.best_acc:.2f}% at epoch {self.best_epoch} (best.pt)"
                if self.val is not None else "")
        log(f"done: test accuracy {100 * m['test_accuracy']:.2f}% (top-5 {100 * m['test_top5_accuracy']:.2f}%), "
            f"test loss {test_loss:.4f}, macro F1 {m['f1_macro']:.4f}{best}")
        log(f"      {metrics['epochs']} epochs, train time {train_time:.1f}s, {metrics['images_per_s']} images/s, "
            f"wall time {metrics['wall_time_s']:.1f}s; kernels: {kernels} ({KERNEL_DESCRIPTIONS[kernels]}) on "
            f"{self.device}")
        if info.is_main:
            plots = "" if args.no_plots else ", curves.png, confusion_matrix.png"
            log(f"      wrote {out}/metrics.json, history.csv, config.json, checkpoint.pt, best.pt{plots}")
        return metrics


def _init_checkpoint(args) -> tuple[dict, dict]:
    """``train --init FILE``: (meta, checkpoint) of FILE (a training run's or a pruned one); the model
    name and image size come from it, so the data pipeline matches the model being fine-tuned."""
    if args.pretrained:
        raise ArgumentValueError("--init and --pretrained both give starting weights; pass only one")
    ck = ckpt_mod.load_weights_only(args.init, "--init")
    if not isinstance(ck, dict) or ck.get("format") != ckpt_mod.FORMAT:
        raise DataError(f"--init {args.init} is not a pyimgcls checkpoint (no format tag {ckpt_mod.FORMAT!r})")
    kind = ck.get("kind", "trained")
    if kind not in ("trained", "pruned"):
        raise DataError(f"--init {args.init} is a {kind!r} checkpoint; only float ones can be trained further")
    meta = ck["meta"]
    explicit = getattr(args, "explicit", None)
    if explicit is not None and "model" in explicit and args.model.lower() != meta["model"].lower():
        raise ArgumentValueError(f"--model {args.model}: --init {args.init} holds a {meta['model']}; the "
                                 f"architecture comes from the file, so leave --model out")
    args.model = meta["model"]
    if args.image_size is None:
        args.image_size = meta["image_size"]
    bad = ckpt_mod.nonfinite_tensors(ck["model"])
    if bad:
        raise ArgumentValueError(f"--init: {args.init} holds non-finite weights ({', '.join(bad[:3])})")
    return meta, ck


# ------------------------------------------------------------------------------- eval / predict
def _build_checkpoint_model(meta: dict, what: str, dropout: float | None = None) -> torch.nn.Module:
    """The model a checkpoint's ``meta`` describes, with fresh weights: the zoo model, resized to the
    layer widths in ``meta["architecture"]`` when it was pruned (plain data: no code of the pruning run
    is needed)."""
    model = build_model(meta["model"], meta["num_classes"], meta["in_channels"], dropout)
    if meta.get("architecture") is not None:
        from ..pruning import apply_architecture
        apply_architecture(model, meta["architecture"], what)
    return model


# How each kind of checkpoint becomes a module once ``_build_checkpoint_model`` has built its float
# architecture: (model, checkpoint, path) -> model with the checkpoint's weights. Training runs and
# ``pyimgcls prune`` files hold a float state_dict; another kind (quantised) adds its entry here.
def _load_float_state(model: torch.nn.Module, ck: dict, path: str) -> torch.nn.Module:
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise DataError(f"{path}: the weights do not fit the model the checkpoint describes: "
                        f"{str(e).splitlines()[0]}") from None
    return model


def _load_quantized_state(model: torch.nn.Module, ck: dict, path: str) -> torch.nn.Module:
    from ..quantization._cli import load_quantized
    return load_quantized(model, ck, path)


CHECKPOINT_KINDS = {"trained": _load_float_state, "pruned": _load_float_state, "quantized": _load_quantized_state}


def _load_model(path: str, what: str = "--checkpoint"):
    """(model on the CPU in eval mode, meta, checkpoint) from any of our checkpoint files; no side effects."""
    ck = ckpt_mod.load_checkpoint(path)
    meta = ck["meta"]
    kind = ck.get("kind", "trained")
    if kind not in CHECKPOINT_KINDS:
        raise DataError(f"{what}: {path} is a {kind!r} checkpoint, which this version of pyimgcls cannot load "
                        f"(it loads: {', '.join(CHECKPOINT_KINDS)})")
    bad = ckpt_mod.nonfinite_tensors(ck["model"])
    if bad:
        # Scores would all be NaN (and scikit-learn's metrics refuse them): say what is wrong instead.
        raise ArgumentValueError(f"{what}: {path} holds non-finite weights ({', '.join(bad[:3])}"
                                 f"{' ...' if len(bad) > 3 else ''}), e.g. from a run that diverged")
    model = CHECKPOINT_KINDS[kind](_build_checkpoint_model(meta, f"{what} {path}"), ck, path)
    return model.eval(), meta, ck


def load_model(path: str) -> torch.nn.Module:
    """The model (on the CPU, in eval mode) from any of our checkpoints: a training run's
    ``checkpoint.pt`` / ``best.pt`` or a file written by ``pyimgcls prune`` or ``pyimgcls quantize``
    (a ``pyimgcls.quantization.QuantizedModel``: int8 kernels, CPU / Triton / torch backends). The file is loaded as
    data only (``torch.load(weights_only=True)``); the architecture comes from the file."""
    from ..errors import ArgumentTypeError
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"load_model: argument 'path' must be a file path, got {type(path).__name__}")
    return _load_model(os.fspath(path), "load_model: path")[0]


def _model_from_checkpoint(path: str, device: torch.device):
    model, meta, ck = _load_model(path)
    if device.type == "cpu":
        # a quantised model's weights are int8 buffers, not parameters: count them too
        from ..quantization import QuantizedModel
        n = sum(p.numel() for p in model.parameters())
        n += sum(w.q.numel() for w in model.weights.values()) if isinstance(model, QuantizedModel) else 0
        set_cpu_threads(auto_threads(0, n))
    return model.to(device).eval(), meta, ck


def _with_threads(fn):
    """Run eval / predict with train's CPU thread choice, restoring the caller's afterwards."""
    def wrapper(args):
        saved = set_cpu_threads(torch.get_num_threads())     # only to learn the current counts
        try:
            return fn(args)
        finally:
            restore_cpu_threads(saved)
    wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
    return wrapper


@_with_threads
def evaluate_checkpoint(args) -> dict:
    device = pick_device(args.kernels, args.device)
    kernels = resolve_kernels(args.kernels, device)
    model, meta, _ = _model_from_checkpoint(args.checkpoint, device)
    spec = args.data or meta["dataset"]
    ds = load_dataset(spec, image_size=meta["image_size"], in_channels=meta["in_channels"],
                      num_classes=meta["num_classes"], synthetic_size=args.synthetic_size, seed=args.seed)
    if ds.num_classes != meta["num_classes"]:
        raise DataError(f"--data {spec} has {ds.num_classes} classes, the checkpoint's model {meta['num_classes']}")
    test = ds.test.subset(args.limit_test)
    mean_t = torch.tensor(meta["mean"], dtype=torch.float32, device=device)
    std_t = torch.tensor(meta["std"], dtype=torch.float32, device=device)
    if len(test):   # untimed warm-up: first calls of each op pay one-off dispatch set-up
        evaluate(model, test.subset(1), mean_t, std_t, device, 1, D.DistInfo())
    t0 = time.perf_counter()
    targets, scores, loss = evaluate(model, test, mean_t, std_t, device, args.batch_size, D.DistInfo(),
                                     workers=args.workers)
    elapsed = time.perf_counter() - t0
    m = classification_metrics(targets, scores, meta["num_classes"])
    m.update(test_loss=loss, num_test=len(test), kernels=kernels, device=str(device), model=meta["model"],
             dataset=ds.spec, checkpoint=os.path.abspath(args.checkpoint), eval_time_s=round(elapsed, 3),
             images_per_s=round(len(test) / elapsed, 1) if elapsed > 0 else None, class_names=meta["class_names"])
    print(f"pyimgcls eval: {meta['model']} from {args.checkpoint} on {ds.spec} ({len(test)} test images), "
          f"kernels: {kernels} on {device}")
    print(f"  test accuracy {100 * m['test_accuracy']:.2f}%  top-5 {100 * m['test_top5_accuracy']:.2f}%  "
          f"loss {loss:.4f}  macro P/R/F1 {m['precision_macro']:.4f}/{m['recall_macro']:.4f}/{m['f1_macro']:.4f}  "
          f"{m['images_per_s']} images/s")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_json(m, os.path.join(args.out, "eval_metrics.json"))
        plot_confusion(m["confusion_matrix"], meta["class_names"], os.path.join(args.out, "eval_confusion_matrix.png"))
        print(f"  wrote {args.out}/eval_metrics.json, eval_confusion_matrix.png")
    return m


class PredictErrors(Exception):
    """Some image files of ``pyimgcls predict`` could not be read; the others were predicted. The CLI
    prints each message (one line each) and exits with status 2."""

    def __init__(self, messages: list[str]):
        super().__init__("; ".join(messages))
        self.messages = messages


def _image_files(paths: list[str]) -> list[str]:
    """The files named, with each folder replaced by the image files under it (sorted, recursively)."""
    from ..data.datasets import IMAGE_EXTENSIONS
    files = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ArgumentValueError(f"IMAGE: folder {p} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        else:
            files.append(p)
    return files


def _write_predictions(results: list[dict], path: str) -> None:
    """--output: JSON (the list predict returns) or CSV (one row per image and rank), by extension."""
    if path.lower().endswith(".json"):
        write_json(results, path)
        return
    import csv
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "rank", "class", "index", "probability"])
        for r in results:
            for rank, t in enumerate(r["top"], 1):
                w.writerow([r["image"], rank, t["class"], t["index"], t["probability"]])


@_with_threads
def predict(args) -> list[dict]:
    """Top-k classes of every image file (folders are expanded); prints them, writes --output. A file
    that cannot be read is reported and skipped; after the others are predicted, PredictErrors."""
    output = getattr(args, "output", None)
    if output is not None and not output.lower().endswith((".csv", ".json")):
        raise ArgumentValueError(f"--output: {output} must end in .csv or .json")
    files = _image_files(args.images)
    device = pick_device(args.kernels, args.device)
    resolve_kernels(args.kernels, device)
    model, meta, _ = _model_from_checkpoint(args.checkpoint, device)
    mean_t = torch.tensor(meta["mean"], dtype=torch.float32, device=device)
    std_t = torch.tensor(meta["std"], dtype=torch.float32, device=device)
    k = min(args.top, meta["num_classes"])
    names = meta["class_names"]
    results, errors = [], []
    batch = 64   # images decoded and classified together; a folder of any size stays in bounded memory
    for i in range(0, len(files), batch):
        paths, images = [], []
        for path in files[i:i + batch]:
            try:
                images.append(load_image(path, meta["image_size"], meta["in_channels"]))
                paths.append(path)
            except DataError as e:
                errors.append(str(e))
        if not images:
            continue
        with torch.no_grad():
            logits = model(normalize(torch.stack(images).to(device), mean_t, std_t))
        p, idx = torch.softmax(logits.float(), dim=1).cpu().topk(k, dim=1)
        for path, pr, ix in zip(paths, p.tolist(), idx.tolist()):
            top = [{"class": names[j], "index": j, "probability": round(q, 6)} for q, j in zip(pr, ix)]
            results.append({"image": path, "top": top})
            print(path)
            for r, t in enumerate(top, 1):
                print(f"  {r}. {t['class']:<16} {100 * t['probability']:7.3f}%")
    if output is not None:
        _write_predictions(results, output)
    if errors:
        raise PredictErrors(errors)
    return results
