"""bfloat16 on the CPU (issue #20): the bf16 GEMM (csrc/cpu/gemm.cpp, "bfloat16 GEMM") and the bf16
convolution built on it (csrc/cpu/conv.cpp, "bfloat16"), every kernel path against float64.

Paths, forced with PYIMGCLS_CPU_ISA (read on every call; a path the CPU lacks is skipped):
  avx512bf16  vdpbf16ps 14 x 32 micro-kernel            (only where the CPU has AVX512_BF16)
  avx512      fallback, float32 FMAs on the bf16 pairs, 12 x 32
  avx2        fallback 6 x 16
  generic     fallback 6 x 8 (baseline x86-64 vectors)
All read the same k-pair packing. GEMM sizes reach: odd K (a zero-padded pair), K > KC = 1024 (two
and three K blocks, the last one odd), M > MC (several A blocks), N > NC = 2048 (two B panels), edge
tiles in M and N, M == 1 / N == 1, transposed and sliced operands, a strided C, bias + activation in
the epilogue, one and two threads (above 48^3 multiply-adds the GEMM forks). Outputs are poisoned
with NaN first (the native calls here; conftest for the op-level calls).

Accuracy: the reference is float64 on the same bf16-rounded inputs; the only errors left are the
float32 sums and the final rounding to bf16. At the op level (ops.linear / matmul / conv2d under
torch.autocast("cpu", dtype=torch.bfloat16), forward and every gradient) the error against float64
must be at most twice PyTorch's own bf16 autocast error on the same inputs."""
import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import _native, ops

from helpers import omp_threads

C = _native.C
PATHS = ["avx512bf16", "avx512", "avx2", "generic"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    monkeypatch.setenv("PYIMGCLS_CPU_ISA", request.param)
    if C.gemm_bf16_kernel() != request.param:
        pytest.skip(f"this CPU has no {request.param} path (runs {C.gemm_bf16_kernel()})")
    return request.param


def _gemm_bf16(a, b, bias=None, act=0, out=None):
    """The native bf16 GEMM on bf16 tensors; out (bf16, any strides) is poisoned first."""
    M, K = a.shape
    N = b.shape[1]
    if out is None:
        out = torch.empty(M, N, dtype=torch.bfloat16)
    out.fill_(float("nan"))
    C.gemm_cpu(_native.dtype_code(torch.bfloat16), a.data_ptr(), a.stride(0), a.stride(1), b.data_ptr(), b.stride(0),
               b.stride(1), bias.data_ptr() if bias is not None else 0, out.data_ptr(), out.stride(0), out.stride(1),
               M, N, K, act)
    return out


def _operand(rows, cols, layout, gen):
    if layout == "t":  # transposed view (column-major)
        return torch.randn(cols, rows, generator=gen).bfloat16().t()
    if layout == "sliced":  # row-major with a longer row stride
        return torch.randn(rows, cols + 5, generator=gen).bfloat16()[:, 2:cols + 2]
    return torch.randn(rows, cols, generator=gen).bfloat16()


def _check_gemm(a, b, bias, act, out):
    ref = a.double() @ b.double()
    if bias is not None:
        ref = ref + bias.double()
    if act == 1:
        ref = ref.relu()
    # float32 sums (at most K roundings of 2^-24 each, relative to sum |a||b|) then one bf16 rounding
    K = a.shape[1]
    bound = 2.0 ** -8 * ref.abs() + K * 2.0 ** -24 * (a.double().abs() @ b.double().abs()) + 1e-30
    err = (out.double() - ref).abs()
    assert not torch.isnan(out).any()
    assert (err <= bound).all(), f"max err {err.max().item()} (bound there {bound[err == err.max()][0].item()})"


# (M, N, K, layout of A, layout of B): what each size reaches is named
GEMM_CASES = [
    (1, 1, 1, "n", "n"),          # M == 1 and N == 1, one odd k
    (1, 37, 9, "n", "t"),         # one row (the packed path; no bf16 gemv)
    (23, 1, 18, "t", "n"),        # one column
    (15, 33, 7, "n", "n"),        # edge tiles in M and N, odd K
    (29, 31, 64, "t", "sliced"),  # transposed A, sliced B
    (150, 70, 1100, "n", "t"),    # K > KC: two K blocks; M > MC; threaded
    (40, 97, 2049, "sliced", "n"),  # three K blocks, the last odd
    (9, 2100, 40, "n", "n"),      # N > NC: two B panels
]


@pytest.mark.parametrize("case", GEMM_CASES, ids=lambda c: "x".join(map(str, c[:3])) + c[3] + c[4])
def test_gemm_every_path_against_float64(case, path):
    M, N, K, la, lb = case
    gen = torch.Generator().manual_seed(M * 1009 + N * 31 + K)
    a, b = _operand(M, K, la, gen), _operand(K, N, lb, gen)
    bias = torch.randn(N, generator=gen).bfloat16()
    for act, bias_arg in ((0, None), (1, bias)):
        _check_gemm(a, b, bias_arg, act, _gemm_bf16(a, b, bias_arg, act))


def test_gemm_strided_output(path):
    gen = torch.Generator().manual_seed(3)
    a, b = _operand(45, 130, "n", gen), _operand(130, 37, "n", gen)
    out = torch.empty(37, 45, dtype=torch.bfloat16).t()  # column stride 45
    _check_gemm(a, b, None, 0, _gemm_bf16(a, b, out=out))


def test_gemm_paths_bit_identical(monkeypatch):
    """The fallback adds the exact bf16 products in vdpbf16ps's order with the same KC on every
    instruction set, so all paths give the same bits on normal (not subnormal) values."""
    gen = torch.Generator().manual_seed(11)
    a, b = _operand(75, 2049, "n", gen), _operand(2049, 140, "t", gen)
    results = {}
    for isa in PATHS:
        monkeypatch.setenv("PYIMGCLS_CPU_ISA", isa)
        if C.gemm_bf16_kernel() == isa:
            results[isa] = _gemm_bf16(a, b)
    assert len(results) >= 2
    first = next(iter(results.values()))
    for isa, r in results.items():
        assert torch.equal(r, first), isa


def test_gemm_threads_bit_identical(path):
    """Each C element is summed by one thread in a fixed order."""
    gen = torch.Generator().manual_seed(5)
    a, b = _operand(130, 1500, "n", gen), _operand(1500, 90, "n", gen)
    with omp_threads(1):
        one = _gemm_bf16(a, b).clone()
    with omp_threads(2):
        two = _gemm_bf16(a, b)
    assert torch.equal(one, two)


def test_gemm_rounds_to_nearest_even_and_keeps_nan(path):
    """K == 1: the float32 result is one exact product, so the output is exactly PyTorch's bf16
    rounding of it. (1 + j 2^-7) * 1.5 falls on a tie for every odd j (ties go to even), between
    two bf16 values otherwise; inf stays inf, NaN stays NaN, 3e38 * 1.5 overflows to inf."""
    j = torch.arange(128, dtype=torch.float32)
    col = torch.cat([1 + j * 2 ** -7, -(1 + j * 2 ** -7), torch.tensor([3.0e38, float("inf"), float("nan"), 0.0])])
    a = col.bfloat16().reshape(-1, 1)
    assert torch.equal(a.float().reshape(-1)[:256], col[:256])  # the inputs are bf16 values
    b = torch.tensor([[1.5, -1.5, 1.0]]).bfloat16()
    out = _gemm_bf16(a, b)
    want = (a.float() * b.float()).bfloat16()
    assert torch.equal(out.isnan(), want.isnan())
    assert torch.equal(out[~want.isnan()], want[~want.isnan()])


def _err(x, ref):
    return (x.double() - ref).abs().max().item()


def _assert_within_torch(ours, theirs, ref, what):
    e_ours, e_torch = _err(ours, ref), _err(theirs, ref)
    assert not torch.isnan(ours).any(), what
    assert e_ours <= 2 * e_torch + 1e-6 * ref.abs().max().item(), f"{what}: ours {e_ours} vs torch {e_torch}"


def _leaf(t):
    return t.detach().clone().requires_grad_()


@pytest.mark.parametrize("shape", [(1, 17, 9), (33, 70, 45), (64, 300, 130)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("isa", ["avx512bf16", "generic"])
def test_linear_autocast_matches_torch(shape, isa, monkeypatch):
    """ops.linear (bias + relu) under autocast: output bf16, fp32 master weight gets fp32 grads."""
    monkeypatch.setenv("PYIMGCLS_CPU_ISA", isa)
    if isa == "avx512bf16" and C.gemm_bf16_kernel() != isa:
        pytest.skip("no AVX512_BF16")
    M, K, N = shape
    gen = torch.Generator().manual_seed(M + K + N)
    x = torch.randn(M, K + 3, generator=gen)[:, 1:K + 1]  # non-contiguous input
    w, b = torch.randn(N, K, generator=gen) / K ** 0.5, torch.randn(N, generator=gen)
    g = torch.randn(M, N, generator=gen).bfloat16()
    outs = {}
    for name in ("ours", "torch"):
        xl, wl, bl = _leaf(x), _leaf(w), _leaf(b)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = (ops.linear(xl, wl, bl, activation="relu") if name == "ours"
                 else F.relu(F.linear(xl, wl, bl)))
        assert y.dtype == torch.bfloat16
        grads = torch.autograd.grad(y, (xl, wl, bl), g)
        assert all(t.dtype == torch.float32 for t in grads)
        outs[name] = (y, *grads)
    xd, wd, bd = (_leaf(t.bfloat16().double()) for t in (x, w, b))
    yd = F.relu(F.linear(xd, wd, bd))
    ref = (yd, *torch.autograd.grad(yd, (xd, wd, bd), g.double()))
    for i, what in enumerate(("out", "grad_input", "grad_weight", "grad_bias")):
        _assert_within_torch(outs["ours"][i], outs["torch"][i], ref[i], what)


def test_matmul_bf16_batch_and_vector():
    gen = torch.Generator().manual_seed(9)
    a = torch.randn(3, 20, 33, generator=gen).bfloat16()
    b = torch.randn(33, 7, generator=gen).bfloat16()
    v = torch.randn(33, generator=gen).bfloat16()
    with pyimgcls.use_backend("cpu"):
        for x, y in ((a, b), (a, v), (a[0], b)):
            out = ops.matmul(x, y)
            assert out.dtype == torch.bfloat16
            _assert_within_torch(out, torch.matmul(x, y), torch.matmul(x.double(), y.double()), "matmul")


# (name, N, C, H, W, O, k, stride, padding, groups, layout); each reaches one conv.cpp branch
CONV_CASES = [
    ("nchw_3x3", 2, 16, 9, 9, 24, 3, 1, 1, 1, "nchw"),                # channel-major GEMM + scatter
    ("nhwc_3x3", 2, 16, 9, 9, 24, 3, 1, 1, 1, "channels_last"),       # pixel-major im2col, out in place
    ("nhwc_1x1", 3, 32, 6, 6, 40, 1, 1, 0, 1, "channels_last"),       # x itself as the GEMM operand
    ("nhwc_1x1_sliced", 2, 24, 5, 7, 16, 1, 1, 0, 1, "sliced"),       # 1x1 with a gathered copy
    ("stem_7x7_s2", 2, 3, 17, 17, 16, 7, 2, 3, 1, "nchw"),
    ("grouped", 2, 12, 8, 8, 18, 3, 1, 1, 3, "channels_last"),
    ("depthwise", 2, 20, 9, 9, 20, 3, 1, 1, 20, "channels_last"),      # direct kernels (float32 math)
    ("batch1_big", 1, 64, 18, 18, 80, 3, 1, 1, 1, "nchw"),            # > 2^22 MACs: threaded, K 576
    ("small_batched", 4, 6, 10, 10, 8, 5, 1, 0, 1, "nchw"),           # LeNet-sized whole-batch GEMM
    ("noncontig", 2, 10, 11, 11, 12, 3, 2, 1, 1, "strided"),
]


def _conv_input(N, Cc, H, W, layout, gen):
    if layout == "channels_last":
        return torch.randn(N, Cc, H, W, generator=gen).contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        big = torch.randn(N, Cc, H, W + 2, generator=gen).contiguous(memory_format=torch.channels_last)
        return big[:, :, :, 1:W + 1]
    if layout == "strided":
        return torch.randn(N, Cc, H, 2 * W, generator=gen)[:, :, :, ::2]
    return torch.randn(N, Cc, H, W, generator=gen)


def _conv_case(case, isa, monkeypatch, residual=False, act=None):
    name, N, Cc, H, W, O, k, stride, pad, groups, layout = case
    monkeypatch.setenv("PYIMGCLS_CPU_ISA", isa)
    if isa == "avx512bf16" and C.gemm_bf16_kernel() != isa:
        pytest.skip("no AVX512_BF16")
    gen = torch.Generator().manual_seed(N * 100 + Cc + O)
    x = _conv_input(N, Cc, H, W, layout, gen)
    w = torch.randn(O, Cc // groups, k, k, generator=gen) / (Cc // groups * k * k) ** 0.5
    b = torch.randn(O, generator=gen)
    OH = (H + 2 * pad - k) // stride + 1
    OW = (W + 2 * pad - k) // stride + 1
    r = torch.randn(N, O, OH, OW, generator=gen) if residual else None
    g = torch.randn(N, O, OH, OW, generator=gen).bfloat16()
    outs = {}
    for who in ("ours", "torch"):
        xl, wl, bl = _leaf(x), _leaf(w), _leaf(b)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if who == "ours":
                with pyimgcls.use_backend("cpu"):
                    y = ops.conv2d(xl, wl, bl, stride, pad, 1, groups, activation=act, residual=r)
            else:
                y = F.conv2d(xl, wl, bl, stride, pad, 1, groups)
                if r is not None:
                    y = y + r.bfloat16()
                if act == "relu":
                    y = F.relu(y)
        assert y.dtype == torch.bfloat16
        outs[who] = (y, *torch.autograd.grad(y, (xl, wl, bl), g))
    xd, wd, bd = (_leaf(t.bfloat16().double()) for t in (x, w, b))
    yd = F.conv2d(xd, wd, bd, stride, pad, 1, groups)
    if r is not None:
        yd = yd + r.bfloat16().double()
    if act == "relu":
        yd = F.relu(yd)
    ref = (yd, *torch.autograd.grad(yd, (xd, wd, bd), g.double()))
    return outs, ref


@pytest.mark.parametrize("isa", ["avx512bf16", "generic"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c[0])
def test_conv_autocast_matches_torch(case, isa, monkeypatch):
    outs, ref = _conv_case(case, isa, monkeypatch)
    if case[-1] in ("channels_last", "sliced"):
        assert outs["ours"][0].is_contiguous(memory_format=torch.channels_last)
    for i, what in enumerate(("out", "grad_input", "grad_weight", "grad_bias")):
        assert outs["ours"][i].dtype == outs["torch"][i].dtype, what
        _assert_within_torch(outs["ours"][i], outs["torch"][i], ref[i], what)


@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[1]], ids=lambda c: c[0])
def test_conv_residual_relu_and_chunks(case, monkeypatch):
    """Residual + relu epilogue, with a 20 KB chunk budget so the chunk loop runs (one image per chunk)."""
    monkeypatch.setenv("PYIMGCLS_CPU_CONV_CHUNK_BYTES", "20000")
    outs, ref = _conv_case(case, "avx512", monkeypatch, residual=True, act="relu")
    for i, what in enumerate(("out", "grad_input", "grad_weight", "grad_bias")):
        _assert_within_torch(outs["ours"][i], outs["torch"][i], ref[i], what)


def test_conv_bf16_native_entry_points_threads():
    """The backend's bf16 entry points (no float32 upcast around them) give bf16 results, identical
    for one and two threads (every element summed by one thread in a fixed order)."""
    from pyimgcls import backends
    K = backends.kernels("cpu", "conv")
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 48, 16, 16, generator=gen).bfloat16().contiguous(memory_format=torch.channels_last)
    w = (torch.randn(64, 48, 3, 3, generator=gen) / 20).bfloat16()
    g = torch.randn(4, 64, 16, 16, generator=gen).bfloat16().contiguous(memory_format=torch.channels_last)
    res = []
    for n in (1, 2):
        with omp_threads(n):
            y = K.conv2d(x, w, None, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, 0)
            dx = K.dgrad(g, x, w, [1, 1], [1, 1, 1, 1], [1, 1], 1)
            dw = K.wgrad(g, x, w, [1, 1], [1, 1, 1, 1], [1, 1], 1)
            res.append((y.clone(), dx.clone(), dw.clone()))
    for a, b in zip(*res):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b)


@pytest.mark.parametrize("layout", ["sliced", "strided"])
def test_conv_bf16_entry_points_strided_inputs(layout):
    """bf16 tensors that are not dense (a channels_last slice, an NCHW view with w stride 2) reach the
    strided copies into float32 scratch (autocast's casts give dense tensors, so only direct calls
    of the backend entry points get here); float64 reference on the same bf16 values."""
    from pyimgcls import backends
    K = backends.kernels("cpu", "conv")
    gen = torch.Generator().manual_seed(6)
    x = _conv_input(2, 12, 7, 9, layout, gen)
    x = torch.empty_strided(x.shape, x.stride(), dtype=torch.bfloat16).copy_(x)  # .bfloat16() would densify
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    w = (torch.randn(10, 12, 3, 3, generator=gen) / 6).bfloat16()
    big = torch.randn(2, 10, 7, 18, generator=gen).bfloat16()
    g = big[:, :, :, ::2]  # non-dense gradient
    geo = ([1, 1], [1, 1, 1, 1], [1, 1], 1)
    y = K.conv2d(x, w, None, None, *geo, 0)
    dx = K.dgrad(g, x, w, *geo)
    dw = K.wgrad(g, x, w, *geo)
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    yd = F.conv2d(xd, wd, None, 1, 1)
    rdx, rdw = torch.autograd.grad(yd, (xd, wd), g.double())
    for ours, ref in ((y, yd), (dx, rdx), (dw, rdw)):
        assert ours.dtype == torch.bfloat16
        err = (ours.double() - ref).abs()
        assert (err <= 2.0 ** -8 * ref.abs() + 1e-4 * ref.abs().max()).all(), err.max().item()


# ---------------------------------------------------------------------------------------------
# The native bf16 conv path (csrc/cpu/conv.cpp "bfloat16, native path": non-depthwise convs of at
# least 2^22 multiply-adds read bf16 directly). Every case is checked against the widening path
# (PYIMGCLS_CPU_BF16_CONV=widen: same bf16 operands and float32 sums, so the same bits) and against
# float64. (name, N, C, H, W, O, k, stride, pad, groups, layout); layouts: nchw, channels_last,
# "rows" (channels_last with image rows not evenly spaced: a slice along H, so a 1x1 conv's input
# and gradient are gathered instead of used in place), "sliced" (channels_last sliced along W:
# (h, w) not collapsible, im2col even for 1x1), "strided" (NCHW, w stride 2).
NATIVE_CASES = [
    ("nchw_3x3", 2, 32, 16, 16, 48, 3, 1, 1, 1, "nchw"),             # channel-major GEMM, col2im_kp
    ("nchw_3x3_few_out", 2, 24, 16, 16, 64, 3, 1, 1, 1, "nchw"),     # the widening path takes its few-out orientation
    ("nhwc_3x3", 2, 32, 16, 16, 48, 3, 1, 1, 1, "channels_last"),    # pixel-major im2col, col2im_pk, (i,j,c) dw
    ("nhwc_1x1", 4, 64, 16, 16, 72, 1, 1, 0, 1, "channels_last"),    # x, g, dx used in place (no copies)
    ("nhwc_1x1_rows", 4, 64, 16, 16, 72, 1, 1, 0, 1, "rows"),        # 1x1 direct with gathered x and g
    ("nhwc_1x1_sliced", 4, 64, 16, 16, 72, 1, 1, 0, 1, "sliced"),    # 1x1 through im2col_pk
    ("stem_7x7_s2", 2, 3, 40, 40, 64, 7, 2, 3, 1, "nchw"),            # stride 2, K = 147 (odd)
    ("grouped_s2_nhwc", 4, 64, 16, 16, 96, 3, 2, 1, 2, "channels_last"),
    ("grouped_s2_nchw", 4, 64, 16, 16, 96, 3, 2, 1, 2, "nchw"),
    ("batch1_odd", 1, 67, 19, 19, 81, 3, 1, 1, 1, "nchw"),            # batch 1, odd C / O / K
    ("batch1_odd_nhwc", 1, 67, 19, 19, 81, 3, 1, 1, 1, "channels_last"),
    ("strided", 2, 32, 16, 16, 48, 3, 1, 1, 1, "strided"),
]


def _native_tensor(shape, layout, gen):
    """A bf16 tensor of `shape` in `layout` (values rounded to bf16 first: the float64 reference reads them)."""
    N, Cc, H, W = shape
    if layout == "rows":
        big = torch.randn(N, Cc, H + 1, W, generator=gen).bfloat16().contiguous(memory_format=torch.channels_last)
        t = big[:, :, :H]
    elif layout in ("channels_last", "sliced", "strided", "nchw"):
        t = _conv_input(N, Cc, H, W, layout, gen)
        t = torch.empty_strided(t.shape, t.stride(), dtype=torch.bfloat16).copy_(t)
    else:
        raise ValueError(layout)
    return t


def _native_run(K, x, w, b, r, g, geo, act, mode, monkeypatch):
    monkeypatch.setenv("PYIMGCLS_CPU_BF16_CONV", mode)
    return (K.conv2d(x, w, b, r, *geo, act), K.dgrad(g, x, w, *geo), K.wgrad(g, x, w, *geo))


def _native_case(case, gen):
    name, N, Cc, H, W, O, k, stride, pad, groups, layout = case
    OH = (H + 2 * pad - k) // stride + 1
    OW = (W + 2 * pad - k) // stride + 1
    assert N * O * OH * OW * Cc // groups * k * k >= 1 << 22, "below the native path's size"
    x = _native_tensor((N, Cc, H, W), layout, gen)
    w = (torch.randn(O, Cc // groups, k, k, generator=gen) / (Cc // groups * k * k) ** 0.5).bfloat16()
    b = torch.randn(O, generator=gen).bfloat16()
    glayout = "rows" if layout == "rows" else "channels_last" if layout != "nchw" and layout != "strided" else "nchw"
    r = _native_tensor((N, O, OH, OW), glayout, gen)
    g = _native_tensor((N, O, OH, OW), glayout, gen)
    geo = ([stride, stride], [pad] * 4, [1, 1], groups)
    return x, w, b, r, g, geo


def _native_reference(x, w, b, r, g, geo, relu):
    (stride, _), (pad, *_), _, groups = geo
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    yd = F.conv2d(xd, wd, None, stride, pad, 1, groups)
    rdx, rdw = torch.autograd.grad(yd, (xd, wd), g.double())
    yd = yd.detach() + b.double().view(1, -1, 1, 1)
    if r is not None:
        yd = yd + r.double()
    return (yd.relu() if relu else yd), rdx, rdw


def _assert_close_f64(ours, ref, what):
    assert ours.dtype == torch.bfloat16 and not torch.isnan(ours).any(), what
    err = (ours.double() - ref).abs()
    # one bf16 rounding of a float32 sum: 2^-8 relative, plus the float32 sums' error
    assert (err <= 2.0 ** -8 * ref.abs() + 1e-4 * ref.abs().max()).all(), f"{what}: {err.max().item()}"


@pytest.mark.parametrize("residual", [False, True], ids=["bias_relu", "bias_res_relu"])
@pytest.mark.parametrize("case", NATIVE_CASES, ids=lambda c: c[0])
def test_conv_bf16_native_matches_widening_path(case, residual, monkeypatch):
    from pyimgcls import backends
    K = backends.kernels("cpu", "conv")
    x, w, b, r, g, geo = _native_case(case, torch.Generator().manual_seed(sum(case[1:8])))
    r = r if residual else None
    ours = _native_run(K, x, w, b, r, g, geo, 1, "native", monkeypatch)
    widen = _native_run(K, x, w, b, r, g, geo, 1, "widen", monkeypatch)
    if case[-1] in ("channels_last", "rows", "sliced"):
        assert ours[0].is_contiguous(memory_format=torch.channels_last)
    for what, a, bw, ref in zip(("out", "grad_input", "grad_weight"), ours, widen,
                                _native_reference(x, w, b, r, g, geo, True)):
        assert torch.equal(a, bw), f"{what}: native and widening paths differ"
        _assert_close_f64(a, ref, what)


@pytest.mark.parametrize("case", [NATIVE_CASES[0], NATIVE_CASES[2], NATIVE_CASES[4]], ids=lambda c: c[0])
def test_conv_bf16_native_chunks_threads_generic(case, monkeypatch):
    """A 40 KB chunk budget (one image per chunk: the chunk loop, wgrad's chunk sums), one and two
    threads (identical bits), and the baseline build of the output pass (PYIMGCLS_CPU_ISA=generic:
    the GEMM fallback, same values as vdpbf16ps)."""
    from pyimgcls import backends
    K = backends.kernels("cpu", "conv")
    x, w, b, r, g, geo = _native_case(case, torch.Generator().manual_seed(7))
    ref = _native_reference(x, w, b, r, g, geo, True)
    monkeypatch.setenv("PYIMGCLS_CPU_CONV_CHUNK_BYTES", "40000")
    runs = []
    for n in (1, 2):
        with omp_threads(n):
            runs.append(_native_run(K, x, w, b, r, g, geo, 1, "native", monkeypatch))
    monkeypatch.setenv("PYIMGCLS_CPU_ISA", "generic")
    runs.append(_native_run(K, x, w, b, r, g, geo, 1, "native", monkeypatch))
    widen = _native_run(K, x, w, b, r, g, geo, 1, "widen", monkeypatch)
    for i, what in enumerate(("out", "grad_input", "grad_weight")):
        for run in runs:
            _assert_close_f64(run[i], ref[i], what)
        assert torch.equal(runs[0][i], runs[1][i]), f"{what}: 1 and 2 threads differ"
        if i < 2:  # wgrad's chunk sums differ from the widening path's (other chunk sizes: 2-byte columns)
            assert torch.equal(runs[2][i], widen[i]), f"{what}: generic native and widening paths differ"


@pytest.mark.parametrize("act", [0, 2, 3, 4, 5, 6], ids=["none", "relu6", "silu", "hardswish", "sigmoid", "hardsigmoid"])
def test_conv_bf16_native_activations(act, monkeypatch):
    """Every activation of the output pass (pixel runs and channel runs), against the widening path."""
    from pyimgcls import backends
    K = backends.kernels("cpu", "conv")
    for case in (NATIVE_CASES[0], NATIVE_CASES[2]):
        x, w, b, r, g, geo = _native_case(case, torch.Generator().manual_seed(act))
        for res in (None, r):
            monkeypatch.setenv("PYIMGCLS_CPU_BF16_CONV", "native")
            y = K.conv2d(x, w, b, res, *geo, act)
            monkeypatch.setenv("PYIMGCLS_CPU_BF16_CONV", "widen")
            assert torch.equal(y, K.conv2d(x, w, b, res, *geo, act)), (case[0], res is not None)


def test_conv_bf16_native_uncollapsible_residual_and_bad_env(monkeypatch):
    """A residual whose (h, w) do not collapse keeps the widening path (still right; only a direct
    call of the native function passes one: the op layer matches the residual to the output's
    layout); an unknown PYIMGCLS_CPU_BF16_CONV value is an error naming the variable."""
    from pyimgcls import backends
    from pyimgcls.ops.conv import fwd_outputs, strides
    K = backends.kernels("cpu", "conv")
    x, w, b, _, g, geo = _native_case(NATIVE_CASES[0], torch.Generator().manual_seed(3))
    big = torch.randn(2, 48, 16, 19, generator=torch.Generator().manual_seed(4)).bfloat16()
    r = big[:, :, :, 1:17]
    monkeypatch.setenv("PYIMGCLS_CPU_BF16_CONV", "native")
    y, _, geom = fwd_outputs(x, w, None, *geo)
    y.fill_(float("nan"))
    C.conv2d_fwd_cpu(_native.dtype_code(torch.bfloat16), geom, x.data_ptr(), strides(x), w.data_ptr(), b.data_ptr(),
                     r.data_ptr(), strides(r), y.data_ptr(), strides(y), 1)
    _assert_close_f64(y, _native_reference(x, w, b, r, g, geo, True)[0], "out")
    monkeypatch.setenv("PYIMGCLS_CPU_BF16_CONV", "fast")
    with pytest.raises(ValueError, match="PYIMGCLS_CPU_BF16_CONV"):
        K.conv2d(x, w, b, None, *geo, 1)


@pytest.mark.parametrize("case", [NATIVE_CASES[1], NATIVE_CASES[7], NATIVE_CASES[9]], ids=lambda c: c[0])
def test_conv_autocast_native_matches_torch(case, monkeypatch):
    """ops.conv2d under autocast on native-path sizes: within 2x PyTorch's own bf16 error."""
    outs, ref = _conv_case(case, "avx512bf16", monkeypatch, residual=True, act="relu")
    for i, what in enumerate(("out", "grad_input", "grad_weight", "grad_bias")):
        assert outs["ours"][i].dtype == outs["torch"][i].dtype, what
        _assert_within_torch(outs["ours"][i], outs["torch"][i], ref[i], what)
