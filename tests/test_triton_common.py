"""triton_kernels/common.py: the conv/GEMM epilogue backward shared by both families, split over
rows with a fixed-order reduction. Sizes reach several row splits (and a partial last split) under
the interpreter, against a float64 reference."""
from __future__ import annotations

import pytest
import torch

from pyimgcls.backends import triton_importable

from helpers import device_for

pytestmark = pytest.mark.skipif(not triton_importable(), reason="triton is not importable")


def _reference(grad, out, act, has_bias):
    g = grad.double()
    if act == 1:
        g = torch.where(out.double() <= 0, 0.0, g)
    elif act == 2:
        g = torch.where((out.double() <= 0) | (out.double() >= 6), 0.0, g)
    return g, g.sum(0) if has_bias else None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", [0, 1, 2])
def test_gemm_epilogue_backward_over_several_row_splits(dtype, act, monkeypatch):
    from pyimgcls.triton_kernels import common, gemm
    launches = []
    real = common._bias_act_bwd_kernel

    class Spy:
        def __getitem__(self, grid):
            launches.append(grid)
            return real[grid]

    monkeypatch.setattr(common, "_bias_act_bwd_kernel", Spy())
    g = torch.Generator().manual_seed(0)
    dev = device_for("triton")
    M, N = 1100, 20                       # 1100 rows: 5 splits of 256 rows, the last one partial
    grad = torch.randn(M, N, generator=g, dtype=dtype)
    grad[3, 4] = float("inf")
    out = torch.randn(M, N, generator=g, dtype=dtype) * 4
    out[5, 6] = float("nan")
    grad_d, out_d = grad.to(dev), out.to(dev)
    gp = torch.full_like(grad_d, float("nan")) if act else grad_d
    gb = torch.full((N,), float("nan"), dtype=dtype, device=dev)
    gemm.bias_act_bwd(grad_d, out_d, act, gp, gb)
    ref_gp, ref_gb = _reference(grad, out, act, True)
    torch.testing.assert_close(gp.double().cpu(), ref_gp, equal_nan=True)
    masked = torch.isinf(ref_gp).any(0)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)  # 1100-term sums
    torch.testing.assert_close(gb.double().cpu()[~masked], ref_gb[~masked], **tol)
    assert launches and launches[0][1] > 1, launches   # the multi-split branch ran


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_epilogue_backward_strided_over_splits(channels_last):
    from pyimgcls.triton_kernels import conv
    g = torch.Generator().manual_seed(1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dev = device_for("triton")
    grad = torch.randn(3, 5, 13, 17, generator=g).contiguous(memory_format=fmt)
    out = torch.randn(3, 5, 13, 17, generator=g).contiguous(memory_format=fmt)
    grad_d, out_d = grad.to(dev), out.to(dev)
    gp = torch.full_like(grad_d, float("nan"))
    gb = torch.full((5,), float("nan"), device=dev)
    conv.conv2d_bias_act_bwd(grad_d, out_d, gp, gb, 2)
    ref = torch.where((out <= 0) | (out >= 6), 0.0, grad.double())
    torch.testing.assert_close(gp.double().cpu(), ref)
    # 663 rows x 5 channels: one channel tile, three row splits
    torch.testing.assert_close(gb.double().cpu(), ref.sum((0, 2, 3)), rtol=1e-5, atol=1e-4)
