"""GPU convolution benchmark: our ``cuda`` and ``triton`` conv2d + bias + ReLU (one fused kernel) against
eager PyTorch conv + bias + ReLU (cuDNN conv, then a separate ReLU) and cuDNN's conv alone.

Layer sets (distinct convolutions, 224 x 224 input):
- ``resnet50``: every distinct conv of torchvision's ResNet-50 (v1.5: stride in the 3x3), downsamples too;
- ``vgg16``: the nine distinct 3x3 convs; ``alexnet``: conv1 (11x11, stride 4, padding 2);
- ``mobilenetv2_dw``: the depthwise 3x3 layers (groups == channels).
Batch 32 and 128; float16 channels_last (``nhwc``) and float32 NCHW (``nchw``); forward and
forward+backward (grads of input, weight and bias).

Each case states FLOPs = 2*N*O*OH*OW*(C/groups)*KH*KW per pass (x3 for forward+backward) and its
compulsory bytes: forward |x| + |w| + |out| + |bias|; forward+backward adds the backward's reads of
grad, out, x, w and writes of dx, dw, db. Our rows carry ``ref_provider="eager"`` (speedup =
eager_ms / ms) plus ``cudnn_ms`` / ``vs_cudnn`` (cuDNN conv alone, no bias/ReLU) as extra keys; the
eager and cuDNN rows are stored too. Geometric means of the speedups per (set, batch, dtype, pass) are
printed last and stored under ``conv_geomean``.

TF32: float32 cases run with ``torch.backends.cudnn.allow_tf32 = False`` and
``torch.backends.cuda.matmul.allow_tf32 = False``: IEEE fp32 on both sides (ours never uses TF32).
NCHW float16 inputs would be converted to channels_last inside our op (see pyimgcls/ops/conv.py); the
fp32 NCHW rows run our layout-agnostic fp32 kernels in place.

Usage (repo root, package installed with ``pip install --no-build-isolation -e .``)::

    python benchmarks/bench_conv.py [--out DIR] [--quick] [--providers cuda,triton] [--sets resnet50,vgg16]

Without a CUDA device it prints a message and exits 0.
"""
from __future__ import annotations

import math
import os
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (C_in, C_out, kernel, stride, padding, H_in, groups)
RESNET50 = [
    (3, 64, 7, 2, 3, 224, 1),
    (64, 64, 1, 1, 0, 56, 1), (64, 64, 3, 1, 1, 56, 1), (64, 256, 1, 1, 0, 56, 1), (256, 64, 1, 1, 0, 56, 1),
    (256, 128, 1, 1, 0, 56, 1), (128, 128, 3, 2, 1, 56, 1), (128, 512, 1, 1, 0, 28, 1), (256, 512, 1, 2, 0, 56, 1),
    (512, 128, 1, 1, 0, 28, 1), (128, 128, 3, 1, 1, 28, 1),
    (512, 256, 1, 1, 0, 28, 1), (256, 256, 3, 2, 1, 28, 1), (256, 1024, 1, 1, 0, 14, 1), (512, 1024, 1, 2, 0, 28, 1),
    (1024, 256, 1, 1, 0, 14, 1), (256, 256, 3, 1, 1, 14, 1),
    (1024, 512, 1, 1, 0, 14, 1), (512, 512, 3, 2, 1, 14, 1), (512, 2048, 1, 1, 0, 7, 1), (1024, 2048, 1, 2, 0, 14, 1),
    (2048, 512, 1, 1, 0, 7, 1), (512, 512, 3, 1, 1, 7, 1),
]
VGG16 = [(3, 64, 3, 1, 1, 224, 1), (64, 64, 3, 1, 1, 224, 1), (64, 128, 3, 1, 1, 112, 1), (128, 128, 3, 1, 1, 112, 1),
         (128, 256, 3, 1, 1, 56, 1), (256, 256, 3, 1, 1, 56, 1), (256, 512, 3, 1, 1, 28, 1),
         (512, 512, 3, 1, 1, 28, 1), (512, 512, 3, 1, 1, 14, 1)]
ALEXNET = [(3, 64, 11, 4, 2, 224, 1)]
MOBILENETV2_DW = [(c, c, 3, s, 1, h, c) for c, h, s in
                  [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2),
                   (384, 14, 1), (576, 14, 1), (576, 14, 2), (960, 7, 1)]]
SETS = {"resnet50": RESNET50, "vgg16": VGG16, "alexnet": ALEXNET, "mobilenetv2_dw": MOBILENETV2_DW}
CONFIGS = [(torch.float16, "nhwc"), (torch.float32, "nchw")]
BATCHES = [32, 128]
PASSES = ["fwd", "fwd+bwd"]
# ||ours - eager|| / ||eager|| above this means a wrong kernel, not rounding
MAX_REL_ERR = {torch.float16: 1e-2, torch.float32: 1e-4}


def _out_hw(h, k, s, p):
    return (h + 2 * p - k) // s + 1


def _case(set_name, layer, batch, dtype, layout, pass_):
    from pyimgcls.bench import Case, dtype_name
    cin, cout, k, s, p, h, groups = layer
    oh = _out_hw(h, k, s, p)
    elt = torch.tensor([], dtype=dtype).element_size()
    fwd_flops = 2.0 * batch * cout * oh * oh * (cin // groups) * k * k
    x, w, out = batch * cin * h * h, cout * (cin // groups) * k * k, batch * cout * oh * oh
    fwd_bytes = (x + w + out + cout) * elt
    bwd_bytes = (out + out + x + w + x + w + cout) * elt  # reads grad, out, x, w; writes dx, dw, db
    shape = f"{set_name} N={batch} {cin}->{cout} k{k} s{s} p{p} g{groups} {h}x{h}"
    flops = fwd_flops if pass_ == "fwd" else 3 * fwd_flops
    nbytes = fwd_bytes if pass_ == "fwd" else fwd_bytes + bwd_bytes
    return Case("conv", "conv2d_bias_relu", shape, dtype_name(dtype), flops, float(nbytes), pass_=pass_,
                layout=layout)


def _inputs(layer, batch, dtype, layout, grad):
    cin, cout, k, s, p, h, groups = layer
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, cin, h, h, device="cuda", dtype=dtype, generator=gen)
    w = torch.randn(cout, cin // groups, k, k, device="cuda", dtype=dtype, generator=gen) / math.sqrt(cin // groups * k * k)
    b = torch.randn(cout, device="cuda", dtype=dtype, generator=gen)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
        # A 1x1 weight made channels_last has strides (C, 1, 1, 1): PyTorch leaves size-1 dims at
        # stride 1, exactly as the model's own weights arrive. The CUDA kernels ignore strides of
        # size-1 dims (conv2d_vec_ok, csrc/cuda/conv.h), so these rows measure the 16-byte path that
        # pyimgcls.backends.cuda.conv.plan_conv2d reports for them.
        w = w.contiguous(memory_format=torch.channels_last)
    if grad:
        for t in (x, w, b):
            t.requires_grad_()
    return x, w, b, dict(stride=s, padding=p, groups=groups)


def _fns(provider, x, w, b, kw, pass_):
    import torch.nn.functional as F

    import pyimgcls
    from pyimgcls import ops

    if provider in ("cuda", "triton"):
        def fwd():
            with pyimgcls.use_backend(provider):
                return ops.conv2d_bias_relu(x, w, b, **kw)
    elif provider == "eager":
        def fwd():
            return F.relu(F.conv2d(x, w, b, **kw))
    else:  # cudnn conv alone
        def fwd():
            return F.conv2d(x, w, None, **kw)
    if pass_ == "fwd":
        return fwd, fwd
    go = None

    def fwd_bwd():
        nonlocal go
        out = fwd()
        if go is None:
            go = torch.randn_like(out)
        grads = torch.autograd.grad(out, [t for t in (x, w, b) if t.requires_grad and (provider != "cudnn" or t is not b)],
                                    go)
        return out, grads
    return fwd, fwd_bwd


def run(providers, sets, quick: bool, out_dir: str) -> int:
    from pyimgcls.bench import measure_peaks, time_ms
    from report import finish_results, new_results, print_table

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    t_start = time.perf_counter()
    rep_ms = 20 if quick else 50
    peaks = measure_peaks("cuda")
    rows, failures, ratios = [], [], {}
    batches = [128] if quick else BATCHES
    for set_name in sets:
        layers = SETS[set_name][:6] if quick else SETS[set_name]
        for batch in batches:
            for dtype, layout in CONFIGS:
                for pass_ in PASSES:
                    for layer in layers:
                        case = _case(set_name, layer, batch, dtype, layout, pass_)
                        x, w, b, kw = _inputs(layer, batch, dtype, layout, grad=pass_ != "fwd")
                        ref_out = _fns("eager", x, w, b, kw, "fwd")[0]().detach()
                        timings = {}
                        for prov in ("eager", "cudnn"):
                            fn = _fns(prov, x, w, b, kw, pass_)[1]
                            fn()
                            timings[prov] = time_ms(fn, rep_ms=rep_ms)
                        for prov in ("eager", "cudnn"):
                            rows.append(case.row(prov, timings[prov], "eager", timings["eager"], peaks, set=set_name,
                                                 batch=batch, tf32=False))
                        for prov in providers:
                            try:
                                fwd, fn = _fns(prov, x, w, b, kw, pass_)
                                out = fwd().detach()
                                torch.cuda.synchronize()
                                err = float((out.float() - ref_out.float()).norm() / ref_out.float().norm().clamp_min(1e-30))
                                fn()
                                ms = time_ms(fn, rep_ms=rep_ms)
                            except Exception as e:  # noqa: BLE001 -- report every failing case, keep going
                                failures.append(f"{prov} {case.shape} {case.dtype} {pass_}: {type(e).__name__}: {e}")
                                print(f"FAILED {failures[-1]}", flush=True)
                                continue
                            ok = err <= MAX_REL_ERR[dtype]
                            if not ok:
                                failures.append(f"{prov} {case.shape} {case.dtype} {pass_}: rel_err {err:.2e}")
                                print(f"WRONG RESULT {failures[-1]}", flush=True)
                            row = case.row(prov, ms, "eager", timings["eager"], peaks, rel_err=err, correct=ok,
                                           cudnn_ms=timings["cudnn"], vs_cudnn=timings["cudnn"] / ms, set=set_name,
                                           batch=batch, tf32=False)
                            rows.append(row)
                            ratios.setdefault((set_name, batch, case.dtype, pass_, prov), []).append(row["speedup"])
                            print(f"{prov:6s} {pass_:7s} {case.shape:52s} {case.dtype:8s} {ms:8.3f} ms  eager "
                                  f"{timings['eager']:8.3f}  x{row['speedup']:.2f}  vs cuDNN conv x{row['vs_cudnn']:.2f}  "
                                  f"{row['tflops']:.1f} TFLOP/s  {row['roofline_pct']:.0f}% roofline  err {err:.1e}",
                                  flush=True)
                        del x, w, b, ref_out
                    torch.cuda.empty_cache()

    geo = {" ".join(map(str, k)): math.exp(sum(math.log(r) for r in v) / len(v)) for k, v in ratios.items() if v}
    results = new_results("cuda", peaks=peaks, cases=rows)
    results["conv_geomean"] = geo
    results["tf32"] = False
    finish_results(results, failures, out_dir, "conv benchmark", t_start)
    print_table([r for r in rows if r["provider"] in providers])
    print("\ngeometric mean speedup vs eager conv+bias+ReLU (set, batch, dtype, pass, provider):")
    for k, v in sorted(geo.items()):
        print(f"  {k:60s} x{v:.3f}")
    return 1 if failures else 0


def main(argv=None) -> int:
    from report import gpu_bench_parser, gpu_providers

    p = gpu_bench_parser(__doc__, "batch 128, the first layers of each set only",
                         "comma-separated backends of ours")
    p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated layer sets from {list(SETS)}")
    args = p.parse_args(argv)
    providers, rc = gpu_providers(args.providers, "GPU conv benchmark")
    if rc is not None:
        return rc
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        print(f"unknown layer sets {unknown}; choose from {list(SETS)}")
        return 2
    return run(providers, sets, args.quick, args.out)


if __name__ == "__main__":
    sys.exit(main())
