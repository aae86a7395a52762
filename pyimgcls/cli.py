"""Command-line interface: ``pyimgcls train | eval | predict | quantize | bench | info`` (also ``python -m pyimgcls``).

``pyimgcls train`` with no arguments is the main job: LeNet-5 on scikit-learn's bundled handwritten
digits, on our kernels. Errors in the arguments or the data end the command with a one-line message
on stderr and exit status 2; a training run whose loss or weights become NaN or infinite stops with a
one-line message and exit status 3 (nothing non-finite is saved)."""
from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import subprocess
import sys


def _nvcc_version() -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "not found"
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    lines = [ln for ln in out.splitlines() if "release" in ln]
    return lines[-1].strip() if lines else out.strip().splitlines()[-1]


def info_dict() -> dict:
    import torch

    import pyimgcls
    from pyimgcls import _backend, _native

    try:
        import triton
        triton_version = triton.__version__
    except Exception as e:  # report, don't crash: info is what people run when things are broken
        triton_version = f"not importable ({type(e).__name__})"
    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "pyimgcls": pyimgcls.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch cuda": torch.version.cuda or "none (CPU build)",
        "triton": triton_version,
        "nvcc": _nvcc_version(),
        "cuda kernels compiled": _native.cuda_kernels_compiled(),
        "cuda archs": _native.C.cuda_archs or "-",
        "cuda devices (native)": _native.cuda_device_count(),
        "cpu gemm isa": _native.C.gemm_isa(),
        "triton interpreter": _backend.triton_interpreting(),
        "gpus": ", ".join(gpus) if gpus else "none",
        "available backends": ", ".join(pyimgcls.available_backends()),
        "backend": pyimgcls.get_backend(),
    }


def cmd_info(args) -> int:
    from tabulate import tabulate
    print(tabulate(list(info_dict().items()), tablefmt="simple"))
    return 0


def cmd_bench(args) -> int:
    if getattr(args, "target", "gemm") == "ladder":
        return _bench_ladder(args)
    if getattr(args, "checkpoint", None) is not None:
        from .quantization._cli import bench_checkpoint
        from .training.loop import _with_threads
        return _with_threads(bench_checkpoint)(args)
    from . import bench
    return bench.main_cli(args)


def _bench_ladder(args) -> int:
    """``pyimgcls bench ladder``: benchmarks/bench_ladder.py (every study-ladder step next to the
    reference; needs a source checkout, where the script lives)."""
    import os
    import runpy

    from .bench import REPO_ROOT

    script = os.path.join(REPO_ROOT, "benchmarks", "bench_ladder.py")
    if not os.path.exists(script):
        print(f"ladder benchmark script not found at {script}: run it from a source checkout")
        return 1
    argv = (["--out", args.out] if getattr(args, "out", None) else []) + (
        ["--quick"] if getattr(args, "quick", False) else [])
    return runpy.run_path(script)["main"](argv)


def cmd_train(args) -> int:
    from .training import train
    train(args)
    return 0


def cmd_eval(args) -> int:
    from .training import evaluate_checkpoint
    evaluate_checkpoint(args)
    return 0


def cmd_explain(args) -> int:
    import torch

    from . import models
    from ._explain import explain
    spec = models.input_spec(args.model)
    size = spec["fixed_size"] or args.image_size
    if size < spec["min_size"]:
        raise ValueError(f"--image-size: {args.model} takes inputs of at least {spec['min_size']} pixels, got {size}")
    channels = spec["in_channels"] or 1
    result = explain(args.model, (args.batch_size, channels, size, size), backend=args.backend,
                     dtype=getattr(torch, args.dtype), channels_last=args.channels_last,
                     training=not args.eval, num_classes=args.num_classes)
    print(result.to_json() if args.json else result.table())
    return 0


def cmd_predict(args) -> int:
    from .training import predict
    predict(args)
    return 0


_Fmt = argparse.ArgumentDefaultsHelpFormatter


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error convention: one line on stderr (the usage is one --help away),
    exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {_one_line(message)}\n")


def _number(kind, lo=None, hi=None, lo_open=False, hi_open=False):
    """argparse type: a finite ``kind`` (int or float) within [lo, hi] (or open at either end)."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo}, got {text}")
        if hi is not None and (v >= hi if hi_open else v > hi):
            raise argparse.ArgumentTypeError(f"must be {'<' if hi_open else '<='} {hi}, got {text}")
        return v
    parse.__name__ = kind.__name__   # argparse names the type in some messages
    return parse


_POS_INT, _NONNEG_INT = _number(int, 1), _number(int, 0)
_NONNEG_FLOAT = _number(float, 0)


def _add_kernel_args(s) -> None:
    from .backends import CHOICES  # the backend table: a new backend needs no edit here
    s.add_argument("--kernels", choices=CHOICES, default="auto",
                   help="which pyimgcls backend runs the model: auto = CUDA if a GPU is present, else our C++ CPU "
                        "kernels; torch = plain PyTorch (the reference, not ours)")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto = cuda when a GPU is visible (and --kernels is not cpu), else cpu")


def _add_train_parser(sub) -> None:
    s = sub.add_parser("train", formatter_class=_Fmt, help="train a model on our kernels (main job)",
                       description="Train an image classifier on pyimgcls kernels. With no arguments: LeNet-5 on "
                                   "the handwritten digits bundled with scikit-learn (1437 train / 360 test images, "
                                   "32x32), about 30 s on two CPU cores.")
    g = s.add_argument_group("model")
    g.add_argument("--model", default="lenet5", help="a name from pyimgcls.models.list_models()")
    g.add_argument("--pretrained", default=None, metavar="FILE",
                   help="(torchvision-compatible) state_dict to start from; a classifier of another class count "
                        "is replaced")
    g.add_argument("--freeze-backbone", action="store_true", help="with --pretrained: train only the classifier")
    g.add_argument("--init", default=None, metavar="FILE",
                   help="start from this checkpoint's model and weights (e.g. a pyimgcls prune output, to fine-tune "
                        "it): the architecture, --model and image size come from FILE")
    g.add_argument("--dropout", type=_number(float, 0, 1), default=None,
                   help="dropout probability for models that have dropout (default: the model's own)")
    g.add_argument("--teacher", default=None, metavar="CKPT",
                   help="knowledge distillation: a checkpoint of ours (any architecture, same classes and input) "
                        "whose logits the student learns from; it runs in eval mode, fused for inference")
    g.add_argument("--kd-temperature", type=_number(float, 0, None, lo_open=True), default=4.0, metavar="T",
                   help="with --teacher: softmax temperature of the distillation term")
    g.add_argument("--kd-alpha", type=_number(float, 0, 1), default=0.5, metavar="A",
                   help="with --teacher: loss = A * T^2 * KL(teacher || student) + (1 - A) * cross-entropy")
    g = s.add_argument_group("data")
    g.add_argument("--data", default="digits",
                   help="digits | synthetic | mnist:PATH | fashion-mnist:PATH | cifar10:PATH | imagefolder:PATH")
    g.add_argument("--image-size", type=_POS_INT, default=None,
                   help="side of the (square) model input; default: 32, or the model's smallest input if larger")
    g.add_argument("--in-channels", type=int, choices=(1, 3), default=None,
                   help="default: the data set's own (1 for digits and MNIST), replicated to 3 for models that "
                        "take RGB input (as torchvision's Grayscale(num_output_channels=3))")
    g.add_argument("--num-classes", type=_number(int, 2), default=10, help="synthetic data: number of classes")
    g.add_argument("--synthetic-size", type=_POS_INT, default=1024,
                   help="synthetic data: training images (test: a quarter as many)")
    g.add_argument("--limit-train", type=_POS_INT, default=None, metavar="N", help="use only the first N training images")
    g.add_argument("--limit-test", type=_POS_INT, default=None, metavar="N", help="use only the first N test images")
    g.add_argument("--val-fraction", type=_number(float, 0, 1, hi_open=True), default=0.1,
                   help="validation images carved from the training data (stratified, drawn with --seed): they "
                        "choose best.pt; the test split is evaluated once, at the end (0: no validation)")
    g.add_argument("--workers", type=_NONNEG_INT, default=min(4, os.cpu_count() or 1),
                   help="DataLoader worker processes for imagefolder (in-memory data sets need none)")
    g.add_argument("--augment", choices=("none", "standard"), default="standard",
                   help="batched on-device augmentation; standard = padded random crop, small rotation (digits, "
                        "MNIST) or horizontal flip (other data sets), brightness/contrast jitter")
    g.add_argument("--hflip", choices=("auto", "on", "off"), default="auto",
                   help="horizontal flips (auto: off for digits and MNIST, whose labels they would change)")
    g.add_argument("--rotation", type=_number(float, 0, 180), default=None, help="max rotation in degrees (override)")
    g.add_argument("--crop-padding", type=_NONNEG_INT, default=None, help="random-crop padding in pixels (override)")
    g.add_argument("--jitter", type=_number(float, 0, 1), default=None, help="brightness and contrast jitter (override)")
    g.add_argument("--randaugment", type=_NONNEG_INT, default=0, metavar="N",
                   help="RandAugment: N random ops per image (torchvision's op set; 0: off, 2: the paper's)")
    g.add_argument("--randaugment-magnitude", type=_number(int, 0, 30), default=9, metavar="M",
                   help="RandAugment magnitude, 0..30")
    g.add_argument("--random-erasing", type=_number(float, 0, 1), default=0.0, metavar="P",
                   help="random erasing probability per image (the rectangle gets the data set mean)")
    g.add_argument("--mixup", type=_NONNEG_FLOAT, default=0.0, metavar="ALPHA",
                   help="MixUp with Beta(ALPHA, ALPHA) weights (0: off; 0.2 is common); targets become class "
                        "probabilities, label smoothing still applies (as torchvision's reference script)")
    g.add_argument("--cutmix", type=_NONNEG_FLOAT, default=0.0, metavar="ALPHA",
                   help="CutMix with Beta(ALPHA, ALPHA) box areas (0: off; 1.0 is common); with --mixup too, each "
                        "batch takes one of the two")
    g = s.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_POS_INT, default=15, help="training epochs")
    g.add_argument("--batch-size", type=_POS_INT, default=32, help="per process")
    g.add_argument("--eval-batch-size", type=_POS_INT, default=256, help="batch size for the test set")
    g.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, default="sgd", help="torch.optim optimiser")
    g.add_argument("--lr", type=_number(float, 0, lo_open=True), default=0.05, help="peak learning rate")
    g.add_argument("--momentum", type=_NONNEG_FLOAT, default=0.9, help="sgd and rmsprop")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True, help="sgd: Nesterov momentum")
    g.add_argument("--weight-decay", type=_NONNEG_FLOAT, default=5e-4, help="L2 penalty (decoupled for adamw)")
    g.add_argument("--schedule", choices=("none", "cosine", "step", "onecycle"), default="cosine",
                   help="learning-rate schedule, stepped every batch")
    g.add_argument("--warmup-epochs", type=_NONNEG_FLOAT, default=1.0, help="linear warm-up (cosine, step, none)")
    g.add_argument("--step-size", type=_POS_INT, default=None,
                   help="step schedule: epochs between decays (default epochs/3)")
    g.add_argument("--gamma", type=_number(float, 0, lo_open=True), default=0.1, help="step schedule: decay factor")
    g.add_argument("--clip-grad-norm", type=_number(float, 0, lo_open=True), default=None, metavar="MAX",
                   help="clip the gradients' global L2 norm to MAX before each optimiser step")
    g.add_argument("--accumulate", type=_POS_INT, default=1, metavar="K",
                   help="gradient accumulation: one optimiser step every K batches (effective batch K x "
                        "--batch-size; the schedule counts optimiser steps)")
    g.add_argument("--ema-decay", type=_number(float, 0, 1, lo_open=True, hi_open=True), default=None,
                   metavar="D", help="keep an exponential moving average of the weights (and batch-norm "
                                     "statistics), updated every optimiser step; it is what is validated, tested "
                                     "and saved as best.pt (e.g. 0.999)")
    g.add_argument("--patience", type=_POS_INT, default=None, metavar="N",
                   help="early stopping: stop after N epochs without a better validation accuracy")
    g.add_argument("--label-smoothing", type=_number(float, 0, 1, hi_open=True), default=0.0, help="cross-entropy label smoothing")
    g.add_argument("--seed", type=int, default=0, help="seeds init, batch order and augmentation")
    g = s.add_argument_group("execution")
    _add_kernel_args(g)
    g.add_argument("--amp", choices=("off", "fp16", "bf16"), default="off",
                   help="autocast dtype (fp16 uses a GradScaler)")
    g.add_argument("--threads", type=_NONNEG_INT, default=0,
                   help="CPU threads per process for torch and our C++ kernels (0: 1 under torchrun, else "
                        "the cores not busy with other processes at start-up)")
    g.add_argument("--channels-last", action="store_true", help="NHWC model and inputs")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g = s.add_argument_group("output")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="TOML file of settings named as the options (lr = 0.1, model = \"resnet18\"); options on "
                        "the command line override it; the resolved settings are saved as config.json in the run")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="the run folder (checkpoint.pt, best.pt, metrics.json, plots); an existing non-empty one "
                        "is refused unless --overwrite or --resume. Default: a new runs/<model>-<data>-<time>/, "
                        "with runs/latest pointing at it")
    g.add_argument("--overwrite", action="store_true", help="train into a non-empty --out, replacing its run files")
    g.add_argument("--save-every", type=_NONNEG_INT, default=20, metavar="STEPS",
                   help="also checkpoint every STEPS optimiser steps (0: only at the end of each epoch)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out (default: runs/latest) exactly where it stopped; settings not "
                        "given come from its checkpoint; a larger --epochs extends it")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files to OUT/tensorboard (per-epoch losses, accuracies, "
                        "learning rate, images/s; test metrics at the end): tensorboard --logdir runs")
    g.add_argument("--no-plots", action="store_true", help="skip curves.png and confusion_matrix.png")
    g.add_argument("--quiet", action="store_true", help="no progress output")
    s.set_defaults(func=cmd_train)


def _add_eval_parsers(sub) -> None:
    s = sub.add_parser("eval", formatter_class=_Fmt, help="recompute test metrics of a checkpoint",
                       description="Evaluate a checkpoint written by pyimgcls train on a test split.")
    s.add_argument("--checkpoint", required=True, metavar="FILE", help="checkpoint.pt or best.pt")
    s.add_argument("--data", default=None, help="data spec (default: the one the checkpoint was trained on)")
    s.add_argument("--synthetic-size", type=_POS_INT, default=1024, help="synthetic data: training images")
    s.add_argument("--seed", type=int, default=0, help="synthetic data: seed")
    s.add_argument("--limit-test", type=_POS_INT, default=None, metavar="N", help="use only the first N test images")
    s.add_argument("--batch-size", type=_POS_INT, default=256, help="evaluation batch size")
    s.add_argument("--workers", type=_NONNEG_INT, default=min(4, os.cpu_count() or 1), help="imagefolder decoding workers")
    s.add_argument("--out", default=None, help="also write eval_metrics.json and eval_confusion_matrix.png here")
    _add_kernel_args(s)
    s.set_defaults(func=cmd_eval)
    s = sub.add_parser("predict", formatter_class=_Fmt, help="top-5 classes of image files",
                       description="Classify image files with a checkpoint written by pyimgcls train.")
    s.add_argument("--checkpoint", required=True, metavar="FILE", help="checkpoint.pt or best.pt")
    s.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (anything Pillow decodes) or folders (their image files, recursively)")
    s.add_argument("--output", default=None, metavar="FILE",
                   help="also write the predictions to FILE: .json (a list per image) or .csv (a row per class)")
    s.add_argument("--top", type=_POS_INT, default=5, help="how many classes to show")
    _add_kernel_args(s)
    s.set_defaults(func=cmd_predict)


def _add_explain_parser(sub) -> None:
    from .backends import NAMES
    s = sub.add_parser("explain", formatter_class=_Fmt, help="which kernel runs each layer (no GPU needed)",
                       description="What every layer of a model would launch, forward and backward: kernel, "
                                   "tensor cores, 16-byte loads, tile, CTAs, FLOPs, bytes and the roofline time "
                                   "at the H100 / H200 peaks. Decided on the host from shapes alone "
                                   "(pyimgcls.explain); nothing runs on a GPU.")
    s.add_argument("--model", required=True, help="a name from pyimgcls.models.list_models()")
    s.add_argument("--backend", choices=NAMES, default="cuda", help="the backend to explain")
    s.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float16",
                   help="float16/bfloat16: mixed precision as torch.autocast runs it (batch norm in float32)")
    s.add_argument("--image-size", type=_POS_INT, default=224, help="input height and width")
    s.add_argument("--batch-size", type=_POS_INT, default=128)
    s.add_argument("--num-classes", type=_POS_INT, default=1000)
    s.add_argument("--channels-last", action="store_true", help="model and input in torch.channels_last")
    s.add_argument("--eval", action="store_true", help="inference only (model.eval(), no backward)")
    s.add_argument("--json", action="store_true", help="JSON (meta, rows, totals) instead of a table")
    s.set_defaults(func=cmd_explain)


def _add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", formatter_class=_Fmt, help="HTTP inference server for a checkpoint",
                       description="Serve a checkpoint over HTTP on our kernels: POST /v1/predict (an image), the "
                                   "KServe v2 JSON protocol (/v2/...), /healthz, /readyz, /v1/models, /metrics "
                                   "(Prometheus) and a web page at /. Requests are batched dynamically.")
    s.add_argument("--checkpoint", required=True, metavar="FILE", help="checkpoint.pt or best.pt")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (loopback unless told otherwise)")
    s.add_argument("--port", type=_number(int, 0, 65535), default=8000, help="TCP port (0: any free port)")
    s.add_argument("--max-batch-size", type=_number(int, 1, 1024), default=32, help="most images per model batch")
    s.add_argument("--max-delay-ms", type=_NONNEG_FLOAT, default=5.0,
                   help="while the model is busy, a batch waits at most this long for more requests")
    s.add_argument("--max-queue", type=_POS_INT, default=256, help="queued requests beyond which new ones get 503")
    s.add_argument("--max-body-mb", type=_number(float, 0, lo_open=True), default=16.0,
                   help="largest request body in MiB (413 above)")
    s.add_argument("--request-timeout", type=_number(float, 0, lo_open=True), default=30.0, metavar="SECONDS",
                   help="a request not answered within this time gets 504")
    s.add_argument("--api-key-file", default=None, metavar="FILE",
                   help="require 'Authorization: Bearer KEY' on /v1/predict and /v2/models/*/infer; KEY is the "
                        "file's content, surrounding whitespace stripped")
    s.add_argument("--threads", type=_NONNEG_INT, default=0,
                   help="CPU threads for the model (0: as predict: the cores idle at start-up); 1 is best on a "
                        "machine shared with other busy processes")
    _add_kernel_args(s)
    s.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from . import serve
    return serve.main(args)


def cmd_prune(args) -> int:
    from .pruning._cli import prune_checkpoint
    from .training import checkpoint as ckpt_mod
    if os.path.isfile(args.checkpoint) and ckpt_mod.load_checkpoint(args.checkpoint).get("kind") == "quantized":
        from .errors import ArgumentValueError
        raise ArgumentValueError(f"--checkpoint {args.checkpoint} is a 'quantized' checkpoint; prune the float one, "
                                 "then quantize the pruned file")
    prune_checkpoint(args)
    return 0


def _add_prune_parser(sub) -> None:
    s = sub.add_parser("prune", formatter_class=_Fmt, help="remove channels from a trained model (smaller, faster)",
                       description="Structured channel pruning (pyimgcls.pruning.prune_channels) of a checkpoint: "
                                   "writes a checkpoint of the smaller model that records its layer widths, for "
                                   "train --init (fine-tuning), eval, predict and pyimgcls.load_model.")
    s.add_argument("--checkpoint", required=True, metavar="FILE", help="checkpoint.pt or best.pt (or a pruned file)")
    s.add_argument("--amount", type=_number(float, 0, 1, hi_open=True), default=0.5,
                   help="fraction of the output channels removed from every conv layer or tied residual group")
    s.add_argument("--criterion", choices=("l1", "bn_scale"), default="l1",
                   help="l1: filter L1 norm; bn_scale: |gamma| of the following BatchNorm")
    s.add_argument("--global-ranking", action="store_true",
                   help="rank all channels together (scores relative to their layer's mean) instead of removing "
                        "--amount from every layer; layers then lose different fractions")
    s.add_argument("--out", required=True, metavar="FILE", help="the pruned checkpoint to write")
    s.add_argument("--2:4", dest="sparse_2_4", action="store_true",
                   help="then keep the 2 largest of every 4 input-channel weights of each layer (2:4 sparsity for "
                        "the sparse tensor cores; --amount 0 for 2:4 only)")
    s.set_defaults(func=cmd_prune)


def cmd_quantize(args) -> int:
    from .quantization._cli import quantize_checkpoint
    from .training.loop import _with_threads
    _with_threads(quantize_checkpoint)(args)      # the caller's thread counts are restored afterwards
    return 0


def _add_quantize_parser(sub) -> None:
    from .quantization import OBSERVERS
    s = sub.add_parser("quantize", formatter_class=_Fmt, help="int8-quantise a trained model (our int8 kernels)",
                       description="Post-training static int8 quantisation (pyimgcls.quantization.quantize), or "
                                   "quantisation-aware fine-tuning with --qat-epochs (prepare_qat / convert), of a "
                                   "checkpoint; calibration and QAT data are the training split of the data set "
                                   "the checkpoint records. Writes a checkpoint for eval, predict, bench "
                                   "--checkpoint and pyimgcls.load_model.")
    s.add_argument("--checkpoint", required=True, metavar="FILE", help="checkpoint.pt, best.pt or a pruned file")
    s.add_argument("--calibration-batches", type=_POS_INT, default=16, metavar="N",
                   help="training batches the activation ranges are calibrated on (QAT: the observers' start)")
    s.add_argument("--observer", choices=sorted(OBSERVERS), default="minmax",
                   help="PTQ activation range: min/max, 99.99th percentile, or least squared error")
    s.add_argument("--qat-epochs", type=_NONNEG_INT, default=0, metavar="E",
                   help="quantisation-aware fine-tuning epochs (0: post-training quantisation only)")
    s.add_argument("--lr", type=_number(float, 0, lo_open=True), default=1e-3,
                   help="QAT: SGD (momentum 0.9) learning rate, cosine-annealed to 0")
    s.add_argument("--batch-size", type=_POS_INT, default=32, help="calibration and QAT batch size")
    s.add_argument("--per-tensor", action="store_true", help="one weight scale per layer (default: per channel)")
    s.add_argument("--limit-test", type=_POS_INT, default=None, metavar="N",
                   help="accuracies reported on only the first N test images")
    s.add_argument("--synthetic-size", type=_POS_INT, default=1024, help="synthetic data: training images")
    s.add_argument("--seed", type=int, default=0, help="calibration / QAT batch order (and synthetic data)")
    s.add_argument("--workers", type=_NONNEG_INT, default=0, help="imagefolder decoding workers")
    s.add_argument("--threads", type=_NONNEG_INT, default=0,
                   help="CPU threads (0: as train: the cores idle at start-up)")
    from .backends import CHOICES
    s.add_argument("--kernels", choices=CHOICES, default="auto",
                   help="backend of the int8 kernels used for the accuracy report, on the CPU (no CUDA int8 kernels "
                        "yet: cpu, triton or torch)")
    s.add_argument("--out", required=True, metavar="FILE", help="the quantised checkpoint to write")
    s.set_defaults(func=cmd_quantize)


OPTIMIZER_CHOICES = ("sgd", "adam", "adamw", "rmsprop", "adagrad")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pyimgcls", description="pyimgcls: our kernels for image classification")
    from . import __version__
    p.add_argument("--version", action="version", version=f"pyimgcls {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    _add_eval_parsers(sub)
    _add_explain_parser(sub)
    _add_serve_parser(sub)
    _add_prune_parser(sub)
    _add_quantize_parser(sub)
    s = sub.add_parser("info", help="versions, compiled kernels and available backends")
    s.set_defaults(func=cmd_info)
    s = sub.add_parser("bench", help="benchmark our kernels against PyTorch (GPU if present, else CPU)")
    s.add_argument("--out", default=None, help="directory for the results JSON (GPU runs)")
    s.add_argument("--quick", action="store_true", help="fewer, smaller cases")
    s.add_argument("target", nargs="?", default="gemm", choices=("gemm", "ladder"),
                   help="gemm (default): the GEMM family; ladder: every study-ladder step (docs/ladder.md)")
    s.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="a pyimgcls quantize output: time its int8 model against float32 on the CPU instead")
    s.add_argument("--batch-sizes", type=lambda t: [_POS_INT(v) for v in t.split(",")], default=[1, 16],
                   metavar="B,B", help="with --checkpoint: batch sizes")
    s.add_argument("--image-size", type=_POS_INT, default=None, help="with --checkpoint: default the model's")
    from .backends import CHOICES
    s.add_argument("--kernels", choices=CHOICES, default="auto",
                   help="with --checkpoint: backend of both models, on the CPU")
    s.add_argument("--threads", type=_NONNEG_INT, default=0,
                   help="with --checkpoint: CPU threads for both (0: torch's current count)")
    s.set_defaults(func=cmd_bench)
    return p


def _one_line(e: BaseException) -> str:
    # Messages quoted from other libraries may span lines; the CLI promises one.
    return " ".join(part.strip() for part in str(e).splitlines() if part.strip())


def _explicit(argv) -> set:
    """The destinations the command line sets itself (not by default): parsed again with every
    default suppressed, so that a resumed run can take the others from its checkpoint."""
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices["train"]._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command", "func"}


def _config_argv(parser, path: str) -> list:
    """The settings of a TOML file as command-line tokens, so they pass the options' own checks and
    any option given on the command line after them wins."""
    import tomllib
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except OSError as e:
        parser.error(f"--config: cannot read {path}: {e.strerror or e}")
    except tomllib.TOMLDecodeError as e:
        parser.error(f"--config: {path} is not valid TOML: {e}")
    train = parser._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in train._actions if a.option_strings}
    tokens = []
    for key, value in cfg.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None or dest in ("config", "help"):
            parser.error(f"--config: {path}: unknown setting {key!r}")
        flag = next(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse.BooleanOptionalAction):
            tokens.append(flag if value else f"--no-{flag[2:]}")
        elif action.nargs == 0:   # store_true
            if not isinstance(value, bool):
                parser.error(f"--config: {path}: {key} must be true or false, got {value!r}")
            tokens += [flag] if value else []
        else:
            tokens += [flag, str(value)]
    return tokens


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command == "train" and args.config is not None:
        i = argv.index("train") + 1
        argv = argv[:i] + _config_argv(parser, args.config) + argv[i:]
        args = parser.parse_args(argv)
    if args.command == "train":
        args.explicit = _explicit(argv)
    if args.command == "explain":
        from .errors import ArgumentTypeError, ArgumentValueError, BackendError
        try:
            return args.func(args)
        except (ValueError, TypeError, ArgumentValueError, ArgumentTypeError, BackendError) as e:
            parser.exit(2, f"pyimgcls explain: error: {_one_line(e)}\n")
    if args.command in ("train", "eval", "predict", "serve", "prune", "quantize") or (
            args.command == "bench" and getattr(args, "checkpoint", None) is not None):
        from .errors import ArgumentTypeError, ArgumentValueError, BackendError
        from .training.loop import Interrupted, PredictErrors, TrainingDiverged
        try:
            return args.func(args)
        except PredictErrors as e:
            # The readable images were predicted (and written to --output); each unreadable one is named.
            for message in e.messages:
                print(f"pyimgcls {args.command}: error: {_one_line(message)}", file=sys.stderr)
            return 2
        except Interrupted as e:
            # Ctrl-C during training: the checkpoint is saved; the shell's status for SIGINT is 128 + 2.
            print(f"pyimgcls {args.command}: {_one_line(e)}", file=sys.stderr)
            return 130
        except KeyboardInterrupt:
            print(f"pyimgcls {args.command}: interrupted", file=sys.stderr)
            return 130
        except (ArgumentValueError, ArgumentTypeError, BackendError) as e:
            # Bad arguments or data (pyimgcls.data.DataError is an ArgumentValueError; each names the
            # culprit): one clear line, exit status 2 as argparse does, no traceback. Anything else is
            # a bug and keeps its traceback.
            parser.exit(2, f"pyimgcls {args.command}: error: {_one_line(e)}\n")
        except TrainingDiverged as e:
            # Not the arguments' fault as such (the data and settings were readable), so its own status.
            parser.exit(3, f"pyimgcls {args.command}: error: {_one_line(e)}\n")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
