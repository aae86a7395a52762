"""Depthwise convolution backward (groups == C, one input channel per group, O = C * multiplier): the
direct kernels (Triton ``_conv2d_depthwise_dgrad_kernel`` / ``_conv2d_depthwise_wgrad_kernel``, CUDA
``conv2d_depthwise_dgrad_kernel`` / ``conv2d_depthwise_wgrad_kernel``) against float64 PyTorch autograd,
and a check that they, not the implicit-GEMM kernels, are the ones that ran.

Triton runs through the interpreter on CPU (small shapes; the "splits" case is just large enough for
several wgrad pixel splits and dgrad tiles under the interpreter's config); the CUDA rows need a GPU.
"""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from pyimgcls import ops
from pyimgcls.backends.cuda import conv as cuda_conv
from pyimgcls.triton_kernels import conv as tk

from helpers import HAS_GPU, assert_close_to_reference, backend_ctx, device_for

# (name, N, C, H, W, multiplier, kernel, stride, padding, dilation)
CASES = [
    ("3x3_odd", 2, 5, 9, 7, 1, 3, 1, 1, 1),
    ("s2_mult2_batch1", 1, 4, 9, 8, 2, 3, 2, 1, 1),
    ("dilated_asym", 2, 3, 11, 14, 1, (3, 5), (2, 1), (2, 1), (2, 3)),
    ("same_even", 1, 6, 8, 7, 1, (2, 4), 1, "same", (1, 2)),
    ("mult3_s3_k1", 1, 2, 7, 8, 3, 1, 3, 0, 1),
    ("splits", 2, 6, 20, 20, 1, 3, 1, 1, 1),
]
BACKENDS = [pytest.param("triton", id="triton"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]
IGEMM_TRITON = ("_conv2d_bwd_data_kernel", "_conv2d_bwd_weight_kernel")
DEPTHWISE_TRITON = ("_conv2d_depthwise_dgrad_kernel", "_conv2d_depthwise_wgrad_kernel")


def _make(shape, dtype, device, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


def _inputs(case, dtype, device, layout, seed=0):
    """x, w, conv kwargs and the output shape; layout "strided" makes x a non-contiguous view."""
    _, N, C, H, W, mult, k, stride, padding, dilation = case
    kh, kw = (k, k) if isinstance(k, int) else k
    if layout == "strided":
        x = _make((N, 2 * C, H, W + 3), dtype, device, seed)[:, ::2, :, 1:W + 1]
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    else:
        x = _make((N, C, H, W), dtype, device, seed)
        if layout == "nhwc":
            x = x.contiguous(memory_format=torch.channels_last)
    w = _make((C * mult, 1, kh, kw), dtype, device, seed + 1, scale=(kh * kw) ** -0.5)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=C)
    out_shape = F.conv2d(x[:1, :, :, :].double().cpu(), w.double().cpu(), **kwargs).shape
    return x, w, kwargs, (N,) + tuple(out_shape[1:])


class _Recorder:
    """Stands in for a Triton kernel object in triton_kernels.conv: records each launch by name."""

    def __init__(self, kernel, name, log):
        self.kernel, self.name, self.log = kernel, name, log

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.log.append(self.name)
            return launch(*args, **kwargs)
        return run


@pytest.fixture
def triton_launches(monkeypatch):
    """The names of the Triton conv backward kernels launched during the test."""
    log = []
    for name in IGEMM_TRITON + DEPTHWISE_TRITON:
        monkeypatch.setattr(tk, name, _Recorder(getattr(tk, name), name, log))
    return log


def _cuda_kernel_names(fn):
    """Names of the CUDA kernels fn launched (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type.name == "CUDA"]


def _backward(backend, x, w, kwargs, go):
    """(dx, dw) of our conv2d on ``backend``; asserts the depthwise kernels were the ones that ran."""
    xl, wl = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    if x.stride() != xl.stride():  # keep the caller's (strided) layout: clone() may compact it
        xl = x.detach().requires_grad_()

    def run():
        with backend_ctx(backend):
            ops.conv2d(xl, wl, None, **kwargs).backward(go)

    if backend == "cuda":
        names = _cuda_kernel_names(run)
        assert any("conv2d_depthwise_dgrad_kernel" in n for n in names), names
        assert any("conv2d_depthwise_wgrad_kernel" in n for n in names), names
        assert not any("igemm" in n or "simt" in n for n in names), names
    else:
        run()
    return xl.grad, wl.grad


def _reference(x, w, kwargs, go):
    x64, w64 = (t.detach().double().cpu().requires_grad_() for t in (x, w))
    F.conv2d(x64, w64, **kwargs).backward(go.detach().double().cpu())
    return x64.grad, w64.grad


# ----------------------------------------------------------------------------- values and dispatch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_depthwise_backward_matches_float64(backend, case, layout, triton_launches):
    dev = device_for(backend)
    x, w, kwargs, out_shape = _inputs(case, torch.float32, dev, layout, seed=1)
    go = _make(out_shape, torch.float32, dev, seed=3)
    dx, dw = _backward(backend, x, w, kwargs, go)
    if backend == "triton":
        assert sorted(triton_launches) == sorted(DEPTHWISE_TRITON), triton_launches
    rx, rw = _reference(x, w, kwargs, go)
    assert_close_to_reference(dx, rx, scale=4.0)
    n_pix = out_shape[0] * out_shape[2] * out_shape[3]
    assert_close_to_reference(dw, rw, scale=max(4.0, n_pix ** 0.5))


def test_splits_case_reaches_several_splits_and_tiles():
    """The "splits" row runs the split path of the Triton wgrad (and several dgrad pixel tiles) under
    the interpreter's sizing (4 "SMs", 16 x 8 tiles)."""
    _, N, C, H, W, mult, k, *_ = CASES[-1]
    assert tk._depthwise_splits(C * mult, k * k, N * H * W, torch.device("cpu")) >= 3
    assert N * H * W > 16 * 4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_depthwise_backward_dtypes(backend, dtype, triton_launches):
    """float64 to 1e-10 (Triton only: no float64 in our CUDA kernels); float16 / bfloat16 within 2x
    PyTorch's own error at that dtype (fp32 accumulation)."""
    if backend == "cuda" and dtype == torch.float64:
        pytest.skip("no float64 in our CUDA kernels")
    dev = device_for(backend)
    case = ("t", 2, 8, 9, 9, 2, 3, 2, 1, 1)
    for layout in ("nchw", "nhwc"):
        x, w, kwargs, out_shape = _inputs(case, dtype, dev, layout, seed=5)
        go = _make(out_shape, dtype, dev, seed=6)
        dx, dw = _backward(backend, x, w, kwargs, go)
        assert dx.dtype == dw.dtype == dtype
        rx, rw = _reference(x, w, kwargs, go)
        theirs = [t.detach().clone().requires_grad_() for t in (x, w)]
        F.conv2d(*theirs, **kwargs).backward(go)
        assert_close_to_reference(dx, rx, torch_same_dtype=theirs[0].grad)
        assert_close_to_reference(dw, rw, torch_same_dtype=theirs[1].grad, scale=10.0)
    if backend == "triton":
        assert set(triton_launches) == set(DEPTHWISE_TRITON), triton_launches


def test_gradcheck_float64_triton():
    if HAS_GPU:
        pytest.skip("gradcheck runs in float64 on CPU tensors")
    x = _make((1, 2, 6, 5), torch.float64, "cpu", seed=7).requires_grad_()
    w = _make((4, 1, 3, 2), torch.float64, "cpu", seed=8).requires_grad_()
    with backend_ctx("triton"):
        assert torch.autograd.gradcheck(
            lambda x, w: ops.conv2d(x, w, None, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2), (x, w),
            fast_mode=True)


# ----------------------------------------------------------------------------- kernels on strided operands
def test_triton_kernels_strided_operands_and_deterministic_splits():
    """Direct host-function calls with non-contiguous gradient, weight and dx views: only dx's own
    elements are written (the rest of its buffer keeps a sentinel); the split wgrad is bitwise
    repeatable."""
    N, C, H, W, mult, KH, KW = 2, 6, 20, 19, 1, 3, 3
    stride, pad, dil = (1, 1), [1, 1, 1, 1], (1, 1)
    dev = device_for("triton")
    x = _make((N, C, H, W), torch.float32, dev, seed=9)
    w_base = _make((C * mult, 2, KH, KW + 1), torch.float32, dev, seed=10)
    w = w_base[:, :1, :, 1:]                                    # [O, 1, KH, KW], non-contiguous
    go_base = _make((N, C * mult, H + 2, 2 * W), torch.float32, dev, seed=11)
    go = go_base[:, :, 1:H + 1, ::2]                            # non-contiguous [N, O, OH, OW]
    dx_base = torch.full((N, H, W + 2, 2 * C), 7.0, device=dev)
    dx = dx_base[:, :, 1:W + 1, ::2].permute(0, 3, 1, 2)        # [N, C, H, W], channel stride 2
    tk.conv2d_bwd_data(go, w, dx, stride, pad, dil, C)
    rx, rw = _reference(x, w, dict(stride=stride, padding=1, dilation=dil, groups=C), go)
    assert_close_to_reference(dx, rx, scale=4.0)
    untouched = torch.ones_like(dx_base, dtype=torch.bool)
    untouched[:, :, 1:W + 1, ::2] = False
    assert torch.all(dx_base[untouched] == 7.0)
    assert tk._depthwise_splits(C * mult, KH * KW, N * H * W, x.device) > 1
    dws = []
    for _ in range(2):
        dw = torch.full((C * mult, 1, KH, KW), float("nan"), device=dev)
        tk.conv2d_bwd_weight(go, x, dw, stride, pad, dil, C)
        dws.append(dw)
    assert torch.equal(dws[0], dws[1])
    assert_close_to_reference(dws[0], rw, scale=(N * H * W) ** 0.5)


def test_is_depthwise():
    assert tk.is_depthwise(C=8, Cg=1, groups=8)
    assert not tk.is_depthwise(C=8, Cg=2, groups=4)   # grouped, two channels per group
    assert tk.is_depthwise(C=1, Cg=1, groups=1)       # one channel: depthwise and dense are the same conv
    assert not tk.is_depthwise(C=8, Cg=8, groups=1)


# ----------------------------------------------------------------------------- CUDA host glue (no GPU)
class _FakeNative:
    """Records the CUDA launcher calls of pyimgcls/backends/cuda/conv.py (no GPU needed)."""

    def __init__(self):
        self.calls = []
        self.C = types.SimpleNamespace(
            conv2d_bwd_data_cuda=lambda *a: self.calls.append(("dgrad", a)),
            conv2d_bwd_weight_cuda=lambda *a: self.calls.append(("wgrad", a)),
            conv2d_wgrad_splits_cuda=lambda *a: self.calls.append(("splits", a)) or 3,
        )

    @staticmethod
    def dtype_code(dtype):
        from pyimgcls import _native
        return _native.dtype_code(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_cuda_glue_depthwise_reads_gradient_in_place(dtype, monkeypatch):
    """The depthwise dgrad kernel reads any layout: the CUDA backend passes the gradient's own
    strides (no channels_last copy, unlike the grouped fp16/bf16 implicit GEMM); wgrad asks the
    launcher for its split count first (the depthwise branch of conv2d_wgrad_splits)."""
    fake = _FakeNative()
    monkeypatch.setattr(cuda_conv, "_native", fake)
    monkeypatch.setattr(cuda_conv, "launch_args", lambda t: (0, 0))
    monkeypatch.setattr(cuda_conv, "sm_count", lambda index: 132)
    args = ([1, 1], [1, 1, 1, 1], [1, 1])
    x = torch.zeros(2, 8, 6, 6, dtype=dtype)
    gp = torch.zeros(2, 8, 6, 6, dtype=dtype)                    # NCHW
    w = torch.zeros(8, 1, 3, 3, dtype=dtype)
    cuda_conv.dgrad(gp, x, w, *args, 8)
    (kind, a), = fake.calls
    assert kind == "dgrad" and list(a[1])[-1] == 8 and a[3] == list(gp.stride())
    fake.calls.clear()
    cuda_conv.wgrad(gp, x, w, *args, 8)
    assert [c[0] for c in fake.calls] == ["splits", "wgrad"]
    # grouped (two channels per group), fp16: still converted for the tensor-core gathers
    if dtype == torch.float16:
        fake.calls.clear()
        cuda_conv.dgrad(gp, x, torch.zeros(8, 2, 3, 3, dtype=dtype), *args, 4)
        assert fake.calls[0][1][3] == list(gp.contiguous(memory_format=torch.channels_last).stride())



# ----------------------------------------------------------------------------- CUDA kernels emulated on the CPU
# The device code of conv2d_depthwise_dgrad_kernel / conv2d_depthwise_wgrad_kernel and of
# conv2d_wgrad_reduce_kernel, cut from csrc/cuda/conv.cu, compiled by g++ with a small harness (each
# block runs as 256 std::threads, __syncthreads is a std::barrier; float only; the launchers' choices of
# VEC, w_vec, ct and grid are repeated in the harness), so their index math, the 16-byte path, the
# fixed-order tree and the split reduction are checked without a GPU.
_EMU_HEAD = r"""// Host emulation of the CUDA depthwise backward kernels (float only): the kernel text is pasted from
// csrc/cuda/conv.cu below; each block runs as 256 std::threads with a std::barrier for __syncthreads.
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "conv_geometry.h"

struct dim3 { unsigned x = 0, y = 0, z = 0; };
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
std::barrier<>* g_barrier = nullptr;
#define __global__
#define __launch_bounds__(n)
#define __shared__ static
#define __restrict__
inline void __syncthreads() { g_barrier->arrive_and_wait(); }
using std::min;

namespace pyimgcls::cuda {
inline float to_float(float v) { return v; }
template <typename T> T from_float(float v);
template <> inline float from_float<float>(float v) { return v; }
template <typename T, int VEC> void load_vec(const T* p, float (&out)[VEC]) {
  for (int k = 0; k < VEC; ++k) out[k] = p[k];
}
template <typename T, int VEC> void store_pack16(T* p, const float (&v)[VEC]) {
  if (reinterpret_cast<uintptr_t>(p) % 16) { std::fprintf(stderr, "misaligned 16-byte store\n"); std::abort(); }
  for (int k = 0; k < VEC; ++k) p[k] = v[k];
}
"""

_EMU_TAIL = r"""}  // namespace pyimgcls::cuda

using namespace pyimgcls;
using namespace pyimgcls::cuda;

// Runs kernel body f for every (block, thread) of grid x 256 threads, one block at a time.
static void launch(dim3 grid, const std::function<void()>& f) {
  gridDim = grid;
  blockDim = dim3{256, 1, 1};
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::barrier<> bar(256);
      g_barrier = &bar;
      std::vector<std::thread> ts;
      for (unsigned t = 0; t < 256; ++t)
        ts.emplace_back([&, t] { threadIdx = dim3{t, 0, 0}; blockIdx = dim3{bx, by, 0}; f(); });
      for (auto& t : ts) t.join();
    }
}

static std::vector<float> read_file(const char* path) {
  std::FILE* f = std::fopen(path, "rb");
  std::fseek(f, 0, SEEK_END);
  long n = std::ftell(f) / 4;
  std::fseek(f, 0, SEEK_SET);
  std::vector<float> v(n);
  if (std::fread(v.data(), 4, n, f) != static_cast<size_t>(n)) std::abort();
  std::fclose(f);
  return v;
}

// argv: mode(dgrad|wgrad) g.bin src.bin out.bin  N C H W O KH KW OH OW sh sw ph pw dh dw
//       g_off gs(4) src_off ss(4) [dgrad: ds(4) | wgrad: splits]
int main(int argc, char** argv) {
  std::vector<int64_t> a;
  for (int i = 5; i < argc; ++i) a.push_back(std::atoll(argv[i]));
  const int64_t N = a[0], C = a[1], H = a[2], W = a[3], O = a[4], KH = a[5], KW = a[6], OH = a[7], OW = a[8];
  // 16-byte aligned buffers, as the CUDA caching allocator gives
  std::vector<float> g0 = read_file(argv[2]), s0 = read_file(argv[3]);
  float* g = static_cast<float*>(std::aligned_alloc(16, (g0.size() + 4) * 4));
  float* s = static_cast<float*>(std::aligned_alloc(16, (s0.size() + 4) * 4));
  std::memcpy(g, g0.data(), g0.size() * 4);
  std::memcpy(s, s0.data(), s0.size() * 4);
  DwBwdParams p{};
  p.C = C; p.O = O; p.mult = O / C;
  p.H = H; p.W = W; p.OH = OH; p.OW = OW; p.KH = KH; p.KW = KW;
  p.sh = a[9]; p.sw = a[10]; p.ph = a[11]; p.pw = a[12]; p.dh = a[13]; p.dw = a[14];
  p.g = g + a[15];
  p.gs = Strides4{a[16], a[17], a[18], a[19]};
  p.src = s + a[20];
  p.ss = Strides4{a[21], a[22], a[23], a[24]};
  std::vector<float> out;
  if (std::strcmp(argv[1], "dgrad") == 0) {
    // the launcher's choices (launch_depthwise_dgrad, T = float: VEC = 4)
    p.ds = Strides4{a[25], a[26], a[27], a[28]};
    const int64_t n_out = N * C * H * W;
    float* dx = static_cast<float*>(std::aligned_alloc(16, n_out * 4 + 16));
    std::fill(dx, dx + n_out, NAN);
    p.dst = dx;
    auto m4 = [](int64_t v) { return v % 4 == 0; };
    const bool vec = p.mult == 1 && p.gs.c == 1 && p.ds.c == 1 && m4(C) && m4(p.gs.n) && m4(p.gs.h) && m4(p.gs.w) &&
                     m4(p.ds.n) && m4(p.ds.h) && m4(p.ds.w) && m4(a[15]);
    p.w_vec = vec && p.ss.n == 1 && m4(p.ss.h) && m4(p.ss.w) && m4(a[20]);
    p.channels_fastest = vec || p.ds.c == 1;
    p.total = N * H * W * (vec ? C / 4 : C);
    const unsigned blocks = static_cast<unsigned>((p.total + 255) / 256);
    std::fprintf(stderr, "dgrad vec=%d w_vec=%d blocks=%u\n", int(vec), int(p.w_vec), blocks);
    if (vec) launch(dim3{blocks, 1, 1}, [&] { conv2d_depthwise_dgrad_kernel<float, 4>(p); });
    else launch(dim3{blocks, 1, 1}, [&] { conv2d_depthwise_dgrad_kernel<float, 1>(p); });
    out.assign(dx, dx + n_out);
  } else {
    const int64_t splits = a[25], taps = KH * KW;
    std::vector<float> scratch(splits * O * taps, NAN), dw(O * taps, NAN);
    p.dst = scratch.data();
    p.total = N * OH * OW;
    p.chunk = std::max<int64_t>(1, (p.total + splits - 1) / splits);
    int ct = 1;  // launch_depthwise_wgrad
    if (p.gs.c == 1)
      while (ct < 32 && ct < p.O) ct *= 2;
    p.ct = ct;
    const unsigned gx = static_cast<unsigned>((O + ct - 1) / ct * taps);
    std::fprintf(stderr, "wgrad ct=%d grid=%u x %lld\n", ct, gx, static_cast<long long>(splits));
    launch(dim3{gx, static_cast<unsigned>(splits), 1}, [&] { conv2d_depthwise_wgrad_kernel<float>(p); });
    launch(dim3{static_cast<unsigned>((O * taps + 255) / 256), 1, 1},
           [&] { conv2d_wgrad_reduce_kernel<float>(scratch.data(), dw.data(), O, 1, KH, KW, splits); });
    out = dw;
  }
  std::FILE* f = std::fopen(argv[4], "wb");
  std::fwrite(out.data(), 4, out.size(), f);
  std::fclose(f);
  return 0;
}
"""


def _cut(src, start, stop):
    a = src.index(start)
    return src[a:src.index(stop, a)]


@pytest.fixture(scope="module")
def cuda_emulator(tmp_path_factory):
    import pathlib
    import shutil
    import subprocess
    if shutil.which("g++") is None:
        pytest.skip("g++ is not available")
    root = pathlib.Path(__file__).resolve().parents[1]
    src = (root / "csrc" / "cuda" / "conv.cu").read_text()
    device_code = (_cut(src, "struct DwBwdParams {", "// 16 bytes (VEC values")
                   + _cut(src, "// dgrad: one thread per dx element", "// ------------------------------")
                   + _cut(src, "template <typename T>\n__global__ void conv2d_wgrad_reduce_kernel", "// Pass 1:"))
    d = tmp_path_factory.mktemp("dw_emu")
    (d / "emu.cpp").write_text(_EMU_HEAD + device_code + _EMU_TAIL)
    exe = d / "emu"
    subprocess.run(["g++", "-std=c++20", "-O1", "-pthread", "-I", str(root / "csrc"), str(d / "emu.cpp"), "-o",
                    str(exe)], check=True)
    return exe, d


def _storage(t):
    """(t's whole storage as a flat tensor, storage offset, strides)."""
    flat = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage())
    return flat, t.storage_offset(), list(t.stride())


def _emulate(emu, mode, g, src, geom, extra):
    import subprocess

    import numpy as np
    exe, d = emu
    gflat, goff, gs = _storage(g)
    sflat, soff, ss = _storage(src)
    gflat.numpy().tofile(d / "g.bin")
    sflat.numpy().tofile(d / "s.bin")
    args = [str(exe), mode, str(d / "g.bin"), str(d / "s.bin"), str(d / "out.bin")]
    args += [str(v) for v in list(geom) + [goff] + gs + [soff] + ss + list(extra)]
    run = subprocess.run(args, check=True, capture_output=True, text=True)
    return torch.from_numpy(np.fromfile(d / "out.bin", dtype=np.float32)), run.stderr


_EMU_CASES = {c[0]: c for c in CASES[:5] + [
    ("c8_k5s2", 1, 8, 11, 9, 1, 5, 2, 2, 1),    # the 16-byte dgrad path (channels_last, C % 4 == 0)
    ("pixels_gt_lanes", 2, 3, 23, 21, 1, 3, 1, 1, 1),  # > 256 pixels per split: the wgrad carries
]}
_EMU_PARAMS = [(name, layout) for name in ("s2_mult2_batch1", "dilated_asym", "pixels_gt_lanes")
               for layout in ("nchw", "nhwc", "strided")] + [
    (name, "nchw") for name in ("3x3_odd", "same_even", "mult3_s3_k1")] + [("c8_k5s2", "nhwc")]


@pytest.mark.parametrize("name,layout", _EMU_PARAMS, ids=[f"{n}-{lay}" for n, lay in _EMU_PARAMS])
def test_cuda_kernels_emulated_on_cpu(name, layout, cuda_emulator):
    case = _EMU_CASES[name]
    x, w, kwargs, out_shape = _inputs(case, torch.float32, "cpu", layout, seed=12)
    go = _make(out_shape, torch.float32, "cpu", seed=13)
    if layout == "nhwc":
        go = go.contiguous(memory_format=torch.channels_last)
        w = w.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)  # channel-contiguous weight (w_vec)
    elif layout == "strided":
        go = _make(out_shape[:3] + (2 * out_shape[3],), torch.float32, "cpu", seed=13)[..., ::2]
    N, C, H, W = x.shape
    O, _, KH, KW = w.shape
    OH, OW = out_shape[2:]
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    (sh, sw), (dh, dw) = pair(kwargs["stride"]), pair(kwargs["dilation"])
    if kwargs["padding"] == "same":  # PyTorch pads the extra row / column at the bottom / right
        ph, pw = (dh * (KH - 1)) // 2, (dw * (KW - 1)) // 2
    else:
        ph, pw = pair(kwargs["padding"])
    geom = [N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw]
    rx, rw = _reference(x, w, kwargs, go)
    dx = torch.empty(N, C, H, W)
    if layout == "nhwc":
        dx = dx.contiguous(memory_format=torch.channels_last)
    out, log = _emulate(cuda_emulator, "dgrad", go, w, geom, dx.stride())
    assert ("vec=1" in log) == (layout == "nhwc" and O == C and C % 4 == 0), log
    dx.as_strided((dx.numel(),), (1,)).copy_(out)
    assert_close_to_reference(dx, rx, scale=4.0)
    P = N * OH * OW
    for splits in (1, 3):
        out, log = _emulate(cuda_emulator, "wgrad", go, x, geom, [splits])
        assert ("ct=1 " in log) == (layout != "nhwc"), log
        assert_close_to_reference(out.view(O, 1, KH, KW), rw, scale=max(4.0, P ** 0.5))


# ----------------------------------------------------------------------------- CPU plane kernels
# csrc/cpu/conv.cpp, "plane" kernels (DwFwdPlane, DwWgradPlane, DwDgradPlaneStrided; the stride-1 dgrad
# runs DwFwdPlane on g with flipped taps): x / g not channels_last and rows (output rows; dgrad: dx
# rows) of 12..64 floats (6..64 doubles).
# Each input plane is copied with its padding into a scratch split by column phase, then computed
# in vectors of 16 floats / 8 doubles along the row (full and partial chunks), four output rows at a
# time plus a remainder. Outputs are poisoned with NaN before each kernel (conftest).
CPU_CONV = None


def _cpu_conv():
    global CPU_CONV
    if CPU_CONV is None:
        from pyimgcls import backends
        CPU_CONV = backends.kernels("cpu", "conv")
    return CPU_CONV


# (name, N, C, H, W, m, kernel, stride, padding, dilation)
PLANE_CASES = [
    ("s1_k3_rows_tail", 1, 5, 15, 14, 1, 3, 1, 1, 1),       # OW 14: one partial chunk; OH 15 = 3 blocks of 4 + 3
    ("s2_k3_odd", 2, 7, 25, 31, 1, 3, 2, 1, 1),             # OW 16: one full chunk, stride-2 fill, OH 13
    ("s1_k5_two_chunks", 2, 3, 9, 21, 1, 5, 1, 2, 1),       # OW 21: a full and a partial chunk
    ("s2_k5", 1, 6, 23, 27, 1, 5, 2, 2, 1),                 # OW 14
    ("w64", 1, 3, 6, 64, 1, 3, 1, 1, 1),                    # OW 64: the widest plane, four chunks
    ("mult2", 2, 4, 10, 13, 2, 3, 1, 1, 1),                 # m == 2: forward / wgrad plane, dgrad rows
    ("dil_negpad", 1, 4, 12, 17, 1, 3, 1, (1, 3), (2, 1)),  # dgrad's padding (K-1)*d - p: 3 rows, -1 columns
    ("threaded", 2, 24, 28, 28, 1, 3, 1, 1, 1),             # 339K multiply-adds: spread over threads
    ("s12_dil2", 1, 3, 11, 20, 1, 3, (1, 2), 1, (1, 2)),    # strided dgrad: phase 1 has no taps (zeros)
    ("s2_threaded", 2, 24, 32, 32, 1, 5, 2, 2, 1),          # strided dgrad over threads (307K)
]
PLANE_LAYOUTS = ["nchw", "w_strided", "x_channels_last_g_nchw"]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _plane_inputs(case, layout, dtype, seed):
    _, N, C, H, W, m, k, s, p, d = case
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pair(k), _pair(s), _pair(p), _pair(d)
    gen = torch.Generator().manual_seed(seed)
    if layout == "w_strided":  # NCHW with w stride 2: the fill's strided copies
        x = torch.randn(N, C, H, 2 * W, dtype=dtype, generator=gen)[..., ::2]
    else:
        x = torch.randn(N, C, H, W, dtype=dtype, generator=gen)
        if layout == "x_channels_last_g_nchw":
            x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(C * m, 1, kh, kw, dtype=dtype, generator=gen) * (kh * kw) ** -0.5
    geom = dict(stride=[sh, sw], padding=[ph, pw, ph, pw], dilation=[dh, dw], groups=C)
    ref = dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=C)
    return x, w, geom, ref, gen


def _plane_call(x, w, geom, b=None, res=None, act=0):
    K = _cpu_conv()
    return K.conv2d(x, w, b, res, geom["stride"], geom["padding"], geom["dilation"], geom["groups"], act)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", PLANE_LAYOUTS)
@pytest.mark.parametrize("case", PLANE_CASES, ids=lambda c: c[0])
def test_cpu_plane_kernels_match_float64(case, layout, dtype, threads):
    """Forward, dgrad and wgrad on the cpu backend's entry points against float64 PyTorch. The mixed
    layout (x channels_last, g NCHW) runs the forward on the channel-vector kernel and the backward's
    stride-1 dgrad / wgrad on the plane kernels (g is not channels_last)."""
    from helpers import omp_threads
    K = _cpu_conv()
    x, w, geom, ref, gen = _plane_inputs(case, layout, dtype, seed=21)
    with omp_threads(threads):
        out = _plane_call(x, w, geom)
        g = torch.randn(out.shape, dtype=dtype, generator=gen)  # NCHW whatever out's layout
        if layout == "w_strided":  # and the gradient with w stride 2 (the gradient copies' strided reads)
            g = torch.randn(out.shape[:3] + (2 * out.shape[3],), dtype=dtype, generator=gen)[..., ::2]
        dx = K.dgrad(g, x, w, geom["stride"], geom["padding"], geom["dilation"], geom["groups"])
        dwt = K.wgrad(g, x, w, geom["stride"], geom["padding"], geom["dilation"], geom["groups"])
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    y64 = F.conv2d(x64, w64, None, **ref)
    rdx, rdw = torch.autograd.grad(y64, (x64, w64), g.double())
    assert_close_to_reference(out, y64)
    assert_close_to_reference(dx, rdx, scale=max(1.0, rdx.abs().max().item()))
    assert_close_to_reference(dwt, rdw, scale=max(1.0, rdw.abs().max().item()))


@pytest.mark.parametrize("act", [0, 1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("case", [c for c in PLANE_CASES if c[0] in ("s1_k3_rows_tail", "s2_k5")], ids=lambda c: c[0])
def test_cpu_plane_forward_epilogue(case, act):
    """bias + residual + each activation fused into the plane forward's store, on the four-row blocks
    and the remainder rows, full and partial chunks (the entry point matches the strided residual to
    the output's layout before the kernel: the kernel's rs.w != 1 path is not reachable from here)."""
    from pyimgcls.ops import reference
    x, w, geom, ref, gen = _plane_inputs(case, "nchw", torch.float32, seed=22)
    b = torch.randn(w.shape[0], generator=gen)
    y64 = F.conv2d(x.double(), w.double(), b.double(), **ref)
    res = torch.randn(y64.shape[:3] + (2 * y64.shape[3],), generator=gen)[..., 1::2]  # w stride 2
    for r in (None, res):
        out = _plane_call(x, w, geom, b, r, act)
        expect = reference.activation(y64 + (r.double() if r is not None else 0), act)
        assert_close_to_reference(out, expect)


def test_cpu_plane_wgrad_ignores_unreached_columns():
    """Stride 2, no padding: the last input column is reached by no output, but the last vector of the
    plane wgrad reads it in a lane past OW; an inf there must not turn the (zero-gradient) lane into
    NaN (PyTorch's weight gradient stays finite)."""
    K = _cpu_conv()
    x = torch.randn(1, 3, 9, 26)
    x[..., 25] = float("inf")
    w = torch.randn(3, 1, 3, 3)
    g = torch.randn(1, 3, 4, 12)
    dwt = K.wgrad(g, x, w, [2, 2], [0, 0, 0, 0], [1, 1], 3)
    x64, w64 = x.double(), w.double().requires_grad_()
    (rdw,) = torch.autograd.grad(F.conv2d(x64, w64, None, 2, 0, 1, 3), (w64,), g.double())
    assert torch.isfinite(rdw).all()
    assert_close_to_reference(dwt, rdw, scale=max(1.0, rdw.abs().max().item()))


@pytest.mark.parametrize("layout", ["nchw", "w_strided"])
def test_cpu_plane_kernels_bit_identical_across_threads(layout):
    """Each output element and each weight gradient is summed by one thread in a fixed order."""
    from helpers import omp_threads
    K = _cpu_conv()
    case = [c for c in PLANE_CASES if c[0] == "threaded"][0]
    results = []
    for threads in (1, 2):
        x, w, geom, _, gen = _plane_inputs(case, layout, torch.float32, seed=23)
        with omp_threads(threads):
            out = _plane_call(x, w, geom)
            g = torch.randn(out.shape, generator=gen)
            results.append((out, K.dgrad(g, x, w, geom["stride"], geom["padding"], geom["dilation"], geom["groups"]),
                            K.wgrad(g, x, w, geom["stride"], geom["padding"], geom["dilation"], geom["groups"])))
    for a, b in zip(*results):
        assert torch.equal(a, b)
