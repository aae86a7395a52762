"""RandAugment and random erasing in pyimgcls.data.augment: batched results against torchvision's
per-image ones (torchvision==0.28.0, requirements-dev.txt), determinism, statistics of the erased
rectangles, and the unchanged output of every earlier configuration."""
from __future__ import annotations

import hashlib
import importlib.util
import math
import sys
import types

import pytest
import torch

from pyimgcls.data.augment import (RANDAUGMENT_OPS, Augment, batch_generator, randaugment, randaugment_magnitudes,
                                   randaugment_op, randaugment_params, random_erasing, random_erasing_params)

SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
GEOMETRIC = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}


def _batch(n, c, h, w, dtype=torch.float32, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _clone(g: torch.Generator) -> torch.Generator:
    return torch.Generator().set_state(g.get_state())


# ---------------------------------------------------------------------------------- torchvision
@pytest.fixture(scope="module")
def tv():
    """torchvision.transforms.v2 (RandAugment, InterpolationMode, functional). A torchvision wheel built
    for another torch build cannot load its compiled ops and ``import torchvision`` then fails; the
    transforms used here are pure Python, so they are imported under an empty package object pointing
    at the installed sources (as tests/test_models.py does), and removed again afterwards."""
    before = set(sys.modules)
    try:
        import torchvision.transforms.v2 as v2
    except Exception:  # noqa: BLE001 - any failure of the full package import: retry with the sources only
        for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[key]
        spec = importlib.util.find_spec("torchvision")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("torchvision is not installed: pip install -r requirements-dev.txt")
        pkg = types.ModuleType("torchvision")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["torchvision"] = pkg
        import torchvision.transforms.v2 as v2
    yield v2
    for key in set(sys.modules) - before:  # leave no (stub) torchvision behind for later test files
        if key == "torchvision" or key.startswith("torchvision."):
            del sys.modules[key]


def _reference_op(tv, img, op, magnitude):
    """torchvision's RandAugment applying ``op`` at the signed ``magnitude`` to one [C, H, W] image, with
    RandAugment's defaults (nearest interpolation, fill None). This is the private method its forward()
    calls, so argument mapping (shear centre, int() translation, solarize bound) is torchvision's own."""
    ra = tv.RandAugment()
    return ra._apply_image_or_video_transform(img, op, magnitude, interpolation=ra.interpolation, fill=ra._fill)


def _assert_matches(out, ref, op):
    """Point and colour ops: the same float formula, so equal up to rounding (torchvision uses fused
    ``add_(alpha=)`` and in-place forms; 1e-6 covers float32 and float64). Geometric ops: both sample the
    same nearest pixel from grids computed the same way, so equal except where a sampling coordinate
    lies within rounding of a pixel boundary; at most 0.5 % of the values may differ (none did at any magnitude)."""
    if op in GEOMETRIC:
        differ = ~torch.isclose(out, ref, atol=1e-6, rtol=0)
        assert differ.double().mean() <= 0.005, f"{op}: {int(differ.sum())} of {differ.numel()} values differ"
    else:
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=0, msg=lambda m: f"{op}: {m}")


def test_magnitude_tables_match_torchvision(tv):
    for magnitude in (0, 9, 17, 30):
        ours = randaugment_magnitudes(magnitude, 17, 23)
        for i, op in enumerate(RANDAUGMENT_OPS):
            table_fn, signed = tv.RandAugment._AUGMENTATION_SPACE[op]
            table = table_fn(31, 17, 23)
            assert (op in SIGNED) == signed, op
            assert float(ours[i]) == (0.0 if table is None else float(table[magnitude])), (op, magnitude)
    assert list(tv.RandAugment._AUGMENTATION_SPACE) == list(RANDAUGMENT_OPS)


@pytest.mark.parametrize("op", RANDAUGMENT_OPS)
@pytest.mark.parametrize("channels,dtype", [(1, torch.float32), (3, torch.float32), (3, torch.float64)])
def test_each_op_matches_torchvision_per_image(tv, op, channels, dtype):
    """Every op, batched over images with mixed signs, against torchvision on each image; odd size."""
    x = _batch(6, channels, 17, 23, dtype)
    # A few images with a constant channel (autocontrast / equalize edge cases) and a low-contrast one.
    x[1, 0] = 0.25
    x[2] = x[2] * 0.1 + 0.45
    for magnitude in (9, 30):
        unsigned = float(randaugment_magnitudes(magnitude, 17, 23)[RANDAUGMENT_OPS.index(op)])
        signs = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0]) if op in SIGNED else torch.ones(6)
        out = randaugment_op(x, op, signs * unsigned)
        assert out.dtype == dtype and out.shape == x.shape
        ref = torch.stack([_reference_op(tv, x[i], op, float(signs[i]) * unsigned) for i in range(6)])
        _assert_matches(out, ref, op)


def test_equalize_on_larger_images_matches_torchvision(tv):
    """Equalize's lookup table rounds by step // 2 only once step = (non-max pixels) // 255 >= 2, i.e. from
    about 510 pixels per channel: 40 x 48 images, on the uint8 grid, with skewed and few-level histograms."""
    x = torch.randint(0, 256, (5, 3, 40, 48), generator=torch.Generator().manual_seed(2)).double() / 255
    x[1] = x[1] ** 3
    x[2] = (x[2] * 4).floor() / 4
    x[3, 1] = 0.5
    for dtype in (torch.float32, torch.float64):
        xd = x.to(dtype)
        out = randaugment_op(xd, "Equalize", 0.0)
        assert torch.equal(out, torch.stack([_reference_op(tv, img, "Equalize", 0.0) for img in xd]))


@pytest.mark.parametrize("size", [(17, 23), (2, 5), (1, 1)])
def test_randaugment_matches_torchvision_sequence(tv, size):
    """The whole batched RandAugment (2 ops per image, geometric ones sharing a warp) equals applying each
    image's drawn ops one after another with torchvision; tiny sizes exercise degenerate cases."""
    h, w = size
    for channels in (1, 3):
        x = _batch(40, channels, h, w, seed=channels)
        g = torch.Generator().manual_seed(11)
        codes, negate = randaugment_params(40, 2, _clone(g))
        out = randaugment(x, g, num_ops=2, magnitude=9)
        table = randaugment_magnitudes(9, h, w)
        for i in range(40):
            img = x[i]
            for slot in range(2):
                op = RANDAUGMENT_OPS[int(codes[slot, i])]
                mag = float(table[int(codes[slot, i])])
                img = _reference_op(tv, img, op, -mag if op in SIGNED and negate[slot, i] else mag)
            _assert_matches(out[i], img, "Rotate")  # any geometric op may be among the two


def test_restricted_op_list_and_sign_draws():
    g = torch.Generator().manual_seed(0)
    codes, negate = randaugment_params(4000, 3, g, ops=("Rotate", "Equalize"))
    assert set(codes.unique().tolist()) == {RANDAUGMENT_OPS.index("Rotate"), RANDAUGMENT_OPS.index("Equalize")}
    assert abs(negate.double().mean().item() - 0.5) < 0.02
    codes, _ = randaugment_params(14000, 1, g)
    counts = torch.bincount(codes[0], minlength=len(RANDAUGMENT_OPS)).double()
    assert (counts - 1000).abs().max() < 5 * math.sqrt(1000)  # uniform over the 14 ops


# --------------------------------------------------------------------------------- random erasing
def test_random_erasing_rectangles_and_probability():
    """fill = -1 (outside [0, 1]) marks erased pixels; each erased image holds one rectangle whose
    area fraction and aspect ratio are torchvision's ranges, up to the rounding of its sides to whole
    pixels (each side +-0.5); about p of the images are erased; the others are untouched."""
    n, h, w, p = 1500, 30, 36, 0.4
    x = _batch(n, 1, h, w)
    out = random_erasing(x, torch.Generator().manual_seed(5), p, fill=-1.0)
    erased = out == -1
    hit = erased.flatten(1).any(1)
    assert abs(hit.double().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(out[~hit], x[~hit])
    assert torch.equal(out[~erased], x[~erased])
    rows, cols = erased[hit, 0].any(2), erased[hit, 0].any(1)
    eh, ew = rows.sum(1).double(), cols.sum(1).double()
    area = erased[hit].flatten(1).sum(1).double()
    assert torch.equal(area, eh * ew)  # a full rectangle, not a ragged region
    slack = (0.5 * (eh + ew) + 0.25) / (h * w)
    frac = area / (h * w)
    assert bool(((frac >= 0.02 - slack) & (frac <= 0.33 + slack)).all())
    assert bool(((eh < h) & (ew < w)).all())
    assert bool((((eh + 0.5) / (ew - 0.5) >= 0.3) & ((eh - 0.5) / (ew + 0.5) <= 3.3)).all())
    # The rectangles cover the whole range: small and large areas, tall and wide shapes, all positions.
    assert frac.min() < 0.03 and frac.max() > 0.3 and (eh / ew).min() < 0.4 and (eh / ew).max() > 2.5
    first_row = rows.double().argmax(1)
    assert first_row.min() == 0 and (first_row + eh).max() == h


def test_random_erasing_params_first_fitting_candidate():
    """On a 1 x 1 image a candidate fits only with a side rounded to 0, so nothing is erased there; on
    32 x 32 some candidate always fits and every rectangle lies inside; p = 0 and p = 1 are exact."""
    g = torch.Generator().manual_seed(0)
    erase, top, left, eh, ew = random_erasing_params(500, 1, 1, 1.0, g)
    assert bool(((eh == 0) | (ew == 0) | ~erase).all())
    erase, top, left, eh, ew = random_erasing_params(500, 32, 32, 1.0, g)
    assert bool(erase.all()) and bool((top + eh <= 32).all()) and bool((left + ew <= 32).all())
    assert not random_erasing_params(500, 32, 32, 0.0, g)[0].any()


def test_random_erasing_fill_per_channel():
    x = _batch(64, 3, 17, 23)
    fill = torch.tensor([0.485, 0.456, 0.406])
    out = random_erasing(x, torch.Generator().manual_seed(1), 1.0, fill=fill)
    changed = (out != x).any(1)
    assert changed.flatten(1).any(1).float().mean() > 0.9
    for ch in range(3):
        assert bool((out[:, ch][changed] == fill[ch]).all())
    zero = random_erasing(x, torch.Generator().manual_seed(1), 1.0)
    assert torch.equal(zero == 0, (out == fill.view(1, 3, 1, 1)) & (x != 0))


# ----------------------------------------------------------------------------------------- Augment
FULL = dict(crop_padding=2, hflip=True, rotation=10, brightness=0.2, contrast=0.2, randaugment_ops=2,
            randaugment_magnitude=9, random_erasing=0.5)


def test_new_features_off_are_bit_identical_to_before():
    """sha256 of the output before RandAugment / random erasing existed (the augment.py of commit 4f189be,
    run once on x86-64 CPU), for float32 and float64; the new fields at their defaults draw nothing."""
    expected = {torch.float32: "38f0ad05a19b59104d202590f4f1215548209eb669eae27c23b44756a3f74d12",
                torch.float64: "6e3df7a4ff0dfd9ec76542932d21ba6fcd9ac47d5be92213d206024d0d38759b"}
    for dtype, digest in expected.items():
        x = torch.rand(8, 3, 17, 23, generator=torch.Generator().manual_seed(123), dtype=torch.float64).to(dtype)
        y = Augment(crop_padding=2, rotation=10, brightness=.2, contrast=.2)(x, torch.Generator().manual_seed(0))
        assert hashlib.sha256(y.contiguous().numpy().tobytes()).hexdigest() == digest, dtype


def test_augment_is_deterministic_under_seed():
    aug = Augment(**FULL)
    x = _batch(8, 3, 16, 16)
    a = aug(x, batch_generator(0, 1, 5))
    assert torch.equal(a, aug(x, batch_generator(0, 1, 5)))
    assert not torch.equal(a, aug(x, batch_generator(0, 1, 6)))
    assert not torch.equal(a, aug(x, batch_generator(1, 1, 5)))


def test_augment_order_geometric_randaugment_jitter_erasing():
    """Augment draws geometric, RandAugment, jitter, erasing numbers in that order from one generator."""
    x = _batch(12, 3, 16, 16)
    geo = Augment(crop_padding=2, hflip=True)
    full = Augment(crop_padding=2, hflip=True, brightness=0.3, randaugment_ops=2, random_erasing=0.7)
    g = torch.Generator().manual_seed(3)
    out = full(x, _clone(g), erase_fill=torch.tensor([0.5, 0.5, 0.5]))
    y = geo(x, g)  # clamps, which is a no-op on the warped batch in [0, 1]
    y = randaugment(y, g, 2, 9)
    b = 1 + (torch.rand(12, 1, 1, 1, generator=g) * 2 - 1) * 0.3
    y = (y * b).clamp(0, 1)
    y = random_erasing(y, g, 0.7, torch.tensor([0.5, 0.5, 0.5]))
    assert torch.equal(out, y)


@pytest.mark.parametrize("shape", [(1, 1, 17, 23), (1, 3, 17, 23), (5, 1, 28, 28), (7, 3, 9, 31)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_augment_shapes_and_dtypes(shape, dtype):
    x = _batch(*shape, dtype=dtype)
    out = Augment(**FULL)(x, batch_generator(0, 0, 0))
    assert out.shape == x.shape and out.dtype == dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out, Augment(**FULL)(x, batch_generator(0, 0, 0)))


def test_augment_is_batched():
    """The number of tensor ops does not grow with the batch (no per-image Python loop). Batches this
    large choose every op in every slot, so the per-op groups are the same set for both."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    aug = Augment(**FULL)
    counts = []
    for n in (300, 900):
        x = _batch(n, 3, 5, 5)
        Count.n = 0
        with Count():
            aug(x, batch_generator(0, 0, 0))
        counts.append(Count.n)
    assert counts[0] == counts[1]


def test_enabled_describe_and_validation():
    assert not Augment().enabled and Augment().describe() == "none"
    assert Augment(randaugment_ops=2).enabled and Augment(random_erasing=0.25).enabled
    text = Augment(**FULL).describe()
    assert "randaugment=2 ops at magnitude 9/30" in text and "random_erasing=0.5" in text
    assert "randaugment" not in Augment(crop_padding=2).describe()
    for field, bad in [("randaugment_ops", -1), ("randaugment_ops", 1.5), ("randaugment_magnitude", 31),
                       ("randaugment_magnitude", -1), ("random_erasing", 1.5), ("random_erasing", -0.1)]:
        with pytest.raises(ValueError, match=field):
            Augment(**{field: bad})
    aug = Augment()
    aug.random_erasing = 2.0  # set after construction, as the training loop sets fields
    with pytest.raises(ValueError, match="random_erasing"):
        aug(_batch(2, 1, 8, 8), batch_generator(0, 0, 0))
