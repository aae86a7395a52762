"""CUDA study ladder, step by step (csrc/cuda/ladder/, csrc/cuda/sm90/ladder_gemm_wgmma.cu): every GEMM
and convolution step against a float64 reference through pyimgcls.ladder (backend="cuda"), on sizes
that are not multiples of any tile, misaligned and transposed operands, every epilogue, and the
step-specific errors. All tests need a GPU (marked ``cuda``); GEMM step 10 runs only on sm_90."""
import pytest
import torch
import torch.nn.functional as F

from pyimgcls import ladder
from pyimgcls.errors import ArgumentTypeError, ArgumentValueError

from helpers import assert_close_to_reference

pytestmark = pytest.mark.cuda

FP32_GEMM_STEPS = [1, 2, 3, 4, 5, 6, 7]
HALF_GEMM_STEPS = [8, 9, 10]
WGMMA_STEP = 10
FP32_CONV_STEPS = [1, 2, 3]
HALF_CONV_STEPS = [4, 5]
HALF_DTYPES = [torch.float16, torch.bfloat16]

# (M, K, N): 1s, odd sizes straddling the 32 / 64 / 128-wide tiles and the 8 / 16 / 32-deep K slices.
GEMM_SHAPES = [(1, 1, 1), (33, 17, 65), (127, 255, 129), (256, 256, 256), (130, 40, 7)]
# Step 10 (TMA) needs K % 8 == 0 and N % 8 == 0; M is free; partial tiles in every dimension.
WGMMA_SHAPES = [(64, 64, 64), (33, 136, 72), (256, 256, 256), (200, 520, 264), (1, 8, 8)]
# (N, C, H, W, O, KH, KW, stride, padding)
CONV_CASES = [
    (1, 1, 1, 1, 1, 1, 1, 1, 0),
    (2, 3, 7, 9, 5, 3, 3, 1, 1),
    (2, 8, 10, 11, 16, 3, 3, 2, 1),         # C % 8 == 0: the 16-byte gather of step 4
    (1, 16, 9, 9, 70, 1, 1, 1, 0),          # O not a multiple of the 64-channel tile
    (3, 5, 12, 7, 33, 5, 3, (2, 1), (2, 0)),
    (2, 64, 14, 14, 64, 3, 3, 1, 1),        # a ResNet-like layer
]
ACTS = [None, "relu", "relu6"]


def _randn(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).cuda()


def _act(y, activation):
    if activation == "relu":
        return F.relu(y)
    if activation == "relu6":
        return F.relu6(y)
    return y


def _is_sm90():
    return torch.cuda.get_device_capability()[0] == 9


def _shape_id(s):
    return "x".join(map(str, s))


# ----------------------------------------------------------------------------- GEMM
@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=_shape_id)
@pytest.mark.parametrize("step", FP32_GEMM_STEPS)
def test_fp32_gemm_step_matches_reference(step, shape):
    M, K, N = shape
    a, b = _randn((M, K), torch.float32, 1), _randn((K, N), torch.float32, 2)
    out = ladder.matmul(a, b, step=step, backend="cuda")
    assert out.shape == (M, N) and out.dtype == torch.float32 and out.is_cuda
    assert_close_to_reference(out, a.double().cpu() @ b.double().cpu(), scale=K ** 0.5)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=_shape_id)
@pytest.mark.parametrize("step", HALF_GEMM_STEPS[:-1])
def test_half_gemm_step_matches_reference(step, shape, dtype):
    M, K, N = shape
    a, b = _randn((M, K), dtype, 3), _randn((K, N), dtype, 4)
    out = ladder.matmul(a, b, step=step, backend="cuda")
    assert out.shape == (M, N) and out.dtype == dtype
    assert_close_to_reference(out, a.double().cpu() @ b.double().cpu(), torch_same_dtype=a @ b)


@pytest.mark.parametrize("step", FP32_GEMM_STEPS + HALF_GEMM_STEPS[:-1])
def test_gemm_step_misaligned_and_transposed_operands(step):
    # A storage offset of one element defeats every 16-byte vector path (steps 6-9 fall back to their
    # predicated scalar loads); a transposed view is made contiguous by ladder.matmul.
    dtype = torch.float32 if step in FP32_GEMM_STEPS else torch.float16
    M, K, N = 96, 64, 80
    a = _randn((M * K + 1,), dtype, 5)[1:].view(M, K)
    b = _randn((N, K), dtype, 6).t()
    out = ladder.matmul(a, b, step=step, backend="cuda")
    ref = a.double().cpu() @ b.double().cpu()
    if dtype == torch.float32:
        assert_close_to_reference(out, ref, scale=K ** 0.5)
    else:
        assert_close_to_reference(out, ref, torch_same_dtype=a @ b)


@pytest.mark.parametrize("step", FP32_GEMM_STEPS + HALF_GEMM_STEPS[:-1])
def test_gemm_step_empty_k_gives_zeros(step):
    dtype = torch.float32 if step in FP32_GEMM_STEPS else torch.float16
    a, b = torch.empty(5, 0, dtype=dtype, device="cuda"), torch.empty(0, 9, dtype=dtype, device="cuda")
    out = ladder.matmul(a, b, step=step, backend="cuda")
    assert torch.equal(out.cpu(), torch.zeros(5, 9, dtype=dtype))


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("shape", WGMMA_SHAPES, ids=_shape_id)
def test_wgmma_gemm_step_matches_reference(shape, dtype):
    if not _is_sm90():
        pytest.skip("GEMM step 10 (wgmma + TMA) runs only on an sm_90 GPU")
    M, K, N = shape
    a, b = _randn((M, K), dtype, 7), _randn((K, N), dtype, 8)
    out = ladder.matmul(a, b, step=WGMMA_STEP, backend="cuda")
    assert_close_to_reference(out, a.double().cpu() @ b.double().cpu(), torch_same_dtype=a @ b)


def test_wgmma_gemm_step_rejects_what_it_cannot_run():
    a, b = _randn((16, 12), torch.float16, 9), _randn((12, 16), torch.float16, 10)
    if not _is_sm90():
        with pytest.raises(ValueError, match="sm_90|90a"):
            ladder.matmul(a, b, step=WGMMA_STEP, backend="cuda")
        return
    with pytest.raises(ValueError, match="K % 8"):   # K = 12: TMA rows must be 16-byte multiples
        ladder.matmul(a, b, step=WGMMA_STEP, backend="cuda")


def test_gemm_steps_table():
    table = ladder.steps("gemm", "cuda")
    assert [s.number for s in table] == list(range(1, len(table) + 1))
    assert len(table) == WGMMA_STEP
    for s in table:
        want = ("float32",) if s.number in FP32_GEMM_STEPS else ("float16", "bfloat16")
        assert s.dtypes == want, s
        assert s.needs_sm90a == (s.number == WGMMA_STEP)
        assert s.description


@pytest.mark.parametrize("step", [1, 8])
def test_gemm_step_rejects_other_dtypes(step):
    dtype = torch.float16 if step == 1 else torch.float32
    a, b = _randn((4, 4), dtype, 11), _randn((4, 4), dtype, 12)
    with pytest.raises(ArgumentTypeError, match="step"):
        ladder.matmul(a, b, step=step, backend="cuda")
    with pytest.raises(ArgumentValueError, match="step"):
        ladder.matmul(a, b, step=WGMMA_STEP + 1, backend="cuda")


# ----------------------------------------------------------------------------- convolution
def _conv_inputs(case, dtype, seed, with_bias):
    N, C, H, W, O, KH, KW, stride, padding = case
    x = _randn((N, C, H, W), dtype, seed)
    w = _randn((O, C, KH, KW), dtype, seed + 1)
    b = _randn((O,), dtype, seed + 2) if with_bias else None
    return x, w, b, stride, padding


def _conv_check(step, case, dtype, with_bias, activation, channels_last=False):
    x, w, b, stride, padding = _conv_inputs(case, dtype, 20 + step, with_bias)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = ladder.conv2d(x, w, b, stride=stride, padding=padding, step=step, backend="cuda", activation=activation)
    ref = _act(F.conv2d(x.double().cpu(), w.double().cpu(), None if b is None else b.double().cpu(), stride,
                        padding), activation)
    assert y.dtype == dtype and y.shape == ref.shape
    mf = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=mf)
    k = case[1] * case[5] * case[6]
    if dtype == torch.float32:
        assert_close_to_reference(y, ref, scale=k ** 0.5)
    else:
        theirs = _act(F.conv2d(x, w, b, stride, padding), activation)
        assert_close_to_reference(y, ref, torch_same_dtype=theirs)


@pytest.mark.parametrize("bias_act", [(False, None), (True, "relu"), (True, "relu6")], ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=_shape_id)
@pytest.mark.parametrize("step", FP32_CONV_STEPS)
def test_fp32_conv_step_matches_reference(step, case, bias_act):
    _conv_check(step, case, torch.float32, *bias_act)


@pytest.mark.parametrize("bias_act", [(False, None), (True, "relu"), (True, "relu6")], ids=str)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=_shape_id)
@pytest.mark.parametrize("step", HALF_CONV_STEPS)
def test_half_conv_step_matches_reference(step, case, dtype, bias_act):
    _conv_check(step, case, dtype, *bias_act)


@pytest.mark.parametrize("step", FP32_CONV_STEPS + HALF_CONV_STEPS)
def test_conv_step_channels_last_input_and_bias_without_act(step):
    dtype = torch.float32 if step in FP32_CONV_STEPS else torch.float16
    _conv_check(step, (2, 8, 9, 10, 12, 3, 3, 1, 1), dtype, True, None, channels_last=True)


def test_conv_steps_table():
    table = ladder.steps("conv", "cuda")
    assert [s.number for s in table] == list(range(1, len(table) + 1))
    assert len(table) == len(FP32_CONV_STEPS + HALF_CONV_STEPS)
    for s in table:
        fp32 = s.number in FP32_CONV_STEPS
        assert s.dtypes == (("float32",) if fp32 else ("float16", "bfloat16")), s
        assert s.layout == ("nchw" if fp32 else "nhwc")
        assert not s.needs_sm90a


def test_conv_step_rejects_other_dtypes():
    x, w, _, _, _ = _conv_inputs((1, 3, 5, 5, 4, 3, 3, 1, 0), torch.float16, 30, False)
    with pytest.raises(ArgumentTypeError, match="step"):
        ladder.conv2d(x, w, step=1, backend="cuda")
    with pytest.raises(ArgumentTypeError, match="step"):
        ladder.conv2d(x.float(), w.float(), step=4, backend="cuda")
