"""Study ladder (pyimgcls.ladder): every CPU and Triton GEMM step and every CPU conv step against a
float64 reference, the documented step lists against the code, and bad-input errors.
CUDA steps are marked ``cuda`` (skipped without a GPU)."""
import os
import re

import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import _native, ladder
from pyimgcls.errors import ArgumentTypeError, ArgumentValueError, BackendError

from helpers import assert_close_to_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "ladder.md")

CPU_GEMM_STEPS = [s.number for s in ladder.steps("gemm", "cpu")]
CPU_CONV_STEPS = [s.number for s in ladder.steps("conv", "cpu")]
TRITON_STEPS = [1, 2, 3, 4]
# (M, K, N): 1s, odd sizes, non-multiples of every block (CPU MC 64 / KC 128 / NC 512 / tile 128,
# micro-kernel 14 x 32; Triton interpreter tiles 16).
CPU_SHAPES = [(1, 1, 1), (7, 33, 5), (65, 31, 129), (130, 257, 67)]
TRITON_SHAPES = [(1, 1, 1), (7, 33, 5), (33, 19, 40)]


def _randn(shape, dtype, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)


def _act(y, activation):
    return {None: y, "relu": F.relu(y), "relu6": F.relu6(y)}[activation]


def _cuda_ready():
    return pyimgcls._backend.cuda_backend_ready()


# ----------------------------------------------------------------------------- GEMM accuracy
@pytest.mark.parametrize("step", CPU_GEMM_STEPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu_gemm_step_matches_reference(step, dtype, shape):
    M, K, N = shape
    a, b = _randn((M, K), dtype, 1), _randn((K, N), dtype, 2)
    out = ladder.matmul(a, b, step=step, backend="cpu")
    assert out.dtype == dtype and out.shape == (M, N) and out.is_contiguous()
    assert_close_to_reference(out, a.double() @ b.double(), scale=K ** 0.5)


@pytest.mark.parametrize("isa", ["generic", "avx2"])
@pytest.mark.parametrize("step", CPU_GEMM_STEPS)
def test_cpu_gemm_step_lower_isa(monkeypatch, isa, step):
    # The vectorised steps are compiled per instruction set; PYIMGCLS_CPU_ISA picks the lower ones.
    monkeypatch.setenv("PYIMGCLS_CPU_ISA", isa)
    M, K, N = 37, 130, 45
    a, b = _randn((M, K), torch.float32, 3), _randn((K, N), torch.float32, 4)
    assert_close_to_reference(ladder.matmul(a, b, step=step), a.double() @ b.double(), scale=K ** 0.5)


@pytest.mark.parametrize("isa", ["generic", "avx2"])
@pytest.mark.parametrize("step", CPU_CONV_STEPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cpu_conv_step_lower_isa(monkeypatch, isa, step, dtype):
    monkeypatch.setenv("PYIMGCLS_CPU_ISA", isa)
    x, w, b, stride, padding, k = _conv_case((2, 35, 7, 12, 6, 3, 3, 1, 1), dtype, "channels_last", 17)
    y = ladder.conv2d(x, w, b, stride=stride, padding=padding, step=step)
    assert_close_to_reference(y, F.conv2d(x.double(), w.double(), b.double(), stride, padding), scale=k ** 0.5)


@pytest.mark.parametrize("step", CPU_GEMM_STEPS)
def test_cpu_gemm_noncontiguous_and_empty(step):
    a = _randn((20, 9), torch.float32, 5).t()            # [9, 20], transposed view
    b = _randn((20, 40), torch.float32, 6)[:, ::2]       # [20, 20], strided view
    assert_close_to_reference(ladder.matmul(a, b, step=step), a.double() @ b.double(), scale=20 ** 0.5)
    z = ladder.matmul(torch.ones(3, 0), torch.ones(0, 4), step=step)   # K = 0: zeros
    assert torch.equal(z, torch.zeros(3, 4))
    assert ladder.matmul(torch.ones(0, 5), torch.ones(5, 4), step=step).shape == (0, 4)


@pytest.mark.parametrize("step", TRITON_STEPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_gemm_step_matches_reference(step, dtype, shape):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    M, K, N = shape
    a, b = _randn((M, K), dtype, 7, dev), _randn((K, N), dtype, 8, dev)
    out = ladder.matmul(a, b, step=step, backend="triton")
    assert out.dtype == dtype and out.shape == (M, N)
    ref = a.double().cpu() @ b.double().cpu()
    theirs = (a.float() @ b.float()).to(dtype) if dev == "cpu" else a @ b
    assert_close_to_reference(out, ref, torch_same_dtype=theirs, scale=K ** 0.5)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 33, 5), (65, 31, 129), (257, 130, 300)],
                         ids=lambda s: "x".join(map(str, s)))
def test_cuda_gemm_steps_match_reference(dtype, shape):
    M, K, N = shape
    a, b = _randn((M, K), dtype, 9, "cuda"), _randn((K, N), dtype, 10, "cuda")
    ref = a.double().cpu() @ b.double().cpu()
    major, minor = torch.cuda.get_device_capability()
    for s in ladder.steps("gemm", "cuda"):
        if str(dtype).replace("torch.", "") not in s.dtypes or (s.needs_sm90a and major != 9):
            continue
        if s.needs_sm90a and (K % 8 or N % 8):  # TMA needs 16-byte row pitches (documented limit)
            with pytest.raises((ValueError, RuntimeError)):
                ladder.matmul(a, b, step=s.number, backend="cuda")
            continue
        out = ladder.matmul(a, b, step=s.number, backend="cuda")
        assert_close_to_reference(out, ref, torch_same_dtype=a @ b, scale=K ** 0.5)


# ----------------------------------------------------------------------------- conv accuracy
# (N, C, H, W, O, KH, KW, stride, padding)
CONV_CASES = [
    (1, 1, 1, 1, 1, 1, 1, 1, 0),
    (2, 3, 9, 11, 5, 3, 3, 1, 1),
    (1, 5, 10, 7, 6, 3, 2, (2, 1), (1, 2)),
    (2, 17, 8, 8, 19, 1, 1, 2, 0),
    (1, 20, 13, 6, 9, 5, 4, 3, (2, 0)),
]


def _conv_case(case, dtype, layout, seed, device="cpu"):
    N, C, H, W, O, KH, KW, stride, padding = case
    x = _randn((N, C, H, W), dtype, seed, device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    w = _randn((O, C, KH, KW), dtype, seed + 1, device)
    b = _randn((O,), dtype, seed + 2, device)
    return x, w, b, stride, padding, C * KH * KW


@pytest.mark.parametrize("step", CPU_CONV_STEPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c)))
def test_cpu_conv_step_matches_reference(step, dtype, layout, case):
    x, w, b, stride, padding, k = _conv_case(case, dtype, layout, 11)
    activation = ("relu", None, "relu6")[step % 3]
    y = ladder.conv2d(x, w, b, stride=stride, padding=padding, step=step, backend="cpu", activation=activation)
    ref = _act(F.conv2d(x.double(), w.double(), b.double(), stride, padding), activation)
    assert y.dtype == dtype
    # The output comes back in the input's memory format.
    mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=mf)
    assert_close_to_reference(y, ref, scale=k ** 0.5)


@pytest.mark.parametrize("step", CPU_CONV_STEPS)
def test_cpu_conv_step_unbatched_nobias_noncontiguous(step):
    x = _randn((6, 4, 9, 10), torch.float32, 12)[::2, :, :, 1:]   # [3, 4, 9, 9] strided view, unbatched
    w = _randn((7, 3, 3, 3), torch.float32, 13)
    y = ladder.conv2d(x[:, 0], w, stride=2, padding=1, step=step)
    assert_close_to_reference(y, F.conv2d(x[:, 0].double(), w.double(), None, 2, 1), scale=27 ** 0.5)
    empty = ladder.conv2d(torch.zeros(0, 3, 5, 5), w, step=step)
    assert empty.shape == (0, 7, 3, 3)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c)))
def test_cuda_conv_steps_match_reference(dtype, layout, case):
    x, w, b, stride, padding, k = _conv_case(case, dtype, layout, 14, "cuda")
    ref = F.relu(F.conv2d(x.double().cpu(), w.double().cpu(), b.double().cpu(), stride, padding))
    theirs = F.relu(F.conv2d(x, w, b, stride, padding))
    major, _ = torch.cuda.get_device_capability()
    for s in ladder.steps("conv", "cuda"):
        if str(dtype).replace("torch.", "") not in s.dtypes or (s.needs_sm90a and major != 9):
            continue
        y = ladder.conv2d(x, w, b, stride=stride, padding=padding, step=s.number, backend="cuda",
                          activation="relu")
        assert_close_to_reference(y, ref, torch_same_dtype=theirs, scale=k ** 0.5)


# ----------------------------------------------------------------------------- step lists vs docs
def _doc_steps(backend, kind):
    """Rows `| N | `name` | description |` between `<!-- steps: backend kind -->` and `<!-- /steps -->`."""
    with open(DOC) as f:
        text = f.read()
    m = re.search(rf"<!-- steps: {backend} {kind} -->(.*?)<!-- /steps -->", text, re.S)
    assert m, f"docs/ladder.md has no step table for {backend} {kind}"
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`([a-z0-9_]+)`\s*\|", m.group(1), re.M)
    assert rows, f"docs/ladder.md: empty step table for {backend} {kind}"
    return [(int(n), name) for n, name in rows]


@pytest.mark.parametrize("backend,kind", [("cpu", "gemm"), ("cpu", "conv"), ("triton", "gemm")])
def test_documented_steps_match_code(backend, kind):
    got = [(s.number, s.name) for s in ladder.steps(kind, backend)]
    assert [n for n, _ in got] == list(range(1, len(got) + 1)), "steps must be numbered 1, 2, ... consecutively"
    assert _doc_steps(backend, kind) == got


@pytest.mark.parametrize("kind", ["gemm", "conv"])
def test_documented_cpu_steps_match_source_files(kind):
    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(os.path.join(ROOT, "csrc", "cpu", "ladder", kind))
                   if re.match(r"\d\d_", f))
    assert stems == [f"{n:02d}_{name}" for n, name in _doc_steps("cpu", kind)]


@pytest.mark.parametrize("kind", ["gemm", "conv"])
def test_documented_cuda_steps_match_source_files(kind):
    # Checked on every machine: the CUDA sources exist even where they cannot run. A step lives in
    # csrc/cuda/ladder/<kind>/NN_<name>.cuh, or (sm_90a-only) in csrc/cuda/sm90/.
    folder = os.path.join(ROOT, "csrc", "cuda", "ladder", kind)
    if not os.path.isdir(folder):
        pytest.skip(f"{folder} does not exist in this checkout")
    files = {os.path.splitext(f)[0] for f in os.listdir(folder) if re.match(r"\d\d_", f)}
    sm90 = os.path.join(ROOT, "csrc", "cuda", "sm90")
    sm90_files = {os.path.splitext(f)[0] for f in os.listdir(sm90)} if os.path.isdir(sm90) else set()
    documented = [f"{n:02d}_{name}" for n, name in _doc_steps("cuda", kind)]
    assert [n for n, _ in _doc_steps("cuda", kind)] == list(range(1, len(documented) + 1))
    assert files <= set(documented), f"undocumented CUDA {kind} steps: {sorted(files - set(documented))}"
    missing = [s for s in documented if s not in files and not any(s in f for f in sm90_files)]
    assert not missing, f"documented CUDA {kind} steps without a source file: {missing}"


@pytest.mark.parametrize("kind", ["gemm", "conv"])
def test_documented_cuda_steps_match_compiled_table(kind):
    if not _native.cuda_kernels_compiled():
        pytest.skip("the CUDA step table exists only in a build with the CUDA kernels")
    assert _doc_steps("cuda", kind) == [(s.number, s.name) for s in ladder.steps(kind, "cuda")]


def test_last_cpu_steps_call_production_kernels():
    # The last step of each CPU ladder is the production kernel, included and called, never copied.
    with open(os.path.join(ROOT, "csrc", "cpu", "ladder", "gemm", "06_microkernel.h")) as f:
        src = f.read()
    assert '#include "../../gemm.h"' in src and "pyimgcls::cpu::gemm(" in src
    with open(os.path.join(ROOT, "csrc", "cpu", "ladder", "conv", "05_fused_epilogue.h")) as f:
        src = f.read()
    assert '#include "../../conv.h"' in src and "conv2d_fwd(" in src
    a, b = _randn((50, 70), torch.float32, 15), _randn((70, 90), torch.float32, 16)
    with pyimgcls.use_backend("cpu"):
        assert torch.equal(ladder.matmul(a, b, step=CPU_GEMM_STEPS[-1]), pyimgcls.ops.matmul(a, b))


def test_step_records():
    for kind in ("gemm", "conv"):
        for s in ladder.steps(kind):
            assert s.dtypes == ("float32", "float64")
            assert s.description and s.stem == f"{s.number:02d}_{s.name}"
            assert s.layout == ("row_major" if kind == "gemm" else s.layout)
    assert [s.layout for s in ladder.steps("conv")] == ["nchw", "nchw", "nchw", "nhwc", "nhwc"]
    assert all(s.dtypes == ("float32", "float16", "bfloat16") for s in ladder.steps("gemm", "triton"))


# ----------------------------------------------------------------------------- bad input
def test_bad_step_lists_valid_steps():
    a = torch.ones(2, 2)
    with pytest.raises(ArgumentValueError, match=r"step: .*1 \(naive\).*6 \(microkernel\).*got 7"):
        ladder.matmul(a, a, step=7)
    with pytest.raises(ArgumentValueError, match=r"step: .*1 \(basic\)"):
        ladder.matmul(a, a, step=0, backend="triton")
    with pytest.raises(ArgumentValueError, match=r"step: .*5 \(fused_epilogue\)"):
        ladder.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1), step=9)
    with pytest.raises(ArgumentTypeError, match="step must be an int"):
        ladder.matmul(a, a, step="1")
    # The native layer rejects them too (never a crash).
    with pytest.raises(ValueError, match="step"):
        _native.C.ladder_gemm_cpu(99, 0, a.data_ptr(), a.data_ptr(), a.data_ptr(), 2, 2, 2)
    with pytest.raises(ValueError, match="dtype"):
        _native.C.ladder_gemm_cpu(1, 2, a.data_ptr(), a.data_ptr(), a.data_ptr(), 2, 2, 2)


def test_bad_kind_and_backend():
    with pytest.raises(ArgumentValueError, match="kind"):
        ladder.steps("pool")
    with pytest.raises(ArgumentValueError, match="backend"):
        ladder.steps("gemm", "torch")
    with pytest.raises(ArgumentValueError, match="no Triton convolution ladder"):
        ladder.steps("conv", "triton")
    with pytest.raises(ArgumentValueError, match="no Triton convolution ladder"):
        ladder.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1), step=1, backend="triton")
    if not _native.cuda_kernels_compiled():
        with pytest.raises(BackendError, match="cuda"):
            ladder.steps("gemm", "cuda")


def test_bad_matmul_arguments():
    a = torch.ones(3, 4)
    with pytest.raises(ArgumentTypeError, match="a: .*float32, float64.*float16"):
        ladder.matmul(a.half(), a.t().half(), step=1)
    with pytest.raises(ArgumentTypeError, match="b: dtype"):
        ladder.matmul(a, a.t().double(), step=1)
    with pytest.raises(ArgumentValueError, match="a.shape"):
        ladder.matmul(a, a, step=1)
    with pytest.raises(ArgumentValueError, match="a must be 2-D"):
        ladder.matmul(torch.ones(3), a, step=1)
    with pytest.raises(ArgumentValueError, match="b: device"):
        ladder.matmul(a, torch.ones(4, 3, device="meta"), step=1)
    with pytest.raises(BackendError, match="CPU tensors only"):
        ladder.matmul(a.to("meta"), torch.ones(4, 3, device="meta"), step=1)
    with pytest.raises(ArgumentTypeError, match="a must be a torch.Tensor"):
        ladder.matmul([[1.0]], a, step=1)
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="cuda"):
            ladder.matmul(a, a.t(), step=1, backend="cuda")


def test_bad_conv_arguments():
    x, w = torch.ones(1, 3, 5, 5), torch.ones(4, 3, 3, 3)
    with pytest.raises(ArgumentValueError, match="weight: expected 3 input channels"):
        ladder.conv2d(x, torch.ones(4, 2, 3, 3), step=1)
    with pytest.raises(ArgumentValueError, match="bias must be 1-D of size 4"):
        ladder.conv2d(x, w, torch.ones(3), step=1)
    with pytest.raises(ArgumentValueError, match="stride must be >= 1"):
        ladder.conv2d(x, w, stride=0, step=1)
    with pytest.raises(ArgumentValueError, match="padding must be >= 0"):
        ladder.conv2d(x, w, padding=-1, step=1)
    with pytest.raises(ArgumentTypeError, match="padding must be an int or a pair"):
        ladder.conv2d(x, w, padding="same", step=1)
    with pytest.raises(ArgumentValueError, match="activation"):
        ladder.conv2d(x, w, step=1, activation="gelu")
    with pytest.raises(ArgumentValueError, match="input: padded size"):
        ladder.conv2d(torch.ones(1, 3, 2, 2), w, step=1)
    with pytest.raises(ArgumentValueError, match="input must be 4-D"):
        ladder.conv2d(torch.ones(3, 5), w, step=1)
    with pytest.raises(ArgumentTypeError, match="weight: dtype"):
        ladder.conv2d(x, w.double(), step=1)
    with pytest.raises(ArgumentTypeError, match="input: .*takes float32, float64"):
        ladder.conv2d(x.half(), w.half(), step=1)
    with pytest.raises(ArgumentValueError, match="weight: device"):
        ladder.conv2d(x, w.to("meta"), step=1)


def test_readme_ladder_table_is_generated_from_newest_results():
    # The README table is written by benchmarks/bench_ladder.py from the newest results, never by hand.
    import importlib.util
    spec = importlib.util.spec_from_file_location("_bench_ladder", os.path.join(ROOT, "benchmarks", "bench_ladder.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    assert mod.START in text and mod.END in text
    body = text.split(mod.START, 1)[1].split(mod.END, 1)[0]
    assert mod.ladder_table(os.path.join(ROOT, "benchmarks", "results")).strip() in body, (
        "README ladder table is stale: run python benchmarks/bench_ladder.py --readme-only")
