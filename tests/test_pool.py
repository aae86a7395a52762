"""Pooling family: ops.max_pool2d / avg_pool2d / adaptive_avg_pool2d and nn.MaxPool2d / AvgPool2d /
AdaptiveAvgPool2d on every backend, against a float64 PyTorch reference (values, indices, output
memory format, gradients, error conditions)."""
import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import nn, ops

from helpers import BACKENDS, assert_close_to_reference, backend_ctx, device_for, dtypes_for

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["nchw", "nhwc"]
SHAPE = (2, 3, 7, 9)  # odd sizes, not multiples of any stride

# (kernel_size, stride, padding, dilation, ceil_mode)
MAX_CONFIGS = [
    (2, None, 0, 1, False),                   # VGG / DenseNet 2x2
    (3, 2, 1, 1, False),                      # ResNet stem
    (3, 2, 0, 1, True),                       # AlexNet, last window hangs over the edge
    (5, 3, 2, 1, True),                       # wide padding + ceil-mode edge windows
    ((3, 2), (2, 1), (1, 0), (2, 1), True),   # non-square kernel / stride / padding, dilation
    ((7, 9), 1, 0, 1, False),                 # window = whole input: 1x1 output
]
AVG_CONFIGS = [c[:3] + (c[4],) for c in MAX_CONFIGS if c[3] == 1] + [((3, 2), (2, 1), (1, 0), True)]
ADAPTIVE_SIZES = [1, 3, (4, 5), (None, 2), (10, 13), (7, 1)]


def _ids(cfg):
    return "-".join(str(v).replace(" ", "") for v in cfg)


def _skip_dtype(backend, dtype):
    if dtype not in dtypes_for(backend):
        pytest.skip(f"{backend} does not serve {dtype}")


def _layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else x


def _make(shape, dtype, device, layout="nchw", seed=0, ties=False, nan=False):
    """Random input; ``ties`` draws small integers so windows hold repeated maxima; ``nan`` plants NaNs."""
    g = torch.Generator().manual_seed(seed)
    if ties:
        x = torch.randint(-2, 3, shape, generator=g).to(torch.float64)
    else:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
    if nan:
        flat = x.view(-1)
        flat[torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 15)]] = float("nan")
    return _layout(x.to(dtype), layout).to(device)


def _distinct(shape, device, layout="nchw", seed=0):
    """float64 values at least 1/numel apart: no ties, so max pooling is differentiable everywhere."""
    g = torch.Generator().manual_seed(seed)
    n = torch.Size(shape).numel()
    x = (torch.randperm(n, generator=g).to(torch.float64) / n).reshape(shape)
    return _layout(x, layout).to(device)


def _grad_ref(fn, x, go):
    """(float64 reference gradient, PyTorch's gradient at x's dtype) of sum(fn(x) * go)."""
    x64 = x.detach().cpu().double().requires_grad_()
    fn(x64).backward(go.detach().cpu().double())
    xt = x.detach().cpu().requires_grad_()
    fn(xt).backward(go.detach().cpu())
    return x64.grad, xt.grad


# ----------------------------------------------------------------------------- max pooling
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", MAX_CONFIGS, ids=_ids)
def test_max_pool2d_forward_matches_pytorch(backend, dtype, layout, cfg):
    _skip_dtype(backend, dtype)
    k, s, p, d, cm = cfg
    x = _make(SHAPE, dtype, device_for(backend), layout, seed=1, ties=True, nan=True)
    with backend_ctx(backend):
        out, idx = ops.max_pool2d(x, k, s, p, d, cm, return_indices=True)
    ref, ref_idx = F.max_pool2d(x.cpu().double(), k, s, p, d, cm, return_indices=True)
    theirs = F.max_pool2d(x.cpu(), k, s, p, d, cm)
    assert out.dtype == dtype and idx.dtype == torch.int64
    # max is exact in every dtype: same values, same NaN pattern, same argmax (ties and NaN rules)
    assert torch.equal(torch.isnan(out.cpu()), torch.isnan(ref))
    assert torch.equal(out.cpu().double().nan_to_num(), ref.nan_to_num())
    assert torch.equal(idx.cpu(), ref_idx)
    assert out.stride() == theirs.stride() and idx.stride() == theirs.stride()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", MAX_CONFIGS, ids=_ids)
def test_max_pool2d_backward_matches_pytorch(backend, dtype, layout, cfg):
    _skip_dtype(backend, dtype)
    k, s, p, d, cm = cfg
    dev = device_for(backend)
    x = _make(SHAPE, dtype, dev, layout, seed=2, ties=True).requires_grad_()
    with backend_ctx(backend):
        out = ops.max_pool2d(x, k, s, p, d, cm)
    go = _make(out.shape, dtype, dev, layout, seed=3)
    out.backward(go)
    ref, theirs = _grad_ref(lambda t: F.max_pool2d(t, k, s, p, d, cm), x, go)
    assert x.grad.dtype == dtype and x.grad.stride() == theirs.stride()
    assert_close_to_reference(x.grad, ref, torch_same_dtype=theirs, scale=4.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool2d_nan_and_all_inf_windows(backend):
    """NaN wins with the last NaN's index; an all -inf window returns -inf at its first tap; the
    gradient goes to the NaN's position."""
    dev = device_for(backend)
    x = torch.tensor([[1.0, float("nan"), 3.0, float("nan")],
                      [float("nan"), 5.0, 2.0, 2.0],
                      [-float("inf"), -float("inf"), 4.0, 4.0],
                      [-float("inf"), -float("inf"), 4.0, 1.0]]).reshape(1, 1, 4, 4).to(dev)
    x = x.repeat(1, 2, 1, 1)  # two channels, so channels_last is a real NHWC layout
    for layout in LAYOUTS:
        xi = _layout(x.clone(), layout).requires_grad_()
        with backend_ctx(backend):
            out, idx = ops.max_pool2d(xi, 2, return_indices=True)
        ref, ref_idx = F.max_pool2d(x.cpu(), 2, return_indices=True)
        assert torch.equal(idx.cpu(), ref_idx) and ref_idx.flatten().tolist() == [4, 3, 8, 10] * 2
        assert torch.equal(out.detach().cpu().nan_to_num(), ref.nan_to_num())
        out.backward(torch.ones_like(out))
        g = torch.zeros(16)
        g[[4, 3, 8, 10]] = 1.0
        assert torch.equal(xi.grad.cpu().reshape(2, 16), torch.stack([g, g]))


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])   # the torch backend's backward once failed on N=0
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool2d_unbatched_and_empty_batch(backend, layout):
    dev = device_for(backend)
    x3 = _make((3, 7, 9), torch.float32, dev, seed=4, ties=True)
    with backend_ctx(backend):
        out, idx = ops.max_pool2d(x3, 3, 2, 1, return_indices=True)
    ref, ref_idx = F.max_pool2d(x3.cpu(), 3, 2, 1, return_indices=True)
    assert out.shape == ref.shape == (3, 4, 5) and out.is_contiguous()
    assert torch.equal(out.cpu(), ref) and torch.equal(idx.cpu(), ref_idx)
    x0 = _layout(torch.zeros(0, 3, 7, 9, device=dev), layout).requires_grad_()
    with backend_ctx(backend):
        out = ops.max_pool2d(x0, 2)
    assert out.shape == (0, 3, 3, 4)
    out.sum().backward()
    assert x0.grad.shape == x0.shape


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", [MAX_CONFIGS[1], MAX_CONFIGS[4]], ids=_ids)
def test_max_pool2d_gradcheck_float64(backend, layout, cfg):
    dev = device_for(backend)
    if dev.type == "cuda":
        pytest.skip("gradcheck runs in float64 on CPU tensors")
    k, s, p, d, cm = cfg
    x = _distinct((1, 2, 4, 5), dev, layout, seed=5).requires_grad_()
    with backend_ctx(backend):
        assert torch.autograd.gradcheck(lambda t: ops.max_pool2d(t, k, s, p, d, cm), (x,))


# ----------------------------------------------------------------------------- average pooling
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", AVG_CONFIGS, ids=_ids)
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["cip", "nocip"])
def test_avg_pool2d_forward_matches_pytorch(backend, dtype, layout, cfg, count_include_pad):
    _skip_dtype(backend, dtype)
    k, s, p, cm = cfg
    x = _make(SHAPE, dtype, device_for(backend), layout, seed=6)
    with backend_ctx(backend):
        out = ops.avg_pool2d(x, k, s, p, cm, count_include_pad)
    ref = F.avg_pool2d(x.cpu().double(), k, s, p, cm, count_include_pad)
    theirs = F.avg_pool2d(x.cpu(), k, s, p, cm, count_include_pad)
    assert out.dtype == dtype and out.stride() == theirs.stride()
    assert_close_to_reference(out, ref, torch_same_dtype=theirs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", AVG_CONFIGS, ids=_ids)
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["cip", "nocip"])
@pytest.mark.parametrize("divisor_override", [None, 3, -2], ids=str)
def test_avg_pool2d_forward_backward_divisors(backend, layout, cfg, count_include_pad, divisor_override):
    k, s, p, cm = cfg
    dev = device_for(backend)
    x = _make(SHAPE, torch.float64 if dev.type == "cpu" else torch.float32, dev, layout, seed=7).requires_grad_()
    fn = lambda t: F.avg_pool2d(t, k, s, p, cm, count_include_pad, divisor_override)  # noqa: E731
    with backend_ctx(backend):
        out = ops.avg_pool2d(x, k, s, p, cm, count_include_pad, divisor_override)
    assert_close_to_reference(out, fn(x.detach().cpu().double()))
    go = _make(out.shape, x.dtype, dev, layout, seed=8)
    out.backward(go)
    ref, theirs = _grad_ref(fn, x, go)
    assert x.grad.stride() == theirs.stride()
    assert_close_to_reference(x.grad, ref, scale=4.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_avg_pool2d_backward_low_precision(backend, dtype, layout):
    _skip_dtype(backend, dtype)
    dev = device_for(backend)
    x = _make(SHAPE, dtype, dev, layout, seed=9).requires_grad_()
    with backend_ctx(backend):
        out = ops.avg_pool2d(x, 3, 2, 1, True, False)
    go = _make(out.shape, dtype, dev, layout, seed=10)
    out.backward(go)
    ref, theirs = _grad_ref(lambda t: F.avg_pool2d(t, 3, 2, 1, True, False), x, go)
    assert x.grad.dtype == dtype
    assert_close_to_reference(x.grad, ref, torch_same_dtype=theirs)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_avg_pool2d_gradcheck_float64(backend, layout):
    dev = device_for(backend)
    if dev.type == "cuda":
        pytest.skip("gradcheck runs in float64 on CPU tensors")
    x = _make((1, 2, 4, 5), torch.float64, dev, layout, seed=11).requires_grad_()
    with backend_ctx(backend):
        assert torch.autograd.gradcheck(lambda t: ops.avg_pool2d(t, (3, 2), (2, 1), (1, 1), True, False), (x,))
        assert torch.autograd.gradcheck(lambda t: ops.avg_pool2d(t, 2, 2, 1, True, True, 3), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_avg_pool2d_unbatched(backend):
    x3 = _make((3, 7, 9), torch.float32, device_for(backend), seed=12)
    with backend_ctx(backend):
        out = ops.avg_pool2d(x3, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    ref = F.avg_pool2d(x3.cpu().double(), 3, 2, 1, ceil_mode=True, count_include_pad=False)
    assert out.shape == ref.shape and out.is_contiguous()
    assert_close_to_reference(out, ref)


# ----------------------------------------------------------------------------- adaptive average pooling
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("output_size", ADAPTIVE_SIZES, ids=str)
def test_adaptive_avg_pool2d_matches_pytorch(backend, dtype, layout, output_size):
    _skip_dtype(backend, dtype)
    dev = device_for(backend)
    x = _make(SHAPE, dtype, dev, layout, seed=13).requires_grad_()
    with backend_ctx(backend):
        out = ops.adaptive_avg_pool2d(x, output_size)
    ref = F.adaptive_avg_pool2d(x.detach().cpu().double(), output_size)
    theirs = F.adaptive_avg_pool2d(x.detach().cpu(), output_size)
    assert out.dtype == dtype and out.stride() == theirs.stride()
    assert_close_to_reference(out, ref, torch_same_dtype=theirs, scale=2.0)
    go = _make(out.shape, dtype, dev, layout, seed=14)
    out.backward(go)
    gref, gtheirs = _grad_ref(lambda t: F.adaptive_avg_pool2d(t, output_size), x, go)
    assert_close_to_reference(x.grad, gref, torch_same_dtype=gtheirs, scale=2.0)


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")  # 0/0 = NaN, on purpose
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(5, 6), (3, 5, 6), (2, 2, 3, 5, 6), (2, 3, 0, 4), (0, 3, 4, 4)], ids=str)
def test_adaptive_global_mean_any_rank_like_aten(backend, shape):
    """A 1x1 output is ATen's mean over the last two dims: any rank >= 2, NaN for empty planes."""
    x = _make(shape, torch.float32, device_for(backend), seed=15)
    with backend_ctx(backend):
        out = ops.adaptive_avg_pool2d(x, 1)
    ref = F.adaptive_avg_pool2d(x.cpu().double(), 1)
    assert out.shape == ref.shape and out.stride() == F.adaptive_avg_pool2d(x.cpu(), 1).stride()
    assert_close_to_reference(out, ref, scale=2.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adaptive_avg_pool2d_unbatched_and_zero_output(backend):
    dev = device_for(backend)
    x3 = _make((3, 7, 9), torch.float32, dev, seed=16)
    with backend_ctx(backend):
        out = ops.adaptive_avg_pool2d(x3, (None, 4))
        empty = ops.adaptive_avg_pool2d(_make(SHAPE, torch.float32, dev, seed=17).requires_grad_(), (0, 2))
    assert_close_to_reference(out, F.adaptive_avg_pool2d(x3.cpu().double(), (None, 4)))
    assert empty.shape == (2, 3, 0, 2)
    empty.sum().backward()


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("output_size", [1, (4, 3)], ids=str)
def test_adaptive_avg_pool2d_gradcheck_float64(backend, layout, output_size):
    dev = device_for(backend)
    if dev.type == "cuda":
        pytest.skip("gradcheck runs in float64 on CPU tensors")
    x = _make((1, 2, 4, 5), torch.float64, dev, layout, seed=18).requires_grad_()
    with backend_ctx(backend):
        assert torch.autograd.gradcheck(lambda t: ops.adaptive_avg_pool2d(t, output_size), (x,))


# ----------------------------------------------------------------------------- wide channels (vector paths)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_channels_last_wide_channels(backend, dtype):
    """C = 24: CPU register chunks of 16 plus a remainder, CUDA 16-byte channel vectors (4 fp32 / 8 fp16)."""
    _skip_dtype(backend, dtype)
    dev = device_for(backend)
    x = _make((2, 24, 7, 9), dtype, dev, "nhwc", seed=21, ties=True, nan=True).requires_grad_()
    cases = [(lambda f, t: f.max_pool2d(t, 3, 2, 1, ceil_mode=True), 4.0),
             (lambda f, t: f.avg_pool2d(t, (3, 2), (2, 1), (1, 0), True, False), 2.0),
             (lambda f, t: f.adaptive_avg_pool2d(t, (4, 5)), 2.0),
             (lambda f, t: f.adaptive_avg_pool2d(t, 1), 8.0)]
    for fn, scale in cases:
        with backend_ctx(backend):
            out = fn(ops, x)
        ref = fn(F, x.detach().cpu().double())
        theirs = fn(F, x.detach().cpu())
        assert out.stride() == theirs.stride()
        assert_close_to_reference(out, ref, torch_same_dtype=theirs, scale=scale)
        go = _make(out.shape, dtype, dev, "nhwc", seed=22)
        gx, = torch.autograd.grad(out, x, go)
        gref, gtheirs = _grad_ref(lambda t: fn(F, t), x, go)
        assert_close_to_reference(gx, gref, torch_same_dtype=gtheirs, scale=scale)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_cpu_isa_paths_agree(monkeypatch, isa):
    """The NHWC CPU loops are compiled per instruction set; each one (clamped to what this CPU has)
    must give the reference results, NaN / tie rules included."""
    monkeypatch.setenv("PYIMGCLS_CPU_ISA", isa)
    x = _make((2, 40, 7, 9), torch.float32, "cpu", "nhwc", seed=23, ties=True, nan=True).requires_grad_()
    for fn in (lambda f, t: f.max_pool2d(t, 3, 2, 1, return_indices=True)[0],
               lambda f, t: f.avg_pool2d(t, 3, 2, 1, True, False),
               lambda f, t: f.adaptive_avg_pool2d(t, (3, 5))):
        with backend_ctx("cpu"):
            out = fn(ops, x)
        assert_close_to_reference(out, fn(F, x.detach().double()), scale=2.0)
        go = torch.randn_like(out)
        gref, _ = _grad_ref(lambda t: fn(F, t), x, go)
        assert_close_to_reference(torch.autograd.grad(out, x, go)[0], gref, scale=2.0)
    with backend_ctx("cpu"):
        idx = ops.max_pool2d(x.detach(), 3, 2, 1, return_indices=True)[1]
    assert torch.equal(idx, F.max_pool2d(x.detach(), 3, 2, 1, return_indices=True)[1])


# ----------------------------------------------------------------------------- memory format, determinism
STRIDE_CASES = {
    "contiguous": lambda: torch.randn(2, 3, 8, 8),
    "channels_last": lambda: torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last),
    "c1_channels_last": lambda: torch.randn(2, 1, 8, 8).contiguous(memory_format=torch.channels_last),
    "n1_channels_last": lambda: torch.randn(1, 4, 8, 8).contiguous(memory_format=torch.channels_last),
    "sliced_w": lambda: torch.randn(2, 3, 8, 16)[..., ::2],
    "permuted_nhcw": lambda: torch.randn(2, 8, 3, 8).permute(0, 2, 1, 3),
    "hw1_channels_last": lambda: torch.randn(2, 3, 1, 1).contiguous(memory_format=torch.channels_last),
    "unbatched_permuted": lambda: torch.randn(8, 8, 3).permute(2, 0, 1),
}


@pytest.mark.parametrize("case", list(STRIDE_CASES))
def test_output_memory_format_follows_pytorch(case):
    x = STRIDE_CASES[case]().requires_grad_()
    k = 1 if x.shape[-1] == 1 else 2
    for ours, theirs in ((lambda t: ops.max_pool2d(t, k), lambda t: F.max_pool2d(t, k)),
                         (lambda t: ops.avg_pool2d(t, k), lambda t: F.avg_pool2d(t, k)),
                         (lambda t: ops.adaptive_avg_pool2d(t, 1), lambda t: F.adaptive_avg_pool2d(t, 1)),
                         (lambda t: ops.adaptive_avg_pool2d(t, 3), lambda t: F.adaptive_avg_pool2d(t, 3))):
        a, b = ours(x), theirs(x)
        assert a.shape == b.shape and a.stride() == b.stride(), case
        torch.testing.assert_close(a, b)
        ga, = torch.autograd.grad(a.sum(), x)
        gb, = torch.autograd.grad(b.sum(), x)
        torch.testing.assert_close(ga, gb)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_is_deterministic(backend):
    dev = device_for(backend)
    x = _make((2, 4, 9, 9), torch.float32, dev, "nhwc", seed=19, ties=True).requires_grad_()
    go = _make((2, 4, 4, 4), torch.float32, dev, "nhwc", seed=20)
    grads = []
    for _ in range(2):
        with backend_ctx(backend):
            out = ops.max_pool2d(x, 3, 2) + ops.avg_pool2d(x, 3, 2) + ops.adaptive_avg_pool2d(x, 4)
        grads.append(torch.autograd.grad(out, x, go)[0])
    assert torch.equal(grads[0], grads[1])


def test_indices_not_written_without_grad_or_return_indices(monkeypatch):
    """Inference skips the int64 index stream; with requires_grad it is produced for backward."""
    from pyimgcls.ops import _eager, pool
    monkeypatch.setattr(_eager, "ENABLED", False)  # observe the flag at the custom op
    seen = []
    real = pool._max_pool2d_op
    monkeypatch.setattr(pool, "_max_pool2d_op", lambda *a: seen.append(a[7]) or real(*a))
    x = torch.randn(1, 2, 6, 6)
    ops.max_pool2d(x, 2)
    ops.max_pool2d(x.requires_grad_(), 2)
    with torch.no_grad():
        ops.max_pool2d(x, 2, return_indices=True)
    assert seen == [False, True, True]


def test_auto_backend_runs_our_cpu_kernels(monkeypatch):
    from pyimgcls.ops import reference

    def boom(*a, **k):
        raise AssertionError("auto must not use the torch reference")

    for name in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "max_pool2d_backward"):
        monkeypatch.setattr(reference, name, boom)
    x = torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(5), requires_grad=True)
    outs = [ops.max_pool2d(x, 3, 2, 1), ops.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
            ops.adaptive_avg_pool2d(x, 4)]
    g = torch.Generator().manual_seed(6)
    go = [torch.randn(o.shape, generator=g) for o in outs]
    grads = torch.autograd.grad(outs, x, go)
    # and what the kernels compute is PyTorch's (float64 reference), forward and backward
    x64 = x.detach().double().requires_grad_()
    refs = [F.max_pool2d(x64, 3, 2, 1), F.avg_pool2d(x64, 3, 2, 1, count_include_pad=False),
            F.adaptive_avg_pool2d(x64, 4)]
    ref_grads = torch.autograd.grad(refs, x64, [t.double() for t in go])
    for out, ref in zip(outs, refs):
        assert_close_to_reference(out, ref)
    assert_close_to_reference(grads[0], ref_grads[0])


def test_torch_backend_is_the_reference():
    x = torch.randn(2, 3, 7, 9, requires_grad=True)
    with pyimgcls.use_backend("torch"):
        outs = [ops.max_pool2d(x, 3, 2, 1, ceil_mode=True), ops.avg_pool2d(x, 3, 2, 1, True, False),
                ops.adaptive_avg_pool2d(x, (3, 4)), ops.adaptive_avg_pool2d(x, 1)]
    refs = [F.max_pool2d(x, 3, 2, 1, ceil_mode=True), F.avg_pool2d(x, 3, 2, 1, True, False),
            F.adaptive_avg_pool2d(x, (3, 4)), F.adaptive_avg_pool2d(x, 1)]
    for a, b in zip(outs, refs):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(torch.autograd.grad(a.sum(), x)[0], torch.autograd.grad(b.sum(), x)[0])


def test_autocast_leaves_pooling_in_input_dtype():
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ops.max_pool2d(x, 2).dtype == F.max_pool2d(x, 2).dtype == torch.float32
        assert ops.avg_pool2d(x.bfloat16(), 2).dtype == torch.bfloat16


# ----------------------------------------------------------------------------- errors
x4 = torch.randn(2, 3, 8, 8)
BAD_CALLS = {
    "max padding > kernel/2": (lambda f: f.max_pool2d(x4, 3, padding=2), "'padding'"),
    "max padding > kernel/2 (dilated)": (lambda f: f.max_pool2d(x4, 2, padding=2, dilation=3), "'padding'"),
    "avg padding > kernel/2": (lambda f: f.avg_pool2d(x4, (3, 3), padding=(1, 2)), "'padding'"),
    "max negative padding": (lambda f: f.max_pool2d(x4, 3, padding=-1), "'padding'"),
    "max zero stride": (lambda f: f.max_pool2d(x4, 3, stride=0), "'stride'"),
    "avg zero stride": (lambda f: f.avg_pool2d(x4, 2, stride=(1, 0)), "'stride'"),
    "max negative stride": (lambda f: f.max_pool2d(x4, 2, stride=-1), "'stride'"),
    "max zero kernel": (lambda f: f.max_pool2d(x4, 0, 1), "'kernel_size'"),
    "avg zero kernel": (lambda f: f.avg_pool2d(x4, (2, 0), 1), "'kernel_size'"),
    "max zero dilation": (lambda f: f.max_pool2d(x4, 2, dilation=0), "'dilation'"),
    "max window larger than padded input": (lambda f: f.max_pool2d(x4, 9), "'kernel_size'"),
    "max dilated window too large": (lambda f: f.max_pool2d(x4, 3, dilation=4), "'kernel_size'"),
    "avg window larger than padded input": (lambda f: f.avg_pool2d(x4, (11, 2), padding=(1, 0)), "'kernel_size'"),
    "max 5-D input": (lambda f: f.max_pool2d(x4[None], 2), "'input'"),
    "avg 5-D input": (lambda f: f.avg_pool2d(x4[None], 2), "'input'"),
    "adaptive 5-D input": (lambda f: f.adaptive_avg_pool2d(x4[None], 2), "'input'"),
    "max 2-D input": (lambda f: f.max_pool2d(x4[0, 0], 2), "'input'"),
    "adaptive 2-D input": (lambda f: f.adaptive_avg_pool2d(x4[0, 0], 2), "'input'"),
    "max empty channels": (lambda f: f.max_pool2d(torch.randn(2, 0, 8, 8), 2), "'input'"),
    "avg empty height": (lambda f: f.avg_pool2d(torch.randn(2, 3, 0, 8), 2), "'input'"),
    "adaptive empty width": (lambda f: f.adaptive_avg_pool2d(torch.randn(2, 3, 4, 0), 2), "'input'"),
    "max 3-tuple kernel": (lambda f: f.max_pool2d(x4, (2, 2, 2)), "'kernel_size'"),
    "max 3-tuple stride": (lambda f: f.max_pool2d(x4, 2, (2, 2, 2)), "'stride'"),
    "avg 3-tuple padding": (lambda f: f.avg_pool2d(x4, 3, 1, (1, 1, 1)), "'padding'"),
    "max float kernel": (lambda f: f.max_pool2d(x4, 2.0), "'kernel_size'"),
    "avg zero divisor": (lambda f: f.avg_pool2d(x4, 2, divisor_override=0), "'divisor_override'"),
    "avg float divisor": (lambda f: f.avg_pool2d(x4, 2, divisor_override=2.0), "'divisor_override'"),
    "avg int count_include_pad": (lambda f: f.avg_pool2d(x4, 2, count_include_pad=1), "'count_include_pad'"),
    "max int ceil_mode": (lambda f: f.max_pool2d(x4, 2, ceil_mode=1), "'ceil_mode'"),
    "adaptive negative size": (lambda f: f.adaptive_avg_pool2d(x4, -1), "'output_size'"),
    "adaptive 3-tuple size": (lambda f: f.adaptive_avg_pool2d(x4, (1, 2, 3)), "'output_size'"),
    "adaptive 1-tuple size": (lambda f: f.adaptive_avg_pool2d(x4, (3,)), "'output_size'"),
    "adaptive float size": (lambda f: f.adaptive_avg_pool2d(x4, 2.0), "'output_size'"),
}


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_inputs_raise_like_pytorch(backend, case):
    call, name = BAD_CALLS[case]
    with pytest.raises((RuntimeError, ValueError, TypeError)):
        call(F)  # the case really is an error in PyTorch
    with backend_ctx(backend), pytest.raises((ValueError, TypeError), match=name) as info:
        call(ops)
    assert isinstance(info.value, RuntimeError)  # also catchable as PyTorch's RuntimeError


def test_non_float_input_and_backend_errors():
    with pytest.raises(TypeError, match="'input'"):
        ops.max_pool2d(x4.long(), 2)
    with pytest.raises(TypeError, match="'input'"):
        ops.avg_pool2d([[1.0]], 2)
    with pyimgcls.use_backend("cuda"), pytest.raises(pyimgcls.errors.BackendError, match="cuda"):
        ops.adaptive_avg_pool2d(x4, 1)


GOOD_EDGE_CALLS = {
    "stride empty tuple": lambda f: f.max_pool2d(x4, 2, ()),
    "one-element tuples": lambda f: f.max_pool2d(x4, (3,), (2,), (1,), (1,)),
    "padding = kernel/2": lambda f: f.avg_pool2d(x4, 4, 1, 2),
    "negative divisor": lambda f: f.avg_pool2d(x4, 2, divisor_override=-2),
    "0-d tensor kernel": lambda f: f.max_pool2d(x4, torch.tensor(2)),
    "adaptive larger than input": lambda f: f.adaptive_avg_pool2d(x4, 11),
    "adaptive torch.Size": lambda f: f.adaptive_avg_pool2d(x4, torch.Size([2, 3])),
    "window = padded input": lambda f: f.max_pool2d(x4, 10, padding=1),
}


@pytest.mark.parametrize("case", list(GOOD_EDGE_CALLS))
def test_edge_inputs_pytorch_accepts_are_accepted(case):
    call = GOOD_EDGE_CALLS[case]
    ours, theirs = call(ops), call(F)
    assert ours.shape == theirs.shape and ours.stride() == theirs.stride()
    torch.testing.assert_close(ours, theirs)


# ----------------------------------------------------------------------------- torch integration
def test_opcheck_every_pool_op():
    x = torch.randn(2, 3, 7, 9, requires_grad=True)
    xcl = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    k, s, p, d = [3, 3], [2, 2], [1, 1], [1, 1]
    torch.library.opcheck(torch.ops.pyimgcls.max_pool2d.default, (x, k, s, p, d, True, False, True, "cpu"))
    torch.library.opcheck(torch.ops.pyimgcls.max_pool2d.default, (xcl, [2, 3], [1, 2], [1, 0], [2, 1], False, True,
                                                                  True, "cpu"))
    torch.library.opcheck(torch.ops.pyimgcls.max_pool2d.default, (x.detach(), k, s, p, d, False, False, False, "cpu"))
    out, idx = F.max_pool2d(x.detach(), 3, 2, 1, return_indices=True)
    torch.library.opcheck(torch.ops.pyimgcls.max_pool2d_backward.default,
                          (torch.randn_like(out), idx, 7, 9, k, s, p, d, False, "cpu"))
    torch.library.opcheck(torch.ops.pyimgcls.avg_pool2d.default, (x, k, s, p, True, False, None, False, "cpu"))
    torch.library.opcheck(torch.ops.pyimgcls.avg_pool2d.default, (xcl, [2, 2], [2, 2], [0, 0], False, True, 3, True,
                                                                  "cpu"))
    torch.library.opcheck(torch.ops.pyimgcls.avg_pool2d_backward.default,
                          (torch.randn(2, 3, 4, 5), 7, 9, k, s, p, True, True, None, False, "cpu"))
    torch.library.opcheck(torch.ops.pyimgcls.adaptive_avg_pool2d.default, (x, 3, 4, False, "cpu"))
    torch.library.opcheck(torch.ops.pyimgcls.adaptive_avg_pool2d.default, (xcl, 1, 1, True, "cpu"))
    torch.library.opcheck(torch.ops.pyimgcls.adaptive_avg_pool2d_backward.default,
                          (torch.randn(2, 3, 3, 4), 7, 9, False, "cpu"))


def test_torch_compile_fullgraph_pooling_stack():
    torch.manual_seed(0)
    model = torch.nn.Sequential(nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(1))
    x = torch.randn(2, 3, 17, 15)
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))


# ----------------------------------------------------------------------------- nn modules
def test_nn_modules_mirror_torch_nn():
    x = torch.randn(2, 3, 9, 8).contiguous(memory_format=torch.channels_last)
    pairs = [(nn.MaxPool2d(3, 2, 1, ceil_mode=True), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
             (nn.MaxPool2d((3, 2), dilation=(1, 2)), torch.nn.MaxPool2d((3, 2), dilation=(1, 2))),
             (nn.AvgPool2d(3, 2, 1, True, False), torch.nn.AvgPool2d(3, 2, 1, True, False)),
             (nn.AvgPool2d(2, divisor_override=3), torch.nn.AvgPool2d(2, divisor_override=3)),
             (nn.AdaptiveAvgPool2d((None, 3)), torch.nn.AdaptiveAvgPool2d((None, 3))),
             (nn.AdaptiveAvgPool2d(1), torch.nn.AdaptiveAvgPool2d(1))]
    for ours, theirs in pairs:
        assert isinstance(ours, type(theirs)) and repr(ours) == repr(theirs)
        assert ours.state_dict() == {} == theirs.state_dict()
        a, b = ours(x), theirs(x)
        assert a.stride() == b.stride()
        torch.testing.assert_close(a, b)
    out, idx = nn.MaxPool2d(2, return_indices=True)(x)
    ref, ref_idx = torch.nn.MaxPool2d(2, return_indices=True)(x)
    assert torch.equal(idx, ref_idx) and torch.equal(out, ref)
    assert "MaxPool2d" in repr(nn.MaxPool2d(2)) and nn.AvgPool2d(3).stride == 3
