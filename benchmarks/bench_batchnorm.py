"""GPU BatchNorm benchmark: our ``cuda`` and ``triton`` backends against PyTorch (cuDNN) BatchNorm.

Layers: the distinct BatchNorm shapes of ResNet-50 (torchvision v1.5, 224x224 input) at batch 128,
fp16 channels_last, each with its ReLU, and with the shortcut add for the block outputs:

    C x H x W        where in ResNet-50                                   fused epilogue
    64 x 112 x 112   stem bn1                                             relu
    64 x 56 x 56     layer1 bn1 / bn2                                     relu
    256 x 56 x 56    layer1 bn3 (+ shortcut)                              residual + relu
    128 x 56 x 56    layer2.0 bn1 (before the stride-2 conv2)             relu
    128 x 28 x 28    layer2 bn1 / bn2                                     relu
    512 x 28 x 28    layer2 bn3 (+ shortcut)                              residual + relu
    256 x 28 x 28    layer3.0 bn1                                         relu
    256 x 14 x 14    layer3 bn1 / bn2                                     relu
    1024 x 14 x 14   layer3 bn3 (+ shortcut)                              residual + relu
    512 x 14 x 14    layer4.0 bn1                                         relu
    512 x 7 x 7      layer4 bn1 / bn2                                     relu
    2048 x 7 x 7     layer4 bn3 (+ shortcut)                              residual + relu

Passes: training forward + backward (``fwd+bwd``: batch statistics, running-stat update, grads of
input, weight, bias and residual, through autograd.grad so nothing accumulates) and eval forward.
Providers are compared with two references, one row each:
  ``cudnn``: F.batch_norm alone (PyTorch's cuDNN / native kernel), the unfused BN;
  ``torch``: eager PyTorch F.batch_norm + add + relu, the same computation as ours, unfused.
Bytes (GB/s and % of the copy bandwidth measured in the same run), Q = N*C*H*W elements:
  eval fwd:  x read + y written (+ residual read)                            = (2 [+1]) Q elements
  train:     fwd x read, y written (+ residual); bwd grad_out, x and y (the relu mask) read,
             grad_in written (+ grad_residual written)                        = (7 [+2]) Q elements
(per-channel vectors are negligible). FLOPs are null: BatchNorm is memory-bound. Results go to
``<out>/<date>_<gpu>_<shortsha>.json`` with family "batchnorm".

Usage::

    python benchmarks/bench_batchnorm.py [--out DIR] [--quick] [--providers cuda,triton]

Without a CUDA device it prints a message and exits 0.
"""
from __future__ import annotations

import os
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 128
# (C, H, W, residual)
LAYERS = [
    (64, 112, 112, False), (64, 56, 56, False), (256, 56, 56, True), (128, 56, 56, False),
    (128, 28, 28, False), (512, 28, 28, True), (256, 28, 28, False), (256, 14, 14, False),
    (1024, 14, 14, True), (512, 14, 14, False), (512, 7, 7, False), (2048, 7, 7, True),
]
QUICK = {0, 2, 8, 11}


def _rel_err(out, ref) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def run(providers, quick: bool, out_dir: str) -> int:
    import torch.nn.functional as F

    import pyimgcls
    from pyimgcls import ops
    from pyimgcls.bench import Case, dtype_name, measure_peaks, time_ms
    from report import finish_results, new_results, print_table

    t_start = time.perf_counter()
    peaks = measure_peaks("cuda")
    rows, failures = [], []
    dtype = torch.float16
    gen = torch.Generator(device="cuda").manual_seed(0)
    for li, (C, H, W, has_res) in enumerate(LAYERS):
        if quick and li not in QUICK:
            continue
        cl = torch.channels_last

        def rand(*shape):
            return torch.randn(*shape, device="cuda", dtype=dtype, generator=gen)

        x = rand(BATCH, C, H, W).contiguous(memory_format=cl).requires_grad_()
        r = rand(BATCH, C, H, W).contiguous(memory_format=cl).requires_grad_() if has_res else None
        go = rand(BATCH, C, H, W).contiguous(memory_format=cl)
        w = torch.rand(C, device="cuda", generator=gen).add_(0.5).requires_grad_()
        b = torch.randn(C, device="cuda", generator=gen).requires_grad_()
        rm, rv = torch.zeros(C, device="cuda"), torch.ones(C, device="cuda")
        leaves = [t for t in (x, w, b, r) if t is not None]

        def ours(training):
            return ops.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, activation="relu", residual=r)

        def eager(training):
            y = F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)
            return F.relu(y + r if r is not None else y)

        def bn_only(training):
            return F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)

        def train_step(fn):
            return lambda: torch.autograd.grad(fn(True), leaves, go)

        def eval_step(fn):
            def step():
                with torch.no_grad():
                    return fn(False)
            return step

        Q = x.numel()
        elt = x.element_size()
        shape = f"resnet50 {BATCH}x{C}x{H}x{W}" + (" +res" if has_res else "")
        cases = {
            "fwd+bwd": Case("batchnorm", "batch_norm_relu" + ("_residual" if has_res else ""), shape,
                            dtype_name(dtype), None, float((7 + 2 * has_res) * Q * elt), "fwd+bwd", "nhwc"),
            "fwd": Case("batchnorm", "batch_norm_relu" + ("_residual" if has_res else ""), shape + " eval",
                        dtype_name(dtype), None, float((2 + has_res) * Q * elt), "fwd", "nhwc"),
        }
        refs = {
            "fwd+bwd": {"cudnn": time_ms(train_step(bn_only)), "torch": time_ms(train_step(eager))},
            "fwd": {"cudnn": time_ms(eval_step(bn_only)), "torch": time_ms(eval_step(eager))},
        }
        expect = {"fwd+bwd": torch.autograd.grad(eager(True), leaves, go), "fwd": eval_step(eager)()}
        for prov in providers:
            with pyimgcls.use_backend(prov):
                fns = {"fwd+bwd": train_step(ours), "fwd": eval_step(ours)}
                for pass_, fn in fns.items():
                    case = cases[pass_]
                    try:
                        out = fn()  # first call outside the timer: Triton JIT happens here
                        torch.cuda.synchronize()
                        outs = out if isinstance(out, tuple) else (out,)
                        refs_ = expect[pass_] if isinstance(expect[pass_], tuple) else (expect[pass_],)
                        err = max(_rel_err(o, e) for o, e in zip(outs, refs_))
                        ms = time_ms(fn)
                    except Exception as e:  # noqa: BLE001 -- report every failing case, keep going
                        failures.append(f"{prov} {pass_} {shape}: {type(e).__name__}: {e}")
                        print(f"FAILED {failures[-1]}", flush=True)
                        continue
                    ok = err <= 2e-2
                    if not ok:
                        failures.append(f"{prov} {pass_} {shape}: rel_err {err:.2e}")
                        print(f"WRONG RESULT {failures[-1]}", flush=True)
                    for ref_name, ref_ms in refs[pass_].items():
                        row = case.row(prov, ms, ref_name, ref_ms, peaks, rel_err=err, correct=ok)
                        rows.append(row)
                    print(f"{prov:6s} {pass_:7s} {shape:34s} {ms:8.4f} ms  cudnn-bn {refs[pass_]['cudnn']:8.4f} ms  "
                          f"eager bn+add+relu {refs[pass_]['torch']:8.4f} ms  {row['gbps']:.0f} GB/s  "
                          f"{row['roofline_pct']:.1f}% of copy", flush=True)
        torch.cuda.empty_cache()

    results = new_results("cuda", peaks=peaks, cases=rows)
    finish_results(results, failures, out_dir, "batchnorm benchmark", t_start)
    print_table(rows)
    return 1 if failures else 0


def main(argv=None) -> int:
    from report import gpu_bench_parser, gpu_providers

    p = gpu_bench_parser(__doc__, "four layers only",
                         "comma-separated backends to compare with PyTorch")
    args = p.parse_args(argv)
    providers, rc = gpu_providers(args.providers, "GPU batchnorm benchmark")
    if rc is not None:
        return rc
    return run(providers, args.quick, args.out)


if __name__ == "__main__":
    sys.exit(main())
