"""Softmax-cross-entropy family: ops.softmax_cross_entropy / ops.cross_entropy and
nn.CrossEntropyLoss on every backend against a float64 F.cross_entropy reference: loss and gradient
for every combination of weight, ignore_index, reduction and label_smoothing, special values,
empty / all-ignored batches, gradcheck, opcheck, torch.compile and argument errors."""
import itertools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import nn, ops
from pyimgcls.ops import _eager
from pyimgcls.ops.softmax_xent import TargetOutOfRangeError

from helpers import BACKENDS, assert_close_to_reference, backend_ctx, device_for, dtypes_for, triton_slow

# The interpreter evaluates masked -inf lanes (e.g. -inf - -inf in padded rows) in numpy, which warns.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
REDUCTIONS = ["none", "mean", "sum"]
# Every combination of (weighted, ignored rows present, reduction, label_smoothing).
OPTIONS = list(itertools.product([False, True], [False, True], REDUCTIONS, [0.0, 0.1]))
# A subset that still covers each value of each option at least twice (for slow configurations).
OPTIONS_SMALL = [(False, False, "mean", 0.0), (True, True, "mean", 0.1), (True, False, "none", 0.0),
                 (False, True, "sum", 0.1), (True, True, "sum", 0.0), (False, True, "none", 0.1)]
N_VALUES = [1, 7, 1000]
C_VALUES = [1, 2, 10, 1000, 32768]


def _opt_id(o):
    w, ign, red, ls = o
    return f"{'w' if w else 'now'}-{'ign' if ign else 'noign'}-{red}-ls{ls}"


def _skip_dtype(backend, dtype):
    if dtype not in dtypes_for(backend):
        pytest.skip(f"{backend} does not serve {dtype}")


def _make(N, C, dtype, device, seed=0, scale=3.0, ignore=False, ignore_index=-100):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(N, C, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
    t = torch.randint(0, C, (N,), generator=g)
    if ignore and N > 1:
        t[torch.randperm(N, generator=g)[: max(1, N // 4)]] = ignore_index
    w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.25).to(dtype).to(device)
    go = torch.randn(N, generator=g, dtype=torch.float64).to(dtype).to(device)
    return x, t.to(device), w, go


def _reference(x, t, w, reduction, ls, go, ignore_index=-100, dtype=torch.float64):
    """(loss, grad) of F.cross_entropy computed at ``dtype`` on CPU."""
    xr = x.detach().cpu().to(dtype).requires_grad_()
    wr = None if w is None else w.detach().cpu().to(dtype)
    loss = F.cross_entropy(xr, t.cpu().long(), wr, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=ls)
    gout = go.detach().cpu().to(dtype) if reduction == "none" else torch.ones((), dtype=dtype)
    (grad,) = torch.autograd.grad(loss, xr, gout)
    return loss.detach(), grad


def _check_case(backend, dtype, x, t, w, go, option, ignore_index=-100):
    weighted, _, reduction, ls = option
    wt = w if weighted else None
    xg = x.detach().clone().requires_grad_()
    with backend_ctx(backend):
        loss = ops.softmax_cross_entropy(xg, t, wt, ignore_index=ignore_index, reduction=reduction,
                                         label_smoothing=ls)
    assert loss.dtype == dtype and loss.device == x.device
    assert loss.shape == ((x.shape[0],) if reduction == "none" else ())
    loss.backward(go if reduction == "none" else None)
    ref_loss, ref_grad = _reference(x, t, wt, reduction, ls, go, ignore_index)
    lp_loss = lp_grad = None
    if dtype in (torch.float16, torch.bfloat16):
        lp_loss, lp_grad = _reference(x, t, wt, reduction, ls, go, ignore_index, dtype=dtype)
    assert_close_to_reference(loss, ref_loss, torch_same_dtype=lp_loss, scale=max(1.0, ref_loss.abs().max().item()))
    assert_close_to_reference(xg.grad, ref_grad, torch_same_dtype=lp_grad)
    assert xg.grad.dtype == dtype and xg.grad.shape == x.shape


def _shape_allowed(backend, N, C):
    if backend == "triton" and triton_slow():
        # Interpreter: large C runs on cpu / cuda only; N <= 7 unless the rows are tiny.
        if C == 32768 or (C >= 1000 and N > 7):
            return False
    return True


# ----------------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("N", N_VALUES)
@pytest.mark.parametrize("C", C_VALUES)
def test_matches_reference_every_option(backend, dtype, N, C):
    _skip_dtype(backend, dtype)
    if not _shape_allowed(backend, N, C):
        pytest.skip("shape too large for the Triton interpreter (covered on cpu / cuda)")
    if backend == "cpu" and N * C > 10 ** 7 and dtype in (torch.float16, torch.bfloat16):
        pytest.skip("CPU time: float16/bfloat16 upcast path covered at N <= 1000, C <= 1000 and N = 7, C = 32768")
    dev = device_for(backend)
    slow = backend == "triton" and triton_slow()
    options = OPTIONS
    if slow and (dtype in (torch.float16, torch.bfloat16) or N == 1000):
        options = OPTIONS_SMALL
    if N * C >= 10 ** 6:
        # The float64 reference dominates here: every option is covered by the smaller shapes.
        options = OPTIONS_SMALL if N * C < 10 ** 7 else OPTIONS_SMALL[1:2]
    elif C == 32768 and dtype in (torch.float16, torch.bfloat16):
        options = OPTIONS_SMALL
    for i, option in enumerate(options):
        x, t, w, go = _make(N, C, dtype, dev, seed=i, ignore=option[1])
        _check_case(backend, dtype, x, t, w, go, option)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("option", OPTIONS, ids=_opt_id)
def test_tiled_rows_every_option(backend, option):
    """Rows longer than one register tile (Triton: > 8192, CUDA: > 16384 columns) take the online,
    looped path; N <= 7 keeps the interpreter affordable."""
    dev = device_for(backend)
    C = 9000 if backend == "triton" and triton_slow() else 20000
    x, t, w, go = _make(3, C, torch.float32, dev, seed=5, ignore=option[1])
    _check_case(backend, torch.float32, x, t, w, go, option)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ignore_index_inside_class_range(backend, reduction):
    dev = device_for(backend)
    x, t, w, go = _make(7, 5, torch.float32, dev, seed=11)
    t = torch.tensor([0, 1, 2, 1, 4, 3, 1], device=dev)
    for option in [(True, True, reduction, 0.2), (False, True, reduction, 0.0)]:
        _check_case(backend, torch.float32, x, t, w, go, option, ignore_index=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target_dtype", [torch.int32, torch.uint8], ids=str)
def test_int32_and_uint8_targets(backend, target_dtype):
    dev = device_for(backend)
    x, t, w, go = _make(7, 10, torch.float32, dev, seed=12)
    with backend_ctx(backend):
        # "sum": PyTorch rejects uint8 targets with weight + label_smoothing + "mean" (and so do we)
        ours = ops.cross_entropy(x, t.to(target_dtype), w, label_smoothing=0.1, reduction="sum")
    ref, _ = _reference(x, t, w, "sum", 0.1, go)
    assert_close_to_reference(ours, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_and_kdim_inputs(backend):
    dev = device_for(backend)
    g = torch.Generator().manual_seed(13)
    base = torch.randn(10, 14, generator=g, dtype=torch.float64).to(dev)
    t = torch.randint(0, 7, (10,), generator=g).to(dev)
    for x in (base[:, ::2].float(), base.float()[:, 3:10], base.float().t().contiguous().t()[:, :7]):
        xg = x.detach().clone() if x.is_contiguous() else x.detach()
        xg.requires_grad_()
        with backend_ctx(backend):
            loss = ops.cross_entropy(xg, t, reduction="sum", label_smoothing=0.05)
        loss.backward()
        ref_loss, ref_grad = _reference(x, t, None, "sum", 0.05, None)
        assert_close_to_reference(loss, ref_loss, scale=10.0)
        assert_close_to_reference(xg.grad, ref_grad)
    # [N, C, d] logits with [N, d] targets, as F.cross_entropy
    x = torch.randn(3, 5, 4, generator=g).to(dev).requires_grad_()
    t = torch.randint(0, 5, (3, 4), generator=g).to(dev)
    for reduction in REDUCTIONS:
        with backend_ctx(backend):
            ours = ops.cross_entropy(x, t, reduction=reduction)
        x64 = x.detach().cpu().double().requires_grad_()
        ref = F.cross_entropy(x64, t.cpu(), reduction=reduction)
        assert ours.shape == ref.shape
        assert_close_to_reference(ours, ref)
        (gx,) = torch.autograd.grad(ours.sum(), x)
        (gr,) = torch.autograd.grad(ref.sum(), x64)
        assert_close_to_reference(gx, gr)


# ----------------------------------------------------------------------------- special values
def _special_logits(dev, dtype):
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    x[0] = torch.tensor([1e4, -1e4, 0.0, 9999.5, -3.0, 1e4])        # huge logits
    x[1] = torch.tensor([-1e4, -1e4, -1e4, -1e4, -1e4, -9999.0])     # huge negative
    x[2, 1] = float("-inf")                                          # -inf, not the target
    x[3, 4] = float("nan")                                           # NaN row
    x[4] = float("-inf")                                             # all -inf
    x[5, 0] = float("inf")                                           # +inf
    x[6, 2] = float("-inf")                                          # -inf at the target
    x[7, :3] = float("-inf")                                         # -inf prefix, finite after
    t = torch.tensor([0, 5, 3, 1, 2, 0, 2, 4])
    return x.to(dtype).to(dev), t.to(dev)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("option", OPTIONS, ids=_opt_id)
def test_special_values_like_pytorch(backend, dtype, option):
    _skip_dtype(backend, dtype)
    if backend == "triton" and triton_slow() and dtype == torch.float64 and option[1]:
        pytest.skip("interpreter time: float64 covered without ignored rows")
    dev = device_for(backend)
    x, t = _special_logits(dev, dtype)
    weighted, ignore, reduction, ls = option
    if ignore:
        t = t.clone()
        t[torch.tensor([1, 3], device=dev)] = -100   # the NaN row ignored: loss 0, gradient NaN
    w = (torch.arange(6, dtype=torch.float64) / 5 + 0.5).to(dtype).to(dev)
    go = torch.linspace(-1, 2, 8, dtype=torch.float64).to(dtype).to(dev)
    _check_case(backend, dtype, x, t, w, go, option)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_row_propagates_only_to_its_row(backend):
    dev = device_for(backend)
    x, t, _, _ = _make(4, 33, torch.float32, dev, seed=15)
    x[2, 17] = float("nan")
    with backend_ctx(backend):
        loss = ops.cross_entropy(x, t, reduction="none")
    isnan = torch.isnan(loss.cpu())
    assert isnan.tolist() == [False, False, True, False]


@pytest.mark.parametrize("C", [1, 2, 15, 16, 17, 33, 100, 127, 128, 129])
def test_cpu_short_rows_every_special_position(C):
    """The CPU short-row kernel (C <= 128, float32, rows in interleaved pairs) drops the per-lane NaN
    test and relies on NaN reaching the sum: put a NaN, a +inf and a -inf at every class position of
    some row (odd N, so pairs and a leftover row), with finite rows around them, and compare row by
    row with float64 PyTorch, ignored rows included."""
    g = torch.Generator().manual_seed(C)
    base = torch.randn(3, C, generator=g, dtype=torch.float64) * 4
    rows, kinds = [], []
    for j in range(C):
        for kind, v in (("nan", float("nan")), ("+inf", float("inf")), ("-inf", float("-inf"))):
            r = base[j % 3].clone()
            r[j] = v
            rows += [r, base[(j + 1) % 3]]   # a special row paired with a finite one
            kinds += [kind, "finite"]
    x64 = torch.stack(rows + [base[0]])       # odd N: the last row runs alone
    N = x64.shape[0]
    t = torch.randint(0, C, (N,), generator=g)
    t[::7] = -100
    for reduction in ("none", "sum"):
        xf = x64.float().requires_grad_()
        with backend_ctx("cpu"):
            loss = ops.cross_entropy(xf, t, reduction=reduction)
        loss.sum().backward()
        xr = x64.clone().requires_grad_()
        ref = F.cross_entropy(xr, t, reduction=reduction)
        ref.sum().backward()
        if reduction == "none":
            assert torch.equal(torch.isnan(loss), torch.isnan(ref))
            assert torch.equal(torch.isinf(loss), torch.isinf(ref))
            fin = torch.isfinite(ref)
            assert ((loss.double() - ref).abs() <= 2e-6 * (1 + ref.abs()))[fin].all()
        assert torch.equal(torch.isnan(xf.grad), torch.isnan(xr.grad)), reduction
        fin = torch.isfinite(xr.grad)
        assert ((xf.grad.double() - xr.grad).abs()[fin] <= 1e-6).all(), reduction


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_backward_retain_graph_and_second_backward(reduction):
    """The eager CPU backward scales the saved gradient in place unless the graph is kept: a retained
    graph must give the same gradient on every backward, a freed one must refuse a second backward,
    and gradients accumulated from two losses must add up."""
    g = torch.Generator().manual_seed(23)
    x = torch.randn(9, 13, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 12, -100, 5, 5, 1, 7, 3, 11])
    go = torch.rand(9, generator=g, dtype=torch.float64) if reduction == "none" else torch.tensor(0.7, dtype=torch.float64)
    ref = torch.autograd.grad(F.cross_entropy(x, t, reduction=reduction), x, go)[0]
    loss = ops.cross_entropy(x, t, reduction=reduction)
    for k in (1, 2, 3):
        loss.backward(go, retain_graph=True)
        torch.testing.assert_close(x.grad, k * ref, rtol=1e-12, atol=1e-12)
    loss.backward(go)
    torch.testing.assert_close(x.grad, 4 * ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward(go)
    x.grad = None
    a = ops.cross_entropy(x, t, reduction=reduction)
    b = ops.cross_entropy(x * 2, t, reduction=reduction)
    (a.sum() + b.sum()).backward()
    ref2 = torch.autograd.grad((F.cross_entropy(x, t, reduction=reduction).sum()
                                + F.cross_entropy(x * 2, t, reduction=reduction).sum()), x)[0]
    torch.testing.assert_close(x.grad, ref2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("option", OPTIONS_SMALL, ids=_opt_id)
def test_common_cpu_call_matches_general_path(dtype, option, monkeypatch):
    """softmax_cross_entropy's shortcut for the common CPU call (_common_cpu_call) must take these
    calls and give the bits of the general path."""
    import pyimgcls.ops.softmax_xent as sx
    weighted, ignore, reduction, ls = option
    x, t, w, go = _make(9, 21, dtype, "cpu", seed=24, ignore=ignore)
    w = w if weighted else None
    if not weighted:   # the shortcut never sees class weights
        assert sx._common_cpu_call(x, t, -100, reduction, float(ls)) is not None
    results = []
    for shortcut in (True, False):
        if not shortcut:
            monkeypatch.setattr(sx, "_common_cpu_call", lambda *args: None)
        xg = x.clone().requires_grad_()
        loss = ops.cross_entropy(xg, t, w, reduction=reduction, label_smoothing=ls)
        loss.backward(go if reduction == "none" else None)
        with torch.no_grad():
            nograd = ops.cross_entropy(x, t, w, reduction=reduction, label_smoothing=ls)
        results.append((loss.detach(), xg.grad, nograd))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_eager_path_double_backward_and_inplace_target():
    """The eager Function's gradient under create_graph=True can be differentiated again (a graph
    through the fused kernel's values: ops/softmax_xent.py::_graph_grad) and matches PyTorch's second
    derivative; the target is checked for in-place changes between forward and backward (PyTorch
    raises there too)."""
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1, 0, 6, 3, 2])
    loss = ops.cross_entropy(x, t)
    (gx,) = torch.autograd.grad(loss, x, torch.ones((), dtype=x.dtype, requires_grad=True), create_graph=True)
    (rx,) = torch.autograd.grad(F.cross_entropy(x, t), x, create_graph=True)
    assert torch.allclose(gx, rx)
    (ggx,) = torch.autograd.grad(gx.pow(2).sum(), x)
    (rggx,) = torch.autograd.grad(rx.pow(2).sum(), x)
    assert ggx.abs().max() > 1e-3 and torch.allclose(ggx, rggx)
    loss = ops.cross_entropy(x, t)
    t[0] = 2
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored_and_zero_denominator(backend, weighted):
    dev = device_for(backend)
    x, t, w, _ = _make(5, 4, torch.float32, dev, seed=16)
    wt = w if weighted else None
    all_ignored = torch.full((5,), -100, device=dev)
    for ls in (0.0, 0.3):
        xg = x.clone().requires_grad_()
        with backend_ctx(backend):
            mean = ops.cross_entropy(xg, all_ignored, wt, label_smoothing=ls)
            total = ops.cross_entropy(x, all_ignored, wt, reduction="sum", label_smoothing=ls)
        assert torch.isnan(mean).item() and total.item() == 0.0
        mean.backward()
        assert torch.equal(xg.grad.cpu(), torch.zeros(5, 4))   # PyTorch: zeros, not NaN
    # Weighted mean whose non-ignored weights sum to 0: NaN loss, NaN rows for non-ignored targets.
    zero_w = torch.zeros(4, device=dev)
    t2 = torch.tensor([0, -100, 2, 3, 1], device=dev)
    xg = x.clone().requires_grad_()
    with backend_ctx(backend):
        loss = ops.cross_entropy(xg, t2, zero_w)
    loss.backward()
    ref_loss, ref_grad = _reference(x, t2, zero_w, "mean", 0.0, None)
    assert torch.isnan(loss).item() and torch.isnan(ref_loss).item()
    assert torch.equal(torch.isnan(xg.grad.cpu()), torch.isnan(ref_grad))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch_behaves_like_pytorch(backend, reduction):
    dev = device_for(backend)
    x = torch.zeros((0, 5), device=dev, requires_grad=True)
    t = torch.zeros((0,), dtype=torch.long, device=dev)
    with backend_ctx(backend):
        ours = ops.cross_entropy(x, t, reduction=reduction)
    ref = F.cross_entropy(x.detach().cpu(), t.cpu(), reduction=reduction)
    assert ours.shape == ref.shape
    assert torch.equal(torch.isnan(ours.cpu()), torch.isnan(ref))
    if reduction == "sum":
        assert ours.item() == 0.0
    ours.sum().backward()
    assert x.grad.shape == (0, 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend):
    dev = device_for(backend)
    n = 300 if backend == "triton" and triton_slow() else 3000
    x, t, w, _ = _make(n, 37, torch.float32, dev, seed=17, ignore=True)
    runs = []
    for _ in range(2):
        xg = x.clone().requires_grad_()
        with backend_ctx(backend):
            loss = ops.cross_entropy(xg, t, w, label_smoothing=0.1)
        loss.backward()
        runs.append((loss.detach().cpu(), xg.grad.cpu()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_cpu_thread_count_does_not_change_bits():
    code = (
        "import torch; from pyimgcls import ops;"
        "g=torch.Generator().manual_seed(0); x=torch.randn(4000, 300, generator=g);"
        "t=torch.randint(0, 300, (4000,), generator=g);"
        "print(ops.cross_entropy(x, t, label_smoothing=0.1).double().item().hex())"
    )
    outs = set()
    for threads in ("1", "2"):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "OMP_NUM_THREADS": threads})
        assert res.returncode == 0, res.stderr
        outs.add(res.stdout.strip())
    assert len(outs) == 1, outs


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_cpu_isa_paths_agree(isa):
    code = (
        "import torch, torch.nn.functional as F; from pyimgcls import ops, _native;"
        "g=torch.Generator().manual_seed(1); x=torch.randn(37, 3001, generator=g, dtype=torch.float64)*20;"
        "x[3, 5]=float('-inf'); t=torch.randint(0, 3001, (37,), generator=g); w=torch.rand(3001, generator=g, dtype=torch.float64);"
        "xf=x.float().requires_grad_(); l=ops.cross_entropy(xf, t, w.float(), reduction='none', label_smoothing=0.2);"
        "l.sum().backward(); x64=x.clone().requires_grad_();"
        "r=F.cross_entropy(x64, t, w, reduction='none', label_smoothing=0.2); r.sum().backward();"
        "f=torch.isfinite(r); assert torch.equal(torch.isinf(l), torch.isinf(r)) and not f.all();"
        "print(_native.C.softmax_xent_isa(), ((l.double()-r).abs()/r.abs())[f].max().item(),"
        " (xf.grad.double()-x64.grad).abs().max().item())"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYIMGCLS_CPU_ISA": isa})
    assert res.returncode == 0, res.stderr
    used, rel_loss, abs_grad = res.stdout.split()
    assert used in ("generic", "avx2", "avx512")
    assert float(rel_loss) < 2e-5 and float(abs_grad) < 2e-5


# ----------------------------------------------------------------------------- autograd integration
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("option", OPTIONS_SMALL, ids=_opt_id)
def test_custom_op_path_matches_eager_fast_path(backend, option, monkeypatch):
    """Eager calls run the kernels through a bare autograd.Function (ops/_eager.py, the mechanism of
    every op); the registered custom ops (used under torch.compile, fake tensors, modes, and whenever
    _eager.ENABLED is False) must give the same bits."""
    import pyimgcls.ops.softmax_xent as sx
    dev = device_for(backend)
    weighted, ignore, reduction, ls = option
    x, t, w, go = _make(7, 13, torch.float32, dev, seed=21, ignore=ignore)
    calls = []
    for name in ("_xent_op", "_xent_backward_op"):
        real = getattr(sx, name)
        monkeypatch.setattr(sx, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    results = []
    for fast in (True, False):
        monkeypatch.setattr(_eager, "ENABLED", fast)
        calls.clear()
        xg = x.clone().requires_grad_()
        with backend_ctx(backend):
            loss = ops.cross_entropy(xg, t, w if weighted else None, reduction=reduction, label_smoothing=ls)
        loss.backward(go if reduction == "none" else None)
        results.append((loss.detach(), xg.grad))
        assert calls == ([] if fast else ["_xent_op", "_xent_backward_op"])
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ls", [0.0, 0.25])
@pytest.mark.parametrize("fast", [True, False], ids=["eager-fast-path", "custom-op"])
def test_gradcheck_float64_cpu(reduction, weighted, ls, fast, monkeypatch):
    monkeypatch.setattr(_eager, "ENABLED", fast)
    g = torch.Generator().manual_seed(18)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1, -100, 4, 0])
    w = torch.rand(5, generator=g, dtype=torch.float64) + 0.5 if weighted else None
    with backend_ctx("cpu"):
        assert torch.autograd.gradcheck(
            lambda x: ops.cross_entropy(x, t, w, reduction=reduction, label_smoothing=ls), (x,))


def test_opcheck_both_ops():
    g = torch.Generator().manual_seed(19)
    x = torch.randn(6, 7, generator=g, requires_grad=True)
    t = torch.tensor([0, 3, -100, 6, 2, 2])
    w = torch.rand(7, generator=g)
    for reduction in (0, 1, 2):
        torch.library.opcheck(torch.ops.pyimgcls.softmax_cross_entropy.default,
                              (x, t, w, -100, reduction, 0.1, True, "cpu"))
    torch.library.opcheck(torch.ops.pyimgcls.softmax_cross_entropy.default,
                          (x.detach(), t.int(), None, -100, 1, 0.0, False, "cpu"))
    loss, grad, denom = torch.ops.pyimgcls.softmax_cross_entropy(x.detach(), t, w, -100, 1, 0.1, True, "cpu")
    torch.library.opcheck(torch.ops.pyimgcls.softmax_cross_entropy_backward.default,
                          (torch.tensor(0.7), grad, t, denom, -100, 1, "cpu"))
    torch.library.opcheck(torch.ops.pyimgcls.softmax_cross_entropy_backward.default,
                          (torch.randn(6, generator=g), grad, t, denom.new_empty(0), -100, 0, "cpu"))


def test_no_grad_skips_gradient_buffer():
    x, t = torch.randn(5, 9), torch.randint(0, 9, (5,))
    _, grad, _ = torch.ops.pyimgcls.softmax_cross_entropy(x, t, None, -100, 1, 0.0, False, "cpu")
    assert grad.numel() == 0
    with torch.no_grad():
        ours = ops.cross_entropy(x.requires_grad_(), t)
    torch.testing.assert_close(ours, F.cross_entropy(x.detach(), t))


def test_torch_compile_fullgraph_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    crit = nn.CrossEntropyLoss(weight=torch.rand(10) + 0.5, label_smoothing=0.1)
    x, t = torch.randn(8, 12), torch.randint(0, 10, (8,))
    t[3] = -100

    def step(x, t):
        return crit(model(x), t)

    eager = step(x, t)
    eager.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(step, fullgraph=True)(x, t)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    for p, g_ in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g_)
    ref = F.cross_entropy(model(x), t, crit.weight, label_smoothing=0.1)
    torch.testing.assert_close(eager, ref)


def test_autocast_computes_in_float32():
    x, t = torch.randn(4, 8).bfloat16(), torch.randint(0, 8, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = ops.cross_entropy(x, t)
        theirs = F.cross_entropy(x, t)
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs)


def test_torch_backend_is_plain_pytorch():
    x, t = torch.randn(4, 8), torch.randint(0, 8, (4,))
    with pyimgcls.use_backend("torch"):
        ours = ops.cross_entropy(x, t, label_smoothing=0.3, reduction="sum")
    assert torch.equal(ours, F.cross_entropy(x, t, label_smoothing=0.3, reduction="sum"))


def test_compiled_graph_calls_the_custom_ops():
    from torch._dynamo.testing import EagerAndRecordGraphs
    backend = EagerAndRecordGraphs()
    x, t = torch.randn(4, 6, requires_grad=True), torch.tensor([0, 5, -100, 2])
    out = torch.compile(lambda x, t: ops.cross_entropy(x, t, label_smoothing=0.1), backend=backend,
                        fullgraph=True)(x, t)
    out.backward()
    code = "\n".join(g.code for g in backend.graphs)
    assert "pyimgcls.softmax_cross_entropy" in code
    torch.testing.assert_close(x.grad, torch.autograd.grad(F.cross_entropy(x, t, label_smoothing=0.1), x)[0])


def test_auto_uses_cpu_kernel(monkeypatch):
    import pyimgcls.ops.softmax_xent as sx
    calls = []
    real = sx._forward
    monkeypatch.setattr(sx, "_forward", lambda *a: calls.append(a[-1]) or real(*a))
    ops.cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    assert calls == ["cpu"]


# ----------------------------------------------------------------------------- nn.CrossEntropyLoss
def test_nn_cross_entropy_loss_matches_torch_module():
    torch.manual_seed(0)
    w = torch.rand(6) + 0.5
    ours = nn.CrossEntropyLoss(weight=w, ignore_index=2, reduction="sum", label_smoothing=0.15)
    ref = torch.nn.CrossEntropyLoss(weight=w, ignore_index=2, reduction="sum", label_smoothing=0.15)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert set(ours.state_dict()) == set(ref.state_dict()) == {"weight"}
    assert ours.ignore_index == 2 and ours.reduction == "sum" and ours.label_smoothing == 0.15
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, t = torch.randn(9, 6, requires_grad=True), torch.randint(0, 6, (9,))
    torch.testing.assert_close(ours(x, t), ref(x, t))
    (g1,) = torch.autograd.grad(ours(x, t), x)
    (g2,) = torch.autograd.grad(ref(x, t), x)
    torch.testing.assert_close(g1, g2)
    default = nn.CrossEntropyLoss()
    assert default.weight is None and default.ignore_index == -100 and default.reduction == "mean"
    assert default.label_smoothing == 0.0 and set(default.state_dict()) == set()
    torch.testing.assert_close(default(x, t), F.cross_entropy(x, t))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_bad_inputs_raise_clear_errors(backend, monkeypatch):
    dev = device_for(backend)
    # on CUDA tensors the target range is checked on the host only on request (no sync otherwise;
    # test_gpu_out_of_range_target_is_nan_not_a_crash covers the unchecked NaN rows)
    monkeypatch.setenv("PYIMGCLS_CHECK_TARGETS", "1")
    x, t = torch.randn(4, 5, device=dev), torch.tensor([0, 1, 2, 3], device=dev)
    with backend_ctx(backend):
        with pytest.raises(ValueError, match="'target'"):
            ops.cross_entropy(x, t[:3])                                  # batch size mismatch
        with pytest.raises(TypeError, match="'target'.*probabilities must be floating"):
            ops.cross_entropy(x, torch.softmax(x, 1).long())              # integer "probability" targets
        with pytest.raises(TypeError, match="'target'.*class indices must be int64"):
            ops.cross_entropy(x, t.float())                               # float class indices
        with pytest.raises(ValueError, match="'input'.*1-D"):
            ops.cross_entropy(x[0], t[0])                                 # unbatched logits
        with pytest.raises(ValueError, match="'weight'"):
            ops.cross_entropy(x, t, torch.ones(3, device=dev))            # weight of wrong length
        with pytest.raises(ValueError, match="'weight'"):
            ops.cross_entropy(x, t, torch.ones(5, 1, device=dev))
        with pytest.raises(TypeError, match="'weight'"):
            ops.cross_entropy(x, t, torch.ones(5, dtype=torch.float64, device=dev))
        with pytest.raises(ValueError, match="reduction"):
            ops.cross_entropy(x, t, reduction="avg")                      # unknown reduction
        with pytest.raises(ValueError, match="label_smoothing"):
            ops.cross_entropy(x, t, label_smoothing=1.5)
        with pytest.raises(TypeError, match="'input'"):
            ops.cross_entropy(x.long(), t)
        with pytest.raises(TypeError, match="'target'"):
            ops.cross_entropy(x, t.to(torch.int16))
        with pytest.raises(TypeError, match="'input'"):
            ops.cross_entropy([[1.0]], t)
        with pytest.raises(ValueError, match="'weight'.*requires grad"):
            ops.cross_entropy(x, t, torch.ones(5, device=dev, requires_grad=True))
        for bad in ([0, 1, 5, 3], [0, -1, 2, 3]):                          # out-of-range targets
            with pytest.raises(IndexError, match="out of bounds"):
                ops.cross_entropy(x, torch.tensor(bad, device=dev))
        with pytest.raises(TargetOutOfRangeError, match="'target'.*index 2"):
            ops.cross_entropy(x, torch.tensor([0, 1, 7, 3], device=dev), reduction="none")
    # Errors are RuntimeErrors as well, as PyTorch raises for most of these calls.
    with pytest.raises(RuntimeError):
        ops.cross_entropy(x, t, label_smoothing=1.5)
    with pytest.raises(RuntimeError):
        ops.cross_entropy(x, torch.tensor([0, 1, 9, 3], device=dev))


def test_nn_module_errors_and_backend_errors():
    crit = nn.CrossEntropyLoss(reduction="bogus")
    with pytest.raises(ValueError, match="reduction"):
        crit(torch.randn(2, 3), torch.tensor([0, 1]))
    with pyimgcls.use_backend("cuda"), pytest.raises(pyimgcls.errors.BackendError, match="cuda"):
        ops.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="'target'"):
            ops.cross_entropy(torch.randn(2, 3, device="cuda"), torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- CUDA-only policy
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_out_of_range_target_is_nan_not_a_crash(backend, monkeypatch):
    if backend == "cuda" and "cuda" not in pyimgcls.available_backends():
        pytest.skip("CUDA kernels not built")
    monkeypatch.delenv("PYIMGCLS_CHECK_TARGETS", raising=False)
    x = torch.randn(4, 5, device="cuda", requires_grad=True)
    t = torch.tensor([0, 9, -100, -3], device="cuda")
    with pyimgcls.use_backend(backend):
        none = ops.cross_entropy(x, t, reduction="none")
        mean = ops.cross_entropy(x, t)
    assert torch.isnan(none.cpu()).tolist() == [False, True, False, True]
    assert torch.isnan(mean).item()
    # per row: only the out-of-range rows' gradients are NaN (the ignored row's is 0)
    none.sum().backward()
    g = x.grad.cpu()
    assert torch.isnan(g[[1, 3]]).all() and torch.isfinite(g[0]).all() and (g[2] == 0).all()
    # the mean divides by D = sum of the rows' weights, which holds the bad rows' NaN weight
    x.grad = None
    mean.backward()
    assert torch.isnan(x.grad).all()
    monkeypatch.setenv("PYIMGCLS_CHECK_TARGETS", "1")
    with pyimgcls.use_backend(backend), pytest.raises(IndexError, match="out of bounds"):
        ops.cross_entropy(x, t)


@pytest.mark.cuda
def test_cuda_reduction_counter_survives_streams():
    if "cuda" not in pyimgcls.available_backends():
        pytest.skip("CUDA kernels not built")
    x, t, w, _ = _make(5000, 100, torch.float32, torch.device("cuda"), seed=20, ignore=True)
    with pyimgcls.use_backend("cuda"):
        first = ops.cross_entropy(x, t, w)
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            other = ops.cross_entropy(x, t, w, reduction="sum")
        torch.cuda.synchronize()
        again = ops.cross_entropy(x, t, w)
    assert torch.equal(first, again)
    ref, _ = _reference(x, t, w, "sum", 0.0, None)
    assert_close_to_reference(other, ref, scale=ref.abs().item())



@pytest.mark.cuda
@pytest.mark.parametrize("stale", [1, 7, (1 << 32) | 3, (1 << 32) | 5000])
def test_cuda_reduction_ticket_recovers_from_a_stale_word(stale):
    # A launch that never reached its last block leaves its ticket word non-zero (arrivals, with that
    # launch's epoch in the high half; epochs grow per launch, and the launch of `clean` below already
    # took epoch >= 1). The next launch must discard it: the mean and sum stay right, and the word is
    # idle (0) again after.
    if "cuda" not in pyimgcls.available_backends():
        pytest.skip("CUDA kernels not built")
    from pyimgcls.backends.cuda import softmax_xent as cuda_xent
    x, t, w, _ = _make(5000, 100, torch.float32, torch.device("cuda"), seed=21, ignore=True)
    with pyimgcls.use_backend("cuda"):
        clean = ops.cross_entropy(x, t, w)
        word = cuda_xent._counter(x.device)
        for reduction in ("mean", "sum"):
            word.fill_(stale)
            got = ops.cross_entropy(x, t, w, reduction=reduction)
            torch.cuda.synchronize()
            assert word.item() == 0
            ref, _ = _reference(x, t, w, reduction, 0.0, None)
            assert_close_to_reference(got, ref, scale=ref.abs().item())
            if reduction == "mean":
                assert torch.equal(got, clean)

# ----------------------------------------------------------------------------- class-probability targets
PROB_OPTIONS = list(itertools.product([False, True], REDUCTIONS, [0.0, 0.2]))
# Backends for the probability-target tests: helpers.BACKENDS (cuda needs a GPU) and the yardstick.
PROB_BACKENDS = BACKENDS + [pytest.param("torch", id="torch")]


def _prob_id(o):
    return f"{'w' if o[0] else 'now'}-{o[1]}-ls{o[2]}"


def _make_prob(N, C, dtype, device, seed=0, scale=3.0, tdtype=None):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(N, C, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
    # Unnormalised rows on purpose (PyTorch does not check the sum) with some exact zeros.
    p = torch.rand(N, C, generator=g, dtype=torch.float64)
    p = torch.where(p < 0.2, 0.0, p) / max(C, 1) * 1.3
    w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.25).to(dtype).to(device)
    go = torch.randn(N, generator=g, dtype=torch.float64).to(dtype).to(device)
    return x, p.to(tdtype or dtype).to(device), w, go


def _prob_reference(x, t, w, reduction, ls, go, dtype=torch.float64):
    """(loss, grad_x, grad_t) of F.cross_entropy with probability targets at ``dtype`` on CPU."""
    xr = x.detach().cpu().to(dtype).requires_grad_()
    tr = t.detach().cpu().to(dtype).requires_grad_()
    wr = None if w is None else w.detach().cpu().to(dtype)
    loss = F.cross_entropy(xr, tr, wr, reduction=reduction, label_smoothing=ls)
    gout = go.detach().cpu().to(dtype) if reduction == "none" else torch.ones((), dtype=dtype)
    gx, gt = torch.autograd.grad(loss, (xr, tr), gout)
    return loss.detach(), gx, gt


def _check_prob_case(backend, dtype, x, t, w, go, option):
    weighted, reduction, ls = option
    wt = w if weighted else None
    xg = x.detach().clone().requires_grad_()
    tg = t.detach().clone().requires_grad_()
    with backend_ctx(backend):
        loss = ops.softmax_cross_entropy(xg, tg, wt, reduction=reduction, label_smoothing=ls)
    assert loss.dtype == dtype and loss.shape == ((x.shape[0],) if reduction == "none" else ())
    loss.backward(go if reduction == "none" else None)
    ref = _prob_reference(x, t, wt, reduction, ls, go)
    lp = [None] * 3
    if dtype in (torch.float16, torch.bfloat16):
        lp = _prob_reference(x, t, wt, reduction, ls, go, dtype=dtype)
    assert_close_to_reference(loss, ref[0], torch_same_dtype=lp[0], scale=max(1.0, ref[0].abs().max().item()))
    assert_close_to_reference(xg.grad, ref[1], torch_same_dtype=lp[1])
    assert_close_to_reference(tg.grad, ref[2], torch_same_dtype=lp[2], scale=max(1.0, ref[2].abs().max().item()))
    assert xg.grad.dtype == dtype and tg.grad.dtype == dtype


@pytest.mark.parametrize("backend", PROB_BACKENDS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("N, C", [(1, 1), (1, 10), (7, 1), (7, 10), (7, 100), (5, 2500), (64, 300), (9, 5000)])
def test_prob_targets_match_reference(backend, dtype, N, C):
    """Every reduction x weights x smoothing. C = 2500 / 5000 span 2-3 chunks of the CPU kernel (2048
    float32 / 1024 float64 logits), N*C >= 2**14 takes its OpenMP branch (64 x 300, 9 x 5000)."""
    _skip_dtype(backend, dtype)
    dev = device_for(backend)
    options = PROB_OPTIONS
    if dtype in (torch.float16, torch.bfloat16) and N * C > 1000:
        options = PROB_OPTIONS[::3]
    for i, option in enumerate(options):
        x, t, w, go = _make_prob(N, C, dtype, dev, seed=i)
        _check_prob_case(backend, dtype, x, t, w, go, option)


@pytest.mark.parametrize("backend", PROB_BACKENDS)
def test_prob_targets_special_values_like_pytorch(backend):
    """-inf logits (0 * -inf is NaN in PyTorch's sum where the target is 0), a NaN row, a large offset
    (no cancellation of V * lse - sum v x), all-zero target rows."""
    dev = device_for(backend)
    x = torch.randn(6, 3000, dtype=torch.float64)
    x[0, 5] = float("-inf")
    x[1, 2999] = float("nan")
    x[2] += 1e4
    x[3, :2048] = float("-inf")            # an all -inf first chunk
    t = torch.rand(6, 3000, dtype=torch.float64) / 3000
    t[0, 5] = 0.0
    t[3, :2048] = 1e-3
    t[4] = 0.0
    for dtype in [d for d in (torch.float32, torch.float64) if d in dtypes_for(backend)]:
        for option in PROB_OPTIONS:
            weighted, reduction, ls = option
            w = torch.rand(3000, dtype=dtype, device=dev) + 0.5 if weighted else None
            xx = x.to(dtype).to(dev).requires_grad_()
            with backend_ctx(backend):
                loss = ops.cross_entropy(xx, t.to(dtype).to(dev), w, reduction=reduction, label_smoothing=ls)
            ref = F.cross_entropy(x.to(dtype), t.to(dtype), None if w is None else w.cpu(), reduction=reduction,
                                  label_smoothing=ls)
            assert torch.equal(torch.isnan(loss.detach().cpu()), torch.isnan(ref)), (dtype, option)
            ok = ~torch.isnan(ref)
            torch.testing.assert_close(loss.detach().cpu()[ok], ref[ok].to(dtype), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", PROB_BACKENDS)
def test_prob_targets_strided_kdim_and_mixed_dtypes(backend):
    _skip_dtype(backend, torch.float64)
    dev = device_for(backend)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 2, 10, generator=g, dtype=torch.float64)
    p = torch.softmax(torch.randn(9, 2, 10, generator=g, dtype=torch.float64), -1)
    with backend_ctx(backend):
        views = [lambda a, b: (a[:, 0], b[:, 1]),                                   # row-strided views
                 lambda a, b: (a[:, 0].t().contiguous().t(), b[:, 1].t().contiguous().t()),  # column-major
                 lambda a, b: (a[:, 0, ::2], b[:, 1, ::2]),                         # class stride 2
                 lambda a, b: (a[:1, 0].expand(4, 10), b[:1, 0].expand(4, 10))]     # stride-0 rows
        for view, red in itertools.product(views, REDUCTIONS):
            xr, pr = x.clone().requires_grad_(), p.clone().requires_grad_()
            xo, po = x.clone().to(dev).requires_grad_(), p.clone().to(dev).requires_grad_()
            a, b = view(xo, po)
            assert not (a.is_contiguous() and b.is_contiguous())
            ours = ops.cross_entropy(a, b, reduction=red, label_smoothing=0.1)
            ref = F.cross_entropy(*view(xr, pr), reduction=red, label_smoothing=0.1)
            torch.testing.assert_close(ours.cpu(), ref)
            ours.sum().backward()
            ref.sum().backward()
            torch.testing.assert_close(xo.grad.cpu(), xr.grad)
            torch.testing.assert_close(po.grad.cpu(), pr.grad)
        # [N, C, d1, d2] logits with targets of the same shape
        x4 = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
        p4 = torch.softmax(torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64), 1)
        for red in REDUCTIONS:
            torch.testing.assert_close(ops.cross_entropy(x4.to(dev), p4.to(dev), reduction=red).cpu(),
                                       F.cross_entropy(x4, p4, reduction=red))
        # PyTorch promotes logits, target and weight to one dtype; gradients keep each input's dtype
        x32 = x[:, 0].float().to(dev).requires_grad_()
        p64 = p[:, 0].to(dev).requires_grad_()
        w16 = torch.rand(10, generator=g).half().to(dev)
        ours = ops.cross_entropy(x32, p64, w16)
        ref = F.cross_entropy(x[:, 0].float(), p[:, 0], w16.cpu())
        assert ours.dtype == ref.dtype == torch.float64
        torch.testing.assert_close(ours.cpu(), ref)
        ours.backward()
        assert x32.grad.dtype == torch.float32 and p64.grad.dtype == torch.float64
        ours16 = ops.cross_entropy(x32.detach(), p[:, 0].half().to(dev))
        assert ours16.dtype == torch.float32


@pytest.mark.parametrize("fast", [True, False], ids=["eager", "custom-op"])
@pytest.mark.parametrize("backend", PROB_BACKENDS)
def test_prob_targets_gradcheck_and_gradgradcheck_float64(backend, fast, monkeypatch):
    _skip_dtype(backend, torch.float64)
    monkeypatch.setattr(_eager, "ENABLED", fast)
    dev = device_for(backend) if backend == "triton" else torch.device("cpu")
    g = torch.Generator().manual_seed(21)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64).to(dev).requires_grad_()
    t = torch.rand(4, 5, generator=g, dtype=torch.float64).to(dev).requires_grad_()
    w = (torch.rand(5, generator=g, dtype=torch.float64) + 0.5).to(dev)
    with backend_ctx(backend):
        for red, ls, wt in itertools.product(REDUCTIONS, [0.0, 0.3], [None, w]):
            def f(x, t):
                return ops.cross_entropy(x, t, wt, reduction=red, label_smoothing=ls)
            assert torch.autograd.gradcheck(f, (x, t))
            assert torch.autograd.gradgradcheck(f, (x, t))


def test_prob_targets_hessian_matches_pytorch():
    g = torch.Generator().manual_seed(22)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    t = torch.softmax(torch.randn(3, 4, generator=g, dtype=torch.float64), 1)
    kw = dict(label_smoothing=0.1, weight=torch.rand(4, generator=g, dtype=torch.float64))
    with backend_ctx("cpu"):
        ours = torch.autograd.functional.hessian(lambda z, s: ops.cross_entropy(z, s, **kw), (x, t))
    ref = torch.autograd.functional.hessian(lambda z, s: F.cross_entropy(z, s, **kw), (x, t))
    for a, b in zip(ours, ref):
        for c, d in zip(a, b):
            torch.testing.assert_close(c, d)


def test_prob_targets_thread_count_does_not_change_bits():
    from helpers import omp_threads
    x, t, w, _ = _make_prob(64, 3000, torch.float32, torch.device("cpu"))
    outs = []
    for n in (1, 2, 3):
        with omp_threads(n), backend_ctx("cpu"):
            xg = x.clone().requires_grad_()
            loss = ops.cross_entropy(xg, t, w, label_smoothing=0.1)
            loss.backward()
            outs.append((loss, xg.grad))
    for loss, grad in outs[1:]:
        assert torch.equal(loss, outs[0][0]) and torch.equal(grad, outs[0][1])


def test_prob_targets_opcheck_and_no_grad():
    g = torch.Generator().manual_seed(23)
    x = torch.randn(6, 7, generator=g, requires_grad=True)
    t = torch.rand(6, 7, generator=g, requires_grad=True)
    w = torch.rand(7, generator=g)
    for reduction in (0, 1, 2):
        torch.library.opcheck(torch.ops.pyimgcls.softmax_cross_entropy_prob.default,
                              (x, t, w, reduction, 0.1, True, "cpu"))
    loss, grad, denom = torch.ops.pyimgcls.softmax_cross_entropy_prob(x.detach(), t.detach(), w, 1, 0.1, True, "cpu")
    assert float(denom) == 6.0
    torch.library.opcheck(torch.ops.pyimgcls.softmax_cross_entropy_prob_backward.default,
                          (torch.tensor(0.7), grad, denom, 1, "cpu"))
    _, grad, _ = torch.ops.pyimgcls.softmax_cross_entropy_prob(x.detach(), t.detach(), None, 1, 0.0, False, "cpu")
    assert grad.numel() == 0
    with torch.no_grad():
        torch.testing.assert_close(ops.cross_entropy(x, t), F.cross_entropy(x, t))


def test_prob_targets_torch_compile_and_nn_module():
    g = torch.Generator().manual_seed(24)
    x = torch.randn(8, 10, generator=g, requires_grad=True)
    t = torch.softmax(torch.randn(8, 10, generator=g), 1)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    ref_crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    torch.testing.assert_close(crit(x, t), ref_crit(x, t))
    compiled = torch.compile(lambda a, b: ops.cross_entropy(a, b, reduction="sum"), backend="eager", fullgraph=True)
    loss = compiled(x, t)
    (gx,) = torch.autograd.grad(loss, x)
    (rx,) = torch.autograd.grad(F.cross_entropy(x, t, reduction="sum"), x)
    torch.testing.assert_close(gx, rx)


def test_prob_targets_empty_batch_and_inplace_target():
    for red in REDUCTIONS:
        x = torch.zeros(0, 5, requires_grad=True)
        t = torch.zeros(0, 5)
        ours, ref = ops.cross_entropy(x, t, reduction=red), F.cross_entropy(x.detach(), t, reduction=red)
        torch.testing.assert_close(ours, ref, equal_nan=True)
        ours.sum().backward()
        assert x.grad.shape == (0, 5)
    x = torch.randn(3, 4, requires_grad=True)
    t = torch.rand(3, 4, requires_grad=True)
    loss = ops.cross_entropy(x, t)
    with torch.no_grad():
        t.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_prob_targets_bad_inputs_raise_like_pytorch(backend):
    x, p = torch.randn(4, 5), torch.softmax(torch.randn(4, 5), 1)
    with backend_ctx(backend):
        with pytest.raises(ValueError, match="'ignore_index'.*not supported for floating point target"):
            ops.cross_entropy(x, p, ignore_index=0)
        ops.cross_entropy(x, p, ignore_index=-5)                       # negative: accepted, as PyTorch
        with pytest.raises(ValueError, match="'target'.*batch_size"):
            ops.cross_entropy(x, p[:3])
        with pytest.raises(ValueError, match="'target'.*shape of 'input'"):
            ops.cross_entropy(x, p[:, :4])
        with pytest.raises(ValueError, match="'target'.*shape of 'input'"):
            ops.cross_entropy(torch.randn(2, 5, 3), torch.rand(2, 5, 4))
        with pytest.raises(TypeError, match="'target'"):
            ops.cross_entropy(x, torch.complex(p, p))
        with pytest.raises(TypeError, match="'input'"):
            ops.cross_entropy(x.long(), p)
        with pytest.raises(ValueError, match="'input'.*unbatched"):
            ops.cross_entropy(x[0], p[0])
        with pytest.raises(ValueError, match="'weight'"):
            ops.cross_entropy(x, p, torch.ones(4))
        with pytest.raises(ValueError, match="'weight'.*requires grad"):
            ops.cross_entropy(x, p, torch.ones(5, requires_grad=True))
        with pytest.raises(ValueError, match="label_smoothing"):
            ops.cross_entropy(x, p, label_smoothing=1.5)
        with pytest.raises(ValueError, match="reduction"):
            ops.cross_entropy(x, p, reduction="avg")


@pytest.mark.parametrize("reduction", [0, 1, 2])
@pytest.mark.parametrize("need_grad", [False, True])
def test_prob_targets_gpu_module_passes_the_launcher_its_arguments(reduction, need_grad, monkeypatch):
    """The GPU backend module's glue without a GPU: the launchers are replaced by recorders (CPU tensors
    stand in for device memory) and every pointer, stride, size and flag they receive is checked."""
    from pyimgcls import _native
    from pyimgcls.backends.cuda import softmax_xent as mod
    calls = {}
    monkeypatch.setattr(mod, "launch_args", lambda t: (3, 77))
    monkeypatch.setattr(_native.C, "softmax_xent_prob_fwd_cuda", lambda *a: calls.setdefault("fwd", a),
                        raising=False)
    monkeypatch.setattr(_native.C, "softmax_xent_bwd_cuda", lambda *a: calls.setdefault("bwd", a), raising=False)
    base = torch.randn(5, 16, dtype=torch.float16)
    x = base[:, :7]                                   # row stride 16
    t = torch.rand(5, 14, dtype=torch.float16)[:, ::2].contiguous()[:, :7]  # row stride 7
    w = torch.rand(7, dtype=torch.float16)
    loss, grad, denom = mod.prob_forward(x, t, w, reduction, 0.25, need_grad)
    (dt, xp, sxn, tp, stn, wp, N, C, eps, red, lp, gp, sp, dp, dev, stream) = calls["fwd"]
    assert (dt, xp, sxn, tp, stn, wp) == (_native.dtype_code(torch.float16), x.data_ptr(), 16, t.data_ptr(), 7,
                                          w.data_ptr())
    assert (N, C, eps, red, lp, dev, stream) == (5, 7, 0.25, reduction, loss.data_ptr(), 3, 77)
    assert loss.shape == ((5,) if reduction == 0 else ()) and loss.dtype == torch.float16
    assert gp == (grad.data_ptr() if need_grad else 0) and grad.shape == ((5, 7) if need_grad else (0,))
    assert (sp != 0) == (reduction != 0)
    assert dp == (denom.data_ptr() if reduction == 1 else 0) and denom.dtype == torch.float32
    if need_grad:
        go = torch.randn(5, dtype=torch.float16) if reduction == 0 else torch.tensor(1.0, dtype=torch.float16)
        out = mod.backward(go, grad, None, denom, -100, reduction, False)
        (dt, saved, tptr, t32, gop, gos, per_row, dptr, N, C, ign, outp, dev, stream) = calls["bwd"]
        assert (saved, tptr, t32, gop, per_row, N, C, outp) == (grad.data_ptr(), 0, False, go.data_ptr(),
                                                              reduction == 0, 5, 7, out.data_ptr())
        assert dptr == (denom.data_ptr() if reduction == 1 else 0)


@pytest.mark.parametrize("backend", PROB_BACKENDS)
@pytest.mark.parametrize("option", PROB_OPTIONS[::2] + PROB_OPTIONS[1::4], ids=_prob_id)
def test_prob_targets_tiled_rows(backend, option):
    """Rows longer than one Triton register tile (8192) take its two-sweep path; on the CPU 9000
    float32 logits are 5 chunks. Row 0 starts with an all -inf tile, row 1 is offset by 1e4."""
    dev = device_for(backend)
    x, t, w, go = _make_prob(3, 9000, torch.float32, dev, seed=7)
    x[0, :8192] = float("-inf")
    t[0, :8192] = 1e-5
    x[1] += 1e4
    weighted, reduction, ls = option
    with backend_ctx(backend):
        xg = x.clone().requires_grad_()
        loss = ops.cross_entropy(xg, t, w if weighted else None, reduction=reduction, label_smoothing=ls)
        loss.backward(go if reduction == "none" else None)
    ref_loss, ref_gx, _ = _prob_reference(x, t, w if weighted else None, reduction, ls, go)
    assert_close_to_reference(loss, ref_loss, scale=max(1.0, ref_loss.abs().max().item()) * 10)
    torch.testing.assert_close(xg.grad.double().cpu(), ref_gx, rtol=1e-4, atol=1e-6)


def _same_values(ref, out):
    """Equal including NaN positions and the sign of zeros (PyTorch returns -0. for some)."""
    assert ref.shape == out.shape
    rn, on = torch.isnan(ref), torch.isnan(out)
    assert torch.equal(rn, on), (ref, out)
    assert torch.equal(ref[~rn], out[~on]) and torch.equal(torch.signbit(ref[~rn]), torch.signbit(out[~on])), (ref, out)


@pytest.mark.parametrize("backend", ["auto", "cpu", "triton"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["index", "prob", "prob3d"])
def test_no_classes_matches_pytorch(backend, reduction, label_smoothing, kind):
    """C == 0: index targets must all be ignore_index (0 per row, NaN with label smoothing: PyTorch
    divides by C), probability targets give -0. per row; 'mean' is NaN (0 / 0). The backward runs."""
    dev = device_for(backend) if backend == "triton" else torch.device("cpu")
    shape = (3, 0, 4) if kind == "prob3d" else (3, 0)
    x = torch.randn(shape, requires_grad=True)
    t = torch.full((3,), -100, dtype=torch.long) if kind == "index" else torch.randn(shape)
    ref = F.cross_entropy(x, t, reduction=reduction, label_smoothing=label_smoothing)
    xo = x.detach().to(dev).requires_grad_()
    with pyimgcls.use_backend(backend):
        out = ops.cross_entropy(xo, t.to(dev), reduction=reduction, label_smoothing=label_smoothing)
    _same_values(ref, out.cpu())
    out.sum().backward()
    assert xo.grad.shape == x.shape
    with pyimgcls.use_backend(backend), pytest.raises(ValueError, match="target"):
        ops.cross_entropy(torch.randn(2, 0, device=dev), torch.tensor([0, -100], device=dev))
