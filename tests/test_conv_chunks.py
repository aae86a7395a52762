"""CPU conv forward and dgrad with the (group, chunk of images) units spread over the OpenMP team in one
parallel region (csrc/cpu/conv.cpp for_chunks): each unit runs on one thread end to end, so 2 threads
must give the same bits as 1 and both match float64. Shapes are above kSmallConvMacs (2^22
multiply-adds: below it everything runs on one thread) and outside the Winograd rules (C < 32 or
stride 2), with several chunks (16x16 outputs: one image per 256-row chunk; a one-byte chunk budget
gives one image per chunk on small maps). Branches: channel-major GEMM (NCHW), the few-output-channel
NCHW orientation, pixel-major (channels_last) with im2col and with the input read in place (1x1),
groups (units = groups x chunks), bias + residual + activation, fewer units than threads (batch 1),
and the bfloat16 conv."""
import pytest
import torch
import torch.nn.functional as F

from pyimgcls import backends

from helpers import assert_close_to_reference, omp_threads

K = backends.kernels("cpu", "conv")

# (name, N, C, H, W, O, k, stride, pad, groups, channels_last)
CASES = [
    ("nchw_s2", 6, 16, 32, 32, 40, 3, 2, 1, 1, False),
    ("nchw_few_out", 6, 24, 16, 16, 8, 3, 1, 1, 1, False),
    ("nhwc_im2col", 5, 16, 16, 16, 48, 3, 1, 1, 1, True),
    ("nhwc_1x1_in_place", 7, 64, 16, 16, 96, 1, 1, 0, 1, True),
    ("groups2", 4, 32, 16, 16, 64, 3, 2, 1, 2, False),
    ("batch1", 1, 16, 64, 64, 32, 3, 1, 1, 1, False),
]


def _t(shape, cl, gen):
    t = torch.randn(*shape, generator=gen)
    return t.contiguous(memory_format=torch.channels_last) if cl else t


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_and_dgrad_two_threads_bit_identical(case, monkeypatch):
    _, N, C, H, W, O, k, st, p, g, cl = case
    gen = torch.Generator().manual_seed(0)
    x = _t((N, C, H, W), cl, gen)
    w = torch.randn(O, C // g, k, k, generator=gen)
    b = torch.randn(O, generator=gen)
    OH, OW = (H + 2 * p - k) // st + 1, (W + 2 * p - k) // st + 1
    res = _t((N, O, OH, OW), cl, gen)
    gout = _t((N, O, OH, OW), cl, gen)
    ref = torch.relu(F.conv2d(x.double(), w.double(), b.double(), st, p, 1, g) + res.double())
    ref_dx = torch.nn.grad.conv2d_input(x.shape, w.double(), gout.double(), st, p, 1, g)
    results = []
    for chunk in (None, "1"):
        if chunk:
            monkeypatch.setenv("PYIMGCLS_CPU_CONV_CHUNK_BYTES", chunk)
        for n in (1, 2):
            with omp_threads(n):
                y = K.conv2d(x, w, b, res, (st, st), (p, p, p, p), (1, 1), g, 1)
                dx = K.dgrad(gout, x, w, (st, st), (p, p, p, p), (1, 1), g)
            assert_close_to_reference(y, ref, scale=C // g * k * k)
            assert_close_to_reference(dx, ref_dx, scale=O // g * k * k)
            results.append((y, dx))
    for y, dx in results[1:]:
        assert torch.equal(y, results[0][0]) and torch.equal(dx, results[0][1])


def test_bf16_conv_keeps_bf16_gemms_in_worker_threads():
    """A bfloat16 conv with its chunks on two threads (float32 copies, bf16 GEMMs in the workers) equals
    the one-thread result bit for bit and float64 to bf16 accuracy. (Whether a worker ran the bf16 or
    the float32 GEMM is not visible here: on bf16-valued inputs both give the same sums.)"""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 16, 32, 32, generator=gen).to(torch.bfloat16)
    w = (torch.randn(40, 16, 3, 3, generator=gen) * 0.2).to(torch.bfloat16)
    outs = []
    for n in (1, 2):
        with omp_threads(n):
            outs.append(K.conv2d(x, w, None, None, (2, 2), (1, 1, 1, 1), (1, 1), 1, 0))
    assert torch.equal(outs[0], outs[1])
    ref = F.conv2d(x.double(), w.double(), None, 2, 1)
    torch.testing.assert_close(outs[0].double(), ref, rtol=2e-2, atol=2e-2)
