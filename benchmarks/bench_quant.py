"""GPU int8 convolution benchmark: our ``quantized_conv2d`` (uint8 activations x int8 weights, int32
accumulation, requantised uint8 output with bias + ReLU in the epilogue) on the ``cuda`` backend (IMMA
m16n8k32, csrc/cuda/quant.cu) and the ``triton`` backend (im2col + int8 tl.dot) against our float16
``conv2d_bias_relu`` on the cuda backend (the reference: issue #22 asks int8 >= 1.5x it).

Layers: every distinct conv of ResNet-50 (benchmarks/bench_conv.py RESNET50), batch 32 (``--quick``: the
first 6 layers), channels_last inputs on both sides. FLOPs = 2*N*O*OH*OW*C*KH*KW (integer ops for the
int8 rows); bytes = |x| + |w| + |out| (1 byte each for int8, 2 for float16) + bias / multipliers.
Before timing, each int8 output is checked: cuda and triton bit-identical to each other, and within one
quantisation step of the float32 conv of the dequantised operands (TF32 off), requantised.
Timings are ``pyimgcls.bench.time_ms`` medians (CUDA events, L2 flushed). Rows: provider
``<backend>-int8`` with ``ref_provider="cuda-fp16"`` (speedup = fp16_ms / int8_ms); geometric means per
provider are printed last and stored under ``quant_geomean``.

Usage (repo root, package installed)::

    python benchmarks/bench_quant.py [--out DIR] [--quick] [--providers cuda,triton]

Without a CUDA device it prints a message and exits 0. Unmeasured so far (no GPU lent yet).
"""
from __future__ import annotations

import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BATCH = 32
S_IN, Z_IN, S_OUT, Z_OUT = 0.02, 128, 0.05, 0


def _out_hw(h, k, s, p):
    return (h + 2 * p - k) // s + 1


def cases(quick: bool):
    from bench_conv import RESNET50

    from pyimgcls.bench import Case
    for layer in (RESNET50[:6] if quick else RESNET50):
        cin, cout, k, s, p, h, groups = layer
        oh = _out_hw(h, k, s, p)
        flops = 2.0 * BATCH * cout * oh * oh * cin * k * k
        nbytes = BATCH * cin * h * h + cout * cin * k * k + BATCH * cout * oh * oh + 8 * cout
        shape = f"resnet50 N={BATCH} {cin}->{cout} k{k} s{s} p{p} {h}x{h}"
        yield Case("quant", "quantized_conv2d_relu", shape, "int8", flops, float(nbytes), layout="nhwc"), layer


def make(layer):
    from pyimgcls import ops
    cin, cout, k, s, p, h, _ = layer
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(BATCH, cin, h, h, device="cuda", generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, k, k, device="cuda", generator=gen) / math.sqrt(cin * k * k)
    b = torch.randn(cout, device="cuda", generator=gen) * 0.1
    xq = ops.quantize_per_tensor(x, S_IN, Z_IN, channels_last=True)
    wq = ops.quantize_weight(w)
    # the bias in the accumulator's scale, int32, as a converted model holds it: a float bias would be
    # converted (and checked for NaN, a host sync) on every call
    bq = torch.round(b.double() / (S_IN * wq.scale.double())).to(torch.int32)
    x16 = x.half().contiguous(memory_format=torch.channels_last)
    w16 = w.half().contiguous(memory_format=torch.channels_last)
    return xq, wq, bq, x16, w16, b.half(), dict(stride=s, padding=p)


def _int8_ref(xq, wq, bq, kw):
    """quantize(relu(conv(dequant x, dequant w) + dequant b)) in float32: within one step of the int8 kernels."""
    x = (xq.float() - Z_IN) * S_IN
    w = wq.q.float() * wq.scale.view(-1, 1, 1, 1)
    y = torch.relu(torch.nn.functional.conv2d(x, w, bq.float() * S_IN * wq.scale, **kw))
    return torch.clamp(torch.round(y / S_OUT) + Z_OUT, 0, 255)


def run(providers, quick: bool, out_dir: str) -> int:
    import pyimgcls
    from pyimgcls import ops
    from pyimgcls.bench import measure_peaks, time_ms
    from report import finish_results, new_results, print_table

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    t_start = time.perf_counter()
    rep_ms = 50 if quick else 100
    peaks = measure_peaks("cuda")
    rows, failures = [], []
    speedups: dict[str, list[float]] = {p: [] for p in providers}
    for case, layer in cases(quick):
        xq, wq, b, x16, w16, b16, kw = make(layer)

        def fp16():
            with pyimgcls.use_backend("cuda"):
                return ops.conv2d_bias_relu(x16, w16, b16, **kw)

        def int8(prov):
            def fn():
                with pyimgcls.use_backend(prov):
                    return ops.quantized_conv2d(xq, S_IN, Z_IN, wq, b, output_scale=S_OUT, output_zero_point=Z_OUT,
                                                activation="relu", **kw)
            return fn

        try:
            with torch.no_grad():
                fp16()
                fp16_ms = time_ms(fp16, rep_ms=rep_ms)
        except Exception as e:  # noqa: BLE001 -- report every failing case, keep benchmarking
            failures.append(f"cuda-fp16 {case.shape}: {type(e).__name__}: {e}")
            print(f"FAILED {failures[-1]}", flush=True)
            continue
        ref = _int8_ref(xq, wq, b, kw)
        outs = {}
        for prov in providers:
            try:
                with torch.no_grad():
                    y = int8(prov)()
                    torch.cuda.synchronize()
                    outs[prov] = y
                    err = int((y.float() - ref).abs().max())
                    ms = time_ms(int8(prov), rep_ms=rep_ms)
            except Exception as e:  # noqa: BLE001
                failures.append(f"{prov} {case.shape}: {type(e).__name__}: {e}")
                print(f"FAILED {failures[-1]}", flush=True)
                continue
            ok = err <= 1
            if not ok:
                failures.append(f"{prov} {case.shape}: max |int8 - float reference| = {err} steps")
                print(f"WRONG RESULT {failures[-1]}", flush=True)
            speedups[prov].append(fp16_ms / ms)
            rows.append(case.row(f"{prov}-int8", ms, "cuda-fp16", fp16_ms, peaks, max_step_err=err, correct=ok))
            print(f"{prov:6s} {case.shape:44s} int8 {ms:8.4f} ms  fp16 {fp16_ms:8.4f} ms  x{fp16_ms / ms:.3f}  "
                  f"err {err} step", flush=True)
        if len(outs) == 2 and not torch.equal(*outs.values()):
            failures.append(f"{case.shape}: cuda and triton int8 outputs differ")
            print(f"WRONG RESULT {failures[-1]}", flush=True)
        torch.cuda.empty_cache()
    geo = {p: math.exp(sum(map(math.log, v)) / len(v)) for p, v in speedups.items() if v}
    for p, g in geo.items():
        print(f"geomean int8 / fp16 speedup, {p}: x{g:.3f} over {len(speedups[p])} layers (target >= 1.5)")
    results = new_results("cuda", peaks=peaks, cases=rows)
    results["quant_geomean"] = geo
    finish_results(results, failures, out_dir, "int8 quantised conv benchmark", t_start)
    print_table(rows)
    return 1 if failures else 0


def main(argv=None) -> int:
    from report import gpu_bench_parser, gpu_providers

    p = gpu_bench_parser(__doc__, "the first 6 ResNet-50 layers only")
    args = p.parse_args(argv)
    providers, rc = gpu_providers(args.providers, "GPU int8 quantised conv benchmark")
    if rc is not None:
        return rc
    return run(providers, args.quick, args.out)


if __name__ == "__main__":
    sys.exit(main())
