"""``pyimgcls quantize``: int8-quantise a checkpoint's model and write a checkpoint of kind "quantized".

The calibration (and QAT) data are the training split of the data set recorded in the checkpoint,
normalised as training did; the test split gives the float and int8 accuracies printed and recorded
in the file's meta. The file holds the int8 weights and scales, the int32 biases, the activation
(scale, zero point) pairs and the float layers' tensors (``QuantizedModel.state``) beside the plain
meta of the source checkpoint: ``torch.load(weights_only=True)`` reads it, and ``pyimgcls.load_model``,
``pyimgcls eval`` and ``pyimgcls predict`` rebuild the int8 model from the architecture in the meta
(a pruned checkpoint's layer widths included)."""
from __future__ import annotations

import os
import time
import warnings

import torch

from ..errors import ArgumentValueError

KIND = "quantized"


def _accuracy(model, split, mean_t, std_t, batch_size: int) -> float:
    from ..training import distributed as D
    from ..training.loop import evaluate
    if not len(split):
        return float("nan")
    t, s, _ = evaluate(model, split, mean_t, std_t, torch.device("cpu"), batch_size, D.DistInfo())
    return float((s.argmax(1) == t).mean())


def _qat_masks_2_4(qat, layers: list[str] | None, what: str) -> list:
    """(weight parameter, bool mask) for every layer a 2:4 checkpoint records (``meta["sparsity"]``),
    found by name in the QAT model (``prepare_qat`` keeps the float model's layer names; BN folding
    scales whole output channels, so the fused weight has the checkpoint's zeros). Each mask keeps the
    2 largest |w| of every 4 (``mask_2_4``: a group with fewer than 2 non-zeros keeps its largest zeros,
    still 2:4), as ``train --init`` rebuilds them (``restore_2_4``)."""
    from ..pruning import is_2_4, mask_2_4
    out = []
    for name in layers or []:
        try:
            m = qat.graph_module.get_submodule(name)
        except AttributeError:
            raise ArgumentValueError(f"{what}: records 2:4 weights in layer {name!r}, which its model has "
                                     "not") from None
        w = getattr(m, "layer", m).weight          # a quantised layer is wrapped in _FakeQuantLayer
        if not is_2_4(w):
            raise ArgumentValueError(f"{what}: layer {name!r} is recorded as 2:4 sparse but its weight has groups "
                                     "of 4 with more than 2 non-zeros")
        out.append((w, mask_2_4(w)))
    return out


def _quantized_model(args, model, n_train: int, batches, sparse_2_4=None, what: str = "--checkpoint"):
    """PTQ, or QAT fine-tuning from the calibrated ranges then convert, as the arguments ask.
    ``sparse_2_4``: the layers of a 2:4 checkpoint; QAT re-applies their masks after every optimizer
    step (momentum and the cosine schedule would otherwise fill the pruned positions), so the int8
    weights stay 2:4 (PTQ keeps zeros by itself: round(0 / scale) = 0)."""
    from . import convert, prepare_qat, quantize
    if args.qat_epochs:
        qat = prepare_qat(model, per_channel=not args.per_tensor)
        masks = _qat_masks_2_4(qat, sparse_2_4, what)
        with torch.no_grad():           # the observers start from the calibration batches' ranges
            for x, _ in batches(args.calibration_batches):
                qat(x)
        opt = torch.optim.SGD(qat.parameters(), lr=args.lr, momentum=0.9)
        steps = args.qat_epochs * -(-n_train // args.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
        for epoch in range(args.qat_epochs):
            qat.train()
            total, n = 0.0, 0
            for x, y in batches(None):
                loss = torch.nn.functional.cross_entropy(qat(x), y)
                if not torch.isfinite(loss.detach()):
                    raise ArgumentValueError(f"--qat-epochs: the QAT loss became {loss.item()} in epoch {epoch + 1}; "
                                             "try a smaller --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if masks:
                    with torch.no_grad():
                        for w, mask in masks:
                            w.mul_(mask)
                sched.step()
                total, n = total + loss.item() * len(y), n + len(y)
            print(f"pyimgcls quantize: QAT epoch {epoch + 1}/{args.qat_epochs}: train loss {total / max(1, n):.4f}",
                  flush=True)
        qat.eval()
        return convert(qat)
    return quantize(model, batches(args.calibration_batches), observer=args.observer,
                    per_channel=not args.per_tensor)


def quantize_checkpoint(args) -> dict:
    """Load ``args.checkpoint``, quantise it (PTQ with ``args.observer`` on ``args.calibration_batches``
    training batches, then ``args.qat_epochs`` epochs of quantisation-aware fine-tuning if > 0) and
    write ``args.out``; returns a summary dict."""
    from ..data import load_dataset, normalize
    from ..training import checkpoint as ckpt_mod
    from ..training.loop import _load_model, auto_threads, iterate, resolve_kernels, set_cpu_threads

    if os.path.abspath(args.out) == os.path.abspath(args.checkpoint):
        raise ArgumentValueError(f"--out {args.out}: the same file as --checkpoint; write the quantised model elsewhere")
    ck = ckpt_mod.load_checkpoint(args.checkpoint)
    if ck.get("kind") == KIND:
        raise ArgumentValueError(f"--checkpoint {args.checkpoint} is already quantised; give the float checkpoint "
                                 "(pyimgcls train or prune output)")
    from ..pruning import recorded_2_4
    what = f"--checkpoint {args.checkpoint}"
    kernels = resolve_kernels(args.kernels, torch.device("cpu"))
    model, meta, _ = _load_model(args.checkpoint)
    set_cpu_threads(auto_threads(args.threads, sum(p.numel() for p in model.parameters())))
    ds = load_dataset(meta["dataset"], image_size=meta["image_size"], in_channels=meta["in_channels"],
                      num_classes=meta["num_classes"], synthetic_size=args.synthetic_size, seed=args.seed)
    mean_t = torch.tensor(meta["mean"], dtype=torch.float32)
    std_t = torch.tensor(meta["std"], dtype=torch.float32)
    train, test = ds.train, ds.test.subset(args.limit_test)
    g = torch.Generator().manual_seed(args.seed)
    bs = args.batch_size

    def batches(n: int | None):
        order = torch.randperm(len(train), generator=g).tolist()
        idx = [order[i:i + bs] for i in range(0, len(order), bs)]
        for x, y in iterate(train, idx[:n] if n else idx, args.workers, torch.device("cpu")):
            yield normalize(x, mean_t, std_t), y

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True):      # the float-layer warning: one line of the summary instead
        warnings.simplefilter("always")
        qmodel = _quantized_model(args, model, len(train), batches, recorded_2_4(meta, what),
                                  what)
    elapsed = time.perf_counter() - t0
    acc_f = _accuracy(model, test, mean_t, std_t, 256)
    acc_q = _accuracy(qmodel, test, mean_t, std_t, 256)
    record = {"observer": args.observer if not args.qat_epochs else "qat-moving-average-minmax",
              "calibration_batches": int(args.calibration_batches), "batch_size": int(bs),
              "qat_epochs": int(args.qat_epochs), "lr": float(args.lr) if args.qat_epochs else None,
              "per_channel": not args.per_tensor, "source": os.path.abspath(args.checkpoint),
              "source_kind": ck.get("kind", "trained"), "float_layers": list(qmodel.float_layers),
              "num_test": len(test), "float_test_accuracy": acc_f, "int8_test_accuracy": acc_q, "kernels": kernels}
    new_meta = dict(meta, quantization=record)
    ckpt_mod.atomic_save({"format": ckpt_mod.FORMAT, "kind": KIND, "meta": new_meta, "model": qmodel.state()},
                         args.out)
    how = f"QAT {args.qat_epochs} epoch(s)" if args.qat_epochs else f"PTQ ({args.observer})"
    print(f"pyimgcls quantize: {meta['model']} from {args.checkpoint}: int8 by {how} on "
          f"{args.calibration_batches} calibration batch(es) of {bs} in {elapsed:.1f} s; test accuracy "
          f"{100 * acc_f:.2f}% float -> {100 * acc_q:.2f}% int8 ({len(test)} images); wrote {args.out}")
    if args.qat_epochs and recorded_2_4(meta, what):
        print(f"  2:4 masks re-applied after every QAT step in {len(recorded_2_4(meta, what))} layer(s)")
    if qmodel.float_layers:
        print(f"  kept in float (no int8 kernel): {', '.join(qmodel.float_layers)}")
    return {"out": args.out, **record}


def load_quantized(model: torch.nn.Module, ck: dict, path: str) -> torch.nn.Module:
    """A "quantized" checkpoint's int8 model on ``model`` (its float architecture, fresh weights)."""
    from ..data import DataError
    from ._ptq import QuantizedModel, _fused_graph
    try:
        return QuantizedModel.from_state(_fused_graph(model, "load_model"), ck["model"])
    except (KeyError, TypeError, RuntimeError, ArgumentValueError) as e:
        raise DataError(f"{path}: a 'quantized' checkpoint whose int8 state does not fit the model it describes: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def bench_checkpoint(args) -> int:
    """``pyimgcls bench --checkpoint FILE``: a quantised checkpoint's int8 model against the float32
    model of the same architecture (BN folded, on our float kernels), on the CPU, side by side in this
    process: median wall-clock ms per batch (``pyimgcls.bench.time_ms``) at each batch size and the
    speed-up. Weights do not change the speed: the float model gets fresh ones (the file holds no
    float weights of the quantised layers)."""
    from .. import fuse_for_inference
    from ..bench import time_ms
    from ..training import checkpoint as ckpt_mod
    from ..training.loop import _build_checkpoint_model, _load_model, resolve_kernels, set_cpu_threads

    ck = ckpt_mod.load_checkpoint(args.checkpoint)
    if ck.get("kind") != KIND:
        raise ArgumentValueError(f"--checkpoint {args.checkpoint} is a {ck.get('kind', 'trained')!r} checkpoint; "
                                 "bench --checkpoint compares a quantised one (pyimgcls quantize output) with float32")
    kernels = resolve_kernels(args.kernels, torch.device("cpu"))
    qmodel, meta, _ = _load_model(args.checkpoint)
    if args.threads:
        set_cpu_threads(args.threads)
    fmodel = fuse_for_inference(_build_checkpoint_model(meta, f"--checkpoint {args.checkpoint}").eval())
    size, ch = args.image_size or meta["image_size"], meta["in_channels"]
    rep = 50.0 if args.quick else 300.0
    print(f"pyimgcls bench: {meta['model']} from {args.checkpoint}, {ch}x{size}x{size}, kernels {kernels}, "
          f"{torch.get_num_threads()} threads (median of wall-clock runs; a loaded machine inflates both)")
    print(f"{'batch':>6} {'float32 ms':>11} {'int8 ms':>9} {'int8 images/s':>14} {'speed-up':>9}")
    rows = []
    g = torch.Generator().manual_seed(0)
    for b in args.batch_sizes:
        x = torch.rand(b, ch, size, size, generator=g)
        with torch.no_grad():
            ms_f = time_ms(lambda: fmodel(x), device="cpu", rep_ms=rep)
            ms_q = time_ms(lambda: qmodel(x), device="cpu", rep_ms=rep)
        rows.append({"batch": b, "float32_ms": ms_f, "int8_ms": ms_q, "speedup": ms_f / ms_q})
        print(f"{b:>6} {ms_f:>11.3f} {ms_q:>9.3f} {1e3 * b / ms_q:>14.1f} {ms_f / ms_q:>8.2f}x")
    return 0
