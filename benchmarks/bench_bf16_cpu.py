"""bfloat16 train step on the CPU (issue #20): our kernels under torch.autocast("cpu", dtype=torch.bfloat16)
against PyTorch's float32 step and PyTorch's own bf16 autocast, on the same model object and weights.

    python benchmarks/bench_bf16_cpu.py [--models resnet18,resnet50] [--threads 1,2] [--reps 5] [--out FILE]
    python benchmarks/bench_bf16_cpu.py --ops [--reps 5] [--out FILE]     (batch norm / pooling layers, below)

Variants (train step = forward, cross-entropy, backward, SGD step; batch 16, 3 x 64 x 64, 10 classes,
NCHW, train mode; and the forward alone: eval mode under torch.no_grad, after the train rounds):
    ours_bf16    pyimgcls.use_backend("cpu") + autocast bf16  (bf16 GEMM / conv kernels, csrc/cpu/gemm.cpp)
    ours_bf16_widen  the same with PYIMGCLS_CPU_BF16_CONV=widen (bf16 convs through float32 copies) and
                 autocast's parameter casts not cached (ops/_checks.py): the bf16 path before #20's
                 native bf16 conv, for before / after ratios in one process
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

VARIANTS = ("ours_bf16", "ours_bf16_widen", "ours_fp32", "torch_fp32", "torch_bf16")


def _child(models, threads, reps, clock=time.perf_counter):
    import torch

    import pyimgcls
    from pyimgcls import _native, models as zoo, nn
    from pyimgcls.ops import _checks

    cached_cast = _checks._cast

    torch.set_num_threads(threads)
    out = {"threads": threads, "bf16_kernel": _native.C.gemm_bf16_kernel(), "models": {}}
    for name in models:
        torch.manual_seed(0)
        model = zoo.get_model(name, num_classes=10).train()
        x = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        target = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(2))
        loss_fn = nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step(variant, train):
            backend = "cpu" if variant.startswith("ours") else "torch"
            bf16 = "bf16" in variant
            os.environ["PYIMGCLS_CPU_BF16_CONV"] = "widen" if variant.endswith("widen") else "native"
            _checks._cast = (lambda t, dtype: t.to(dtype)) if variant.endswith("widen") else cached_cast
            t0 = clock()
            if not train:
                with torch.no_grad(), pyimgcls.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16,
                                                                                    enabled=bf16):
                    y = model(x)
                return clock() - t0, float(y.float().sum())
            with pyimgcls.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model(x), target)
            opt.zero_grad(set_to_none=True)
            with pyimgcls.use_backend(backend):
                loss.backward()
            opt.step()
            return clock() - t0, float(loss)

        out["models"][name] = {}
        for mode in ("train", "fwd"):
            model.train(mode == "train")
            times = {v: [] for v in VARIANTS}
            for r in range(reps + 2):
                for v in VARIANTS:
                    dt, val = step(v, mode == "train")
                    if not (val == val):
                        raise RuntimeError(f"{name} {mode} {v}: NaN")
                    if r >= 2:
                        times[v].append(dt)
            best = {v: min(ts) * 1e3 for v, ts in times.items()}
            out["models"][name][mode] = {
                "ms_min": best, "ms_all": {v: [t * 1e3 for t in ts] for v, ts in times.items()},
                "ratio_vs_torch_fp32": best["torch_fp32"] / best["ours_bf16"],
                "ratio_vs_torch_bf16": best["torch_bf16"] / best["ours_bf16"],
                "ratio_ours_fp32_over_bf16": best["ours_fp32"] / best["ours_bf16"],
                "ratio_widen_over_native": best["ours_bf16_widen"] / best["ours_bf16"],
            }
            print(f"threads {threads} {name} {mode}: " + ", ".join(f"{v} {best[v]:.1f} ms" for v in VARIANTS)
                  + f"; torch_fp32/ours_bf16 {best['torch_fp32'] / best['ours_bf16']:.2f}"
                  + f", torch_bf16/ours_bf16 {best['torch_bf16'] / best['ours_bf16']:.2f}"
                  + f", widen/native {best['ours_bf16_widen'] / best['ours_bf16']:.2f}", file=sys.stderr, flush=True)
    _checks._cast = cached_cast
    os.environ.pop("PYIMGCLS_CPU_BF16_CONV", None)
    return out


# ----------------------------------------------------------------------------- per-op mode (--ops)
# The ResNet-18 batch-norm and pooling layers at batch 16, 3 x 64 x 64 (stem 32 x 32, then 16, 8, 4,
# 2), training forward (batch statistics, fused residual + relu) and backward, and the stem's max
# pooling with indices: our bf16 entry point against the float32 upcast the entry points used before
# (bf16 -> float32 copies, the float32 kernel, a bf16 copy of the results), our float32 kernel and
# PyTorch's bf16 op. CPU time of the calling thread (time.thread_time, 1 thread), min of --reps x 5
# calls: the machine is shared, and thread time does not count the time other jobs hold the core.
OP_SHAPES = [(16, 64, 32, 32), (16, 64, 16, 16), (16, 128, 8, 8), (16, 256, 4, 4), (16, 512, 2, 2)]


def _ops(reps):
    import torch
    import torch.nn.functional as F

    from pyimgcls.backends.cpu import batchnorm as B, pool as P

    torch.set_num_threads(1)

    def tmin(f):
        f()
        best = float("inf")
        for _ in range(reps * 5):
            t0 = time.thread_time()
            f()
            best = min(best, time.thread_time() - t0)
        return best * 1e3

    rows = []
    for shape in OP_SHAPES:
        C = shape[1]
        gen = torch.Generator().manual_seed(C)
        x, r, g = (torch.randn(shape, generator=gen).bfloat16() for _ in range(3))
        w, b = torch.randn(C, generator=gen), torch.randn(C, generator=gen)
        xf, rf, gf = x.float(), r.float(), g.float()
        out, m, i, _ = B.batch_norm_fwd(x, w, b, r, None, None, True, 1e-5, 1, False)
        outf = out.float()
        fwd = {
            "ours_bf16": lambda: B.batch_norm_fwd(x, w, b, r, None, None, True, 1e-5, 1, False),
            "ours_upcast": lambda: B.batch_norm_fwd(x.float(), w, b, r.float(), None, None, True, 1e-5, 1,
                                                    False)[0].bfloat16(),
            "ours_fp32": lambda: B.batch_norm_fwd(xf, w, b, rf, None, None, True, 1e-5, 1, False),
            "torch_bf16": lambda: F.relu(F.batch_norm(x, None, None, w, b, True) + r),
        }
        bwd = {
            "ours_bf16": lambda: B.batch_norm_bwd(g, x, w, out, m, i, True, 1, False, True, True, True, True),
            "ours_upcast": lambda: [t.bfloat16() for t in B.batch_norm_bwd(
                g.float(), x.float(), w, out.float(), m, i, True, 1, False, True, True, True, True)],
            "ours_fp32": lambda: B.batch_norm_bwd(gf, xf, w, outf, m, i, True, 1, False, True, True, True, True),
        }
        for pass_, fns in (("bn_fwd", fwd), ("bn_bwd", bwd)):
            ms = {k: tmin(f) for k, f in fns.items()}
            rows.append({"op": pass_, "shape": list(shape), "ms": ms})
    x = torch.randn(16, 64, 32, 32, generator=torch.Generator().manual_seed(0)).bfloat16()
    args = ((3, 3), (2, 2), (1, 1), (1, 1), False, False, True)
    y, idx = P.max_pool2d(x, *args)
    gy = torch.randn(y.shape).bfloat16()
    bargs = (32, 32, (3, 3), (2, 2), (1, 1), (1, 1), False)
    for pass_, fns in (
            ("maxpool_fwd", {"ours_bf16": lambda: P.max_pool2d(x, *args),
                             "ours_upcast": lambda: P.max_pool2d(x.float(), *args)[0].bfloat16(),
                             "ours_fp32": lambda: P.max_pool2d(x.float(), *args),
                             "torch_bf16": lambda: F.max_pool2d(x, 3, 2, 1, return_indices=True)}),
            ("maxpool_bwd", {"ours_bf16": lambda: P.max_pool2d_backward(gy, idx, *bargs),
                             "ours_upcast": lambda: P.max_pool2d_backward(gy.float(), idx, *bargs).bfloat16(),
                             "ours_fp32": lambda: P.max_pool2d_backward(gy.float(), idx, *bargs)})):
        rows.append({"op": pass_, "shape": [16, 64, 32, 32], "ms": {k: tmin(f) for k, f in fns.items()}})
    for row in rows:
        ms = row["ms"]
        cells = "  ".join(f"{k} {v:.3f}" for k, v in ms.items())
        print(f"{row['op']:<12} {'x'.join(map(str, row['shape'])):<14} {cells}"
              f"  upcast/bf16 {ms['ours_upcast'] / ms['ours_bf16']:.2f}", file=sys.stderr, flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="thread: CPU time of the calling thread (1 thread only: all the work runs on it; "
                         "robust to other jobs holding the core on a shared machine)")
    ap.add_argument("--ops", action="store_true", help="the per-op batch norm / pooling comparison instead")
    args = ap.parse_args()
    if args.ops:
        load0 = os.getloadavg()
        rows = _ops(args.reps)
        doc = {"what": "bf16 batch norm / max pooling per ResNet-18 layer (batch 16, 64x64), 1 thread, "
                       "ms of thread CPU time, min of reps x 5 calls", "machine": os.uname().nodename,
               "load_average": [load0, os.getloadavg()], "rows": rows}
        text = json.dumps(doc, indent=1)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
        print(text)
        return
    models = [m for m in args.models.split(",") if m]
    if args.child:
        if args.clock == "thread" and args.child != 1:
            raise SystemExit("--clock thread needs --threads 1")
        print(json.dumps(_child(models, args.child, args.reps,
                                time.thread_time if args.clock == "thread" else time.perf_counter)))
        return
    runs = []
    load0 = os.getloadavg()
    for t in (int(v) for v in args.threads.split(",")):
        env = {**os.environ, "OMP_NUM_THREADS": str(t), "OMP_WAIT_POLICY": "passive"}
        res = subprocess.run([sys.executable, __file__, "--models", args.models, "--reps", str(args.reps),
                              "--clock", args.clock, "--child", str(t)], env=env, stdout=subprocess.PIPE, check=True, text=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    doc = {"what": "bf16 train step and eval forward (no_grad), batch 16, 3x64x64, 10 classes, NCHW; min of "
                   "interleaved rounds",
           "machine": os.uname().nodename, "cpu_count": os.cpu_count(), "reps": args.reps, "clock": args.clock,
           "load_average": [load0, os.getloadavg()], "runs": runs}
    text = json.dumps(doc, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
