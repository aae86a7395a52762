"""Calibration observers: what range of a float activation the uint8 grid should cover.

Each observer sees every calibration batch's values of one activation and answers
``qparams() -> (scale, zero_point)`` for the affine uint8 map ``real = scale * (q - zero_point)``
(the range always contains 0, so real 0 — padding, relu's floor — is exact).

* ``minmax``: the observed minimum and maximum.
* ``percentile``: the 0.01th / 99.99th percentiles of a sample of the values (outliers clipped).
* ``mse``: the clipping range, among 64 shrinkings of the min/max range, whose quantise-dequantise
  round trip of the sample has the least mean squared error.

Degenerate data: an activation that is 0 everywhere (or whose range is below 1e-12) gets the
documented fallback scale 1.0, zero point 0 (0 is still exact); NaN or infinite values raise
ValueError naming the layer."""
from __future__ import annotations

import torch

_SAMPLE_PER_BATCH = 1 << 16
_SAMPLE_CAP = 1 << 20
_MIN_RANGE = 1e-12
_MSE_SAMPLE = 1 << 15


def _affine(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < _MIN_RANGE:
        return 1.0, 0
    scale = (hi - lo) / 255.0
    zp = int(min(255, max(0, round(-lo / scale))))
    return float(scale), zp


class MinMaxObserver:
    def __init__(self, name: str):
        self.name = name
        self.lo, self.hi = float("inf"), float("-inf")
        self.batches = 0

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"quantize: calibration produced NaN or infinite values at '{self.name}'")
        return x

    def observe(self, x: torch.Tensor) -> None:
        x = self._check(x)
        if x.numel():
            self.lo = min(self.lo, float(x.min()))
            self.hi = max(self.hi, float(x.max()))
        self.batches += 1

    def qparams(self) -> tuple[float, int]:
        if self.lo > self.hi:
            return 1.0, 0
        return _affine(self.lo, self.hi)


class _SampleObserver(MinMaxObserver):
    """Keeps a random sample of the values (at most 2^16 per batch, 2^20 in all) beside min/max."""

    def __init__(self, name: str):
        super().__init__(name)
        self.samples: list[torch.Tensor] = []
        self.kept = 0
        self.gen = torch.Generator().manual_seed(0)

    def observe(self, x: torch.Tensor) -> None:
        super().observe(x)
        v = x.detach().reshape(-1).float().cpu()
        if v.numel() > _SAMPLE_PER_BATCH:
            v = v[torch.randint(0, v.numel(), (_SAMPLE_PER_BATCH,), generator=self.gen)]
        if self.kept < _SAMPLE_CAP:
            self.samples.append(v)
            self.kept += v.numel()

    def sample(self) -> torch.Tensor:
        return torch.cat(self.samples) if self.samples else torch.zeros(1)


class PercentileObserver(_SampleObserver):
    def __init__(self, name: str, percentile: float = 99.99):
        super().__init__(name)
        self.q = percentile / 100.0

    def qparams(self) -> tuple[float, int]:
        s = self.sample().double()
        lo = float(torch.quantile(s, 1.0 - self.q)) if self.lo < 0 else 0.0
        hi = float(torch.quantile(s, self.q))
        return _affine(lo, hi)


class MSEObserver(_SampleObserver):
    def qparams(self) -> tuple[float, int]:
        if self.lo > self.hi:
            return 1.0, 0
        s = self.sample()
        if s.numel() > _MSE_SAMPLE:          # the error estimate needs far fewer values than the sample
            s = s[torch.randint(0, s.numel(), (_MSE_SAMPLE,), generator=self.gen)]
        best, best_err = _affine(self.lo, self.hi), float("inf")
        for i in range(64):
            f = 1.0 - i / 80.0           # shrink the range down to 21% of min/max
            scale, zp = _affine(self.lo * f, self.hi * f)
            q = torch.clamp(torch.round(s / scale) + zp, 0, 255)
            err = float(((q - zp) * scale - s).square().mean())
            if err < best_err:
                best, best_err = (scale, zp), err
        return best


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver}
