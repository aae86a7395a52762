"""The CPU Winograd F(2x2, 3x3) path (csrc/cpu/conv.cpp, float32 3x3 stride-1 groups-1 convolutions,
forward and dgrad) against float64 PyTorch.

What selects it: PYIMGCLS_CPU_WINOGRAD=1 forces it for every 3x3 stride-1 dilation-1 groups-1 float32
conv (so small shapes reach it); unset, the forward takes it from 32 2x2 tiles with C >= 32 and
O >= 32, dgrad from 64 tiles and 2^22 multiply-adds with C >= 32 and O >= 48; =0 turns it off. Never inside a bfloat16
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


@pytest.mark.parametrize("N", [5, 8])
def test_chunk_loop_and_threads_bit_identical(force, monkeypatch, N):
    """N 5 on 2 threads: chunks in turn, each phase threaded over tiles; N 8: whole chunks, one per
    thread at a time in one region (2 chunks of 4, or 8 of 1 with the 1-byte budget)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(N, 24, 10, 9, generator=gen)
    w = torch.randn(20, 24, 3, 3, generator=gen)
    g = torch.randn(N, 20, 10, 9, generator=gen)
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
    to float64; a 4x4 map at batch 2 (8 tiles) and a 128 -> 31 layer stay on the GEMM path
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
    wd = torch.randn(31, 128, 3, 3, generator=gen)
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


# ----------------------------------------------------------------------------- filter-transform cache
# pyimgcls/backends/cpu/conv.py keeps the Winograd filter transform U of a float32 weight that is used twice
# unchanged (inference); csrc/cpu/conv.cpp conv2d_fwd_cached rebuilds it whenever the weight's bytes
# change. Unforced, the cached path takes 3x3 stride-1 convs with C >= 32, O >= 32 and >= 32 tiles.
from pyimgcls.backends.cpu import conv as cpu_conv  # noqa: E402
from pyimgcls import _native  # noqa: E402


def _fwd(x, w, b=None, r=None, act=0):
    return K.conv2d(x, w, b, r, (1, 1), (1, 1, 1, 1), (1, 1), 1, act)


def _entry(w):
    return cpu_conv._WINOGRAD_CACHE.get(w)


CACHED_CASES = [  # (name, N, C, H, W, O): all unforced cached-path shapes
    ("threshold_32_tiles", 2, 32, 8, 8, 48),        # 2 x 4 x 4 = 32 tiles, exactly the threshold
    ("odd_batch1_64_tiles", 1, 33, 16, 15, 50),     # partial channel vectors, cut last tile column
    ("resnet_4x4_256", 16, 256, 4, 4, 256),         # ResNet-18 layer3 at 64x64 inputs, batch 16
    ("densenet_128_to_32", 3, 128, 9, 10, 32),      # O = 32: one output vector pair, 45 tiles
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CACHED_CASES, ids=[c[0] for c in CACHED_CASES])
def test_cached_forward_matches_float64(case, layout):
    _, N, C, H, W, O = case
    gen = torch.Generator().manual_seed(5)
    x = _input((N, C, H, W), layout, gen)
    w = torch.randn(O, C, 3, 3, generator=gen)
    b = torch.randn(O, generator=gen)
    res = _input((N, O, H, W), layout, gen)
    ref = _ref(x, w, b, res, 1, 1)
    outs = [_fwd(x, w, b, res, 1) for _ in range(3)]  # marker, build U, use U
    assert _entry(w) is not None and _entry(w)[2] is not None
    for y in outs:
        assert_close_to_reference(y, ref, scale=C * 9)
    # call 1 transforms the filters itself, call 2 builds U, call 3 reuses it: the same bits each time
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])


def test_below_threshold_is_not_cached():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 32, 8, 14, generator=gen)  # 4 x 7 = 28 tiles
    w = torch.randn(48, 32, 3, 3, generator=gen)
    x2 = torch.randn(2, 32, 8, 8, generator=gen)  # 32 tiles but 31 output channels
    w2 = torch.randn(31, 32, 3, 3, generator=gen)
    for _ in range(3):
        _fwd(x, w)
        _fwd(x2, w2)
    assert _entry(w) is None and _entry(w2) is None
    assert _native.C.conv2d_winograd_cache_floats_cpu(_native.dtype_code(torch.float32),
                                                      [1, 32, 8, 14, 48, 3, 3, 8, 14, 1, 1, 1, 1, 1, 1, 1]) == 0
    assert _native.C.conv2d_winograd_cache_floats_cpu(_native.dtype_code(torch.float32),
                                                      [1, 32, 8, 16, 48, 3, 3, 8, 16, 1, 1, 1, 1, 1, 1, 1]) == 16 * 32 * 48


def test_cache_sees_every_weight_change():
    """In-place edits (version bump), edits through ``.data`` (no version bump), one element changed, the
    storage swapped: every output after the change matches float64 with the new weight."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 32, 8, 8, generator=gen)
    w = torch.randn(64, 32, 3, 3, generator=gen)
    for _ in range(3):
        _fwd(x, w)
    assert _entry(w)[2] is not None
    edits = [
        lambda: w.add_(0.5),
        lambda: w.data.mul_(-2.0),
        lambda: w.data.view(-1)[-1].fill_(100.0),          # the very last byte range of the weight
        lambda: w.data.view(-1)[0].fill_(-100.0),
        lambda: setattr(w, "data", torch.randn(64, 32, 3, 3, generator=gen)),
    ]
    for edit in edits:
        edit()
        for _ in range(2):
            assert_close_to_reference(_fwd(x, w), _ref(x, w, None, None, 1, 0), scale=32 * 9)


def test_cache_policy_training_never_allocates_and_drops():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 32, 8, 8, generator=gen)
    w = torch.randn(64, 32, 3, 3, generator=gen)
    for _ in range(4):  # a training loop: the weight changes between calls
        _fwd(x, w)
        w.sub_(0.01)
    assert _entry(w)[2] is None
    _fwd(x, w)
    _fwd(x, w)  # second unchanged use: U built
    assert _entry(w)[2] is not None
    w.data.add_(1.0)
    _fwd(x, w)  # one rebuild keeps U
    assert _entry(w)[2] is not None
    w.data.add_(1.0)
    y = _fwd(x, w)  # two rebuilds in a row: U freed
    assert _entry(w)[2] is None
    assert_close_to_reference(y, _ref(x, w, None, None, 1, 0), scale=32 * 9)


def test_cached_threads_bit_identical():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 40, 10, 11, generator=gen)
    w = torch.randn(56, 40, 3, 3, generator=gen)
    _fwd(x, w)  # the first call only marks the weight (90 tiles: the GEMM path)
    outs = []
    for n in (1, 2, 1):
        with omp_threads(n):
            outs.append(_fwd(x, w))
    assert _entry(w)[2] is not None
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])


def test_cached_native_rejects_bad_calls():
    geom_small = [1, 32, 4, 4, 48, 3, 3, 4, 4, 1, 1, 1, 1, 1, 1, 1]  # 4 tiles: not the cached path
    x = torch.randn(1, 32, 4, 4)
    w = torch.randn(48, 32, 3, 3)
    out = torch.empty(1, 48, 4, 4)
    u = torch.empty(16 * 32 * 48)
    with pytest.raises(ValueError, match="cached Winograd"):
        _native.C.conv2d_fwd_cached_cpu(geom_small, x.data_ptr(), list(x.stride()), w.data_ptr(), 0, 0, [0] * 4,
                                        out.data_ptr(), list(out.stride()), 0, u.data_ptr(), 0, False)
    with pytest.raises(ValueError, match="non-null"):
        _native.C.conv2d_fwd_cached_cpu(geom_small, x.data_ptr(), list(x.stride()), w.data_ptr(), 0, 0, [0] * 4,
                                        out.data_ptr(), list(out.stride()), 0, 0, 0, False)


def test_eval_model_uses_the_cache_and_matches_torch_backend():
    """A ResNet-18 in eval mode under no_grad: after two forwards its 3x3 s1 convs with >= 32 tiles hold a
    cache, and the third forward equals the second's (same U) and matches the torch backend."""
    from pyimgcls import models
    torch.manual_seed(10)
    m = models.get_model("resnet18", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        with pyimgcls.use_backend("cpu"):
            ys = [m(x) for _ in range(3)]
        with pyimgcls.use_backend("torch"):
            ref = m(x)
    cached = [p for p in m.parameters() if _entry(p) is not None and _entry(p)[2] is not None]
    assert len(cached) >= 2  # layer1 (16x16 maps: 2 x 64 tiles) convs, 64 -> 64
    assert torch.equal(ys[0], ys[1]) and torch.equal(ys[1], ys[2])  # the cache never changes a result
    torch.testing.assert_close(ys[2], ref, rtol=1e-4, atol=1e-4)
