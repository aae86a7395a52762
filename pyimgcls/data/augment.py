"""Batched data augmentation on the training device: whole-batch tensor ops, no per-image loop.

One affine warp per batch (``affine_grid`` + ``grid_sample``) does random crop-with-padding (an
integer translation of up to ``crop_padding`` pixels, zero fill, as a padded crop), horizontal flip
(x scale -1) and a small rotation at once; then RandAugment (optional), brightness/contrast jitter,
random erasing (optional) and, outside this module's ``Augment``, normalisation.

RandAugment (Cubuk et al. 2020) follows ``torchvision.transforms.v2.RandAugment`` on float images: the
same 14 ops, magnitude tables (``num_magnitude_bins=31``), random signs, nearest interpolation and
zero fill, with each op's formula taken from torchvision's float kernels. Every image draws its own
ops; per op slot, each op runs once on the images that chose it, and all geometric ops of a slot
share one warp. Random erasing (Zhong et al. 2017) follows ``torchvision.transforms.v2.RandomErasing``
(scale 0.02-0.33, ratio 0.3-3.3, up to 10 attempts, otherwise untouched), vectorised over images.

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
    [-rotation, rotation] degrees, brightness factor in [1-b, 1+b], contrast factor in [1-c, 1+c];
    ``randaugment_ops`` RandAugment ops per image (0 = off; torchvision's ``num_ops``, 2 is its default)
    at ``randaugment_magnitude`` (0..30); random erasing of one rectangle per image with probability
    ``random_erasing``. Features that are off draw no random numbers, so enabling nothing new keeps
    every earlier run's batches bit-identical."""
    crop_padding: int = 0
    hflip: bool = False
    rotation: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    randaugment_ops: int = 0
    randaugment_magnitude: int = 9
    random_erasing: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ValueError naming the offending field. Also run on every call, because callers set fields
        after construction."""
        ops, mag, p = self.randaugment_ops, self.randaugment_magnitude, self.random_erasing
        if isinstance(ops, bool) or not isinstance(ops, int) or ops < 0:
            raise ValueError(f"randaugment_ops must be an integer >= 0, got {ops!r}")
        if isinstance(mag, bool) or not isinstance(mag, int) or not 0 <= mag < RANDAUGMENT_BINS:
            raise ValueError(f"randaugment_magnitude must be an integer in 0..{RANDAUGMENT_BINS - 1}, got {mag!r}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"random_erasing must be a probability in [0, 1], got {p!r}")

    @property
    def geometric(self) -> bool:
        return self.crop_padding > 0 or self.hflip or self.rotation > 0

    @property
    def enabled(self) -> bool:
        return (self.geometric or self.brightness > 0 or self.contrast > 0 or self.randaugment_ops > 0
                or self.random_erasing > 0)

    def describe(self) -> str:
        if not self.enabled:
            return "none"
        # The new parts are appended only when on, so logs of runs without them read as before.
        text = (f"crop_padding={self.crop_padding}, hflip={self.hflip}, rotation={self.rotation:g}deg, "
                f"brightness={self.brightness:g}, contrast={self.contrast:g}")
        if self.randaugment_ops > 0:
            text += f", randaugment={self.randaugment_ops} ops at magnitude {self.randaugment_magnitude}/30"
        if self.random_erasing > 0:
            text += f", random_erasing={self.random_erasing:g}"
        return text

    def __call__(self, x: torch.Tensor, generator: torch.Generator,
                 erase_fill: torch.Tensor | float | None = None) -> torch.Tensor:
        """x: float [N, C, H, W] in [0, 1] (before normalisation) -> augmented batch, same shape.

        ``erase_fill``: the value random erasing writes, a [C] tensor or a number (default 0). torchvision
        erases with 0 after normalisation; this runs before it, so pass the normalisation mean to get
        that same result (the rectangle normalises to 0)."""
        self.validate()
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
        if self.randaugment_ops > 0:
            x = randaugment(x, generator, self.randaugment_ops, self.randaugment_magnitude)
        if self.brightness > 0:
            b = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * self.brightness
            x = x * b.to(device=dev, dtype=dt)
        if self.contrast > 0:
            c = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * self.contrast
            m = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - m) * c.to(device=dev, dtype=dt) + m
        x = x.clamp(0.0, 1.0)
        if self.random_erasing > 0:
            # After the clamp, so the rectangle holds exactly erase_fill (which normalises to 0).
            x = random_erasing(x, generator, self.random_erasing, erase_fill)
        return x


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


# ------------------------------------------------------------------------------------ RandAugment
RANDAUGMENT_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                   "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
RANDAUGMENT_BINS = 31
_SIGNED = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
                     "Sharpness"})
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def randaugment_magnitudes(magnitude: int, height: int, width: int) -> torch.Tensor:
    """Unsigned magnitude of every op in ``RANDAUGMENT_OPS`` at bin ``magnitude``, float64 [14].

    The tables are torchvision's v2 ones, built the same way (float32 ``linspace``), so the values are
    the very numbers torchvision uses: shear 0..0.3, translate 0..150/331 of the size in pixels, rotate
    0..30 degrees, enhance factors 1 +- 0..0.9, posterize 8..4 bits, solarize threshold 1..0."""
    b, m = RANDAUGMENT_BINS, magnitude
    table = {
        "ShearX": torch.linspace(0.0, 0.3, b)[m], "ShearY": torch.linspace(0.0, 0.3, b)[m],
        "TranslateX": torch.linspace(0.0, 150.0 / 331.0 * width, b)[m],
        "TranslateY": torch.linspace(0.0, 150.0 / 331.0 * height, b)[m],
        "Rotate": torch.linspace(0.0, 30.0, b)[m],
        "Brightness": torch.linspace(0.0, 0.9, b)[m], "Color": torch.linspace(0.0, 0.9, b)[m],
        "Contrast": torch.linspace(0.0, 0.9, b)[m], "Sharpness": torch.linspace(0.0, 0.9, b)[m],
        "Posterize": (8 - (torch.arange(b) / ((b - 1) / 4)).round().int())[m],
        "Solarize": torch.linspace(1.0, 0.0, b)[m],
    }
    return torch.tensor([float(table[op]) if op in table else 0.0 for op in RANDAUGMENT_OPS], dtype=torch.float64)


def _inverse_affine(*, angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, shear_x: torch.Tensor,
                    shear_y: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_get_inverse_affine_matrix`` (scale 1) on float64 tensors of per-image parameters:
    [N, 2, 3] maps output to input pixel coordinates, origin at the image centre, degrees for angles."""
    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear_x), torch.deg2rad(shear_y)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = m0 * (-cx - tx) + m1 * (-cy - ty) + cx
    m5 = m3 * (-cx - tx) + m4 * (-cy - ty) + cy
    return torch.stack([torch.stack([m0, m1, m2], -1), torch.stack([m3, m4, m5], -1)], -2)


def _geometric_theta(codes: torch.Tensor, mag: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-image inverse matrices for geometric ops (``codes`` index ``RANDAUGMENT_OPS``, ``mag`` signed),
    with the arguments torchvision's RandAugment passes to ``F.affine`` / ``F.rotate``."""
    name = {op: codes == RANDAUGMENT_OPS.index(op) for op in _GEOMETRIC}
    zero = torch.zeros_like(mag)
    shear_deg = torch.rad2deg(torch.atan(mag))
    # Shears turn about the top-left corner (torchvision passes center=[0, 0]); the rest about the centre.
    corner = name["ShearX"] | name["ShearY"]
    # Translations are whole pixels, truncated as int() does; rotate() maps its angle into [0, 360) and
    # then hands affine the negated angle.
    return _inverse_affine(
        angle=torch.where(name["Rotate"], -torch.remainder(mag, 360.0), zero),
        tx=torch.where(name["TranslateX"], torch.trunc(mag), zero),
        ty=torch.where(name["TranslateY"], torch.trunc(mag), zero),
        shear_x=torch.where(name["ShearX"], shear_deg, zero), shear_y=torch.where(name["ShearY"], shear_deg, zero),
        cx=torch.where(corner, -0.5 * w, zero), cy=torch.where(corner, -0.5 * h, zero))


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp with zero fill by pixel-space inverse matrices [N, 2, 3], built as
    torchvision's ``_affine_grid`` does (theta applied to centred pixel coordinates, then normalised)."""
    n, _, h, w = x.shape
    dev, dt = x.device, x.dtype
    base = torch.empty(h, w, 3, dtype=dt, device=dev)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=dev))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=dev).unsqueeze(-1))
    base[..., 2].fill_(1)
    scaled = theta.to(device=dev, dtype=dt).transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], dtype=dt, device=dev)
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(scaled).view(n, h, w, 2)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma as torchvision computes it, [N, 1, H, W]; 1-channel images are their own gray."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (r * 0.2989 + g * 0.587 + b * 0.114).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (x * ratio + other * (1.0 - ratio)).clamp(0.0, 1.0)


def _sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with a 3x3 smoothing of the interior (border pixels kept), as torchvision / PIL do."""
    c, h, w = x.shape[1:]
    if h <= 2 or w <= 2:
        return x
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], dtype=x.dtype, device=x.device) / 13.0
    blurred = F.conv2d(x, k.expand(c, 1, 3, 3), groups=c)
    inner = x[..., 1:-1, 1:-1]
    out = x.clone()
    out[..., 1:-1, 1:-1] = inner + (blurred - inner) * (1.0 - factor)
    return out.clamp(0.0, 1.0)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each image channel to [0, 1]; constant channels are left as they are."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    flat = hi == lo
    return ((x - torch.where(flat, 0.0, lo)) / torch.where(flat, 1.0, hi - lo)).clamp(0.0, 1.0)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel histogram equalisation on the 256-level quantised image, with PIL's lookup
    table as in torchvision's batched kernel (also its float -> uint8 rounding: x * (256 - 1e-3),
    truncated); channels whose pixels all but one value share (step 0) are only quantised."""
    n, c, h, w = x.shape
    # The clamp only guards the uint8 cast against a bilinear warp's 1 + 1 ulp; [0, 1] input is unchanged.
    q = x.clamp(0.0, 1.0).mul(255 + 1.0 - 1e-3).to(torch.uint8).reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, q, torch.ones_like(q))
    cum = hist.cumsum(1)
    # The last non-empty bin is the first one where the cumulative count reaches its maximum.
    non_max = h * w - hist.gather(1, cum.argmax(1, keepdim=True))
    step = torch.div(non_max, 255, rounding_mode="floor")
    lut = torch.div(cum[:, :-1] + torch.div(step, 2, rounding_mode="floor"), step.clamp(min=1),
                    rounding_mode="floor").clamp(0, 255)
    lut = torch.cat([torch.zeros_like(lut[:, :1]), lut], 1)
    out = torch.where(step != 0, lut.gather(1, q), q)
    return (out.to(x.dtype) * (1.0 / 255)).reshape(n, c, h, w)


def randaugment_op(x: torch.Tensor, op: str, magnitude: torch.Tensor | float) -> torch.Tensor:
    """One RandAugment op on every image of x (float [N, C, H, W] in [0, 1]) at its signed magnitude
    (``magnitude``: a number or [N], in the op's own units as from ``randaugment_magnitudes``)."""
    n, _, h, w = x.shape
    mag = torch.as_tensor(magnitude, dtype=torch.float64).expand(n)
    if op in _GEOMETRIC:
        return _warp(x, _geometric_theta(torch.full((n,), RANDAUGMENT_OPS.index(op)), mag, h, w))
    per_image = mag.to(device=x.device, dtype=x.dtype).view(n, 1, 1, 1)
    if op == "Identity":
        return x
    if op == "Brightness":
        return (x * (1.0 + per_image)).clamp(0.0, 1.0)
    if op == "Color":
        # Saturation has nothing to act on in a grayscale image (torchvision and PIL return it as is).
        return x if x.shape[1] == 1 else _blend(x, _gray(x), 1.0 + per_image)
    if op == "Contrast":
        return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), 1.0 + per_image)
    if op == "Sharpness":
        return _sharpness(x, 1.0 + per_image)
    if op == "Posterize":
        # Keep ``bits`` bits of the 8-bit value: floor onto 2**bits levels, as torchvision's float kernel.
        levels = torch.pow(2.0, torch.trunc(per_image))
        return torch.minimum(torch.floor(x * levels), levels - 1) / levels
    if op == "Solarize":
        return torch.where(x >= per_image, 1.0 - x, x)
    if op == "AutoContrast":
        return _autocontrast(x)
    if op == "Equalize":
        return _equalize(x)
    raise ValueError(f"unknown RandAugment op {op!r}; expected one of {', '.join(RANDAUGMENT_OPS)}")


def randaugment_params(n: int, num_ops: int, generator: torch.Generator,
                       ops: tuple[str, ...] = RANDAUGMENT_OPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and op slot: the op (index into ``RANDAUGMENT_OPS``) and whether a signed op flips its
    sign; both [num_ops, N] on the CPU. ``ops`` restricts the choice (tests; ablations)."""
    unknown = [op for op in ops if op not in RANDAUGMENT_OPS]
    if unknown or not ops:
        raise ValueError(f"RandAugment ops must be a non-empty subset of {', '.join(RANDAUGMENT_OPS)}; got {ops!r}")
    allowed = torch.tensor([RANDAUGMENT_OPS.index(op) for op in ops])
    codes = allowed[torch.randint(len(ops), (num_ops, n), generator=generator)]
    negate = torch.randint(2, (num_ops, n), generator=generator).bool()
    return codes, negate


def randaugment(x: torch.Tensor, generator: torch.Generator, num_ops: int = 2, magnitude: int = 9,
                ops: tuple[str, ...] = RANDAUGMENT_OPS) -> torch.Tensor:
    """RandAugment on a float batch in [0, 1]: ``num_ops`` ops per image, each drawn uniformly from
    ``ops``, at bin ``magnitude`` of 31, signed ops negated with probability 1/2."""
    n, _, h, w = x.shape
    codes, negate = randaugment_params(n, num_ops, generator, ops)
    table = randaugment_magnitudes(magnitude, h, w)
    signed = torch.tensor([op in _SIGNED for op in RANDAUGMENT_OPS])
    mags = table[codes] * torch.where(negate & signed[codes], -1.0, 1.0)
    geometric = torch.tensor([op in _GEOMETRIC for op in RANDAUGMENT_OPS])
    for slot in range(num_ops):
        code, mag = codes[slot], mags[slot]
        # Index sets are computed on the CPU, where the draws live, so the device never has to sync.
        groups = [(None, geometric[code].nonzero().squeeze(1))]
        groups += [(op, (code == k).nonzero().squeeze(1)) for k, op in enumerate(RANDAUGMENT_OPS)
                   if op not in _GEOMETRIC and op != "Identity"]
        # One copy per slot, written in place: the ops read x, so their order within the slot is free.
        out = x.clone()
        for op, idx in groups:
            if idx.numel() == 0:
                continue
            idx_dev = idx.to(x.device)
            sub = x.index_select(0, idx_dev)
            if op is None:
                # All geometric ops of the slot in one warp, each image with its own matrix.
                sub = _warp(sub, _geometric_theta(code[idx], mag[idx], h, w))
            else:
                sub = randaugment_op(sub, op, mag[idx])
            out.index_copy_(0, idx_dev, sub)
        x = out
    return x


# --------------------------------------------------------------------------------- random erasing
def random_erasing_params(n: int, height: int, width: int, p: float, generator: torch.Generator,
                          scale: tuple[float, float] = (0.02, 0.33), ratio: tuple[float, float] = (0.3, 3.3)):
    """torchvision's RandomErasing parameters for N images at once: (erase [N] bool, top, left, h, w [N]
    long), all on the CPU. Each image is erased with probability p; its rectangle is the first of 10
    candidates (area fraction uniform in ``scale``, log aspect ratio uniform in log ``ratio``, sides
    rounded to whole pixels) whose sides are both shorter than the image's, at a uniform position; with
    none fitting, the image is kept."""
    area = height * width
    erase = torch.rand(n, generator=generator, dtype=torch.float64) < p
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, 10, generator=generator, dtype=torch.float64))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, 10, generator=generator, dtype=torch.float64))
    eh = torch.sqrt(target * aspect).round().long()
    ew = torch.sqrt(target / aspect).round().long()
    fits = (eh < height) & (ew < width)
    first = fits.long().argmax(1, keepdim=True)
    erase &= fits.any(1)
    eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)
    pos = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    # floor(u * count) is uniform on 0..count-1, as randint(0, size - side + 1).
    top = (pos[:, 0] * (height - eh + 1)).floor().long()
    left = (pos[:, 1] * (width - ew + 1)).floor().long()
    return erase, top, left, eh, ew


def random_erasing(x: torch.Tensor, generator: torch.Generator, p: float,
                   fill: torch.Tensor | float | None = None) -> torch.Tensor:
    """Erase one random rectangle per image with probability p, writing ``fill`` ([C] or a number,
    default 0) there; one mask for the whole batch."""
    n, c, h, w = x.shape
    dev, dt = x.device, x.dtype
    erase, top, left, eh, ew = (t.to(dev).view(n, 1, 1) for t in random_erasing_params(n, h, w, p, generator))
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    mask = erase & (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
    value = torch.as_tensor(0.0 if fill is None else fill, dtype=dt).to(dev)
    value = value.reshape(1, -1, 1, 1) if value.numel() > 1 else value.reshape(1, 1, 1, 1)
    return torch.where(mask.unsqueeze(1), value, x)
