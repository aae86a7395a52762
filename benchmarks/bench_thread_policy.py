"""The CPU thread policy of ``pyimgcls train --threads 0`` against fixed 1 and 2 threads (issue #20:
"the README's thread policy stays honest").

    python benchmarks/bench_thread_policy.py [--models lenet5 mobilenet_v2 resnet18] [--batch 32]
        [--busy 0|1] [--rounds 7] [--out FILE]

For each model: the thread count ``auto_threads`` (pyimgcls/training/loop.py) picks right now (the
rule: the usable cores minus the CPUs busy in a 0.2 s sample of /proc/stat, at least one), then
train steps (forward, our CrossEntropyLoss, backward, SGD with momentum;
our ``cpu`` kernels; input 3x64x64, lenet5 1x32x32) timed at every thread count from 1 to the usable
cores, interleaved, minimum of ``--rounds`` samples of several steps each (wall clock: a 2-thread step
is not measured by one thread's CPU time). ``--busy K`` first starts K processes that spin on one core
each and waits until the load average shows them (up to 150 s), as when other jobs share the
machine; ``--busy 0`` first waits (up to 240 s) for the load average to fall below 0.5, so that no
earlier job is still running. The record says whether the automatic choice was the
fastest count or within 5 % of it.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_models_cpu as bmc  # noqa: E402
import report  # noqa: E402

from pyimgcls.training.loop import auto_threads, busy_cpus, set_cpu_threads, usable_cores  # noqa: E402


def _spinners(k: int) -> list:
    """k processes busy on a core each, until killed; returns once the load average shows them."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]
    t0 = time.monotonic()
    while os.getloadavg()[0] < k - 0.5 and time.monotonic() - t0 < 150:
        time.sleep(2)
    return procs


def _settle(limit: float = 0.5, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while os.getloadavg()[0] >= limit and time.monotonic() - t0 < timeout:
        time.sleep(2)


def run(models, batch: int, rounds: int, nbusy: int) -> dict:
    if not nbusy:
        _settle()
    procs = _spinners(nbusy) if nbusy else []
    try:
        cores = usable_cores()
        results = report.new_results("cpu")
        results["busy_processes"] = nbusy
        results["usable_cores"] = cores
        for name in models:
            model, x, target = bmc.build(name, batch)
            model.train()
            n_params = sum(p.numel() for p in model.parameters())
            load = os.getloadavg()[0]
            busy = busy_cpus()     # what auto_threads samples itself (recorded here, then passed on)
            auto = auto_threads(0, n_params, load=busy)
            step = bmc._pass_fn(model, x, target, "train", "cpu", None)
            counts = list(range(1, cores + 1))
            best = {t: math.inf for t in counts}
            for t in counts:                        # warm-up per count (weight caches, thread teams)
                set_cpu_threads(t)
                step()
            k = None
            for r in range(rounds):
                for t in (counts if r % 2 == 0 else counts[::-1]):
                    set_cpu_threads(t)
                    if k is None:
                        k = bmc._calls_per_sample(step)
                    t0 = time.perf_counter()
                    for _ in range(k):
                        step()
                    best[t] = min(best[t], (time.perf_counter() - t0) / k * 1e3)
            fastest = min(best, key=best.get)
            row = {"family": "thread_policy", "op": name, "pass": "train", "shape": "x".join(map(str, x.shape)),
                   "dtype": "float32", "layout": "NCHW", "provider": f"cpu-auto({auto})", "ms": best[auto],
                   "ref_provider": f"cpu-{fastest}-threads", "ref_ms": best[fastest],
                   "speedup": best[fastest] / best[auto], "params": n_params, "load_avg_at_choice": load,
                   "busy_cpus_at_choice": busy,
                   "auto_threads": auto, "ms_by_threads": best, "fastest_threads": fastest,
                   "auto_within_5pct": best[auto] <= 1.05 * best[fastest], "batch": batch,
                   "tflops": None, "gbps": None, "roofline_pct": None}
            results["cases"].append(row)
            times = "  ".join(f"{t}t {v:8.2f} ms" for t, v in best.items())
            print(f"{name:>14} ({n_params / 1e6:.2f}M params, load {load:.2f}, busy CPUs {busy if busy is not None else float('nan'):.2f}, "
                  f"spinners {nbusy}): auto -> {auto}  "
                  f"{times}  fastest {fastest}t, auto {'ok' if row['auto_within_5pct'] else 'SLOWER'} "
                  f"({best[auto] / best[fastest]:.2f}x the fastest)", flush=True)
        return results
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["lenet5", "mobilenet_v2", "resnet18"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--busy", type=int, default=0, help="processes spinning on a core each while measuring")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.batch < 1 or args.rounds < 1 or args.busy < 0:
        ap.error("--batch and --rounds must be >= 1, --busy >= 0")
    results = run(args.models, args.batch, args.rounds, args.busy)
    print(f"wrote {report.write_cpu_results(results, args.out, f'thread-policy-busy{args.busy}')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
