"""Quantised (int8) family: bit-exact tests of every CPU path (VNNI, AVX2, generic) and the Triton
kernels against the int64 reference (pyimgcls/ops/reference.py), the ops' argument handling, and
the rounding rule (round half to even)."""
from __future__ import annotations

import pytest
import torch

import pyimgcls
from pyimgcls import _native, ops
from pyimgcls.backends import kernels
from pyimgcls.errors import ArgumentTypeError, ArgumentValueError
from pyimgcls.ops import reference as ref

from helpers import device_for, omp_threads

ISA_PATHS = [("generic", "generic"), ("avx2", "avx2"), ("avx512", "vnni")]


def _hw_paths():
    """The (PYIMGCLS_CPU_ISA value, expected path) pairs this CPU can run."""
    import os
    saved = os.environ.pop("PYIMGCLS_CPU_ISA", None)
    try:
        best = _native.C.quant_isa()
    finally:
        if saved is not None:
            os.environ["PYIMGCLS_CPU_ISA"] = saved
    order = [p for _, p in ISA_PATHS]
    return [(env, p) for env, p in ISA_PATHS if order.index(p) <= order.index(best)]


@pytest.fixture(params=[e for e, _ in ISA_PATHS])
def cpu_path(request, monkeypatch):
    """Runs the test on one CPU path, checking the kernel reports that path (skips a path this CPU lacks)."""
    path = dict(ISA_PATHS)[request.param]
    if (request.param, path) not in _hw_paths():
        pytest.skip(f"this CPU has no {path} path")
    monkeypatch.setenv("PYIMGCLS_CPU_ISA", request.param)
    assert _native.C.quant_isa() == path
    return path


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _dev(backend):
    """Where a backend's operands live: triton on CUDA tensors when there is a GPU (the interpreter on CPU
    tensors otherwise); the references stay on the CPU."""
    return device_for(backend) if backend == "triton" else torch.device("cpu")


def _weight_on(wq, dev):
    """``wq`` itself, or the same quantised weight with its tensors on ``dev``."""
    return wq if wq.q.device == dev else ops.QuantizedWeight(wq.q.to(dev), wq.scale, wq.groups)


def _case(M, N, K, seed, bias=True, res=False):
    g = _gen(seed)
    a = torch.randint(0, 256, (M, K), dtype=torch.uint8, generator=g)
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    b = torch.randint(-5000, 5000, (N,), dtype=torch.int32, generator=g) if bias else None
    mult = (torch.rand(N, generator=g, dtype=torch.float64) * 4e-4 + 1e-5).to(torch.float32)
    r = torch.randint(0, 256, (M, N), dtype=torch.uint8, generator=g) if res else None
    return a, w, b, mult, r


# (M, N, K): single element; K % 4 tail and N below one 16-channel block; M not a multiple of any MR
# and N = 5 blocks (vnni: one 4-block group + an edge group); several 48-row tasks x several channel
# groups with M * N * K >= 2^18 (the threaded branch); long K.
GEMM_SHAPES = [(1, 1, 1), (7, 13, 33), (53, 70, 259), (101, 129, 40), (3, 20, 1203)]
EPILOGUES = {
    "u8": dict(res=False, out_zero=17, qmin=0, qmax=255, act=0, float_out=False, bias=True),
    "u8_res_relu6": dict(res=True, out_zero=40, qmin=40, qmax=160, act=0, float_out=False, bias=True),
    "u8_nobias_relu": dict(res=False, out_zero=3, qmin=3, qmax=255, act=0, float_out=False, bias=False),
    "f32_relu": dict(res=False, out_zero=0, qmin=0, qmax=255, act=1, float_out=True, bias=True),
    "f32_relu6": dict(res=False, out_zero=0, qmin=0, qmax=255, act=2, float_out=True, bias=False),
}


def _run_entry(backend, a, a_zero, w, b, mult, r, ep, K, out_stride_pad=0):
    M, N = a.shape[0], w.shape[0]
    dev = _dev(backend)
    a, w, b, mult, r = (None if t is None else t.to(dev) for t in (a, w, b, mult, r))
    dt = torch.float32 if ep["float_out"] else torch.uint8
    # output rows padded (ldo > N): the kernels must honour the row stride and not write the gap
    big = torch.empty((M, N + out_stride_pad), dtype=dt, device=dev)
    big.fill_(float("nan") if ep["float_out"] else 255)
    out = big[:, :N]
    kern = kernels(backend, "quant")
    kern.gemm(a, a_zero, kern.pack_weight(w), K, b, mult, r, 9, 0.731, ep["out_zero"], ep["qmin"], ep["qmax"],
              ep["act"], out)
    if out_stride_pad:
        gap = big[:, N:]
        assert (gap.isnan().all() if ep["float_out"] else (gap == 255).all()), "kernel wrote outside [M, N]"
    return out


def _ref(a, a_zero, w, b, mult, r, ep):
    return ref.quant_gemm(a, a_zero, w, b, mult, r, 9, 0.731, ep["out_zero"], ep["qmin"], ep["qmax"], ep["act"],
                          ep["float_out"])


def _assert_equal(ours, want):
    assert ours.dtype == want.dtype
    ours = ours.cpu()
    if ours.dtype == torch.float32:
        assert torch.equal(ours.view(torch.int32), want.contiguous().view(torch.int32)), \
            f"max diff {(ours - want).abs().max().item()}"
    else:
        diff = (ours.to(torch.int32) - want.to(torch.int32)).abs()
        assert int(diff.max()) == 0, f"{int((diff > 0).sum())} of {diff.numel()} differ, max {int(diff.max())}"


@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("epi", list(EPILOGUES))
def test_cpu_gemm_bit_exact_every_path(cpu_path, shape, epi):
    M, N, K = shape
    ep = EPILOGUES[epi]
    a, w, b, mult, r = _case(M, N, K, seed=M * 7 + N, bias=ep["bias"], res=ep["res"])
    want = _ref(a, 37, w, b, mult, r, ep)
    _assert_equal(_run_entry("cpu", a, 37, w, b, mult, r, ep, K, out_stride_pad=3), want)


# The vnni path's GEMM with the epilogue in registers (uint8 output, K % 4 == 0): rows of 64 columns
# stored as packed lines (N a multiple of 64) or masked vectors (N = 80: the edge group), K = 66 on the
# stored-tile path. Bounds: (0, 255), where the packs' saturation stands in for the clamps, and
# narrower ones; multipliers far past +-2^31 after scaling (cvtps2dq's INT_MIN both ways); residual
# multipliers below and above the 2^22 / 255 under which the residual clamp is skipped; A strided.
@pytest.mark.parametrize("N,K", [(64, 64), (128, 64), (80, 64), (64, 66)], ids=lambda v: str(v))
@pytest.mark.parametrize("bounds", [(0, 0, 255), (17, 0, 255), (0, 0, 200), (30, 30, 255), (40, 40, 160)],
                         ids=lambda b: "oz{}_{}-{}".format(*b))
@pytest.mark.parametrize("res_mult", [None, 0.731, 3.0e4, -5.0e4], ids=str)
def test_cpu_gemm_fused_epilogue_bounds_every_path(cpu_path, N, K, bounds, res_mult):
    out_zero, qmin, qmax = bounds
    M = 31
    a, w, b, mult, r = _case(M, N, K, seed=N + K, res=res_mult is not None)
    wide = torch.full((M, K + 7), 201, dtype=torch.uint8)      # A rows with a stride above K
    wide[:, 3:3 + K] = a
    a = wide[:, 3:3 + K]
    mult[: N // 3] *= 3e9          # |acc * mult| up to ~1e16: clamped, never wrapped
    mult[N // 3: N // 2] *= -3e9
    a_zero, rz = 37, 9
    dt_args = (rz, res_mult if res_mult is not None else 0.731, out_zero, qmin, qmax, 0)
    out = torch.full((M, N), 77, dtype=torch.uint8)
    kern = kernels("cpu", "quant")
    kern.gemm(a, a_zero, kern.pack_weight(w), K, b, mult, r, *dt_args, out)
    want = ref.quant_gemm(a, a_zero, w, b, mult, r, *dt_args, False)
    _assert_equal(out, want)
    assert int(want.min()) == qmin and int(want.max()) == qmax       # the case reaches both bounds


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_gemm_threads_and_strided_a(cpu_path, threads):
    # A with a row stride above K (a column slice of a wider matrix), big enough for several tasks
    M, N, K = 150, 100, 70
    g = _gen(5)
    wide = torch.randint(0, 256, (M, K + 9), dtype=torch.uint8, generator=g)
    a = wide[:, 4:4 + K]
    _, w, b, mult, r = _case(M, N, K, seed=6, res=True)
    ep = EPILOGUES["u8_res_relu6"]
    with omp_threads(threads):
        ours = _run_entry("cpu", a, 200, w, b, mult, r, ep, K)
    _assert_equal(ours, _ref(a, 200, w, b, mult, r, ep))


def test_cpu_gemm_extreme_values_no_saturation(cpu_path):
    # 255 x -127 / 255 x 127 everywhere: vpmaddubsw would saturate its 16-bit pair sums here
    M, N, K = 9, 33, 517
    a = torch.full((M, K), 255, dtype=torch.uint8)
    w = torch.full((N, K), -127, dtype=torch.int8)
    w[::2] = 127
    w[1::4, ::3] = -128
    mult = torch.full((N,), 1.0 / 4096, dtype=torch.float32)
    ep = EPILOGUES["f32_relu"] | {"act": 0}
    _assert_equal(_run_entry("cpu", a, 0, w, None, mult, None, ep, K), _ref(a, 0, w, None, mult, None, ep))


def test_rounding_half_to_even_every_path(cpu_path):
    # acc = k (K = 1, a - zp = k, w = 1), mult 0.5: v = k / 2 lands on every half. rne: 0.5 -> 0,
    # 1.5 -> 2, 2.5 -> 2, 3.5 -> 4, -0.5 -> 0, -2.5 -> -2; half away from zero would give 1, 2, 3, 4, -1, -3.
    ks = torch.arange(-7, 8)
    a = (ks + 100).to(torch.uint8).reshape(-1, 1)
    w = torch.ones(1, 1, dtype=torch.int8)
    mult = torch.tensor([0.5])
    ep = dict(res=False, out_zero=100, qmin=0, qmax=255, act=0, float_out=False, bias=False)
    ours = _run_entry("cpu", a, 100, w, None, mult, None, ep, 1)
    expect = torch.tensor([-4, -3, -2, -2, -2, -1, 0, 0, 0, 1, 2, 2, 2, 3, 4]) + 100
    assert torch.equal(ours.reshape(-1).to(torch.int64), expect)
    assert torch.equal(_ref(a, 100, w, None, mult, None, ep).reshape(-1).to(torch.int64), expect)


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 13, 33), (37, 40, 70)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("epi", ["u8_res_relu6", "u8_nobias_relu", "f32_relu"])
def test_triton_gemm_bit_exact(shape, epi):
    M, N, K = shape
    ep = EPILOGUES[epi]
    a, w, b, mult, r = _case(M, N, K, seed=M + 3 * N, bias=ep["bias"], res=ep["res"])
    _assert_equal(_run_entry("triton", a, 37, w, b, mult, r, ep, K, out_stride_pad=2), _ref(a, 37, w, b, mult, r, ep))


def test_triton_rounding_half_to_even():
    ks = torch.arange(-7, 8)
    a = (ks + 100).to(torch.uint8).reshape(-1, 1)
    w = torch.ones(1, 1, dtype=torch.int8)
    ep = dict(res=False, out_zero=100, qmin=0, qmax=255, act=0, float_out=False, bias=False)
    ours = _run_entry("triton", a, 100, w, None, torch.tensor([0.5]), None, ep, 1).cpu()
    expect = torch.tensor([-4, -3, -2, -2, -2, -1, 0, 0, 0, 1, 2, 2, 2, 3, 4]) + 100
    assert torch.equal(ours.reshape(-1).to(torch.int64), expect)


# ----------------------------------------------------------------------------- ops
def _qw(O, CG, KH, KW, groups, seed):
    return ops.quantize_weight(torch.randn(O, CG, KH, KW, generator=_gen(seed)), groups=groups)


def _conv_ref(x, zx, wq, bias, stride, padding, dilation, out_scale, out_zero, activation, res=None, rs=None, rz=0,
              s_in=0.02):
    """The op's lowering (bias -> int32, mult, clamps) done here independently, then the whole-conv reference."""
    acc_scale = s_in * wq.scale.double()
    b = None if bias is None else torch.round(bias.double() / acc_scale).clamp(-2 ** 30, 2 ** 30).to(torch.int32)
    float_out = out_scale is None
    mult = (acc_scale / (1.0 if float_out else out_scale)).to(torch.float32)
    if float_out:
        qmin, qmax = 0, 255
    else:
        qmin = out_zero if activation else 0
        qmax = min(255, out_zero + round(6 / out_scale)) if activation == "relu6" else 255
    act = {None: 0, "relu": 1, "relu6": 2}[activation] if float_out else 0
    rm = 0.0 if res is None else float(torch.tensor(rs / out_scale, dtype=torch.float32))
    return ref.quantized_conv2d(x, zx, wq.q, wq.groups, b, mult, stride, padding, dilation, res, rz, rm,
                                0 if float_out else out_zero, qmin, qmax, act, float_out)


# (N, C, H, W, O, KH, stride, padding, dilation, groups, layout): 1x1 direct (channels_last; dense and
# 4 groups: column slices of the input and output), 1x1 through im2col (NCHW, and stride 2), 3x3
# padded, stride 2, dilation, groups 2, depthwise (groups = C,
# multiplier 2), 5x5 like LeNet, non-contiguous input (a channel slice).
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
    # im2col: whole NHWC kernel rows copied at once inside the image, per tap (memcpy, >= 16 channels)
    # at the padded border; the 7x7 / stride 2 / 3-channel stem (3-byte taps at the border)
    (1, 19, 6, 5, 9, 3, 1, 1, 1, 1, "cl"),
    (2, 3, 13, 11, 8, 7, 2, 3, 1, 1, "cl"),
]


def _layout(x, kind):
    if kind == "cl":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "slice":
        wide = torch.cat([x, x[:, :2]], 1).contiguous(memory_format=torch.channels_last)
        return wide[:, :x.shape[1]]
    return x.contiguous()


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}x{c[3]}_o{c[4]}k{c[5]}s{c[6]}p{c[7]}"
                         f"d{c[8]}g{c[9]}_{c[10]}")
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_quantized_conv2d_matches_reference(backend, case):
    N, C, H, W, O, K, s, p, d, groups, kind = case
    dev = _dev(backend)
    g = _gen(sum(case[:10]))
    x = _layout(torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=g).to(dev), kind)
    wq = _qw(O, C // groups, K, K, groups, seed=N + O)
    bias = torch.randn(O, generator=g)
    oh = (H + 2 * p - d * (K - 1) - 1) // s + 1
    ow = (W + 2 * p - d * (K - 1) - 1) // s + 1
    res = torch.randint(0, 256, (N, O, oh, ow), dtype=torch.uint8, generator=g)
    wqd, bias_d, res_d = _weight_on(wq, dev), bias.to(dev), res.to(dev)
    with pyimgcls.use_backend(backend):
        y = ops.quantized_conv2d(x, 0.02, 113, wqd, bias_d, s, p, d, output_scale=0.05, output_zero_point=20,
                                 activation="relu6", residual=res_d, residual_scale=0.07, residual_zero_point=128)
        yf = ops.quantized_conv2d(x, 0.02, 113, wqd, bias_d, s, p, d, activation="relu")
    assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == torch.uint8
    x = x.cpu()
    _assert_equal(y, _conv_ref(x, 113, wq, bias, (s, s), (p, p), (d, d), 0.05, 20, "relu6", res, 0.07, 128))
    _assert_equal(yf, _conv_ref(x, 113, wq, bias, (s, s), (p, p), (d, d), None, 0, "relu"))


@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[4], CONV_CASES[6]], ids=["1x1", "3x3g2", "dw"])
def test_quantized_conv2d_every_cpu_path(cpu_path, case):
    N, C, H, W, O, K, s, p, d, groups, kind = case
    x = _layout(torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=_gen(1)), kind)
    wq = _qw(O, C // groups, K, K, groups, seed=3)
    y = ops.quantized_conv2d(x, 0.03, 7, wq, None, s, p, d, output_scale=0.1, output_zero_point=0)
    _assert_equal(y, _conv_ref(x, 7, wq, None, (s, s), (p, p), (d, d), 0.1, 0, None, s_in=0.03))


def test_quantized_conv2d_torch_backend_matches_whole_conv_reference():
    N, C, H, W, O, K, s, p, d, groups, kind = CONV_CASES[4]
    x = _layout(torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=_gen(2)), kind)
    wq = _qw(O, C // groups, K, K, groups, seed=4)
    with pyimgcls.use_backend("torch"):
        y = ops.quantized_conv2d(x, 0.02, 50, wq, None, s, p, d, output_scale=0.05, output_zero_point=9)
    _assert_equal(y, _conv_ref(x, 50, wq, None, (s, s), (p, p), (d, d), 0.05, 9, None))


@pytest.mark.parametrize("backend", ["cpu", "triton", "torch"])
def test_quantized_linear(backend):
    dev = _dev(backend)
    g = _gen(11)
    x = torch.randint(0, 256, (2, 3, 37), dtype=torch.uint8, generator=g)
    wq = ops.quantize_weight(torch.randn(19, 37, generator=g))
    bias = torch.randn(19, generator=g)
    res = torch.randint(0, 256, (2, 3, 19), dtype=torch.uint8, generator=g)
    xd, wqd, bias_d, res_d = x.to(dev), _weight_on(wq, dev), bias.to(dev), res.to(dev)
    with pyimgcls.use_backend(backend):
        y = ops.quantized_linear(xd, 0.05, 90, wqd, bias_d, output_scale=0.2, output_zero_point=128, residual=res_d,
                                 residual_scale=0.3, residual_zero_point=100)
        yf = ops.quantized_linear(xd[:, 1], 0.05, 90, wqd, bias_d, activation="relu")
    acc_scale = 0.05 * wq.scale.double()
    b = torch.round(bias.double() / acc_scale).to(torch.int32)
    want = ref.quant_gemm(x.reshape(-1, 37), 90, wq.q, b, (acc_scale / 0.2).float(), res.reshape(-1, 19), 100,
                          float(torch.tensor(0.3 / 0.2, dtype=torch.float32)), 128, 0, 255, 0, False)
    _assert_equal(y, want.reshape(2, 3, 19))
    _assert_equal(yf, ref.quant_gemm(x[:, 1], 90, wq.q, b, acc_scale.float(), None, 0, 0.0, 0, 0, 255, 1, True))


def test_quantized_linear_close_to_float():
    # The point of it all: dequantised results track the float layer within the quantisation error.
    g = _gen(12)
    xf = torch.rand(8, 64, generator=g) * 4 - 1
    w = torch.randn(10, 64, generator=g) * 0.2
    s, z = 5 / 255, 51
    xq = ops.quantize_per_tensor(xf, s, z)
    y = ops.quantized_linear(xq, s, z, ops.quantize_weight(w), None)
    yref = ops.dequantize(xq, s, z).double() @ w.double().T
    assert (y.double() - yref).abs().max() < 0.05


@pytest.mark.parametrize("backend", ["cpu", "triton", "torch"])
@pytest.mark.parametrize("layout", ["nchw", "cl", "strided"])
def test_quantize_per_tensor_every_backend(backend, layout):
    g = _gen(21)
    # 2 x 3 x 37 x 41 > 2^12 values: several Triton programs; ties (k + 0.5) * scale, NaN, +-inf, huge
    x = torch.randn(2, 3, 37, 41, generator=g) * 3
    flat = x.view(-1)
    flat[:64] = (torch.arange(-32, 32) + 0.5) * 0.125
    flat[64:68] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30])
    x = x.to(_dev(backend))
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x[:, :, ::2]
    with pyimgcls.use_backend(backend):
        q = ops.quantize_per_tensor(x, 0.125, 77)
    want = ref.quant_quantize(x.cpu(), float(torch.tensor(1 / 0.125, dtype=torch.float32)), 77)
    _assert_equal(q, want)
    if layout == "cl":
        assert q.is_contiguous(memory_format=torch.channels_last)


def test_quantize_per_tensor_and_dequantize_round_trip():
    x = torch.tensor([-1.0, -0.05, 0.0, 0.025, 0.075, 10.0, float("nan")])
    q = ops.quantize_per_tensor(x, 0.05, 10)
    assert q.tolist() == [0, 9, 10, 10, 12, 210, 10]     # 0.5 -> 0 and 1.5 -> 2: half to even
    assert ops.dequantize(q, 0.05, 10)[1].item() == pytest.approx(-0.05)


def test_bad_inputs_name_the_argument():
    x = torch.randint(0, 256, (1, 4, 5, 5), dtype=torch.uint8)
    wq = _qw(3, 4, 3, 3, 1, seed=0)
    with pytest.raises(ArgumentTypeError, match="input"):
        ops.quantized_conv2d(x.float(), 0.1, 0, wq)
    with pytest.raises(ArgumentValueError, match="input_scale"):
        ops.quantized_conv2d(x, 0.0, 0, wq)
    with pytest.raises(ArgumentValueError, match="input_scale"):
        ops.quantized_conv2d(x, float("nan"), 0, wq)
    with pytest.raises(ArgumentValueError, match="input_zero_point"):
        ops.quantized_conv2d(x, 0.1, 256, wq)
    with pytest.raises(ArgumentValueError, match="output_scale"):
        ops.quantized_conv2d(x, 0.1, 0, wq, output_scale=-1.0)
    with pytest.raises(ArgumentTypeError, match="weight"):
        ops.quantized_conv2d(x, 0.1, 0, torch.zeros(3, 4, 3, 3, dtype=torch.int8))
    with pytest.raises(ArgumentValueError, match="channels"):
        ops.quantized_conv2d(x[:, :3], 0.1, 0, wq)
    with pytest.raises(ArgumentValueError, match="activation"):
        ops.quantized_conv2d(x, 0.1, 0, wq, output_scale=0.1, activation="silu")
    with pytest.raises(ArgumentValueError, match="residual"):
        ops.quantized_conv2d(x, 0.1, 0, wq, residual=torch.zeros(1, 3, 3, 3, dtype=torch.uint8))
    with pytest.raises(ArgumentValueError, match="residual"):
        ops.quantized_conv2d(x, 0.1, 0, wq, output_scale=0.1, residual=torch.zeros(1, 3, 2, 3, dtype=torch.uint8),
                             residual_scale=0.1)
    with pytest.raises(ArgumentValueError, match="bias"):
        ops.quantized_conv2d(x, 0.1, 0, wq, torch.zeros(4))
    with pytest.raises(ArgumentValueError, match="padding"):
        ops.quantized_conv2d(x, 0.1, 0, wq, padding=-1)
    with pytest.raises(ArgumentValueError, match="does not fit"):
        ops.quantized_conv2d(x[:, :, :2], 0.1, 0, wq)
    with pytest.raises(ArgumentValueError, match="in_features"):
        ops.quantized_linear(torch.zeros(2, 5, dtype=torch.uint8), 0.1, 0, ops.quantize_weight(torch.randn(3, 4)))
    with pytest.raises(ArgumentValueError, match="scale"):
        ops.QuantizedWeight(torch.zeros(3, 4, dtype=torch.int8), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ArgumentValueError, match="NaN"):
        ops.quantize_weight(torch.tensor([[float("nan")]]))


def test_cpu_isa_switch_rejects_unknown_value(monkeypatch):
    monkeypatch.setenv("PYIMGCLS_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="PYIMGCLS_CPU_ISA"):
        _native.C.quant_isa()


# ----------------------------------------------------------------------------- pooling
# (N, C, H, W, kernel, stride, padding, dilation, ceil_mode, layout)
MAXPOOL_CASES = [(2, 5, 9, 7, 2, 2, 0, 1, False, "cl"), (1, 3, 8, 8, 3, 2, 1, 1, True, "nchw"),
                 (2, 37, 11, 6, 3, 1, 1, 2, False, "slice")]


@pytest.mark.parametrize("case", MAXPOOL_CASES, ids=lambda c: f"k{c[4]}s{c[5]}p{c[6]}d{c[7]}c{int(c[8])}_{c[9]}")
@pytest.mark.parametrize("backend", ["cpu", "triton", "torch"])
def test_quantized_max_pool2d(backend, case):
    N, C, H, W, k, s, p, d, ceil, kind = case
    x = _layout(torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=_gen(C)).to(_dev(backend)), kind)
    with pyimgcls.use_backend(backend):
        y = ops.quantized_max_pool2d(x, k, s, p, d, ceil)
    want = torch.nn.functional.max_pool2d(x.cpu().float(), k, s, p, d, ceil_mode=ceil).to(torch.uint8)
    assert y.is_contiguous(memory_format=torch.channels_last)
    _assert_equal(y, want)


# (N, C, H, W, output size): global mean (ResNet), uneven adaptive windows, identity size
AVGPOOL_CASES = [(2, 37, 7, 5, (1, 1)), (1, 6, 10, 7, (3, 4)), (2, 3, 4, 4, (4, 4))]


@pytest.mark.parametrize("case", AVGPOOL_CASES, ids=lambda c: f"{c[2]}x{c[3]}to{c[4][0]}x{c[4][1]}")
@pytest.mark.parametrize("backend", ["cpu", "triton", "torch"])
def test_quantized_adaptive_avg_pool2d(backend, case):
    N, C, H, W, size = case
    x = torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=_gen(H)).contiguous(
        memory_format=torch.channels_last)
    with pyimgcls.use_backend(backend):
        y = ops.quantized_adaptive_avg_pool2d(x.to(_dev(backend)), size, 0.1, 30, 0.07, 12)
    y = y.cpu()
    _assert_equal(y, ref.quant_adaptive_avg_pool2d(x, *size, 30, 0.1 / 0.07, 12))
    # and the float meaning: within one output step of the float mean, requantised
    real = torch.nn.functional.adaptive_avg_pool2d((x.double() - 30) * 0.1, size)
    assert ((y.double() - 12) * 0.07 - real.clamp(-12 * 0.07, 243 * 0.07)).abs().max() <= 0.07 / 2 + 1e-9


# The CPU pools on NHWC input take vector bodies on the vnni path (64 channels per max, 16 per sum):
# channel counts with full vectors and a tail, windows cut by the border, and windows of more than 64
# taps (the scalar loop) on every path; the requantisation's clamps with a huge ratio.
# Max pool cases (N, C, H, W, kernel, stride, padding, dilation, ceil_mode): also dilation, ceil mode
# (a last window past the border), 9x9 windows, and a 2^21-byte output (both threads, rows split).
@pytest.mark.parametrize("case", [(2, 130, 9, 9, 3, 2, 1, 1, False), (1, 70, 8, 6, 2, 2, 0, 1, False),
                                  (1, 64, 5, 5, 3, 1, 1, 1, False), (1, 70, 11, 10, 3, 1, 1, 2, False),
                                  (2, 16, 10, 9, 3, 2, 1, 1, True), (1, 8, 12, 11, 9, 1, 4, 1, False),
                                  (4, 64, 200, 200, 3, 2, 1, 1, False)],
                         ids=lambda c: f"c{c[1]}_{c[2]}x{c[3]}_k{c[4]}s{c[5]}p{c[6]}d{c[7]}{'_ceil' * c[8]}")
def test_quantized_max_pool2d_nhwc_every_cpu_path(cpu_path, case):
    N, C, H, W, k, s, p, d, ceil = case
    x = torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=_gen(C + H)).contiguous(
        memory_format=torch.channels_last)
    with omp_threads(2):
        y = ops.quantized_max_pool2d(x, k, s, p, d, ceil)
    _assert_equal(y, torch.nn.functional.max_pool2d(x.float(), k, s, p, d, ceil).to(torch.uint8))


@pytest.mark.parametrize("case", [(2, 130, 7, 7, (1, 1), 0.1), (1, 70, 10, 9, (3, 4), 0.1), (1, 33, 9, 9, (1, 1), 0.1),
                                  (2, 40, 3, 5, (2, 2), 3.0e7), (1, 20, 4, 4, (1, 1), -3.0e7)],
                         ids=lambda c: f"c{c[1]}_{c[2]}x{c[3]}to{c[4][0]}x{c[4][1]}_r{c[5]}")
def test_quantized_adaptive_avg_pool2d_nhwc_every_cpu_path(cpu_path, case):
    N, C, H, W, size, s_in = case
    x = torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=_gen(C + W)).contiguous(
        memory_format=torch.channels_last)
    y = ops.quantized_adaptive_avg_pool2d(x, size, abs(s_in), 30, 0.07, 12)
    if s_in < 0:     # a negative ratio cannot come from the op's positive scales: the kernel entry directly
        y = torch.empty_like(y)
        kernels("cpu", "quant").adaptive_avg_pool2d(x, *size, 30, s_in / 0.07, 12, y)
    _assert_equal(y, ref.quant_adaptive_avg_pool2d(x, *size, 30, s_in / 0.07, 12))


def test_cuda_backend_on_cpu_tensors_is_refused(monkeypatch):
    # the cuda backend's int8 kernels take CUDA tensors only: a clear BackendError, never a crash or a
    # silent fallback
    from pyimgcls.errors import BackendError
    from pyimgcls.ops import quant as q
    monkeypatch.setattr(q._backend, "resolve", lambda device, op: "cuda")
    x = torch.zeros(1, 4, dtype=torch.uint8)
    with pytest.raises(BackendError, match="backend 'cuda'"):
        ops.quantized_linear(x, 0.1, 0, ops.quantize_weight(torch.randn(3, 4)))
    with pytest.raises(BackendError, match="backend 'cuda'"):
        ops.quantize_per_tensor(torch.zeros(3), 0.1, 0)


def test_quantized_conv2d_im2col_scratch_shared_by_threads():
    # the im2col buffers are per thread (the Python scratch of grouped convs, the C++ row buffers of
    # the fused groups=1 path): two threads running different convs at once must not see each
    # other's columns (a single shared buffer would mix them)
    import sys
    import threading
    cases = [(2, 18, 19, 17, 12, 3, 1, 1, 1, 2, "cl"), (1, 6, 23, 21, 9, 7, 2, 3, 1, 3, "cl"),
             (1, 3, 13, 11, 8, 7, 2, 3, 1, 1, "cl")]
    inputs, want, errors = [], [], []
    for i, (N, C, H, W, O, K, s, p, d, groups, kind) in enumerate(cases):
        x = _layout(torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=_gen(40 + i)), kind)
        wq = _qw(O, C // groups, K, K, groups, seed=50 + i)
        inputs.append((x, wq, s, p))
        want.append(_conv_ref(x, 9, wq, None, (s, s), (p, p), (1, 1), 0.1, 3, None))

    def worker(i):
        x, wq, s, p = inputs[i]
        try:
            for _ in range(100):
                with pyimgcls.use_backend("cpu"):
                    y = ops.quantized_conv2d(x, 0.02, 9, wq, None, s, p, output_scale=0.1, output_zero_point=3)
                _assert_equal(y, want[i])
        except AssertionError as e:
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(len(cases))]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)          # hand the GIL over often, so the threads' calls interleave
    try:
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    assert not errors, errors[0]


def test_int32_bias_rechecked_after_in_place_change():
    # the +-2^30 check of an int32 bias is cached per (tensor, version): an in-place write must re-check
    x = torch.randint(0, 256, (1, 4, 5, 5), dtype=torch.uint8, generator=_gen(8))
    wq = _qw(6, 4, 3, 3, 1, seed=9)
    bias = torch.zeros(6, dtype=torch.int32)
    with pyimgcls.use_backend("cpu"):
        ops.quantized_conv2d(x, 0.02, 9, wq, bias, 1, 1, output_scale=0.1, output_zero_point=3)
        bias[2] = 2 ** 30 + 1
        with pytest.raises(ArgumentValueError, match="bias"):
            ops.quantized_conv2d(x, 0.02, 9, wq, bias, 1, 1, output_scale=0.1, output_zero_point=3)


# The fused im2col + GEMM of groups=1 convs (quant_conv_gemm) with 2^22+ MACs, so the threaded
# branch runs: 882 rows (not a multiple of the 48-row task), O = 70 (a 4-block channel group and a
# partial one), K = 117 (K % 4 tail); and 16 rows x 520 channels: fused with one thread, with two
# (fewer than 2 row tasks per thread) im2col + quant_gemm's channel split.
FUSED_CASES = [(2, 13, 21, 21, 70, 3, 1, 1), (1, 64, 4, 4, 520, 3, 1, 1)]


@pytest.mark.parametrize("case", FUSED_CASES, ids=["882x70x117", "16x520x576"])
@pytest.mark.parametrize("threads", [1, 2])
def test_quantized_conv2d_fused_im2col_every_path_threads(cpu_path, case, threads):
    N, C, H, W, O, K, s, p = case
    g = _gen(sum(case))
    x = _layout(torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=g), "cl")
    wq = _qw(O, C, K, K, 1, seed=O)
    bias = torch.randn(O, generator=g)
    oh, ow = (H + 2 * p - K) // s + 1, (W + 2 * p - K) // s + 1
    res = torch.randint(0, 256, (N, O, oh, ow), dtype=torch.uint8, generator=g)
    with omp_threads(threads), pyimgcls.use_backend("cpu"):
        y = ops.quantized_conv2d(x, 0.02, 113, wq, bias, s, p, output_scale=0.05, output_zero_point=20,
                                 activation="relu6", residual=res, residual_scale=0.07, residual_zero_point=128)
        yf = ops.quantized_conv2d(x, 0.02, 113, wq, bias, s, p, activation="relu")
    _assert_equal(y, _conv_ref(x, 113, wq, bias, (s, s), (p, p), (1, 1), 0.05, 20, "relu6", res, 0.07, 128))
    _assert_equal(yf, _conv_ref(x, 113, wq, bias, (s, s), (p, p), (1, 1), None, 0, "relu"))


# Padding taps skipped (quant_conv_gemm with the tap sums; the VNNI indirect path, C % 4 == 0, NHWC):
# each output pixel runs over the taps of its window inside the image, in classes (edges, corners).
# (N, C, H, W, O, K, stride, padding, dilation): 3x3 at 7x7 (every class, O = 20: a partial channel
# block); 5x5 with padding 2 (two border classes a side, O = 70: two column tasks); stride 2; vertical
# dilation 2 (padding (2, 1)); H = 1 (top and bottom rows skipped at once); padding 3 around a 2x2 map
# (windows wholly outside: bias only); 24x24 batch 4 (chunks of 48 pixels of a class, several row
# bands, 2^22+ MACs: both threads); and a 56x56 map (padding under 4 % of the taps: not skipped).
SKIP_CASES = [(2, 8, 7, 7, 20, 3, 1, 1, 1), (3, 4, 9, 6, 70, 5, 1, 2, 1), (2, 8, 9, 9, 16, 3, 2, 1, 1),
              (2, 12, 8, 9, 24, 3, 1, (2, 1), (2, 1)), (1, 8, 1, 5, 16, 3, 1, 1, 1), (1, 4, 2, 2, 8, 3, 1, 3, 1),
              (4, 8, 24, 24, 32, 3, 1, 1, 1), (1, 4, 56, 56, 16, 3, 1, 1, 1)]


@pytest.mark.parametrize("case", SKIP_CASES, ids=["7x7", "k5p2", "s2", "dil21", "h1", "outside", "24x24",
                                                  "56x56"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("skip", ["1", "auto"])      # PYIMGCLS_QUANT_SKIP_PAD: always, or by the cost estimate
def test_quantized_conv2d_skips_padding_taps(cpu_path, case, threads, skip, monkeypatch):
    if skip != "auto":
        monkeypatch.setenv("PYIMGCLS_QUANT_SKIP_PAD", skip)
    N, C, H, W, O, K, s, p, d = case
    p2, d2 = (p, p) if isinstance(p, int) else p, (d, d) if isinstance(d, int) else d
    g = _gen(sum(case[:7]))
    x = _layout(torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=g), "cl")
    wq = _qw(O, C, K, K, 1, seed=O + K)
    bias = torch.randn(O, generator=g)
    oh = (H + 2 * p2[0] - d2[0] * (K - 1) - 1) // s + 1
    ow = (W + 2 * p2[1] - d2[1] * (K - 1) - 1) // s + 1
    res = torch.randint(0, 256, (N, O, oh, ow), dtype=torch.uint8, generator=g)
    with omp_threads(threads), pyimgcls.use_backend("cpu"):
        # a zero point far from the data's middle: a skipped tap taken as 0 instead of a_zero is off by
        # a_zero * w, never hidden by the clamps
        y = ops.quantized_conv2d(x, 0.02, 201, wq, bias, s, p, d, output_scale=0.05, output_zero_point=20,
                                 activation="relu6", residual=res, residual_scale=0.07, residual_zero_point=128)
        y2 = ops.quantized_conv2d(x, 0.02, 201, wq, bias, s, p, d, output_scale=0.5, output_zero_point=128)
        yf = ops.quantized_conv2d(x, 0.02, 201, wq, bias, s, p, d, activation="relu")    # float out: no skip
    _assert_equal(y, _conv_ref(x, 201, wq, bias, (s, s), p2, d2, 0.05, 20, "relu6", res, 0.07, 128))
    _assert_equal(y2, _conv_ref(x, 201, wq, bias, (s, s), p2, d2, 0.5, 128, None))
    _assert_equal(yf, _conv_ref(x, 201, wq, bias, (s, s), p2, d2, None, 0, "relu"))


@pytest.mark.parametrize("shape", [(70, 3, 2, 8), (16, 1, 3, 4), (5, 7, 7, 4)])
def test_quant_tap_sums_match_the_weight(shape):
    O, KH, KW, C = shape
    w = torch.randint(-128, 128, (O, KH * KW * C), dtype=torch.int8, generator=_gen(O))
    packed, colsum, _, _ = kernels("cpu", "quant").pack_weight(w)
    out = torch.full((KH * KW, O), 12345, dtype=torch.int32)
    _native.C.quant_tap_sums_cpu(packed.data_ptr(), O, KH, KW, C, out.data_ptr())
    assert torch.equal(out, w.view(O, KH * KW, C).to(torch.int32).sum(2).t())
    assert torch.equal(out.sum(0), colsum)
    with pytest.raises(ValueError, match="multiple of 4"):
        _native.C.quant_tap_sums_cpu(packed.data_ptr(), O, KH, KW * 2, C // 2 + 1, out.data_ptr())


# ----------------------------------------------------------------------------- bound layers
# (N, C, H, W, O, K, stride, padding, groups, layout): the conv_gemm binding (3x3 padded, the 7x7
# stride-2 stem on 3 channels, NCHW input), the direct GEMM binding (1x1 channels_last), a 1x1 on NCHW
# input (conv_gemm), grouped (not bound: the op runs every call)
BOUND_CASES = [(2, 5, 9, 7, 11, 3, 1, 1, 1, "cl"), (1, 3, 13, 11, 8, 7, 2, 3, 1, "cl"),
               (2, 6, 5, 4, 9, 3, 2, 1, 1, "nchw"), (2, 19, 5, 7, 21, 1, 1, 0, 1, "cl"),
               (1, 19, 5, 7, 21, 1, 1, 0, 1, "nchw"), (2, 8, 7, 6, 12, 3, 1, 1, 2, "cl")]


@pytest.mark.parametrize("case", BOUND_CASES, ids=lambda c: f"k{c[5]}s{c[6]}g{c[8]}_{c[9]}")
def test_bound_conv_layer_equals_op_and_reference(case):
    """BoundQuantizedLayer: the first call (the op) and the bound native calls after it give the
    reference's values bit for bit (outputs poisoned), with a residual, relu6, float output; a new
    layout (another batch, the other memory format, a residual with other strides) rebinds."""
    N, C, H, W, O, K, s, p, groups, kind = case
    g = _gen(sum(case[:9]))
    wq = _qw(O, C // groups, K, K, groups, seed=O)
    bias = ref_bias = torch.randint(-3000, 3000, (O,), dtype=torch.int32, generator=g)
    layer = ops.quant.BoundQuantizedLayer(wq, bias, s, p, 1, input_scale=0.02, input_zero_point=113, output_scale=0.05,
                                          output_zero_point=20, activation="relu6", residual_scale=0.07,
                                          residual_zero_point=128)
    flayer = ops.quant.BoundQuantizedLayer(wq, bias, s, p, 1, input_scale=0.02, input_zero_point=113,
                                           activation="relu")
    other = "nchw" if kind == "cl" else "cl"
    # (batch, input layout, residual channels_last): an NCHW residual is not bound (the op copies it)
    for n, lay, res_cl in [(N, kind, True), (N, kind, True), (N + 1, kind, True), (N, other, True), (N, kind, False),
                           (N + 1, kind, True)]:
        x = _layout(torch.randint(0, 256, (n, C, H, W), dtype=torch.uint8, generator=g), lay)
        oh, ow = (H + 2 * p - K) // s + 1, (W + 2 * p - K) // s + 1
        res = torch.randint(0, 256, (n, O, oh, ow), dtype=torch.uint8, generator=g)
        res = res.contiguous(memory_format=torch.channels_last) if res_cl else res
        y, yf = layer(x, res), flayer(x)
        assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == torch.uint8
        acc = 0.02 * wq.scale.double()
        _assert_equal(y, ref.quantized_conv2d(x, 113, wq.q, groups, ref_bias, (acc / 0.05).to(torch.float32), (s, s),
                                              (p, p), (1, 1), res, 128, float(torch.tensor(0.07 / 0.05)), 20, 20,
                                              min(255, 20 + round(6 / 0.05)), 0, False))
        _assert_equal(yf, ref.quantized_conv2d(x, 113, wq.q, groups, ref_bias, acc.to(torch.float32), (s, s), (p, p),
                                               (1, 1), None, 0, 0.0, 0, 0, 255, 1, True))
    bound = [b for b in layer._bound.values() if b is not ops.quant._UNBOUND]
    fbound = [b for b in flayer._bound.values() if b is not ops.quant._UNBOUND]
    assert len(layer._bound) == 4 and len(bound) == (3 if groups == 1 else 0)
    assert len(flayer._bound) == 3 and len(fbound) == (3 if groups == 1 else 0)


def test_bound_linear_layer_every_cpu_path(cpu_path):
    g = _gen(8)
    wq = ops.quantize_weight(torch.randn(37, 70, generator=g))
    layer = ops.quant.BoundQuantizedLayer(wq, None, input_scale=0.03, input_zero_point=9, output_scale=0.2,
                                          output_zero_point=3, activation="relu", residual_scale=0.1,
                                          residual_zero_point=200)
    last = ops.quant.BoundQuantizedLayer(wq, torch.randn(37, generator=g), input_scale=0.03, input_zero_point=9)
    for rows in (5, 5, 1, 5):
        x = torch.randint(0, 256, (rows, 70), dtype=torch.uint8, generator=g)
        r = torch.randint(0, 256, (rows, 37), dtype=torch.uint8, generator=g)
        _assert_equal(layer(x, r), ops.quantized_linear(x, 0.03, 9, wq, None, 0.2, 3, "relu", r, 0.1, 200))
        _assert_equal(last(x), ops.quantized_linear(x, 0.03, 9, wq, last.bias))
    x = torch.randint(0, 256, (6, 140), dtype=torch.uint8, generator=g)[:, ::2]        # strided: not bound
    _assert_equal(last(x), ops.quantized_linear(x, 0.03, 9, wq, last.bias))
    assert sum(b is ops.quant._UNBOUND for b in last._bound.values()) == 1


def test_bound_layer_follows_backend_bias_and_errors():
    """The backend in force and an in-place change of a float bias are part of the binding; bad inputs
    raise the op's errors on every call."""
    g = _gen(9)
    wq = _qw(6, 4, 3, 3, 1, seed=2)
    bias = torch.randn(6, generator=g)
    layer = ops.quant.BoundQuantizedLayer(wq, bias, 1, 1, input_scale=0.02, input_zero_point=5, output_scale=0.04,
                                          output_zero_point=0)
    x = torch.randint(0, 256, (1, 4, 6, 6), dtype=torch.uint8, generator=g).contiguous(
        memory_format=torch.channels_last)
    want = ops.quantized_conv2d(x, 0.02, 5, wq, bias, 1, 1, output_scale=0.04, output_zero_point=0)
    _assert_equal(layer(x), want)
    _assert_equal(layer(x), want)
    with pyimgcls.use_backend("torch"):
        _assert_equal(layer(x), want)
    with torch.no_grad():
        bias += 3.0
    _assert_equal(layer(x), ops.quantized_conv2d(x, 0.02, 5, wq, bias, 1, 1, output_scale=0.04, output_zero_point=0))
    import copy
    import pickle
    for dup in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):      # bindings are not copied
        assert not dup._bound
        _assert_equal(dup(x), layer(x))
    for _ in range(2):
        with pytest.raises(ArgumentTypeError, match="input must be a uint8"):
            layer(x.float())
        with pytest.raises(ArgumentValueError, match="channels"):
            layer(x[:, :3])


def _quantize_input(shape, seed):
    """float32 values with ties ((k + 0.5) * scale), NaN, +-inf, huge and out-of-range values."""
    x = torch.randn(*shape, generator=_gen(seed)) * 3
    flat = x.view(-1)
    k = min(64, flat.numel())
    flat[:k] = ((torch.arange(k) - 32) + 0.5) * 0.125
    for i, v in enumerate([float("nan"), float("inf"), -float("inf"), 1e30, -1e30]):
        if k + 3 * i < flat.numel():
            flat[k + 3 * i] = v
    return x


@pytest.mark.parametrize("n", [1, 15, 16, 17, 70000 * 2 + 37, (1 << 21) + 37])
def test_quantize_every_cpu_path(cpu_path, n):
    """The flat quantisation on each path: vector body (16 values), scalar tail, 64 Ki-value chunks."""
    x = _quantize_input((n,), n)
    with omp_threads(2):         # the last size: 2 threads (the kernel forks from 2^21 values)
        q = ops.quantize_per_tensor(x, 0.125, 77)
    _assert_equal(q, ref.quant_quantize(x, float(torch.tensor(1 / 0.125, dtype=torch.float32)), 77))


@pytest.mark.parametrize("shape", [(2, 3, 13, 11), (1, 1, 3, 5), (2, 37, 9, 15), (2, 3, 601, 599), (1, 4, 5, 7),
                                   (2, 2, 17, 3)], ids=lambda s: "x".join(map(str, s)))
def test_quantize_nhwc_every_cpu_path(cpu_path, shape):
    """quantize_per_tensor(channels_last=True) from NCHW: one pass into NHWC (pixel blocks of 64 with a
    partial last one, 1 / 3 / 37 channels); and the native entry on a channel slice (plane strides)."""
    x = _quantize_input(shape, sum(shape))
    inv = float(torch.tensor(1 / 0.125, dtype=torch.float32))
    with omp_threads(2):         # the last shape: 2 threads (2^21 values and more)
        q = ops.quantize_per_tensor(x, 0.125, 77, channels_last=True)
    assert q.is_contiguous(memory_format=torch.channels_last)
    _assert_equal(q, ref.quant_quantize(x, inv, 77))
    wide = _quantize_input((shape[0], shape[1] + 3, *shape[2:]), 5)
    part = wide[:, 2:2 + shape[1]]
    out = torch.full(shape, 7, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    kernels("cpu", "quant").quantize_nhwc(part, inv, 77, out)
    _assert_equal(out, ref.quant_quantize(part, inv, 77))
    # into more channels than x has: those are the zero point (a padded RGB input: QuantizedModel._pad_in)
    padded = torch.full((shape[0], shape[1] + 2, *shape[2:]), 7, dtype=torch.uint8).contiguous(
        memory_format=torch.channels_last)
    kernels("cpu", "quant").quantize_nhwc(part, inv, 77, padded)
    _assert_equal(padded[:, :shape[1]], ref.quant_quantize(part, inv, 77))
    assert (padded[:, shape[1]:] == 77).all()
    if shape[1] <= 4:      # into exactly 4 channels (the stem's padded input: 16 pixels a vector step)
        p4 = torch.full((shape[0], 4, *shape[2:]), 7, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
        with omp_threads(2):
            kernels("cpu", "quant").quantize_nhwc(part, inv, 77, p4)
        _assert_equal(p4[:, :shape[1]], ref.quant_quantize(part, inv, 77))
        assert (p4[:, shape[1]:] == 77).all()
    # the other backends give the same tensor through the generic path
    with pyimgcls.use_backend("torch"):
        qt = ops.quantize_per_tensor(x, 0.125, 77, channels_last=True)
    assert qt.is_contiguous(memory_format=torch.channels_last)
    _assert_equal(qt, q)
