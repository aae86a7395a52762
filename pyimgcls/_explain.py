"""Which kernel runs each layer: ``pyimgcls.explain(model, input_shape, backend="cuda", ...)`` (exported by
the package; this module is private).

Decided on the host, without a GPU and without running a kernel: the model runs once (forward, and
backward when ``training``) on "meta" tensors, which carry shapes, strides and dtypes but no data,
with a recorder installed in the backend grid (``pyimgcls/backends/__init__.py``). Every op takes
its real path (argument checks, layout conversions, autograd) down to the backend's family module;
there the recorder asks that module's ``plan_<entry>()`` what the entry point would launch, which for
the CUDA backend is the launcher's own decision function in ``csrc/cuda/<family>.h`` reached through
the bindings, for Triton the entry point's own kernel choice. Output shapes come from the torch
yardstick on the meta tensors.

One row per (layer, pass): ``layer`` (module path), ``op`` (our op's name), ``pass`` (``fwd``,
``dgrad``, ``wgrad``, ``bgrad``: the bias / activation backward, or ``bwd`` for single-kernel
backwards), ``backend``, ``kernel``, ``tensor_cores``, ``vectorized``, ``tile``, ``ctas``, ``flops``,
``bytes`` (the least traffic: every operand read and every result written once), and ``time_h100_us`` /
``time_h200_us``, the roofline time max(flops / peak FLOP/s, bytes / peak bandwidth) at the GPU's
datasheet peaks. Roofline times are lower bounds from arithmetic, not measurements.
"""
from __future__ import annotations

import copy
import json
import warnings
from typing import Iterable

import torch

from . import backends as _grid
from . import models as _models

__all__ = ["explain", "Explanation", "PEAKS"]

# Datasheet peaks (NVIDIA H100 SXM5 / H200 SXM, dense, no sparsity): tensor-core float16/bfloat16
# FLOP/s, CUDA-core float32 FLOP/s (our non-tensor-core kernels compute in float32) and HBM bandwidth.
PEAKS = {
    "h100": {"tensor": 989.4e12, "fp32": 66.9e12, "bytes": 3.35e12},
    "h200": {"tensor": 989.4e12, "fp32": 66.9e12, "bytes": 4.8e12},
}

COLUMNS = ("layer", "op", "pass", "backend", "kernel", "tensor_cores", "vectorized", "tile", "ctas",
           "flops", "bytes", "time_h100_us", "time_h200_us")

# (family, entry point) -> (op name, pass). The GEMM's backward products go through the forward entry
# point `gemm` too; the recorder tells them apart by the shape of the result (see _Recorder._pass).
_ENTRIES = {
    ("conv", "conv2d"): ("conv2d", "fwd"),
    ("conv", "dgrad"): ("conv2d", "dgrad"),
    ("conv", "wgrad"): ("conv2d", "wgrad"),
    ("conv", "bias_act_bwd"): ("conv2d", "bgrad"),
    ("gemm", "gemm"): ("linear", "fwd"),
    ("gemm", "bias_act_bwd"): ("linear", "bgrad"),
    ("pool", "max_pool2d"): ("max_pool2d", "fwd"),
    ("pool", "max_pool2d_backward"): ("max_pool2d", "bwd"),
    ("pool", "avg_pool2d"): ("avg_pool2d", "fwd"),
    ("pool", "avg_pool2d_backward"): ("avg_pool2d", "bwd"),
    ("pool", "adaptive_avg_pool2d"): ("adaptive_avg_pool2d", "fwd"),
    ("pool", "adaptive_avg_pool2d_backward"): ("adaptive_avg_pool2d", "bwd"),
    ("batchnorm", "batch_norm_fwd"): ("batch_norm", "fwd"),
    ("batchnorm", "update_stats"): ("batch_norm", "stats"),
    ("batchnorm", "batch_norm_bwd"): ("batch_norm", "bwd"),
    ("softmax_xent", "forward"): ("cross_entropy", "fwd"),
    ("softmax_xent", "prob_forward"): ("cross_entropy", "fwd"),
    ("softmax_xent", "backward"): ("cross_entropy", "bwd"),
}


def _tensors(obj) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)


# Arguments an entry point passes only for their shape (the conv backward products take both conv
# operands but read one): indices of the tensor arguments it reads; absent = every tensor argument.
_READS = {("conv", "dgrad"): (0, 2), ("conv", "wgrad"): (0, 1)}


def _nbytes(*objs) -> int:
    seen, total = set(), 0
    for t in _tensors(objs):
        if id(t) not in seen and t.numel() > 0:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _conv_flops(x: torch.Tensor, w: torch.Tensor, out_pixels: int) -> int:
    """2 * N * O * OH * OW * (C/groups) * KH * KW: the multiply-adds of the conv and of each of its two
    backward products. ``w`` is [O, C/groups, KH, KW]."""
    O, Cg, KH, KW = w.shape
    return 2 * x.shape[0] * O * out_pixels * Cg * KH * KW


def _flops(family: str, entry: str, args, out) -> int:
    outs = list(_tensors(out))
    first = outs[0] if outs else None
    if family == "conv" and entry in ("conv2d", "dgrad", "wgrad"):
        if entry == "conv2d":
            x, w = args[0], args[1]
            return _conv_flops(x, w, first.shape[2] * first.shape[3])
        gp, x, w = args[0], args[1], args[2]
        return _conv_flops(x, w, gp.shape[2] * gp.shape[3])
    if family == "gemm" and entry == "gemm":
        a, b = args[0], args[1]
        return 2 * a.shape[0] * a.shape[1] * b.shape[1]
    if family == "pool" and entry in ("max_pool2d", "avg_pool2d"):
        kernel = args[1]
        return first.numel() * kernel[0] * kernel[1]   # one compare / add per window element
    # element-wise and reductions: about one operation per element of the largest operand (memory
    # bound by far; the roofline time is the bytes term)
    return max((t.numel() for t in _tensors((args, out))), default=0)


class _Recorder:
    """Stands in for the backend's family modules while explain() runs (see backends.set_recorder)."""

    def __init__(self, backend: str):
        self.backend = backend
        self.rows: list[dict] = []
        self.layer = "(model)"
        self.forward_args: dict[str, tuple] = {}   # layer -> shapes of its forward GEMM operands
        self.backward = False

    def family(self, backend: str, family: str, module):
        recorder = self

        class _Family:
            def __getattr__(self, entry):
                real = getattr(module, entry)
                if not callable(real) or entry.startswith("plan_"):
                    return real

                def run(*args, **kwargs):
                    tensors = list(_tensors((args, tuple(kwargs.values()))))
                    if not tensors or tensors[0].device.type != "meta":
                        return real(*args, **kwargs)
                    out = getattr(_grid.family_module("torch", family), entry)(*args, **kwargs)
                    plan_fn = getattr(module, "plan_" + entry, None)
                    if plan_fn is not None:
                        plan = plan_fn(*args, **kwargs)
                    else:   # the launcher's name (its kernel variant is decided inside it)
                        launcher = getattr(module, "LAUNCHERS", {}).get(entry)
                        plan = None if launcher is None else {"kernel": launcher}
                    recorder.record(backend, family, entry, args, out, plan)
                    return out
                return run
        return _Family()

    def _pass(self, family, entry, args, out):
        op, pss = _ENTRIES.get((family, entry), (entry, "fwd"))
        if (family, entry) == ("gemm", "gemm"):
            a, b = args[0], args[1]
            if not self.backward:
                self.forward_args[self.layer] = (tuple(a.shape), tuple(b.shape))
            else:
                fa, fb = self.forward_args.get(self.layer, (None, None))
                shape = tuple(out.shape)
                pss = "dgrad" if shape == fa else "wgrad" if shape == fb else "bwd"
        return op, pss

    def record(self, backend, family, entry, args, out, plan):
        op, pss = self._pass(family, entry, args, out)
        plan = plan or {}
        tensor_cores = bool(plan.get("tensor_cores"))
        reads = _READS.get((family, entry))
        read_args = args if reads is None else tuple(args[i] for i in reads)
        flops, nbytes = _flops(family, entry, args, out), _nbytes(read_args, out)
        row = {"layer": self.layer, "op": op, "pass": pss, "backend": backend,
               "kernel": plan.get("kernel", f"({family}.{entry}: no plan)"),
               "tensor_cores": tensor_cores if "tensor_cores" in plan else None, "vectorized": plan.get("vectorized"),
               "tile": plan.get("tile"), "ctas": plan.get("ctas"), "flops": int(flops), "bytes": int(nbytes)}
        for gpu, peak in PEAKS.items():
            fl = peak["tensor"] if tensor_cores else peak["fp32"]
            row[f"time_{gpu}_us"] = 1e6 * max(flops / fl, nbytes / peak["bytes"])
        row["plan"] = plan
        self.rows.append(row)


class Explanation:
    """The rows explain() found, with a table view (``str``), ``to_json()`` and totals."""

    def __init__(self, rows: list[dict], meta: dict):
        self.rows, self.meta = rows, meta

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)

    def totals(self) -> dict:
        out = {"flops": sum(r["flops"] for r in self.rows), "bytes": sum(r["bytes"] for r in self.rows)}
        for gpu in PEAKS:
            out[f"time_{gpu}_us"] = sum(r[f"time_{gpu}_us"] for r in self.rows)
        return out

    def to_json(self) -> str:
        rows = [{k: r[k] for k in COLUMNS} for r in self.rows]
        return json.dumps({"meta": self.meta, "rows": rows, "totals": self.totals()}, indent=1)

    def table(self, columns=COLUMNS) -> str:
        from tabulate import tabulate

        def cell(k, v):
            if k == "tile" and v is not None:
                return "x".join(str(t) for t in v if t) or "-"
            if k in ("flops", "bytes"):
                return _si(v)
            if k.startswith("time_"):
                return f"{v:.1f}"
            if isinstance(v, bool):
                return "yes" if v else "no"
            return "-" if v is None else v
        body = [[cell(k, r[k]) for k in columns] for r in self.rows]
        t = self.totals()
        body.append(["total"] + [""] * (len(columns) - 1))
        for i, k in enumerate(columns):
            if k in t:
                body[-1][i] = cell(k, t[k])
        return tabulate(body, headers=list(columns), tablefmt="github")

    def __str__(self):
        return self.table()


def _si(v: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return str(int(v))


def _leaf_modules(model: torch.nn.Module):
    for name, m in model.named_modules():
        if not any(True for _ in m.children()):
            yield name or "(model)", m


def explain(model: torch.nn.Module | str, input_shape, backend: str = "cuda", dtype: torch.dtype = torch.float16,
            channels_last: bool = False, training: bool = True, num_classes: int | None = None) -> Explanation:
    """What every layer of ``model`` would launch on ``backend`` for an input of ``input_shape``
    ([N, C, H, W]) in ``dtype``, forward and, when ``training``, backward (through our cross-entropy).

    ``model``: a module (copied; the original is untouched) or a name of :func:`pyimgcls.models.list_models`.
    ``dtype`` float16/bfloat16 stands for mixed precision as ``torch.autocast`` runs it on a GPU: the
    convolutions and linear layers compute in ``dtype``; batch-norm parameters and statistics stay
    float32. ``channels_last``: model and input in ``torch.channels_last``. No GPU is needed."""
    if backend not in _grid.TABLE:
        raise ValueError(f"explain: argument 'backend' must be one of {tuple(_grid.TABLE)}, got {backend!r}")
    if dtype not in _grid.TABLE[backend].dtypes:
        raise ValueError(f"explain: backend {backend!r} does not take dtype {dtype}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"explain: argument 'input_shape' must be [N, C, H, W] of positive sizes, got {input_shape}")
    if isinstance(model, str):
        model = _models.get_model(model, **({} if num_classes is None else {"num_classes": num_classes}))
    elif isinstance(model, torch.nn.Module):
        model = copy.deepcopy(model)
    else:
        raise TypeError(f"explain: argument 'model' must be a torch.nn.Module or a model name, got {type(model).__name__}")
    model = model.to(device="meta")
    for m in model.modules():
        keep_fp32 = isinstance(m, torch.nn.modules.batchnorm._BatchNorm) or "BatchNorm" in type(m).__name__
        for p in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            if p.is_floating_point() and not keep_fp32:
                p.data = p.data.to(dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train(training)
    x = torch.empty(shape, device="meta", dtype=dtype).contiguous(memory_format=fmt)

    rec = _Recorder(backend)
    hooks = []
    for name, m in _leaf_modules(model):
        def enter(mod, args, name=name):
            rec.layer = name
        def enter_bwd(mod, grad_out, name=name):
            rec.layer = name
        hooks.append(m.register_forward_pre_hook(enter))
        if training:
            hooks.append(m.register_full_backward_pre_hook(enter_bwd))
    from .ops import softmax_xent as _xent
    _grid.set_recorder(rec)
    try:
        with torch.set_grad_enabled(training):
            out = model(x.requires_grad_(False))
            if training:
                rec.layer = "loss"
                target = torch.empty((out.shape[0], *out.shape[2:]), dtype=torch.long, device="meta")
                loss = _xent.cross_entropy(out.float(), target)   # AMP runs cross-entropy in float32
                rec.backward = True
                with warnings.catch_warnings():
                    # the first layer's full backward hook fires without input gradients: expected here
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()
    finally:
        _grid.set_recorder(None)
        for h in hooks:
            h.remove()
    meta = {"input_shape": list(shape), "backend": backend, "dtype": str(dtype).replace("torch.", ""),
            "channels_last": channels_last, "training": training, "peaks": PEAKS}
    return Explanation(rec.rows, meta)
