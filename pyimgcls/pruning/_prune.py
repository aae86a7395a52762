"""prune_channels: structured channel pruning that returns a smaller dense model.

Steps: trace the channel graph (``_trace.py``); group the prunable elements into *classes* (elements
tied by residual adds, SE gates, repeated calls are one class: kept or removed together) and the
classes into *components* (the classes of convolutions whose outputs are tied: a residual stage, or a
single conv); in each component remove the ``floor(amount * n)`` lowest-scoring of its ``n`` prunable
classes (a class's score is the mean of its elements' scores: the sum's order when the classes have
equal sizes; a class whose removal would leave a convolution no input channel is passed over); then slice every conv, BatchNorm and
Linear of a deep copy to the kept channels (a grouped conv loses whole groups). Frozen channels (model input and output,
ops without a rule) are never removed and do not count in ``n``."""
from __future__ import annotations

import copy
import math

import torch

from ..errors import ArgumentTypeError, ArgumentValueError
from . import _trace
from ._arch import sync_widths
from ._trace import Flat

CRITERIA = ("l1", "bn_scale")


def _check(model, amount, criterion, example_input):
    if not isinstance(model, torch.nn.Module):
        raise ArgumentTypeError(f"prune_channels: argument 'model' must be a torch.nn.Module, got "
                                f"{type(model).__name__}")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise ArgumentTypeError(f"prune_channels: argument 'amount' must be a number, got {type(amount).__name__}")
    if not (0.0 <= float(amount) < 1.0):
        raise ArgumentValueError(f"prune_channels: argument 'amount' must be in [0, 1) (the fraction of channels "
                                 f"removed), got {amount}")
    if criterion not in CRITERIA:
        raise ArgumentValueError(f"prune_channels: argument 'criterion' must be one of {CRITERIA}, got {criterion!r}")
    if example_input is not None and not isinstance(example_input, torch.Tensor):
        raise ArgumentTypeError(f"prune_channels: argument 'example_input' must be a Tensor or None, got "
                                f"{type(example_input).__name__}")


def _default_input(model: torch.nn.Module) -> torch.Tensor:
    """One 32x32 image with as many channels as the first convolution takes (32x32 is the smallest
    input of most zoo models; AlexNet needs ``example_input`` of at least 63x63)."""
    first = next((m for m in model.modules() if isinstance(m, _trace.CONV_TYPES)), None)
    if first is None:
        raise ArgumentValueError("prune_channels: the model has no Conv2d layer, so there is nothing to prune")
    p = next(model.parameters())
    return torch.randn(1, first.in_channels, 32, 32, dtype=p.dtype, device=p.device)


def _element_scores(model, g, criterion) -> dict:
    mods = dict(model.named_modules())
    scores = {}
    l1_names = g.conv_out if criterion == "l1" else g.se_squeeze   # SE squeeze channels have no BN
    for name in l1_names:
        space = g.conv_out[name]
        w = mods[name].weight.detach().to(torch.float64)
        l1 = w.abs().flatten(1).sum(1).tolist()
        for i, (e, v) in enumerate(zip(space, l1)):
            # only a conv's own elements: a depthwise conv's or an SE fc2's outputs are its input's channels
            if g.owner[e] == (name, i):
                scores[e] = v
    if criterion == "l1":
        return scores
    for e, (norm, j) in g.bn_first.items():
        m = mods[norm]
        scores[e] = abs(float(m.weight.detach()[j])) if m.weight is not None else 1.0
    missing = [g.owner[e][0] for e in range(len(g.owner))
               if g.owner[e] is not None and e not in g.frozen and e not in scores]
    if missing:
        raise ArgumentValueError(f"prune_channels: criterion='bn_scale' needs a BatchNorm2d after every pruned "
                                 f"convolution; {missing[0]!r} has none (use criterion='l1')")
    return scores


def _removed_classes(g, scores, amount, global_ranking: bool = False) -> set:
    """Roots of the classes to remove: per component, the floor(amount * n) lowest-scoring classes;
    with ``global_ranking``, the floor(amount * N) lowest of all N prunable classes, each score divided
    by its component's mean (filter norms grow with fan-in, so raw scores would rank layers, not channels)."""
    class_score, class_size, class_frozen = {}, {}, set()
    for e, own in enumerate(g.owner):
        r = g.find(e)
        if e in g.frozen or own is None:
            # an element no conv owns (model input, Linear output, ...) cannot be removed
            class_frozen.add(r)
        class_score[r] = class_score.get(r, 0.0) + scores.get(e, 0.0)
        class_size[r] = class_size.get(r, 0) + (e in scores)
    # Rank by the mean over a class's scored elements: the same order as the sum where every class of
    # a component has one element per layer (residual groups, grouped convs, SE gates); a ShuffleNetV2
    # trunk's classes differ in size (a low channel index passes through more units and gathers more
    # branch outputs), and the sum would remove only the small classes, i.e. few channels.
    for r in class_score:
        class_score[r] /= max(1, class_size[r])
    # components: union of the classes of each conv's output space
    comp_parent: dict = {}

    def cfind(r):
        while comp_parent.setdefault(r, r) != r:
            r = comp_parent[r]
        return r

    for name, space in g.conv_out.items():
        roots = [g.find(e) for e in space]
        for r in roots[1:]:
            a, b = cfind(roots[0]), cfind(r)
            if a != b:
                comp_parent[b] = a
    components: dict = {}
    for r in list(comp_parent):
        components.setdefault(cfind(r), set()).add(r)
    # A convolution that reads only part of a component (a ShuffleNetV2 branch reads the second half of
    # the shuffled trunk, whose channels belong to a few of the trunk's classes) must keep one input
    # channel: a class whose removal would empty such an input is passed over for the next-lowest one.
    # (A layer whose own output would be emptied still raises in _slice_model.)
    readers: dict = {}                 # class root -> [(conv name, elements of the class it reads)]
    left: dict = {}                    # conv name -> input elements not removed yet
    for name, space in g.conv_in.items():
        left[name] = len(space)
        counts: dict = {}
        for e in space:
            r = g.find(e)
            counts[r] = counts.get(r, 0) + 1
        for r, n in counts.items():
            readers.setdefault(r, []).append((name, n))

    def remove_if_safe(r) -> bool:
        if any(left[name] - n <= 0 for name, n in readers.get(r, ())):
            return False
        for name, n in readers.get(r, ()):
            left[name] -= n
        removed.add(r)
        return True

    removed, ranked = set(), []
    for members in components.values():
        prunable = sorted((r for r in members if r not in class_frozen), key=lambda r: (class_score[r], r))
        if global_ranking:
            mean = sum(class_score[r] for r in prunable) / max(1, len(prunable))
            ranked += [(class_score[r] / mean if mean > 0 else 0.0, r) for r in prunable]
            continue
        k = math.floor(amount * len(prunable) + 1e-9)
        for r in prunable:
            if k == 0:
                break
            k -= remove_if_safe(r)
    if global_ranking:
        ranked.sort()
        removed.update(r for _, r in ranked[:math.floor(amount * len(ranked) + 1e-9)])
    return removed


def _keep(space, kept) -> list:
    return [i for i, e in enumerate(space) if kept(e)]


def _param(t: torch.Tensor, like: torch.nn.Parameter) -> torch.nn.Parameter:
    return torch.nn.Parameter(t.detach().clone(), requires_grad=like.requires_grad)


def _slice_model(model, g, removed) -> dict:
    """Slice a deep copy's layers in place; returns {layer name: new channel counts} (the architecture)."""
    mods = dict(model.named_modules())

    def kept(e):
        return g.find(e) not in removed

    arch = {}
    for name, s_out in g.conv_out.items():
        m = mods[name]
        out_idx = _keep(s_out, kept)
        in_idx = _keep(g.conv_in[name], kept)
        if not out_idx or not in_idx:
            raise ArgumentValueError(f"prune_channels: argument 'amount' would prune layer {name!r} to zero "
                                     f"channels; use a smaller amount")
        oi = torch.tensor(out_idx, device=m.weight.device)
        if name in g.depthwise:
            m.weight = _param(m.weight[oi], m.weight)
            m.groups = len(out_idx)
        elif m.groups == 1:
            ii = torch.tensor(in_idx, device=m.weight.device)
            m.weight = _param(m.weight[oi][:, ii], m.weight)
        else:
            # grouped: whole groups were kept (the trace tied each group's channels), so the kept output
            # rows, in order, are the kept groups' filters, each still reading its own cg input channels
            og = m.out_channels // m.groups
            m.weight = _param(m.weight[oi], m.weight)
            m.groups = len(out_idx) // og
        if m.bias is not None:
            m.bias = _param(m.bias[oi], m.bias)
        m.in_channels, m.out_channels = len(in_idx), len(out_idx)
        arch[name] = {"kind": "conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels,
                      "groups": m.groups}
    for name, s in g.norm_in.items():
        m = mods[name]
        idx = _keep(s, kept)
        if not idx:
            raise ArgumentValueError(f"prune_channels: argument 'amount' would prune layer {name!r} to zero "
                                     f"channels; use a smaller amount")
        dev = next((t.device for t in (m.weight, m.running_mean) if t is not None), torch.device("cpu"))
        ii = torch.tensor(idx, device=dev)
        for attr in ("weight", "bias"):
            p = getattr(m, attr)
            if p is not None:
                setattr(m, attr, _param(p[ii], p))
        for attr in ("running_mean", "running_var"):
            b = getattr(m, attr)
            if b is not None:
                setattr(m, attr, b[ii].clone())
        m.num_features = len(idx)
        arch[name] = {"kind": "batchnorm2d", "num_features": m.num_features}
    for name, flat in g.linear_in.items():
        m = mods[name]
        chans = _keep(flat.space, kept)
        feats = [c * flat.hw + s for c in chans for s in range(flat.hw)]
        if not feats:
            raise ArgumentValueError(f"prune_channels: argument 'amount' would prune the input of layer {name!r} "
                                     f"to zero features; use a smaller amount")
        if len(feats) != m.in_features:
            fi = torch.tensor(feats, device=m.weight.device)
            m.weight = _param(m.weight[:, fi], m.weight)
            m.in_features = len(feats)
        arch[name] = {"kind": "linear", "in_features": m.in_features, "out_features": m.out_features}
    return arch


def prune_channels(model: torch.nn.Module, amount: float = 0.5, criterion: str = "l1",
                   example_input: torch.Tensor | None = None, *, global_ranking: bool = False) -> torch.nn.Module:
    """A new, smaller dense copy of ``model`` with the fraction ``amount`` of the output channels of
    every prunable convolution (or of every group of channels tied across residual adds) removed,
    together with the matching input channels of every consumer (BatchNorm, convolutions, depthwise
    convolutions, the Linear head after flatten / pooling, DenseNet's concatenations). ``model`` is
    not changed.

    ``criterion``: ``"l1"`` ranks a channel by the L1 norm of its filter (summed over a tied group),
    ``"bn_scale"`` by ``|gamma|`` of the BatchNorm that first normalises it (network slimming).
    ``example_input``: one batch the model accepts, used to trace the channel dependencies (default:
    one random 32x32 image with the first convolution's channel count). ``global_ranking=True``
    removes the same total fraction but ranks all channels together (each score relative to its
    layer's or group's mean), so layers lose different fractions; a layer that would lose every
    channel raises. ``amount=0`` returns a copy
    that computes exactly what ``model`` does. The channel counts of the result are
    :func:`architecture` ``(model)``, the plain data a pruned checkpoint records."""
    _check(model, amount, criterion, example_input)
    if not isinstance(global_ranking, bool):
        raise ArgumentTypeError(f"prune_channels: argument 'global_ranking' must be a bool, got "
                                f"{type(global_ranking).__name__}")
    x = _default_input(model) if example_input is None else example_input
    g = _trace.trace(model, x)
    scores = _element_scores(model, g, criterion)
    removed = _removed_classes(g, scores, float(amount), global_ranking)
    pruned = copy.deepcopy(model)
    _slice_model(pruned, g, removed)
    sync_widths(pruned)
    pruned.train(model.training)
    return pruned


__all__ = ["prune_channels", "CRITERIA", "Flat"]
