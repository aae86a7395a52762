"""``pyimgcls prune``: prune a checkpoint's model and write a checkpoint that records the new widths."""
from __future__ import annotations

import os

import torch

from ..errors import ArgumentValueError
from ._arch import architecture
from ._prune import prune_channels


def prune_checkpoint(args) -> dict:
    """Load ``args.checkpoint``, prune it by ``args.amount`` with ``args.criterion`` and write
    ``args.out`` (a weights-only loadable checkpoint of kind "pruned"); returns a summary dict."""
    from ..training import checkpoint as ckpt_mod
    from ..training.loop import _load_model

    if os.path.abspath(args.out) == os.path.abspath(args.checkpoint):
        raise ArgumentValueError(f"--out {args.out}: the same file as --checkpoint; write the pruned model elsewhere")
    model, meta, _ = _load_model(args.checkpoint)
    # The traced example: one image of the size and channels the model was trained on.
    x = torch.randn(1, meta["in_channels"], meta["image_size"], meta["image_size"])
    before = sum(p.numel() for p in model.parameters())
    ranking = bool(getattr(args, "global_ranking", False))
    pruned = prune_channels(model, amount=args.amount, criterion=args.criterion, example_input=x,
                            global_ranking=ranking)
    after = sum(p.numel() for p in pruned.parameters())
    entry = {"amount": float(args.amount), "criterion": args.criterion, "global_ranking": ranking,
             "source": os.path.abspath(args.checkpoint), "parameters_before": before, "parameters_after": after}
    sparse = _sparse_2_4(pruned) if getattr(args, "sparse_2_4", False) else None
    if sparse is not None:
        entry["sparsity"] = sparse
    history = list(meta.get("pruning", [])) + [entry]
    new_meta = dict(meta, architecture=architecture(pruned), pruning=history)
    ckpt_mod.atomic_save({"format": ckpt_mod.FORMAT, "kind": "pruned", "meta": new_meta,
                          "model": pruned.state_dict()}, args.out)
    extra = "" if sparse is None else f"; 2:4 sparse weights in {len(sparse['layers'])} layers"
    print(f"pyimgcls prune: {meta['model']} from {args.checkpoint}: {args.amount:g} of the channels removed "
          f"({args.criterion}){extra}; {before:,} -> {after:,} parameters ({after / before:.3f}x); wrote {args.out}")
    return {"parameters_before": before, "parameters_after": after, "out": args.out}


def _sparse_2_4(model) -> dict:
    """``--2:4``: 2:4 magnitude sparsity on the (channel-pruned) model, baked into the weights (a plain
    checkpoint of the same widths, zeros in the 2:4 pattern; pyimgcls.pruning.prune_2_4 keeps masks for
    fine-tuning in Python, this file does not). Returns the record kept in the checkpoint's history."""
    from ._sparse24 import prune_2_4, remove_masks
    report = prune_2_4(model)
    remove_masks(model)
    return {"pattern": "2:4", "layers": report["pruned"], "skipped": sorted(report["skipped"])}
