"""The CPU convolution's direct kernels (csrc/cpu/conv.cpp) against float64 PyTorch, forward and
backward, on the cpu backend's entry points (pyimgcls/backends/cpu/conv.py) and through ops.conv2d.

Depthwise (groups == C > 1, O = m*C) paths and what selects them:
  channel-vector kernels  x / g / dx channels_last, m == 1   (runs of 16 float / 8 double channels:
                          full runs, a partial last run; four-pixel blocks in the interior of a row
                          without residual; interior / edge taps; stride-1 dgrad without checks)
  channels_last copies    m == 1, not channels_last, OW < 32 (the same kernels on NHWC scratch copies);
                          the dgrad's per-row / per-column tap tables, four-pixel blocks per column phase;
                          wgrad by tap row (KW <= 8: two chains over interior pixel pairs, checked edges)
  plane kernels           not channels_last, output rows of 12..64 floats (6..64 doubles); strided dgrad
                          with dx rows of 32..64: one stride-1 correlation per output phase
  rows kernels            everything else: NCHW with OW >= 32 (unit-stride and strided inner loops),
                          any layout with m > 1
Threading: above 2^18 multiply-adds the units are spread over OpenMP threads; each case runs with 1
and 2 threads. wgrad sums each weight on one thread in a fixed order, so it is bit-identical for any
thread count (checked). Outputs are poisoned with NaN before every kernel (conftest)."""

import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import backends, ops
from pyimgcls.ops import reference

from helpers import assert_close_to_reference, omp_threads

K = backends.kernels("cpu", "conv")

# (name, N, C, H, W, m, kernel, stride, padding, dilation); MACs = N*C*m*OH*OW*KH*KW
CASES = [
    ("runs_blocks", 2, 48, 24, 24, 1, 3, 1, 1, 1),        # 3 full runs, interior blocks, threaded (497K MACs)
    ("partial_run", 1, 19, 9, 11, 1, 3, 1, 1, 1),         # one full run + 3 channels
    ("stride2", 2, 32, 17, 15, 1, 3, 2, 1, 1),
    ("dilated_rect", 1, 35, 12, 13, 1, (5, 3), (1, 2), (4, 1), (2, 1)),
    ("wide_rows", 3, 24, 13, 37, 1, 3, 1, 1, 1),          # NCHW: rows kernels (OW 37), threaded (311K)
    ("wide_rows_s2", 2, 8, 9, 70, 1, 3, 2, 1, 1),         # NCHW rows, strided inner loop (OW 35)
    ("mult2", 2, 8, 7, 9, 2, 3, 1, 1, 1),                 # channel multiplier: rows in every layout
    ("mult3_s2_wide", 2, 5, 9, 66, 3, 3, 2, 0, 1),
    ("mult2_threaded", 2, 16, 20, 20, 2, 3, 1, 1, 1),     # 369K MACs
    ("one_pixel", 1, 16, 1, 1, 1, 3, 1, 1, 1),            # every tap but the centre in the padding
    ("kernel_eq_input", 2, 16, 3, 3, 1, 3, 1, 0, 1),      # output 1x1, no padding
    ("kernel_gt_input", 1, 17, 2, 2, 1, 3, 1, 2, 2),      # taps land in padding on both sides
    # strided dgrad by output phase (NCHW, dx rows 32..64): sw == 2 interleaved store with odd pw and
    # odd W, a partial four-row block per row phase; even pw (5x5); sh != sw, sw == 3 (strided
    # scatter), dilation, phases without taps; threaded (313K MACs)
    ("phase_s2_odd", 2, 5, 11, 33, 1, 3, 2, 1, 1),
    ("phase_s2_k5", 1, 3, 10, 36, 1, 5, 2, 2, 1),
    ("phase_s3_dil", 1, 3, 13, 40, 1, (3, 4), (2, 3), (1, 2), (1, 2)),
    ("phase_s2_threaded", 4, 32, 32, 34, 1, 3, 2, 1, 1),
    # channel-vector dgrad at stride 2 (channels_last, and NCHW dx rows < 32 through the copies):
    # four-pixel blocks of one column phase, single pixels at the edges, a partial channel run
    ("nhwc_s2_blocks", 2, 21, 9, 18, 1, 5, 2, 2, 1),      # W 18: a block starts 3 pixels before the edge
    # channel-vector wgrad: taps of a row together up to KW 8; KW 9 takes the per-tap kernel
    ("wide_kernel", 1, 17, 6, 12, 1, (3, 9), 1, (1, 4), 1),
    # forward rows of <= 8 pixels (the channel-vector kernel's short-row path, one accumulator per
    # pixel): 5x5 on 4x4 (no interior pixel), stride 2 on 9x9 (OW 5) with a partial channel run
    ("short_rows_5x5", 2, 40, 4, 4, 1, 5, 1, 2, 1),
    ("short_rows_s2", 2, 33, 9, 9, 1, 5, 2, 2, 1),
]
LAYOUTS = ["nchw", "channels_last", "channels_last_sliced", "nchw_strided"]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _make_input(N, C, H, W, layout, dtype, gen):
    if layout == "nchw":
        return torch.randn(N, C, H, W, dtype=dtype, generator=gen)
    if layout == "channels_last":
        return torch.randn(N, C, H, W, dtype=dtype, generator=gen).contiguous(memory_format=torch.channels_last)
    if layout == "channels_last_sliced":  # unit channel stride, but rows longer than W*C
        big = torch.randn(N, C, H, W + 3, dtype=dtype, generator=gen).contiguous(memory_format=torch.channels_last)
        x = big[:, :, :, 1:W + 1]
        assert x.stride(1) == 1 and (H * W == 1 or not x.is_contiguous(memory_format=torch.channels_last))
        return x
    big = torch.randn(N, C, H, 2 * W, dtype=dtype, generator=gen)  # NCHW with w stride 2
    return big[:, :, :, ::2]


def _geom(case):
    name, N, C, H, W, m, k, s, p, d = case
    kh, kw = _pair(k)
    sh, sw = _pair(s)
    ph, pw = _pair(p)
    dh, dw = _pair(d)
    return N, C, H, W, m, (kh, kw), [sh, sw], [ph, pw, ph, pw], [dh, dw], (ph, pw)


def _reference(x, w, b, res, stride, pad2, dil, groups, act, g):
    """float64 forward (conv + bias + residual + act) and, for the plain conv, dx and dw for grad g."""
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    y = F.conv2d(x64, w64, None, stride, pad2, dil, groups)
    dx, dw = torch.autograd.grad(y, (x64, w64), g.double())
    out = y.detach() + (b.double().view(1, -1, 1, 1) if b is not None else 0)
    if res is not None:
        out = out + res.double()
    out = reference.activation(out, act)
    return out, dx, dw


def _run_case(case, layout, dtype, bias=False, residual=False, act=0, seed=0):
    N, C, H, W, m, (kh, kw), stride, pad, dil, pad2 = _geom(case)
    gen = torch.Generator().manual_seed(seed)
    x = _make_input(N, C, H, W, layout, dtype, gen)
    w = torch.randn(C * m, 1, kh, kw, dtype=dtype, generator=gen)
    b = torch.randn(C * m, dtype=dtype, generator=gen) if bias else None
    out = K.conv2d(x, w, b, None, stride, pad, dil, C, 0)
    res = torch.randn(out.shape, dtype=dtype, generator=gen) if residual else None
    if res is not None:
        out = K.conv2d(x, w, b, res, stride, pad, dil, C, act)
    elif act or bias:
        out = K.conv2d(x, w, b, None, stride, pad, dil, C, act)
    g = torch.randn(out.shape, dtype=dtype, generator=gen)
    if out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous():
        g = g.contiguous(memory_format=torch.channels_last)  # grad_pre arrives in the output's layout
    dx = K.dgrad(g, x, w, stride, pad, dil, C)
    dw = K.wgrad(g, x, w, stride, pad, dil, C)
    ref_out, ref_dx, ref_dw = _reference(x, w, b, res, stride, pad2, dil, C, act, g)
    return (out, dx, dw), (ref_out, ref_dx, ref_dw), x


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_depthwise_fwd_dgrad_wgrad(case, layout, dtype, threads):
    with omp_threads(threads):
        (out, dx, dw), (ref_out, ref_dx, ref_dw), x = _run_case(case, layout, dtype)
    # formats follow PyTorch: dx like x's suggested format, dw contiguous like w
    assert dx.is_contiguous(memory_format=torch.channels_last if layout.startswith("channels_last")
                            else torch.contiguous_format)
    assert dw.is_contiguous()
    assert_close_to_reference(out, ref_out)
    assert_close_to_reference(dx, ref_dx, scale=max(1.0, ref_dx.abs().max().item()))
    # wgrad sums N*OH*OW products per weight
    assert_close_to_reference(dw, ref_dw, scale=max(1.0, ref_dw.abs().max().item()))


EPILOGUE_CASES = [c for c in CASES if c[0] in ("runs_blocks", "partial_run", "wide_rows", "mult2", "stride2",
                                                "short_rows_5x5")]


@pytest.mark.parametrize("bias,residual,act", [(True, False, 1), (False, True, 2), (True, True, 1), (True, False, 0),
                                               (True, True, 3), (False, True, 4), (True, False, 5), (True, True, 6)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", EPILOGUE_CASES, ids=[c[0] for c in EPILOGUE_CASES])
def test_depthwise_epilogue(case, layout, bias, residual, act):
    """bias + residual + relu / relu6 fused into each forward kernel (the four-pixel blocks run without
    a residual, single pixels with one; an NCHW residual read by the channel-vector kernel through
    the channels_last copy path has channel stride != 1)."""
    (out, _, _), (ref_out, _, _), _ = _run_case(case, layout, torch.float32, bias, residual, act, seed=3)
    assert_close_to_reference(out, ref_out)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("runs_blocks", "partial_run", "wide_rows_s2", "mult2",
                                                                 "phase_s2_odd", "nhwc_s2_blocks")],
                         ids=lambda c: c[0])
def test_depthwise_every_instruction_set(case, layout, isa, monkeypatch):
    """Each body is compiled for baseline x86-64, AVX2 and AVX-512 (clamped to what the CPU has)."""
    monkeypatch.setenv("PYIMGCLS_CPU_ISA", isa)
    for dtype in (torch.float32, torch.float64):
        (out, dx, dw), (ref_out, ref_dx, ref_dw), _ = _run_case(case, layout, dtype, bias=True, act=2, seed=5)
        assert_close_to_reference(out, ref_out)
        assert_close_to_reference(dx, ref_dx, scale=max(1.0, ref_dx.abs().max().item()))
        assert_close_to_reference(dw, ref_dw, scale=max(1.0, ref_dw.abs().max().item()))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("runs_blocks", "wide_rows", "mult2_threaded",
                                                                 "phase_s2_threaded")],
                         ids=lambda c: c[0])
def test_depthwise_bit_identical_across_threads(case, layout):
    """Every output element (and every weight gradient) is computed by one thread in a fixed order."""
    results = []
    for threads in (1, 2):
        with omp_threads(threads):
            results.append(_run_case(case, layout, torch.float32, bias=True, seed=7)[0])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("m,stride,dil", [(1, 1, 1), (1, 2, 1), (2, 1, 2)])
def test_depthwise_gradcheck(layout, m, stride, dil):
    """ops.conv2d on the cpu backend, float64: analytic gradients of input, weight and bias."""
    gen = torch.Generator().manual_seed(11)
    C = 3
    x = torch.randn(2, C, 6, 5, dtype=torch.float64, generator=gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(C * m, 1, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(C * m, dtype=torch.float64, generator=gen, requires_grad=True)
    with pyimgcls.use_backend("cpu"):
        assert torch.autograd.gradcheck(lambda x_, w_, b_: ops.conv2d(x_, w_, b_, stride, 1, dil, C), (x, w, b))


def test_depthwise_mobilenet_shapes_through_the_op():
    """The MobileNetV2 block shapes at 64x64 input (batch 2), forward and backward through ops.conv2d
    with relu6 fused, against PyTorch's own float64 computation."""
    gen = torch.Generator().manual_seed(13)
    for C, H, s in ((32, 32, 1), (96, 32, 2), (144, 16, 1), (576, 4, 1), (960, 2, 1)):
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(2, C, H, H, generator=gen).contiguous(memory_format=fmt).requires_grad_()
            w = torch.randn(C, 1, 3, 3, generator=gen).requires_grad_()
            with pyimgcls.use_backend("cpu"):
                y = ops.conv2d(x, w, None, s, 1, 1, C, activation="relu6")
            g = torch.randn(y.shape, generator=gen)
            dx, dw = torch.autograd.grad(y, (x, w), g)
            x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
            y64 = F.conv2d(x64, w64, None, s, 1, 1, C).clamp(0, 6)
            dx64, dw64 = torch.autograd.grad(y64, (x64, w64), g.double())
            assert_close_to_reference(y, y64)
            assert_close_to_reference(dx, dx64, scale=max(1.0, dx64.abs().max().item()))
            assert_close_to_reference(dw, dw64, scale=max(1.0, dw64.abs().max().item()))


# ---------------------------------------------------------------------------------------------
# Grouped / dense convolutions (not depthwise): one GEMM per (group, chunk of images), q = n*P + p.
# Paths and what selects them (csrc/cpu/conv.cpp, "Whole-batch GEMMs"):
#   pixel-major (output / grad channel stride 1): x itself as the GEMM operand for 1x1 stride 1 when
#     its images are evenly spaced (channels_last), else im2col / gather copies; g itself unless
#     sliced; dgrad of a 1x1 stride 1 straight into dx, else col + col2im
#   channel-major (NCHW): im2col_kp / gathered g, result through a scatter pass
#   chunks: about 256 GEMM rows each (P = 100 at N = 5: chunks of 3 and 2 images), or fewer images
#     when the buffers would pass PYIMGCLS_CPU_CONV_CHUNK_BYTES (default 64 MB; set small below)
#   threads: above 2^22 multiply-adds the GEMM and the per-image copies run on the OpenMP team
# ---------------------------------------------------------------------------------------------
# (name, N, C, H, W, O, kernel, stride, padding, dilation, groups)
GEMM_CASES = [
    ("3x3_odd", 3, 32, 15, 13, 40, 3, 1, 1, 1, 1),                 # 6.7M MACs: threaded
    ("3x3_s2_groups3", 2, 24, 17, 15, 36, 3, 2, 1, 1, 3),
    ("1x1_direct", 4, 96, 12, 10, 112, 1, 1, 0, 1, 1),             # 5.2M MACs, x / g as operands
    ("1x1_direct_groups2", 3, 40, 9, 7, 58, 1, 1, 0, 1, 2),
    ("1x1_s2", 2, 33, 9, 9, 20, 1, 2, 0, 1, 1),                    # not direct: im2col of a 1x1
    ("small_out_many_images", 24, 64, 2, 2, 80, 3, 1, 1, 1, 1),    # P = 4: one 96-row GEMM, 4.4M MACs
    ("row_chunks_groups2", 5, 32, 10, 10, 48, 3, 1, 1, 1, 2),      # P = 100: chunks of 3 + 2 images
    ("batch1_dilated", 1, 20, 14, 12, 30, 3, 1, 2, 2, 1),
    ("rect_kernel", 2, 12, 11, 16, 18, (3, 5), (2, 1), (1, 2), 1, 1),
    ("resnet_16x16", 4, 64, 16, 16, 64, 3, 1, 1, 1, 1),            # 37.7M MACs, one image per chunk
]


def _make_grad(N, O, OH, OW, layout, dtype, gen):
    """The gradient in the input's layout. (h, w) must stay collapsible, so the sliced / strided
    layouts drop a row of a taller tensor instead: images not evenly spaced (the gather paths)."""
    fmt = torch.channels_last if layout.startswith("channels_last") else torch.contiguous_format
    if layout in ("nchw", "channels_last"):
        return torch.randn(N, O, OH, OW, dtype=dtype, generator=gen).contiguous(memory_format=fmt)
    big = torch.randn(N, O, OH + 1, OW, dtype=dtype, generator=gen).contiguous(memory_format=fmt)
    return big[:, :, 1:]


def _gemm_case_run(case, layout, dtype, bias=False, residual=False, act=0, seed=0):
    name, N, C, H, W, O, k, s, p, d, groups = case
    kh, kw = _pair(k)
    stride, (ph, pw), dil = list(_pair(s)), _pair(p), list(_pair(d))
    pad = [ph, pw, ph, pw]
    gen = torch.Generator().manual_seed(seed)
    x = _make_input(N, C, H, W, layout, dtype, gen)
    w = torch.randn(O, C // groups, kh, kw, dtype=dtype, generator=gen) / (C // groups * kh * kw) ** 0.5
    b = torch.randn(O, dtype=dtype, generator=gen) if bias else None
    out = K.conv2d(x, w, None, None, stride, pad, dil, groups, 0)
    _, _, OH, OW = out.shape
    g = _make_grad(N, O, OH, OW, layout, dtype, gen)
    res = _make_input(N, O, OH, OW, layout, dtype, gen) if residual else None  # any strides
    if bias or residual or act:
        out = K.conv2d(x, w, b, res, stride, pad, dil, groups, act)
    dx = K.dgrad(g, x, w, stride, pad, dil, groups)
    dw = K.wgrad(g, x, w, stride, pad, dil, groups)
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    y = F.conv2d(x64, w64, None, stride, (ph, pw), dil, groups)
    ref_dx, ref_dw = torch.autograd.grad(y, (x64, w64), g.double())
    ref = y.detach() + (b.double().view(1, -1, 1, 1) if b is not None else 0)
    if res is not None:
        ref = ref + res.double()
    ref = reference.activation(ref, act)
    return (out, dx, dw), (ref, ref_dx, ref_dw)


def _check_gemm_case(got, ref):
    (out, dx, dw), (ref_out, ref_dx, ref_dw) = got, ref
    assert_close_to_reference(out, ref_out, scale=max(1.0, ref_out.abs().max().item()))
    assert_close_to_reference(dx, ref_dx, scale=max(1.0, ref_dx.abs().max().item()))
    assert_close_to_reference(dw, ref_dw, scale=max(1.0, ref_dw.abs().max().item()))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", GEMM_CASES, ids=[c[0] for c in GEMM_CASES])
def test_gemm_conv_fwd_dgrad_wgrad(case, layout, dtype, threads):
    with omp_threads(threads):
        _check_gemm_case(*_gemm_case_run(case, layout, dtype))


@pytest.mark.parametrize("bias,residual,act", [(True, False, 1), (False, True, 2), (True, True, 1), (True, True, 3),
                                               (False, True, 4), (True, False, 5), (True, True, 6)])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [c for c in GEMM_CASES if c[0] in ("3x3_odd", "1x1_direct", "3x3_s2_groups3",
                                                                    "small_out_many_images")],
                         ids=lambda c: c[0])
def test_gemm_conv_epilogue(case, layout, bias, residual, act):
    """bias + residual + activation: in the GEMM epilogue (channels_last, no residual), in the pass
    after it (residual), or in the NCHW scatter pass."""
    _check_gemm_case(*_gemm_case_run(case, layout, torch.float32, bias, residual, act, seed=3))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("chunk_bytes", ["1", "200000"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "channels_last_sliced"])
@pytest.mark.parametrize("case", [c for c in GEMM_CASES if c[0] in ("3x3_odd", "1x1_direct", "small_out_many_images",
                                                                    "row_chunks_groups2", "resnet_16x16")],
                         ids=lambda c: c[0])
def test_gemm_conv_byte_chunks(case, layout, chunk_bytes, threads, monkeypatch):
    """A small byte budget for the per-chunk buffers: one image per chunk ("1"), or a few."""
    monkeypatch.setenv("PYIMGCLS_CPU_CONV_CHUNK_BYTES", chunk_bytes)
    with omp_threads(threads):
        _check_gemm_case(*_gemm_case_run(case, layout, torch.float32, bias=True, residual=True, act=1, seed=9))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", [c for c in GEMM_CASES if c[0] in ("3x3_odd", "1x1_direct", "resnet_16x16")],
                         ids=lambda c: c[0])
def test_gemm_conv_bit_identical_across_threads(case, layout):
    """The GEMM gives each output (and weight-gradient) element to one thread and sums it in a fixed
    order; chunks are added in order: the same bits for 1 and 2 threads."""
    results = []
    for threads in (1, 2):
        with omp_threads(threads):
            results.append(_gemm_case_run(case, layout, torch.float32, bias=True, seed=7)[0])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("g_layout,x_layout", [("channels_last", "nchw"), ("nchw", "channels_last"),
                                               ("channels_last_sliced", "nchw_strided")])
@pytest.mark.parametrize("case", [c for c in GEMM_CASES if c[0] in ("1x1_direct", "1x1_direct_groups2", "3x3_odd")],
                         ids=lambda c: c[0])
def test_gemm_conv_backward_mixed_layouts(case, g_layout, x_layout, threads):
    """grad and input in different layouts: a pixel-major 1x1 dgrad into an NCHW dx goes through
    col + col2im (dx's images are not rows of one matrix), the wgrad gathers x."""
    name, N, C, H, W, O, k, s, p, d, groups = case
    gen = torch.Generator().manual_seed(17)
    x = _make_input(N, C, H, W, x_layout, torch.float32, gen)
    w = torch.randn(O, C // groups, k, k, generator=gen) / (C // groups * k * k) ** 0.5
    OH, OW = (H + 2 * p - d * (k - 1) - 1) // s + 1, (W + 2 * p - d * (k - 1) - 1) // s + 1
    g = _make_grad(N, O, OH, OW, g_layout, torch.float32, gen)
    args = ([s, s], [p, p, p, p], [d, d], groups)
    with omp_threads(threads):
        dx, dw = K.dgrad(g, x, w, *args), K.wgrad(g, x, w, *args)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    y = F.conv2d(x64, w64, None, s, p, d, groups)
    ref_dx, ref_dw = torch.autograd.grad(y, (x64, w64), g.double())
    assert_close_to_reference(dx, ref_dx, scale=max(1.0, ref_dx.abs().max().item()))
    assert_close_to_reference(dw, ref_dw, scale=max(1.0, ref_dw.abs().max().item()))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("case", [c for c in GEMM_CASES if c[0] in ("3x3_odd", "1x1_direct", "small_out_many_images")],
                         ids=lambda c: c[0])
def test_gemm_conv_forward_into_uneven_output(case, residual, threads):
    """The native forward with a channels_last output whose images are not evenly spaced (a row of a
    taller tensor left out): the GEMM writes a scratch matrix and a pass copies it out with the
    epilogue. The left-out row keeps its NaN (nothing written outside the output)."""
    from pyimgcls import _native
    from pyimgcls.ops.conv import fwd_outputs, strides

    name, N, C, H, W, O, k, s, p, d, groups = case
    gen = torch.Generator().manual_seed(19)
    x = _make_input(N, C, H, W, "channels_last", torch.float32, gen)
    w = torch.randn(O, C // groups, k, k, generator=gen) / (C // groups * k * k) ** 0.5
    b = torch.randn(O, generator=gen)
    args = ([s, s], [p, p, p, p], [d, d], groups)
    ref_out, _, geom = fwd_outputs(x, w, None, *args)
    _, _, OH, OW = ref_out.shape
    big = torch.full((N, O, OH + 1, OW), float("nan")).contiguous(memory_format=torch.channels_last)
    out = big[:, :, 1:]
    res = torch.randn(N, O, OH, OW, generator=gen) if residual else None
    with omp_threads(threads):
        _native.C.conv2d_fwd_cpu(_native.dtype_code(x.dtype), geom, x.data_ptr(), strides(x), w.data_ptr(),
                                 b.data_ptr(), res.data_ptr() if residual else 0, strides(res), out.data_ptr(),
                                 strides(out), 1)
    ref = F.conv2d(x.double(), w.double(), b.double(), s, p, d, groups)
    if residual:
        ref = ref + res.double()
    assert_close_to_reference(out, ref.relu(), scale=max(1.0, ref.abs().max().item()))
    assert torch.isnan(big[:, :, 0]).all()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("g_layout", ["channels_last", "channels_last_sliced"])
@pytest.mark.parametrize("case", [c for c in GEMM_CASES if c[0] in ("1x1_direct", "1x1_direct_groups2", "3x3_odd")],
                         ids=lambda c: c[0])
def test_gemm_conv_channels_last_uneven_images(case, g_layout, threads):
    """A channels_last input whose (h, w) collapse but whose images are not evenly spaced (a row of a
    taller tensor left out): a 1x1 stride 1 cannot use x itself as the GEMM operand and gathers it,
    forward and wgrad."""
    name, N, C, H, W, O, k, s, p, d, groups = case
    gen = torch.Generator().manual_seed(23)
    x = _make_grad(N, C, H, W, "channels_last_sliced", torch.float32, gen)
    assert x.stride(1) == 1 and x.stride(2) == W * C and x.stride(0) != H * W * C
    w = torch.randn(O, C // groups, k, k, generator=gen) / (C // groups * k * k) ** 0.5
    b = torch.randn(O, generator=gen)
    args = ([s, s], [p, p, p, p], [d, d], groups)
    with omp_threads(threads):
        out = K.conv2d(x, w, b, None, *args, 1)
        g = _make_grad(N, O, out.shape[2], out.shape[3], g_layout, torch.float32, gen)
        dx, dw = K.dgrad(g, x, w, *args), K.wgrad(g, x, w, *args)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    y = F.conv2d(x64, w64, None, s, p, d, groups)
    ref_dx, ref_dw = torch.autograd.grad(y, (x64, w64), g.double())
    ref = (y.detach() + b.double().view(1, -1, 1, 1)).relu()
    assert_close_to_reference(out, ref, scale=max(1.0, ref.abs().max().item()))
    assert_close_to_reference(dx, ref_dx, scale=max(1.0, ref_dx.abs().max().item()))
    assert_close_to_reference(dw, ref_dw, scale=max(1.0, ref_dw.abs().max().item()))
