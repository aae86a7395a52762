"""bfloat16 train step on the CPU (issue #20): our kernels under torch.autocast("cpu", dtype=torch.bfloat16)
against PyTorch's float32 step and PyTorch's own bf16 autocast, on the same model object and weights.

    python benchmarks/bench_bf16_cpu.py [--models resnet18,resnet50] [--threads 1,2] [--reps 5] [--out FILE]

Variants (train step = forward, cross-entropy, backward, SGD step; batch 16, 3 x 64 x 64, 10 classes,
NCHW, train mode):
    ours_bf16    pyimgcls.use_backend("cpu") + autocast bf16  (bf16 GEMM / conv kernels, csrc/cpu/gemm.cpp)
    ours_fp32    pyimgcls.use_backend("cpu"), float32         (context)
    torch_fp32   pyimgcls.use_backend("torch"), float32       (PyTorch's kernels for every layer)
    torch_bf16   pyimgcls.use_backend("torch") + autocast bf16
Each thread count runs in its own process (OMP_NUM_THREADS and torch.set_num_threads set before any
parallel region; OMP_WAIT_POLICY=passive so neither OpenMP runtime spins on the core the other one
needs, benchmarks/NOTES.md). Inside a process the variants run interleaved: one step of each per
round after two warm-up rounds, and the minimum over the rounds is reported (the machine is shared
with other jobs, so only minima and ratios mean anything). Ratios: other variant's time / ours_bf16
(> 1: ours is faster)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = ("ours_bf16", "ours_fp32", "torch_fp32", "torch_bf16")


def _child(models, threads, reps):
    import torch

    import pyimgcls
    from pyimgcls import _native, models as zoo, nn

    torch.set_num_threads(threads)
    out = {"threads": threads, "bf16_kernel": _native.C.gemm_bf16_kernel(), "models": {}}
    for name in models:
        torch.manual_seed(0)
        model = zoo.get_model(name, num_classes=10).train()
        x = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        target = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(2))
        loss_fn = nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step(variant):
            backend = "cpu" if variant.startswith("ours") else "torch"
            bf16 = variant.endswith("bf16")
            t0 = time.perf_counter()
            with pyimgcls.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model(x), target)
            opt.zero_grad(set_to_none=True)
            with pyimgcls.use_backend(backend):
                loss.backward()
            opt.step()
            return time.perf_counter() - t0, float(loss)

        times = {v: [] for v in VARIANTS}
        for r in range(reps + 2):
            for v in VARIANTS:
                dt, loss = step(v)
                if not (loss == loss):
                    raise RuntimeError(f"{name} {v}: loss is NaN")
                if r >= 2:
                    times[v].append(dt)
        best = {v: min(ts) * 1e3 for v, ts in times.items()}
        out["models"][name] = {
            "ms_min": best, "ms_all": {v: [t * 1e3 for t in ts] for v, ts in times.items()},
            "ratio_vs_torch_fp32": best["torch_fp32"] / best["ours_bf16"],
            "ratio_vs_torch_bf16": best["torch_bf16"] / best["ours_bf16"],
            "ratio_ours_fp32_over_bf16": best["ours_fp32"] / best["ours_bf16"],
        }
        print(f"threads {threads} {name}: " + ", ".join(f"{v} {best[v]:.1f} ms" for v in VARIANTS)
              + f"; torch_fp32/ours_bf16 {best['torch_fp32'] / best['ours_bf16']:.2f}"
              + f", torch_bf16/ours_bf16 {best['torch_bf16'] / best['ours_bf16']:.2f}", file=sys.stderr, flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    if args.child:
        print(json.dumps(_child(models, args.child, args.reps)))
        return
    runs = []
    for t in (int(v) for v in args.threads.split(",")):
        env = {**os.environ, "OMP_NUM_THREADS": str(t), "OMP_WAIT_POLICY": "passive"}
        res = subprocess.run([sys.executable, __file__, "--models", args.models, "--reps", str(args.reps),
                              "--child", str(t)], env=env, stdout=subprocess.PIPE, check=True, text=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    doc = {"what": "bf16 train step, batch 16, 3x64x64, 10 classes, NCHW; min of interleaved rounds",
           "machine": os.uname().nodename, "cpu_count": os.cpu_count(), "reps": args.reps, "runs": runs}
    text = json.dumps(doc, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
