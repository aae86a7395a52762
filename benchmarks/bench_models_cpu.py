"""Whole models on the CPU: our ``cpu`` backend against PyTorch's own kernels (the ``torch`` backend) on
the same model object and weights, interleaved, in one process (issue #20).

    python benchmarks/bench_models_cpu.py [--models resnet18 mobilenet_v2 ...] [--threads 1 2]
        [--batches 1 16] [--passes fwd train] [--bf16-models resnet18 resnet50] [--rounds 5]
        [--clock wall|thread] [--out FILE]

Cases: every (model, pass, threads, batch) in float32, plus bfloat16 for ``--bf16-models``.
- ``fwd``: eval mode, ``torch.no_grad()``, a model that is not being trained (weights fixed).
- ``train``: train mode, one step = forward, our CrossEntropyLoss, backward, SGD (momentum 0.9) step.
- Input 3 x 64 x 64 (lenet5: 1 x 32 x 32), 10 classes, NCHW, batch 1 and 16.
- bfloat16: ``torch.autocast("cpu", dtype=torch.bfloat16)`` around the pass; our side is compared with
  PyTorch's float32 pass (``ref_ms``) and with PyTorch's own bf16 autocast pass (``ref_bf16_ms``).

Timing: each side's pass runs ``k`` times per sample (``k`` chosen so a sample takes >= 50 ms), the
sides alternate within a round and which goes first alternates between rounds, ``--rounds`` rounds
after one warm-up round; the minimum sample per side is reported (the machine is shared, so minima
and ratios, not single numbers, are the comparison). Threads: ``torch.set_num_threads`` sets the
OpenMP runtime both sides use (our module binds to the libgomp PyTorch loads).

Roofline: FLOPs of a pass (2 x the multiply-accumulates of every conv and Linear, counted by forward
hooks; a train step counted as 3x the forward) over the time, as a percent of the attainable float32
rate measured in the same run at the same thread count: the best of ``torch.matmul`` on 1024^3 and
our own GEMM (min of 5). ``speedup`` = torch ms / our ms (> 1: ours is faster).

Writes ``benchmarks/results/cpu/<date>_cpu-models.json`` (schema pyimgcls-bench/1) unless ``--out``.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_prune  # noqa: E402
import report  # noqa: E402

import pyimgcls  # noqa: E402
from pyimgcls import models, nn, ops  # noqa: E402

MODELS = ("lenet5", "resnet18", "mobilenet_v2", "resnet50", "densenet121", "vgg11_bn",
          "efficientnet_b0", "mobilenet_v3_large")
BF16_MODELS = ("resnet18", "resnet50")
SAMPLE_S = 0.05


def input_shape(name: str, batch: int) -> tuple:
    return (batch, 1, 32, 32) if name == "lenet5" else (batch, 3, 64, 64)


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """2 x multiply-accumulates of every conv and Linear for the whole batch ``x`` (bench_prune.macs
    counts them from the layer shapes, per sample), on the torch backend in eval mode."""
    was_training = model.training
    model.eval()
    with pyimgcls.use_backend("torch"):
        n = bench_prune.macs(model, x)
    model.train(was_training)
    return 2.0 * n * x.shape[0]


def peak_gflops(threads: int) -> float:
    """Attainable float32 GFLOP/s at ``threads``: the better of torch.matmul and our GEMM, 1024^3."""
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = math.inf
    for fn in (lambda: torch.matmul(a, b), lambda: ops.matmul(a, b)):
        with pyimgcls.use_backend("cpu"):
            fn()
            for _ in range(5):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
    return 2 * 1024 ** 3 / best / 1e9


def _calls_per_sample(fn, clock=time.perf_counter) -> int:
    t0 = clock()
    fn()
    once = clock() - t0
    return max(1, int(math.ceil(SAMPLE_S / max(once, 1e-6))))


def interleaved_min_ms(fns: dict, rounds: int, clock=time.perf_counter) -> dict:
    """Minimum ms per call of each function in ``fns``, sampled in alternating order. ``clock``:
    ``time.thread_time`` counts only the calling thread's CPU time, which at 1 thread is all the work
    of both sides (our OpenMP team of one and PyTorch's intra-op work run on it, and autograd runs a
    CPU graph's backward on the thread that calls it), so other jobs on the shared cores do not count."""
    names = list(fns)
    ks = {n: _calls_per_sample(fns[n], clock) for n in names}  # also the warm-up round
    best = {n: math.inf for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            fn, k = fns[n], ks[n]
            t0 = clock()
            for _ in range(k):
                fn()
            best[n] = min(best[n], (clock() - t0) / k)
    return {n: best[n] * 1e3 for n in names}


def _pass_fn(model, x, target, pass_: str, backend: str, autocast: torch.dtype | None):
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def ctx():
        stack = contextlib.ExitStack()
        stack.enter_context(pyimgcls.use_backend(backend))
        if autocast is not None:
            stack.enter_context(torch.autocast("cpu", dtype=autocast))
        return stack

    if pass_ == "fwd":
        def fn():
            with ctx(), torch.no_grad():
                return model(x)
    else:
        def fn():
            with ctx():
                loss = loss_fn(model(x), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss
    return fn


def build(name: str, batch: int):
    torch.manual_seed(0)
    model = models.get_model(name, num_classes=10)
    x = torch.randn(*input_shape(name, batch), generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))
    return model, x, target


def check_close(model, x) -> float:
    """Our eval forward against the torch backend's; returns the max abs error relative to max |ref|
    (raises when above 1e-4): a benchmark of a wrong result is meaningless."""
    model.eval()
    with torch.no_grad():
        with pyimgcls.use_backend("cpu"):
            ours = model(x)
        with pyimgcls.use_backend("torch"):
            ref = model(x)
    err = ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    if not err <= 1e-4:
        raise AssertionError(f"cpu backend differs from torch backend by {err:.2e} (relative)")
    return err


def _with_env(fn, env: dict):
    def wrapped():
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return fn()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return wrapped


def run_case(name: str, pass_: str, threads: int, batch: int, dtype: str = "float32", *,
             rounds: int = 5, peak: float | None = None, alt_env: dict | None = None,
             clock: str = "wall") -> dict:
    """One matrix cell: a results row (schema pyimgcls-bench/1) with our ms, torch's ms and the ratio.
    ``alt_env``: also time our side with these environment variables set (e.g. a kernel path turned
    off), interleaved with the others: ``alt_ms`` and ``speedup_vs_alt`` (alt ms / our ms)."""
    torch.set_num_threads(threads)
    model, x, target = build(name, batch)
    err = check_close(model, x)
    model.train(pass_ == "train")
    flops = forward_flops(model, x) * (3 if pass_ == "train" else 1)
    model.train(pass_ == "train")
    if dtype == "float32":
        fns = {"cpu": _pass_fn(model, x, target, pass_, "cpu", None),
               "torch": _pass_fn(model, x, target, pass_, "torch", None)}
    else:
        fns = {"cpu": _pass_fn(model, x, target, pass_, "cpu", torch.bfloat16),
               "torch": _pass_fn(model, x, target, pass_, "torch", None),
               "torch_bf16": _pass_fn(model, x, target, pass_, "torch", torch.bfloat16)}
    if alt_env:
        fns["alt"] = _with_env(fns["cpu"], alt_env)
    if clock == "thread" and threads != 1:
        raise ValueError("clock='thread' measures 1-thread runs only (other threads' work is not counted)")
    ms = interleaved_min_ms(fns, rounds, time.thread_time if clock == "thread" else time.perf_counter)
    gflops = flops / (ms["cpu"] * 1e-3) / 1e9
    row = {
        "family": "model", "op": name, "pass": pass_, "shape": "x".join(map(str, x.shape)),
        "dtype": dtype, "layout": "NCHW", "provider": "cpu", "ms": ms["cpu"],
        "ref_provider": "torch", "ref_ms": ms["torch"], "speedup": ms["torch"] / ms["cpu"],
        "tflops": gflops / 1e3, "gbps": None,
        "roofline_pct": (100.0 * gflops / peak) if peak else None,
        "flops": flops, "bytes": None, "threads": threads, "batch": batch, "rel_err_fwd": err,
        "clock": clock,
    }
    if "alt" in ms:
        row["alt_env"] = alt_env
        row["alt_ms"] = ms["alt"]
        row["speedup_vs_alt"] = ms["alt"] / ms["cpu"]
    if "torch_bf16" in ms:
        row["ref_bf16_ms"] = ms["torch_bf16"]
        row["speedup_vs_torch_bf16"] = ms["torch_bf16"] / ms["cpu"]
    return row


def matrix(models_=MODELS, passes=("fwd", "train"), threads=(1, 2), batches=(1, 16),
           bf16_models=BF16_MODELS):
    for t in threads:
        for name in models_:
            for b in batches:
                for p in passes:
                    yield (name, p, t, b, "float32")
        for name in bf16_models:
            for p in passes:
                yield (name, p, t, 16, "bfloat16")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=models.list_models())
    ap.add_argument("--passes", nargs="+", default=["fwd", "train"], choices=["fwd", "train"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--bf16-models", nargs="*", default=list(BF16_MODELS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--alt-env", nargs="*", default=[], metavar="VAR=VALUE",
                    help="also time our side with these variables set (e.g. PYIMGCLS_CPU_WINOGRAD=0)")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="thread: CPU time of the calling thread (1-thread runs only; robust to other jobs "
                         "on the machine)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if any(t < 1 for t in args.threads) or any(b < 1 for b in args.batches) or args.rounds < 1:
        ap.error("--threads, --batches and --rounds must be >= 1")
    if args.clock == "thread" and args.threads != [1]:
        ap.error("--clock thread needs --threads 1")

    if any("=" not in kv for kv in args.alt_env):
        ap.error("--alt-env takes VAR=VALUE pairs")
    alt_env = dict(kv.split("=", 1) for kv in args.alt_env) or None
    results = report.new_results("cpu")
    results["load_avg_start"] = os.getloadavg()
    peaks = {t: peak_gflops(t) for t in args.threads}
    results["peaks"]["cpu_fp32_gflops_by_threads"] = peaks
    print(f"attainable float32 GFLOP/s by threads: { {t: round(v, 1) for t, v in peaks.items()} }")
    for case in matrix(args.models, args.passes, args.threads, args.batches, args.bf16_models):
        row = run_case(*case, rounds=args.rounds, peak=peaks[case[2]], alt_env=alt_env, clock=args.clock)
        row["load_avg"] = os.getloadavg()[0]
        results["cases"].append(row)
        extra = f"  alt {row['alt_ms']:8.2f} ms ({row['speedup_vs_alt']:.2f})" if "alt_ms" in row else ""
        extra += (f"  vs torch bf16 {row['ref_bf16_ms']:8.2f} ms ({row['speedup_vs_torch_bf16']:.2f})"
                 if "ref_bf16_ms" in row else "")
        print(f"{case[0]:>18} {case[1]:>5} t={case[2]} N={case[3]:<2} {case[4]:>8}: ours {row['ms']:8.2f} ms "
              f"torch {row['ref_ms']:8.2f} ms ratio {row['speedup']:.2f} roofline "
              f"{row['roofline_pct']:.0f}%{extra}  (load {row['load_avg']:.1f})", flush=True)
    results["load_avg_end"] = os.getloadavg()
    ratios = [r["speedup"] for r in results["cases"]]
    results["geomean_speedup"] = report.geomean(ratios)
    print(f"geometric mean ratio over {len(ratios)} cases: {results['geomean_speedup']:.3f}")
    print(f"wrote {report.write_cpu_results(results, args.out, 'models')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
