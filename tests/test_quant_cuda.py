"""The cuda backend's quantised family (csrc/cuda/quant.cu: IMMA GEMM, im2col, quantize, pools) bit for bit
against the cpu backend, on the shapes tests/test_quant.py uses (copied here: that file belongs to the
CPU / Triton tests) plus sizes that straddle the CUDA GEMM's 64 x 64 x 64 tiles, both A staging paths
(16-byte rows through cp.async, any other rows gathered bytewise), non-contiguous and channels_last
inputs and batch 1. All tests need a GPU (marked ``cuda``); the data path is checked without one by
tests/test_quant_cuda_emulation.py."""
from __future__ import annotations

import pytest
import torch

import pyimgcls
from pyimgcls import ops
from pyimgcls.backends import kernels

pytestmark = pytest.mark.cuda

DEV = "cuda"


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _case(M, N, K, seed, bias=True, res=False):
    g = _gen(seed)
    a = torch.randint(0, 256, (M, K), dtype=torch.uint8, generator=g)
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    b = torch.randint(-5000, 5000, (N,), dtype=torch.int32, generator=g) if bias else None
    mult = (torch.rand(N, generator=g, dtype=torch.float64) * 4e-4 + 1e-5).to(torch.float32)
    r = torch.randint(0, 256, (M, N), dtype=torch.uint8, generator=g) if res else None
    return a, w, b, mult, r


EPILOGUES = {
    "u8": dict(res=False, out_zero=17, qmin=0, qmax=255, act=0, float_out=False, bias=True),
    "u8_res_relu6": dict(res=True, out_zero=40, qmin=40, qmax=160, act=0, float_out=False, bias=True),
    "u8_nobias_relu": dict(res=False, out_zero=3, qmin=3, qmax=255, act=0, float_out=False, bias=False),
    "f32_relu": dict(res=False, out_zero=0, qmin=0, qmax=255, act=1, float_out=True, bias=True),
    "f32_relu6": dict(res=False, out_zero=0, qmin=0, qmax=255, act=2, float_out=True, bias=False),
}
# test_quant.py's GEMM shapes + tile straddlers: 64-row / 64-channel / 64-byte K tiles +-1, K < 32, a
# ResNet 3x3 layer's K = 576 at batch 1 (M = 49)
GEMM_SHAPES = [(1, 1, 1), (7, 13, 33), (53, 70, 259), (101, 129, 40), (3, 20, 1203), (65, 63, 64), (64, 65, 65),
               (129, 128, 31), (49, 512, 576)]


def _run(backend, a, a_zero, w, b, mult, r, ep, K, lda_pad=0, a_offset=0):
    """gemm of the backend with A's rows padded (lda = K + lda_pad) and its start shifted by a_offset
    bytes (the gather path when either breaks 16-byte rows), out rows padded and poisoned."""
    M, N = a.shape[0], w.shape[0]
    dev = DEV if backend == "cuda" else "cpu"
    buf = torch.full((M * (K + lda_pad) + a_offset + 16,), 0xEE, dtype=torch.uint8, device=dev)
    a_dev = buf[a_offset:a_offset + M * (K + lda_pad)].view(M, K + lda_pad)[:, :K]
    a_dev.copy_(a)
    dt = torch.float32 if ep["float_out"] else torch.uint8
    big = torch.full((M, N + 3), float("nan") if ep["float_out"] else 255, dtype=dt, device=dev)
    out = big[:, :N]
    kern = kernels(backend, "quant")
    to = (lambda t: None if t is None else t.to(dev))
    kern.gemm(a_dev, a_zero, kern.pack_weight(w.to(dev)), K, to(b), mult.to(dev), to(r), 9, 0.731, ep["out_zero"],
              ep["qmin"], ep["qmax"], ep["act"], out)
    gap = big[:, N:]
    assert (gap.isnan().all() if ep["float_out"] else (gap == 255).all()), "kernel wrote outside [M, N]"
    return out.cpu()


def _assert_equal(ours, want):
    assert ours.dtype == want.dtype
    if ours.dtype == torch.float32:
        assert torch.equal(ours.view(torch.int32), want.contiguous().view(torch.int32)), \
            f"max diff {(ours - want).abs().max().item()}"
    else:
        diff = (ours.to(torch.int32) - want.to(torch.int32)).abs()
        assert int(diff.max()) == 0, f"{int((diff > 0).sum())} of {diff.numel()} differ, max {int(diff.max())}"


@pytest.mark.parametrize("staging", ["cp_async", "gather_lda", "gather_offset"])
@pytest.mark.parametrize("epi", list(EPILOGUES))
@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cuda_gemm_bit_exact_vs_cpu(shape, epi, staging):
    M, N, K = shape
    ep = EPILOGUES[epi]
    a, w, b, mult, r = _case(M, N, K, seed=M * 7 + N, bias=ep["bias"], res=ep["res"])
    lda_pad = (-K) % 16 if staging != "gather_lda" else (-K) % 16 + 3
    offset = 5 if staging == "gather_offset" else 0
    want = _run("cpu", a, 37, w, b, mult, r, ep, K)
    _assert_equal(_run("cuda", a, 37, w, b, mult, r, ep, K, lda_pad=lda_pad, a_offset=offset), want)


def test_cuda_gemm_extreme_values_and_rounding():
    M, N, K = 9, 33, 517
    a = torch.full((M, K), 255, dtype=torch.uint8)
    w = torch.full((N, K), -127, dtype=torch.int8)
    w[::2] = 127
    w[1::4, ::3] = -128
    mult = torch.full((N,), 1.0 / 4096, dtype=torch.float32)
    ep = EPILOGUES["f32_relu"] | {"act": 0}
    _assert_equal(_run("cuda", a, 0, w, None, mult, None, ep, K), _run("cpu", a, 0, w, None, mult, None, ep, K))
    ks = torch.arange(-7, 8)
    a = (ks + 100).to(torch.uint8).reshape(-1, 1)
    w = torch.ones(1, 1, dtype=torch.int8)
    ep = dict(res=False, out_zero=100, qmin=0, qmax=255, act=0, float_out=False, bias=False)
    ours = _run("cuda", a, 100, w, None, torch.tensor([0.5]), None, ep, 1)
    expect = torch.tensor([-4, -3, -2, -2, -2, -1, 0, 0, 0, 1, 2, 2, 2, 3, 4]) + 100
    assert torch.equal(ours.reshape(-1).to(torch.int64), expect)


def _qw(O, CG, KH, KW, groups, seed):
    return ops.quantize_weight(torch.randn(O, CG, KH, KW, generator=_gen(seed)), groups=groups)


def _layout(x, kind):
    if kind == "cl":
        return x.contiguous(memory_format=torch.channels_last)
    if kind in ("slice", "slice16"):
        extra = 16 if kind == "slice16" else 2
        wide = torch.cat([x, x[:, :extra]], 1).contiguous(memory_format=torch.channels_last)
        return wide[:, :x.shape[1]]
    return x.contiguous()


# test_quant.py's CONV_CASES (N, C, H, W, O, KH, stride, padding, dilation, groups, layout) + ResNet-50-like
# layers at batch 1: the stem (K = 147, gathered A) and a 3x3 / 1x1 bottleneck pair (cp.async A)
CONV_CASES = [
    (2, 19, 5, 7, 21, 1, 1, 0, 1, 1, "cl"),
    (2, 8, 5, 5, 12, 1, 1, 0, 1, 4, "cl"),
    (1, 19, 5, 7, 21, 1, 1, 0, 1, 1, "nchw"),
    (2, 8, 7, 6, 17, 1, 2, 0, 1, 1, "cl"),
    (1, 5, 9, 8, 11, 3, 1, 1, 1, 1, "cl"),
    (3, 6, 11, 9, 10, 3, 2, 1, 1, 2, "nchw"),
    (2, 4, 10, 10, 4, 3, 1, 2, 2, 1, "cl"),
    (2, 6, 8, 7, 12, 3, 1, 1, 1, 6, "cl"),
    (1, 3, 12, 12, 7, 5, 1, 0, 1, 1, "slice"),
    (1, 19, 6, 5, 9, 3, 1, 1, 1, 1, "cl"),
    (2, 3, 13, 11, 8, 7, 2, 3, 1, 1, "cl"),
    (1, 3, 56, 56, 64, 7, 2, 3, 1, 1, "cl"),
    (1, 64, 14, 14, 64, 3, 1, 1, 1, 1, "cl"),
    (1, 64, 14, 14, 256, 1, 1, 0, 1, 1, "cl"),
    # the implicit-GEMM conv (NHWC-dense, C % 16 == 0): dilation + stride, a channel slice (pixel stride 48),
    # a 1x1 stride-2 downsample, batch 3 with O straddling the 64-channel tile; NCHW: im2col + gemm
    (2, 16, 11, 9, 70, 3, 2, 2, 2, 1, "cl"),
    (1, 32, 9, 8, 24, 3, 1, 1, 1, 1, "slice16"),
    (2, 48, 8, 8, 65, 1, 2, 0, 1, 1, "cl"),
    (3, 32, 7, 7, 129, 3, 1, 1, 1, 1, "cl"),
    (1, 32, 7, 7, 20, 3, 1, 1, 1, 1, "nchw"),
]


def _conv(backend, x, wq, bias, s, p, d, res):
    with pyimgcls.use_backend(backend):
        y = ops.quantized_conv2d(x, 0.02, 113, wq, bias, s, p, d, output_scale=0.05, output_zero_point=20,
                                 activation="relu6", residual=res, residual_scale=0.07, residual_zero_point=128)
        yf = ops.quantized_conv2d(x, 0.02, 113, wq, bias, s, p, d, activation="relu")
    return y, yf


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}_o{c[4]}k{c[5]}s{c[6]}p{c[7]}"
                         f"d{c[8]}g{c[9]}_{c[10]}")
def test_cuda_quantized_conv2d_bit_exact_vs_cpu(case):
    # groups = 1: backends/cuda/quant.py conv_gemm (implicit GEMM where the input allows, else im2col + gemm);
    # grouped and 1x1 direct: the op's im2col / views + gemm
    N, C, H, W, O, K, s, p, d, groups, kind = case
    g = _gen(sum(case[:10]))
    x = torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=g)
    wq = _qw(O, C // groups, K, K, groups, seed=N + O)
    bias = torch.randn(O, generator=g)
    oh = (H + 2 * p - d * (K - 1) - 1) // s + 1
    ow = (W + 2 * p - d * (K - 1) - 1) // s + 1
    res = torch.randint(0, 256, (N, O, oh, ow), dtype=torch.uint8, generator=g)
    want, want_f = _conv("cpu", _layout(x, kind), wq, bias, s, p, d, res)
    wq_dev = ops.QuantizedWeight(wq.q.to(DEV), wq.scale.to(DEV), wq.groups)
    y, yf = _conv("cuda", _layout(x.to(DEV), kind), wq_dev, bias.to(DEV), s, p, d, res.to(DEV))
    assert y.is_cuda and y.is_contiguous(memory_format=torch.channels_last) and y.dtype == torch.uint8
    _assert_equal(y.cpu(), want)
    _assert_equal(yf.cpu(), want_f)


@pytest.mark.parametrize("M", [1, 5, 130])
def test_cuda_quantized_linear_bit_exact_vs_cpu(M):
    g = _gen(M)
    x = torch.randint(0, 256, (M, 72), dtype=torch.uint8, generator=g)
    wq = ops.quantize_weight(torch.randn(70, 72, generator=g))
    bias = torch.randn(70, generator=g)
    with pyimgcls.use_backend("cpu"):
        want = ops.quantized_linear(x, 0.03, 120, wq, bias, output_scale=0.1, output_zero_point=7, activation="relu")
        want_f = ops.quantized_linear(x, 0.03, 120, wq, bias)
    wq_dev = ops.QuantizedWeight(wq.q.to(DEV), wq.scale.to(DEV))
    with pyimgcls.use_backend("cuda"):
        y = ops.quantized_linear(x.to(DEV), 0.03, 120, wq_dev, bias.to(DEV), output_scale=0.1, output_zero_point=7,
                                 activation="relu")
        yf = ops.quantized_linear(x.to(DEV), 0.03, 120, wq_dev, bias.to(DEV))
    _assert_equal(y.cpu(), want)
    _assert_equal(yf.cpu(), want_f)


@pytest.mark.parametrize("layout", ["nchw", "cl", "strided"])
def test_cuda_quantize_per_tensor_bit_exact_vs_cpu(layout):
    x = torch.randn(2, 5, 7, 9, generator=_gen(3)) * 4
    x[0, 0, 0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5 * 0.05])
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x[:, :, ::2]
    with pyimgcls.use_backend("cpu"):
        want = ops.quantize_per_tensor(x, 0.05, 128)
    with pyimgcls.use_backend("cuda"):
        y = ops.quantize_per_tensor(x.to(DEV), 0.05, 128)
    _assert_equal(y.cpu(), want)


MAXPOOL_CASES = [(2, 5, 9, 7, 2, 2, 0, 1, False, "cl"), (1, 3, 8, 8, 3, 2, 1, 1, True, "nchw"),
                 (2, 37, 11, 6, 3, 1, 1, 2, False, "slice"), (1, 64, 112, 112, 3, 2, 1, 1, False, "cl")]


@pytest.mark.parametrize("case", MAXPOOL_CASES, ids=lambda c: f"k{c[4]}s{c[5]}p{c[6]}d{c[7]}c{int(c[8])}_{c[9]}")
def test_cuda_quantized_max_pool2d_bit_exact_vs_cpu(case):
    N, C, H, W, k, s, p, d, ceil, kind = case
    x = _layout(torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=_gen(C)), kind)
    with pyimgcls.use_backend("cpu"):
        want = ops.quantized_max_pool2d(x, k, s, p, d, ceil)
    with pyimgcls.use_backend("cuda"):
        y = ops.quantized_max_pool2d(x.to(DEV), k, s, p, d, ceil)
    assert y.is_contiguous(memory_format=torch.channels_last)
    _assert_equal(y.cpu(), want)


AVGPOOL_CASES = [(2, 37, 7, 5, (1, 1)), (1, 6, 10, 7, (3, 4)), (2, 3, 4, 4, (4, 4)), (1, 2048, 7, 7, (1, 1))]


@pytest.mark.parametrize("case", AVGPOOL_CASES, ids=lambda c: f"{c[2]}x{c[3]}to{c[4][0]}x{c[4][1]}")
def test_cuda_quantized_adaptive_avg_pool2d_bit_exact_vs_cpu(case):
    N, C, H, W, size = case
    x = torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=_gen(H)).contiguous(
        memory_format=torch.channels_last)
    with pyimgcls.use_backend("cpu"):
        want = ops.quantized_adaptive_avg_pool2d(x, size, 0.1, 30, 0.07, 12)
    with pyimgcls.use_backend("cuda"):
        y = ops.quantized_adaptive_avg_pool2d(x.to(DEV), size, 0.1, 30, 0.07, 12)
    _assert_equal(y.cpu(), want)


def test_cuda_weight_on_another_device_is_refused():
    from pyimgcls.errors import BackendError
    x = torch.randint(0, 256, (4, 8), dtype=torch.uint8, device=DEV)
    wq = ops.quantize_weight(torch.randn(3, 8))          # stays on the CPU
    with pyimgcls.use_backend("cuda"), pytest.raises(BackendError, match="packed weight is on cpu"):
        ops.quantized_linear(x, 0.1, 0, wq)
