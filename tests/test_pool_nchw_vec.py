"""NCHW max pooling forward on the CPU, vectorised bodies (csrc/cpu/pool.cpp: MaxFwdNchwVec per
instruction set, max_fwd_nchw_avx512 for float): bit-identical to the scalar walk they replace
(PYIMGCLS_CPU_POOL_NCHW=scalar) — values, NaN payloads, signed zeros and indices — and equal to
PyTorch, on every instruction-set path and through every vector-tail, band and threading branch."""
import pytest
import torch
import torch.nn.functional as F

from pyimgcls import ops

from helpers import backend_ctx, omp_threads

# (kernel, stride, padding, dilation, ceil_mode)
CONFIGS = [
    (2, 2, 0, 1, False),                       # VGG 2x2/2
    (3, 2, 1, 1, False),                       # ResNet stem
    (3, 2, 0, 1, True),                        # AlexNet, ceil-mode window over the edge
    (3, 1, 1, 1, False),                       # stride 1 (unit-stride lanes)
    (2, 1, 0, 1, True),
    (3, 2, 1, 2, False),                       # dilation 2
    ((3, 2), (1, 2), (1, 0), (2, 1), True),    # non-square, row dilation
    ((2, 3), (2, 1), (0, 1), (1, 2), False),   # column dilation at stride 1
    (3, 3, 1, 1, True),                        # stride 3: the scalar walk (not vectorised)
]
# batch 1 odd; OW 17 at stride 2 (a full 16-lane block + a 1-lane tail); OW 32 (full blocks only);
# W 301 (several blocks + tail; at stride 1 a 32 KB band holds ~25 rows, so H 70 is 3+ bands).
SHAPES = [(1, 3, 7, 9), (2, 3, 33, 35), (2, 2, 64, 64), (1, 2, 70, 301)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}


def _ids(cfg):
    return "-".join(str(v).replace(" ", "") for v in cfg)


def _input(shape, dtype, seed=0):
    """Small integers (ties everywhere), -0.0 next to 0.0, +-inf, all--inf patches, and NaNs with
    distinct payloads and signs (so a wrong NaN choice shows in the bits)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, shape, generator=g).to(torch.float32)
    flat = x.view(-1)
    n = flat.numel()
    perm = torch.randperm(n, generator=g)
    flat[perm[: n // 8]] = -0.0
    flat[perm[n // 8: n // 8 + n // 40]] = float("-inf")
    flat[perm[n // 8 + n // 40: n // 8 + n // 40 + n // 200 + 1]] = float("inf")
    if shape[-2] > 6 and shape[-1] > 6:
        x[..., 1:5, 2:6] = float("-inf")   # windows whose every in-bounds tap is -inf: inside,
        x[..., 5:9, :4] = float("-inf")    # at the left edge (padding / dilation: the first in-bounds
        x[..., -4:, -3:] = float("-inf")   # tap is not the window start) and at the bottom-right corner
    nan_at = perm[-(n // 30 + 2):]
    bits = flat.view(torch.int32)
    payload = torch.arange(nan_at.numel(), dtype=torch.int32) * 8191 % 0x3FFFFF
    sign = (torch.arange(nan_at.numel(), dtype=torch.int32) % 2) * -0x80000000
    bits[nan_at] = 0x7FC00000 | (payload << 1 if dtype == torch.bfloat16 else payload) | sign
    if dtype == torch.bfloat16:
        bits[nan_at] = (0x7FC00000 | ((payload % 63 + 1) << 16)) | sign   # payload survives the bf16 cast
    return x.to(dtype)


def _pool(x, cfg, with_indices):
    k, s, p, d, cm = cfg
    with backend_ctx("cpu"), torch.no_grad():
        if with_indices:
            return ops.max_pool2d(x, k, s, p, d, cm, return_indices=True)
        return ops.max_pool2d(x, k, s, p, d, cm), None


def _same_bits(a, b):
    return torch.equal(a.view(_INT_VIEW[a.dtype]), b.view(_INT_VIEW[b.dtype]))


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_vector_bodies_match_the_scalar_walk_bit_for_bit(monkeypatch, isa, dtype, cfg):
    monkeypatch.setenv("PYIMGCLS_CPU_ISA", isa)
    for si, shape in enumerate(SHAPES):
        x = _input(shape, dtype, seed=si)
        for with_indices in (False, True):
            monkeypatch.setenv("PYIMGCLS_CPU_POOL_NCHW", "scalar")
            ref, ref_idx = _pool(x, cfg, with_indices)
            monkeypatch.setenv("PYIMGCLS_CPU_POOL_NCHW", "vector")
            out, idx = _pool(x, cfg, with_indices)
            assert _same_bits(out, ref), (shape, with_indices)
            if with_indices:
                assert torch.equal(idx, ref_idx), shape


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
def test_matches_pytorch_values_indices_and_gradient(dtype, cfg):
    k, s, p, d, cm = cfg
    for si, shape in enumerate(SHAPES[:3]):
        x = _input(shape, dtype, seed=10 + si)
        out, idx = _pool(x, cfg, True)
        ref, ref_idx = F.max_pool2d(x, k, s, p, d, cm, return_indices=True)
        assert torch.equal(torch.isnan(out), torch.isnan(ref)), shape
        assert torch.equal(out.nan_to_num(), ref.nan_to_num()), shape
        assert torch.equal(idx, ref_idx), shape
        # the backward scatters through the forward's indices: exactly PyTorch's gradient
        xg = x.clone().requires_grad_()
        with backend_ctx("cpu"):
            y = ops.max_pool2d(xg, k, s, p, d, cm)
        go = torch.randn(y.shape, generator=torch.Generator().manual_seed(si)).to(dtype)
        y.backward(go)
        if dtype == torch.bfloat16:
            # ours adds in float32 and rounds once (pool.cpp "bfloat16"), PyTorch rounds every add:
            # the reference is the float32 scatter through PyTorch's indices, rounded once
            N, C, H, W = shape
            want = torch.zeros(N, C, H * W).scatter_add_(2, ref_idx.reshape(N, C, -1), go.float().reshape(N, C, -1))
            assert torch.equal(xg.grad, want.reshape(shape).to(dtype)), shape
            continue
        xt = x.clone().requires_grad_()
        F.max_pool2d(xt, k, s, p, d, cm).backward(go)
        assert torch.equal(xg.grad, xt.grad), shape


def test_two_threads_match_one(monkeypatch):
    """Work items are (plane, band of output rows); with 2 threads each computes whole items."""
    cases = [((16, 8, 32, 32), (3, 2, 1, 1, False)), ((2, 3, 70, 301), (3, 1, 1, 1, False)),
             ((1, 3, 112, 112), (3, 2, 1, 1, False)), ((2, 5, 41, 77), (2, 2, 0, 1, True))]
    for dtype in DTYPES:
        for shape, cfg in cases:
            x = _input(shape, dtype, seed=3)
            monkeypatch.setenv("PYIMGCLS_CPU_POOL_NCHW", "scalar")
            with omp_threads(1):
                ref, ref_idx = _pool(x, cfg, True)
                ref_noidx, _ = _pool(x, cfg, False)
            monkeypatch.setenv("PYIMGCLS_CPU_POOL_NCHW", "vector")
            before = torch.get_num_threads()
            torch.set_num_threads(2)
            try:
                with omp_threads(2):
                    out, idx = _pool(x, cfg, True)
                    out_noidx, _ = _pool(x, cfg, False)
            finally:
                torch.set_num_threads(before)
            assert _same_bits(out, ref) and torch.equal(idx, ref_idx), (dtype, shape)
            assert _same_bits(out_noidx, ref_noidx), (dtype, shape)


def test_hand_made_windows_follow_pytorch_rules():
    """2x2/2 windows (row-major scan): NaN wins and the last NaN's index is kept; ties keep the first
    maximum (-0.0 before 0.0 keeps -0.0); an all -inf window gives -inf at its first tap; at 3x3/2
    padding 1 the padding taps are skipped (the index of a corner window is in-bounds)."""
    nan = float("nan")
    ninf = float("-inf")
    row0 = [1.0, nan, 3.0, 3.0, -0.0, 0.0, ninf, ninf] + [0.0] * 16 + [5.0, 5.0]
    row1 = [nan, 5.0, 3.0, 3.0, 0.0, -0.0, ninf, ninf] + [0.0] * 16 + [5.0, 5.0]
    x = torch.tensor([row0, row1]).reshape(1, 1, 2, 26).repeat(1, 2, 1, 1)
    for dtype in DTYPES:
        xd = x.to(dtype)
        out, idx = _pool(xd, (2, 2, 0, 1, False), True)
        assert idx[0, 0, 0, :4].tolist() == [26, 2, 4, 6]
        assert torch.isnan(out[0, 0, 0, 0])
        assert out[0, 0, 0, 2].item() == 0.0 and torch.signbit(out[0, 0, 0, 2])
        assert out[0, 0, 0, 3].item() == float("-inf")
        assert idx[0, 0, 0, 12].tolist() == 24
        ref, ref_idx = F.max_pool2d(xd, 2, 2, return_indices=True)
        assert torch.equal(idx, ref_idx) and torch.equal(out.nan_to_num(), ref.nan_to_num())
        assert torch.equal(torch.signbit(out), torch.signbit(ref))
        out, idx = _pool(xd, (3, 2, 1, 1, False), True)
        ref, ref_idx = F.max_pool2d(xd, 3, 2, 1, return_indices=True)
        assert torch.equal(idx, ref_idx) and torch.equal(out.nan_to_num(), ref.nan_to_num())
        assert int(idx.min()) >= 0


def test_channels_last_and_non_contiguous_inputs():
    x = _input((2, 20, 17, 40), torch.float32, seed=5)
    cases = {
        "channels_last": x.contiguous(memory_format=torch.channels_last),   # the NHWC path
        "sliced_w": x[..., ::2],                                             # copied to NCHW, then vectorised
        "permuted": x.permute(0, 1, 3, 2),
        "offset_view": x[:, 3:11, 1:, 2:],
    }
    for name, xi in cases.items():
        for cfg in ((3, 2, 1, 1, False), (2, 1, 0, 1, True)):
            out, idx = _pool(xi, cfg, True)
            ref, ref_idx = F.max_pool2d(xi, *cfg, return_indices=True)
            assert out.stride() == ref.stride(), name
            assert torch.equal(out.nan_to_num(), ref.nan_to_num()) and torch.equal(idx, ref_idx), name


def test_bad_path_setting_raises(monkeypatch):
    monkeypatch.setenv("PYIMGCLS_CPU_POOL_NCHW", "fast")
    with pytest.raises(ValueError, match="PYIMGCLS_CPU_POOL_NCHW"):
        _pool(torch.randn(1, 1, 4, 4), (2, 2, 0, 1, False), False)
