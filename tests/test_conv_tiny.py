"""The CPU tiny-map conv (csrc/cpu/conv.cpp tiny_map_run): 3x3 / stride 1 / padding 1 on maps of at most
2x2 pixels as one dense GEMM over the image (Weff: every input pixel reaches every output pixel through
one tap: at most 2 pixels per side). 1x1 maps at any batch, 2x2 (and 1x2, 2x1) from 4 to 16 images.
Against float64; the three ways Weff is made give the same bits: built in 32-row blocks per call
(first call, training), built whole into the per-weight cache (second unchanged call) and read from it
(later calls); the cache is rebuilt when the input / output layout changes (folded into its
fingerprint). Branches: channel-major / pixel-major input and output (NCHW / channels_last), a strided
input (copied), a residual in another layout (the final pass), bias, activation, a row tail in the
blocks (O * P = 52), the packed GEMM above 16 images (1x1), 1 and 2 threads."""
import pytest
import torch
import torch.nn.functional as F

from pyimgcls import backends
from pyimgcls.backends.cpu import conv as cpu_conv

from helpers import assert_close_to_reference, omp_threads

K = backends.kernels("cpu", "conv")

# (name, N, C, H, W, O)
CASES = [
    ("2x2_b16", 16, 40, 2, 2, 24),
    ("2x2_b4_rowtail", 4, 33, 2, 2, 13),     # O * P = 52 rows: one full 32-row block and a tail
    ("1x2_b5", 5, 20, 1, 2, 36),
    ("2x1_b7", 7, 9, 2, 1, 17),
    ("3x1_b7_not_tiny", 7, 9, 3, 1, 17),       # 3 rows: the top pixel misses the bottom one (im2col path)
    ("1x1_b1", 1, 64, 1, 1, 70),
    ("1x1_b20_packed", 20, 48, 1, 1, 40),    # above 16 rows: the packed GEMM
]
LAYOUTS = ["nchw", "channels_last", "strided"]


def _t(shape, layout, gen):
    if layout == "strided":
        return torch.randn(*shape[:3], 2 * shape[3], generator=gen)[..., ::2]
    t = torch.randn(*shape, generator=gen)
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t


def _fwd(x, w, b, r, act):
    return K.conv2d(x, w, b, r, (1, 1), (1, 1, 1, 1), (1, 1), 1, act)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_float64_and_same_bits_cached_or_not(case, layout):
    _, N, C, H, W, O = case
    gen = torch.Generator().manual_seed(N * 7 + O)
    x = _t((N, C, H, W), layout, gen)
    w = torch.randn(O, C, 3, 3, generator=gen)
    b = torch.randn(O, generator=gen)
    res = _t((N, O, H, W), "strided" if layout != "strided" else "nchw", gen)
    for bias, r, act in [(None, None, 0), (b, res, 1), (b, None, 3)]:
        y64 = F.conv2d(x.double(), w.double(), None if bias is None else bias.double(), 1, 1)
        if r is not None:
            y64 = y64 + r.double()
        ref = {0: y64, 1: torch.relu(y64), 3: F.silu(y64)}[act]
        wi = w.clone()  # a fresh weight: call 1 blocks, call 2 builds the cache, call 3 reads it
        outs = [_fwd(x, wi, bias, r, act) for _ in range(3)]
        for y in outs:
            assert_close_to_reference(y, ref, scale=C * 9)
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])


def test_cache_rebuilt_when_layout_changes():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 32, 2, 2, generator=gen)
    w = torch.randn(48, 32, 3, 3, generator=gen)
    for _ in range(3):
        _fwd(x, w, None, None, 0)
    entry = cpu_conv._WINOGRAD_CACHE.get(w)
    assert entry is not None and entry[2] is not None and entry[2].numel() == 48 * 32 * 16
    xc = x.contiguous(memory_format=torch.channels_last)  # pixel-major input and output: other Weff orders
    ref = F.conv2d(x.double(), w.double(), None, 1, 1)
    for xi in (xc, x, xc):
        assert_close_to_reference(_fwd(xi, w, None, None, 0), ref, scale=32 * 9)


def test_selection_and_threads(monkeypatch):
    """Batch 3 (2x2) and batch 17 (2x2) stay on the im2col path (bit-identical with
    PYIMGCLS_CPU_CONV_TINY=0); a tiny shape differs from it in rounding only; 2 threads give the same
    bits as 1."""
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(40, 36, 3, 3, generator=gen)
    for n, tiny in ((3, False), (17, False), (12, True)):
        x = torch.randn(n, 36, 2, 2, generator=gen)
        monkeypatch.setenv("PYIMGCLS_CPU_CONV_TINY", "0")
        off = _fwd(x, w, None, None, 0)
        monkeypatch.delenv("PYIMGCLS_CPU_CONV_TINY")
        outs = []
        for t in (1, 2):
            with omp_threads(t):
                outs.append(_fwd(x, w.clone(), None, None, 0))
        assert torch.equal(outs[0], outs[1])
        assert torch.equal(outs[0], off) != tiny
        assert_close_to_reference(outs[0], F.conv2d(x.double(), w.double(), None, 1, 1), scale=36 * 9)
