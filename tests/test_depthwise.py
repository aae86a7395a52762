"""Depthwise convolution backward (groups == C, one input channel per group, O = C * multiplier): the
direct kernels (Triton ``_conv2d_depthwise_dgrad_kernel`` / ``_conv2d_depthwise_wgrad_kernel``, CUDA
``conv2d_depthwise_dgrad_kernel`` / ``conv2d_depthwise_wgrad_kernel``) against float64 PyTorch autograd,
and a check that they, not the implicit-GEMM kernels, are the ones that ran.

Triton runs through the interpreter on CPU (small shapes; the "splits" case is just large enough for
several wgrad pixel splits and dgrad tiles under the interpreter's config); the CUDA rows need a GPU.
"""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from pyimgcls import ops
from pyimgcls.backends.cuda import conv as cuda_conv
from pyimgcls.triton_kernels import conv as tk

from helpers import HAS_GPU, assert_close_to_reference, backend_ctx, device_for

# (name, N, C, H, W, multiplier, kernel, stride, padding, dilation)
CASES = [
    ("3x3_odd", 2, 5, 9, 7, 1, 3, 1, 1, 1),
    ("s2_mult2_batch1", 1, 4, 9, 8, 2, 3, 2, 1, 1),
    ("dilated_asym", 2, 3, 11, 14, 1, (3, 5), (2, 1), (2, 1), (2, 3)),
    ("same_even", 1, 6, 8, 7, 1, (2, 4), 1, "same", (1, 2)),
    ("mult3_s3_k1", 1, 2, 7, 8, 3, 1, 3, 0, 1),
    ("splits", 2, 6, 20, 20, 1, 3, 1, 1, 1),
]
BACKENDS = [pytest.param("triton", id="triton"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]
IGEMM_TRITON = ("_conv2d_bwd_data_kernel", "_conv2d_bwd_weight_kernel")
DEPTHWISE_TRITON = ("_conv2d_depthwise_dgrad_kernel", "_conv2d_depthwise_wgrad_kernel")


def _make(shape, dtype, device, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


def _inputs(case, dtype, device, layout, seed=0):
    """x, w, conv kwargs and the output shape; layout "strided" makes x a non-contiguous view."""
    _, N, C, H, W, mult, k, stride, padding, dilation = case
    kh, kw = (k, k) if isinstance(k, int) else k
    if layout == "strided":
        x = _make((N, 2 * C, H, W + 3), dtype, device, seed)[:, ::2, :, 1:W + 1]
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    else:
        x = _make((N, C, H, W), dtype, device, seed)
        if layout == "nhwc":
            x = x.contiguous(memory_format=torch.channels_last)
    w = _make((C * mult, 1, kh, kw), dtype, device, seed + 1, scale=(kh * kw) ** -0.5)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=C)
    out_shape = F.conv2d(x[:1, :, :, :].double().cpu(), w.double().cpu(), **kwargs).shape
    return x, w, kwargs, (N,) + tuple(out_shape[1:])


class _Recorder:
    """Stands in for a Triton kernel object in triton_kernels.conv: records each launch by name."""

    def __init__(self, kernel, name, log):
        self.kernel, self.name, self.log = kernel, name, log

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.log.append(self.name)
            return launch(*args, **kwargs)
        return run


@pytest.fixture
def triton_launches(monkeypatch):
    """The names of the Triton conv backward kernels launched during the test."""
    log = []
    for name in IGEMM_TRITON + DEPTHWISE_TRITON:
        monkeypatch.setattr(tk, name, _Recorder(getattr(tk, name), name, log))
    return log


def _cuda_kernel_names(fn):
    """Names of the CUDA kernels fn launched (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type.name == "CUDA"]


def _backward(backend, x, w, kwargs, go):
    """(dx, dw) of our conv2d on ``backend``; asserts the depthwise kernels were the ones that ran."""
    xl, wl = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    if x.stride() != xl.stride():  # keep the caller's (strided) layout: clone() may compact it
        xl = x.detach().requires_grad_()

    def run():
        with backend_ctx(backend):
            ops.conv2d(xl, wl, None, **kwargs).backward(go)

    if backend == "cuda":
        names = _cuda_kernel_names(run)
        assert any("conv2d_depthwise_dgrad_kernel" in n for n in names), names
        assert any("conv2d_depthwise_wgrad_kernel" in n for n in names), names
        assert not any("igemm" in n or "simt" in n for n in names), names
    else:
        run()
    return xl.grad, wl.grad


def _reference(x, w, kwargs, go):
    x64, w64 = (t.detach().double().cpu().requires_grad_() for t in (x, w))
    F.conv2d(x64, w64, **kwargs).backward(go.detach().double().cpu())
    return x64.grad, w64.grad


# ----------------------------------------------------------------------------- values and dispatch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_depthwise_backward_matches_float64(backend, case, layout, triton_launches):
    dev = device_for(backend)
    x, w, kwargs, out_shape = _inputs(case, torch.float32, dev, layout, seed=1)
    go = _make(out_shape, torch.float32, dev, seed=3)
    dx, dw = _backward(backend, x, w, kwargs, go)
    if backend == "triton":
        assert sorted(triton_launches) == sorted(DEPTHWISE_TRITON), triton_launches
    rx, rw = _reference(x, w, kwargs, go)
    assert_close_to_reference(dx, rx, scale=4.0)
    n_pix = out_shape[0] * out_shape[2] * out_shape[3]
    assert_close_to_reference(dw, rw, scale=max(4.0, n_pix ** 0.5))


def test_splits_case_reaches_several_splits_and_tiles():
    """The "splits" row runs the split path of the Triton wgrad (and several dgrad pixel tiles) under
    the interpreter's sizing (4 "SMs", 16 x 8 tiles)."""
    _, N, C, H, W, mult, k, *_ = CASES[-1]
    assert tk._depthwise_splits(C * mult, k * k, N * H * W, torch.device("cpu")) >= 3
    assert N * H * W > 16 * 4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_depthwise_backward_dtypes(backend, dtype, triton_launches):
    """float64 to 1e-10 (Triton only: no float64 in our CUDA kernels); float16 / bfloat16 within 2x
    PyTorch's own error at that dtype (fp32 accumulation)."""
    if backend == "cuda" and dtype == torch.float64:
        pytest.skip("no float64 in our CUDA kernels")
    dev = device_for(backend)
    case = ("t", 2, 8, 9, 9, 2, 3, 2, 1, 1)
    for layout in ("nchw", "nhwc"):
        x, w, kwargs, out_shape = _inputs(case, dtype, dev, layout, seed=5)
        go = _make(out_shape, dtype, dev, seed=6)
        dx, dw = _backward(backend, x, w, kwargs, go)
        assert dx.dtype == dw.dtype == dtype
        rx, rw = _reference(x, w, kwargs, go)
        theirs = [t.detach().clone().requires_grad_() for t in (x, w)]
        F.conv2d(*theirs, **kwargs).backward(go)
        assert_close_to_reference(dx, rx, torch_same_dtype=theirs[0].grad)
        assert_close_to_reference(dw, rw, torch_same_dtype=theirs[1].grad, scale=10.0)
    if backend == "triton":
        assert set(triton_launches) == set(DEPTHWISE_TRITON), triton_launches


def test_gradcheck_float64_triton():
    if HAS_GPU:
        pytest.skip("gradcheck runs in float64 on CPU tensors")
    x = _make((1, 2, 6, 5), torch.float64, "cpu", seed=7).requires_grad_()
    w = _make((4, 1, 3, 2), torch.float64, "cpu", seed=8).requires_grad_()
    with backend_ctx("triton"):
        assert torch.autograd.gradcheck(
            lambda x, w: ops.conv2d(x, w, None, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2), (x, w))


# ----------------------------------------------------------------------------- kernels on strided operands
def test_triton_kernels_strided_operands_and_deterministic_splits():
    """Direct host-function calls with non-contiguous gradient, weight and dx views: only dx's own
    elements are written (the rest of its buffer keeps a sentinel); the split wgrad is bitwise
    repeatable."""
    N, C, H, W, mult, KH, KW = 2, 6, 20, 19, 1, 3, 3
    stride, pad, dil = (1, 1), [1, 1, 1, 1], (1, 1)
    x = _make((N, C, H, W), torch.float32, "cpu", seed=9)
    w_base = _make((C * mult, 2, KH, KW + 1), torch.float32, "cpu", seed=10)
    w = w_base[:, :1, :, 1:]                                    # [O, 1, KH, KW], non-contiguous
    go_base = _make((N, C * mult, H + 2, 2 * W), torch.float32, "cpu", seed=11)
    go = go_base[:, :, 1:H + 1, ::2]                            # non-contiguous [N, O, OH, OW]
    dx_base = torch.full((N, H, W + 2, 2 * C), 7.0)
    dx = dx_base[:, :, 1:W + 1, ::2].permute(0, 3, 1, 2)        # [N, C, H, W], channel stride 2
    tk.conv2d_bwd_data(go, w, dx, stride, pad, dil, C)
    rx, rw = _reference(x, w, dict(stride=stride, padding=1, dilation=dil, groups=C), go)
    assert_close_to_reference(dx, rx, scale=4.0)
    untouched = torch.ones_like(dx_base, dtype=torch.bool)
    untouched[:, :, 1:W + 1, ::2] = False
    assert torch.all(dx_base[untouched] == 7.0)
    assert tk._depthwise_splits(C * mult, KH * KW, N * H * W, x.device) > 1
    dws = []
    for _ in range(2):
        dw = torch.full((C * mult, 1, KH, KW), float("nan"))
        tk.conv2d_bwd_weight(go, x, dw, stride, pad, dil, C)
        dws.append(dw)
    assert torch.equal(dws[0], dws[1])
    assert_close_to_reference(dws[0], rw, scale=(N * H * W) ** 0.5)


def test_is_depthwise():
    assert tk.is_depthwise(C=8, Cg=1, groups=8)
    assert not tk.is_depthwise(C=8, Cg=2, groups=4)   # grouped, two channels per group
    assert tk.is_depthwise(C=1, Cg=1, groups=1)       # one channel: depthwise and dense are the same conv
    assert not tk.is_depthwise(C=8, Cg=8, groups=1)


# ----------------------------------------------------------------------------- CUDA host glue (no GPU)
class _FakeNative:
    """Records the CUDA launcher calls of pyimgcls/backends/cuda/conv.py (no GPU needed)."""

    def __init__(self):
        self.calls = []
        self.C = types.SimpleNamespace(
            conv2d_bwd_data_cuda=lambda *a: self.calls.append(("dgrad", a)),
            conv2d_bwd_weight_cuda=lambda *a: self.calls.append(("wgrad", a)),
            conv2d_wgrad_splits_cuda=lambda *a: self.calls.append(("splits", a)) or 3,
        )

    @staticmethod
    def dtype_code(dtype):
        from pyimgcls import _native
        return _native.dtype_code(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_cuda_glue_depthwise_reads_gradient_in_place(dtype, monkeypatch):
    """The depthwise dgrad kernel reads any layout: the CUDA backend passes the gradient's own
    strides (no channels_last copy, unlike the grouped fp16/bf16 implicit GEMM); wgrad asks the
    launcher for its split count first (the depthwise branch of conv2d_wgrad_splits)."""
    fake = _FakeNative()
    monkeypatch.setattr(cuda_conv, "_native", fake)
    monkeypatch.setattr(cuda_conv, "launch_args", lambda t: (0, 0))
    monkeypatch.setattr(cuda_conv, "sm_count", lambda index: 132)
    args = ([1, 1], [1, 1, 1, 1], [1, 1])
    x = torch.zeros(2, 8, 6, 6, dtype=dtype)
    gp = torch.zeros(2, 8, 6, 6, dtype=dtype)                    # NCHW
    w = torch.zeros(8, 1, 3, 3, dtype=dtype)
    cuda_conv.dgrad(gp, x, w, *args, 8)
    (kind, a), = fake.calls
    assert kind == "dgrad" and list(a[1])[-1] == 8 and a[3] == list(gp.stride())
    fake.calls.clear()
    cuda_conv.wgrad(gp, x, w, *args, 8)
    assert [c[0] for c in fake.calls] == ["splits", "wgrad"]
    # grouped (two channels per group), fp16: still converted for the tensor-core gathers
    if dtype == torch.float16:
        fake.calls.clear()
        cuda_conv.dgrad(gp, x, torch.zeros(8, 2, 3, 3, dtype=dtype), *args, 4)
        assert fake.calls[0][1][3] == list(gp.contiguous(memory_format=torch.channels_last).stride())

