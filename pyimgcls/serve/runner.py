"""The model side of ``pyimgcls serve``: one worker thread owns the model and runs every batch.

Requests arrive on the event loop and are queued here as :class:`Item` (images already decoded, or a
normalised v2 tensor). The worker thread forms batches by the dynamic-batching rule:

* the worker was idle (it had to wait for work): the first request is dispatched at once, with
  whatever else has queued meanwhile, so a lone client pays no batching delay;
* the worker comes back from a batch and finds requests waiting: it dispatches when they fill
  ``max_batch`` rows or when the oldest has waited ``max_delay_s``, whichever comes first;
* draining (SIGTERM) or stopping: everything queued is dispatched at once, in batches.

A batch is padded with zero rows to the next of a few fixed sizes (powers of two up to
``max_batch``, and ``max_batch`` itself) so the kernels see a handful of shapes, each warmed up before
the server reports ready. Padding never changes a real row: every layer of an eval-mode classifier
works per image.

All torch work happens in this one thread: the model is loaded here (``_model_from_checkpoint`` sets
the intra-op thread count, and OpenMP's count is per calling thread), gradients are off here
(``torch.no_grad`` is thread-local), and the event loop never blocks on a kernel."""
from __future__ import annotations

import collections
import hashlib
import sys
import threading
import time
import traceback

import torch

from ..data import normalize
from ..training import loop as _loop

def padded_sizes(max_batch: int) -> tuple[int, ...]:
    """Rows per batch the worker pads to: powers of two below ``max_batch``, and ``max_batch``."""
    sizes, s = [], 1
    while s < max_batch:
        sizes.append(s)
        s *= 2
    return tuple(sizes) + (max_batch,)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Item:
    """One queued request: ``x`` [n, C, H, W] float32 on the CPU, ``raw`` when it still needs the
    checkpoint's normalisation (v1 images in [0, 1]) or False for a normalised v2 tensor; ``top_k``
    for v1 (answer: top-k list) or None (answer: the probability rows)."""
    __slots__ = ("x", "raw", "top_k", "n", "t_enqueued", "future", "loop")

    def __init__(self, x: torch.Tensor, raw: bool, top_k: int | None, future, loop):
        self.x, self.raw, self.top_k, self.n = x, raw, top_k, int(x.shape[0])
        self.future, self.loop = future, loop
        self.t_enqueued = 0.0


def _deliver(future, value, error) -> None:
    # Runs on the event loop; a request that timed out has cancelled its future already.
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class ModelRunner:
    """Loads the checkpoint in its worker thread, warms up every padded batch size, then serves
    batches until :meth:`stop`. ``on_batch(rows, seconds)`` is called after each batch (metrics)."""

    def __init__(self, checkpoint: str, device: torch.device, kernels: str, max_batch: int,
                 max_delay_s: float, max_queue: int, on_batch=None, threads: int = 0):
        self.checkpoint, self.device, self.kernels, self.threads = checkpoint, device, kernels, threads
        self.max_batch, self.max_delay_s, self.max_queue = max_batch, max_delay_s, max_queue
        self.sizes = padded_sizes(max_batch)
        self.on_batch = on_batch or (lambda rows, seconds: None)
        self.meta: dict = {}
        self.sha256 = ""
        self.load_seconds = self.warmup_seconds = 0.0
        self.load_error: BaseException | None = None
        self.loaded = threading.Event()
        self.ready = threading.Event()
        self.busy = False               # a batch is running (the pyimgcls_model_busy gauge)
        self.draining = False           # dispatch without delay (SIGTERM); new requests still accepted
        self._stopping = False          # no new requests; the worker exits once the queue is empty
        self._queue: collections.deque[Item] = collections.deque()
        self._emptied = False           # abandon() emptied the queue while the worker waited
        self._cond = threading.Condition()
        self._start_warmup = threading.Event()
        self._thread = threading.Thread(target=self._main, name="pyimgcls-serve-worker", daemon=True)

    # ------------------------------------------------------------------------------ life cycle
    def load(self) -> None:
        """Start the worker and wait until the model is loaded (not yet warmed up); re-raises the
        loading error (a bad checkpoint) in the caller's thread."""
        self._thread.start()
        self.loaded.wait()
        if self.load_error is not None:
            self._thread.join()
            raise self.load_error

    def start_warmup(self) -> None:
        self._start_warmup.set()

    def begin_drain(self) -> None:
        with self._cond:
            self.draining = True
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests, answer every queued one, end the worker."""
        with self._cond:
            self._stopping = self.draining = True
            self._cond.notify()
        self._start_warmup.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def queue_depth(self) -> int:
        return len(self._queue)

    def submit(self, item: Item) -> str | None:
        """Queue ``item``; None when queued, else why not (``"full"`` or ``"stopping"``)."""
        with self._cond:
            if self._stopping:
                return "stopping"
            if len(self._queue) >= self.max_queue:
                return "full"
            item.t_enqueued = time.perf_counter()
            self._queue.append(item)
            self._cond.notify()
        return None

    def abandon(self, item: Item) -> None:
        """The request of ``item`` timed out (504): drop it from the queue if it is still there, so it
        takes no queue slot or batch row; a worker left waiting on nothing goes back to idle."""
        with self._cond:
            try:
                self._queue.remove(item)
            except ValueError:     # already in a batch: its answer is dropped on delivery
                return
            if not self._queue:
                self._emptied = True
            self._cond.notify()

    # ------------------------------------------------------------------------------ the worker
    def _main(self) -> None:
        try:
            t0 = time.perf_counter()
            model, meta, _ = _loop._model_from_checkpoint(self.checkpoint, self.device)
            if self.threads and self.device.type == "cpu":   # else the loader's choice, as predict's
                _loop.set_cpu_threads(self.threads)
            self.sha256 = file_sha256(self.checkpoint)
            self.model, self.meta = model, meta
            self.mean = torch.tensor(meta["mean"], dtype=torch.float32, device=self.device)
            self.std = torch.tensor(meta["std"], dtype=torch.float32, device=self.device)
            self.load_seconds = time.perf_counter() - t0
        except BaseException as e:     # handed to load()'s caller: the CLI turns it into one line
            self.load_error = e
            self.loaded.set()
            return
        self.loaded.set()
        self._start_warmup.wait()
        with torch.no_grad():
            if not self._stopping:
                self._warm_up()
                self.ready.set()
            while True:
                items = self._next_batch()
                if items is None:
                    return
                self._run(items)

    def _warm_up(self) -> None:
        """Every padded size twice: the first call of each shape pays one-off dispatch and kernel
        set-up, the second confirms a steady state before /readyz says 200."""
        t0 = time.perf_counter()
        c, s = self.meta["in_channels"], self.meta["image_size"]
        for size in self.sizes:
            x = torch.zeros(size, c, s, s, dtype=torch.float32, device=self.device)
            for _ in range(2):
                self.model(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.warmup_seconds = time.perf_counter() - t0

    def _next_batch(self) -> list[Item] | None:
        with self._cond:
            idle = not self._queue
            self._emptied = False
            while True:
                # every request waited on timed out (even if another has arrived since): idle again
                idle = idle or self._emptied
                while not self._queue:
                    if self._stopping:
                        return None
                    idle = True        # nothing left to wait for: the next arrival goes at once
                    self._cond.wait()
                if idle or self.draining:
                    break
                # Back from a batch with requests waiting: dispatch when they fill a batch or the
                # oldest has waited max_delay.
                rows = sum(it.n for it in self._queue)
                left = self._queue[0].t_enqueued + self.max_delay_s - time.perf_counter()
                if rows >= self.max_batch or left <= 0:
                    break
                self._cond.wait(left)
            items, rows = [], 0
            while self._queue and rows + self._queue[0].n <= self.max_batch:
                it = self._queue.popleft()
                items.append(it)
                rows += it.n
            return items

    def _run(self, items: list[Item]) -> None:
        if not items:
            return
        t0 = time.perf_counter()
        self.busy = True
        try:
            parts = [normalize(it.x.to(self.device), self.mean, self.std) if it.raw else it.x.to(self.device)
                     for it in items]
            x = parts[0] if len(parts) == 1 else torch.cat(parts)
            rows = x.shape[0]
            size = next(s for s in self.sizes if s >= rows)
            if size > rows:
                x = torch.cat([x, x.new_zeros((size - rows, *x.shape[1:]))])
            logits = self.model(x)[:rows]
            probs = torch.softmax(logits.float(), dim=1).cpu()   # as pyimgcls predict
            answers, r = [], 0
            for it in items:
                p = probs[r:r + it.n]
                r += it.n
                if it.top_k is None:
                    answers.append(p)
                else:
                    k = min(it.top_k, p.shape[1])
                    q, idx = p.topk(k, dim=1)
                    answers.append((q[0].tolist(), idx[0].tolist()))
        except Exception as e:     # a kernel failure fails this batch's requests, not the server
            print(f"pyimgcls serve: batch of {len(items)} requests failed: {type(e).__name__}: {e}",
                  file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            for it in items:
                it.loop.call_soon_threadsafe(_deliver, it.future, None, RuntimeError("inference failed"))
            return
        finally:
            self.busy = False
        self.on_batch(rows, time.perf_counter() - t0)
        for it, a in zip(items, answers):
            it.loop.call_soon_threadsafe(_deliver, it.future, a, None)

