"""Distillation gain: a student (LeNet-5) trained alone vs with a teacher (ResNet-18) through ``pyimgcls
train --teacher``, same seeds, epochs and recipe; reports every run's test accuracy and the mean gain.

    python tools/distill_experiment.py [--data digits] [--seeds 0 1 2 3 4] [--epochs 4] [--teacher-epochs 10]
                                       [--kd 4:0.5 2:0.9 ...] [--ls-control 0.1 ...] [--limit-train N]
                                       [--batch-size B] [--threads 1] [--out DIR] [--json FILE]

Every (temperature, alpha) pair given to --kd is one distilled arm; the "alone" arm is the same student
trained with the plain cross-entropy; every --ls-control EPS adds the student alone with label smoothing
EPS (soft targets without a teacher: the control for "distillation only regularises"). The teacher is
trained once (seed 0) and its best.pt serves every distilled run; an existing
DIR/teacher_<model>/metrics.json with the same model, data and epochs is reused (--retrain-teacher to
force). Both student arms take 3-channel images (--in-channels 3, a grayscale set replicated), because
ResNet-18 takes RGB and --teacher requires teacher and student to agree on the input channels. Writes
DIR/summary.json and, with --json, a copy of it there.

CIFAR-10 (a user's copy of the python batches): ``--data cifar10:PATH`` (more student epochs are
needed there, e.g. --epochs 15 --teacher-epochs 30; ResNet-18 on 50 000 32x32 images is slow on a CPU).

Gradient clipping (--clip-grad-norm 2 on both arms by default): the teacher's logits span ~50, so at
T = 4 its soft targets are nearly one-hot and the distillation term's initial gradient is ~T times the
cross-entropy's; with the default recipe (SGD lr 0.05) the distilled LeNet-5 diverged (train loss 1e6 in
epoch 1, test accuracy 10 %) while the student alone trained. Clipping both arms keeps one recipe.

Threads: --threads 1 by default. On a 2-core machine shared with other jobs, two OpenMP threads per
op (the default for models over 1M parameters) spin at every barrier waiting for a descheduled
partner: one ResNet-18 training step (batch 32, 32x32) took 3.6 s with 2 threads and 0.3 s with one at
load ~4 (see benchmarks/NOTES.md, "distillation experiment").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyimgcls import cli  # noqa: E402


def kd_pair(text: str) -> tuple[float, float]:
    try:
        t, a = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--kd {text!r}: expected TEMPERATURE:ALPHA, e.g. 4:0.5") from None
    if not t > 0 or not 0 <= a <= 1:
        raise argparse.ArgumentTypeError(f"--kd {text!r}: temperature must be > 0 and alpha in [0, 1]")
    return t, a


def run(common, argv) -> dict:
    t0 = time.perf_counter()
    code = cli.main(["train", *map(str, common), *map(str, argv)])
    if code not in (0, None):
        raise SystemExit(f"train {' '.join(map(str, argv))}: exit {code}")
    out = argv[argv.index("--out") + 1]
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    m["_wall_s"] = time.perf_counter() - t0
    return m


def stats(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "stdev": statistics.stdev(values) if len(values) > 1 else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="digits", help="digits | cifar10:PATH | any --data of pyimgcls train")
    p.add_argument("--teacher-model", default="resnet18")
    p.add_argument("--student-model", default="lenet5")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=4, help="student epochs (both arms)")
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--limit-train", type=int, default=None, metavar="N",
                   help="students (both arms) see only the first N training images; the teacher sees all")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="students' batch size (both arms; default: train's); a 100-image subset at batch 32 "
                        "gives 3 steps an epoch")
    p.add_argument("--kd", type=kd_pair, nargs="*", default=[(4.0, 0.5)], metavar="T:ALPHA",
                   help="one distilled arm per temperature:alpha pair (none: only the other arms)")
    p.add_argument("--ls-control", type=float, nargs="*", default=[], metavar="EPS",
                   help="control arms: the student alone with --label-smoothing EPS (soft targets without a "
                        "teacher), to tell the teacher's knowledge from plain regularisation")
    p.add_argument("--clip-grad-norm", type=float, default=2.0, metavar="MAX",
                   help="gradient-norm clipping for every student run, both arms (0: none); see the docstring")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per training run (see the docstring)")
    p.add_argument("--kernels", default="cpu", help="--kernels of every training run")
    p.add_argument("--retrain-teacher", action="store_true")
    p.add_argument("--out", default="runs/distill_experiment")
    p.add_argument("--teacher-dir", default=None, metavar="DIR",
                   help="the teacher's run folder (default: OUT/teacher_<model>); reused as described above")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the summary here")
    args = p.parse_args(argv)
    if len(args.seeds) < 1:
        p.error("--seeds: at least one seed")
    common = ["--data", args.data, "--quiet", "--no-plots", "--kernels", args.kernels, "--overwrite",
              "--threads", args.threads]
    student = common + (["--clip-grad-norm", args.clip_grad_norm] if args.clip_grad_norm > 0 else [])
    wall0 = time.perf_counter()
    teacher_dir = args.teacher_dir or os.path.join(args.out, f"teacher_{args.teacher_model}")
    teacher = None
    if not args.retrain_teacher and os.path.isfile(os.path.join(teacher_dir, "metrics.json")):
        with open(os.path.join(teacher_dir, "config.json")) as f:
            cfg = json.load(f)
        if (cfg.get("model"), cfg.get("data"), cfg.get("epochs")) == (args.teacher_model, args.data,
                                                                      args.teacher_epochs):
            with open(os.path.join(teacher_dir, "metrics.json")) as f:
                teacher = json.load(f)
            print(f"reusing the teacher in {teacher_dir}", flush=True)
    if teacher is None:
        teacher = run(common, ["--model", args.teacher_model, "--in-channels", 3, "--epochs", args.teacher_epochs,
                               "--seed", 0, "--out", teacher_dir])
    print(f"teacher {args.teacher_model}: test accuracy {100 * teacher['test_accuracy']:.2f}%", flush=True)
    arms = ["alone"] + [f"kd_T{t:g}_a{a:g}" for t, a in args.kd]
    controls = [f"alone_ls{e:g}" for e in args.ls_control]
    rows = []
    for seed in args.seeds:
        base = ["--model", args.student_model, "--in-channels", 3, "--epochs", args.epochs, "--seed", seed]
        if args.limit_train:
            base += ["--limit-train", args.limit_train]
        if args.batch_size:
            base += ["--batch-size", args.batch_size]
        row = {"seed": seed}
        m = run(student, base + ["--out", os.path.join(args.out, f"{args.student_model}_alone_seed{seed}")])
        row["alone"] = m["test_accuracy"]
        row["alone_wall_s"] = round(m["_wall_s"], 1)
        for (t, a), arm in zip(args.kd, arms[1:]):
            m = run(student, base + ["--teacher", os.path.join(teacher_dir, "best.pt"), "--kd-temperature", t,
                                    "--kd-alpha", a, "--out", os.path.join(args.out, f"{args.student_model}_{arm}_seed{seed}")])
            row[arm] = m["test_accuracy"]
            row[arm + "_wall_s"] = round(m["_wall_s"], 1)
        for eps, arm in zip(args.ls_control, controls):
            m = run(student, base + ["--label-smoothing", eps,
                                    "--out", os.path.join(args.out, f"{args.student_model}_{arm}_seed{seed}")])
            row[arm] = m["test_accuracy"]
            row[arm + "_wall_s"] = round(m["_wall_s"], 1)
        rows.append(row)
        print(f"seed {seed}: " + "  ".join(f"{arm} {100 * row[arm]:.2f}%" for arm in arms + controls), flush=True)
    summary = {
        "data": args.data, "kernels": args.kernels, "threads": args.threads,
        "teacher": {"model": args.teacher_model, "epochs": args.teacher_epochs, "seed": 0,
                    "test_accuracy": teacher["test_accuracy"], "train_time_s": teacher.get("train_time_s")},
        "student": f"{args.student_model} (--in-channels 3)", "epochs": args.epochs,
        "clip_grad_norm": args.clip_grad_norm or None, "student_limit_train": args.limit_train,
        "student_batch_size": args.batch_size,
        "test_images": teacher.get("num_test"), "train_images": teacher.get("num_train"),
        "runs": rows,
        "arms": {},
        "wall_time_s": round(time.perf_counter() - wall0, 1),
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "loadavg_at_end": list(os.getloadavg()),
                    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    summary["arms"]["alone"] = {"accuracy": stats([r["alone"] for r in rows])}
    for (t, a), arm in zip(args.kd, arms[1:]):
        gains = [100 * (r[arm] - r["alone"]) for r in rows]
        summary["arms"][arm] = {"kd_temperature": t, "kd_alpha": a, "accuracy": stats([r[arm] for r in rows]),
                                "gain_pp": stats(gains), "seeds_improved": sum(g > 0 for g in gains),
                                "seeds_worse": sum(g < 0 for g in gains)}
    for eps, arm in zip(args.ls_control, controls):
        gains = [100 * (r[arm] - r["alone"]) for r in rows]
        summary["arms"][arm] = {"label_smoothing": eps, "accuracy": stats([r[arm] for r in rows]),
                                "gain_pp": stats(gains), "seeds_improved": sum(g > 0 for g in gains),
                                "seeds_worse": sum(g < 0 for g in gains)}
    os.makedirs(args.out, exist_ok=True)
    text = json.dumps(summary, indent=1)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(json.dumps(summary["arms"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
