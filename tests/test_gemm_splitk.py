"""CUDA GEMM split-K and its launch plan (csrc/cuda/gemm.h gemm_plan, exposed as _C.gemm_plan_cuda in
every build, CPU-only included; pyimgcls/backends/cuda/gemm.py plan_gemm / plan_bias_act_bwd).

Without a GPU: the plan's choices (split count, CTAs, K ranges, scratch) and the backend module's
glue (arguments given to recorded launchers). With a GPU (marked cuda): the split-K kernels and
their reduction against float64, determinism, and the unsplit path on the same shapes."""
import math

import pytest
import torch

from pyimgcls import _native
from pyimgcls.backends.cuda import gemm as mod

from helpers import assert_close_to_reference

SMS = 132  # H100 SXM / H200
HEAD_M = [32, 64, 128, 256]
HEAD_K = [2048, 4096, 9216]
TC_DTYPES = [torch.float16, torch.bfloat16]
ALL_DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _meta(*shape, dtype=torch.float16):
    return torch.empty(*shape, dtype=dtype, device="meta")


def _linear_operands(M, N, K, dtype, device="meta"):
    """nn.Linear's GEMM: a = x [M, K], b = w^T (w [N, K], so b is column-major), bias [N]."""
    x = torch.empty(M, K, dtype=dtype, device=device)
    w = torch.empty(N, K, dtype=dtype, device=device)
    return x, w.t(), torch.empty(N, dtype=dtype, device=device)


def _tiles(plan, M, N):
    tm, tn, _ = plan["tile"]
    return math.ceil(M / tm) * math.ceil(N / tn)


def _check_k_ranges(plan, K):
    """Every split's K range starts on a K tile, all but the last span exactly k_chunk (a multiple of
    the K tile), none is empty, and together they cover [0, K) once, in order. One split: all of K."""
    ranges, tk, chunk = plan["k_ranges"], plan["tile"][2], plan["k_chunk"]
    assert len(ranges) == plan["splits"]
    if plan["splits"] == 1:
        assert ranges == [(0, K)] and chunk == K
        return
    assert chunk % tk == 0 and chunk > 0
    assert ranges[0][0] == 0 and ranges[-1][1] == K
    for (b0, e0), (b1, _) in zip(ranges, ranges[1:]):
        assert e0 == b1
    for i, (b, e) in enumerate(ranges):
        assert b % tk == 0 and b % chunk == 0
        assert 0 < e - b <= chunk
        if i < len(ranges) - 1:
            assert e - b == chunk


# ----------------------------------------------------------------------------- plan: split choice
def test_plan_exists_without_cuda_kernels():
    """The plan is CUDA-free: it is there whether or not the launchers were compiled."""
    assert callable(_native.C.gemm_plan_cuda) and callable(_native.C.bias_act_bwd_plan_cuda)
    assert hasattr(_native.C, "gemm_cuda") == _native.cuda_kernels_compiled()


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("M", HEAD_M)
@pytest.mark.parametrize("K", HEAD_K)
def test_classifier_heads_are_split_to_cover_the_sms(dtype, M, K):
    """M = 32..256, N = 1000: 16..64 output tiles for 132 SMs. Split-K brings the main kernel to at
    least one CTA per SM and at most ~2 per SM (plus one tile's worth of rounding)."""
    N = 1000
    plan = mod.plan_gemm(*_linear_operands(M, N, K, dtype), 1, sm_count=SMS)
    tiles = _tiles(plan, M, N)
    assert tiles < SMS
    assert plan["splits"] > 1 and plan["launches"] == 2
    main = tiles * plan["splits"]
    assert SMS <= main <= 2 * SMS + tiles
    reduce_ctas = math.ceil(M * math.ceil(N / 4) / 256)
    assert plan["ctas"] == main + reduce_ctas
    assert plan["tensor_cores"] == (dtype != torch.float32)
    name = "gemm_fwd_kernel" if dtype != torch.float32 else "gemm_simt_fwd_kernel"
    ctype = {torch.float16: "__half", torch.bfloat16: "__nv_bfloat16", torch.float32: "float"}[dtype]
    # x row-major and w^T column-major: both read along K; the last template argument is SPLIT
    assert plan["kernel"].startswith(f"{name}<{ctype}, ")
    assert plan["kernel"].split(" + ")[0].endswith(", true, true, true>")
    assert plan["kernel"].endswith(f" + gemm_splitk_reduce_kernel<{ctype}>")
    assert plan["scratch"] == plan["splits"] * M * math.ceil(N / 8) * 8
    _check_k_ranges(plan, K)


@pytest.mark.parametrize("sms", [78, 108, 132, 144])
def test_split_count_follows_the_sm_count(sms):
    M, N, K = 32, 1000, 9216
    plan = mod.plan_gemm(*_linear_operands(M, N, K, torch.float16), sm_count=sms)
    tiles = _tiles(plan, M, N)
    assert sms <= tiles * plan["splits"] <= 2 * sms + tiles
    _check_k_ranges(plan, K)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("MNK", [(4096, 4096, 4096), (1024, 4096, 9216), (2048, 1000, 2048), (1024, 1000, 4096),
                                 (8192, 8192, 64)], ids=lambda s: "x".join(map(str, s)))
def test_large_outputs_keep_the_single_kernel(dtype, MNK):
    M, N, K = MNK
    a, b = _meta(M, K, dtype=dtype), _meta(K, N, dtype=dtype)
    plan = mod.plan_gemm(a, b, sm_count=SMS)
    assert plan["splits"] == 1 and plan["launches"] == 1
    assert " + " not in plan["kernel"] and plan["kernel"].endswith(", false>")
    assert plan["ctas"] == _tiles(plan, M, N) >= SMS
    assert plan["scratch"] == 0 and plan["k_ranges"] == [(0, K)] and plan["k_chunk"] == K


def test_tile_choice_is_unchanged_for_unsplit_shapes():
    """The tile ladder of the single-kernel path: 128x128 once it covers the SMs, then 64x128, then 64x64."""
    def tile(M, N, dtype=torch.float16):
        return mod.plan_gemm(_meta(M, 64, dtype=dtype), _meta(64, N, dtype=dtype), sm_count=SMS)["tile"]
    assert tile(1536, 1536) == (128, 128, 32)   # 144 tiles of 128x128
    assert tile(1024, 1536) == (64, 128, 32)    # 96 of 128x128, 192 of 64x128
    assert tile(1024, 1024) == (64, 64, 32)     # 64 of 128x128, 128 of 64x128
    assert tile(1536, 1536, torch.float32) == (128, 128, 8)
    assert tile(1024, 1024, torch.float32) == (64, 64, 8)


def test_short_k_is_not_split():
    """Each split keeps at least 128 elements of K (4 tensor-core K tiles, 16 SIMT ones)."""
    for dtype in ALL_DTYPES:
        for K, splits in [(1, 1), (127, 1), (128, 1), (255, 2), (256, 2), (384, 3)]:
            plan = mod.plan_gemm(*_linear_operands(32, 1000, K, dtype), sm_count=SMS)
            assert plan["splits"] == splits, (dtype, K, plan)
            _check_k_ranges(plan, K)
    plan = mod.plan_gemm(_meta(1, 0), _meta(0, 1000), sm_count=SMS)
    assert plan["splits"] == 1 and plan["k_ranges"] == [(0, 0)]


def test_split_count_is_capped_at_64():
    plan = mod.plan_gemm(_meta(1, 1 << 20), _meta(1 << 20, 1), sm_count=SMS)
    assert plan["splits"] == 64 and plan["ctas"] == 64 + 1
    _check_k_ranges(plan, 1 << 20)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("MNK", [(1, 1, 4099), (7, 33, 1000), (33, 1001, 2049), (127, 999, 9215), (64, 64, 129),
                                 (256, 1000, 4096), (1, 1000, 65537)], ids=lambda s: "x".join(map(str, s)))
def test_k_ranges_are_whole_k_tiles_and_cover_k(dtype, MNK):
    M, N, K = MNK
    plan = mod.plan_gemm(_meta(M, K, dtype=dtype), _meta(K, N, dtype=dtype), sm_count=SMS)
    _check_k_ranges(plan, K)
    if plan["splits"] > 1:
        assert plan["k_chunk"] >= 128
        assert plan["scratch"] == plan["splits"] * M * math.ceil(N / 8) * 8
    else:
        assert plan["scratch"] == 0


def test_empty_outputs_launch_nothing():
    for M, N in [(0, 1000), (32, 0)]:
        plan = mod.plan_gemm(_meta(M, 2048), _meta(2048, N), sm_count=SMS)
        assert plan["launches"] == 0 and plan["ctas"] == 0 and plan["scratch"] == 0


# ----------------------------------------------------------------------------- plan: kernel choice
def test_misaligned_or_odd_strided_16bit_operands_take_the_simt_kernel_split():
    """A view one element into its storage (2-byte aligned) or with a leading dimension that is not a
    multiple of 8 cannot be copied by 16-byte cp.async: the SIMT kernel, still split."""
    store = _meta(32 * 2048 + 1)
    x = store[1:].view(32, 2048)                        # storage offset 1: misaligned
    w = _meta(1000, 2048)
    plan = mod.plan_gemm(x, w.t(), sm_count=SMS)
    assert not plan["tensor_cores"] and plan["tile"] == (64, 64, 8)
    assert plan["kernel"].startswith("gemm_simt_fwd_kernel<__half, SimtConfig<64, 64, 1>, true, true, true>")
    assert plan["splits"] > 1 and not plan["vectorized"]  # x is 2-byte aligned: scalar loads of A
    _check_k_ranges(plan, 2048)
    x = _meta(32, 2052)[:, :2050]                       # row stride 2052 elements, 8-byte aligned rows
    plan = mod.plan_gemm(x, _meta(2050, 1000), sm_count=SMS)
    assert not plan["tensor_cores"] and plan["splits"] > 1
    assert plan["vectorized"]                           # 4-wide (8-byte) loads of both operands


def test_tensor_core_layouts_and_vector_flags():
    x, w = _meta(32, 2048), _meta(1000, 2048)
    plan = mod.plan_gemm(x.t().contiguous().t(), w.t().contiguous(), sm_count=SMS)  # A column-, B row-major
    assert plan["tensor_cores"] and plan["vectorized"]
    assert plan["kernel"].startswith("gemm_fwd_kernel<__half, TcConfig<64, 64, 2, 2, 4, 4>, false, false, true>")
    plan = mod.plan_gemm(_meta(4096, 64, dtype=torch.float32)[:, ::2], _meta(32, 4096, dtype=torch.float32),
                         sm_count=SMS)
    assert not plan["tensor_cores"] and not plan["vectorized"]  # A has no unit stride


def test_meta_fake_and_cpu_tensors_plan_alike():
    from torch._subclasses.fake_tensor import FakeTensorMode
    M, N, K = 64, 1000, 4096
    cpu = mod.plan_gemm(*_linear_operands(M, N, K, torch.float16, device="cpu"), 2, sm_count=SMS)
    meta = mod.plan_gemm(*_linear_operands(M, N, K, torch.float16), 2, sm_count=SMS)
    with FakeTensorMode():
        fake = mod.plan_gemm(*_linear_operands(M, N, K, torch.float16, device="cpu"), 2, sm_count=SMS)
    assert cpu == meta == fake
    assert cpu["splits"] > 1
    # Without a GPU the plan assumes the nominal SM count.
    assert mod.plan_gemm(*_linear_operands(M, N, K, torch.float16)) == meta
    assert mod.NOMINAL_SM_COUNT == SMS


def test_plan_refuses_bad_arguments():
    a, b = _meta(32, 64), _meta(64, 16)
    with pytest.raises(ValueError, match="float64"):
        mod.plan_gemm(_meta(32, 64, dtype=torch.float64), _meta(64, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="sm_count"):
        mod.plan_gemm(a, b, sm_count=0)
    with pytest.raises(ValueError, match="activation"):
        mod.plan_gemm(a, b, None, 7)


# ----------------------------------------------------------------------------- plan: backward
@pytest.mark.parametrize("M", [32, 256])
def test_backward_gemms_of_a_classifier_head(M):
    """ops/gemm.py's backward of act(x @ w^T + bias): grad_pre = bias_act_bwd(grad, out),
    grad_x = grad_pre @ (w^T)^T (M x 2048 from K = 1000: split), grad_w^T = x^T @ grad_pre (2048 x 1000
    from K = M: enough tiles, single kernel)."""
    N, K = 1000, 2048
    x, b, bias = _linear_operands(M, N, K, torch.float16)
    gp = _meta(M, N)
    dgrad = mod.plan_gemm(gp, b.t(), sm_count=SMS)
    assert dgrad["tensor_cores"] and dgrad["splits"] > 1
    assert _tiles(dgrad, M, K) * dgrad["splits"] >= SMS
    _check_k_ranges(dgrad, N)
    wgrad = mod.plan_gemm(x.t(), gp, sm_count=SMS)
    assert wgrad["tensor_cores"] and wgrad["splits"] == 1 and wgrad["ctas"] >= SMS
    assert wgrad["kernel"].startswith("gemm_fwd_kernel<__half, TcConfig<64, 128, 1, 4, 4, 4>, false, false, false>")
    epi = mod.plan_bias_act_bwd(_meta(M, N), _meta(M, N), 1, True)
    assert epi["kernel"] == "bias_act_bwd_kernel<__half>" and epi["splits"] == 1 and epi["launches"] == 1
    assert epi["tile"] == (0, 8, 0) and epi["ctas"] == 125


def test_bias_act_bwd_plan_strips():
    for N, sw in [(1, 8), (2047, 8), (2048, 16), (8191, 16), (8192, 32)]:
        plan = mod.plan_bias_act_bwd(_meta(5, N, dtype=torch.float32), None, 0, True)
        assert plan["tile"] == (0, sw, 0) and plan["ctas"] == math.ceil(N / sw)
    assert mod.plan_bias_act_bwd(_meta(0, 7), None, 0, True)["launches"] == 1   # zero bias gradient
    assert mod.plan_bias_act_bwd(_meta(0, 7), _meta(0, 7), 1, False)["launches"] == 0
    assert mod.plan_bias_act_bwd(_meta(5, 0), None, 0, True)["launches"] == 0


# ----------------------------------------------------------------------------- backend glue
GLUE_SMS = 114  # not the nominal count: the entry point must pass its device's


def _record_gemm(monkeypatch):
    calls, scratch = [], []
    monkeypatch.setattr(mod, "launch_args", lambda t: (3, 77))
    monkeypatch.setattr(mod, "sm_count", lambda index: GLUE_SMS)
    monkeypatch.setattr(_native.C, "gemm_cuda", lambda *a: calls.append(a), raising=False)
    real_empty = torch.empty

    def empty(*size, **kw):
        t = real_empty(*size, **kw)
        if t.dim() == 1 and kw.get("dtype") == torch.float32:
            scratch.append(t)
        return t

    monkeypatch.setattr(torch, "empty", empty)
    return calls, scratch


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("case", ["head", "head_strided_x", "large"])
def test_gemm_entry_point_passes_the_launcher_its_arguments(dtype, case, monkeypatch):
    """mod.gemm without a GPU: the launcher is a recorder (CPU tensors stand in for device memory);
    every pointer, stride, size, the SM count and the split-K scratch it receives are checked."""
    calls, scratch = _record_gemm(monkeypatch)
    if case == "large":
        M, N, K = 1024, 1000, 64
        a, b, bias = torch.randn(M, K).to(dtype), torch.randn(K, N).to(dtype), None
    else:
        M, N, K = 33, 1000, 2048
        x = torch.randn(M, K + 8).to(dtype)[:, :K] if case == "head_strided_x" else torch.randn(M, K).to(dtype)
        w, bias = torch.randn(N, K).to(dtype), torch.randn(N).to(dtype)
        a, b = x, w.t()
    out = mod.gemm(a, b, bias, 2)
    assert len(calls) == 1
    (dt, ap, sam, sak, bp, sbk, sbn, biasp, cp, ldc, m, n, k, act, sms, sp, floats, dev, stream) = calls[0]
    assert (dt, ap, sam, sak, bp, sbk, sbn) == (_native.dtype_code(dtype), a.data_ptr(), a.stride(0), a.stride(1),
                                                b.data_ptr(), b.stride(0), b.stride(1))
    assert biasp == (bias.data_ptr() if bias is not None else 0)
    assert out.shape == (M, N) and out.dtype == dtype and out.is_contiguous()
    assert (cp, ldc, m, n, k, act, sms, dev, stream) == (out.data_ptr(), N, M, N, K, 2, GLUE_SMS, 3, 77)
    plan = _native.C.gemm_plan_cuda(*calls[0][:15])
    # the plan function sees what the launcher sees
    assert plan == mod.plan_gemm(a, b, bias, 2, sm_count=GLUE_SMS)
    assert floats == plan["scratch"]
    if case == "large":
        assert plan["splits"] == 1 and floats == 0 and sp == 0 and not scratch
    else:
        assert plan["splits"] > 1 and floats == plan["splits"] * M * 1000
        assert len(scratch) == 1 and scratch[0].numel() == floats and sp == scratch[0].data_ptr()


@pytest.mark.parametrize("act,has_bias", [(0, True), (1, False), (2, True)])
def test_bias_act_bwd_entry_point_passes_the_launcher_its_arguments(act, has_bias, monkeypatch):
    calls = []
    monkeypatch.setattr(mod, "launch_args", lambda t: (3, 77))
    monkeypatch.setattr(_native.C, "bias_act_bwd_cuda", lambda *a: calls.append(a), raising=False)
    grad, out = torch.randn(9, 1001, dtype=torch.float16), torch.randn(9, 1001, dtype=torch.float16)
    gp, gb = mod.bias_act_bwd(grad, out if act else None, act, has_bias)
    (dt, g, o, gpp, gbp, M, N, a, dev, stream) = calls[0]
    assert (dt, g, o, M, N, a, dev, stream) == (_native.dtype_code(torch.float16), grad.data_ptr(),
                                                out.data_ptr() if act else 0, 9, 1001, act, 3, 77)
    assert gpp == gp.data_ptr() and (gp is grad) == (act == 0)
    assert gbp == (gb.data_ptr() if has_bias else 0) and (gb is not None) == has_bias
    assert _native.C.bias_act_bwd_plan_cuda(*calls[0][:8]) == mod.plan_bias_act_bwd(grad, out, act, has_bias)


# ----------------------------------------------------------------------------- GPU
def _head_inputs(M, N, K, dtype, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K + 16, generator=g, dtype=torch.float64)
    w = torch.randn(N, K, generator=g, dtype=torch.float64) / K ** 0.5
    bias = torch.randn(N, generator=g, dtype=torch.float64)
    x, w, bias = (t.to(dtype).cuda() for t in (x, w, bias))
    if layout == "linear":            # x row-major, B = w^T column-major
        return x[:, :K].contiguous(), w.t(), bias
    if layout == "matmul":            # B row-major
        return x[:, :K].contiguous(), w.t().contiguous(), bias
    if layout == "a_colmajor":
        return x[:, :K].t().contiguous().t(), w.t(), bias
    return x[:, 1:K + 1], w.t(), bias  # "strided": A one element into its rows (misaligned: SIMT)


def _act64(v, act):
    return {0: v, 1: v.clamp_min(0), 2: v.clamp(0, 6)}[act]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("MNK", [(32, 1000, 2048), (33, 1001, 2049), (1, 1000, 9216), (256, 1000, 4096)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["linear", "matmul", "a_colmajor", "strided"])
def test_split_k_matches_float64(dtype, MNK, layout):
    M, N, K = MNK
    a, b, bias = _head_inputs(M, N, K, dtype, layout)
    act = (M + len(layout)) % 3
    plan = mod.plan_gemm(a, b, bias, act)
    assert plan["splits"] > 1, plan
    out = mod.gemm(a, b, bias, act)
    ref = _act64(a.double() @ b.double() + bias.double(), act)
    theirs = _act64((a.float() @ b.float() + bias.float()), act).to(dtype) if dtype != torch.float32 else None
    assert_close_to_reference(out, ref, theirs, scale=K ** 0.5)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_split_k_is_deterministic_and_agrees_with_the_single_kernel(dtype, monkeypatch):
    M, N, K = 64, 1000, 9216
    a, b, bias = _head_inputs(M, N, K, dtype, "linear", seed=3)
    runs = [mod.gemm(a, b, bias, 1) for _ in range(3)]
    assert mod.plan_gemm(a, b, bias, 1)["splits"] > 1
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    monkeypatch.setattr(mod, "sm_count", lambda index: 1)  # one SM: the tiles cover it, no split
    assert mod.plan_gemm(a, b, bias, 1, sm_count=1)["splits"] == 1
    single = mod.gemm(a, b, bias, 1)
    tol = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(runs[0].float(), single.float(), rtol=tol, atol=tol)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_classifier_head_linear_forward_and_backward(dtype):
    """ops.linear on the cuda backend end to end: the forward and grad_x GEMMs are split."""
    import pyimgcls
    from pyimgcls import ops
    M, N, K = 32, 1000, 4096
    x, b, bias = _head_inputs(M, N, K, dtype, "linear", seed=5)
    w = b.t()
    xg, wg, bg = (t.detach().clone().requires_grad_() for t in (x, w, bias))
    go = torch.randn(M, N, device="cuda", dtype=dtype)
    with pyimgcls.use_backend("cuda"):
        y = ops.linear(xg, wg, bg, activation="relu")
        y.backward(go)
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, bias))
    y64 = torch.relu(x64 @ w64.t() + b64)
    y64.backward(go.double())
    with torch.no_grad():
        xt, wt, bt = (t.detach().clone().requires_grad_() for t in (x, w, bias))
    yt = torch.relu(xt @ wt.t() + bt)
    yt.backward(go)
    same = dtype != torch.float32
    assert_close_to_reference(y, y64, yt if same else None, scale=K ** 0.5)
    assert_close_to_reference(xg.grad, x64.grad, xt.grad if same else None, scale=N ** 0.5)
    assert_close_to_reference(wg.grad, w64.grad, wt.grad if same else None, scale=M ** 0.5)
    assert_close_to_reference(bg.grad, b64.grad, bt.grad if same else None, scale=M ** 0.5)
