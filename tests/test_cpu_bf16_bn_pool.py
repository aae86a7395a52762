"""bfloat16 batch norm and pooling on the CPU (issue #20): the kernels read and write bf16 themselves.

Batch norm (csrc/cpu/batchnorm.cpp, storage X = bf16 with float32 T): statistics, the fused
normalize + residual + activation forward and the backward read bf16 activations, keep float32
per-channel vectors and sums, and round each stored value once to nearest even. Their loops are
compiled for AVX-512, AVX2 and the baseline (PYIMGCLS_CPU_ISA picks; NCHW planes shorter than
kShortPlane = 64 keep the baseline statistics and run the element-wise passes as one C*S loop per
image). Shapes reach: NCHW planes shorter and longer than 64
and longer than kBlock = 4096 (several blocks per plane); NHWC chunks of more than kFlushRows = 128
rows (M = 2 * 65 * 65 = 8450 rows in 64 chunks); odd channel counts (partial vectors); batch 1; one
and two threads (>= 2^15 elements fork).

Pooling (csrc/cpu/pool.cpp, "bfloat16"): the float32 kernels on cache-sized staged blocks of whole
planes (NCHW) or images (NHWC) of about 16384 input values, so the results equal the float32
kernels' on the widened input, rounded once: checked bit for bit, and against float64.

Accuracy: float64 reference on the same bf16 inputs (and float32 weights); the error must be at
most twice PyTorch's own bf16 error on the same inputs (plus 1e-6 of the reference's largest value,
for the float32 per-channel gradients where both are exact to a few ulps). Outputs are poisoned
with NaN before each kernel (conftest)."""
import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import ops

from helpers import omp_threads

ISAS = ["avx512", "avx2", "generic"]


def _err(x, ref):
    return (x.double() - ref).abs().max().item()


def _assert_within_torch(ours, theirs, ref, what, absolute=True):
    """At most twice PyTorch's error, and (absolute) at most 2^-7 of the reference's largest value
    whatever PyTorch's error (its unfused relu can flip masks, which makes its own error large)."""
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype}, torch gives {theirs.dtype}"
    assert not torch.isnan(ours).any(), what
    e_ours, e_torch, scale = _err(ours, ref), _err(theirs, ref), ref.abs().max().item()
    assert e_ours <= 2 * e_torch + 1e-6 * scale, f"{what}: ours {e_ours} vs torch {e_torch}"
    assert not absolute or e_ours <= 2.0 ** -7 * scale, f"{what}: ours {e_ours}, largest reference value {scale}"


def _leaf(t):
    return t.detach().clone().requires_grad_()


def _layout(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other column of a wider tensor
        wide = torch.zeros(*t.shape[:3], 2 * t.shape[3], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t.contiguous()


# (name, N, C, H, W, layout): what each reaches is named
BN_CASES = [
    ("nchw_short_planes", 3, 19, 5, 7, "nchw"),          # S = 35 < 64: baseline statistics, C*S loops
    ("nchw_short_threaded", 16, 67, 6, 6, "nchw"),       # the same above 2^15 elements (threaded)
    ("nchw_batch1_odd", 1, 5, 9, 11, "nchw"),            # batch 1, S = 99: wide statistics
    ("nchw_long_planes", 2, 5, 65, 65, "nchw"),          # S = 4225 > kBlock; 42250 elements: threaded
    ("nhwc_odd_c", 3, 19, 7, 9, "channels_last"),        # C = 19: one vector + a remainder
    ("nhwc_flush", 2, 5, 65, 65, "channels_last"),       # 8450 rows: 64 chunks of 133 > 128 rows
    ("nhwc_wide_c", 2, 70, 6, 5, "channels_last"),       # C = 70 > 64 lanes
    ("strided", 2, 7, 8, 9, "strided"),                  # non-contiguous input and residual
]


def _bn_run(impl, x, r, g, w, b, rm, rv, training, act):
    """impl 'ours' / 'torch' on leaves of (x, r, w, b): (out, gx, gr, gw, gb, running_mean, running_var)."""
    xl, wl, bl = _leaf(x), _leaf(w), _leaf(b)
    rl = _leaf(r) if r is not None else None
    rm, rv = rm.clone(), rv.clone()
    if impl == "ours":
        with pyimgcls.use_backend("cpu"):
            y = ops.batch_norm(xl, rm, rv, wl, bl, training=training, activation=act, residual=rl)
    else:
        y = F.batch_norm(xl, rm, rv, wl, bl, training=training)
        if rl is not None:
            y = y + rl
        if act == "relu":
            y = F.relu(y)
        elif act == "relu6":
            y = F.relu6(y)
    inputs = (xl, wl, bl) + ((rl,) if rl is not None else ())
    grads = torch.autograd.grad(y, inputs, g)
    gr = grads[3] if rl is not None else None
    return y, grads[0], gr, grads[1], grads[2], rm, rv


@pytest.mark.parametrize("case", BN_CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
def test_batch_norm_bf16_matches_float64(case, isa, threads, monkeypatch):
    """Training (batch statistics, running update) and eval, relu / relu6 + residual (the grad_pre
    path), relu alone (masked sums) and plain: output and grad_input bf16, grad_weight / grad_bias /
    statistics float32. (PyTorch's unfused relu after a bf16 rounding flips the mask where the
    pre-activation rounds across 0, which makes its gradient error large; ours is fused, so the
    comparison is lenient there, the float64 reference is not.)"""
    monkeypatch.setenv("PYIMGCLS_CPU_ISA", isa)
    _, N, Cc, H, W, layout = case
    gen = torch.Generator().manual_seed(N * 1000 + Cc * 10 + H)
    x = _layout((torch.randn(N, Cc, H, W, generator=gen) * 3 + 2).bfloat16(), layout)
    r = _layout(torch.randn(N, Cc, H, W, generator=gen).bfloat16(), layout)
    g = _layout(torch.randn(N, Cc, H, W, generator=gen).bfloat16(), layout)
    w, b = torch.randn(Cc, generator=gen), torch.randn(Cc, generator=gen)
    rm, rv = torch.randn(Cc, generator=gen), torch.rand(Cc, generator=gen) + 0.5
    with omp_threads(threads):
        for training in (True, False):
            # activations fused in the kernel (silu with a gradient runs as batch_norm then ops.activation)
            for act, res in ((None, False), ("relu", True), ("relu", False), ("relu6", True)):
                if threads == 2 and (act, res) not in ((None, False), ("relu", True)):
                    continue  # the threaded split does not depend on the activation
                rr = r if res else None
                ours = _bn_run("ours", x, rr, g, w, b, rm, rv, training, act)
                theirs = _bn_run("torch", x, rr, g, w, b, rm, rv, training, act)
                ref = _bn_run("ref", x.double(), rr.double() if res else None, g.double(), w.double(), b.double(),
                              rm.double(), rv.double(), training, act)
                tag = f"training={training} act={act} residual={res}"
                assert ours[0].dtype == torch.bfloat16 and ours[1].dtype == torch.bfloat16
                assert ours[3].dtype == torch.float32 and ours[4].dtype == torch.float32
                if layout == "channels_last":
                    assert ours[0].is_contiguous(memory_format=torch.channels_last), tag
                for i, what in enumerate(("out", "grad_input", "grad_residual", "grad_weight", "grad_bias",
                                          "running_mean", "running_var")):
                    if ours[i] is None:
                        continue
                    # relu6's backward reads the saved bf16 output, and outputs in [5.985, 6) round to 6,
                    # where the gradient is dropped (PyTorch's too): only the comparison with PyTorch holds
                    _assert_within_torch(ours[i], theirs[i], ref[i], f"{what} ({tag})",
                                         absolute=act != "relu6" or what in ("out", "running_mean", "running_var"))


def test_batch_norm_bf16_autocast_module():
    """nn.BatchNorm2d after a conv under torch.autocast: the conv gives bf16, batch norm keeps it
    (PyTorch's rule: batch_norm runs in its input's dtype), float32 parameters, buffers and grads."""
    torch.manual_seed(0)
    conv = pyimgcls.nn.Conv2d(3, 6, 3, padding=1)
    bn = pyimgcls.nn.BatchNorm2d(6, activation="relu")
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        y = bn(h)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert bn.weight.grad.dtype == torch.float32 and bn.bias.grad.dtype == torch.float32
    assert bn.running_mean.dtype == torch.float32 and bn.running_var.dtype == torch.float32
    assert not torch.isnan(bn.weight.grad).any() and not torch.isnan(conv.weight.grad).any()
    want_mean = 0.9 * torch.zeros(6) + 0.1 * h.detach().double().mean((0, 2, 3))
    assert torch.allclose(bn.running_mean.double(), want_mean, rtol=1e-5, atol=1e-6)


def test_batch_norm_bf16_rounds_to_nearest_even():
    """Stores round to nearest even, as c10::BFloat16 (bf16 spacing at 1 is 2^-7). Eval mode with
    mean 0, var 1, eps 0 gives out = x * w; w = 1 + 2^-8 makes 1 * w an exact tie (nearest even:
    1, where rounding half up gives 1 + 2^-7) and (1 + 2^-7) * w just above a tie (up to 1 + 2^-6,
    where truncation gives 1 + 2^-7)."""
    x = torch.tensor([1.0, 1.0 + 2 ** -7, -1.0, 3.0]).bfloat16().view(1, 4, 1, 1).repeat(2, 1, 1, 1)
    w = torch.full((4,), 1 + 2 ** -8)
    rm, rv = torch.zeros(4), torch.ones(4)
    with pyimgcls.use_backend("cpu"):
        y = ops.batch_norm(x, rm, rv, w, None, training=False, eps=0.0)
    want = (x.float() * w.view(1, 4, 1, 1)).bfloat16()  # float32 product (exact here), one RNE rounding
    assert torch.equal(y, want)


# ----------------------------------------------------------------------------- pooling
# (name, N, C, H, W, layout, threads): NCHW planes of 33 x 31 = 1023 values stage 16 planes per
# block (9 blocks for 140 planes); an NHWC image of 33 * 31 * 70 values is one block per image;
# both are above the threading threshold (2^15 values), the small cases below it
POOL_CASES = [
    ("nchw_blocks", 2, 70, 33, 31, "nchw", 1),
    ("nhwc_blocks", 2, 70, 33, 31, "channels_last", 1),
    ("nchw_blocks_2t", 2, 70, 33, 31, "nchw", 2),
    ("nhwc_blocks_2t", 2, 70, 33, 31, "channels_last", 2),
    ("nchw_batch1_odd", 1, 3, 9, 11, "nchw", 1),
    ("nhwc_batch1_odd", 1, 19, 9, 11, "channels_last", 1),
    ("strided", 2, 5, 10, 12, "strided", 1),
]

POOLS = {
    "max": lambda t: F.max_pool2d(t, 3, 2, 1),
    "max_dilated_ceil": lambda t: F.max_pool2d(t, 3, 2, 1, dilation=2, ceil_mode=True),
    "avg": lambda t: F.avg_pool2d(t, 3, 2, 1),
    "avg_no_pad_count": lambda t: F.avg_pool2d(t, 2, 2, 1, count_include_pad=False),
    "global": lambda t: F.adaptive_avg_pool2d(t, 1),
    "adaptive": lambda t: F.adaptive_avg_pool2d(t, (5, 4)),
}
OURS = {
    "max": lambda t: ops.max_pool2d(t, 3, 2, 1),
    "max_dilated_ceil": lambda t: ops.max_pool2d(t, 3, 2, 1, dilation=2, ceil_mode=True),
    "avg": lambda t: ops.avg_pool2d(t, 3, 2, 1),
    "avg_no_pad_count": lambda t: ops.avg_pool2d(t, 2, 2, 1, count_include_pad=False),
    "global": lambda t: ops.adaptive_avg_pool2d(t, 1),
    "adaptive": lambda t: ops.adaptive_avg_pool2d(t, (5, 4)),
}


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("pool", list(POOLS))
def test_pool_bf16(case, pool):
    """Forward and backward: bf16 in and out, equal to the float32 kernels on the widened values
    rounded once, and within 2x PyTorch's bf16 error of float64."""
    _, N, Cc, H, W, layout, threads = case
    gen = torch.Generator().manual_seed(N + Cc + H + len(pool))
    x = _layout(torch.randn(N, Cc, H, W, generator=gen).bfloat16(), layout)
    with omp_threads(threads):
        xo = _leaf(x)
        with pyimgcls.use_backend("cpu"):
            y = OURS[pool](xo)
            assert y.dtype == torch.bfloat16
            g = _layout(torch.randn(y.shape, generator=gen).bfloat16(), layout)
            (gx,) = torch.autograd.grad(y, xo, g)
            # the float32 kernels on the same values
            xf = _leaf(x.float())
            yf = OURS[pool](xf)
            (gxf,) = torch.autograd.grad(yf, xf, g.float())
            with torch.no_grad():  # max pooling without indices (another NHWC body)
                y_noidx = OURS[pool](x)
    assert gx.dtype == torch.bfloat16
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert gx.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, yf.bfloat16()), "forward differs from the float32 kernel rounded once"
    assert torch.equal(gx, gxf.bfloat16()), "backward differs from the float32 kernel rounded once"
    assert torch.equal(y_noidx, y)
    xt = _leaf(x)
    yt = POOLS[pool](xt)
    (gxt,) = torch.autograd.grad(yt, xt, g)
    xd = _leaf(x.double())
    yd = POOLS[pool](xd)
    (gxd,) = torch.autograd.grad(yd, xd, g.double())
    _assert_within_torch(y, yt, yd, f"{pool} out")
    _assert_within_torch(gx, gxt, gxd, f"{pool} grad_input")


def test_max_pool_bf16_nan_and_inf():
    """Max pooling on bf16 keeps ATen's NaN / -inf rules (widening is exact, so the float32 rules hold)."""
    x = torch.full((1, 2, 4, 4), -float("inf")).bfloat16()
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 2, 3] = 5.0
    with pyimgcls.use_backend("cpu"):
        y, idx = ops.max_pool2d(x, 2, 2, return_indices=True)
    yt, it = F.max_pool2d(x.float(), 2, 2, return_indices=True)
    assert torch.equal(y.isnan(), yt.isnan())
    assert torch.equal(y[~y.isnan()].float(), yt[~yt.isnan()])
    assert torch.equal(idx, it)
