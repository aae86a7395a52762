"""Float scalars reaching Triton kernels that run on float64 data must arrive at fp64 precision.

On a GPU, Triton passes a plain Python float kernel argument as fp32 (its launcher specialises any
float to "fp32"); the interpreter keeps it at double precision. So a float64 kernel that takes, say,
``eps`` or ``1 / HW`` as a plain float is exact under the interpreter and ~1e-8 off on the GPU: the
first H200 run found batch norm's running statistics (momentum, M / (M - 1)) and squeeze-excitation's
mean (1 / HW) off by 2e-8 to 5e-8 in float64. The convention (triton_kernels/common.py split_f64 /
join_f64): the value goes as two fp32 halves, parameters named ``*_hi`` / ``*_lo``, rebuilt in the
kernel's compute dtype. (A ``tl.float64`` annotation is no way out: under the interpreter the argument
then stays a Python float, and its conversion inside the kernel goes through fp32.)

This test records, under the interpreter, every kernel launch whose tensor arguments include float64
and fails on a float argument bound to any other parameter. Run: pytest tests/test_triton_fp64_scalars.py"""
from __future__ import annotations

import inspect
import os

import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import ops

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") != "1",
                                reason="records launches through the Triton interpreter")


def _fp64_param(param: inspect.Parameter) -> bool:
    return param.name.endswith(("_hi", "_lo"))


@pytest.fixture
def launches(monkeypatch):
    """(kernel name, parameter, annotation) of every float argument given to a float64 launch."""
    from triton.runtime import interpreter
    bad, seen = [], []
    orig = interpreter.InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        sig = inspect.signature(self.fn)
        bound = sig.bind_partial(*args, **{k: v for k, v in kwargs.items() if k in sig.parameters})
        if any(isinstance(v, torch.Tensor) and v.dtype == torch.float64 for v in bound.arguments.values()):
            seen.append(self.fn.__name__)
            for name, v in bound.arguments.items():
                param = sig.parameters[name]
                if isinstance(v, float) and "constexpr" not in str(param.annotation) and not _fp64_param(param):
                    bad.append((self.fn.__name__, name))
        return orig(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", run)
    return bad, seen


def _float64_workload():
    """One call of each float64 Triton path that takes float scalars: batch norm (train with running
    stats, eval, backward), squeeze-excitation forward and backward, cross-entropy with label
    smoothing, distillation loss."""
    g = torch.Generator().manual_seed(0)
    d = dict(dtype=torch.float64)
    x = torch.randn(2, 3, 5, 4, generator=g, **d).requires_grad_()
    w, b = torch.rand(3, generator=g, **d) + 0.5, torch.randn(3, generator=g, **d)
    rm, rv = torch.zeros(3, **d), torch.ones(3, **d)
    with pyimgcls.use_backend("triton"):
        y = ops.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5, activation="relu")
        y.sum().backward()
        ops.batch_norm(x.detach(), rm, rv, w, b, False, 0.1, 1e-5)
        w1, b1 = torch.randn(2, 3, 1, 1, generator=g, **d), torch.randn(2, generator=g, **d)
        w2, b2 = torch.randn(3, 2, 1, 1, generator=g, **d), torch.randn(3, generator=g, **d)
        xs = torch.randn(2, 3, 4, 5, generator=g, **d).requires_grad_()
        ops.squeeze_excitation(xs, w1, b1, w2, b2).sum().backward()
        logits = torch.randn(4, 7, generator=g, **d).requires_grad_()
        t = torch.tensor([0, 3, 6, 2])
        ops.cross_entropy(logits, t, label_smoothing=0.1).backward()
        teacher = torch.randn(4, 7, generator=g, **d)
        ops.distillation_loss(logits, teacher, t, temperature=3.0, alpha=0.3, label_smoothing=0.1).backward()
    return y


def test_float_scalars_of_float64_launches_arrive_in_fp64(launches):
    bad, seen = launches
    _float64_workload()
    # the workload reached the kernels that take float scalars (else this test proves nothing)
    for name in ("_batch_norm_fwd_kernel", "_batch_norm_update_fwd_kernel", "_se_reduce_kernel",
                 "_se_apply_kernel", "_softmax_xent_fwd_kernel", "_distill_fwd_kernel"):
        assert name in seen, f"{name} was not launched on float64 data"
    assert not bad, f"float arguments passed at fp32 precision on a GPU: {sorted(set(bad))}"


def test_float64_batch_norm_and_se_match_float64_references():
    """The annotated scalars keep float64 exactness under the interpreter (the GPU now gets the same)."""
    g = torch.Generator().manual_seed(1)
    d = dict(dtype=torch.float64)
    x = torch.randn(3, 4, 7, 5, generator=g, **d)
    rm, rv = torch.randn(4, generator=g, **d), torch.rand(4, generator=g, **d) + 0.5
    rm2, rv2 = rm.clone(), rv.clone()
    with pyimgcls.use_backend("triton"):
        y = ops.batch_norm(x, rm, rv, None, None, True, 0.3, 1e-3)
    ref = F.batch_norm(x, rm2, rv2, None, None, True, 0.3, 1e-3)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rm, rm2, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(rv, rv2, rtol=1e-14, atol=1e-14)
