"""Structured pruning, end to end on the CPU: ResNet-18 on digits (32x32), trained, 50 % of the
channels pruned, fine-tuned; accuracy, parameters and inference wall-clock against the unpruned model.

Steps (each through the CLI, in this process):
1. ``pyimgcls train --model resnet18 --data digits --epochs E`` (or ``--base DIR``: reuse a run);
2. ``pyimgcls prune --checkpoint DIR/best.pt --amount A --criterion C``;
3. ``pyimgcls train --init pruned.pt --epochs F --lr LR`` (fine-tuning);
4. ``pyimgcls eval`` (360 test images) of the dense best.pt, the pruned file before fine-tuning and
   the fine-tuned best.pt;
5. inference timing: the unpruned and the fine-tuned pruned model, loaded with ``pyimgcls.load_model``,
   eval mode, ``torch.no_grad()``, our CPU kernels, 2 threads, batch 64 of 3x32x32, each also after
   ``pyimgcls.fuse_for_inference`` (BN folded into the convs); the two models are timed interleaved
   (dense, pruned, dense, pruned, ... ``--rounds`` times, median per model) so a load change on a
   shared machine hits both alike. FLOPs per image are reported as the multiply-accumulates of every
   conv and Linear (x2), counted from the layer shapes.

Targets (issue #23): accuracy loss <= 1.0 pp, parameters <= 0.35x, inference time <= 0.5x.

Usage (repo root)::

    python benchmarks/bench_prune.py [--work DIR] [--base DIR] [--epochs 6] [--finetune-epochs 4]
                                     [--amount 0.5] [--criterion l1] [--rounds 15] [--out FILE]

Writes ``benchmarks/results/cpu/<date>_cpu-prune-resnet18.json`` (schema pyimgcls-bench/1, plus a
``prune`` summary) unless ``--out`` says otherwise.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

import pyimgcls  # noqa: E402
from pyimgcls import cli  # noqa: E402
from pyimgcls.training.loop import restore_cpu_threads, set_cpu_threads  # noqa: E402

THREADS, BATCH, SIZE = 2, 64, 32


def _cli(*argv) -> None:
    argv = [str(a) for a in argv]
    print("$ pyimgcls " + " ".join(argv), flush=True)
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    if rc not in (0, None):
        raise SystemExit(f"pyimgcls {argv[0]} failed with status {rc}")


def _eval(checkpoint: str, out: str) -> float:
    _cli("eval", "--checkpoint", checkpoint, "--kernels", "cpu", "--out", out)
    with open(os.path.join(out, "eval_metrics.json")) as f:
        return json.load(f)["test_accuracy"]


def macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of every conv and Linear for input ``x`` (from the layer shapes)."""
    total = [0]

    def hook(m, args, out):
        if isinstance(m, torch.nn.Conv2d):
            total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.Linear):
            total[0] += out.numel() * m.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return total[0] // x.shape[0]


def time_interleaved(models: dict, x: torch.Tensor, rounds: int, iters: int) -> dict:
    """Median ms per batch of each model, timed in turn ``rounds`` times (``iters`` batches per turn)."""
    samples = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():        # warm-up: first calls pay one-off set-up
            for _ in range(3):
                m(x)
        for _ in range(rounds):
            for k, m in models.items():
                t0 = time.perf_counter()
                for _ in range(iters):
                    m(x)
                samples[k].append((time.perf_counter() - t0) * 1e3 / iters)
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v)} for k, v in samples.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=None, help="folder for the runs (default: a new temporary one)")
    p.add_argument("--base", default=None, help="reuse this trained resnet18 run folder instead of training one")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--finetune-lr", type=float, default=0.02)
    p.add_argument("--amount", type=float, default=0.5)
    p.add_argument("--criterion", default="l1")
    p.add_argument("--train-threads", type=int, default=1,
                   help="CPU threads of the training and fine-tuning runs (timing always uses 2, and 1 as well): "
                        "on a shared 2-core machine two OpenMP threads spin at every barrier for a descheduled "
                        "partner, and a ResNet-18 training step took ~10x longer with 2 threads than with 1")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default="", help="free text stored in the results (e.g. machine load)")
    p.add_argument("--out", default=None, help="results JSON path")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    work = args.work or tempfile.mkdtemp(prefix="bench_prune_")
    os.makedirs(work, exist_ok=True)
    common = ["--threads", args.train_threads, "--kernels", "cpu", "--no-plots", "--quiet", "--seed", args.seed]

    base = args.base
    if base is None:
        base = os.path.join(work, "base")
        _cli("train", "--model", "resnet18", "--data", "digits", "--epochs", args.epochs, "--out", base,
             "--overwrite", *common)
    pruned_file = os.path.join(work, "pruned.pt")
    _cli("prune", "--checkpoint", os.path.join(base, "best.pt"), "--amount", args.amount, "--criterion",
         args.criterion, "--out", pruned_file)
    ft = os.path.join(work, "finetuned")
    _cli("train", "--init", pruned_file, "--data", "digits", "--epochs", args.finetune_epochs, "--lr",
         args.finetune_lr, "--warmup-epochs", 0, "--out", ft, "--overwrite", *common)
    # every accuracy from `pyimgcls eval` of the file that is timed (best.pt: chosen on validation images)
    acc_base = _eval(os.path.join(base, "best.pt"), os.path.join(work, "eval_dense"))
    acc_pruned_raw = _eval(pruned_file, os.path.join(work, "eval_pruned"))
    acc_ft = _eval(os.path.join(ft, "best.pt"), os.path.join(work, "eval_finetuned"))

    # torch's intra-op pool and our kernels' OpenMP (the system libgomp) both get the thread count;
    # the load average before and after each timing phase says how shared the 2 cores were while timing
    load_before = os.getloadavg()
    saved = set_cpu_threads(THREADS)
    try:
        pyimgcls.set_backend("cpu")
        dense = pyimgcls.load_model(os.path.join(base, "best.pt"))
        pruned = pyimgcls.load_model(os.path.join(ft, "best.pt"))
        x = torch.randn(BATCH, 3, SIZE, SIZE)
        models = {"dense": dense, "pruned": pruned,
                  "dense_fused": pyimgcls.fuse_for_inference(dense),
                  "pruned_fused": pyimgcls.fuse_for_inference(pruned)}
        times = time_interleaved(models, x, args.rounds, args.iters)
        load_after_2t = os.getloadavg()
        # the same at one thread: on a loaded shared machine the least disturbed ratio
        set_cpu_threads(1)
        times_1t = time_interleaved({"dense": dense, "pruned": pruned}, x, args.rounds, args.iters)
        n_dense = sum(q.numel() for q in dense.parameters())
        n_pruned = sum(q.numel() for q in pruned.parameters())
        mac_dense, mac_pruned = macs(dense, x[:1]), macs(pruned, x[:1])
    finally:
        restore_cpu_threads(saved)
        pyimgcls.set_backend("auto")

    load = os.getloadavg()
    summary = {
        "model": "resnet18", "data": "digits (360 test images)", "image": "3x32x32", "amount": args.amount,
        "criterion": args.criterion, "train_epochs": args.epochs if args.base is None else None,
        "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr,
        "test_accuracy_dense": acc_base, "test_accuracy_pruned_before_finetune": acc_pruned_raw,
        "test_accuracy_pruned_finetuned": acc_ft, "accuracy_loss_pp": round(100 * (acc_base - acc_ft), 3),
        "parameters_dense": n_dense, "parameters_pruned": n_pruned,
        "parameter_ratio": round(n_pruned / n_dense, 4),
        "macs_per_image_dense": mac_dense, "macs_per_image_pruned": mac_pruned,
        "time_ratio": round(times["pruned"]["median_ms"] / times["dense"]["median_ms"], 4),
        "time_ratio_fused": round(times["pruned_fused"]["median_ms"] / times["dense_fused"]["median_ms"], 4),
        "time_ratio_1_thread": round(times_1t["pruned"]["median_ms"] / times_1t["dense"]["median_ms"], 4),
        "timings_1_thread_ms": times_1t, "train_threads": args.train_threads,
        "threads": THREADS, "batch": BATCH, "rounds": args.rounds, "iters_per_round": args.iters,
        "timings_ms": times, "load_average_at_end": [round(v, 2) for v in load], "note": args.note,
        "load_average_before_timing": [round(v, 2) for v in load_before],
        "load_average_after_2_thread_timing": [round(v, 2) for v in load_after_2t],
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    results = report.new_results("cpu")
    results["prune"] = summary
    shape = f"{BATCH}x3x{SIZE}x{SIZE}"
    for kind, ref in (("pruned", "dense"), ("pruned_fused", "dense_fused")):
        for prov in (ref, kind):
            ms = times[prov]["median_ms"]
            results["cases"].append({
                "family": "model", "op": "resnet18", "pass": "fwd", "shape": shape, "dtype": "float32",
                "layout": "nchw", "provider": prov, "ms": ms, "ref_provider": ref, "ref_ms": times[ref]["median_ms"],
                "speedup": times[ref]["median_ms"] / ms, "tflops": None, "gbps": None, "roofline_pct": None,
                "flops": 2 * (mac_pruned if prov.startswith("pruned") else mac_dense) * BATCH,
                "images_per_s": BATCH / ms * 1e3, "threads": THREADS})
    out = args.out or os.path.join(report.REPO_ROOT, "benchmarks", "results", "cpu",
                                   f"{dt.date.today().isoformat()}_cpu-prune-resnet18.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "timings_ms"}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
