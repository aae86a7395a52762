"""MixUp / CutMix on a batch (pyimgcls.data.mix): torchvision's formulas, probability targets, determinism."""
from __future__ import annotations

import pytest
import torch

from pyimgcls.data.augment import batch_generator
from pyimgcls.data.mix import mix_batch


def _batch(n=6, c=3, h=9, w=13, dtype=torch.float32):
    g = torch.Generator().manual_seed(123)
    return torch.rand(n, c, h, w, generator=g, dtype=dtype), torch.randint(0, 5, (n,), generator=g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixup_is_a_convex_combination_with_the_rolled_batch(dtype):
    x, y = _batch(dtype=dtype)
    xm, t, lam, kind = mix_batch(x, y, 5, 0.8, 0.0, batch_generator(0, 1, 2))
    assert kind == "mixup" and 0 <= lam <= 1 and t.dtype == dtype
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x.roll(1, 0))
    onehot = torch.nn.functional.one_hot(y, 5).to(dtype)
    torch.testing.assert_close(t, lam * onehot + (1 - lam) * onehot.roll(1, 0))
    torch.testing.assert_close(t.sum(1), torch.ones(6, dtype=dtype))


def test_cutmix_pastes_one_box_and_lam_is_its_complement():
    x, y = _batch()
    for step in range(20):
        xm, t, lam, kind = mix_batch(x, y, 5, 0.0, 1.0, batch_generator(0, 0, step))
        assert kind == "cutmix"
        pasted = (xm != x).any(dim=(0, 1))           # [H, W]: where some image changed
        from_rolled = (xm == x.roll(1, 0)).all(dim=(0, 1))
        assert bool(from_rolled[pasted].all())
        rows, cols = pasted.any(1).nonzero(), pasted.any(0).nonzero()
        if len(rows):
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert int(pasted.sum()) == int(box)          # one rectangle
        assert lam == pytest.approx(1 - float(pasted.sum()) / (9 * 13)) or not len(rows)
        onehot = torch.nn.functional.one_hot(y, 5).float()
        torch.testing.assert_close(t, lam * onehot + (1 - lam) * onehot.roll(1, 0))


def test_both_methods_alternate_and_runs_are_deterministic():
    x, y = _batch()
    kinds = {mix_batch(x, y, 5, 0.2, 1.0, batch_generator(7, 0, s))[3] for s in range(40)}
    assert kinds == {"mixup", "cutmix"}
    a = mix_batch(x, y, 5, 0.2, 1.0, batch_generator(7, 3, 4))
    b = mix_batch(x, y, 5, 0.2, 1.0, batch_generator(7, 3, 4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_lam_follows_beta_alpha_alpha():
    x, y = _batch()
    lams = torch.tensor([mix_batch(x, y, 5, 0.5, 0.0, batch_generator(1, 0, s))[2] for s in range(2000)])
    # Beta(0.5, 0.5): mean 1/2, variance 1/8
    assert abs(float(lams.mean()) - 0.5) < 0.03 and abs(float(lams.var()) - 0.125) < 0.015


def test_batch_of_one_and_bad_alphas():
    x, y = _batch(n=1)
    xm, t, lam, _ = mix_batch(x, y, 5, 1.0, 1.0, batch_generator(0, 0, 0))
    assert torch.equal(xm, x) and lam == 1.0 and torch.equal(t, torch.nn.functional.one_hot(y, 5).float())
    with pytest.raises(ValueError, match="alpha"):
        mix_batch(x, y, 5, 0.0, 0.0, batch_generator(0, 0, 0))
    with pytest.raises(ValueError, match="alpha"):
        mix_batch(x, y, 5, -1.0, 1.0, batch_generator(0, 0, 0))
