"""Batch-norm statistics that shifted sums get wrong: channels whose first value (the shift K) is far
from the mean, and a channel with |mean| / std = 1e6. float32 on every backend against float64, in
training mode: the batch mean / variance (through the running statistics with momentum 1), the
forward output and the gradients of x, weight and bias.

Outputs are checked per channel against PyTorch's own float32 result (float64 accumulation, two
passes): our error may be at most twice PyTorch's plus a small floor, plus for the output what
storing the mean in float32 costs by itself (one ulp of the mean times w * invstd: a mean of 1e6 in
float32 moves (x - mean) by up to 1/32 of a std, for PyTorch too, in whichever direction its own
rounding went). A fixed tolerance would either fail every implementation or miss the cancellation
this file is about (relative variance errors of 1e-4..3e-2 with K = the first value).
Test: pytest tests/test_batchnorm_welford.py -q"""
import pytest
import torch
import torch.nn.functional as F

from pyimgcls import ops

from helpers import BACKENDS, backend_ctx, device_for, triton_slow


def _shapes(backend):
    """CPU: NHWC reaches several row chunks with more than kFlushRows (128) rows each, NCHW planes of
    thousands of values. Small under the Triton interpreter (still several row tiles and 2 chunks)."""
    if backend == "triton" and triton_slow():
        return [(4, 5, 23, 29), (1, 5, 5, 7)]
    return [(2, 5, 67, 71), (1, 5, 9, 11)]


def _hard_channels(shape, seed=0):
    """float32 [N, 5, H, W]; the first value of each channel is element (0, c, 0, 0) in both layouts.
    c0: 1e4 + N(0, 1), first value 1e4 + 40 (the outlier barely moves the variance)
    c1: 1e6 + N(0, 1)
    c2: 1e4 + N(0, 0.01^2), first value 1e4 - 5 (the outlier dominates the variance)
    c3: 3 + N(0, 2^2)
    c4: -1e4 + N(0, 100^2), first value +1e4"""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    mean = torch.tensor([1e4, 1e6, 1e4, 3.0, -1e4], dtype=torch.float64).view(1, 5, 1, 1)
    std = torch.tensor([1.0, 1.0, 0.01, 2.0, 100.0], dtype=torch.float64).view(1, 5, 1, 1)
    x = z * std + mean
    x[0, 0, 0, 0] = 1e4 + 40
    x[0, 2, 0, 0] = 1e4 - 5
    x[0, 4, 0, 0] = 1e4
    return x.float()


def _per_channel_max_err(t, ref, channel_dim):
    d = (t.detach().cpu().double() - ref).abs()
    dims = [i for i in range(d.dim()) if i != channel_dim]
    return d.amax(dim=dims) if dims else d


def _assert_per_channel(ours, ref64, theirs32, channel_dim=1, floor=1e-5, inherent=0.0):
    err = _per_channel_max_err(ours, ref64, channel_dim)
    err_torch = _per_channel_max_err(theirs32, ref64, channel_dim)
    mag = _per_channel_max_err(torch.zeros_like(ref64), ref64, channel_dim).clamp(min=1.0)
    bound = 2.0 * err_torch + floor * mag + inherent
    assert (err <= bound).all(), f"per-channel max error {err.tolist()} > bound {bound.tolist()}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_statistics_and_training_step_on_hard_channels(backend, layout):
    dev = device_for(backend)
    for shape in _shapes(backend):
        C = shape[1]
        x64 = _hard_channels(shape).double()
        fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        x = x64.float().contiguous(memory_format=fmt).to(dev).requires_grad_()
        g = torch.Generator().manual_seed(1)
        w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).float().to(dev).requires_grad_()
        b = torch.randn(C, generator=g, dtype=torch.float64).float().to(dev).requires_grad_()
        go = torch.randn(shape, generator=g, dtype=torch.float64).float().contiguous(memory_format=fmt).to(dev)
        rm = torch.zeros(C, device=dev)
        rv = torch.ones(C, device=dev)
        with backend_ctx(backend):
            y = ops.batch_norm(x, rm, rv, w, b, True, 1.0, 1e-5)  # momentum 1: running stats = batch stats
        y.backward(go)

        # batch statistics: mean to 2 ulp of float32, unbiased variance to 2e-5 relative
        mean64 = x64.mean(dim=(0, 2, 3))
        var64 = x64.var(dim=(0, 2, 3), unbiased=True)
        torch.testing.assert_close(rm.cpu().double(), mean64, rtol=2.5e-7, atol=0)
        torch.testing.assert_close(rv.cpu().double(), var64, rtol=2e-5, atol=0)

        def run(dtype):
            leaves = [t.detach().cpu().to(dtype).requires_grad_() for t in (x, w, b)]
            out = F.batch_norm(leaves[0], None, None, leaves[1], leaves[2], True, 0.0, 1e-5)
            out.backward(go.cpu().to(dtype))
            return [out] + [t.grad for t in leaves]

        ref, theirs = run(torch.float64), run(torch.float32)
        mean_ulp = (mean64.float().abs().nextafter(torch.tensor(float("inf"))) - mean64.float().abs()).double()
        scale = w.detach().cpu().double().abs() / (x64.var(dim=(0, 2, 3), unbiased=False) + 1e-5).sqrt()
        _assert_per_channel(y, ref[0], theirs[0], inherent=mean_ulp * scale)
        _assert_per_channel(x.grad, ref[1], theirs[1])
        _assert_per_channel(w.grad, ref[2], theirs[2], channel_dim=0)
        _assert_per_channel(b.grad, ref[3], theirs[3], channel_dim=0)
