"""Convolution family: ops.conv2d, ops.conv2d_bias_relu, nn.Conv2d on every backend against a float64
reference (torch.nn.functional.conv2d + add + activation in float64).

Triton runs through the interpreter on CPU when there is no GPU, so its cases are a small subset
with tiny shapes (N <= 2, C <= 8, H, W <= 9); the CPU backend runs the full grid."""

import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import nn, ops
from pyimgcls.ops.conv import output_memory_format, suggests_channels_last

from helpers import (BACKENDS, HAS_GPU, assert_close_to_reference, backend_ctx, device_for, dtypes_for,
                     omp_threads, triton_slow)

ACTS = [None, "relu", "relu6"]

# (name, N, C, H, W, O, kernel, stride, padding, dilation, groups)
CASES = [
    ("3x3", 2, 3, 7, 9, 5, 3, 1, 1, 1, 1),
    ("1x1", 2, 8, 9, 9, 16, 1, 1, 0, 1, 1),
    ("1x1s2", 2, 8, 9, 9, 16, 1, 2, 0, 1, 1),
    ("spatial1x1", 2, 5, 1, 1, 6, 1, 1, 0, 1, 1),
    ("7x7s2p3", 1, 3, 13, 17, 10, 7, 2, 3, 1, 1),
    ("grouped", 2, 6, 7, 7, 9, 3, (2, 1), (1, 2), 1, 3),
    ("depthwise", 2, 6, 9, 8, 6, 3, 1, 1, 1, 6),
    ("depthwise_mult", 1, 4, 7, 7, 8, 3, 2, 1, 1, 4),
    ("dilated", 1, 5, 11, 11, 7, (3, 5), 1, (2, 1), (2, 3), 1),
    ("even_kernel", 1, 4, 8, 9, 4, 2, 1, 0, 1, 1),
    ("same_even", 1, 4, 6, 7, 5, (2, 4), 1, "same", (1, 2), 1),
    ("valid", 1, 3, 6, 6, 4, 3, 1, "valid", 1, 1),
    ("11x11s4", 2, 3, 23, 19, 7, 11, 4, 2, 1, 1),
    ("odd_channels", 1, 13, 13, 17, 11, 3, 1, 1, 1, 1),
    ("batch1_5x5", 1, 9, 7, 7, 17, 5, (1, 2), 2, 1, 1),
]
TRITON_CASES = ["3x3", "1x1s2", "grouped", "depthwise", "same_even", "dilated"]


def _case_params(backend_param):
    backend = backend_param.values[0]
    out = []
    for case in CASES:
        if backend == "triton" and not HAS_GPU and case[0] not in TRITON_CASES:
            continue
        out.append(pytest.param(backend, case, id=f"{backend}-{case[0]}", marks=backend_param.marks))
    return out


ALL_CASES = [p for b in BACKENDS for p in _case_params(b)]


def _ref_act(x, activation):
    return {None: x, "relu": F.relu(x), "relu6": F.relu6(x)}[activation]


def _make(shape, dtype, device, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


def _skip_dtype(backend, dtype):
    if dtype not in dtypes_for(backend):
        pytest.skip(f"{backend} does not serve {dtype}")


def _inputs(case, dtype, device, channels_last=False, seed=0):
    _, N, C, H, W, O, k, stride, padding, dilation, groups = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = _make((N, C, H, W), dtype, device, seed=seed)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = _make((O, C // groups, kh, kw), dtype, device, scale=(C // groups * kh * kw) ** -0.5, seed=seed + 1)
    b = _make((O,), dtype, device, seed=seed + 2)
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def _ref(x, w, b, kw, activation=None, residual=None):
    f = lambda t: None if t is None else t.detach().double().cpu()  # noqa: E731
    out = F.conv2d(f(x), f(w), f(b), **kw)
    if residual is not None:
        out = out + f(residual)
    return _ref_act(out, activation)


def _torch_same_dtype(x, w, b, kw, activation=None, residual=None):
    """PyTorch's own result at the input dtype (the yardstick for float16/bfloat16 error)."""
    out = F.conv2d(x, w, b, **kw)
    if residual is not None:
        out = out + residual
    return _ref_act(out, activation)


# ----------------------------------------------------------------------------- forward accuracy
@pytest.mark.parametrize("backend,case", ALL_CASES)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_conv2d_matches_reference(backend, case, layout):
    dev = device_for(backend)
    x, w, b, kw = _inputs(case, torch.float32, dev, channels_last=layout == "nhwc")
    ref_plain = F.conv2d(x, w, b, **kw)
    res = _make(ref_plain.shape, torch.float32, dev, seed=9)
    variants = [(None, None, b), ("relu", res, b)] if backend == "triton" and triton_slow() else \
        [(a, r, bb) for a in ACTS for r in (None, res) for bb in (b, None)]
    for activation, residual, bias in variants:
        with backend_ctx(backend):
            out = ops.conv2d(x, w, bias, activation=activation, residual=residual, **kw)
        assert out.dtype == x.dtype and out.device.type == dev.type
        assert out.shape == ref_plain.shape and out.stride() == ref_plain.stride(), (out.stride(), ref_plain.stride())
        assert_close_to_reference(out, _ref(x, w, bias, kw, activation, residual), scale=4.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_conv2d_dtypes(backend, dtype, layout):
    """float64 to 1e-10; float16 / bfloat16 within 2x PyTorch's own error at that dtype (the epilogue runs
    on the fp32 accumulator, so ours is usually the more accurate)."""
    _skip_dtype(backend, dtype)
    dev = device_for(backend)
    case = ("odd", 2, 8, 7, 9, 12, 3, 1, 1, 1, 2)
    x, w, b, kw = _inputs(case, dtype, dev, channels_last=layout == "nhwc", seed=3)
    res = _make((2, 12, 7, 9), dtype, dev, seed=4)
    with backend_ctx(backend):
        out = ops.conv2d(x, w, b, activation="relu6", residual=res, **kw)
    assert out.dtype == dtype
    assert_close_to_reference(out, _ref(x, w, b, kw, "relu6", res),
                              torch_same_dtype=_torch_same_dtype(x, w, b, kw, "relu6", res), scale=4.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_bias_relu_and_nan_propagation(backend):
    dev = device_for(backend)
    x, w, b, kw = _inputs(("t", 1, 4, 6, 6, 5, 3, 1, 1, 1, 1), torch.float32, dev, seed=5)
    with backend_ctx(backend):
        out = ops.conv2d_bias_relu(x, w, b, 1, 1)
    assert_close_to_reference(out, _ref(x, w, b, kw, "relu"), scale=4.0)
    x = x.clone()
    x[0, 1, 2, 3] = float("nan")
    for act in ACTS:
        with backend_ctx(backend):
            out = ops.conv2d(x, w, b, padding=1, activation=act)
        nan_ref = torch.isnan(_ref(x, w, b, kw, act))
        assert nan_ref.sum() == 9 * 5 and torch.equal(torch.isnan(out.cpu()), nan_ref), act


# ----------------------------------------------------------------------------- layouts and shapes
@pytest.mark.parametrize("backend", BACKENDS)
def test_output_memory_format_matches_pytorch(backend):
    dev = device_for(backend)
    shapes = [((2, 4, 5, 5), (6, 4, 3, 3), 1), ((2, 4, 5, 5), (8, 1, 3, 3), 4), ((2, 4, 5, 5), (6, 2, 1, 1), 2),
              ((1, 1, 4, 4), (3, 1, 3, 3), 1), ((2, 3, 3, 3), (5, 3, 3, 3), 1), ((1, 4, 1, 1), (4, 4, 1, 1), 1)]
    for xs, ws, groups in shapes:
        for x_cl in (False, True):
            for w_cl in (False, True):
                x = _make(xs, torch.float32, dev, seed=6)
                w = _make(ws, torch.float32, dev, seed=7)
                if x_cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                if w_cl:
                    w = w.contiguous(memory_format=torch.channels_last)
                ref = F.conv2d(x.cpu(), w.cpu(), groups=groups)
                with backend_ctx(backend):
                    out = ops.conv2d(x, w, groups=groups)
                assert out.stride() == ref.stride(), (xs, ws, x_cl, w_cl, out.stride(), ref.stride())
                assert_close_to_reference(out, _ref(x, w, None, dict(groups=groups)))


def test_suggests_channels_last_matches_c10():
    from torch._prims_common import suggest_memory_format
    tensors = [torch.empty(2, 3, 4, 5), torch.empty(2, 3, 4, 5).contiguous(memory_format=torch.channels_last),
               torch.empty(2, 1, 4, 5), torch.empty(2, 3, 1, 1).contiguous(memory_format=torch.channels_last),
               torch.empty(2, 3, 1, 1), torch.empty(1, 3, 4, 1).permute(0, 2, 1, 3),
               torch.empty(2, 5, 4, 3).permute(0, 3, 2, 1), torch.empty(0, 3, 4, 5).contiguous(memory_format=torch.channels_last),
               torch.empty(2, 6, 4, 5)[:, ::2], torch.empty(4, 3, 2, 2).contiguous(memory_format=torch.channels_last)[:, :, :1]]
    for t in tensors:
        assert suggests_channels_last(t) == (suggest_memory_format(t) == torch.channels_last), (t.shape, t.stride())
    x, w = torch.empty(1, 3, 4, 4), torch.empty(2, 3, 1, 1).contiguous(memory_format=torch.channels_last)
    assert output_memory_format(x, w) == torch.contiguous_format  # [2, 3, 1, 1] is ambiguous: NCHW


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_views_and_unbatched_input(backend):
    dev = device_for(backend)
    base = _make((2, 6, 9, 11), torch.float32, dev, seed=8)
    x = base[:, ::2, :, 1:10]  # non-contiguous view
    w = _make((4, 3, 3, 3), torch.float32, dev, seed=9)
    b = _make((4,), torch.float32, dev, seed=10)
    with backend_ctx(backend):
        out = ops.conv2d(x, w, b, padding=1)
    assert_close_to_reference(out, _ref(x, w, b, dict(padding=1)), scale=4.0)
    # unbatched [C, H, W] input, with a residual of the unbatched output's shape
    x3 = _make((3, 7, 6), torch.float32, dev, seed=11)
    res = _make((4, 7, 6), torch.float32, dev, seed=12)
    with backend_ctx(backend):
        out = ops.conv2d(x3, w, b, padding="same", activation="relu", residual=res)
    ref = F.conv2d(x3.cpu(), w.cpu(), b.cpu(), padding="same")
    assert out.shape == ref.shape == (4, 7, 6) and out.stride() == ref.stride()
    assert_close_to_reference(out, F.relu(ref.double() + res.double().cpu()), scale=4.0)
    x3cl = x3.unsqueeze(0).contiguous(memory_format=torch.channels_last).squeeze(0)
    with backend_ctx(backend):
        out = ops.conv2d(x3cl, w, b, padding=1)
    assert out.stride() == F.conv2d(x3cl.cpu(), w.cpu(), b.cpu(), padding=1).stride()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_and_empty_channels(backend):
    dev = device_for(backend)
    w = _make((4, 3, 3, 3), torch.float32, dev, seed=13).requires_grad_()
    b = _make((4,), torch.float32, dev, seed=14).requires_grad_()
    x = torch.zeros((0, 3, 5, 5), device=dev, requires_grad=True)
    with backend_ctx(backend):
        out = ops.conv2d(x, w, b, activation="relu")
    assert out.shape == (0, 4, 3, 3)
    out.sum().backward()
    assert torch.equal(w.grad.cpu(), torch.zeros(4, 3, 3, 3)) and torch.equal(b.grad.cpu(), torch.zeros(4))
    # zero input channels: the empty sum, so out = act(bias)
    with backend_ctx(backend):
        out = ops.conv2d(torch.zeros((2, 0, 5, 5), device=dev), torch.zeros((4, 0, 3, 3), device=dev),
                         b.detach(), activation="relu")
    torch.testing.assert_close(out.cpu(), F.relu(b.detach().cpu()).view(1, 4, 1, 1).expand(2, 4, 3, 3))


# ----------------------------------------------------------------------------- backward
BWD_CASES = ["3x3", "1x1", "1x1s2", "grouped", "depthwise", "same_even", "dilated", "7x7s2p3", "11x11s4"]
TRITON_BWD_CASES = ["3x3", "1x1s2", "grouped", "same_even"]


def _bwd_params():
    out = []
    for bp in BACKENDS:
        backend = bp.values[0]
        names = TRITON_BWD_CASES if (backend == "triton" and not HAS_GPU) else BWD_CASES
        for case in CASES:
            if case[0] in names:
                out.append(pytest.param(backend, case, id=f"{backend}-{case[0]}", marks=bp.marks))
    return out


@pytest.mark.parametrize("backend,case", _bwd_params())
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_conv2d_backward_matches_reference(backend, case, layout):
    dev = device_for(backend)
    x, w, b, kw = _inputs(case, torch.float32, dev, channels_last=layout == "nhwc", seed=15)
    out_shape = F.conv2d(x, w, b, **kw).shape
    res = _make(out_shape, torch.float32, dev, seed=16)
    go = _make(out_shape, torch.float32, dev, seed=17)
    acts = ["relu6"] if backend == "triton" and triton_slow() else ACTS
    for activation in acts:
        leaves = [t.detach().clone().requires_grad_() for t in (x, w, b, res)]
        with backend_ctx(backend):
            out = ops.conv2d(leaves[0], leaves[1], leaves[2], activation=activation, residual=leaves[3], **kw)
        out.backward(go)
        refs = [t.detach().double().cpu().requires_grad_() for t in (x, w, b, res)]
        _ref_act(F.conv2d(refs[0], refs[1], refs[2], **kw) + refs[3], activation).backward(go.double().cpu())
        for name, ours, ref in zip(("input", "weight", "bias", "residual"), leaves, refs):
            assert ours.grad is not None, name
            assert_close_to_reference(ours.grad, ref.grad, scale=20.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_conv2d_backward_low_precision(backend, dtype):
    dev = device_for(backend)
    x, w, b, kw = _inputs(("t", 2, 8, 6, 6, 8, 3, 1, 1, 1, 1), dtype, dev, channels_last=True, seed=18)
    go = _make((2, 8, 6, 6), dtype, dev, seed=19)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    with backend_ctx(backend):
        ops.conv2d(*leaves, activation="relu", **kw).backward(go)
    theirs = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    F.relu(F.conv2d(*theirs, **kw)).backward(go)
    refs = [t.detach().double().cpu().requires_grad_() for t in (x, w, b)]
    F.relu(F.conv2d(*refs, **kw)).backward(go.double().cpu())
    for ours, th, ref in zip(leaves, theirs, refs):
        assert ours.grad.dtype == dtype
        assert_close_to_reference(ours.grad, ref.grad, torch_same_dtype=th.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_requires_grad(backend):
    dev = device_for(backend)
    x, w, b, kw = _inputs(("t", 1, 4, 5, 5, 3, 3, 1, 1, 1, 1), torch.float32, dev, seed=20)
    res = _make((1, 3, 5, 5), torch.float32, dev, seed=21).requires_grad_()
    w = w.requires_grad_()
    with backend_ctx(backend):
        ops.conv2d(x, w, b, residual=res, **kw).sum().backward()  # no activation: grad residual = grad
    assert x.grad is None and b.grad is None
    assert torch.equal(res.grad.cpu(), torch.ones(1, 3, 5, 5))
    ref = w.detach().double().cpu().requires_grad_()
    F.conv2d(x.double().cpu(), ref, b.double().cpu(), **kw).sum().backward()
    assert_close_to_reference(w.grad, ref.grad, scale=10.0)


@pytest.mark.parametrize("activation", ACTS, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_gradcheck_float64_cpu(activation, layout):
    x, w, b, kw = _inputs(("t", 1, 4, 4, 5, 4, 3, (2, 1), 1, 1, 2), torch.float64, torch.device("cpu"),
                          channels_last=layout == "nhwc", seed=22)
    res = _make((1, 4, 2, 5), torch.float64, torch.device("cpu"), seed=23)
    args = tuple(t.requires_grad_() for t in (x, w, b, res))
    with backend_ctx("cpu"):
        assert torch.autograd.gradcheck(
            lambda x, w, b, r: ops.conv2d(x, w, b, activation=activation, residual=r, **kw), args)
        assert torch.autograd.gradcheck(
            lambda x, w: ops.conv2d(x, w, None, padding="same", dilation=2, groups=2), (args[0], w.detach()[:, :, :2].clone()
                                                                              .requires_grad_()))


def test_gradcheck_float64_triton():
    if HAS_GPU:
        pytest.skip("gradcheck runs in float64 on CPU tensors")
    x, w, b, kw = _inputs(("t", 1, 2, 3, 3, 2, 3, 1, 1, 1, 1), torch.float64, torch.device("cpu"), seed=24)
    with backend_ctx("triton"):
        assert torch.autograd.gradcheck(lambda x, w, b: ops.conv2d(x, w, b, activation="relu", **kw),
                                        tuple(t.requires_grad_() for t in (x, w, b)))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_bad_inputs_raise_clear_errors(backend):
    dev = device_for(backend)
    x, w = torch.randn(2, 4, 6, 6, device=dev), torch.randn(6, 4, 3, 3, device=dev)
    cases = [
        (ValueError, "'input'", lambda: ops.conv2d(x, torch.randn(6, 3, 3, 3, device=dev))),  # in_channels
        (ValueError, "'groups'", lambda: ops.conv2d(x, torch.randn(5, 2, 3, 3, device=dev), groups=2)),
        (ValueError, "'input'", lambda: ops.conv2d(x, torch.randn(6, 1, 3, 3, device=dev), groups=3)),
        (ValueError, "'residual'", lambda: ops.conv2d(x, w, residual=torch.randn(2, 6, 5, 4, device=dev))),
        (ValueError, "'residual'", lambda: ops.conv2d(x, w, residual=torch.randn(6, 4, 4, device=dev))),
        (ValueError, "'weight'", lambda: ops.conv2d(torch.randn(1, 4, 2, 2, device=dev), w)),  # kernel > input
        (ValueError, "'stride'", lambda: ops.conv2d(x, w, stride=0)),
        (ValueError, "'stride'", lambda: ops.conv2d(x, w, stride=(1, -1))),
        (ValueError, "'stride'", lambda: ops.conv2d(x, w, stride=(1, 1, 1))),
        (TypeError, "'stride'", lambda: ops.conv2d(x, w, stride=1.5)),
        (ValueError, "'padding'", lambda: ops.conv2d(x, w, padding=-1)),
        (ValueError, "'padding'", lambda: ops.conv2d(x, w, padding="same", stride=2)),
        (ValueError, "'padding'", lambda: ops.conv2d(x, w, padding="full")),
        (ValueError, "'dilation'", lambda: ops.conv2d(x, w, dilation=0)),
        (ValueError, "'groups'", lambda: ops.conv2d(x, w, groups=0)),
        (ValueError, "'input'", lambda: ops.conv2d(torch.randn(1, 2, 4, 6, 6, device=dev), w)),  # 5-D
        (ValueError, "'input'", lambda: ops.conv2d(torch.randn(4, 6, device=dev), w)),
        (ValueError, "'weight'", lambda: ops.conv2d(x, torch.randn(6, 4, 3, device=dev))),
        (ValueError, "'bias'", lambda: ops.conv2d(x, w, torch.randn(5, device=dev))),
        (ValueError, "'bias'", lambda: ops.conv2d(x, w, torch.randn(6, 1, device=dev))),
        (ValueError, "'activation'", lambda: ops.conv2d(x, w, activation="gelu")),
        (TypeError, "'input'", lambda: ops.conv2d(x.long(), w)),
        (TypeError, "'weight'", lambda: ops.conv2d(x, w.double())),
        (TypeError, "'bias'", lambda: ops.conv2d(x, w, torch.randn(6, device=dev, dtype=torch.float64))),
        (TypeError, "'weight'", lambda: ops.conv2d(x, [[1.0]])),
    ]
    with backend_ctx(backend):
        for exc, name, call in cases:
            with pytest.raises(exc, match=name):
                call()
            with pytest.raises(RuntimeError):  # also a RuntimeError, as PyTorch raises for these
                call()
    with pytest.raises(ValueError, match="padding_mode"):
        nn.Conv2d(3, 4, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="'activation'"):
        nn.Conv2d(3, 4, 3, activation="tanh")


def test_backend_errors():
    x, w = torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3)
    with pyimgcls.use_backend("cuda"), pytest.raises(pyimgcls.errors.BackendError, match="cuda"):
        ops.conv2d(x, w)
    with pyimgcls.use_backend("torch"):
        torch.testing.assert_close(ops.conv2d(x, w, padding="same"), F.conv2d(x, w, padding="same"))


def test_auto_picks_cpu_kernel(monkeypatch):
    from pyimgcls import _native
    calls = []
    real = _native.C.conv2d_fwd_cpu
    monkeypatch.setattr(_native.C, "conv2d_fwd_cpu", lambda *a: calls.append(a) or real(*a))
    ops.conv2d(torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3))
    assert len(calls) == 1


# ----------------------------------------------------------------------------- torch integration
def test_opcheck_every_conv_op():
    x, w, b = torch.randn(2, 4, 6, 5), torch.randn(6, 2, 3, 3), torch.randn(6)
    res = torch.randn(2, 6, 6, 5)
    conv = torch.ops.pyimgcls.conv2d.default
    torch.library.opcheck(conv, (x, w, b, res, [1, 1], [1, 1, 1, 1], [1, 1], 2, 1, "cpu"))
    torch.library.opcheck(conv, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), res.requires_grad_(),
                                 [1, 1], [1, 1, 1, 1], [1, 1], 2, 2, "cpu"))
    xcl = x.detach().contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(conv, (xcl, w.detach(), None, None, [2, 1], [0, 1, 1, 2], [1, 1], 2, 0, "cpu"))
    out = torch.relu(F.conv2d(x.detach(), w.detach(), b.detach(), padding=1, groups=2) + res.detach())
    torch.library.opcheck(torch.ops.pyimgcls.conv2d_backward.default,
                          (torch.randn(2, 6, 6, 5), x.detach(), w.detach(), out, [1, 1], [1, 1, 1, 1], [1, 1], 2, 1,
                           True, True, "cpu", True, True))


def test_torch_compile_fullgraph_convnet():
    torch.manual_seed(0)
    net = torch.nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, activation="relu"),
                              nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, activation="relu6"),
                              nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 9, 9)
    eager = net(x)
    compiled = torch.compile(net, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager)


def test_autocast_runs_in_autocast_dtype():
    x, w, b = torch.randn(1, 3, 6, 6), torch.randn(4, 3, 3, 3), torch.randn(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = ops.conv2d(x, w, b)
        theirs = F.conv2d(x, w, b)
    assert ours.dtype == theirs.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- nn.Conv2d
def test_nn_conv2d_state_dict_interchangeable_with_torch():
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    ours = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, activation="relu")
    assert isinstance(ours, torch.nn.Conv2d)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert set(ours.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(ours(x), F.relu(ref(x)))
    shortcut = torch.randn(2, 6, 4, 4)
    torch.testing.assert_close(ours(x, residual=shortcut), F.relu(ref(x) + shortcut))
    assert "activation='relu'" in repr(ours)
    same = nn.Conv2d(4, 5, 4, padding="same", bias=False)
    assert same.bias is None and same(x).shape == (2, 5, 7, 7)
    torch.testing.assert_close(same(x), F.conv2d(x, same.weight, padding="same"))


# ----------------------------------------------------------------------------- CPU threading branches
# csrc/cpu/conv.cpp spreads the (image, group) units over OpenMP threads when omp_get_max_threads() > 1
# (the system libgomp's count, which torch.set_num_threads does not reach, so the test sets it), the
# convolution has at least 2^22 multiply-adds, and units % threads == 0 or units >= 4 * threads; the
# weight gradient then sums per-thread partials (thread 0 into dw) and reduces them in thread order.
# Otherwise the units run in order and each GEMM parallelises inside. Every other conv test is below
# 2^22 (one thread). Rows: (name, N, C, H, W, O, kernel, stride, padding, groups); the multiply-adds
# (N * groups * O/groups * OH*OW * C/groups*kh*kw) are >= 4.2M in each.
THREADED = [
    ("3x3_units4", 4, 8, 32, 32, 16, 3, 1, 1, 1),           # 4 units: 2 per thread
    ("3x3_units9", 9, 8, 22, 22, 16, 3, 1, 1, 1),           # 9 units: 5 + 4, uneven
    ("grouped_units4", 2, 8, 64, 64, 16, 3, 1, 1, 2),       # units are (image, group) pairs
    ("1x1_direct", 4, 64, 32, 32, 64, 1, 1, 0, 1),          # no im2col: the input is the GEMM operand
    ("1x1_stride2", 4, 32, 66, 66, 32, 1, 2, 0, 1),         # im2col with one tap (no tap reordering)
    ("depthwise_units64", 4, 16, 86, 86, 16, 3, 1, 1, 16),  # one channel per group
    ("3x3_units3", 3, 8, 40, 40, 16, 3, 1, 1, 1),           # 3 units < 4 * threads: serial units, parallel GEMMs
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", THREADED, ids=lambda c: c[0])
def test_cpu_multithreaded_conv_and_gradients(case, layout, dtype):
    """Forward, input gradient and weight gradient (the per-thread partials) on 2 threads against
    float64. The incoming gradient has the output's layout, so NHWC takes the pixel-major paths."""
    name, N, C, H, W, O, k, stride, padding, groups = case
    kw = dict(stride=stride, padding=padding, groups=groups)
    OH = (H + 2 * padding - k) // stride + 1
    assert N * O * OH * OH * (C // groups) * k * k >= 1 << 22  # the kernel's threading threshold
    cl = layout == "nhwc"
    x, w, b, _ = _inputs((name, N, C, H, W, O, k, stride, padding, 1, groups), dtype, "cpu", channels_last=cl,
                         seed=40)
    go = _make((N, O, OH, OH), dtype, "cpu", seed=41)
    go = go.contiguous(memory_format=torch.channels_last) if cl else go
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    with omp_threads(2), backend_ctx("cpu"):
        out = ops.conv2d(*leaves, **kw)
        out.backward(go)
    refs = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref = F.conv2d(*refs, **kw)
    ref.backward(go.double())
    assert out.stride() == F.conv2d(x, w, b, **kw).stride()
    assert_close_to_reference(out, ref, scale=4.0)
    for what, ours, r in zip(("input", "weight", "bias"), leaves, refs):
        try:
            # the weight gradient sums N*OH*OW products: scale the absolute tolerance with its size
            assert_close_to_reference(ours.grad, r.grad, scale=(N * OH * OH) ** 0.5)
        except AssertionError as e:
            raise AssertionError(f"grad {what}: {e}") from None
