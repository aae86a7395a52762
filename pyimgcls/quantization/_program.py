"""A quantised model's CPU forward as one native call (``_C.QuantProgram``).

Why: at batch 1 the Python around each native call of the layer-by-layer forward (the interpreter
step, the bound layer's layout key and output allocation, ~30 arguments converted per call) cost 4-6 us
a layer: ~0.1 ms of a 0.53 ms ResNet-18 64x64 forward, where onnxruntime's whole forward took 0.44.

How: :func:`build` reads a forward the interpreter has just run with every value kept, and records the
same native calls with the same arguments (the bound layers' own, ``run.native``; the pools' and the
input quantisation's as ``ops.quant`` makes them), in order, between buffers this program owns
(assigned by liveness, as the interpreter frees them: a buffer is reused once its value is dead, never
as the output of a step that reads it). Only a plan of quantised layers, pools and views of their
outputs, fed a float32 NCHW image and ending in a layer with float output, becomes a program; any
other plan keeps the interpreter. The integer kernels are exact and the calls the same, so a program
gives the interpreter's bytes (tests/test_quant_program.py). One run at a time per program (its
buffers): a concurrent forward takes the interpreter."""
from __future__ import annotations

import threading

import torch

from .. import _native
from ..ops import _alloc
from ..ops import quant as q

_IN, _OUT = -1, -2          # the run's input (the float image) and output (the float logits)


class Program:
    def __init__(self, native, buffers, out_shape, out_strides, keep):
        self.native = native
        self.buffers = buffers          # the intermediate values' memory, kept for the program's life
        self.out_shape, self.out_strides = out_shape, out_strides
        self.keep = keep                # the layers' packed weights and epilogue tensors the steps point at
        self.lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        """The logits for ``x`` (of the layout the program was built for), or None if another thread is
        running this program."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            y = _alloc._poisoned(torch.empty_strided(self.out_shape, self.out_strides, dtype=torch.float32))
            self.native.run(x.data_ptr(), y.data_ptr())
            return y
        finally:
            self.lock.release()


def _dense(t: torch.Tensor) -> bool:
    return t.storage_offset() == 0 and (t.is_contiguous() or (t.dim() == 4 and
                                                              t.is_contiguous(memory_format=torch.channels_last)))


def build(qm, x: torch.Tensor, env: dict) -> Program | None:
    """The program of ``qm`` (a QuantizedModel) for inputs laid out as ``x``, from ``env``: the values of
    a forward on ``x`` with none dropped. None when the plan or the layouts do not allow one."""
    if not (x.dtype == torch.float32 and x.dim() == 4 and x.is_contiguous() and x.numel()
            and not x.is_contiguous(memory_format=torch.channels_last)):
        return None
    steps = []          # (method name, args with value names standing for pointers, node index)
    keep = []           # the layers' packed weights and epilogue tensors the steps point at
    tensor = {}         # node name -> the uint8 tensor (template) holding its value
    base = {}           # node name -> the name of the value whose buffer it lives in (itself or a view's source)
    plan = qm._plan
    out_node = None
    for idx, (n, kind) in enumerate(plan):
        if kind == "placeholder":
            continue
        if kind == "output":
            a = n.args[0]
            if not isinstance(a, torch.fx.Node) or base.get(a.name) != _OUT:
                return None
            out_node = a
            continue
        if kind in ("conv", "linear"):
            src, res_node, last, layer = qm._layers[n.name]
            if src.op == "placeholder":
                # the input quantisation (QuantizedModel._q -> quantize_per_tensor, channels_last: its
                # one-pass NHWC kernel for a contiguous NCHW float32 image)
                # (padded to 4 channels of real 0 for a layer bound to a padded weight: QuantizedModel._pad_in)
                s, z = qm.qparams[src.name]
                xq = qm._q(x, src, qm._pad_in.get(n.name)).data
                qname = f"{n.name}/input"
                tensor[qname], base[qname] = xq, qname
                inv = q._inv_scale(s)
                N, C, H, W = x.shape
                steps.append(("add_quantize_nhwc", [_IN, N, C, H * W, x.stride(0), x.stride(1), inv, z, qname,
                                                    xq.shape[1]], idx))
                in_name = qname
            elif src.name in tensor:
                in_name = src.name
            else:
                return None
            if last and res_node is not None:
                return None               # the float residual add runs in Python
            if res_node is not None and res_node.name not in tensor:
                return None
            y = env[n.name]
            out_t = y if last else y.data
            if not isinstance(out_t, torch.Tensor) or not _dense(out_t):
                return None
            res_t = None if res_node is None else tensor[res_node.name]
            b = layer._bind(tensor[in_name], res_t, out_t)
            if b is q._UNBOUND or not hasattr(b[0], "native"):
                return None
            which, head, tail, ldo, held = b[0].native
            keep.append(held)
            res_name = None if res_node is None else res_node.name
            steps.append((f"add_{which}", [in_name, *head, res_name, *tail, _OUT if last else n.name, ldo], idx))
            if last:
                base[n.name] = _OUT
            else:
                tensor[n.name], base[n.name] = out_t, n.name
            continue
        src = n.args[0] if n.args and isinstance(n.args[0], torch.fx.Node) else None
        if src is None or src.name not in tensor:
            return None
        v, xin = env[n.name], tensor[src.name]
        if kind in ("maxpool", "avgpool"):
            o = v.data
            if not _dense(o) or not _dense(xin):
                return None
            N, C, H, W = xin.shape
            OH, OW = o.shape[2], o.shape[3]
            m = qm._modules_by_name[n.target]
            if kind == "maxpool":
                op = "quantized_max_pool2d"
                k = q._pair(m.kernel_size, "kernel_size", op, 1)
                st = k if m.stride is None or m.stride == [] else q._pair(m.stride, "stride", op, 1)
                p, d = q._pair(m.padding, "padding", op, 0), q._pair(m.dilation, "dilation", op, 1)
                steps.append(("add_max_pool", [src.name, N, C, H, W, *xin.stride(), *k, *st, *p, *d, OH, OW, n.name],
                              idx))
            else:
                op = "quantized_adaptive_avg_pool2d"
                src_q = env[src.name]
                s_in, z_in = q._check_qparams(src_q.scale, src_q.zero_point, "input_scale", "input_zero_point", op)
                s_out, z_out = q._check_qparams(v.scale, v.zero_point, "output_scale", "output_zero_point", op)
                steps.append(("add_avg_pool", [src.name, N, C, H, W, *xin.stride(), OH, OW, z_in, s_in / s_out, z_out,
                                               n.name], idx))
            tensor[n.name], base[n.name] = o, n.name
        elif kind in ("pass", "reshape"):
            o = getattr(v, "data", None)
            if not isinstance(o, torch.Tensor) or o.data_ptr() != xin.data_ptr():
                return None               # not a view of its source's buffer
            tensor[n.name], base[n.name] = o, base[src.name]
        else:
            return None
    if out_node is None:
        return None
    # buffers by liveness: a value's buffer is free after the last step reading it (or a view of it), and
    # a step's outputs are placed before that step's inputs are freed, so no step writes where it reads
    produced, last_use = {}, {}
    for method, args, idx in steps:
        out_name = {"add_conv": -2, "add_gemm": -2, "add_quantize_nhwc": -2}.get(method, -1)
        out_name = args[out_name]
        if isinstance(out_name, str):
            produced.setdefault(idx, []).append(out_name)
        for a in args:
            if isinstance(a, str) and base[a] != _OUT:
                last_use[base[a]] = max(last_use.get(base[a], idx), idx)
    free, buffers, holder = [], [], {}
    for idx in sorted({i for _, _, i in steps}):
        for name in produced.get(idx, []):
            need = tensor[name].numel()
            fit = [b for b in free if b.numel() >= need]
            buf = min(fit, key=lambda b: b.numel()) if fit else torch.empty(need, dtype=torch.uint8)
            if fit:
                free = [b for b in free if b is not buf]
            else:
                buffers.append(buf)
            holder[name] = buf
        free += [holder[b] for b, i in last_use.items() if i == idx]
    native = _native.C.QuantProgram()
    for method, args, _ in steps:
        getattr(native, method)(*[(_OUT if base[a] == _OUT else holder[base[a]].data_ptr()) if isinstance(a, str)
                                  else (0 if a is None else a) for a in args])
    y = env[out_node.name]
    return Program(native, buffers, tuple(y.shape), y.stride(), keep)
