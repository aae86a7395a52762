"""The CUDA convolution launchers' decisions and index arithmetic, checked without a GPU.

* conv2d_plan (csrc/cuda/conv.h) is the function the launchers in csrc/cuda/conv.cu dispatch on; the
  bindings expose it in every build as _native.C.conv2d_plan_cuda and pyimgcls/backends/cuda/conv.py
  wraps it as plan_conv2d / plan_dgrad / plan_wgrad, which prepare their arguments with the same
  helpers as the entry points. These tests run it on CPU, meta and fake tensors.
* The kernels' index arithmetic (32-bit fast division, pixel-row tables, the incremental (tap,
  channel) walk of GEMM-K) is a set of plain inline functions in conv.h; tests/conv_index_check.cpp
  replays the kernels' walks on the CPU against the plain formula, and planted bugs in a copy of the
  header must make it fail.
"""
from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest
import torch

from pyimgcls import _native
from pyimgcls.backends.cuda import conv as cc

ROOT = pathlib.Path(__file__).resolve().parents[1]
C = _native.C
P0 = (0, 0, 0, 0)
CL = torch.channels_last


def _tc(pass_, dtype, vec):
    t = {torch.float16: "half", torch.bfloat16: "bfloat16"}[dtype]
    return f"conv2d_igemm_kernel<{pass_},{t},{'vec' if vec else 'scalar'}>"


def _cdiv(a, b):
    return -(-a // b)


# ----------------------------------------------------------------------------- plans
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pointwise_nchw_forward_takes_the_vector_kernel(dtype):
    """A 1x1 conv with NCHW input and weight: after the backend's channels_last conversion the weight
    [O, C, 1, 1] has strides (C, 1, 1, 1) (size-1 dims keep stride 1), which must not block the
    16-byte path (issue #18 item 2)."""
    x = torch.randn(2, 64, 7, 9, dtype=dtype)
    w = torch.randn(48, 64, 1, 1, dtype=dtype)
    assert w.contiguous(memory_format=CL).stride() == (64, 1, 1, 1)
    p = cc.plan_conv2d(x, w, None, None, (1, 1), P0, (1, 1), 1, 0)
    assert p["kernel"] == _tc("fwd", dtype, True) and p["tensor_cores"] and p["vectorized"]
    assert p["tile"] == (128, 128, 32) and p["splits"] == 1 and p["launches"] == 1
    assert p["ctas"] == _cdiv(2 * 7 * 9, 128) * _cdiv(48, 128)
    # batch 1 and 1x1 images: more size-1 dims with arbitrary strides
    x1 = torch.randn(1, 64, 1, 1, dtype=dtype)
    assert cc.plan_conv2d(x1, w, None, None, (1, 1), P0, (1, 1), 1, 0)["vectorized"]


def test_pointwise_dgrad_and_wgrad_take_the_vector_kernels():
    x = torch.randn(2, 64, 7, 9, dtype=torch.float16)
    w = torch.randn(48, 64, 1, 1, dtype=torch.float16)
    g = torch.randn(2, 48, 7, 9, dtype=torch.float16)
    assert cc.plan_dgrad(g, x, w, (1, 1), P0, (1, 1), 1)["kernel"] == _tc("dgrad", torch.float16, True)
    # wgrad takes the new 16-byte path from channels_last tensors and, after the backend's
    # conversion, from NCHW ones (the default AMP set-up)
    for gg, xx in [(g.contiguous(memory_format=CL), x.contiguous(memory_format=CL)), (g, x)]:
        p = cc.plan_wgrad(gg, xx, w, (1, 1), P0, (1, 1), 1)
        assert p["kernel"] == _tc("wgrad", torch.float16, True) and p["vectorized"] and p["launches"] == 2


@pytest.mark.parametrize("case", ["odd_cin", "odd_cin_per_group", "misaligned"])
def test_forward_falls_back_to_element_gathers(case):
    dt = torch.float16
    if case == "odd_cin":
        x, w, groups = torch.randn(2, 6, 8, 8, dtype=dt), torch.randn(16, 6, 3, 3, dtype=dt), 1
    elif case == "odd_cin_per_group":
        x, w, groups = torch.randn(2, 24, 8, 8, dtype=dt), torch.randn(16, 12, 3, 3, dtype=dt), 2
    else:
        # channels_last input starting one element into its storage (so not copied by the backend's
        # conversion): not 16-byte aligned
        base = torch.randn(2 * 64 * 8 * 8 + 1, dtype=dt)
        x = base[1:].view(2, 8, 8, 64).permute(0, 3, 1, 2)
        w, groups = torch.randn(16, 64, 3, 3, dtype=dt).contiguous(memory_format=CL), 1
    p = cc.plan_conv2d(x, w, None, None, (1, 1), (1, 1, 1, 1), (1, 1), groups, 0)
    assert p["kernel"] == _tc("fwd", dt, False) and p["tensor_cores"] and not p["vectorized"]


def test_wgrad_falls_back_to_element_gathers_for_odd_channels_and_reads_them_in_place():
    """Channel counts that are not multiples of 8 take the element gathers, and then nothing is
    converted: the launcher sees the caller's (ragged) strides."""
    dt = torch.float16
    x = torch.randn(2, 8, 8, 68, dtype=dt)[..., :12].permute(0, 3, 1, 2)   # pixel stride 68
    w = torch.randn(16, 12, 3, 3, dtype=dt)
    g = torch.randn(2, 16, 8, 8, dtype=dt)
    pad = (1, 1, 1, 1)
    assert cc.plan_wgrad(g, x, w, (1, 1), pad, (1, 1), 1)["kernel"] == _tc("wgrad", dt, False)
    gp2, x2, _, _ = cc._wgrad_args(g, x, w, (1, 1), pad, (1, 1), 1)
    assert gp2 is g and x2 is x
    # out channels per group not a multiple of 8 (C/groups = 8 is)
    xg = torch.randn(2, 16, 8, 8, dtype=dt)
    wg = torch.randn(12, 8, 3, 3, dtype=dt)
    gg = torch.randn(2, 12, 8, 8, dtype=dt)
    assert not cc.plan_wgrad(gg, xg, wg, (1, 1), pad, (1, 1), 2)["vectorized"]


def test_grouped_vector_path_and_odd_out_channels_in_dgrad():
    dt = torch.bfloat16
    x = torch.randn(1, 32, 9, 9, dtype=dt)
    w = torch.randn(24, 16, 3, 3, dtype=dt)
    g = torch.randn(1, 24, 9, 9, dtype=dt)
    assert cc.plan_conv2d(x, w, None, None, (1, 1), (1, 1, 1, 1), (1, 1), 2, 0)["kernel"] == _tc("fwd", dt, True)
    # O / groups = 12: dgrad's k chunks (8 out channels) would straddle taps
    assert cc.plan_dgrad(g, x, w, (1, 1), (1, 1, 1, 1), (1, 1), 2)["kernel"] == _tc("dgrad", dt, False)
    w16 = torch.randn(32, 16, 3, 3, dtype=dt)
    g16 = torch.randn(1, 32, 9, 9, dtype=dt)
    assert cc.plan_dgrad(g16, x, w16, (1, 1), (1, 1, 1, 1), (1, 1), 2)["kernel"] == _tc("dgrad", dt, True)


def test_float32_takes_simt_and_depthwise_takes_the_direct_kernel():
    x = torch.randn(3, 16, 10, 10)
    w = torch.randn(32, 16, 3, 3)
    g = torch.randn(3, 32, 10, 10)
    for plan, name in [(cc.plan_conv2d(x, w, None, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, 0), "fwd"),
                       (cc.plan_dgrad(g, x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1), "dgrad")]:
        assert plan["kernel"] == f"conv2d_simt_kernel<{name}>" and not plan["tensor_cores"]
        assert plan["tile"] == (64, 64, 16) and not plan["vectorized"]
    p = cc.plan_conv2d(x, w, None, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, 0)
    assert p["ctas"] == _cdiv(300, 64) * _cdiv(32, 64)
    for dt, t in [(torch.float32, "float"), (torch.float16, "half")]:
        xd = torch.randn(2, 16, 10, 10, dtype=dt)
        wd = torch.randn(32, 1, 3, 3, dtype=dt)
        p = cc.plan_conv2d(xd, wd, None, None, (1, 1), (1, 1, 1, 1), (1, 1), 16, 0)
        assert p["kernel"] == f"conv2d_dw_fwd_kernel<{t}>" and p["tile"] == (0, 0, 0)
        assert p["ctas"] == _cdiv(2 * 32 * 100, 256) and p["launches"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [
    # (N, C, H, W, O, K, stride, groups, sm_count)
    (1, 3, 5, 5, 4, 3, 1, 1, 132),          # tiny: one split
    (8, 64, 28, 28, 64, 3, 1, 1, 132),      # many pixels, few tiles: split-K
    (4, 256, 14, 14, 512, 1, 2, 1, 108),    # many tiles
    (2, 64, 16, 16, 64, 3, 1, 4, 132),      # groups
    (32, 8, 32, 32, 8, 3, 1, 1, 16),        # few SMs
])
def test_wgrad_ctas_and_splits_match_conv2d_wgrad_splits(dtype, shape):
    N, Ci, H, W, O, K, s, groups, sms = shape
    x = torch.randn(N, Ci, H, W, dtype=dtype).contiguous(memory_format=CL)
    w = torch.randn(O, Ci // groups, K, K, dtype=dtype)
    OH = (H - K) // s + 1
    g = torch.randn(N, O, OH, OH, dtype=dtype).contiguous(memory_format=CL)
    p = cc.plan_wgrad(g, x, w, (s, s), P0, (1, 1), groups, sm_count=sms)
    geom = [N, Ci, H, W, O, K, K, OH, OH, s, s, 0, 0, 1, 1, groups]
    splits = C.conv2d_wgrad_splits_cuda(_native.dtype_code(dtype), geom, sms)
    tm, tn = (64, 64) if dtype == torch.float32 else (128, 128)
    Og, Cg = O // groups, Ci // groups
    assert p["splits"] == splits >= 1
    assert p["ctas"] == _cdiv(Og, tm) * _cdiv(K * K * Cg, tn) * groups * splits + _cdiv(O * Cg * K * K, 256)
    assert p["launches"] == 2
    if dtype != torch.float32:
        assert p["kernel"] == _tc("wgrad", dtype, Cg % 8 == 0 and Og % 8 == 0)
    # an explicit split count (the launcher's argument) is what the plan reports
    q = C.conv2d_plan_cuda(2, _native.dtype_code(dtype), geom, list(g.stride()), list(x.stride()), 256, 256, sms, 5)
    assert q["splits"] == 5
    assert q["ctas"] == _cdiv(Og, tm) * _cdiv(K * K * Cg, tn) * groups * 5 + _cdiv(O * Cg * K * K, 256)


def test_plans_on_meta_and_fake_tensors_match_cpu():
    from torch._subclasses.fake_tensor import FakeTensorMode
    shapes = [((2, 64, 7, 9), (48, 64, 1, 1), 1), ((2, 6, 8, 8), (16, 6, 3, 3), 1), ((1, 32, 9, 9), (32, 1, 3, 3), 32)]
    for xs, ws, groups in shapes:
        x, w = torch.randn(*xs, dtype=torch.float16), torch.randn(*ws, dtype=torch.float16)
        want = cc.plan_conv2d(x, w, None, None, (1, 1), P0, (1, 1), groups, 0)
        assert cc.plan_conv2d(x.to("meta"), w.to("meta"), None, None, (1, 1), P0, (1, 1), groups, 0) == want
        with FakeTensorMode():
            xf, wf = torch.empty(*xs, dtype=torch.float16), torch.empty(*ws, dtype=torch.float16)
            assert cc.plan_conv2d(xf, wf, None, None, (1, 1), P0, (1, 1), groups, 0) == want
    # a meta view one element into its storage reports the misalignment
    xm = torch.empty(2 * 8 * 8 * 64 + 1, dtype=torch.float16, device="meta")[1:].view(2, 8, 8, 64).permute(0, 3, 1, 2)
    wm = torch.empty(16, 64, 3, 3, dtype=torch.float16, device="meta").contiguous(memory_format=CL)
    assert not cc.plan_conv2d(xm, wm, None, None, (1, 1), P0, (1, 1), 1, 0)["vectorized"]


def test_empty_problems_launch_nothing_and_bad_arguments_raise():
    x = torch.randn(0, 8, 5, 5, dtype=torch.float16)
    w = torch.randn(8, 8, 3, 3, dtype=torch.float16)
    assert cc.plan_conv2d(x, w, None, None, (1, 1), P0, (1, 1), 1, 0)["launches"] == 0
    geom = [1, 8, 5, 5, 8, 3, 3, 3, 3, 1, 1, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="mode"):
        C.conv2d_plan_cuda(3, 2, geom, [1, 1, 1, 1], [1, 1, 1, 1], 0, 0, 132)
    with pytest.raises(ValueError, match="float64"):
        C.conv2d_plan_cuda(0, 1, geom, [1, 1, 1, 1], [1, 1, 1, 1], 0, 0, 132)
    with pytest.raises(ValueError, match="16 entries"):
        C.conv2d_plan_cuda(0, 2, geom[:15], [1, 1, 1, 1], [1, 1, 1, 1], 0, 0, 132)


# ----------------------------------------------------------------------------- launcher glue
def test_entry_points_pass_the_launchers_what_the_plans_describe(monkeypatch):
    """The cuda entry points run on CPU tensors with the launchers replaced by recorders; the plan
    recomputed from each recorded call equals what plan_<entry> reports for the same arguments."""
    calls = {}
    monkeypatch.setattr(cc, "launch_args", lambda t: (0, 77))
    monkeypatch.setattr(cc, "sm_count", lambda index: 132)
    for name in ("conv2d_fwd_cuda", "conv2d_bwd_data_cuda", "conv2d_bwd_weight_cuda"):
        monkeypatch.setattr(C, name, lambda *a, _n=name: calls.__setitem__(_n, a), raising=False)
    for dt in (torch.float16, torch.float32):
        x = torch.randn(2, 16, 9, 9, dtype=dt)
        w = torch.randn(24, 16, 1, 1, dtype=dt)
        g = torch.randn(2, 24, 9, 9, dtype=dt).contiguous(memory_format=CL)
        code = _native.dtype_code(dt)
        cc.conv2d(x, w, None, None, (1, 1), P0, (1, 1), 1, 0)
        dt_, geom, xp, xs, wp, ws, *_ = calls["conv2d_fwd_cuda"]
        assert dt_ == code and list(xs) == list(x.contiguous(memory_format=CL).stride() if dt != torch.float32 else
                                                x.stride())
        assert C.conv2d_plan_cuda(0, code, geom, xs, ws, xp, wp, 132) == cc.plan_conv2d(x, w, None, None, (1, 1), P0,
                                                                                         (1, 1), 1, 0)
        cc.dgrad(g, x, w, (1, 1), P0, (1, 1), 1)
        dt_, geom, gp, gs, wp, ws, *_ = calls["conv2d_bwd_data_cuda"]
        assert C.conv2d_plan_cuda(1, code, geom, gs, ws, gp, wp, 132) == cc.plan_dgrad(g, x, w, (1, 1), P0, (1, 1), 1)
        cc.wgrad(g, x, w, (1, 1), P0, (1, 1), 1)
        dt_, geom, gp, gs, xp, xs, dwp, sp, splits, *_ = calls["conv2d_bwd_weight_cuda"]
        assert splits == C.conv2d_wgrad_splits_cuda(code, geom, 132)
        assert C.conv2d_plan_cuda(2, code, geom, gs, xs, gp, xp, 132, splits) == cc.plan_wgrad(g, x, w, (1, 1), P0,
                                                                                               (1, 1), 1)
        if dt == torch.float16:
            assert cc.plan_conv2d(x, w, None, None, (1, 1), P0, (1, 1), 1, 0)["vectorized"]


# ----------------------------------------------------------------------------- index arithmetic
def _build_and_run(tmp_path, header_text=None):
    """Compile tests/conv_index_check.cpp against csrc (or a copy whose cuda/conv.h is header_text)
    and run it; (returncode, output)."""
    gxx = shutil.which("g++") or shutil.which("c++")
    if gxx is None:
        pytest.skip("no C++ compiler")
    inc = ROOT / "csrc"
    if header_text is not None:
        inc = tmp_path / "csrc"
        (inc / "cuda").mkdir(parents=True)
        for rel in ("common.h", "conv_geometry.h", "cuda/plan.h"):
            shutil.copy(ROOT / "csrc" / rel, inc / rel)
        (inc / "cuda" / "conv.h").write_text(header_text)
    exe = tmp_path / "conv_index_check"
    subprocess.run([gxx, "-std=c++17", "-O1", "-I", str(inc), str(ROOT / "tests" / "conv_index_check.cpp"), "-o",
                    str(exe)], check=True, capture_output=True, text=True)
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr


def test_index_arithmetic_matches_the_plain_formula(tmp_path):
    rc, out = _build_and_run(tmp_path)
    assert rc == 0 and out.startswith("OK"), out


# Each mutation plants an off-by-one (or a dropped term) in one helper the kernels call.
MUTATIONS = {
    "fastdiv_magic": ("/ d + 1);", "/ d);"),
    "split_pixel_column": ("return PixelRC{n, t - n * h, m - t * w, 0};",
                           "return PixelRC{n, t - n * h, m - t * w + (m == w), 0};"),
    "k_position_tap": ("return KPos{k - tap * ix.kc, tap - i * ix.KW, i};",
                       "return KPos{k - tap * ix.kc, tap - i * ix.KW + (i > 0 && tap == i * ix.KW), i};"),
    "k_advance_carry": ("if (p.c >= ix.kc) {", "if (p.c > ix.kc) {"),
    "k_advance_row_carry": ("if (p.j >= ix.KW) {", "if (p.j > ix.KW) {"),
    "x_tap_bottom_edge": ("if (ih < 0 || ih >= ix.H ||", "if (ih < 0 || ih > ix.H ||"),
    "dgrad_stride_test": ("if (oh * ix.sh != th ||", "if ("),
    "dgrad_upper_edge": ("oh >= ix.OH ||", "oh > ix.OH ||"),
    "weight_tap_row": ("static_cast<int64_t>(k.i) * bs.h", "static_cast<int64_t>(k.i) * bs.w"),
    "wgrad_a_group": ("(static_cast<int64_t>(g) * ix.Og + m) * gs.c", "(static_cast<int64_t>(g) * ix.Cg + m) * gs.c"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_planted_index_bugs_are_caught(tmp_path, name):
    src = (ROOT / "csrc" / "cuda" / "conv.h").read_text()
    old, new = MUTATIONS[name]
    assert src.count(old) == 1, f"mutation {name} no longer matches conv.h"
    rc, out = _build_and_run(tmp_path, src.replace(old, new))
    assert rc != 0 and "FAIL" in out, out
