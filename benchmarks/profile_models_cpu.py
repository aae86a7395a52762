"""Where a model's CPU time goes, per kernel entry point, ours against PyTorch's (issue #20).

    python benchmarks/profile_models_cpu.py --model resnet18 [--pass fwd|train] [--batch 16]
        [--threads 1] [--rounds 5] [--by layer|kind] [--top 25]

Every kernel entry point the op files call (``backends.kernels(backend, family).<entry>``) is timed
with ``perf_counter`` through the same hook ``pyimgcls.explain`` uses (``backends.set_recorder``), on
the ``cpu`` and the ``torch`` backend, the model's pass run alternately on the two, ``--rounds`` times
after a warm-up; per (entry, layer shape) the minimum over rounds of its summed time in one pass is
kept. "other" is the whole pass's minimum minus the entry points' sum (Python, autograd, optimizer,
copies between the ops). Ratio = torch ms / our ms (> 1: ours is faster). Same inputs and method as
``bench_models_cpu.py`` (3 x 64 x 64, NCHW, 10 classes; train = forward, cross-entropy, backward, SGD).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_models_cpu as bmc  # noqa: E402

from pyimgcls import backends  # noqa: E402


def _layer(family: str, entry: str, args) -> str:
    """A short label of the layer an entry point runs: kernel size, groups, spatial size, channels."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if family == "conv" and len(tensors) >= 2 and tensors[1].dim() == 4:
        x, w = tensors[0], tensors[1]
        ints = [a for a in args if isinstance(a, (int, tuple, list)) and not isinstance(a, bool)]
        stride = ints[0] if ints else "?"
        stride = stride[0] if isinstance(stride, (tuple, list)) else stride
        groups = ints[3] if len(ints) > 3 else 1
        kind = "dw" if isinstance(groups, int) and groups > 1 and groups == x.shape[1] else (
            f"g{groups}" if groups != 1 else "")
        cl = " cl" if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 \
            and not x.is_contiguous() else ""
        return (f"{w.shape[2]}x{w.shape[3]}{kind} s{stride} {x.shape[2]}x{x.shape[3]} "
                f"{w.shape[1] * (groups if isinstance(groups, int) else 1)}->{w.shape[0]}{cl}")
    if tensors:
        return "x".join(map(str, tensors[0].shape))
    return ""


class _Timer:
    """Stands in for backends' recorder: hands out timed views of the family modules."""

    def __init__(self):
        self.acc = defaultdict(float)

    def family(self, backend, family, mod):
        return _Timed(self, family, mod)


class _Timed:
    def __init__(self, timer, family, mod):
        self._t, self._f, self._m = timer, family, mod

    def __getattr__(self, name):
        fn = getattr(self._m, name)
        if not callable(fn) or name.startswith("plan_"):
            return fn

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self._t.acc[(f"{self._f}.{name}", _layer(self._f, name, args))] += time.perf_counter() - t0
            return out
        return timed


def profile(name: str, pass_: str, batch: int, threads: int, rounds: int):
    torch.set_num_threads(threads)
    model, x, target = bmc.build(name, batch)
    bmc.check_close(model, x)
    model.train(pass_ == "train")
    fns = {b: bmc._pass_fn(model, x, target, pass_, b, None) for b in ("cpu", "torch")}
    timer = _Timer()
    best = {b: defaultdict(lambda: math.inf) for b in fns}
    whole = {b: math.inf for b in fns}
    backends.set_recorder(timer)
    try:
        for r in range(rounds + 1):
            for b in (("cpu", "torch") if r % 2 else ("torch", "cpu")):
                timer.acc.clear()
                t0 = time.perf_counter()
                fns[b]()
                dt_ = time.perf_counter() - t0
                if r == 0:
                    continue  # warm-up
                whole[b] = min(whole[b], dt_)
                for k, v in timer.acc.items():
                    best[b][k] = min(best[b][k], v)
    finally:
        backends.set_recorder(None)
    return best, whole


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--pass", dest="pass_", default="fwd", choices=["fwd", "train"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--by", default="layer", choices=["layer", "kind"])
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    best, whole = profile(args.model, args.pass_, args.batch, args.threads, args.rounds)
    rows = defaultdict(lambda: [0.0, 0.0])
    for i, b in enumerate(("cpu", "torch")):
        for (entry, layer), v in best[b].items():
            key = (entry, layer) if args.by == "layer" else (entry, layer.split(" ")[0])
            rows[key][i] += v * 1e3
    print(f"{args.model} {args.pass_} batch {args.batch}, {args.threads} thread(s), min of {args.rounds} "
          f"rounds: whole pass ours {whole['cpu'] * 1e3:.1f} ms, torch {whole['torch'] * 1e3:.1f} ms, "
          f"ratio {whole['torch'] / whole['cpu']:.2f}")
    print(f"{'entry':<24} {'layer':<34} {'ours ms':>9} {'torch ms':>9} {'ratio':>6} {'gap ms':>7}")
    ordered = sorted(rows.items(), key=lambda kv: kv[1][1] - kv[1][0])
    for (entry, layer), (ours, ref) in ordered[:args.top]:
        print(f"{entry:<24} {layer:<34} {ours:9.2f} {ref:9.2f} {ref / max(ours, 1e-9):6.2f} {ours - ref:7.2f}")
    sums = [sum(v[i] for v in rows.values()) for i in range(2)]
    print(f"{'kernels (sum)':<59} {sums[0]:9.2f} {sums[1]:9.2f} {sums[1] / sums[0]:6.2f}")
    print(f"{'other (Python, autograd, optimizer)':<59} {whole['cpu'] * 1e3 - sums[0]:9.2f} "
          f"{whole['torch'] * 1e3 - sums[1]:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
