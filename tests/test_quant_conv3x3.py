"""The indirect VNNI convolution path of quant_conv_gemm (csrc/cpu/quant.cpp: micro_vnni_ind and its
fused requantising epilogue): NHWC uint8 input with dense channels, kernel rows of KW * C bytes a
multiple of 4, read in place through a table of row addresses, borders through zero-point rows and
assembled edge rows. Every case is checked bit for bit against the whole-conv integer reference on
every CPU path (VNNI takes the indirect path, AVX2 / generic the gathered im2col), so the paths also
agree with each other. Outputs are poisoned before each run (tests/conftest.py)."""
from __future__ import annotations

import pytest
import torch

import pyimgcls
from pyimgcls import _native, ops

from helpers import omp_threads
from test_quant import _assert_equal, _conv_ref, _gen, cpu_path  # noqa: F401  (cpu_path: the fixture)


def _qw(O, C, KH, KW, seed):
    return ops.quantize_weight(torch.randn(O, C, KH, KW, generator=_gen(seed)))


# (N, C, H, W, O, (KH, KW), stride, padding, dilation, layout)
CASES = [
    # ResNet layer1 / layer2 shapes, small images: M = 234 (not a multiple of the 6-row tile nor the
    # 48-row task), O = 70 (a full 64-column tile and a masked 6-column one), O = 130 on 128 channels
    (2, 64, 9, 13, 70, (3, 3), 1, 1, 1, "cl"),
    (1, 128, 5, 7, 130, (3, 3), 1, 1, 1, "cl"),
    # padding 2 on a 3x2 image: kernel rows wholly above / below (the zero-point row) and pixels
    # whose kernel row lies wholly left or right of the image (assembled edge rows of pads only)
    (3, 4, 3, 2, 20, (3, 3), 1, 2, 1, "cl"),
    # a 1x1 image: every row is an edge row or outside
    (2, 16, 1, 1, 17, (3, 3), 1, 1, 1, "cl"),
    # stride 2 (the strided 3x3 of ResNet's layer2-4), 12 channels (36-byte runs)
    (2, 12, 8, 11, 33, (3, 3), 2, 1, 1, "cl"),
    # dilation (2, 1): the kernel rows of a run stay adjacent (DW = 1), rows skip (DH = 2)
    (2, 8, 9, 9, 16, (3, 3), 1, (2, 1), (2, 1), "cl"),
    # the 1x1 stride-2 downsample (runs of C bytes), and a padded 1x1 (border pixels: pads only)
    (2, 64, 11, 9, 128, (1, 1), 2, 0, 1, "cl"),
    (1, 16, 4, 5, 24, (1, 1), 1, 1, 1, "cl"),
    # 5x5 on 4 channels (20-byte runs), a 3x1 kernel (KH != KW), 1x3
    (1, 4, 7, 6, 9, (5, 5), 1, 2, 1, "cl"),
    (2, 8, 6, 7, 10, (3, 1), 1, (1, 0), 1, "cl"),
    (2, 8, 6, 7, 10, (1, 3), 1, (0, 1), 1, "cl"),
    # a batch slice of a channels_last tensor (dense channels, data not at the storage's start)
    (3, 32, 6, 5, 48, (3, 3), 1, 1, 1, "batch_slice"),
    # not indirect: 3-channel rows (9 bytes), a channel slice (pixel stride != C), NCHW input
    (2, 3, 9, 8, 16, (3, 3), 1, 1, 1, "cl"),
    (1, 16, 6, 6, 20, (3, 3), 1, 1, 1, "channel_slice"),
    (1, 16, 6, 6, 20, (3, 3), 1, 1, 1, "nchw"),
]


def _input(N, C, H, W, kind, g):
    if kind == "batch_slice":
        x = torch.randint(0, 256, (N + 1, C, H, W), dtype=torch.uint8, generator=g)
        return x.contiguous(memory_format=torch.channels_last)[1:]
    if kind == "channel_slice":
        x = torch.randint(0, 256, (N, C + 4, H, W), dtype=torch.uint8, generator=g)
        return x.contiguous(memory_format=torch.channels_last)[:, 2:C + 2]
    x = torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=g)
    return x.contiguous(memory_format=torch.channels_last) if kind == "cl" else x.contiguous()


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def _run_case(case, seed, float_out):
    N, C, H, W, O, (KH, KW), s, p, d, kind = case
    s, p, d = _pair(s), _pair(p), _pair(d)
    g = _gen(seed)
    x = _input(N, C, H, W, kind, g)
    wq = _qw(O, C, KH, KW, seed=O + C)
    bias = torch.randn(O, generator=g)
    oh = (H + 2 * p[0] - d[0] * (KH - 1) - 1) // s[0] + 1
    ow = (W + 2 * p[1] - d[1] * (KW - 1) - 1) // s[1] + 1
    res = torch.randint(0, 256, (N, O, oh, ow), dtype=torch.uint8, generator=g)
    zx = 113
    if float_out:
        y = ops.quantized_conv2d(x, 0.02, zx, wq, bias, s, p, d, activation="relu")
        want = _conv_ref(x, zx, wq, bias, s, p, d, None, 0, "relu")
    else:
        y = ops.quantized_conv2d(x, 0.02, zx, wq, bias, s, p, d, output_scale=0.05, output_zero_point=20,
                                 activation="relu6", residual=res, residual_scale=0.07, residual_zero_point=128)
        want = _conv_ref(x, zx, wq, bias, s, p, d, 0.05, 20, "relu6", res, 0.07, 128)
    return y, want


def _case_id(c):
    return f"{c[0]}x{c[1]}x{c[2]}x{c[3]}_o{c[4]}k{c[5][0]}{c[5][1]}s{c[6]}p{c[7]}d{c[8]}_{c[9]}".replace(" ", "")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("float_out", [False, True], ids=["u8_res_relu6", "f32_relu"])
def test_conv_every_cpu_path_matches_reference(cpu_path, case, float_out):
    with pyimgcls.use_backend("cpu"):
        y, want = _run_case(case, seed=sum(case[:5]), float_out=float_out)
    _assert_equal(y, want)


@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_conv_without_residual(cpu_path, activation, bias):
    """Without a residual the fused epilogue clamps in float to [qmin - zero, qmax - zero] before
    rounding (no activation: 0..255; relu: from the zero point; relu6: both ends); no bias: the sums
    start from - a_zero * colsum alone. Output scales small enough that many values clamp."""
    g = _gen(5)
    x = torch.randint(0, 256, (2, 64, 7, 6), dtype=torch.uint8, generator=g).contiguous(
        memory_format=torch.channels_last)
    wq = _qw(40, 64, 3, 3, seed=9)
    b = torch.randn(40, generator=g) if bias else None
    with pyimgcls.use_backend("cpu"):
        for scale, zero in ((0.2, 128), (0.01, 3), (0.05, 250)):
            y = ops.quantized_conv2d(x, 0.03, 17, wq, b, 1, 1, output_scale=scale, output_zero_point=zero,
                                     activation=activation)
            _assert_equal(y, _conv_ref(x, 17, wq, b, (1, 1), (1, 1), (1, 1), scale, zero, activation, s_in=0.03))


# Large enough for quant_conv_gemm's threads (M * O * K >= 2^22 and >= 2 row tasks per thread):
# 882 rows over 19 tasks on 64 channels (O = 70: a masked last tile), and a 1x1 stride-2 on 128
# channels; and few rows on many channels (16 x 520: at 2 threads the im2col + channel-split GEMM).
THREAD_CASES = [(2, 64, 21, 21, 70, (3, 3), 1, 1, 1, "cl"), (2, 128, 30, 30, 96, (1, 1), 2, 0, 1, "cl"),
                (1, 64, 4, 4, 520, (3, 3), 1, 1, 1, "cl")]


@pytest.mark.parametrize("case", THREAD_CASES, ids=_case_id)
@pytest.mark.parametrize("threads", [1, 2])
def test_conv_threads_every_cpu_path(cpu_path, case, threads):
    with omp_threads(threads), pyimgcls.use_backend("cpu"):
        for float_out in (False, True):
            y, want = _run_case(case, seed=7 + threads, float_out=float_out)
            _assert_equal(y, want)


def test_vnni_and_generic_paths_give_the_same_bytes(monkeypatch):
    """The indirect VNNI path against the generic path's gathered im2col, byte for byte, on a
    ResNet layer1-like shape (and the reference through the per-path test above)."""
    monkeypatch.delenv("PYIMGCLS_CPU_ISA", raising=False)
    if _native.C.quant_isa() != "vnni":
        pytest.skip("this CPU has no VNNI path")
    case = (2, 64, 14, 14, 64, (3, 3), 1, 1, 1, "cl")
    with pyimgcls.use_backend("cpu"):
        y_vnni, _ = _run_case(case, seed=3, float_out=False)
        monkeypatch.setenv("PYIMGCLS_CPU_ISA", "generic")
        assert _native.C.quant_isa() == "generic"
        y_gen, want = _run_case(case, seed=3, float_out=False)
    _assert_equal(y_vnni, y_gen)
    _assert_equal(y_vnni, want)
