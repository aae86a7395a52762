"""The CPU GEMM's few-rows path (csrc/cpu/gemm.cpp gemm_few_rows): M <= 16 rows with A's rows and B's
columns contiguous along k (x @ W^T of a linear layer at a small batch), dot products in 4 x 4 register
blocks, k in blocks of 4096. Against float64 and against the packed path (PYIMGCLS_CPU_GEMM_FEW_ROWS=0).
Branches: row tails (M % 4 in 1..3), column tails (N % 4), one and several k blocks (K > 4096: the
accumulate-into-C and epilogue-on-the-last-block branches), bias and activation, strided C, float64,
every ISA build (PYIMGCLS_CPU_ISA), 1 and 2 threads (bit-identical), the fall-backs (M = 17,
a transposed A, K < 64) taking the packed path, and a linear layer through ops.linear with autograd."""
import os

import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import _native, ops

from helpers import assert_close_to_reference, omp_threads

ACTS = {0: lambda t: t, 1: torch.relu, 3: F.silu}


def _gemm(a, bt, bias, act, out=None):
    """C = act(a @ bt.T + bias) through gemm_cpu with B = bt.T (columns contiguous in k)."""
    M, K = a.shape
    N = bt.shape[0]
    c = out if out is not None else torch.full((M, N), float("nan"), dtype=a.dtype)
    _native.C.gemm_cpu(_native.dtype_code(a.dtype), a.data_ptr(), a.stride(0), a.stride(1), bt.data_ptr(),
                       bt.stride(1), bt.stride(0), bias.data_ptr() if bias is not None else 0, c.data_ptr(),
                       c.stride(0), c.stride(1), M, N, K, act)
    return c


def _ref(a, bt, bias, act):
    y = a.double() @ bt.double().T
    if bias is not None:
        y = y + bias.double()
    return ACTS[act](y)


@pytest.mark.parametrize("M,N,K", [(1, 9, 64), (3, 13, 100), (5, 8, 4096), (16, 30, 4097), (7, 21, 9000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_and_packed_path(M, N, K, dtype, monkeypatch):
    gen = torch.Generator().manual_seed(M * 100 + N)
    a = torch.randn(M, K, generator=gen, dtype=dtype)
    bt = torch.randn(N, K, generator=gen, dtype=dtype)
    bias = torch.randn(N, generator=gen, dtype=dtype)
    for act in (0, 1, 3):
        for b in (None, bias):
            ref = _ref(a, bt, b, act)
            y = _gemm(a, bt, b, act)
            assert_close_to_reference(y, ref, scale=K)
            monkeypatch.setenv("PYIMGCLS_CPU_GEMM_FEW_ROWS", "0")
            assert_close_to_reference(_gemm(a, bt, b, act), ref, scale=K)
            monkeypatch.delenv("PYIMGCLS_CPU_GEMM_FEW_ROWS")


def test_strided_c_every_isa_and_threads(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(6, 5000, generator=gen)
    bt = torch.randn(37, 5000, generator=gen)
    bias = torch.randn(37, generator=gen)
    ref = _ref(a, bt, bias, 1)
    outs = []
    for isa in ("generic", "avx2", "avx512"):
        monkeypatch.setenv("PYIMGCLS_CPU_ISA", isa)
        for n in (1, 2):
            with omp_threads(n):
                ct = torch.full((37, 6), float("nan"))
                y = _gemm(a, bt, bias, 1, out=ct.T)  # C with unit row stride and a column stride of 6
                assert_close_to_reference(y, ref, scale=5000)
                outs.append((isa, y.clone()))
    for isa in ("generic", "avx2", "avx512"):
        same = [y for i, y in outs if i == isa]
        assert torch.equal(same[0], same[1]), isa  # 1 and 2 threads: the same bits


def test_fallbacks_take_the_packed_path():
    """M = 17, A with k-stride != 1, and K < 64 are not few-rows shapes: the result equals the packed
    path's bits (PYIMGCLS_CPU_GEMM_FEW_ROWS=0), which it would not if the dot-product path ran."""
    gen = torch.Generator().manual_seed(2)
    cases = [(torch.randn(17, 300, generator=gen), torch.randn(40, 300, generator=gen)),
             (torch.randn(300, 8, generator=gen).T, torch.randn(40, 300, generator=gen)),
             (torch.randn(8, 63, generator=gen), torch.randn(40, 63, generator=gen))]
    for a, bt in cases:
        y = _gemm(a, bt, None, 0)
        os.environ["PYIMGCLS_CPU_GEMM_FEW_ROWS"] = "0"
        try:
            y0 = _gemm(a, bt, None, 0)
        finally:
            del os.environ["PYIMGCLS_CPU_GEMM_FEW_ROWS"]
        assert torch.equal(y, y0)
        assert_close_to_reference(y, _ref(a, bt, None, 0), scale=a.shape[1])
    # and a few-rows shape does take it (different summation order from the packed path)
    a, bt = torch.randn(8, 3000, generator=gen), torch.randn(40, 3000, generator=gen)
    y = _gemm(a, bt, None, 0)
    os.environ["PYIMGCLS_CPU_GEMM_FEW_ROWS"] = "0"
    try:
        assert not torch.equal(y, _gemm(a, bt, None, 0))
    finally:
        del os.environ["PYIMGCLS_CPU_GEMM_FEW_ROWS"]


def test_linear_autograd_small_batch():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 700, generator=gen, requires_grad=True)
    w = torch.randn(50, 700, generator=gen, requires_grad=True)
    b = torch.randn(50, generator=gen, requires_grad=True)
    with pyimgcls.use_backend("cpu"):
        y = ops.linear(x, w, b)
    g = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), g)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    y64 = F.linear(x64, w64, b64)
    rx, rw, rb = torch.autograd.grad(y64, (x64, w64, b64), g.double())
    assert_close_to_reference(y, y64, scale=700)
    assert_close_to_reference(gx, rx, scale=50)
    assert_close_to_reference(gw, rw, scale=3)
    assert_close_to_reference(gb, rb, scale=3)


def test_rank1_outer_product():
    """K == 1 (a linear layer's weight gradient at batch 1) takes the outer-product loop when B's and C's
    rows are unit-stride: every element one product plus bias, exact to float rounding of that product;
    a column-strided C and a small product take the packed path; 1 and 2 threads give the same bits."""
    gen = torch.Generator().manual_seed(4)
    for M, N, strided_c in [(300, 517, False), (300, 517, True), (7, 9, False)]:
        a = torch.randn(M, 1, generator=gen)
        bt = torch.randn(N, 1, generator=gen)
        bias = torch.randn(N, generator=gen)
        for act, b in [(0, None), (1, bias), (3, bias)]:
            outs = []
            for n in (1, 2):
                with omp_threads(n):
                    out = torch.full((N, M), float("nan")).T if strided_c else None
                    outs.append(_gemm(a, bt, b, act, out=out).clone())
            assert torch.equal(outs[0], outs[1])
            assert_close_to_reference(outs[0], _ref(a, bt, b, act), scale=1)
