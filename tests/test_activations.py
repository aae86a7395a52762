"""The activations silu / hardswish / sigmoid / hardsigmoid (beside relu / relu6): the standalone op
``ops.activation`` and the nn modules, and the fused epilogues of conv2d / linear / batch_norm, forward
and backward, against float64 references with ATen's formulas and NaN / inf / boundary semantics.

Paths (pyimgcls/ops/activation.py): without a recorded gradient every activation is fused in the layer's
epilogue; with one, relu / relu6 / sigmoid stay fused (backward from the saved output) while silu /
hardswish / hardsigmoid run as layer + ops.activation, which saves the pre-activation only.
Outputs are poisoned with NaN before every kernel (conftest)."""
from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import nn, ops
act_mod = importlib.import_module("pyimgcls.ops.activation")   # the module (ops.activation is the function)

from helpers import assert_close_to_reference, backend_ctx, device_for, omp_threads, triton_slow

NEW = ["silu", "hardswish", "sigmoid", "hardsigmoid"]
ALL = ["relu", "relu6"] + NEW
BACKENDS = [pytest.param("cpu", id="cpu"), pytest.param("triton", id="triton"),
            pytest.param("cuda", id="cuda", marks=pytest.mark.cuda), pytest.param("torch", id="torch")]


# ----------------------------------------------------------------------------- float64 references
def ref_fwd(x: torch.Tensor, name: str) -> torch.Tensor:
    """ATen's formulas in float64 (x * relu6(x + 3) / 6 etc.); NaN propagates through every one."""
    x = x.double()
    if name is None:
        return x
    return {"relu": F.relu, "relu6": F.relu6, "silu": lambda v: v / (1 + torch.exp(-v)),
            "hardswish": lambda v: v * F.relu6(v + 3) / 6, "sigmoid": lambda v: 1 / (1 + torch.exp(-v)),
            "hardsigmoid": lambda v: F.relu6(v + 3) / 6}[name](x)


def ref_bwd(g: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
    """grad_x in float64 from the input x, written out as ATen's backward kernels compare:
    relu / relu6 select on the output (a NaN output passes g), sigmoid g * (1 - y) * y,
    silu g * s * (1 + x * (1 - s)), hardswish x <= -3: 0, x < 3: g * (x / 3 + 0.5), else g (a NaN x
    passes g, as ATen's scalar and CUDA kernels), hardsigmoid g / 6 on the open interval (-3, 3) only."""
    g, x = g.double(), x.double()
    zero = torch.zeros((), dtype=torch.float64)
    if name == "relu":
        return torch.where(F.relu(x) <= 0, zero, g)
    if name == "relu6":
        y = F.relu6(x)
        return torch.where((y <= 0) | (y >= 6), zero, g)
    if name == "sigmoid":
        y = 1 / (1 + torch.exp(-x))
        return g * (1 - y) * y
    if name == "silu":
        s = 1 / (1 + torch.exp(-x))
        return g * s * (1 + x * (1 - s))
    if name == "hardswish":
        return torch.where(x <= -3, zero, torch.where(x < 3, g * (x / 3 + 0.5), g))
    if name == "hardsigmoid":
        return torch.where((x > -3) & (x < 3), g / 6, zero)
    return g


SPECIAL = [float("nan"), float("inf"), -float("inf"), -3.0, 3.0, -3.0000002, 2.9999998, 0.0, -0.0, 6.0, -6.0,
           1e-30, -87.0, -88.5, -90.0, -104.5, 88.0, 88.8, 89.5, 17.0, -17.0, 0.5, -0.5]


def _special(dtype, device, n=64):
    """Every special value, then a random tail long enough for the vector loops' bodies and tails."""
    head = torch.tensor(SPECIAL, dtype=torch.float64)
    tail = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 5
    return torch.cat([head, tail]).to(dtype).to(device)


def _scale(ref, least=1.0):
    return max(least, ref.abs().max().item()) if ref.numel() else least


def _check(ours, ref64, dtype, theirs=None):
    if dtype in (torch.float16, torch.bfloat16):
        assert_close_to_reference(ours, ref64, torch_same_dtype=theirs)
    else:
        assert_close_to_reference(ours, ref64)


# ----------------------------------------------------------------------------- standalone op
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ALL)
def test_standalone_special_values_fwd_bwd(backend, name):
    dev = device_for(backend)
    for dtype in ([torch.float32] if backend == "cuda" else [torch.float32, torch.float64]):
        x = _special(dtype, dev).requires_grad_()
        g = torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(1)).to(dev)
        g[3] = float("inf")   # an inf gradient at -3: a select drops it, a multiply by 0 would give NaN
        with backend_ctx(backend):
            y = ops.activation(x, name)
            (gx,) = torch.autograd.grad(y, x, g)
        _check(y, ref_fwd(x.detach().cpu(), name), dtype)
        if backend == "torch" and name == "hardswish":
            # ATen's own vectorised CPU hardswish_backward gives NaN at a NaN input (its scalar and CUDA
            # kernels pass the gradient, as ours do): compare away from the NaN input there
            keep = ~x.detach().isnan()
            _check(gx[keep], ref_bwd(g, x.detach(), name)[keep].cpu(), dtype)
            continue
        if name == "relu6" and backend == "torch":
            continue   # ATen's relu6 backward reads the input, ours the output (same off the special points)
        if name == "hardsigmoid" and backend == "torch" and dtype == torch.float64:
            continue   # ATen multiplies by the float constant 1.0f / 6 even in float64 (3e-8 relative)
        _check(gx, ref_bwd(g.cpu(), x.detach().cpu(), name), dtype)


@pytest.mark.parametrize("name", NEW)
def test_float32_exp_accuracy_over_a_dense_sweep(name):
    """The vectorised float32 exp (csrc/cpu/common.h, Cephes) behind sigmoid / silu: within 4 ulp of
    float64 wherever ATen's formula has a finite exp(-x) (x > -88.72), subnormal results included
    (an ulp there is 2^-149); below, exp(-x) overflows and the results are ATen's: sigmoid 0, silu -0."""
    x = torch.linspace(-88.7, 100, 200_000, dtype=torch.float32)
    with backend_ctx("cpu"), torch.no_grad():
        y = ops.activation(x, name)                     # the elementwise kernel (scalar exp, vectorised loop)
        # the GEMM micro-kernel's vector epilogue (full tiles: N = 64 is a multiple of its width on every
        # instruction set; the edge rows go through merge_tile): x @ I is exact, so the epilogue alone is
        # measured
        y_gemm = ops.linear(x.view(-1, 64), torch.eye(64), activation=name).reshape(-1)
        below = ops.activation(torch.linspace(-200, -88.8, 1001), name)
    ref = ref_fwd(x, name)
    ulp = (torch.finfo(torch.float32).eps * ref.abs()).clamp_min(2.0 ** -149)
    for got in (y, y_gemm):
        err = (got.double() - ref).abs() / ulp
        assert err.max().item() <= 4.0, (err.max().item(), x[err.argmax()].item())
    if name in ("silu", "sigmoid"):
        assert torch.equal(below, torch.zeros_like(below) if name == "sigmoid" else -torch.zeros_like(below))
        assert torch.equal(below.signbit(), torch.full_like(below, name == "silu", dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NEW)
def test_standalone_low_precision(name, dtype):
    x = (torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(2)) * 4).to(dtype).requires_grad_()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    with backend_ctx("cpu"):
        y = ops.activation(x, name)
        (gx,) = torch.autograd.grad(y, x, g)
    xt = x.detach().clone().requires_grad_()
    yt = {"silu": F.silu, "hardswish": F.hardswish, "sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid}[name](xt)
    (gt,) = torch.autograd.grad(yt, xt, g)
    assert y.dtype == dtype and gx.dtype == dtype
    _check(y, ref_fwd(x.detach(), name), dtype, yt)
    _check(gx, ref_bwd(g, x.detach(), name), dtype, gt)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_standalone_layouts_and_chunks(layout, threads):
    """channels_last stays channels_last; a strided view is read through a copy; 3 x 14112 elements pass
    the CPU kernels' 16384-element chunk, so the OpenMP team splits them."""
    base = torch.randn(3, 12, 36, 2 * 49, generator=torch.Generator().manual_seed(4)) * 4
    x = {"contiguous": base[:, :, :, :49].contiguous(), "channels_last":
         base[:, :, :, :49].contiguous(memory_format=torch.channels_last), "strided": base[:, :, :, ::2]}[layout]
    with omp_threads(threads), backend_ctx("cpu"):
        for name in NEW:
            xg = x.clone().requires_grad_() if layout != "strided" else x.requires_grad_()
            y = ops.activation(xg, name)
            if layout == "channels_last":
                assert y.is_contiguous(memory_format=torch.channels_last)
            g = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
            (gx,) = torch.autograd.grad(y, xg, g)
            _check(y, ref_fwd(x.detach(), name), torch.float32)
            _check(gx, ref_bwd(g, x.detach(), name), torch.float32)


@pytest.mark.parametrize("name", NEW)
def test_standalone_gradcheck_and_gradgradcheck(name):
    # keep the points off hardswish / hardsigmoid's kinks at +-3, where finite differences are wrong
    x = torch.tensor([-4.0, -2.5, -1.0, -0.2, 0.3, 1.7, 2.6, 4.5], dtype=torch.float64).requires_grad_()
    with backend_ctx("cpu"):
        assert torch.autograd.gradcheck(lambda t: ops.activation(t, name), (x,))
        assert torch.autograd.gradgradcheck(lambda t: ops.activation(t, name), (x,))


def test_standalone_opcheck():
    x = torch.randn(2, 3, 4, 5)
    for code in (3, 4, 5, 6):
        torch.library.opcheck(act_mod._activation_op, (x, code, "cpu"))
        torch.library.opcheck(act_mod._activation_backward_op, (torch.randn_like(x), x, code, "cpu"))


def test_standalone_bad_arguments():
    with pytest.raises(ValueError, match="'activation'"):
        ops.activation(torch.randn(3), "gelu")
    with pytest.raises(ValueError, match="'activation'"):
        ops.activation(torch.randn(3), None)
    with pytest.raises(TypeError, match="'input'"):
        ops.activation([1.0], "silu")
    with pytest.raises(TypeError, match="'input'"):
        ops.activation(torch.arange(3), "silu")
    for bad in ("gelu", "SiLU"):
        with pytest.raises(ValueError, match="'activation'"):
            ops.conv2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 1, 1), activation=bad)
        with pytest.raises(ValueError, match="'activation'"):
            ops.linear(torch.randn(2, 3), torch.randn(4, 3), activation=bad)
        with pytest.raises(ValueError, match="'activation'"):
            ops.batch_norm(torch.randn(2, 3), None, None, training=True, activation=bad)


# ----------------------------------------------------------------------------- fused epilogues
CONV_SHAPES = [
    # (N, C, H, W, O, k, stride, pad, groups): direct small (LeNet-like float32), small batched GEMM,
    # depthwise, the chunked GEMM path (threaded), batch 1
    (2, 6, 14, 14, 16, 5, 1, 0, 1),
    (4, 3, 9, 7, 5, 3, 1, 1, 1),
    (2, 8, 11, 9, 8, 3, 2, 1, 8),
    (3, 32, 15, 13, 40, 3, 1, 1, 1),
    (1, 5, 7, 6, 3, 3, 1, 1, 1),
]


def _conv_inputs(shape, dtype, dev, channels_last, seed):
    N, C, H, W, O, k, s, p, groups = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64).to(dtype)
    w = (torch.randn(O, C // groups, k, k, generator=gen, dtype=torch.float64) / (C // groups * k * k) ** 0.5 * 3)
    b = torch.randn(O, generator=gen, dtype=torch.float64).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(dev), w.to(dtype).to(dev), b.to(dev), dict(stride=s, padding=p, groups=groups)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_conv_fused_every_activation(backend, channels_last):
    """Inference (no gradient): the activation runs in the conv epilogue of every CPU path; with a
    gradient the training path gives the same values and the float64 reference's gradients."""
    dev = device_for(backend)
    # the yardstick: the shapes of two CPU paths; the Triton interpreter: one small dense and one
    # depthwise conv, training through silu (layer + activation op) and sigmoid (fused) only
    shapes, trained = CONV_SHAPES, NEW
    if backend == "torch":
        shapes = CONV_SHAPES[:1] + CONV_SHAPES[2:3]
    elif backend == "triton" and triton_slow():
        shapes, trained = [(1, 4, 5, 4, 3, 3, 1, 1, 1), (1, 4, 5, 4, 4, 3, 1, 1, 4)], ["silu", "sigmoid"]
    for i, shape in enumerate(shapes):
        x, w, b, kw = _conv_inputs(shape, torch.float32, dev, channels_last, seed=i)
        with backend_ctx(backend):
            ref0 = F.conv2d(x.double().cpu(), w.double().cpu(), b.double().cpu(), **kw)
            res = torch.randn(ref0.shape, generator=torch.Generator().manual_seed(9)).to(dev)
            for name in NEW:
                with torch.no_grad():
                    y = ops.conv2d(x, w, b, activation=name, residual=res, **kw)
                _check(y, ref_fwd(ref0 + res.double().cpu(), name), torch.float32)
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        for name in trained:
            with backend_ctx(backend):
                y = ops.conv2d(*leaves, activation=name, **kw)
            g = torch.randn(y.shape, generator=torch.Generator().manual_seed(10)).to(dev)
            grads = torch.autograd.grad(y, leaves, g)
            refs = [t.detach().double().cpu().requires_grad_() for t in leaves]
            y64 = ref_fwd(F.conv2d(*refs, **kw), name)
            ref_grads = torch.autograd.grad(y64, refs, g.double().cpu())
            _check(y, y64, torch.float32)
            for ours, ref in zip(grads, ref_grads):
                assert_close_to_reference(ours, ref, scale=_scale(ref))


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_conv_gradcheck_float64_cpu(name, layout):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 4, 4, 5, dtype=torch.float64, generator=gen)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=gen)
    b = torch.randn(4, dtype=torch.float64, generator=gen)
    r = torch.randn(1, 4, 2, 5, dtype=torch.float64, generator=gen)
    args = tuple(t.requires_grad_() for t in (x, w, b, r))
    with backend_ctx("cpu"):
        assert torch.autograd.gradcheck(
            lambda x, w, b, r: ops.conv2d(x, w, b, stride=(2, 1), padding=1, groups=2, activation=name, residual=r),
            args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_fused_every_activation(backend):
    """Shapes reaching the CPU GEMM's micro-kernel epilogue (vector), merge_tile (edge tiles), the
    gemv paths (M == 1, N == 1) and K == 0 (act(bias))."""
    dev = device_for(backend)
    # (the torch yardstick's float64 hardswish / hardsigmoid use float constants: float32 only there)
    dtypes = [torch.float32] if backend in ("cuda", "torch") else [torch.float32, torch.float64]
    shapes = [(37, 29, 53), (1, 17, 9), (7, 13, 1), (5, 0, 6), (64, 64, 96)]
    if backend == "triton" and triton_slow():
        dtypes, shapes = [torch.float32], shapes[:3]
    for dtype in dtypes:
        for (M, K, N) in shapes:
            gen = torch.Generator().manual_seed(M + N)
            x = (torch.randn(M, K, generator=gen, dtype=torch.float64) * 2).to(dtype).to(dev)
            w = (torch.randn(N, K, generator=gen, dtype=torch.float64) / max(K, 1) ** 0.5).to(dtype).to(dev)
            b = torch.randn(N, generator=gen, dtype=torch.float64).to(dtype).to(dev)
            for name in NEW:
                with backend_ctx(backend):
                    with torch.no_grad():
                        y = ops.linear(x, w, b, activation=name)
                    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
                    yg = ops.linear(*leaves, activation=name)
                    g = torch.randn(yg.shape, generator=gen, dtype=dtype).to(dev)
                    grads = torch.autograd.grad(yg, leaves, g)
                refs = [t.detach().double().cpu().requires_grad_() for t in leaves]
                y64 = ref_fwd(F.linear(*refs), name)
                ref_grads = torch.autograd.grad(y64, refs, g.double().cpu())
                _check(y, y64, dtype)
                _check(yg, y64, dtype)
                for ours, ref in zip(grads, ref_grads):
                    assert_close_to_reference(ours, ref, scale=_scale(ref))


@pytest.mark.parametrize("name", NEW)
def test_linear_gradcheck_and_gradgradcheck_float64_cpu(name):
    gen = torch.Generator().manual_seed(8)
    x, w, b = (torch.randn(*s, dtype=torch.float64, generator=gen).requires_grad_() for s in ((3, 5), (4, 5), (4,)))
    with backend_ctx("cpu"):
        assert torch.autograd.gradcheck(lambda x, w, b: ops.linear(x, w, b, activation=name), (x, w, b))
        assert torch.autograd.gradgradcheck(lambda x, w, b: ops.linear(x, w, b, activation=name), (x, w, b))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_batch_norm_fused_every_activation(backend, training):
    dev = device_for(backend)
    cases = [((3, 5, 7, 6), False), ((3, 5, 7, 6), True), ((1, 4, 9, 3), False), ((6, 7), False)]
    if backend == "triton" and triton_slow():
        cases = cases[1:2] + cases[3:]
    for shape, cl in cases:
        gen = torch.Generator().manual_seed(sum(shape))
        x = (torch.randn(*shape, generator=gen) * 2 + 0.5).to(dev)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        C = shape[1]
        w, b = torch.randn(C, generator=gen).to(dev), torch.randn(C, generator=gen).to(dev)
        rm, rv = torch.randn(C, generator=gen).to(dev), (torch.rand(C, generator=gen) + 0.5).to(dev)
        res = torch.randn(shape, generator=gen).to(dev)
        for name in NEW:
            leaves = [t.clone().requires_grad_() for t in (x, w, b, res)]
            with backend_ctx(backend):
                y = ops.batch_norm(leaves[0], rm.clone(), rv.clone(), leaves[1], leaves[2], training=training,
                                   activation=name, residual=leaves[3])
            if cl:
                assert y.is_contiguous(memory_format=torch.channels_last)
            g = torch.randn(y.shape, generator=gen).to(dev)
            grads = torch.autograd.grad(y, leaves, g)
            refs = [t.detach().double().cpu().requires_grad_() for t in leaves]
            y64 = ref_fwd(F.batch_norm(refs[0], rm.double().cpu(), rv.double().cpu(), refs[1], refs[2],
                                       training=training) + refs[3], name)
            ref_grads = torch.autograd.grad(y64, refs, g.double().cpu())
            _check(y, y64, torch.float32)
            for ours, ref in zip(grads, ref_grads):
                assert_close_to_reference(ours, ref, scale=_scale(ref, 4.0))


@pytest.mark.parametrize("name", NEW)
def test_batch_norm_gradcheck_float64_cpu(name):
    gen = torch.Generator().manual_seed(11)
    x, w, b, r = (torch.randn(*s, dtype=torch.float64, generator=gen).requires_grad_()
                  for s in ((2, 3, 3, 2), (3,), (3,), (2, 3, 3, 2)))
    with backend_ctx("cpu"):
        assert torch.autograd.gradcheck(
            lambda x, w, b, r: ops.batch_norm(x, None, None, w, b, training=True, activation=name, residual=r),
            (x, w, b, r))


# ----------------------------------------------------------------------------- what is saved
def _saved_tensors(t: torch.Tensor):
    """Data pointers of every tensor the autograd graph behind t holds for its backward."""
    seen, ptrs, todo = set(), set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        for attr in dir(fn):
            if attr.startswith("_saved_") or attr == "saved_tensors":
                try:
                    v = getattr(fn, attr)
                except RuntimeError:
                    continue
                for s in (v if isinstance(v, tuple) else (v,)):
                    if isinstance(s, torch.Tensor):
                        ptrs.add(s.data_ptr())
        todo.extend(f for f, _ in fn.next_functions)
    return ptrs


@pytest.mark.parametrize("name", ALL)
def test_training_saves_one_activation_sized_tensor(name):
    """silu / hardswish / hardsigmoid keep the pre-activation and not the output; relu / relu6 /
    sigmoid keep the output (fused); never both."""
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    with backend_ctx("cpu"):
        y = ops.conv2d(x, w, None, padding=1, activation=name)
    saved = _saved_tensors(y)
    assert saved & {x.data_ptr()} and saved & {w.data_ptr()}
    if name in ("silu", "hardswish", "hardsigmoid"):
        assert y.data_ptr() not in saved
        pre = y.grad_fn.next_functions[0][0]
        assert pre is not None and len(saved - {x.data_ptr(), w.data_ptr()}) == 1
    else:
        assert y.data_ptr() in saved and len(saved - {x.data_ptr(), w.data_ptr()}) == 1


def test_graph_mode_second_order_through_sigmoid_and_silu():
    """create_graph=True: the first-order gradient of a fused sigmoid and of silu is differentiable
    again (sigmoid through the saved output, silu through the saved pre-activation)."""
    gen = torch.Generator().manual_seed(12)
    x, w = torch.randn(5, 4, dtype=torch.float64, generator=gen), torch.randn(3, 4, dtype=torch.float64, generator=gen)
    for name in ("sigmoid", "silu"):
        args = (x.clone().requires_grad_(), w.clone().requires_grad_())
        with backend_ctx("cpu"):
            assert torch.autograd.gradgradcheck(lambda a, b: ops.linear(a, b, activation=name), args)
            assert torch.autograd.gradgradcheck(lambda a, b: ops.conv2d(a.view(5, 4, 1, 1), b.view(3, 4, 1, 1),
                                                                        activation=name), args)


# ----------------------------------------------------------------------------- modules, convert, fuse
@pytest.mark.parametrize("name,cls,tcls", [("silu", nn.SiLU, torch.nn.SiLU), ("hardswish", nn.Hardswish,
                                            torch.nn.Hardswish), ("sigmoid", nn.Sigmoid, torch.nn.Sigmoid),
                                           ("hardsigmoid", nn.Hardsigmoid, torch.nn.Hardsigmoid)])
def test_modules_run_on_our_kernels(name, cls, tcls, monkeypatch):
    m = cls()
    assert isinstance(m, tcls)
    calls = []
    real = act_mod._run_fwd
    monkeypatch.setattr(act_mod, "_run_fwd", lambda *a: calls.append(a[1:]) or real(*a))
    x = torch.randn(2, 3, 4, 5)
    with torch.no_grad(), backend_ctx("cpu"):
        y = m(x)
    assert calls == [(pyimgcls._native.ACT_CODES[name], "cpu")]
    _check(y, ref_fwd(x, name), torch.float32)
    for layer in (nn.Conv2d(3, 4, 3, activation=name), nn.Linear(3, 4, activation=name), nn.BatchNorm2d(3,
                                                                                                       activation=name)):
        assert f"activation={name!r}" in repr(layer) or layer.activation == name


def test_convert_and_fuse_fold_the_new_activations():
    torch.manual_seed(13)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.SiLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.BatchNorm2d(8), torch.nn.Hardswish(),
        torch.nn.Conv2d(8, 6, 1), torch.nn.BatchNorm2d(6), torch.nn.Sigmoid(),
        torch.nn.Conv2d(6, 6, 1), torch.nn.BatchNorm2d(6), torch.nn.Hardsigmoid()).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        want = model(x)
    converted = pyimgcls.convert(model)
    assert [type(m) for m in converted if not isinstance(m, (nn.Conv2d, nn.BatchNorm2d))] == \
        [nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.Hardsigmoid]
    fused = pyimgcls.fuse_for_inference(converted)
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert [c.activation for c in convs] == ["silu", "hardswish", "sigmoid", "hardsigmoid"]
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.SiLU, torch.nn.Hardswish, torch.nn.Sigmoid,
                                  torch.nn.Hardsigmoid)) for m in fused.modules())
    with torch.no_grad(), backend_ctx("cpu"):
        got = fused(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_fuse_folds_functional_activations():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)
            self.c2, self.b2 = torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4)
            self.c3, self.b3 = torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            x = F.silu(self.b1(self.c1(x)))
            x = torch.sigmoid(self.b2(self.c2(x)))
            return F.hardswish(self.b3(self.c3(x)))

    net = Net().eval()
    x = torch.randn(1, 3, 7, 7)
    with torch.no_grad():
        want = net(x)
    fused = pyimgcls.fuse_for_inference(pyimgcls.convert(net))
    assert [m.activation for m in fused.modules() if isinstance(m, nn.Conv2d)] == ["silu", "sigmoid", "hardswish"]
    with torch.no_grad(), backend_ctx("cpu"):
        torch.testing.assert_close(fused(x), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("act", ["silu", "hardswish", "sigmoid", "hardsigmoid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_smooth_activation_loops_on_every_isa(monkeypatch, act, dtype):
    """Standalone activations and batch norm with a smooth activation run their element loops in the
    AVX-512 / AVX2 builds (the baseline build could not vectorise them): every build's forward and
    backward against float64 (PyTorch's formulas). Odd channel count, partial vectors, NCHW and NHWC."""
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(3, 19, 7, 9, generator=g, dtype=torch.float64) * 4).to(dtype)
    rm = torch.randn(19, generator=g, dtype=torch.float64).to(dtype)
    rv = (torch.rand(19, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    w = (torch.rand(19, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    b = torch.randn(19, generator=g, dtype=torch.float64).to(dtype)
    go = torch.randn(3, 19, 7, 9, generator=g, dtype=torch.float64)
    ref = {"silu": F.silu, "hardswish": F.hardswish, "sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid}[act]
    x64 = x.double().requires_grad_()
    y64 = ref(x64)
    z64 = ref(F.batch_norm(x64, rm.double(), rv.double(), w.double(), b.double(), training=False))
    (y64 * go + z64 * go).sum().backward()
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-7, atol=1e-7)
    with pyimgcls.use_backend("cpu"):
        for isa in ("generic", "avx2", "avx512"):
            monkeypatch.setenv("PYIMGCLS_CPU_ISA", isa)
            for layout in (torch.contiguous_format, torch.channels_last):
                xi = x.detach().clone(memory_format=layout).requires_grad_()
                y = ops.activation(xi, act)
                z = ops.batch_norm(xi, rm, rv, w, b, training=False, activation=act)
                (y * go.to(dtype) + z * go.to(dtype)).sum().backward()
                torch.testing.assert_close(y.detach().double(), y64.detach(), **tol, msg=f"{isa} activation")
                torch.testing.assert_close(z.detach().double(), z64.detach(), **tol, msg=f"{isa} batch_norm")
                torch.testing.assert_close(xi.grad.double(), x64.grad, **tol, msg=f"{isa} grad")
