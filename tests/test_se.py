"""Squeeze-and-excitation: ops.squeeze_excitation and nn.SqueezeExcitation on every backend against a
float64 PyTorch composition of torchvision's SqueezeExcitation (adaptive_avg_pool2d, conv1x1, act,
conv1x1, gate, x * scale): outputs and all five gradients, activation x gate, NCHW / channels_last /
non-contiguous, batch 1, odd C and R, the CPU kernels' threading / blocking / instruction-set
branches, NaN propagation, gradcheck, opcheck, eager vs custom-op path, double backward refused,
state_dict compatibility and bad arguments."""

import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import nn, ops
from pyimgcls.ops import _eager
from pyimgcls.ops import se as se_ops

from helpers import BACKENDS, assert_close_to_reference, backend_ctx, device_for, dtypes_for, omp_threads, triton_slow

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["nchw", "nhwc"]
# (activation, gate, biases)
CASES = [("relu", "sigmoid", True), ("silu", "hardsigmoid", True), ("silu", "sigmoid", False),
         ("relu", "hardsigmoid", False)]


def _case_id(c):
    return f"{c[0]}-{c[1]}-{'bias' if c[2] else 'nobias'}"


def _shapes(backend):
    """(N, C, H, W, R): odd sizes, batch 1. Tiny under the Triton interpreter, but past one 16-wide tile."""
    if backend == "triton" and triton_slow():
        return [(2, 19, 5, 4, 5), (1, 3, 3, 3, 1)]
    return [(3, 37, 5, 7, 9), (1, 5, 3, 1, 3)]


def _layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else x.contiguous()


def _rand(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale


def _params(C, R, seed, bias=True):
    # weights large enough that the gates leave their linear region (hardsigmoid's clamps are reached)
    w1 = _rand((R, C, 1, 1), seed + 1, 2.0 / C ** 0.5)
    b1 = _rand((R,), seed + 2) if bias else None
    w2 = _rand((C, R, 1, 1), seed + 3, 4.0 / R ** 0.5)
    b2 = _rand((C,), seed + 4) if bias else None
    return w1, b1, w2, b2


def torch_se(x, w1, b1, w2, b2, act, gate):
    """torchvision.ops.SqueezeExcitation.forward, written out (torchvision is not importable here)."""
    s = F.adaptive_avg_pool2d(x, 1)
    s = F.conv2d(s, w1, b1)
    s = F.relu(s) if act == "relu" else F.silu(s)
    s = F.conv2d(s, w2, b2)
    s = torch.sigmoid(s) if gate == "sigmoid" else F.hardsigmoid(s)
    return x * s


def torch_se_low(x, w1, b1, w2, b2, act, gate):
    """The same in x's (low-precision) dtype, with the 1x1 convolutions as F.linear (CPU half conv is
    not everywhere): PyTorch's own error at that dtype, for the tolerance rule."""
    s = x.mean((2, 3))
    s = F.linear(s, w1.flatten(1), b1)
    s = F.relu(s) if act == "relu" else F.silu(s)
    s = F.linear(s, w2.flatten(1), b2)
    s = torch.sigmoid(s) if gate == "sigmoid" else F.hardsigmoid(s)
    return x * s[:, :, None, None]


def _skip_dtype(backend, dtype):
    if dtype not in dtypes_for(backend):
        pytest.skip(f"{backend} does not serve {dtype}")


def _run(backend, dtype, layout, shape, case, seed=0, grad=True):
    """(ours: y and grads, reference float64: y and grads, PyTorch in dtype: y and grads)."""
    N, C, H, W, R = shape
    act, gate, bias = case
    dev = device_for(backend)
    x64 = _layout(_rand((N, C, H, W), seed, 2.0), layout)
    params64 = _params(C, R, seed, bias)
    g64 = _layout(_rand((N, C, H, W), seed + 9), layout)

    def leaves(ts, dt, device):
        return [None if t is None else t.to(dt).to(device).requires_grad_() for t in ts]

    ours_in = leaves([x64, *params64], dtype, dev)
    ours_in[0] = ours_in[0].detach().contiguous(memory_format=torch.channels_last if layout == "nhwc" else
                                                torch.contiguous_format).requires_grad_()
    with backend_ctx(backend):
        y = ops.squeeze_excitation(*ours_in, activation=act, gate=gate)
    ref_in = leaves([x64, *params64], torch.float64, "cpu")
    y_ref = torch_se(*ref_in, act, gate)
    low_in = leaves([x64, *params64], dtype, "cpu")
    y_low = torch_se_low(*low_in, act, gate) if dtype in (torch.float16, torch.bfloat16) else None
    if not grad:
        return (y, []), (y_ref, []), (y_low, [])

    def grads(out, ins, g):
        present = [t for t in ins if t is not None]
        got = iter(torch.autograd.grad(out, present, g))
        return [None if t is None else next(got) for t in ins]

    gs = grads(y, ours_in, g64.to(dtype).to(dev))
    gs_ref = grads(y_ref, ref_in, g64)
    gs_low = grads(y_low, low_in, g64.to(dtype)) if y_low is not None else [None] * 5
    return (y, gs), (y_ref, gs_ref), (y_low, gs_low)


def _check(ours, ref, low):
    y, gs = ours
    y_ref, gs_ref = ref
    y_low, gs_low = low
    assert_close_to_reference(y, y_ref, y_low)
    for g, gr, gl in zip(gs, gs_ref, gs_low):
        if gr is None:
            assert g is None
            continue
        # weight gradients are float32 for low-precision x only in the op; the parameters keep their dtype
        assert g.dtype == (y.dtype if gl is None else gl.dtype)
        assert_close_to_reference(g, gr, gl, scale=max(1.0, gr.abs().max().item()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_backward_match_pytorch(backend, dtype, layout, case):
    _skip_dtype(backend, dtype)
    for shape in _shapes(backend):
        ours, ref, low = _run(backend, dtype, layout, shape, case, grad=dtype in (torch.float32, torch.float64) or
                              case == CASES[0])
        y = ours[0]
        assert y.dtype == dtype and y.shape == ref[0].shape
        # the output has x's format, as PyTorch's x * scale
        assert y.is_contiguous(memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format)
        _check(ours, ref, low)


# ----------------------------------------------------------------------------- CPU branches
# The C++ kernel's branches: NCHW planes summed in blocks of 1024 (HW > 1024), NHWC channel blocks of
# 64 (C > 64) and row flushes every 64 rows (HW > 64), the OpenMP split (>= 2^15 elements, 2 threads)
# of the spatial passes, of the squeeze GEMMs (N*C*R >= 2^15) and of the weight
# gradients, and the baseline / AVX2 / AVX-512 bodies. The squeeze products (se.cpp dot_rows /
# axpy_gemm): C and R past whole 16-float / 8-double vectors (the zero-padded tail columns), C = R = 27
# an odd number of whole vectors in both dtypes (the one-vector tile), N = 11 / 3 partial 4-row
# blocks; planes under 16 values (2x2, 3x5: the scalar float64 sums) and, at 2x2 with N*C = 297 >
# 256 planes per work item, a partial last run of planes.
CPU_BIG = [(2, 3, 37, 29, 2), (3, 67, 9, 9, 5), (4, 67, 3, 5, 131), (11, 27, 2, 2, 27)]


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", CPU_BIG, ids=lambda s: "x".join(map(str, s)))
def test_cpu_branches(shape, layout, isa, monkeypatch):
    monkeypatch.setenv("PYIMGCLS_CPU_ISA", isa)
    case = CASES[1] if isa == "avx512" else CASES[0]
    for dtype in (torch.float32, torch.float64):
        with omp_threads(2):
            ours, ref, low = _run("cpu", dtype, layout, shape, case)
        _check(ours, ref, low)


def test_cpu_deterministic_across_threads():
    shape = CPU_BIG[2]
    with omp_threads(1):
        a = _run("cpu", torch.float32, "nhwc", shape, CASES[1])[0]
    with omp_threads(2):
        b = _run("cpu", torch.float32, "nhwc", shape, CASES[1])[0]
    assert torch.equal(a[0], b[0])
    for ga, gb in zip(a[1], b[1]):
        assert torch.equal(ga, gb)


# The squeeze's 1x1 convolutions as GEMMs over the batch (csrc/cpu/se.cpp dot_rows): N = 5 is one full
# 4-sample block and a partial one (its last sample repeated), R = 101 weight rows make 26 row blocks
# (the last partial), C odd; N*C*R = 33835 >= 2^15 takes the OpenMP split with 2 threads.
CPU_GEMM = (5, 67, 3, 3, 101)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cpu_batched_squeeze_gemm(layout):
    results = {}
    for threads in (1, 2):
        with omp_threads(threads):
            results[threads] = _run("cpu", torch.float64, layout, CPU_GEMM, CASES[1])
    ours, ref, low = results[2]
    _check(ours, ref, low)
    # deterministic across thread counts
    (y1, g1), (y2, g2) = results[1][0], results[2][0]
    assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(g1, g2))
    # a sample's output and input gradient do not depend on the batch it runs in (batch 1 vs the
    # partial block of batch 5, where dot_rows repeats it)
    N, C, H, W, R = CPU_GEMM
    x = _layout(_rand((N, C, H, W), 0, 2.0), layout)
    w1, b1, w2, b2 = _params(C, R, 0)
    go = _layout(_rand((N, C, H, W), 9), layout)
    outs = []
    for xs, gs in ((x, go), (x[N - 1:], go[N - 1:])):
        xs = xs.detach().clone().requires_grad_()
        with omp_threads(2), backend_ctx("cpu"):
            y = ops.squeeze_excitation(xs, w1, b1, w2, b2, activation="silu", gate="hardsigmoid")
            gx, = torch.autograd.grad(y, xs, gs)
        outs.append((y[-1], gx[-1]))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_ambiguous_inputs(backend):
    dev = device_for(backend)
    dtype = torch.float32 if backend == "cuda" else torch.float64   # cuda does not serve torch.float64
    w1, b1, w2, b2 = (t.to(dtype).to(dev) for t in _params(6, 3, 5))
    big = _rand((3, 12, 7, 9), 6).to(dtype).to(dev)
    cases = [big[:, ::2, 1:6, ::2],                       # strided slice: neither format
             big[:, :6, :, :1],                            # W == 1
             big.permute(0, 1, 3, 2)[:, :6]]               # transposed plane
    for x in cases:
        with backend_ctx(backend):
            y = ops.squeeze_excitation(x, w1, b1, w2, b2, "silu", "hardsigmoid")
        ref = torch_se(*(t.cpu().double() for t in (x, w1, b1, w2, b2)), "silu", "hardsigmoid")
        assert_close_to_reference(y, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_propagate_as_pytorch(backend):
    dev = device_for(backend)
    _skip_dtype(backend, torch.float64) if backend != "cuda" else None
    dtype = torch.float64 if backend != "cuda" else torch.float32
    w1, b1, w2, b2 = (t.to(dtype).to(dev) for t in _params(4, 2, 7))
    x = _rand((2, 4, 3, 3), 8).to(dtype)
    x[0, 1, 2, 2] = float("nan")
    x[1, 3, 0, 1] = float("inf")
    for act, gate in (("relu", "sigmoid"), ("silu", "hardsigmoid")):
        xr = x.clone().requires_grad_()
        xo = x.clone().to(dev).requires_grad_()
        with backend_ctx(backend):
            y = ops.squeeze_excitation(xo, w1, b1, w2, b2, act, gate)
        ref = torch_se(xr, w1.cpu(), b1.cpu(), w2.cpu(), b2.cpu(), act, gate)
        assert_close_to_reference(y, ref)
        g = torch.ones_like(ref)
        gx, = torch.autograd.grad(y, xo, g.to(dev))
        gr, = torch.autograd.grad(ref, xr, g)
        assert_close_to_reference(gx, gr)


# ----------------------------------------------------------------------------- autograd machinery
@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_float64(backend, layout):
    # the interpreter runs ~9 launches per call: a smaller problem and gradcheck's fast mode there
    shape, C, R = ((2, 5, 3, 2), 5, 3) if backend == "cpu" else ((1, 3, 2, 2), 3, 2)
    dev = device_for(backend)
    x = _layout(_rand(shape, 11).to(dev), layout).requires_grad_()
    ps = [t.to(dev).requires_grad_() for t in _params(C, R, 12)]
    for act, gate in (("relu", "sigmoid"), ("silu", "hardsigmoid")):
        with backend_ctx(backend):
            assert torch.autograd.gradcheck(lambda *a: ops.squeeze_excitation(*a, act, gate), (x, *ps), eps=1e-6,
                                            atol=1e-7, fast_mode=backend == "triton")


def test_opcheck_every_op():
    x = _rand((2, 5, 3, 3), 13).float()
    w1, b1, w2, b2 = (t.float() for t in _params(5, 3, 14))
    w1, w2 = w1.reshape(3, 5), w2.reshape(5, 3)
    torch.library.opcheck(se_ops._se_op, (x.requires_grad_(), w1.requires_grad_(), b1, w2, None, 1, 1, False, "cpu"))
    torch.library.opcheck(se_ops._se_op, (x.detach().to(memory_format=torch.channels_last), w1.detach(), None,
                                          w2, b2, 0, 0, True, "cpu"))
    y, pooled, hidden, z = se_ops._se_op(x.detach(), w1.detach(), b1, w2, b2, 1, 0, False, "cpu")
    torch.library.opcheck(se_ops._se_backward_op, (torch.ones_like(y), x.detach(), w1.detach(), w2, pooled, hidden, z,
                                                   1, 0, False, True, True, False, True, True, "cpu"))


def test_eager_fast_path_matches_custom_ops():
    outs = []
    for enabled in (True, False):
        _eager.ENABLED = enabled
        try:
            outs.append(_run("cpu", torch.float32, "nhwc", (3, 7, 4, 5, 3), CASES[1])[0])
        finally:
            _eager.ENABLED = True
    (ya, ga), (yb, gb) = outs
    assert torch.equal(ya, yb)
    for a, b in zip(ga, gb):
        assert torch.equal(a, b)


@pytest.mark.parametrize("enabled", [True, False], ids=["eager-fast-path", "custom-op"])
def test_double_backward_raises(enabled, monkeypatch):
    monkeypatch.setattr(_eager, "ENABLED", enabled)
    x = _rand((2, 4, 3, 3), 15).requires_grad_()
    ps = [t.requires_grad_() for t in _params(4, 2, 16)]
    y = ops.squeeze_excitation(x, *ps)
    gx, gw1 = torch.autograd.grad(y.pow(2).sum(), (x, ps[0]), create_graph=True)
    with pytest.raises(RuntimeError, match="pyimgcls.squeeze_excitation: double backward"):
        torch.autograd.grad(gx.sum() + gw1.sum(), x)


def test_no_grad_and_partial_grads():
    x = _rand((2, 4, 3, 3), 17)
    w1, b1, w2, b2 = _params(4, 2, 18)
    with torch.no_grad():
        y = ops.squeeze_excitation(x, w1, b1, w2, b2)
    assert not y.requires_grad
    w2.requires_grad_()
    y = ops.squeeze_excitation(x, w1, b1, w2, b2)
    g, = torch.autograd.grad(y.sum(), w2)
    w2r = w2.detach().clone().requires_grad_()
    gr, = torch.autograd.grad(torch_se(x, w1, b1, w2r, b2, "relu", "sigmoid").sum(), w2r)
    assert_close_to_reference(g, gr)


def test_autocast_runs_in_input_dtype():
    x = _rand((2, 4, 3, 3), 19).bfloat16()
    w1, b1, w2, b2 = (t.float() for t in _params(4, 2, 20))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.squeeze_excitation(x, w1, b1, w2, b2)
    assert y.dtype == torch.bfloat16
    ref = torch_se(x.double(), w1.double(), b1.double(), w2.double(), b2.double(), "relu", "sigmoid")
    assert_close_to_reference(y, ref, torch_se_low(x, w1.bfloat16(), b1.bfloat16(), w2.bfloat16(), b2.bfloat16(),
                                                   "relu", "sigmoid"))


def test_batch_zero():
    x = torch.empty(0, 4, 3, 3)
    w1, b1, w2, b2 = (t.float() for t in _params(4, 2, 21))
    y = ops.squeeze_excitation(x, w1, b1, w2, b2)
    assert y.shape == x.shape


# ----------------------------------------------------------------------------- nn module
class _TorchvisionSE(torch.nn.Module):
    """torchvision.ops.SqueezeExcitation as torchvision writes it (its import needs a matching build)."""

    def __init__(self, input_channels, squeeze_channels, activation=torch.nn.ReLU, scale_activation=torch.nn.Sigmoid):
        super().__init__()
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc1 = torch.nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = torch.nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, input):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(input)))))
        return scale * input


@pytest.mark.parametrize("classes", [(torch.nn.ReLU, torch.nn.Sigmoid), (torch.nn.SiLU, torch.nn.Hardsigmoid)])
def test_module_loads_torchvision_state_dict(classes):
    torch.manual_seed(0)
    tv = _TorchvisionSE(24, 7, *classes)
    ours = nn.SqueezeExcitation(24, 7, *classes)
    assert list(ours.state_dict()) == list(tv.state_dict())
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(3, 24, 5, 5).to(memory_format=torch.channels_last)
    assert_close_to_reference(ours(x), tv(x))
    tv.load_state_dict(ours.state_dict(), strict=True)
    # pyimgcls's own ReLU (a torch.nn.ReLU subclass) maps to the same op
    assert nn.SqueezeExcitation(4, 2, nn.ReLU)._act == "relu"


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(2, 4, 3, 3)
    w1, b1, w2, b2 = torch.randn(2, 4, 1, 1), torch.randn(2), torch.randn(4, 2, 1, 1), torch.randn(4)
    se = ops.squeeze_excitation
    cases = [
        (lambda: se("x", w1, b1, w2, b2), TypeError, "'x'"),
        (lambda: se(x.long(), w1, b1, w2, b2), TypeError, "'x'"),
        (lambda: se(x[0], w1, b1, w2, b2), ValueError, "'x'"),
        (lambda: se(x[:, :, :0], w1, b1, w2, b2), ValueError, "'x'"),
        (lambda: se(x, torch.randn(2, 5, 1, 1), b1, w2, b2), ValueError, "'w1'"),
        (lambda: se(x, torch.randn(2, 4, 3, 3), b1, w2, b2), ValueError, "'w1'"),
        (lambda: se(x, w1, torch.randn(3), w2, b2), ValueError, "'b1'"),
        (lambda: se(x, w1, b1, torch.randn(4, 3, 1, 1), b2), ValueError, "'w2'"),
        (lambda: se(x, w1, b1, w2, torch.randn(5)), ValueError, "'b2'"),
        (lambda: se(x, w1.double(), b1, w2, b2), TypeError, "'w1'"),
        (lambda: se(x, w1, b1, w2, b2, activation="gelu"), ValueError, "'activation'"),
        (lambda: se(x, w1, b1, w2, b2, gate="tanh"), ValueError, "'gate'"),
        (lambda: se(x, w1, b1, w2, b2.to("meta")), ValueError, "'b2'"),
        (lambda: nn.SqueezeExcitation(4, 2, torch.nn.GELU), ValueError, "'activation'"),
        (lambda: nn.SqueezeExcitation(4, 2, scale_activation=torch.nn.Tanh), ValueError, "'scale_activation'"),
        (lambda: nn.SqueezeExcitation(4, 0), ValueError, "'squeeze_channels'"),
    ]
    for fn, exc, name in cases:
        with pytest.raises(exc, match=name):
            fn()


def test_module_signatures_match_torchvision():
    import inspect

    def params(cls):
        return [(p.name, p.kind, p.default) for p in inspect.signature(cls.__init__).parameters.values()]
    assert params(nn.SqueezeExcitation) == params(_TorchvisionSE)
    # torchvision.ops.StochasticDepth.__init__(self, p: float, mode: str)
    assert [p.name for p in inspect.signature(nn.StochasticDepth.__init__).parameters.values()] == ["self", "p", "mode"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_weights(backend):
    """Weights and biases that are views (slices of larger tensors) are read by value, not by storage."""
    dev = device_for(backend)
    dtype = torch.float32 if backend == "cuda" else torch.float64   # cuda does not serve torch.float64
    big = _rand((6, 9, 3, 3), 22).to(dtype).to(dev)
    x = _rand((2, 5, 3, 4), 23).to(dtype).to(dev)
    w1, w2 = big[:2, 1:6, 1:2, 1:2], big[1:6, 3:5, 2:, :1]
    b1, b2 = big[0, 0, :2, 0], big[2, ::2, 0, 0][:5]
    with backend_ctx(backend):
        y = ops.squeeze_excitation(x, w1, b1, w2, b2)
    assert_close_to_reference(y, torch_se(*(t.cpu().double() for t in (x, w1, b1, w2, b2)), "relu", "sigmoid"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gate_and_activation_at_their_kinks(backend):
    """z exactly at hardsigmoid's -3 / 3 and hidden exactly 0 (relu's kink): ATen's strict comparisons
    decide the gradient there (hardsigmoid' = 0 at +-3, relu' = 0 at 0)."""
    dev = device_for(backend)
    dtype = torch.float32 if backend == "cuda" else torch.float64
    C, R = 4, 2
    w1 = torch.zeros(R, C, 1, 1, dtype=dtype)
    b1 = torch.tensor([0.0, 1.0], dtype=dtype)            # hidden = [0, 1] exactly
    w2 = torch.zeros(C, R, 1, 1, dtype=dtype)
    w2[:, 1] = 1.0
    b2 = torch.tensor([-4.0, -3.5, 1.5, 2.0], dtype=dtype)  # z = b2 + 1 = [-3, -2.5, 2.5, 3]
    x = _rand((2, C, 2, 3), 24).to(dtype)
    for act, gate in (("relu", "hardsigmoid"), ("silu", "hardsigmoid")):
        ours = [t.clone().to(dev).requires_grad_() for t in (x, w1, b1, w2, b2)]
        ref = [t.clone().requires_grad_() for t in (x, w1, b1, w2, b2)]
        with backend_ctx(backend):
            y = ops.squeeze_excitation(*ours, act, gate)
        yr = torch_se(*ref, act, gate)
        assert_close_to_reference(y, yr)
        g = torch.ones_like(yr)
        for a, b in zip(torch.autograd.grad(y, ours, g.to(dev)), torch.autograd.grad(yr, ref, g)):
            assert_close_to_reference(a, b)
