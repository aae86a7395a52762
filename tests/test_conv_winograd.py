"""The CPU Winograd F(2x2, 3x3) path (csrc/cpu/conv.cpp, float32 3x3 stride-1 groups-1 convolutions,
forward and dgrad) against float64 PyTorch.

What selects it: PYIMGCLS_CPU_WINOGRAD=1 forces it for every 3x3 stride-1 dilation-1 groups-1 float32
conv (so small shapes reach it); unset, it runs when the batch has >= 128 2x2 tiles and the
conv has >= 2^22 multiply-adds (C >= 32, O >= 48 unforced); =0 turns it off. Never inside a bfloat16
conv (its im2col GEMM runs on vdpbf16ps). Branches covered: channel vectors full and partial
(C or O not a multiple of 16), odd output sizes (the last tile row / column cut), padding 0 / 1 / 2
(tiles reaching into the padding on both sides), NCHW / channels_last / strided inputs and outputs
(the vector store and the strided scalar store), bias, residual, activation, the chunk loop
(PYIMGCLS_CPU_CONV_CHUNK_BYTES small: one image per chunk), 1 and 2 threads (bit-identical: each
output summed by one single-threaded GEMM and one thread). Outputs are poisoned with NaN (conftest)."""

import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import backends, ops

from helpers import assert_close_to_reference, omp_threads

K = backends.kernels("cpu", "conv")

# (name, N, C, H, W, O, padding)
CASES = [
    ("odd_partial_vectors", 2, 19, 9, 7, 21, 1),    # C, O: one full + a partial vector; odd output
    ("pad0", 1, 16, 6, 9, 16, 0),
    ("pad2", 2, 5, 5, 6, 3, 2),                     # tiles reaching 2 into the padding
    ("one_pixel", 3, 17, 1, 1, 33, 1),              # every tap but the centre in the padding
    ("many_tiles", 3, 33, 14, 12, 40, 1),           # 126 tiles, 3 output vectors
]
LAYOUTS = ["nchw", "channels_last", "strided"]


@pytest.fixture
def force(monkeypatch):
    monkeypatch.setenv("PYIMGCLS_CPU_WINOGRAD", "1")


def _input(shape, layout, gen):
    N, C, H, W = shape
    if layout == "nchw":
        return torch.randn(N, C, H, W, generator=gen)
    if layout == "channels_last":
        return torch.randn(N, C, H, W, generator=gen).contiguous(memory_format=torch.channels_last)
    return torch.randn(N, C, H, 2 * W, generator=gen)[:, :, :, ::2]


def _ref(x, w, b, res, p, act):
    y = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=p)
    if res is not None:
        y = y + res.double()
    return {0: y, 1: torch.relu(y), 3: F.silu(y)}[act]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_matches_float64(force, case, layout):
    _, N, C, H, W, O, p = case
    gen = torch.Generator().manual_seed(0)
    x = _input((N, C, H, W), layout, gen)
    w = torch.randn(O, C, 3, 3, generator=gen)
    b = torch.randn(O, generator=gen)
    OH, OW = H + 2 * p - 2, W + 2 * p - 2
    res = _input((N, O, OH, OW), layout, gen)
    for bias, r, act in [(None, None, 0), (b, res, 1), (b, None, 3)]:
        y = K.conv2d(x, w, bias, r, (1, 1), (p, p, p, p), (1, 1), 1, act)
        assert_close_to_reference(y, _ref(x, w, bias, r, p, act), scale=C * 9)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_dgrad_matches_float64(force, case, layout):
    _, N, C, H, W, O, p = case
    gen = torch.Generator().manual_seed(1)
    x = _input((N, C, H, W), layout, gen)
    w = torch.randn(O, C, 3, 3, generator=gen)
    g = _input((N, O, H + 2 * p - 2, W + 2 * p - 2), layout, gen)
    dx = K.dgrad(g, x, w, (1, 1), (p, p, p, p), (1, 1), 1)
    ref = torch.nn.grad.conv2d_input(x.shape, w.double(), g.double(), padding=p)
    assert dx.shape == x.shape
    assert_close_to_reference(dx, ref, scale=O * 9)


def test_chunk_loop_and_threads_bit_identical(force, monkeypatch):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 24, 10, 9, generator=gen)
    w = torch.randn(20, 24, 3, 3, generator=gen)
    g = torch.randn(5, 20, 10, 9, generator=gen)
    ref = F.conv2d(x.double(), w.double(), padding=1)
    ref_dx = torch.nn.grad.conv2d_input(x.shape, w.double(), g.double(), padding=1)
    outs = []
    for chunk in (None, "1"):  # "1" byte: one image per chunk
        if chunk:
            monkeypatch.setenv("PYIMGCLS_CPU_CONV_CHUNK_BYTES", chunk)
        for n in (1, 2):
            with omp_threads(n):
                y = K.conv2d(x, w, None, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, 0)
                dx = K.dgrad(g, x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1)
            assert_close_to_reference(y, ref, scale=24 * 9)
            assert_close_to_reference(dx, ref_dx, scale=20 * 9)
            outs.append((y, dx))
    for y, dx in outs[1:]:
        assert torch.equal(y, outs[0][0]) and torch.equal(dx, outs[0][1])


def test_auto_selection_matches_gemm_path(monkeypatch):
    """Unforced, a ResNet-sized layer (32 -> 48 channels, 4 x 16x16, 14M MACs) takes the Winograd path: its
    result differs from the GEMM path's (PYIMGCLS_CPU_WINOGRAD=0) in rounding only, and both are close
    to float64; a 4x4 map at batch 2 (8 tiles) and a DenseNet-like 128 -> 32 layer stay on the GEMM path
    (bit-identical to =0), and so does a bfloat16 conv under autocast even when forced."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 32, 16, 16, generator=gen)
    w = torch.randn(48, 32, 3, 3, generator=gen)
    ref = F.conv2d(x.double(), w.double(), padding=1)
    auto = K.conv2d(x, w, None, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, 0)
    monkeypatch.setenv("PYIMGCLS_CPU_WINOGRAD", "0")
    gemm = K.conv2d(x, w, None, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, 0)
    assert_close_to_reference(auto, ref, scale=32 * 9)
    assert_close_to_reference(gemm, ref, scale=32 * 9)
    assert not torch.equal(auto, gemm)
    xs = torch.randn(2, 64, 4, 4, generator=gen)
    ws = torch.randn(64, 64, 3, 3, generator=gen)
    xd = torch.randn(8, 128, 16, 16, generator=gen)
    wd = torch.randn(32, 128, 3, 3, generator=gen)
    xb = x.to(torch.bfloat16)
    wb = w.to(torch.bfloat16)
    offs = [K.conv2d(a, b, None, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, 0) for a, b in ((xs, ws), (xd, wd), (xb, wb))]
    monkeypatch.delenv("PYIMGCLS_CPU_WINOGRAD")
    for (a, b), off in zip(((xs, ws), (xd, wd)), offs):
        assert torch.equal(K.conv2d(a, b, None, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, 0), off)
    monkeypatch.setenv("PYIMGCLS_CPU_WINOGRAD", "1")
    assert torch.equal(K.conv2d(xb, wb, None, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, 0), offs[2])


def test_autograd_through_ops(force):
    """ops.conv2d forward + backward on the cpu backend with the Winograd forward and dgrad (wgrad stays
    on the GEMM path), against float64 autograd."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 18, 7, 8, generator=gen, requires_grad=True)
    w = torch.randn(17, 18, 3, 3, generator=gen, requires_grad=True)
    b = torch.randn(17, generator=gen, requires_grad=True)
    with pyimgcls.use_backend("cpu"):
        y = ops.conv2d(x, w, b, padding=1, activation="relu")
    g = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), g)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    y64 = torch.relu(F.conv2d(x64, w64, b64, padding=1))
    rx, rw, rb = torch.autograd.grad(y64, (x64, w64, b64), g.double())
    assert_close_to_reference(y, y64, scale=18 * 9)
    assert_close_to_reference(gx, rx, scale=17 * 9)
    assert_close_to_reference(gw, rw, scale=2 * 7 * 8)
    assert_close_to_reference(gb, rb, scale=2 * 7 * 8)
