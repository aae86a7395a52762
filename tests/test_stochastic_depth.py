"""Stochastic depth: ops.stochastic_depth, ops.drop_path_add and nn.StochasticDepth on every backend
against torchvision.ops.stochastic_depth (its code, written out below: torchvision is not importable
here): the same draws for the same seed ("row" and "batch"), 1 / (1 - p) scaling, p = 0 / eval
identity, p = 1 zeros (and NaN for inf inputs, as input * 0), torchvision's errors, layouts, dtypes,
the CPU kernel's threading / blocking branches, gradients (gradcheck, gradgradcheck), opcheck."""

import pytest
import torch

from pyimgcls import nn, ops
from pyimgcls.ops import se as se_ops

from helpers import (BACKENDS, assert_close_to_reference, backend_ctx, device_for, dtypes_for, omp_threads,
                     triton_slow)

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def tv_stochastic_depth(input, p, mode, training=True):
    """torchvision.ops.stochastic_depth (torchvision 0.2x), verbatim apart from the logging call."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ["batch", "row"]:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    if mode == "row":
        size = [input.shape[0]] + [1] * (input.ndim - 1)
    else:
        size = [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


def _skip_dtype(backend, dtype):
    if dtype not in dtypes_for(backend):
        pytest.skip(f"{backend} does not serve {dtype}")


def _rand(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("p", [0.3, 0.8, 1.0])
def test_same_draws_and_values_as_torchvision(backend, dtype, mode, p):
    _skip_dtype(backend, dtype)
    dev = device_for(backend)
    interpreted_bf16 = backend == "triton" and triton_slow() and dtype == torch.bfloat16
    for shape, layout in (((9, 5, 3, 7), torch.channels_last), ((1, 4, 3, 3), torch.contiguous_format),
                          ((7, 11), torch.contiguous_format), ((6, 3, 5), torch.contiguous_format)):
        x = _rand(shape, 1, dtype).to(dev)
        if len(shape) == 4:
            x = x.contiguous(memory_format=layout)
        torch.manual_seed(123)
        want = tv_stochastic_depth(x, p, mode)
        torch.manual_seed(123)
        with backend_ctx(backend):
            got = ops.stochastic_depth(x, p, mode)
        # the same samples dropped and the same scaled values, in x's format
        assert got.stride() == want.stride()
        if interpreted_bf16:
            # the Triton interpreter rounds float32 -> bfloat16 by truncation (the GPU rounds to nearest)
            assert_close_to_reference(got, x.double() * (want.double() / x.double()).nan_to_num(), want)
        else:
            assert torch.equal(got, want), (shape, float((got - want).abs().max()))
        r = _rand(shape, 2, dtype).to(dev)
        torch.manual_seed(7)
        want = r + tv_stochastic_depth(x, p, mode)
        torch.manual_seed(7)
        with backend_ctx(backend):
            got = ops.drop_path_add(x, r, p, mode)
        # one rounding (x * s + r in float32) where torchvision rounds twice
        ref64 = r.double() + (want - r).double() if dtype in (torch.float16, torch.bfloat16) else None
        if ref64 is None:
            torch.testing.assert_close(got, want, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-6)
        else:
            torch.manual_seed(7)
            ref64 = r.double() + tv_stochastic_depth(x.double(), p, mode).to(dev)
            assert_close_to_reference(got, ref64, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_eval_and_p_zero(backend):
    dev = device_for(backend)
    x = _rand((4, 3, 2, 2), 3).float().to(dev)
    r = _rand((4, 3, 2, 2), 4).float().to(dev)
    with backend_ctx(backend):
        assert ops.stochastic_depth(x, 0.5, "row", training=False) is x
        assert ops.stochastic_depth(x, 0.0, "batch") is x
        torch.testing.assert_close(ops.drop_path_add(x, r, 0.5, "row", training=False), x + r, rtol=0, atol=0)
        torch.testing.assert_close(ops.drop_path_add(x, r, 0.0, "row"), x + r, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_p_one_is_input_times_zero(backend):
    dev = device_for(backend)
    x = torch.tensor([[1.0, float("inf")], [-2.0, float("nan")]], device=dev)
    with backend_ctx(backend):
        got = ops.stochastic_depth(x, 1.0, "row")
    assert torch.equal(torch.isnan(got), torch.isnan(x * 0)) and (got[~torch.isnan(got)] == 0).all()


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [(3, 19, 37, 29), (2, 40000)], ids=["4d", "rows-over-one-block"])
def test_cpu_threads_and_blocks(shape, layout):
    """>= 2^15 elements (OpenMP split, 2 threads) and rows longer than one 16384-element block."""
    x = _rand(shape, 5).float()
    if layout == "nhwc" and len(shape) == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    r = _rand(shape, 6).float()
    with omp_threads(2):
        torch.manual_seed(9)
        got = ops.drop_path_add(x, r, 0.5, "row")
    torch.manual_seed(9)
    want = r + tv_stochastic_depth(x, 0.5, "row")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    dev = device_for(backend)
    big = _rand((6, 8, 5, 6), 8).float().to(dev)
    x = big[::2, 1:7, :, ::2]
    r = big.transpose(2, 3)[:3, :6, :5, :3]
    torch.manual_seed(3)
    want = r + tv_stochastic_depth(x, 0.4, "row")
    torch.manual_seed(3)
    with backend_ctx(backend):
        got = ops.drop_path_add(x, r, 0.4, "row")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_gradients(backend):
    shape = (5, 3, 2, 2) if backend == "cpu" else (3, 2, 1, 2)  # the interpreter: few gradcheck launches
    dev = device_for(backend)
    x = _rand(shape, 10).to(dev).requires_grad_()
    r = _rand(shape, 11).to(dev).requires_grad_()
    with backend_ctx(backend):
        torch.manual_seed(1)
        y = ops.drop_path_add(x, r, 0.5, "row")
        g = _rand(shape, 12).to(dev)
        gx, gr = torch.autograd.grad(y, (x, r), g)
        torch.manual_seed(1)
        scale = se_ops._noise_scale(x, 0.5, "row")
        assert torch.equal(gr, g)
        torch.testing.assert_close(gx, g * scale[:, None, None, None], rtol=0, atol=0)

        # fixed draw: gradcheck / gradgradcheck of the op itself (first and second order)
        def f(a, b):
            return se_ops._drop_path_call(a, scale, b, False, backend)
        assert torch.autograd.gradcheck(f, (x, r), fast_mode=backend == "triton")
        if backend == "cpu":
            assert torch.autograd.gradgradcheck(f, (x, r))


def test_opcheck():
    x = _rand((4, 3, 2, 2), 13).float()
    r = _rand((4, 3, 2, 2), 14).float()
    scale = torch.tensor([2.0, 0.0, 2.0, 2.0])
    torch.library.opcheck(se_ops._drop_path_op, (x.requires_grad_(), scale, r.requires_grad_(), False, "cpu"))
    torch.library.opcheck(se_ops._drop_path_op, (x.detach().to(memory_format=torch.channels_last), scale, None, True,
                                                 "cpu"))


def test_module_train_and_eval():
    m = nn.StochasticDepth(0.5, "row")
    assert repr(m) == "StochasticDepth(p=0.5, mode=row)"
    x = _rand((8, 3), 15).float()
    torch.manual_seed(2)
    got = m(x)
    torch.manual_seed(2)
    assert torch.equal(got, tv_stochastic_depth(x, 0.5, "row"))
    m.eval()
    assert m(x) is x


def test_bad_arguments_match_torchvision():
    x = torch.randn(3, 4)
    for fn in (lambda p, mode: ops.stochastic_depth(x, p, mode), lambda p, mode: ops.drop_path_add(x, x, p, mode)):
        with pytest.raises(ValueError, match="drop probability has to be between 0 and 1, but got -0.1"):
            fn(-0.1, "row")
        with pytest.raises(ValueError, match="drop probability has to be between 0 and 1, but got 1.5"):
            fn(1.5, "row")
        with pytest.raises(ValueError, match="mode has to be either 'batch' or 'row', but got col"):
            fn(0.5, "col")
        with pytest.raises(TypeError, match="'p'"):
            fn("0.5", "row")
    with pytest.raises(ValueError, match="'residual'"):
        ops.drop_path_add(x, torch.randn(3, 5), 0.5, "row")
    with pytest.raises(TypeError, match="'residual'"):
        ops.drop_path_add(x, x.double(), 0.5, "row")
    with pytest.raises(TypeError, match="'input'"):
        ops.stochastic_depth(torch.ones(3, dtype=torch.long), 0.5, "row")
    with pytest.raises(ValueError, match="'input'"):
        ops.stochastic_depth(torch.tensor(1.0), 0.5, "row")
    # "batch" mode takes a 0-D tensor, as torchvision
    torch.manual_seed(0)
    got = ops.stochastic_depth(torch.tensor(2.0), 0.5, "batch")
    torch.manual_seed(0)
    assert torch.equal(got, tv_stochastic_depth(torch.tensor(2.0), 0.5, "batch"))
