"""Distillation gain on digits: LeNet-5 trained alone vs with a ResNet-18 teacher (``pyimgcls train
--teacher``), same seeds, epochs and recipe; reports the test accuracy of every run and the mean gain.

    python tools/distill_experiment.py [--seeds 0 1 2] [--epochs 10] [--teacher-epochs 10]
                                       [--kd-temperature 4] [--kd-alpha 0.5] [--out DIR]

The teacher is trained once (seed 0) and its best.pt is used for every student. Both student arms take
the digits as 3-channel images (--in-channels 3, the grayscale replicated), because ResNet-18 takes RGB
and --teacher requires teacher and student to agree on the input channels. Writes DIR/summary.json.
CPU cost: the ResNet-18 teacher dominates; on the shared 2-core development machine (load ~12) one
epoch on the 1293 training images took 10 minutes (2.2 images/s), so a full run needs a quieter
machine or a GPU (--kernels is cpu here; edit COMMON for another backend).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyimgcls import cli  # noqa: E402

COMMON = ["--data", "digits", "--quiet", "--no-plots", "--kernels", "cpu", "--overwrite"]


def run(argv) -> dict:
    code = cli.main(["train", *COMMON, *map(str, argv)])
    if code not in (0, None):
        raise SystemExit(f"train {' '.join(map(str, argv))}: exit {code}")
    out = argv[argv.index("--out") + 1]
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--kd-temperature", type=float, default=4.0)
    p.add_argument("--kd-alpha", type=float, default=0.5)
    p.add_argument("--out", default="runs/distill_experiment")
    args = p.parse_args(argv)
    teacher_dir = os.path.join(args.out, "teacher_resnet18")
    teacher = run(["--model", "resnet18", "--epochs", args.teacher_epochs, "--seed", 0, "--out", teacher_dir])
    print(f"teacher resnet18: test accuracy {100 * teacher['test_accuracy']:.2f}%", flush=True)
    rows = []
    for seed in args.seeds:
        base = ["--model", "lenet5", "--in-channels", 3, "--epochs", args.epochs, "--seed", seed]
        alone = run(base + ["--out", os.path.join(args.out, f"lenet5_alone_seed{seed}")])
        kd = run(base + ["--teacher", os.path.join(teacher_dir, "best.pt"), "--kd-temperature", args.kd_temperature,
                         "--kd-alpha", args.kd_alpha, "--out", os.path.join(args.out, f"lenet5_kd_seed{seed}")])
        rows.append({"seed": seed, "alone": alone["test_accuracy"], "distilled": kd["test_accuracy"]})
        print(f"seed {seed}: alone {100 * alone['test_accuracy']:.2f}%  distilled {100 * kd['test_accuracy']:.2f}%  "
              f"gain {100 * (kd['test_accuracy'] - alone['test_accuracy']):+.2f} pp", flush=True)
    gains = [r["distilled"] - r["alone"] for r in rows]
    summary = {"teacher": {"model": "resnet18", "epochs": args.teacher_epochs,
                           "test_accuracy": teacher["test_accuracy"]},
               "student": "lenet5 (--in-channels 3)", "epochs": args.epochs, "kd_temperature": args.kd_temperature,
               "kd_alpha": args.kd_alpha, "runs": rows,
               "mean_alone": statistics.mean(r["alone"] for r in rows),
               "mean_distilled": statistics.mean(r["distilled"] for r in rows),
               "mean_gain_pp": 100 * statistics.mean(gains),
               "gain_stdev_pp": 100 * statistics.stdev(gains) if len(gains) > 1 else None,
               "seeds_improved": sum(g > 0 for g in gains)}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
