"""GPU model benchmark: whole-network training step and inference throughput of pyimgcls.models.

Models: resnet18, resnet50, vgg16, densenet121, mobilenet_v2 at 3x224x224, batch 128 (``--batch``),
automatic mixed precision (``torch.autocast("cuda", float16)``, float32 master weights) and
channels_last weights and inputs, 1000 classes.

Passes:
- ``train_step``: forward, pyimgcls CrossEntropyLoss, backward, ``torch.optim.SGD(momentum=0.9)`` step
  (no GradScaler: the scaling multiplies are the same for every provider and would only add noise);
- ``fwd``: eval-mode inference under ``torch.no_grad()``.

Providers (the SAME model object and weights for the first three):
- ``cuda``, ``triton``: our kernels (``pyimgcls.use_backend``);
- ``eager``: the reference, ``pyimgcls.use_backend("torch")``: every layer runs PyTorch's own ATen/cuDNN
  kernel, i.e. what the torchvision model computes eagerly (plus the custom-op dispatch of our wrappers);
- ``torch.compile``: a pure-PyTorch twin of the model (same weights; every pyimgcls layer replaced by a
  torch.nn layer whose forward is F.conv2d / F.batch_norm / F.linear + the fused residual and activation
  written as plain tensor ops, so inductor sees and fuses them as it would in torchvision's model),
  compiled with ``torch.compile`` (default mode).

Rows: family "model", op = model name, ``ref_provider="eager"`` (speedup = eager_ms / ms), extra keys
``images_per_s``, ``batch``, ``compile_ms`` / ``vs_compile`` (our rows), ``rel_err`` (our eval logits vs
eager's on one batch). FLOPs and bytes are not counted for whole networks (``tflops``/``roofline_pct``
null). Timing is ``pyimgcls.bench.time_ms`` (CUDA events, median).

Usage (repo root)::

    python benchmarks/bench_models.py [--out DIR] [--quick] [--models resnet18,resnet50] [--batch 128]
                                      [--providers cuda,triton] [--no-compile]

``--quick``: resnet18 and mobilenet_v2, batch 64, shorter timing. The full run stays under ~4 minutes
on an H100 (torch.compile of five models dominates; ``--no-compile`` skips it). Without a CUDA
device it prints a message and exits 0.

EfficientNet (issue #21), ``gpu_check.sh bench4``::

    python benchmarks/bench_models.py --models efficientnet_b0 --no-compile --depthwise

- the efficientnet_b0 AMP training step vs eager channels_last (the ``eager`` rows above; target >= 1.0x);
- ``--depthwise``: efficientnet_b0's depthwise layers (batch 128 at 224x224, float16, channels_last),
  each as the kernels our layers launch: ``dwconv_bias_silu`` (inference: BN folded into the depthwise
  conv, SiLU in its epilogue; bytes x + y + weight + bias) and ``batch_norm_silu`` (training-mode BN
  statistics + normalisation + SiLU in one op; bytes x + y + 4 C parameters/statistics), forward only.
  Rows carry ``gbps`` and ``hbm_pct`` = gbps / 4800 (the H200's 4.8 TB/s; target >= 60 %), the
  reference being the same call on the ``torch`` backend (ATen/cuDNN + F.silu).
- ``--dry-run``: no GPU needed: every depthwise case at batch 2 on CPU tensors, ours (``cpu``) vs
  ``torch``, values compared, no timing; checks the script's cases and byte counts run.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["resnet18", "resnet50", "vgg16", "densenet121", "mobilenet_v2"]
QUICK_MODELS = ["resnet18", "mobilenet_v2"]
PASSES = ["train_step", "fwd"]
MAX_REL_ERR = 3e-2  # fp16 AMP logits of a randomly initialised deep net vs the eager reference


# ----------------------------------------------------------------------------- pure-PyTorch twin
def _act(y, activation):
    if activation is None:
        return y
    return {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "hardswish": F.hardswish,
            "sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid}[activation](y)


class _TwinConv2d(torch.nn.Conv2d):
    def forward(self, input, residual=None):
        y = F.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return _act(y if residual is None else y + residual, self.activation)


class _TwinLinear(torch.nn.Linear):
    def forward(self, input):
        return _act(F.linear(input, self.weight, self.bias), self.activation)


class _TwinBatchNorm2d(torch.nn.BatchNorm2d):
    def forward(self, input, residual=None):
        y = super().forward(input)
        return _act(y if residual is None else y + residual, self.activation)


class _TwinMaxPool2d(torch.nn.MaxPool2d):
    pass


class _TwinAvgPool2d(torch.nn.AvgPool2d):
    pass


class _TwinAdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    pass


def torch_twin(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in which each pyimgcls layer becomes the matching torch.nn computation
    (same parameters values, same forward signature). Functional pyimgcls calls inside a model's own
    forward (DenseNet/MobileNetV2's final global pooling) are routed by running it under the `torch`
    backend, which calls ATen directly."""
    from pyimgcls import nn

    twin = copy.deepcopy(model)
    swaps = {nn.Conv2d: _TwinConv2d, nn.Linear: _TwinLinear, nn.BatchNorm2d: _TwinBatchNorm2d,
             nn.MaxPool2d: _TwinMaxPool2d, nn.AvgPool2d: _TwinAvgPool2d,
             nn.AdaptiveAvgPool2d: _TwinAdaptiveAvgPool2d}
    for m in twin.modules():
        cls = swaps.get(type(m))
        if cls is not None:
            m.__class__ = cls  # same attributes (torch.nn base + ``activation``), new forward
    return twin


# ----------------------------------------------------------------------------- timing
def _build(name, batch):
    from pyimgcls import models

    torch.manual_seed(0)
    model = models.get_model(name, num_classes=1000).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (batch,), device="cuda")
    return model, x, target


def _step_fns(model, x, target, backend):
    """(train_step, fwd) closures for ``model`` under ``backend`` (None: whatever is current)."""
    import contextlib

    import pyimgcls
    from pyimgcls import nn

    ctx = (lambda: pyimgcls.use_backend(backend)) if backend else contextlib.nullcontext
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step():
        model.train()
        with ctx(), torch.autocast("cuda", dtype=torch.float16):
            loss = loss_fn(model(x), target)
        opt.zero_grad(set_to_none=True)
        with ctx():
            loss.backward()
        opt.step()
        return loss

    def fwd():
        model.eval()
        with ctx(), torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
            return model(x)

    return {"train_step": train_step, "fwd": fwd}


def _compiled_fns(model, x, target):
    """torch.compile'd twin: forward (train and eval graphs), backward and SGD step."""
    import pyimgcls

    twin = torch_twin(model)
    compiled = torch.compile(twin)
    opt = torch.optim.SGD(twin.parameters(), lr=1e-3, momentum=0.9)

    def train_step():
        twin.train()
        with pyimgcls.use_backend("torch"), torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(compiled(x).float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def fwd():
        twin.eval()
        with pyimgcls.use_backend("torch"), torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
            return compiled(x)

    return {"train_step": train_step, "fwd": fwd}


def run(models, providers, batch, quick, use_compile, out_dir) -> int:
    from pyimgcls.bench import Case, time_ms
    from report import finish_results, new_results, print_table

    torch.backends.cudnn.benchmark = True
    t_start = time.perf_counter()
    rep_ms = 300 if quick else 1000
    rows, failures, ratios = [], [], {}
    for name in models:
        model, x, target = _build(name, batch)
        # Correctness first, on one eval batch: ours vs the eager reference, same weights.
        ref_fns = _step_fns(model, x, target, "torch")
        ref_logits = ref_fns["fwd"]().float()
        errs = {}
        for prov in providers:
            try:
                out = _step_fns(model, x, target, prov)["fwd"]().float()
                errs[prov] = float((out - ref_logits).norm() / ref_logits.norm().clamp_min(1e-30))
            except Exception as e:  # noqa: BLE001 -- report every failing provider, keep going
                failures.append(f"{prov} {name} fwd: {type(e).__name__}: {e}")
                print(f"FAILED {failures[-1]}", flush=True)
        compiled = None
        if use_compile:
            try:
                t0 = time.perf_counter()
                compiled = _compiled_fns(model, x, target)
                for fn in compiled.values():
                    fn()
                print(f"{name}: torch.compile warm-up {time.perf_counter() - t0:.0f} s", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"torch.compile of {name} failed ({type(e).__name__}: {e}); no compile reference", flush=True)
                compiled = None
        for pass_ in PASSES:
            case = Case("model", name, f"N={batch} 3x224x224 amp", "float16", None, 0.0, pass_=pass_, layout="nhwc")
            timings = {}
            fn = ref_fns[pass_]
            fn()
            timings["eager"] = time_ms(fn, rep_ms=rep_ms)
            if compiled is not None:
                timings["torch.compile"] = time_ms(compiled[pass_], rep_ms=rep_ms)
            for prov, ms in timings.items():
                rows.append(case.row(prov, ms, "eager", timings["eager"], None, images_per_s=batch / (ms * 1e-3),
                                     batch=batch))
            for prov in providers:
                if prov not in errs:
                    continue
                try:
                    fn = _step_fns(model, x, target, prov)[pass_]
                    fn()
                    ms = time_ms(fn, rep_ms=rep_ms)
                except Exception as e:  # noqa: BLE001
                    failures.append(f"{prov} {name} {pass_}: {type(e).__name__}: {e}")
                    print(f"FAILED {failures[-1]}", flush=True)
                    continue
                ok = errs[prov] <= MAX_REL_ERR
                if not ok and pass_ == "fwd":
                    failures.append(f"{prov} {name}: eval logits rel_err {errs[prov]:.2e} vs eager")
                    print(f"WRONG RESULT {failures[-1]}", flush=True)
                extra = {}
                if "torch.compile" in timings:
                    extra = {"compile_ms": timings["torch.compile"], "vs_compile": timings["torch.compile"] / ms}
                row = case.row(prov, ms, "eager", timings["eager"], None, images_per_s=batch / (ms * 1e-3),
                               batch=batch, rel_err=errs[prov], correct=ok, **extra)
                rows.append(row)
                ratios.setdefault((pass_, prov), []).append(row["speedup"])
                print(f"{prov:6s} {pass_:10s} {name:13s} N={batch}  {ms:9.2f} ms  {row['images_per_s']:9.0f} img/s  "
                      f"eager {timings['eager']:9.2f} ms  x{row['speedup']:.2f}"
                      + (f"  compile {extra['compile_ms']:.2f} ms x{extra['vs_compile']:.2f}" if extra else "")
                      + f"  err {errs[prov]:.1e}", flush=True)
        del model, x, target, ref_fns, compiled
        torch._dynamo.reset()
        torch.cuda.empty_cache()

    geo = {" ".join(k): math.exp(sum(math.log(r) for r in v) / len(v)) for k, v in ratios.items() if v}
    results = new_results("cuda", cases=rows)
    results["model_geomean"] = geo
    finish_results(results, failures, out_dir, "model benchmark", t_start)
    print_table(rows)
    print("\ngeometric mean speedup vs eager (pass, provider):")
    for k, v in sorted(geo.items()):
        print(f"  {k:30s} x{v:.3f}")
    return 1 if failures else 0


# ----------------------------------------------------------------------------- depthwise kernels
HBM_GBPS = 4800.0  # H200 HBM3e datasheet peak, the yardstick for the depthwise kernels
# efficientnet_b0's depthwise layers at 224x224: (channels, input size, kernel, stride)
DEPTHWISE = [(32, 112, 3, 1), (96, 112, 3, 2), (144, 56, 3, 1), (144, 56, 5, 2), (240, 28, 5, 1),
             (240, 28, 3, 2), (480, 14, 3, 1), (480, 14, 5, 1), (672, 14, 5, 1), (672, 14, 5, 2),
             (1152, 7, 5, 1), (1152, 7, 3, 1)]


def depthwise_cases(batch, device, dtype):
    """[(Case, {backend-agnostic callable}, reference-check inputs)] for the depthwise layers: each a
    Case (bytes = compulsory traffic) and a zero-argument function running our op in the current
    backend."""
    from pyimgcls import ops
    from pyimgcls.bench import Case, dtype_name

    size = torch.tensor([], dtype=dtype).element_size()
    cases, bn_seen = [], set()
    g = torch.Generator(device="cpu").manual_seed(0)
    for C, H, k, s in DEPTHWISE:
        OH = (H + 2 * (k // 2) - k) // s + 1
        x = torch.randn(batch, C, H, H, generator=g).to(device, dtype).contiguous(memory_format=torch.channels_last)
        w = (torch.randn(C, 1, k, k, generator=g) / k).to(device, dtype).contiguous(memory_format=torch.channels_last)
        b = torch.randn(C, generator=g).to(device, dtype)
        shape = f"N={batch} C={C} {H}x{H} k{k} s{s}"
        nbytes = (x.numel() + batch * C * OH * OH + w.numel() + C) * size
        cases.append((Case("conv", "dwconv_bias_silu", shape, dtype_name(dtype), 2.0 * batch * C * OH * OH * k * k,
                           nbytes, layout="nhwc"),
                      lambda x=x, w=w, b=b, s=s, k=k, C=C: ops.conv2d(x, w, b, s, k // 2, 1, C, activation="silu")))
        if (C, OH) in bn_seen:
            continue
        bn_seen.add((C, OH))
        y = torch.randn(batch, C, OH, OH, generator=g).to(device, dtype).contiguous(memory_format=torch.channels_last)
        rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)
        gamma, beta = torch.rand(C, device=device) + 0.5, torch.randn(C, device=device)
        cases.append((Case("batchnorm", "batch_norm_silu", f"N={batch} C={C} {OH}x{OH}", dtype_name(dtype), None,
                           2 * y.numel() * size + 4 * C * 4, layout="nhwc"),
                      lambda y=y, rm=rm, rv=rv, gamma=gamma, beta=beta: ops.batch_norm(
                          y, rm.clone(), rv.clone(), gamma, beta, True, 0.1, 1e-5, activation="silu")))
    return cases


def run_depthwise(providers, batch, quick, out_dir) -> int:
    """Achieved bandwidth of the depthwise conv + bias + SiLU and BN + SiLU kernels vs eager PyTorch."""
    import pyimgcls
    from pyimgcls.bench import time_ms
    from report import finish_results, new_results, print_table

    t_start = time.perf_counter()
    rows, failures = [], []
    for case, fn in depthwise_cases(batch, "cuda", torch.float16):
        with torch.no_grad():
            with pyimgcls.use_backend("torch"):
                ref = fn().float()
                ref_ms = time_ms(fn, rep_ms=100 if quick else 300)
            for prov in providers:
                with pyimgcls.use_backend(prov):
                    try:
                        err = float((fn().float() - ref).norm() / ref.norm().clamp_min(1e-30))
                        ms = time_ms(fn, rep_ms=100 if quick else 300)
                    except Exception as e:  # noqa: BLE001 -- report every failing provider, keep going
                        failures.append(f"{prov} {case.op} {case.shape}: {type(e).__name__}: {e}")
                        print(f"FAILED {failures[-1]}", flush=True)
                        continue
                if err > 1e-2:
                    failures.append(f"{prov} {case.op} {case.shape}: rel_err {err:.2e} vs torch")
                row = case.row(prov, ms, "eager", ref_ms, None, rel_err=err)
                row["hbm_pct"] = 100.0 * row["gbps"] / HBM_GBPS if row.get("gbps") else None
                rows.append(row)
                print(f"{prov:6s} {case.op:17s} {case.shape:28s} {ms * 1e3:8.1f} us  {row['gbps']:7.0f} GB/s "
                      f"({row['hbm_pct']:.0f} % of 4.8 TB/s)  eager {ref_ms * 1e3:8.1f} us  x{row['speedup']:.2f}",
                      flush=True)
    results = new_results("cuda", cases=rows)
    finish_results(results, failures, out_dir, "depthwise bandwidth benchmark", t_start)
    print_table(rows)
    return 1 if failures else 0


def dry_run() -> int:
    """CPU check of the depthwise cases (batch 2): our cpu backend vs torch, no timing."""
    import pyimgcls

    bad = 0
    for case, fn in depthwise_cases(2, "cpu", torch.float32):
        with torch.no_grad():
            with pyimgcls.use_backend("torch"):
                ref = fn()
            with pyimgcls.use_backend("cpu"):
                out = fn()
        err = float((out - ref).norm() / ref.norm().clamp_min(1e-30))
        ok = err <= 1e-4 and case.bytes > 0
        bad += not ok
        print(f"dry-run {'ok  ' if ok else 'FAIL'} {case.family}/{case.op} {case.shape}: rel_err {err:.1e}, "
              f"{case.bytes / 1e6:.2f} MB at batch 2", flush=True)
    return 1 if bad else 0


def main(argv=None) -> int:
    from report import gpu_bench_parser, select_providers

    p = gpu_bench_parser(__doc__, "resnet18 and mobilenet_v2, batch 64, shorter timing",
                         "comma-separated backends of ours")
    p.add_argument("--models", default=None, help=f"comma-separated subset of {MODELS}")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 128; 64 with --quick)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile reference")
    p.add_argument("--depthwise", action="store_true",
                   help="also the depthwise conv + SiLU and BN + SiLU kernels' bandwidth (efficientnet_b0 layers)")
    p.add_argument("--dry-run", action="store_true", help="CPU check of the depthwise cases, no timing")
    args = p.parse_args(argv)
    if args.dry_run:
        return dry_run()
    if not torch.cuda.is_available():
        print("no CUDA device: skipping GPU model benchmark")
        return 0
    import pyimgcls

    models = [m.strip() for m in args.models.split(",")] if args.models else (QUICK_MODELS if args.quick else MODELS)
    unknown = [m for m in models if m not in pyimgcls.models.list_models()]
    if unknown:
        print(f"unknown models {unknown}; choose from {pyimgcls.models.list_models()}")
        return 2
    providers = select_providers(args.providers, pyimgcls.available_backends())
    if not providers:
        print("no GPU backend of ours is available: nothing to compare")
        return 1
    batch = args.batch or (64 if args.quick else 128)
    rc = run(models, providers, batch, args.quick, not args.no_compile, args.out)
    if args.depthwise:
        rc = max(rc, run_depthwise(providers, 128, args.quick, args.out))
    return rc


if __name__ == "__main__":
    sys.exit(main())
