"""Distillation-loss family: ops.distillation_loss and nn.DistillationLoss on every backend against the
float64 eager composition (log_softmax + kl_div + cross_entropy, ops/reference.py): loss and student
gradient for every reduction, label smoothing and ignored rows, fp16/bf16, strided logits, large
logits and large C, all-ignored batches, the CPU ISA / threading / chunking branches, the Triton tiled
path, gradcheck, double backward, opcheck, the custom-op path and argument errors."""
import itertools

import pytest
import torch

import pyimgcls
from pyimgcls import nn, ops
from pyimgcls.errors import ArgumentTypeError, ArgumentValueError
from pyimgcls.ops import _eager, reference
from pyimgcls.ops.softmax_xent import TargetOutOfRangeError

from helpers import (BACKENDS, assert_close_to_reference, backend_ctx, device_for, dtypes_for, omp_threads,
                     triton_slow)

# The interpreter evaluates masked lanes (exp / log of padding) in numpy, which warns.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")

REDUCTIONS = ["none", "mean", "sum"]
# (reduction, label_smoothing, ignored rows present)
OPTIONS = list(itertools.product(REDUCTIONS, [0.0, 0.15], [False, True]))


def _opt_id(o):
    red, ls, ign = o
    return f"{red}-ls{ls}-{'ign' if ign else 'noign'}"


def _make(N, C, dtype, device, seed=0, scale=3.0, ignore=False, ignore_index=-100):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(N, C, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
    # a teacher correlated with the student, as in training
    t = (s.double().cpu() * 0.5 + torch.randn(N, C, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
    y = torch.randint(0, C, (N,), generator=g)
    if ignore and N > 1:
        y[torch.randperm(N, generator=g)[: max(1, N // 4)]] = ignore_index
    go = torch.randn(N, generator=g, dtype=torch.float64).to(dtype).to(device)
    return s, t, y.to(device), go


def _reference(s, t, y, reduction, ls, go, T, alpha, ignore_index=-100, dtype=torch.float64):
    """(loss, student grad) of the eager composition at ``dtype`` on CPU."""
    sr = s.detach().cpu().to(dtype).requires_grad_()
    loss = reference.distillation_loss(sr, t.detach().cpu().to(dtype), y.cpu(), T, alpha, reduction, ls, ignore_index)
    gout = go.detach().cpu().to(dtype) if reduction == "none" else torch.ones((), dtype=dtype)
    (grad,) = torch.autograd.grad(loss, sr, gout)
    return loss.detach(), grad


def _check(backend, dtype, s, t, y, go, reduction, ls, T=4.0, alpha=0.5, ignore_index=-100, loss_scale=None):
    sg = s.detach().clone().requires_grad_()
    with backend_ctx(backend):
        loss = ops.distillation_loss(sg, t, y, temperature=T, alpha=alpha, reduction=reduction, label_smoothing=ls,
                                     ignore_index=ignore_index)
    assert loss.dtype == dtype and loss.device == s.device
    assert loss.shape == ((s.shape[0],) if reduction == "none" else ())
    loss.backward(go if reduction == "none" else None)
    ref_loss, ref_grad = _reference(s, t, y, reduction, ls, go, T, alpha, ignore_index)
    lp_loss = lp_grad = None
    if dtype in (torch.float16, torch.bfloat16):
        lp_loss, lp_grad = _reference(s, t, y, reduction, ls, go, T, alpha, ignore_index, dtype=dtype)
    scale = loss_scale if loss_scale is not None else max(1.0, ref_loss.abs().nan_to_num().max().item())
    assert_close_to_reference(loss, ref_loss, torch_same_dtype=lp_loss, scale=scale)
    assert_close_to_reference(sg.grad, ref_grad, torch_same_dtype=lp_grad)
    assert sg.grad.dtype == dtype and sg.grad.shape == s.shape
    return loss, sg.grad


def _skip_dtype(backend, dtype):
    if dtype not in dtypes_for(backend):
        pytest.skip(f"{backend} does not serve {dtype}")


# ----------------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("option", OPTIONS, ids=_opt_id)
@pytest.mark.parametrize("NC", [(1, 1), (1, 10), (7, 33), (9, 100)], ids=str)
def test_matches_reference_every_option(backend, option, NC):
    reduction, ls, ignore = option
    N, C = NC
    s, t, y, go = _make(N, C, torch.float32, device_for(backend), seed=N * 131 + C, ignore=ignore)
    _check(backend, torch.float32, s, t, y, go, reduction, ls, T=3.0, alpha=0.7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_other_dtypes(backend, dtype, reduction):
    _skip_dtype(backend, dtype)
    s, t, y, go = _make(11, 37, dtype, device_for(backend), seed=3, ignore=True)
    _check(backend, dtype, s, t, y, go, reduction, 0.1, T=2.0, alpha=0.4)


@pytest.mark.parametrize("T, alpha", [(1.0, 0.0), (1.0, 1.0), (0.5, 0.3), (10.0, 0.9)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_temperature_and_alpha_edges(backend, T, alpha):
    s, t, y, go = _make(6, 21, torch.float32, device_for(backend), seed=5, ignore=True)
    _check(backend, torch.float32, s, t, y, go, "none", 0.1, T=T, alpha=alpha)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_logits_are_stable(backend):
    """Logits of size 1e4: no overflow, no cancellation (every exp argument is <= 0 and the sums are
    taken relative to the row maxima)."""
    s, t, y, go = _make(5, 50, torch.float32, device_for(backend), seed=6, scale=1e4)
    for reduction in ("none", "sum"):
        loss, grad = _check(backend, torch.float32, s, t, y, go, reduction, 0.2, T=4.0, alpha=0.5)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_classes(backend):
    """C large enough for the CPU's float-lane chunks (2048) and tails, the CUDA block-per-row kernel
    (C > 2048) and the Triton column sweep (C > 4096)."""
    C, N = (32768, 3) if backend != "triton" or not triton_slow() else (4099, 2)
    s, t, y, go = _make(N, C, torch.float32, device_for(backend), seed=7, ignore=False)
    _check(backend, torch.float32, s, t, y, go, "none", 0.1)
    _check(backend, torch.float32, s, t, y, go, "mean", 0.0)


def test_triton_tiled_rows_every_option(monkeypatch):
    """The Triton column sweep (rows longer than one tile, online max / sum rescaled between tiles) at
    small sizes: the tile is shrunk to 16 columns; the maxima sit in a later tile than the first."""
    from pyimgcls.triton_kernels import distill as tk
    monkeypatch.setattr(tk, "MAX_TILE_C", 16)
    for i, (reduction, ls, ignore) in enumerate(OPTIONS):
        s, t, y, go = _make(5, 53, torch.float32, device_for("triton"), seed=40 + i, ignore=ignore)
        s[:, 40] += 30.0   # the maxima grow in tile 3 of 4: the sums of tiles 1-2 are rescaled
        t[:, 50] += 30.0
        _check("triton", torch.float32, s, t, y, go, reduction, ls, T=2.5, alpha=0.6)


@pytest.mark.parametrize("isa", ["generic", "avx512"])
def test_cpu_isa_paths(isa, monkeypatch):
    """Both float32 row kernels (PYIMGCLS_CPU_ISA is read on every call); C = 2100 crosses the
    2048-element chunk with a tail, 4100 two chunks."""
    monkeypatch.setenv("PYIMGCLS_CPU_ISA", isa)
    for C in (5, 17, 2100, 4100):
        s, t, y, go = _make(4, C, torch.float32, torch.device("cpu"), seed=C, ignore=True)
        _check("cpu", torch.float32, s, t, y, go, "none", 0.1)


def test_cpu_threaded_rows_match_single_thread():
    """N * C >= 2^14 runs the OpenMP row loop; the mean is summed in row order, so the bits do not
    depend on the thread count."""
    s, t, y, go = _make(300, 100, torch.float32, torch.device("cpu"), seed=8, ignore=True)
    _check("cpu", torch.float32, s, t, y, go, "none", 0.1)
    outs = []
    for n in (1, 2):
        with omp_threads(n):
            outs.append(ops.distillation_loss(s, t, y, label_smoothing=0.1))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_logits(backend):
    dev = device_for(backend)
    s, t, y, go = _make(9, 40, torch.float32, dev, seed=9, ignore=True)
    wide_s = torch.randn(9, 64, device=dev)
    wide_s[:, 3:43] = s
    st = torch.randn(40, 9, device=dev).t()      # class stride 9: copied to unit stride by the op
    st.copy_(t)
    s_rows = wide_s[:, 3:43]                      # row stride 64, unit class stride: read in place
    assert s_rows.stride() == (64, 1) and st.stride(1) != 1
    _check(backend, torch.float32, s_rows, st, y, go, "none", 0.1)
    _check(backend, torch.float32, s.t().contiguous().t(), t, y, go, "mean", 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored_batch_like_cross_entropy(backend):
    dev = device_for(backend)
    s, t, _, _ = _make(5, 4, torch.float32, dev, seed=10)
    y = torch.full((5,), -100, device=dev)
    sg = s.clone().requires_grad_()
    with backend_ctx(backend):
        mean = ops.distillation_loss(sg, t, y)
        total = ops.distillation_loss(s, t, y, reduction="sum")
        rows = ops.distillation_loss(s, t, y, reduction="none")
    ce = torch.nn.functional.cross_entropy(s.cpu(), y.cpu())
    assert torch.isnan(mean).item() and torch.isnan(ce).item()
    assert total.item() == 0.0 and torch.equal(rows.cpu(), torch.zeros(5))
    mean.backward()
    assert torch.equal(sg.grad.cpu(), torch.zeros(5, 4))   # as cross_entropy: zeros, not NaN


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignore_index_inside_class_range(backend):
    s, t, y, go = _make(8, 6, torch.float32, device_for(backend), seed=11)
    y[2] = 3
    _check(backend, torch.float32, s, t, y, go, "mean", 0.1, ignore_index=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    dev = device_for(backend)
    s, t = torch.randn(0, 5, device=dev), torch.randn(0, 5, device=dev)
    y = torch.zeros(0, dtype=torch.long, device=dev)
    with backend_ctx(backend):
        assert torch.isnan(ops.distillation_loss(s, t, y)).item()
        assert ops.distillation_loss(s, t, y, reduction="sum").item() == 0.0
        assert ops.distillation_loss(s, t, y, reduction="none").shape == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_row_stays_in_its_row(backend):
    s, t, y, go = _make(4, 9, torch.float32, device_for(backend), seed=12)
    s[1, 4] = float("nan")
    t[2, 0] = float("nan")
    with backend_ctx(backend):
        rows = ops.distillation_loss(s, t, y, reduction="none")
    ref = reference.distillation_loss(s.cpu().double(), t.cpu().double(), y.cpu(), 4.0, 0.5, "none", 0.0, -100)
    assert torch.equal(torch.isnan(rows.cpu()), torch.isnan(ref)) and torch.isnan(rows.cpu()).tolist() == [
        False, True, True, False]


@pytest.mark.parametrize("backend", BACKENDS)
def test_teacher_gets_no_gradient(backend):
    dev = device_for(backend)
    s, t, y, _ = _make(6, 7, torch.float32, dev, seed=13)
    sg, tg = s.clone().requires_grad_(), t.clone().requires_grad_()
    with backend_ctx(backend):
        ops.distillation_loss(sg, tg, y).backward()
    assert tg.grad is None and sg.grad is not None
    # a teacher that requires grad and a student that does not: nothing to differentiate
    with backend_ctx(backend):
        assert not ops.distillation_loss(s, tg, y).requires_grad


def test_nn_module_matches_op():
    s, t, y, _ = _make(6, 11, torch.float32, torch.device("cpu"), seed=14, ignore=True)
    mod = nn.DistillationLoss(temperature=2.0, alpha=0.25, reduction="sum", label_smoothing=0.1)
    assert "temperature=2.0" in repr(mod)
    assert torch.equal(mod(s, t, y), ops.distillation_loss(s, t, y, temperature=2.0, alpha=0.25, reduction="sum",
                                                           label_smoothing=0.1))


def test_torch_backend_is_the_composition():
    s, t, y, go = _make(6, 11, torch.float64, torch.device("cpu"), seed=15, ignore=True)
    _check("torch", torch.float64, s, t, y, go, "mean", 0.1)
    # its entry point, reached by a direct call of the custom op, agrees with the cpu kernels
    a = torch.ops.pyimgcls.distillation_loss(s, t, y, -100, 0, 0.1, 4.0, 0.5, True, "torch")
    b = torch.ops.pyimgcls.distillation_loss(s, t, y, -100, 0, 0.1, 4.0, 0.5, True, "cpu")
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


def test_autocast_computes_in_float32():
    s, t, y, _ = _make(5, 8, torch.float32, torch.device("cpu"), seed=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ops.distillation_loss(s.bfloat16(), t.bfloat16(), y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference.distillation_loss(s.bfloat16().float(), t.bfloat16().float(), y, 4.0,
                                                                 0.5, "mean", 0.0, -100))


# ----------------------------------------------------------------------------- autograd integration
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("fast", [True, False], ids=["eager-fast-path", "custom-op"])
def test_gradcheck_float64_cpu(reduction, fast, monkeypatch):
    monkeypatch.setattr(_eager, "ENABLED", fast)
    g = torch.Generator().manual_seed(17)
    s = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([1, -100, 4, 0])
    with backend_ctx("cpu"):
        assert torch.autograd.gradcheck(
            lambda s: ops.distillation_loss(s, t, y, temperature=2.0, alpha=0.3, reduction=reduction,
                                            label_smoothing=0.2), (s,))
        assert torch.autograd.gradgradcheck(
            lambda s: ops.distillation_loss(s, t, y, temperature=2.0, alpha=0.3, reduction=reduction,
                                            label_smoothing=0.2), (s,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_op_path_matches_eager_fast_path(backend, monkeypatch):
    import pyimgcls.ops.distill as kd
    import pyimgcls.ops.softmax_xent as sx
    s, t, y, go = _make(7, 13, torch.float32, device_for(backend), seed=18, ignore=True)
    calls = []
    monkeypatch.setattr(kd, "_distill_op", lambda *a, _r=kd._distill_op: calls.append("fwd") or _r(*a))
    monkeypatch.setattr(sx, "_xent_backward_op", lambda *a, _r=sx._xent_backward_op: calls.append("bwd") or _r(*a))
    results = []
    for fast in (True, False):
        monkeypatch.setattr(_eager, "ENABLED", fast)
        calls.clear()
        sg = s.clone().requires_grad_()
        with backend_ctx(backend):
            loss = ops.distillation_loss(sg, t, y, reduction="none", label_smoothing=0.1)
        loss.backward(go)
        results.append((loss.detach(), sg.grad))
        assert calls == ([] if fast else ["fwd", "bwd"])
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_opcheck():
    g = torch.Generator().manual_seed(19)
    s = torch.randn(6, 7, generator=g, requires_grad=True)
    t = torch.randn(6, 7, generator=g)
    y = torch.tensor([0, 3, -100, 6, 2, 2])
    for reduction in (0, 1, 2):
        torch.library.opcheck(torch.ops.pyimgcls.distillation_loss.default,
                              (s, t, y, -100, reduction, 0.1, 3.0, 0.5, True, "cpu"))
    torch.library.opcheck(torch.ops.pyimgcls.distillation_loss.default,
                          (s.detach(), t, y.int(), -100, 1, 0.0, 4.0, 1.0, False, "cpu"))


def test_no_grad_skips_gradient_buffer():
    s, t, y, _ = _make(5, 9, torch.float32, torch.device("cpu"), seed=20)
    _, grad, _ = torch.ops.pyimgcls.distillation_loss(s, t, y, -100, 1, 0.0, 4.0, 0.5, False, "cpu")
    assert grad.numel() == 0
    with torch.no_grad():
        ours = ops.distillation_loss(s.requires_grad_(), t, y)
    torch.testing.assert_close(ours, reference.distillation_loss(s.detach(), t, y, 4.0, 0.5, "mean", 0.0, -100))


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_name_the_argument():
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    cases = [
        ((s, torch.randn(4, 6), y), {}, ArgumentValueError, "teacher_logits"),
        ((s, torch.randn(3, 5), y), {}, ArgumentValueError, "teacher_logits"),
        ((s, torch.randn(4, 5, 1), y), {}, ArgumentValueError, "teacher_logits"),
        ((s, t, y), {"temperature": 0.0}, ArgumentValueError, "temperature"),
        ((s, t, y), {"temperature": -1.0}, ArgumentValueError, "temperature"),
        ((s, t, y), {"temperature": float("inf")}, ArgumentValueError, "temperature"),
        ((s, t, y), {"temperature": "4"}, ArgumentTypeError, "temperature"),
        ((s, t, y), {"alpha": 1.5}, ArgumentValueError, "alpha"),
        ((s, t, y), {"alpha": -0.1}, ArgumentValueError, "alpha"),
        ((s, t, y), {"alpha": True}, ArgumentTypeError, "alpha"),
        ((s, t, y), {"reduction": "batchmean"}, ArgumentValueError, "reduction"),
        ((s, t, y), {"label_smoothing": 1.5}, ArgumentValueError, "label_smoothing"),
        ((s, t, y), {"ignore_index": 1.0}, ArgumentTypeError, "ignore_index"),
        ((s, t, y.float()), {}, ArgumentTypeError, "target"),
        ((s, t, y[:3]), {}, ArgumentValueError, "target"),
        ((s[0], t[0], y[:1]), {}, ArgumentValueError, "student_logits"),
        ((s[:, :0], t[:, :0], y), {}, ArgumentValueError, "student_logits"),
        ((s.long(), t, y), {}, ArgumentTypeError, "student_logits"),
        ((s, t.long(), y), {}, ArgumentTypeError, "teacher_logits"),
        (([1.0], t, y), {}, ArgumentTypeError, "student_logits"),
    ]
    for args, kwargs, exc, name in cases:
        with pytest.raises(exc, match=name):
            ops.distillation_loss(*args, **kwargs)


@pytest.mark.parametrize("backend", ["cpu", "triton", "torch"])
def test_out_of_range_target(backend, monkeypatch):
    # triton on a GPU: CUDA tensors, whose targets are checked on the host only on request (ops/distill.py;
    # unchecked, the row is NaN); CPU tensors are always checked
    dev = device_for(backend) if backend == "triton" else torch.device("cpu")
    if dev.type == "cuda":
        monkeypatch.setenv("PYIMGCLS_CHECK_TARGETS", "1")
    s, t = torch.randn(4, 5, device=dev), torch.randn(4, 5, device=dev)
    with backend_ctx(backend):
        with pytest.raises((TargetOutOfRangeError, IndexError), match="out of"):
            ops.distillation_loss(s, t, torch.tensor([0, 5, 1, 1], device=dev))
        with pytest.raises((TargetOutOfRangeError, IndexError), match="out of"):
            ops.distillation_loss(s, t, torch.tensor([0, -2, 1, 1], device=dev))


def test_forward_mode_ad_is_refused():
    import torch.autograd.forward_ad as fwad
    s, t, y, _ = _make(3, 4, torch.float64, torch.device("cpu"), seed=21)
    with fwad.dual_level():
        dual = fwad.make_dual(s, torch.randn_like(s))
        with pytest.raises(NotImplementedError, match="forward-mode"):
            ops.distillation_loss(dual, t, y)


def test_distill_experiment_on_cifar10_format(tmp_path):
    """tools/distill_experiment.py end to end on `--data cifar10:PATH` (a tiny CIFAR-10-format copy
    written here: the python pickle batches, no download): a ResNet-18 teacher trained on it, a LeNet-5
    student alone and with --teacher (the teacher's logits reach the loss), 
    and the summary that the README's table comes from."""
    import importlib.util
    import json
    import os

    import numpy as np

    from pyimgcls.data.datasets import cifar_batch_bytes

    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(cifar_batch_bytes(rng.integers(0, 256, (8, 3072)), rng.integers(0, 10, 8)))
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "distill_experiment.py")
    spec = importlib.util.spec_from_file_location("distill_experiment", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out, js = tmp_path / "exp", tmp_path / "summary.json"
    assert tool.main(["--data", f"cifar10:{tmp_path}", "--seeds", "0", "--epochs", "1", "--teacher-epochs", "1",
                      "--batch-size", "16", "--kd", "3:0.7", "3:1", "--ls-control", "0.2", "--out", str(out),
                      "--json", str(js)]) == 0
    summary = json.loads(js.read_text())
    assert summary["data"] == f"cifar10:{tmp_path}" and summary["train_images"] == 36   # 40 - 4 validation
    assert set(summary["arms"]) == {"alone", "kd_T3_a0.7", "kd_T3_a1", "alone_ls0.2"}
    assert summary["arms"]["kd_T3_a0.7"]["kd_alpha"] == 0.7
    kd = json.loads((out / "lenet5_kd_T3_a0.7_seed0" / "metrics.json").read_text())
    alone = json.loads((out / "lenet5_alone_seed0" / "metrics.json").read_text())
    assert kd["distillation"]["model"] == "resnet18" and kd["distillation"]["dataset"].startswith("cifar10:")
    assert kd["distillation"]["temperature"] == 3.0 and "distillation" not in alone
    assert kd["dataset"] == alone["dataset"] == kd["distillation"]["dataset"] and kd["config"]["batch_size"] == 16
    assert kd["history"][0]["train_loss"] != alone["history"][0]["train_loss"]
    # alpha 1: the loss is T^2 KL(teacher || student) alone, zero if the student's own logits stood in
    # for the teacher's
    pure = json.loads((out / "lenet5_kd_T3_a1_seed0" / "metrics.json").read_text())
    assert pure["history"][0]["train_loss"] > 1e-3
    ls = json.loads((out / "lenet5_alone_ls0.2_seed0" / "metrics.json").read_text())
    assert ls["config"]["label_smoothing"] == 0.2 and "distillation" not in ls
    assert summary["arms"]["alone_ls0.2"]["label_smoothing"] == 0.2
