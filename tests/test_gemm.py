"""GEMM family: ops.matmul, ops.linear, nn.Linear on every backend against a float64 reference."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import _native, nn, ops
from pyimgcls.errors import BackendError

from helpers import BACKENDS, assert_close_to_reference, backend_ctx, device_for, dtypes_for, omp_threads

# (M, K, N): odd sizes, 1s, non-multiples of every tile size.
SHAPES = [(1, 1, 1), (7, 33, 3), (33, 7, 127), (127, 33, 7), (64, 64, 64), (1, 127, 33)]
ACTS = [None, "relu", "relu6"]


def _ref_act(x, activation):
    return {None: x, "relu": F.relu(x), "relu6": F.relu6(x)}[activation]


def _make(shape, dtype, device, gen_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * gen_scale).to(dtype).to(device)


def _skip_dtype(backend, dtype):
    if dtype not in dtypes_for(backend):
        pytest.skip(f"{backend} does not serve {dtype}")


# ----------------------------------------------------------------------------- forward accuracy
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_matches_reference(backend, dtype, shape):
    _skip_dtype(backend, dtype)
    M, K, N = shape
    dev = device_for(backend)
    a, b = _make((M, K), dtype, dev, seed=1), _make((K, N), dtype, dev, seed=2)
    with backend_ctx(backend):
        out = ops.matmul(a, b)
    assert out.dtype == dtype and out.device.type == dev.type and out.shape == (M, N)
    ref = a.double().cpu() @ b.double().cpu()
    assert_close_to_reference(out, ref, torch_same_dtype=a @ b, scale=K ** 0.5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["at", "bt", "abt", "strided"])
def test_matmul_transposed_and_strided_inputs(backend, layout):
    dev = device_for(backend)
    M, K, N = 33, 17, 9
    if layout in ("at", "abt"):
        a = _make((K, M), torch.float32, dev, seed=3).t()
    elif layout == "strided":
        a = _make((M, 2 * K), torch.float32, dev, seed=3)[:, ::2]
    else:
        a = _make((M, K), torch.float32, dev, seed=3)
    if layout in ("bt", "abt"):
        b = _make((N, K), torch.float32, dev, seed=4).t()
    elif layout == "strided":
        b = _make((2 * K, N + 3), torch.float32, dev, seed=4)[::2, 1:N + 1]
    else:
        b = _make((K, N), torch.float32, dev, seed=4)
    assert not (a.is_contiguous() and b.is_contiguous())
    with backend_ctx(backend):
        out = ops.matmul(a, b)
    assert_close_to_reference(out, a.double().cpu() @ b.double().cpu(), scale=K ** 0.5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ACTS, ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("lead", [(1,), (5,), (2, 3), ()], ids=["batch1", "batch5", "3d", "1d"])
def test_linear_matches_reference(backend, activation, with_bias, lead):
    dev = device_for(backend)
    in_f, out_f = 33, 7
    x = _make((*lead, in_f), torch.float32, dev, seed=5)
    w = _make((out_f, in_f), torch.float32, dev, seed=6)
    b = _make((out_f,), torch.float32, dev, seed=7) if with_bias else None
    with backend_ctx(backend):
        out = ops.linear(x, w, b, activation=activation)
    ref = _ref_act(F.linear(x.double().cpu(), w.double().cpu(), None if b is None else b.double().cpu()), activation)
    assert out.shape == ref.shape
    assert_close_to_reference(out, ref, scale=in_f ** 0.5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_linear_low_precision_epilogue(backend, dtype, activation):
    """Bias + activation are applied on the fp32 accumulator; the error stays within 2x PyTorch's."""
    dev = device_for(backend)
    x = _make((17, 65), dtype, dev, gen_scale=2.0, seed=8)
    w = _make((33, 65), dtype, dev, seed=9)
    b = _make((33,), dtype, dev, seed=10)
    with backend_ctx(backend):
        out = ops.linear(x, w, b, activation=activation)
    ref = _ref_act(F.linear(x.double().cpu(), w.double().cpu(), b.double().cpu()), activation)
    theirs = _ref_act(F.linear(x, w, b), activation)
    assert out.dtype == dtype
    assert_close_to_reference(out, ref, torch_same_dtype=theirs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_activation_propagates_nan_like_pytorch(backend):
    dev = device_for(backend)
    x = _make((4, 8), torch.float32, dev, seed=11)
    x[1, 3] = float("nan")
    w = _make((5, 8), torch.float32, dev, seed=12)
    for act in ACTS:
        with backend_ctx(backend):
            out = ops.linear(x, w, None, activation=act)
        ref = _ref_act(F.linear(x.double().cpu(), w.double().cpu()), act)
        assert torch.equal(torch.isnan(out.cpu()), torch.isnan(ref)), act


# ----------------------------------------------------------------------------- backward
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ACTS, ids=str)
def test_linear_backward_matches_reference(backend, activation):
    dev = device_for(backend)
    x = _make((2, 5, 33), torch.float32, dev, seed=13).requires_grad_()
    w = _make((7, 33), torch.float32, dev, seed=14).requires_grad_()
    b = _make((7,), torch.float32, dev, seed=15).requires_grad_()
    go = _make((2, 5, 7), torch.float32, dev, seed=16)
    with backend_ctx(backend):
        out = ops.linear(x, w, b, activation=activation)
    out.backward(go)
    x64, w64, b64 = (t.detach().double().cpu().requires_grad_() for t in (x, w, b))
    _ref_act(F.linear(x64, w64, b64), activation).backward(go.double().cpu())
    for ours, ref in ((x.grad, x64.grad), (w.grad, w64.grad), (b.grad, b64.grad)):
        assert_close_to_reference(ours, ref, scale=10.0)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("activation", ACTS, ids=str)
def test_linear_gradcheck_float64(backend, activation):
    dev = device_for(backend)
    if dev.type == "cuda":
        pytest.skip("gradcheck runs in float64 on CPU tensors")
    x = _make((3, 6), torch.float64, dev, seed=17).requires_grad_()
    w = _make((4, 6), torch.float64, dev, seed=18).requires_grad_()
    b = _make((4,), torch.float64, dev, seed=19).requires_grad_()
    with backend_ctx(backend):
        assert torch.autograd.gradcheck(lambda x, w, b: ops.linear(x, w, b, activation=activation), (x, w, b))
        a = _make((5, 6), torch.float64, dev, seed=20).requires_grad_()
        assert torch.autograd.gradcheck(lambda a, w: ops.matmul(a, w.t()), (a, w))


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_requires_grad(backend):
    dev = device_for(backend)
    x = _make((3, 6), torch.float32, dev, seed=21)
    w = _make((4, 6), torch.float32, dev, seed=22).requires_grad_()
    with backend_ctx(backend):
        ops.linear(x, w, None, activation="relu").sum().backward()
    ref = w.detach().double().cpu().requires_grad_()
    F.relu(F.linear(x.double().cpu(), ref)).sum().backward()
    assert_close_to_reference(w.grad, ref.grad, scale=10.0)


# ----------------------------------------------------------------------------- empty / edge
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_behaves_like_pytorch(backend):
    dev = device_for(backend)
    x = torch.zeros((0, 5), device=dev, requires_grad=True)
    w = _make((3, 5), torch.float32, dev, seed=23).requires_grad_()
    b = _make((3,), torch.float32, dev, seed=24).requires_grad_()
    with backend_ctx(backend):
        out = ops.linear(x, w, b, activation="relu")
    assert out.shape == (0, 3)
    out.sum().backward()
    assert torch.equal(w.grad.cpu(), torch.zeros(3, 5)) and torch.equal(b.grad.cpu(), torch.zeros(3))
    with backend_ctx(backend):
        assert ops.matmul(torch.zeros((4, 0), device=dev), torch.zeros((0, 2), device=dev)).abs().sum() == 0
        out = ops.linear(torch.zeros((2, 0), device=dev), torch.zeros((3, 0), device=dev), b.detach())
    torch.testing.assert_close(out.cpu(), b.detach().cpu().expand(2, 3))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_bad_inputs_raise_clear_errors(backend):
    dev = device_for(backend)
    x, w = torch.randn(4, 5, device=dev), torch.randn(3, 5, device=dev)
    with backend_ctx(backend):
        with pytest.raises(TypeError, match="'input'"):
            ops.linear(x.long(), w)
        with pytest.raises(TypeError, match="'weight'"):
            ops.linear(x, w.double())
        with pytest.raises(ValueError, match="'weight'"):
            ops.linear(x, torch.randn(3, 4, device=dev))
        with pytest.raises(ValueError, match="'weight'"):
            ops.linear(x, torch.randn(1, 3, 5, device=dev))
        with pytest.raises(ValueError, match="'bias'"):
            ops.linear(x, w, torch.randn(4, device=dev))
        with pytest.raises(ValueError, match="'activation'"):
            ops.linear(x, w, activation="gelu")
        with pytest.raises(ValueError, match="'b'"):
            ops.matmul(x, torch.randn(4, 3, device=dev))
        with pytest.raises(ValueError, match="'a'"):  # batch dimensions that do not broadcast
            ops.matmul(torch.randn(2, 4, 5, device=dev), torch.randn(3, 5, 2, device=dev))
        with pytest.raises(TypeError, match="'a'"):
            ops.matmul(torch.ones(2, 2, dtype=torch.int32, device=dev), torch.ones(2, 2, device=dev))
        with pytest.raises(TypeError, match="'weight'"):
            ops.linear(x, [[1.0] * 5] * 3)
    # errors are also RuntimeErrors, as PyTorch raises for the same calls
    with pytest.raises(RuntimeError):
        ops.linear(x, torch.randn(3, 4, device=dev))


def test_device_mismatch_and_backend_errors():
    x, w = torch.randn(4, 5), torch.randn(3, 5)
    with pytest.raises(ValueError, match="backend"):
        pyimgcls.set_backend("cudnn")
    with pyimgcls.use_backend("cuda"), pytest.raises(BackendError, match="cuda"):
        ops.linear(x, w)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="'weight'"):
            ops.linear(x, w.cuda())
        with pyimgcls.use_backend("cpu"), pytest.raises(BackendError, match="cpu"):
            ops.linear(x.cuda(), w.cuda())
    assert pyimgcls.get_backend() == "auto"
    with pyimgcls.use_backend("torch"):
        assert pyimgcls.get_backend() == "torch"
    assert pyimgcls.get_backend() == "auto"
    assert {"cpu", "torch"} <= set(pyimgcls.available_backends())


def test_auto_never_picks_torch_on_cpu(monkeypatch):
    calls = []
    real = _native.C.gemm_cpu
    monkeypatch.setattr(_native.C, "gemm_cpu", lambda *a: calls.append(a) or real(*a))
    a, b = torch.randn(2, 3), torch.randn(3, 4)
    torch.testing.assert_close(ops.matmul(a, b), a @ b)
    assert len(calls) == 1


# ----------------------------------------------------------------------------- torch integration
def test_opcheck_every_gemm_op():
    a, b, bias = torch.randn(5, 7), torch.randn(7, 3), torch.randn(3)
    torch.library.opcheck(torch.ops.pyimgcls.gemm.default, (a, b, bias, 1, "cpu"))
    torch.library.opcheck(torch.ops.pyimgcls.gemm.default, (a.requires_grad_(), b.t().contiguous().t(), None, 2, "cpu"))
    out = torch.relu(a.detach() @ b + bias)
    torch.library.opcheck(torch.ops.pyimgcls.gemm_backward.default,
                          (torch.randn(5, 3), a.detach(), b, out, True, 1, "cpu", True, True))


def test_autocast_runs_in_autocast_dtype():
    x, w, b = torch.randn(4, 8), torch.randn(3, 8), torch.randn(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = ops.linear(x, w, b)
        theirs = F.linear(x, w, b)
    assert ours.dtype == theirs.dtype == torch.bfloat16


def test_torch_compile_fullgraph_mlp():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(nn.Linear(12, 16, activation="relu"), nn.Linear(16, 8, activation="relu6"),
                              nn.Linear(8, 3))
    x = torch.randn(5, 12)
    eager = mlp(x)
    compiled = torch.compile(mlp, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager)


# ----------------------------------------------------------------------------- nn.Linear
def test_nn_linear_state_dict_interchangeable_with_torch():
    torch.manual_seed(0)
    ref = torch.nn.Linear(10, 4)
    ours = nn.Linear(10, 4, activation="relu")
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert set(ours.state_dict()) == {"weight", "bias"}
    x = torch.randn(3, 10)
    torch.testing.assert_close(ours(x), F.relu(ref(x)))
    assert "activation='relu'" in repr(ours)
    with pytest.raises(ValueError, match="activation"):
        nn.Linear(3, 4, activation="tanh")
    no_bias = nn.Linear(10, 4, bias=False)
    assert no_bias.bias is None and no_bias(x).shape == (3, 4)


# ----------------------------------------------------------------------------- CPU ISA dispatch
@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_cpu_isa_paths_agree(isa):
    code = (
        "import torch, pyimgcls; from pyimgcls import ops, _native;"
        "a=torch.randn(67,131,dtype=torch.float64); b=torch.randn(131,45,dtype=torch.float64);"
        "e32=(ops.matmul(a.float(), b.float()).double()-a@b).abs().max().item();"
        "e64=(ops.matmul(a.t().contiguous().t(), b)-a@b).abs().max().item();"
        "print(_native.C.gemm_isa(), e32, e64)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYIMGCLS_CPU_ISA": isa}, timeout=120)
    assert res.returncode == 0, res.stderr
    used, e32, e64 = res.stdout.split()
    assert used in ("generic", "avx2", "avx512")
    assert float(e32) < 1e-3 and float(e64) < 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_activation_backward_select_semantics_like_pytorch(backend, activation):
    """ATen's relu/relu6 backward is a select on the output: a NaN output passes its gradient
    through, and an inf gradient at a masked (dropped) position becomes 0, not NaN."""
    dev = device_for(backend)
    w = torch.eye(4, dtype=torch.float32, device=dev)
    x = torch.tensor([[float("nan"), -1.0, 2.0, 7.0]], device=dev)
    go = torch.tensor([[1.0, float("inf"), 3.0, 5.0]], device=dev)
    b = torch.zeros(4, device=dev, requires_grad=True)
    with backend_ctx(backend):
        ops.linear(x, w, b, activation=activation).backward(go)
    ref_b = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    _ref_act(F.linear(x.double().cpu(), w.double().cpu(), ref_b), activation).backward(go.double().cpu())
    assert torch.equal(b.grad.cpu().double(), ref_b.grad), (b.grad, ref_b.grad)


# ----------------------------------------------------------------------------- CPU K blocking
# csrc/cpu/gemm.cpp splits K into ceil(K / kc) equal blocks, kc per instruction set and dtype (avx512:
# 768 fp32 / 512 fp64; avx2: 1024 / 384; generic: 512 / 512): the first block writes C, later blocks
# add to it, and only the last applies bias + activation. N is blocked at NC = 2048 and each thread's
# rows at MC (48-72); OpenMP runs from 48^3 multiply-adds when omp_get_max_threads() > 1 (the system
# libgomp's count, which torch.set_num_threads does not reach, so the tests set it). Every other test
# has K <= 127 (one block). K = 2501 gives 3-7 blocks on every path, the last one shorter; the second
# shape also has two N blocks (N = 2111 > 2048) and K = 1100 (2-3 blocks); both have M and N edge tiles.
ISAS = ["generic", "avx2", "avx512"]
K_BLOCKED = [(157, 2501, 45), (31, 1100, 2111)]


def _use_isa(monkeypatch, isa):
    """PYIMGCLS_CPU_ISA is read on every call (csrc/cpu/isa.h); skip a path this CPU lacks."""
    monkeypatch.setenv("PYIMGCLS_CPU_ISA", isa)
    if _native.C.gemm_isa() != isa:
        pytest.skip(f"this CPU has no {isa}")


@pytest.mark.parametrize("shape", K_BLOCKED, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("isa", ISAS)
def test_cpu_k_blocking_matches_reference(isa, dtype, shape, monkeypatch):
    """matmul (B a transposed view, packed through its strides) and linear + bias + relu with K well
    above the K block and not a multiple of it, on 2 threads, against float64."""
    _use_isa(monkeypatch, isa)
    M, K, N = shape
    a = _make((M, K), dtype, "cpu", seed=31)
    w = _make((N, K), dtype, "cpu", seed=32)
    b = _make((N,), dtype, "cpu", gen_scale=10.0, seed=33)  # large enough that relu drops some outputs
    with omp_threads(2), backend_ctx("cpu"):
        mm = ops.matmul(a, w.t())
        lin = ops.linear(a, w, b, activation="relu")
    ref = a.double() @ w.double().t()
    assert_close_to_reference(mm, ref, torch_same_dtype=a @ w.t(), scale=K ** 0.5)
    ref_lin = F.relu(ref + b.double())
    assert 0 < int((ref_lin == 0).sum()) < ref_lin.numel()
    assert_close_to_reference(lin, ref_lin, torch_same_dtype=F.relu(F.linear(a, w, b)), scale=K ** 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("isa", ISAS)
def test_cpu_k_blocking_in_linear_backward(isa, dtype, monkeypatch):
    """A batch of 2501 rows: the weight gradient (grad^T @ input) reduces over the batch, so its GEMM
    has K = 2501; the bias gradient sums 5 row chunks of 512 on 2 threads."""
    _use_isa(monkeypatch, isa)
    x = _make((2501, 45), dtype, "cpu", seed=34).requires_grad_()
    w = _make((37, 45), dtype, "cpu", seed=35).requires_grad_()
    b = _make((37,), dtype, "cpu", seed=36).requires_grad_()
    go = _make((2501, 37), dtype, "cpu", seed=37)
    with omp_threads(2), backend_ctx("cpu"):
        ops.linear(x, w, b, activation="relu").backward(go)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    F.relu(F.linear(x64, w64, b64)).backward(go.double())
    for name, ours, ref in (("input", x.grad, x64.grad), ("weight", w.grad, w64.grad), ("bias", b.grad, b64.grad)):
        try:
            assert_close_to_reference(ours, ref, scale=2501 ** 0.5)
        except AssertionError as e:
            raise AssertionError(f"grad {name}: {e}") from None
