"""2:4 semi-structured sparsity: masks kept in the model for fine-tuning, baked in for export.

``prune_2_4(model)`` keeps, in every ``Conv2d`` (groups == 1, any kernel size) and ``Linear`` whose
input-channel count is a multiple of 4, the 2 largest-magnitude of every 4 consecutive weights along
the input channels (the GEMM reduction dimension), the pattern the sparse tensor cores
(``mma.sp``, ``pyimgcls.ops.sparse_linear``) consume. For a k x k convolution the groups run along
``C_in`` at each (kh, kw) tap: the reduction order of the implicit GEMM over NHWC is (kh, kw, c_in),
so 4 consecutive reduction elements are 4 consecutive input channels, as NVIDIA's ASP does too.
Other layers are skipped and listed with the reason.

How the pattern survives fine-tuning: each pruned layer holds its mask as a persistent bool buffer
``weight_mask_2_4`` (so a weights-only state_dict round trip restores it) and a forward pre-hook that
multiplies the weight by the mask in place before the layer runs, whenever the weight changed since
the hook last masked it (``Tensor._version``, bumped by every in-place update: optimizer steps,
``load_state_dict``). Why a pre-hook on the parameter itself and not a ``torch.nn.utils.parametrize``
parametrization:

* the parameter stays ``weight`` with its shape, so state_dict keys, optimizers built before or after
  pruning, checkpoint code and ``pyimgcls.explain`` see the same model; a parametrization renames it
  to ``parametrizations.weight.original`` and recomputes ``weight * mask`` (one extra elementwise
  kernel and a weight-sized temporary) on every forward;
* it works with any optimizer: whatever the step did to the pruned positions (momentum, weight decay,
  Adam's update) is zeroed before the weight is used, on every backend, since it is plain tensor code;
* the version test makes the hook free when the weight did not change (evaluation, gradient
  accumulation over several forwards, two forwards before one backward: no in-place write, so no
  autograd version error for saved weights).

The price: between an optimizer step and the next forward the stored weight may hold non-zero values
at pruned positions; ``apply_masks(model)`` zeroes them explicitly (e.g. before saving), and
``remove_masks(model)`` applies the masks and removes buffers and hooks, leaving a plain model whose
weights carry the 2:4 zeros (what ``pyimgcls prune --2:4`` writes).

Checkpoints: a file with 2:4 weights records ``meta["sparsity"] = {"pattern": "2:4", "layers": [...]}``
(``pyimgcls prune --2:4``, and every run fine-tuned from such a file with ``train --init``). Its
state_dict is a plain one (no mask keys), so eval / predict / quantize / ``load_model`` read it as any
other; ``train --init`` rebuilds the masks from the recorded layers (``restore_2_4``) so fine-tuning
keeps the pattern, and the training checkpoint keeps the exact masks beside the plain state_dict
(``masks_of``) so ``--resume`` continues with the same ones."""
from __future__ import annotations

import torch

from ..errors import ArgumentTypeError, ArgumentValueError

CRITERIA_2_4 = ("magnitude",)
MASK = "weight_mask_2_4"
_VERSION = "_sparse24_version"


def _reason_skipped(m: torch.nn.Module) -> str | None:
    if isinstance(m, torch.nn.Conv2d):
        if m.groups != 1:
            return f"grouped convolution (groups={m.groups})"
        if m.in_channels % 4:
            return f"in_channels={m.in_channels} is not a multiple of 4"
        return None
    if m.in_features % 4:
        return f"in_features={m.in_features} is not a multiple of 4"
    return None


def _as_groups(w: torch.Tensor) -> torch.Tensor:
    """The weight as rows of 4 consecutive reduction elements: [out, in] -> [out * in / 4, 4];
    [out, in, kh, kw] -> (out, kh, kw, in) order -> [out * kh * kw * in / 4, 4]."""
    if w.dim() == 4:
        w = w.permute(0, 2, 3, 1)
    return w.reshape(-1, 4)


def _from_groups(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 4:
        o, i, kh, kw = like.shape
        return g.reshape(o, kh, kw, i).permute(0, 3, 1, 2).contiguous()
    return g.reshape(like.shape)


def mask_2_4(weight: torch.Tensor) -> torch.Tensor:
    """Bool mask keeping the 2 largest |w| of every 4 consecutive input-channel weights of a Linear
    [out, in] or Conv2d [out, in, kh, kw] weight (ties: the lower index wins)."""
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.dim() not in (2, 4):
        raise ArgumentTypeError("mask_2_4: argument 'weight' must be a 2-D or 4-D float tensor, got "
                                + (f"shape {tuple(weight.shape)} {weight.dtype}" if isinstance(weight, torch.Tensor)
                                   else type(weight).__name__))
    if weight.shape[1] % 4:
        raise ArgumentValueError(f"mask_2_4: argument 'weight' must have a multiple of 4 input channels "
                                 f"(dim 1), got shape {tuple(weight.shape)}")
    g = _as_groups(weight.detach()).abs()
    order = torch.sort(g, dim=1, descending=True, stable=True).indices[:, :2]
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(1, order, True)
    return _from_groups(keep, weight)


def is_2_4(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive input-channel weights has at most 2 non-zeros."""
    return bool(((_as_groups(weight.detach()) != 0).sum(1) <= 2).all())


def _apply_mask(module: torch.nn.Module, args=None) -> None:
    """The forward pre-hook (a module-level function, so deepcopy / pickle keep it valid)."""
    w = module.weight
    if getattr(module, _VERSION, None) != w._version:
        with torch.no_grad():
            w.mul_(getattr(module, MASK))
        object.__setattr__(module, _VERSION, w._version)


def _is_pruned(m: torch.nn.Module) -> bool:
    return MASK in m._buffers


def prune_2_4(model: torch.nn.Module, criterion: str = "magnitude") -> dict:
    """Apply 2:4 sparsity masks to ``model`` in place (see the module docstring); returns
    ``{"pruned": [layer names], "skipped": {layer name: reason}}``."""
    if not isinstance(model, torch.nn.Module):
        raise ArgumentTypeError(f"prune_2_4: argument 'model' must be a torch.nn.Module, got {type(model).__name__}")
    if criterion not in CRITERIA_2_4:
        raise ArgumentValueError(f"prune_2_4: argument 'criterion' must be one of {CRITERIA_2_4}, got {criterion!r}")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    if not layers:
        raise ArgumentValueError("prune_2_4: argument 'model' has no Conv2d or Linear layer")
    already = [n for n, m in layers if _is_pruned(m)]
    if already:
        raise ArgumentValueError(f"prune_2_4: argument 'model' already has 2:4 masks (layer {already[0]!r}); "
                                 "call pyimgcls.pruning.remove_masks first")
    pruned, skipped = [], {}
    for name, m in layers:
        why = _reason_skipped(m)
        if why is not None:
            skipped[name] = why
            continue
        m.register_buffer(MASK, mask_2_4(m.weight))
        _apply_mask(m)
        m.register_forward_pre_hook(_apply_mask)
        pruned.append(name)
    return {"pruned": pruned, "skipped": skipped}


def apply_masks(model: torch.nn.Module) -> None:
    """Zero the pruned positions of every masked layer now (the hook does it lazily at the next forward)."""
    for m in model.modules():
        if _is_pruned(m):
            _apply_mask(m)


def remove_masks(model: torch.nn.Module) -> list[str]:
    """Bake the masks into the weights and remove the mask buffers and hooks (the state_dict then has
    the keys of the unpruned model); returns the names of the layers that had masks."""
    if not isinstance(model, torch.nn.Module):
        raise ArgumentTypeError(f"remove_masks: argument 'model' must be a torch.nn.Module, got "
                                f"{type(model).__name__}")
    done = []
    for name, m in model.named_modules():
        if not _is_pruned(m):
            continue
        with torch.no_grad():
            m.weight.mul_(m._buffers[MASK])
        del m._buffers[MASK]
        for key in [k for k, h in m._forward_pre_hooks.items() if h is _apply_mask]:
            del m._forward_pre_hooks[key]
        m.__dict__.pop(_VERSION, None)
        done.append(name)
    return done


def sparsity_report(model: torch.nn.Module) -> dict:
    """Per masked or 2:4-shaped layer: whether its weight is 2:4 now and its fraction of zeros."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and _reason_skipped(m) is None:
            w = m.weight.detach()
            out[name] = {"masked": _is_pruned(m), "is_2_4": is_2_4(w), "zeros": float((w == 0).float().mean())}
    return out


def recorded_2_4(meta: dict, what: str = "checkpoint") -> list[str] | None:
    """The layers a checkpoint's ``meta`` says hold 2:4 weights, or None. Files written by ``pyimgcls
    prune --2:4`` before ``meta["sparsity"]`` existed recorded it only in their last pruning step."""
    rec = meta.get("sparsity")
    if rec is None and meta.get("pruning"):
        rec = meta["pruning"][-1].get("sparsity")
    if not rec:
        return None
    if rec.get("pattern") != "2:4":
        raise ArgumentValueError(f"{what}: sparsity pattern {rec.get('pattern')!r} is not supported (only 2:4)")
    return list(rec["layers"])


def restore_2_4(model: torch.nn.Module, layers: list[str], masks: dict | None = None,
                what: str = "checkpoint") -> list[str]:
    """Put 2:4 masks back on ``layers`` of a model loaded from a 2:4 checkpoint (in place; the hooks of
    ``prune_2_4``). ``masks`` (layer name -> bool tensor, from ``masks_of``) gives them exactly, as a
    resumed run needs; without it each mask keeps the non-zeros of the layer's 2:4 weight (plus, where a
    group has fewer than 2, its largest zeros: still 2:4). A weight that is not 2:4 means the file and
    its record disagree: an error naming ``what``."""
    mods = dict(model.named_modules())
    for name in layers:
        m = mods.get(name)
        if not isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) or _reason_skipped(m) is not None:
            raise ArgumentValueError(f"{what}: records 2:4 weights in layer {name!r}, which the model has not "
                                     "(or cannot hold 2:4 there)")
        if _is_pruned(m):
            raise ArgumentValueError(f"{what}: layer {name!r} already has 2:4 masks")
        if masks is not None:
            mask = masks.get(name)
            if mask is None or tuple(mask.shape) != tuple(m.weight.shape) or mask.dtype != torch.bool:
                raise ArgumentValueError(f"{what}: no bool 2:4 mask of shape {tuple(m.weight.shape)} for layer "
                                         f"{name!r}")
            mask = mask.to(m.weight.device)
            if not is_2_4(mask):
                raise ArgumentValueError(f"{what}: the mask of layer {name!r} is not 2:4")
        else:
            if not is_2_4(m.weight):
                raise ArgumentValueError(f"{what}: layer {name!r} is recorded as 2:4 sparse but its weight "
                                         "has groups of 4 with more than 2 non-zeros")
            mask = mask_2_4(m.weight)
        m.register_buffer(MASK, mask.clone())
        _apply_mask(m)
        m.register_forward_pre_hook(_apply_mask)
    return list(layers)


def masks_of(model: torch.nn.Module) -> dict:
    """Layer name -> its 2:4 mask (bool tensor), for the training checkpoint."""
    return {n: m._buffers[MASK] for n, m in model.named_modules() if _is_pruned(m)}


def plain_state_dict(model: torch.nn.Module) -> dict:
    """``model.state_dict()`` with the pruned positions zeroed and without the mask buffers: the keys of
    the unpruned model, what every loader of our checkpoints expects."""
    apply_masks(model)
    suffix = "." + MASK
    return {k: v for k, v in model.state_dict().items() if not (k.endswith(suffix) or k == MASK)}
