"""Batched data augmentation on the training device: whole-batch tensor ops, no per-image loop.

One affine warp per batch (``affine_grid`` + ``grid_sample``) does random crop-with-padding (an
integer translation of up to ``crop_padding`` pixels, zero fill, as a padded crop), horizontal flip
(x scale -1) and a small rotation at once; then brightness/contrast jitter and normalisation.

Random numbers come from an explicit ``torch.Generator`` seeded from (seed, epoch, step, rank), drawn
on the CPU and moved to the device, so a batch's augmentation is identical on every run, on any
device, and after a resume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def batch_generator(seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, epoch, step, rank)."""
    mixed = (seed * 1_000_003 + epoch * 10_007 + step * 101 + rank) % (2 ** 63 - 1)
    return torch.Generator().manual_seed(mixed)


@dataclass
class Augment:
    """``crop_padding`` pixels, ``hflip`` probability 0.5 when true, rotation uniform in
    [-rotation, rotation] degrees, brightness factor in [1-b, 1+b], contrast factor in [1-c, 1+c]."""
    crop_padding: int = 0
    hflip: bool = False
    rotation: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0

    @property
    def geometric(self) -> bool:
        return self.crop_padding > 0 or self.hflip or self.rotation > 0

    @property
    def enabled(self) -> bool:
        return self.geometric or self.brightness > 0 or self.contrast > 0

    def describe(self) -> str:
        if not self.enabled:
            return "none"
        return (f"crop_padding={self.crop_padding}, hflip={self.hflip}, rotation={self.rotation:g}deg, "
                f"brightness={self.brightness:g}, contrast={self.contrast:g}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x: float [N, C, H, W] in [0, 1] (before normalisation) -> augmented batch, same shape."""
        if not self.enabled or x.shape[0] == 0:
            return x
        n, _, h, w = x.shape
        dev, dt = x.device, x.dtype
        if self.geometric:
            angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(self.rotation)
            flip = (torch.rand(n, generator=generator) < 0.5) if self.hflip else torch.zeros(n, dtype=torch.bool)
            p = self.crop_padding
            # Integer shifts of the crop window, in normalised coordinates (2 / size per pixel).
            tx = torch.randint(-p, p + 1, (n,), generator=generator).float() * (2.0 / w)
            ty = torch.randint(-p, p + 1, (n,), generator=generator).float() * (2.0 / h)
            sx = torch.where(flip, -1.0, 1.0)
            cos, sin = torch.cos(angle), torch.sin(angle)
            theta = torch.stack([torch.stack([cos * sx, -sin, tx], 1),
                                 torch.stack([sin * sx, cos, ty], 1)], 1)       # [N, 2, 3]
            grid = F.affine_grid(theta.to(device=dev, dtype=dt), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.brightness > 0:
            b = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * self.brightness
            x = x * b.to(device=dev, dtype=dt)
        if self.contrast > 0:
            c = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * self.contrast
            m = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - m) * c.to(device=dev, dtype=dt) + m
        return x.clamp(0.0, 1.0)


def standard_augment(dataset_name: str, image_size: int, hflip_ok: bool) -> Augment:
    """``--augment standard``: a padded random crop, flips only where they keep the label, a small
    rotation for handwriting, mild colour jitter.

    digits / mnist: pad 2 px, no flip, +-10 deg, brightness/contrast 0.2.
    fashion-mnist, cifar10, imagefolder, synthetic: pad size/8 (4 at 32x32), flip, no rotation,
    brightness/contrast 0.2."""
    handwriting = dataset_name in ("digits", "mnist")
    pad = max(1, image_size // 16) if handwriting else max(1, image_size // 8)
    return Augment(crop_padding=pad, hflip=hflip_ok and not handwriting,
                   rotation=10.0 if handwriting else 0.0, brightness=0.2, contrast=0.2)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel; mean/std are [C] tensors on x's device."""
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
