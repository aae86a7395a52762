"""int8 post-training quantisation on CPU: accuracy after PTQ and int8 vs float32 speed, side by side.

    python benchmarks/bench_quant_cpu.py --checkpoint RUN/best.pt [--threads 2] [--out benchmarks/results/cpu]
    python benchmarks/bench_quant_cpu.py --gemm-only           # the integer GEMM alone, every CPU path
    python benchmarks/bench_quant_cpu.py --quantized Q.pt ... --tag accuracy --out benchmarks/results/cpu
                                                                # accuracies recorded by `pyimgcls quantize`

Accuracy: the LeNet-5 checkpoint (trained with `pyimgcls train`, digits) evaluated on the 360 test
images in float32 and after `pyimgcls.quantization.quantize` with each observer (calibration: the
first 8 batches of 64 normalised training images).
GEMM: one int8 GEMM (ResNet-18 layer-1 shape at 224x224, batch 1: M 3136, N 64, K 576, uint8 out)
on each CPU path (VNNI, AVX2, generic; PYIMGCLS_CPU_ISA) against our float32 GEMM and torch.matmul
on the same shape, 1 thread, interleaved, least of the repeats; 2 * M * N * K operations.
Speed, in one process, same inputs, alternating runs (least of the repeats): the quantised model
(uint8 activations, int8 weights, pyimgcls "cpu" kernels) against the float32 model on our CPU kernels
and on plain PyTorch (backend "torch"), and for ResNet-18 against torch.ao's x86 int8 model (FX static
quantisation of a plain torch.nn copy, same weights and calibration); LeNet-5 (32x32) and ResNet-18
(random weights, calibrated on random images) at 64x64, batch 1 and 16. FLOPs per case are the conv / linear multiply-adds x 2 (int8 ops for the
quantised model). The machine is shared with other jobs: the load average is recorded with each case.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyimgcls  # noqa: E402
from pyimgcls import models  # noqa: E402
from pyimgcls.data import normalize  # noqa: E402
from pyimgcls.data.datasets import load_digits  # noqa: E402
from pyimgcls.quantization import quantize  # noqa: E402
import report  # noqa: E402


def _macs(model, x) -> int:
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.Linear):
            total += out.numel() * m.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad(), pyimgcls.use_backend("torch"):
        model(x)
    for h in hs:
        h.remove()
    return total


def _accuracy(fn, images, labels, batch=120) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(labels), batch):
            correct += int((fn(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
    return correct / len(labels)


def _time(fns: dict, x, reps: int, inner: int) -> dict:
    """Least ms per call of each function over the repeats (each the mean of `inner` calls), runs
    interleaved so load changes hit all alike. The least, not the median: on this shared machine a
    single call of the same GEMM ranged from 1.5 to 14 ms as other jobs took the core."""
    times = {k: [] for k in fns}
    with torch.no_grad():
        for f in fns.values():
            f(x)
        for _ in range(reps):
            for k, f in fns.items():
                t0 = time.perf_counter()
                for _ in range(inner):
                    f(x)
                times[k].append((time.perf_counter() - t0) * 1e3 / inner)
    return {k: min(v) for k, v in times.items()}


def _float_on(backend, model):
    def run(x):
        with pyimgcls.use_backend(backend):
            return model(x)
    return run


def _gemm_cases(reps: int) -> list:
    from pyimgcls import ops
    from pyimgcls.backends import kernels
    M, N, K = 3136, 64, 576
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (M, K), dtype=torch.uint8, generator=g)
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    kq = kernels("cpu", "quant")
    pk = kq.pack_weight(w)
    mult = torch.full((N,), 1e-3)
    out = torch.empty(M, N, dtype=torch.uint8)
    af, bf = torch.randn(M, K, generator=g), torch.randn(K, N, generator=g)

    def int8(_):
        kq.gemm(a, 3, pk, K, None, mult, None, 0, 0.0, 0, 0, 255, 0, out)

    def f32_ours(_):
        with pyimgcls.use_backend("cpu"):
            ops.matmul(af, bf)

    def f32_torch(_):
        torch.matmul(af, bf)

    cases = []
    saved = os.environ.get("PYIMGCLS_CPU_ISA")
    try:
        for isa in ("avx512", "avx2", "generic"):
            os.environ["PYIMGCLS_CPU_ISA"] = isa
            path = pyimgcls._C.quant_isa()
            load = os.getloadavg()[0]
            t = _time({"int8": int8, "ours": f32_ours, "torch": f32_torch}, None, reps, 3)
            gops = {k: 2 * M * N * K / (v * 1e-3) / 1e9 for k, v in t.items()}
            print(f"GEMM {M}x{N}x{K} 1 thread, path {path}: int8 {t['int8']:.2f} ms ({gops['int8']:.1f} GOP/s) | "
                  f"float32 ours {t['ours']:.2f} ms (x{t['ours'] / t['int8']:.2f}) | torch.matmul {t['torch']:.2f} ms "
                  f"(x{t['torch'] / t['int8']:.2f}) | load {load:.1f}")
            for ref, name in (("ours", "pyimgcls-cpu-float32"), ("torch", "torch-float32")):
                cases.append({"family": "quant", "op": "gemm", "pass": "fwd", "shape": f"{M}x{N}x{K}", "dtype": "int8",
                              "layout": "-", "provider": f"pyimgcls-int8-{path}", "ms": t["int8"], "ref_provider": name,
                              "ref_ms": t[ref], "speedup": t[ref] / t["int8"], "tflops": gops["int8"] / 1e3,
                              "gbps": (M * K + N * K + M * N) / (t["int8"] * 1e-3) / 1e9, "roofline_pct": None,
                              "flops": 2 * M * N * K, "threads": 1, "load_avg": load})
    finally:
        if saved is None:
            os.environ.pop("PYIMGCLS_CPU_ISA", None)
        else:
            os.environ["PYIMGCLS_CPU_ISA"] = saved
    return cases


class _TorchBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                  torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.nn.functional.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.nn.functional.relu(out + (x if self.downsample is None else self.downsample(x)))


class _TorchResNet18(torch.nn.Module):
    """Plain torch.nn ResNet-18 with torchvision's state_dict names (this environment's torchvision does
    not import): the model torch.ao's FX quantisation takes."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(64)
        self.maxpool = torch.nn.MaxPool2d(3, 2, 1)
        widths, cin = (64, 128, 256, 512), 64
        for i, w in enumerate(widths):
            s = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", torch.nn.Sequential(_TorchBlock(cin, w, s), _TorchBlock(w, w, 1)))
            cin = w
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.nn.functional.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _TorchBottleneck(torch.nn.Module):
    """torchvision's Bottleneck (stride on the 3x3), plain torch.nn."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        cout = planes * 4
        self.conv1 = torch.nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.conv2 = torch.nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.conv3 = torch.nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                  torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.nn.functional.relu(self.bn1(self.conv1(x)))
        out = torch.nn.functional.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.nn.functional.relu(out + (x if self.downsample is None else self.downsample(x)))


class _TorchResNet50(_TorchResNet18):
    """Plain torch.nn ResNet-50 (torchvision names): for torch.ao and the ONNX export."""

    def __init__(self, num_classes):
        torch.nn.Module.__init__(self)
        self.conv1 = torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(64)
        self.maxpool = torch.nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            blocks = []
            for b in range(n):
                blocks.append(_TorchBottleneck(cin, planes, 2 if (b == 0 and i > 0) else 1))
                cin = planes * 4
            setattr(self, f"layer{i + 1}", torch.nn.Sequential(*blocks))
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(2048, num_classes)


def _plain_copy(model):
    """A plain torch.nn copy of a pyimgcls ResNet-18 / -50 (same state_dict, activations as separate
    modules / functions), in eval mode."""
    deep = type(model.layer1[0]).__name__ == "Bottleneck"
    tm = (_TorchResNet50 if deep else _TorchResNet18)(model.fc.out_features)
    tm.load_state_dict(model.state_dict())
    return tm.eval()


def _onnx_int8(model, calib, threads):
    """onnxruntime int8 of a plain torch.nn copy: torch.onnx.export(dynamo=True, dynamic batch), then
    onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights, uint8 activations, MinMax
    calibration on ``calib``). Returns {threads: callable(torch x) -> torch logits}, or None when
    onnx / onnxscript / onnxruntime are not installed (pip install '.[bench]')."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError:
        return None
    import tempfile
    tm = _plain_copy(model)
    tmp = tempfile.mkdtemp(prefix="pyimgcls-onnx-")
    f32, i8 = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model.int8.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(tm, (calib[0],), f32, dynamo=True, input_names=["x"], output_names=["logits"],
                          dynamic_shapes={"x": {0: batch}})

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": b.numpy()} for b in calib])

        def get_next(self):
            return next(self.it, None)

    quantize_static(f32, i8, _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    _ONNX_LAST["int8"] = i8
    runs = {}
    for t in threads:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = t, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(i8, so, providers=["CPUExecutionProvider"])

        def run(x, sess=sess):
            return torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
        runs[t] = run
    return runs


def _profile(args) -> int:
    """Per-layer profile of our int8 ResNet against onnxruntime's per-node profile (1 thread).

    Ours: each quantised op of the forward timed from Python (op total) and its native kernel call
    alone (``kernel``), so op - kernel is the Python work per layer; least of the rounds per layer.
    onnxruntime: SessionOptions.enable_profiling, the node events ("cat": "Node") of every run but the
    first, least per node. Nodes are matched in execution order (both run the same 20 convs + fc)."""
    import json
    import tempfile
    import onnxruntime as ort
    from pyimgcls import _native
    from pyimgcls.ops import quant as oq
    import pyimgcls.quantization._ptq as ptq
    _set_threads(1)
    g = torch.Generator().manual_seed(0)
    for name in args.models.split(","):
        for size in [int(s) for s in args.sizes.split(",")]:
            fm = _random_resnet(name, g)
            calib = [torch.randn(4, 3, size, size, generator=g) for _ in range(2)]
            qm = quantize(fm, calib)
            for batch in [int(b) for b in args.batches.split(",")]:
                x = torch.randn(batch, 3, size, size, generator=g)
                rows: list = []       # per forward: [(label, op ms, kernel ms)]
                kern_t = [0.0]
                wrapped = {}

                def wrap_kernel(fn):
                    def w(*a, **k):
                        t0 = time.perf_counter()
                        r = fn(*a, **k)
                        kern_t[0] += time.perf_counter() - t0
                        return r
                    return w

                def wrap_op(label, fn):
                    def w(*a, **k):
                        kern_t[0] = 0.0
                        t0 = time.perf_counter()
                        r = fn(*a, **k)
                        lab = label(a, r) if callable(label) else label
                        rows.append((lab, (time.perf_counter() - t0) * 1e3, kern_t[0] * 1e3))
                        return r
                    return w
                # native entries: a bound layer captures its entry when it binds (first call after this)
                for kname in ("quant_gemm_cpu", "quant_conv_gemm_cpu", "quant_im2col_cpu", "quant_max_pool2d_cpu",
                              "quant_adaptive_avg_pool2d_cpu", "quant_quantize_cpu"):
                    wrapped[(_native.C, kname)] = getattr(_native.C, kname)
                    setattr(_native.C, kname, wrap_kernel(getattr(_native.C, kname)))
                for l in qm._layers.values():
                    l[3]._bound.clear()

                def layer_label(a, r):       # (weight shape, NHWC input shape, NHWC output shape)
                    nhwc = (lambda t: (t.shape[0], *t.shape[2:], t.shape[1])) if a[0].conv else (lambda t: tuple(t.shape))
                    return (tuple(a[0].weight.q.shape), nhwc(a[1]), nhwc(r))
                for mod, oname, label in ((oq.BoundQuantizedLayer, "__call__", layer_label),
                                          (ptq.ops, "quantize_per_tensor", "quantize"),
                                          (ptq.q, "quantized_max_pool2d", "maxpool"),
                                          (ptq.q, "quantized_adaptive_avg_pool2d", "avgpool")):
                    wrapped[(mod, oname)] = getattr(mod, oname)
                    setattr(mod, oname, wrap_op(label, getattr(mod, oname)))
                per_fwd, totals = [], []
                try:
                    with torch.no_grad():
                        for _ in range(args.reps + 1):
                            rows.clear()
                            t0 = time.perf_counter()
                            qm._run(x)        # the layer-by-layer interpreter: the per-layer rows
                            totals.append((time.perf_counter() - t0) * 1e3)
                            per_fwd.append(list(rows))
                finally:
                    for (mod, a), f in wrapped.items():
                        setattr(mod, a, f)
                per_fwd, totals = per_fwd[1:], totals[1:]
                with torch.no_grad():     # the forward as users run it: one native call (QuantProgram)
                    for _ in range(3):
                        qm(x)
                    prog_t = []
                    for _ in range(args.reps):
                        t0 = time.perf_counter()
                        qm(x)
                        prog_t.append((time.perf_counter() - t0) * 1e3)
                ours = [(lab, min(f[i][1] for f in per_fwd), min(f[i][2] for f in per_fwd))
                        for i, (lab, _, _) in enumerate(per_fwd[0])]
                # onnxruntime, its own per-node profile
                tmp = tempfile.mkdtemp(prefix="pyimgcls-onnx-prof-")
                _onnx_int8(fm, calib, [])        # exports and quantises; the int8 file's path in _ONNX_LAST
                i8 = _ONNX_LAST["int8"]
                so = ort.SessionOptions()
                so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
                so.enable_profiling = True
                so.profile_file_prefix = os.path.join(tmp, "ort")
                sess = ort.InferenceSession(i8, so, providers=["CPUExecutionProvider"])
                xn = x.numpy()
                ort_tot = []
                for _ in range(args.reps + 1):
                    t0 = time.perf_counter()
                    sess.run(None, {"x": xn})
                    ort_tot.append((time.perf_counter() - t0) * 1e3)
                prof_file = sess.end_profiling()
                events = json.load(open(prof_file))
                node_ev = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
                per_run: dict = {}
                order: list = []
                for e in node_ev:
                    nm = e["name"][:-len("_kernel_time")]
                    per_run.setdefault(nm, []).append(e["dur"] / 1e3)
                    if nm not in order:
                        order.append(nm)
                ort_nodes = [(nm, *_ort_node_info(events, nm), min(per_run[nm][1:] or per_run[nm])) for nm in order]
                ort_nodes = [(nm, op, ms, w) for nm, op, w, ms in ort_nodes]
                print(f"\n{name} {size}x{size} batch {batch}, 1 thread, load {os.getloadavg()[0]:.1f}: ours forward "
                      f"{min(prog_t):.2f} ms (native program; layer by layer {min(totals):.2f} ms, sum of ops {sum(r[1] for r in ours):.2f}, of kernels "
                      f"{sum(r[2] for r in ours):.2f}); onnxruntime run {min(ort_tot[1:]):.2f} ms "
                      f"(sum of nodes {sum(n[2] for n in ort_nodes):.2f})")
                conv_ops = ("QLinearConv", "Conv", "ConvInteger", "QLinearMatMul", "Gemm", "QGemm", "MatMul",
                            "MatMulInteger")
                ort_convs = [n for n in ort_nodes if n[1] in conv_ops]
                ort_other = [n for n in ort_nodes if n not in ort_convs]
                our_convs = [r for r in ours if isinstance(r[0], tuple)]
                print(f"{'weight':<18} {'ours op ms':>10} {'kernel':>8} {'python':>7} | {'ort node':<12} {'ort ms':>7} "
                      f"{'ours/ort':>8}")
                # onnxruntime's nodes run NHWC with pre-packed weights: matched on (input, output) shapes;
                # where several share them (a block's strided 3x3 and its 1x1 downsample), by cost order
                groups: dict = {}
                for n in ort_convs:
                    groups.setdefault(n[3], []).append(n)
                for v in groups.values():
                    v.sort(key=lambda n: n[2])
                ours_by: dict = {}
                for r in our_convs:
                    ours_by.setdefault((r[0][1], r[0][2]), []).append(r)
                match = {}
                for k, v in ours_by.items():
                    for r, o in zip(sorted(v, key=lambda r: math.prod(r[0][0])), groups.get(k, [])):
                        match[id(r)] = o
                for r in our_convs:
                    o = match.get(id(r), ("-", "-", float("nan"), ()))
                    print(f"{'x'.join(map(str, r[0][0])):<18} {r[1]:>10.3f} {r[2]:>8.3f} {r[1] - r[2]:>7.3f} | "
                          f"{o[1]:<12} {o[2]:>7.3f} {r[1] / o[2]:>8.2f}")
                other = {}
                for r in ours:
                    if not isinstance(r[0], tuple):
                        other[r[0]] = other.get(r[0], 0.0) + r[1]
                print("  ours other ops ms: " + ", ".join(f"{k} {v:.3f}" for k, v in other.items())
                      + f"; between ops {min(totals) - sum(r[1] for r in ours):.3f}")
                oo = {}
                for n in ort_other:
                    oo[n[1]] = oo.get(n[1], 0.0) + n[2]
                print("  onnxruntime other nodes ms: " + ", ".join(f"{k} {v:.3f}" for k, v in oo.items()))
    return 0


def _ort_node_info(events, node_name):
    """(op type, (first input shape, output shape)) of an onnxruntime node from its profile event."""
    for e in events:
        if e.get("cat") == "Node" and e["name"] == node_name + "_kernel_time":
            args = e.get("args", {})
            op = args.get("op_name", "?")
            shape = [tuple(next(iter(d.values()))) for d in args.get("input_type_shape", [])[:1]
                     + args.get("output_type_shape", [])[:1]]
            return op, tuple(shape)
    return "?", ()


_ONNX_LAST: dict = {}      # "int8": path of the last int8 .onnx file _onnx_int8 wrote (for --profile)


def _random_resnet(name, g):
    """pyimgcls ResNet with random weights and non-trivial BN statistics (so folding matters)."""
    m = getattr(models, name)(num_classes=1000)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1, generator=g)
                mod.running_var.uniform_(0.5, 1.5, generator=g)
    return m.eval()


_CONTENDERS = {"int8": None, "fp32_torch": "torch-float32", "int8_torch_ao": "torch.ao-x86-int8",
               "int8_onnxruntime": "onnxruntime-int8-qdq"}


def _contender_worker(kind, spec_path, threads, conn):
    """One contender of the matrix in a process of its own: builds it from the saved float model and
    calibration batches, then answers (threads, inner, x) requests with the ms per call (mean of
    `inner` calls, timed here, so the pipe is not counted). None when it cannot run here (torch.ao or
    onnxruntime missing)."""
    spec = torch.load(spec_path, weights_only=True)
    _set_threads(max(threads))
    fm = getattr(models, spec["model"])(num_classes=1000)
    fm.load_state_dict(spec["state"])
    fm.eval()
    calib = spec["calib"]
    if kind == "int8":
        fns = {t: quantize(fm, calib) for t in threads[:1]}
        fns = {t: fns[threads[0]] for t in threads}
    elif kind == "fp32_torch":
        fns = {t: _float_on("torch", fm) for t in threads}
    elif kind == "int8_torch_ao":
        ao = _torch_ao_int8(fm, calib)
        fns = None if ao is None else {t: ao for t in threads}
    else:
        fns = _onnx_int8(fm, calib, threads)
    conn.send(fns is not None)
    with torch.no_grad():
        while (msg := conn.recv()) is not None:
            t, inner, x = msg
            _set_threads(t)
            f = fns[t]
            f(x)
            t0 = time.perf_counter()
            for _ in range(inner):
                f(x)
            conn.send((time.perf_counter() - t0) * 1e3 / inner)


def _time_isolated(conns: dict, x, t: int, reps: int, inner: int, gap_s: float) -> dict:
    """Least ms per call of each contender (each in its own process, ``_contender_worker``), rounds
    interleaved so load changes hit all alike; one contender runs at a time, the others wait on their
    pipe. Why not in one process: after onnxruntime's calls, ours ran 1.4-1.9x slower in the same
    process (ResNet-18 224x224 batch 16, 2 threads, quiet machine: 45-49 ms alone, 55-92 ms after
    it, with 4-5 K page faults per call where there had been none: the heap's state changes under
    the next library's allocations), and every library's pool spins on after its work (onnxruntime
    ~50 ms of one core, measured), taking the core from whoever runs next. ``gap_s`` of idle time before
    each timed block lets that spinning end."""
    times = {k: [] for k in conns}
    for _ in range(reps):
        for k, c in conns.items():
            if gap_s:
                time.sleep(gap_s)
            c.send((t, inner, x))
            times[k].append(c.recv())
    return {k: min(v) for k, v in times.items()}


def _matrix(args) -> int:
    """ResNet-18 / -50, batch x size x threads: ours int8 vs PyTorch float32 vs torch.ao x86 int8 vs
    onnxruntime int8, each in a process of its own (``_time_isolated``), interleaved, least of the
    rounds, load average per case."""
    import multiprocessing as mp
    import tempfile
    cases, g = [], torch.Generator().manual_seed(0)
    threads = [int(t) for t in args.threads_list.split(",")]
    ctx = mp.get_context("spawn")
    for name in args.models.split(","):
        for size in [int(s) for s in args.sizes.split(",")]:
            fm = _random_resnet(name, g)
            calib = [torch.randn(4, 3, size, size, generator=g) for _ in range(2)]
            with tempfile.TemporaryDirectory() as tmp:
                spec = os.path.join(tmp, "spec.pt")
                torch.save({"model": name, "state": fm.state_dict(), "calib": calib}, spec)
                conns, procs = {}, []
                for kind in _CONTENDERS:
                    here, there = ctx.Pipe()
                    p = ctx.Process(target=_contender_worker, args=(kind, spec, threads, there), daemon=True)
                    p.start()
                    procs.append(p)
                    if here.recv():
                        conns[kind] = here
                    else:
                        print(f"{kind}: not available here (torch.ao, or onnx / onnxscript / onnxruntime, "
                              "missing): the column is skipped")
                try:
                    for batch in [int(b) for b in args.batches.split(",")]:
                        x = torch.randn(batch, 3, size, size, generator=g)
                        macs = _macs(fm, x)
                        for t in threads:
                            inner = max(1, min(20, int(4e8 // max(macs, 1))))
                            reps = max(3, min(args.reps, int(3e11 // max(macs * inner, 1))))
                            load = os.getloadavg()[0]
                            tm = _time_isolated(conns, x, t, reps, inner, args.gap_ms / 1e3)
                            load = max(load, os.getloadavg()[0])
                            line = " | ".join(f"{k} {v:.2f} ms (x{v / tm['int8']:.2f})" for k, v in tm.items()
                                              if k != "int8")
                            print(f"{name} {size}x{size} batch {batch} threads {t}: int8 {tm['int8']:.2f} ms | "
                                  f"{line} | load {load:.1f} | {reps}x{inner}", flush=True)
                            for ref in [k for k in tm if k != "int8"]:
                                cases.append({"family": "quant", "op": f"{name}_forward", "pass": "fwd",
                                              "shape": f"{batch}x3x{size}x{size}", "dtype": "int8",
                                              "layout": "nchw-in", "provider": "pyimgcls-int8", "ms": tm["int8"],
                                              "ref_provider": _CONTENDERS[ref], "ref_ms": tm[ref],
                                              "speedup": tm[ref] / tm["int8"],
                                              "tflops": 2 * macs / (tm["int8"] * 1e-3) / 1e12, "gbps": None,
                                              "roofline_pct": None, "flops": 2 * macs, "threads": t,
                                              "load_avg": load, "rounds": reps, "inner": inner,
                                              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
                                              "gap_ms": args.gap_ms, "isolation": "process per contender"})
                finally:
                    for c in conns.values():
                        c.send(None)
                    for p in procs:
                        p.join(timeout=30)
    if args.out:
        _write(cases, [f"int8 model matrix: each contender in a process of its own, one running at a time, "
                       f"{args.gap_ms:g} ms idle before each timed block; least of the interleaved rounds (each "
                       f"the mean of `inner` calls); load average per case (2 CPUs, shared machine); random "
                       f"weights, calibration on 8 random images; onnxruntime {_ort_version()}; "
                       f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"],
               args.out, args.tag)
    return 0


def _ort_version():
    try:
        import onnxruntime
        return onnxruntime.__version__
    except ImportError:
        return "not installed"


def _torch_ao_int8(model, calib):
    """torch.ao FX static quantisation, x86 engine (fbgemm + oneDNN), default x86 qconfig (per-channel
    int8 weights, histogram observers), of a plain torch.nn copy of ``model`` (same state_dict); None if
    torch.ao is not usable here."""
    try:
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError:
        return None
    tm = _plain_copy(model)
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # torch.ao's deprecation notice
        prepared = prepare_fx(tm, get_default_qconfig_mapping("x86"), (calib[0],))
        with torch.no_grad():
            for b in calib:
                prepared(b)
        return convert_fx(prepared)


def _set_threads(n: int) -> None:
    torch.set_num_threads(n)
    try:
        import ctypes
        ctypes.CDLL("libgomp.so.1").omp_set_num_threads(n)
    except OSError:
        pass


def _write(cases, notes, out, tag):
    import json
    res = report.new_results("cpu", cases=cases)
    res["notes"] = notes
    path = os.path.join(out, time.strftime("%Y-%m-%d") + f"_cpu-quant-{tag}.json")
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print("wrote", path)


def _accuracy_records(args) -> int:
    """One case per quantised checkpoint: its float and int8 test accuracy (from its meta) and the drop."""
    cases = []
    for path in args.quantized:
        ck = torch.load(path, weights_only=True)
        meta, rec = ck["meta"], ck["meta"]["quantization"]
        how = f"qat{rec['qat_epochs']}" if rec["qat_epochs"] else f"ptq-{rec['observer']}"
        drop = (rec["float_test_accuracy"] - rec["int8_test_accuracy"]) * 100
        print(f"{meta['model']} {meta['dataset']} {how}: float32 {rec['float_test_accuracy'] * 100:.2f}% -> int8 "
              f"{rec['int8_test_accuracy'] * 100:.2f}% (drop {drop:+.2f} pp, {rec['num_test']} images)")
        size = meta["image_size"]
        cases.append({"family": "quant", "op": f"{meta['model']}_{how}_accuracy", "pass": "eval",
                      "shape": f"{rec['num_test']}x{meta['in_channels']}x{size}x{size}", "dtype": "int8", "layout": "-",
                      "provider": f"pyimgcls-int8-{how}", "ms": None, "ref_provider": "pyimgcls-float32",
                      "ref_ms": None, "speedup": None, "tflops": None, "gbps": None, "roofline_pct": None,
                      "accuracy": rec["int8_test_accuracy"], "ref_accuracy": rec["float_test_accuracy"],
                      "drop_pp": drop, "calibration_batches": rec["calibration_batches"],
                      "qat_epochs": rec["qat_epochs"], "float_layers": rec["float_layers"],
                      "dataset": meta["dataset"], "checkpoint": os.path.basename(path)})
    if args.out:
        _write(cases, ["accuracies measured by `pyimgcls quantize` on the full test split (float32 model and int8 "
                       "model on our kernels, same images)"], args.out, args.tag)
    return 0


def _finetune_control(args) -> int:
    from pyimgcls.data import load_dataset
    from pyimgcls.quantization._cli import _accuracy
    from pyimgcls.quantization._ptq import _fused_graph
    from pyimgcls.training.loop import _load_model, iterate, set_cpu_threads
    set_cpu_threads(args.threads)
    model, meta, _ = _load_model(args.finetune_control)
    ds = load_dataset(meta["dataset"], image_size=meta["image_size"], in_channels=meta["in_channels"],
                      num_classes=meta["num_classes"])
    mean_t, std_t = torch.tensor(meta["mean"]), torch.tensor(meta["std"])
    train, test, bs = ds.train, ds.test, 32
    g = torch.Generator().manual_seed(0)

    def batches(n):
        order = torch.randperm(len(train), generator=g).tolist()
        idx = [order[i:i + bs] for i in range(0, len(order), bs)]
        for x, y in iterate(train, idx[:n] if n else idx, 0, torch.device("cpu")):
            yield normalize(x, mean_t, std_t), y

    for _ in batches(16):            # the calibration batches the QAT run draws first: same batch order after
        pass
    fm = _fused_graph(model, "control").train()
    opt = torch.optim.SGD(fm.parameters(), lr=1e-3, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs * -(-len(train) // bs))
    for _ in range(args.epochs):
        for x, y in batches(None):
            loss = torch.nn.functional.cross_entropy(fm(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    before, after = _accuracy(model, test, mean_t, std_t, 256), _accuracy(fm, test, mean_t, std_t, 256)
    print(f"{meta['model']}: float32 {before * 100:.2f}% -> {after * 100:.2f}% after {args.epochs} epochs of the QAT "
          "recipe without fake quantisation")
    case = {"family": "quant", "op": f"{meta['model']}_float_finetune{args.epochs}_accuracy", "pass": "eval",
            "shape": f"{len(test)}x{meta['in_channels']}x{meta['image_size']}x{meta['image_size']}", "dtype": "float32",
            "layout": "-", "provider": "pyimgcls-float32-finetuned", "ms": None, "ref_provider": "pyimgcls-float32",
            "ref_ms": None, "speedup": None, "tflops": None, "gbps": None, "roofline_pct": None, "accuracy": after,
            "ref_accuracy": before, "dataset": meta["dataset"], "checkpoint": os.path.basename(args.finetune_control)}
    if args.out:
        _write([case], ["control for the QAT accuracy: the QAT fine-tuning recipe in float"], args.out, args.tag)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="LeNet-5 digits checkpoint (pyimgcls train)")
    ap.add_argument("--gemm-only", action="store_true", help="only the single-GEMM comparison")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--out", default=None, help="write the results JSON into this folder")
    ap.add_argument("--tag", default="ptq", help="file name suffix: DATE_cpu-quant-TAG.json")
    ap.add_argument("--quantized", nargs="+", default=None, metavar="FILE",
                    help="only record the accuracies in these `pyimgcls quantize` outputs (float vs int8 on the "
                         "test split, as measured by that command) into DATE_cpu-quant-TAG.json")
    ap.add_argument("--finetune-control", default=None, metavar="CKPT",
                    help="the control for a `pyimgcls quantize --qat-epochs E` accuracy: the same fine-tuning "
                         "(defaults of that command: 16 calibration batches drawn first, batch 32, SGD momentum "
                         "0.9, lr 1e-3 cosine, BN folded, seed 0) in float, without fake quantisation")
    ap.add_argument("--epochs", type=int, default=2, help="with --finetune-control")
    ap.add_argument("--matrix", action="store_true",
                    help="ResNet-18 / -50 model matrix: ours int8 vs torch float32, torch.ao int8, onnxruntime int8")
    ap.add_argument("--models", default="resnet18,resnet50", help="with --matrix")
    ap.add_argument("--batches", default="1,16", help="with --matrix")
    ap.add_argument("--sizes", default="64,224", help="with --matrix")
    ap.add_argument("--threads-list", default="1,2", help="with --matrix")
    ap.add_argument("--gap-ms", type=float, default=100.0,
                    help="with --matrix: idle ms before each timed block, so the previous contender's "
                         "spinning thread pool has let go of the cores (0: back to back)")
    ap.add_argument("--profile", action="store_true",
                    help="per-layer profile of our int8 ResNet vs onnxruntime's per-node profile (1 thread; "
                         "--models / --sizes / --batches as --matrix)")
    args = ap.parse_args(argv)
    if args.profile:
        return _profile(args)
    if args.matrix:
        return _matrix(args)
    if args.quantized:
        return _accuracy_records(args)
    if args.finetune_control:
        return _finetune_control(args)
    _set_threads(1)
    gemm = _gemm_cases(args.reps)
    if args.gemm_only:
        if args.out:
            _write(gemm, [f"single int8 GEMM, 1 thread, load average {os.getloadavg()[0]:.1f} on 2 CPUs "
                          "(shared machine)"], args.out, "gemm")
        return 0
    if not args.checkpoint:
        ap.error("--checkpoint is required (or --gemm-only)")
    _set_threads(args.threads)

    ck = torch.load(args.checkpoint, weights_only=True)
    meta = ck["meta"]
    lenet = models.lenet5(num_classes=meta["num_classes"], in_channels=meta["in_channels"])
    lenet.load_state_dict(ck["model"])
    lenet.eval()
    ds = load_digits()
    mean, std = torch.tensor(meta["mean"]), torch.tensor(meta["std"])
    xtr = normalize(ds.train.images, mean, std)
    xte, yte = normalize(ds.test.images, mean, std), ds.test.labels
    calib = [xtr[i * 64:(i + 1) * 64] for i in range(8)]

    cases, notes = list(gemm), []
    acc_f = _accuracy(_float_on("cpu", lenet), xte, yte)
    print(f"LeNet-5 digits: float32 test accuracy {acc_f * 100:.2f}% ({len(yte)} images)")
    qmodels = {}
    for obs in ("minmax", "percentile", "mse"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")           # LeNet-5 must quantise completely
            qm = quantize(lenet, calib, observer=obs)
        qmodels[obs] = qm
        acc_q = _accuracy(qm, xte, yte)
        print(f"  int8 PTQ observer={obs:10s} accuracy {acc_q * 100:.2f}%  drop {(acc_f - acc_q) * 100:+.2f} pp")
        cases.append({"family": "quant", "op": "lenet5_ptq_accuracy", "pass": "eval", "shape": f"{len(yte)}x1x32x32",
                      "dtype": "int8", "layout": "-", "provider": f"pyimgcls-int8-{obs}", "ms": None,
                      "ref_provider": "pyimgcls-float32", "ref_ms": None, "speedup": None, "tflops": None,
                      "gbps": None, "roofline_pct": None, "accuracy": acc_q, "ref_accuracy": acc_f,
                      "drop_pp": (acc_f - acc_q) * 100, "checkpoint": os.path.abspath(args.checkpoint)})

    rn = models.resnet18(num_classes=10)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():                    # non-trivial BN statistics, so folding matters
        for m in rn.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    rn.eval()
    rn_calib = [torch.randn(8, 3, 64, 64, generator=g) for _ in range(4)]
    rn_q = quantize(rn, rn_calib)
    rn_ao = _torch_ao_int8(rn, rn_calib)
    if rn_ao is not None:
        with torch.no_grad():
            x = torch.randn(4, 3, 64, 64, generator=g)
            ref = rn(x)
            err = {k: float((f(x) - ref).norm() / ref.norm()) for k, f in (("pyimgcls", rn_q), ("torch.ao", rn_ao))}
        print(f"resnet18 int8 relative error vs float32 (random weights): pyimgcls {err['pyimgcls']:.4f}, "
              f"torch.ao x86 {err['torch.ao']:.4f}")

    ql = qmodels["minmax"]
    speed_cases = [("lenet5", lenet, ql, (1, 1, 32, 32)), ("lenet5", lenet, ql, (64, 1, 32, 32)),
                   ("resnet18", rn, rn_q, (1, 3, 64, 64)), ("resnet18", rn, rn_q, (16, 3, 64, 64))]
    for name, fm, qm, shape in speed_cases:
        x = torch.randn(*shape, generator=g)
        macs = _macs(fm, x)
        inner = max(1, int(2e8 // max(macs, 1)))
        inner = min(inner, 50)
        load = os.getloadavg()[0]
        fns = {"int8": qm, "fp32_cpu": _float_on("cpu", fm), "fp32_torch": _float_on("torch", fm)}
        if name == "resnet18" and rn_ao is not None:
            fns["int8_torch_ao"] = rn_ao
        t = _time(fns, x, args.reps, inner)
        ao = (f" | torch.ao x86 int8 {t['int8_torch_ao']:.3f} ms (x{t['int8_torch_ao'] / t['int8']:.2f})"
              if "int8_torch_ao" in t else "")
        print(f"{name} {tuple(shape)}: int8 {t['int8']:.3f} ms | float32 ours {t['fp32_cpu']:.3f} ms "
              f"(x{t['fp32_cpu'] / t['int8']:.2f}) | float32 PyTorch {t['fp32_torch']:.3f} ms "
              f"(x{t['fp32_torch'] / t['int8']:.2f}){ao} | load {load:.1f}")
        for ref in [k for k in t if k != "int8"]:
            cases.append({"family": "quant", "op": f"{name}_forward", "pass": "fwd", "shape": "x".join(map(str, shape)),
                          "dtype": "int8", "layout": "nchw-in", "provider": "pyimgcls-int8", "ms": t["int8"],
                          "ref_provider": {"fp32_cpu": "pyimgcls-cpu-float32", "fp32_torch": "torch-float32",
                                           "int8_torch_ao": "torch.ao-x86-int8"}[ref],
                          "ref_ms": t[ref], "speedup": t[ref] / t["int8"],
                          "tflops": 2 * macs / (t["int8"] * 1e-3) / 1e12, "gbps": None, "roofline_pct": None,
                          "flops": 2 * macs, "threads": args.threads, "load_avg": load})
    notes.append(f"CPU int8 vs float32, {args.threads} threads, shared machine (load average "
                 f"{os.getloadavg()[0]:.1f} at the end): ratios are side by side in one process, absolute times "
                 "are inflated by the other jobs")
    if args.out:
        _write(cases, notes, args.out, args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
