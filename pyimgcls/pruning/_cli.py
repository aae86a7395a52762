"""``pyimgcls prune``: prune a checkpoint's model and write a checkpoint that records the new widths."""
from __future__ import annotations

import os

import torch

from ..errors import ArgumentValueError
from ._arch import architecture
from ._prune import prune_channels
from ._sparse24 import is_2_4, recorded_2_4


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
    # What train --init reads to keep the pattern. Removing channels of a 2:4 source shifts its groups
    # of 4, so without --2:4 the record is kept only where every recorded layer is still 2:4 (amount 0).
    new_meta.pop("sparsity", None)
    if sparse is not None:
        new_meta["sparsity"] = {"pattern": sparse["pattern"], "layers": list(sparse["layers"])}
    else:
        before_2_4 = recorded_2_4(meta)
        mods = dict(pruned.named_modules())
        if before_2_4 and all(n in mods and mods[n].weight.shape[1] % 4 == 0 and is_2_4(mods[n].weight)
                              for n in before_2_4):
            new_meta["sparsity"] = {"pattern": "2:4", "layers": before_2_4}
    ckpt_mod.atomic_save({"format": ckpt_mod.FORMAT, "kind": "pruned", "meta": new_meta,
                          "model": pruned.state_dict()}, args.out)
    extra = "" if sparse is None else f"; 2:4 sparse weights in {len(sparse['layers'])} layers"
    print(f"pyimgcls prune: {meta['model']} from {args.checkpoint}: {args.amount:g} of the channels removed "
          f"({args.criterion}){extra}; {before:,} -> {after:,} parameters ({after / before:.3f}x); wrote {args.out}")
    return {"parameters_before": before, "parameters_after": after, "out": args.out}


def _sparse_2_4(model) -> dict:
    """``--2:4``: 2:4 magnitude sparsity on the (channel-pruned) model, baked into the weights (a plain
    checkpoint of the same widths, zeros in the 2:4 pattern, recorded in meta["sparsity"]; ``train
    --init`` rebuilds the masks from it: pyimgcls.pruning.restore_2_4). Returns the record kept in the
    checkpoint's history."""
    from ._sparse24 import prune_2_4, remove_masks
    report = prune_2_4(model)
    remove_masks(model)
    return {"pattern": "2:4", "layers": report["pruned"], "skipped": sorted(report["skipped"])}
