"""MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a whole batch, as torchvision's
``transforms.v2.MixUp`` / ``CutMix``: each image is paired with the next one in the batch (a roll by
one), the mixing weight ``lam`` is drawn once per batch from Beta(alpha, alpha), and the targets
become class probabilities [N, num_classes] for a cross-entropy with probability targets (label
smoothing, if any, is then the loss's job, as with ``F.cross_entropy``).

MixUp: x = lam x + (1 - lam) x_rolled. CutMix: a box of area (1 - lam) H W, centred uniformly at
random and clipped to the image, is pasted from x_rolled; lam is then the exact unpasted fraction.
With both enabled, each batch takes one of the two with probability 1/2 (torchvision's RandomChoice).
Random numbers come from the batch's CPU generator (see ``augment.batch_generator``), so a batch mixes
the same way on any device and after a resume.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def _beta(alpha: float, generator: torch.Generator) -> float:
    # torch's Beta sampler takes no generator: seed numpy's from this batch's stream instead.
    seed = int(torch.randint(0, 2 ** 62, (), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup_alpha: float, cutmix_alpha: float,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float, str]:
    """x [N, C, H, W], y [N] class indices -> (mixed x, probability targets [N, num_classes] in x's
    floating dtype, lam, "mixup" | "cutmix"). An alpha of 0 disables that method; at least one must be
    positive. A batch of one image is returned with one-hot targets (it has no partner)."""
    if mixup_alpha < 0 or cutmix_alpha < 0 or not (mixup_alpha > 0 or cutmix_alpha > 0):
        raise ValueError(f"mix_batch: mixup_alpha and cutmix_alpha must be >= 0 and one of them > 0, got "
                         f"{mixup_alpha} and {cutmix_alpha}")
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha == 0 or bool(torch.rand((), generator=generator) < 0.5))
    lam = _beta(cutmix_alpha if use_cutmix else mixup_alpha, generator)
    onehot = torch.nn.functional.one_hot(y, num_classes).to(x.dtype)
    if x.shape[0] < 2:
        return x, onehot, 1.0, "cutmix" if use_cutmix else "mixup"
    x_rolled = x.roll(1, dims=0)
    if use_cutmix:
        h, w = x.shape[-2:]
        cx, cy = int(torch.randint(w, (), generator=generator)), int(torch.randint(h, (), generator=generator))
        half = 0.5 * math.sqrt(1.0 - lam)   # the box's half sides, as torchvision rounds them
        hw, hh = int(half * w), int(half * h)
        y0, y1 = max(cy - hh, 0), min(cy + hh, h)
        x0, x1 = max(cx - hw, 0), min(cx + hw, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x_rolled[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = x_rolled.mul(1.0 - lam).add_(x, alpha=lam)
    targets = onehot.roll(1, dims=0).mul_(1.0 - lam).add_(onehot, alpha=lam)
    return x, targets, lam, "cutmix" if use_cutmix else "mixup"
