"""2:4 semi-structured sparsity: prune_2_4 masks (fine-tuning keeps the pattern), the compressed
format (compress_2_4: values + mma.sp metadata) and ops.sparse_linear on every backend, the CUDA
kernel's data path through its CPU emulation (tests/emu/sparse_tc_emu.cpp)."""
from __future__ import annotations

import copy
import io

import pytest
import torch

import pyimgcls
from pyimgcls import nn as pnn
from pyimgcls import pruning
from pyimgcls.errors import ArgumentTypeError, ArgumentValueError

BACKENDS = ["cpu", "triton", "torch"]


class Net(torch.nn.Module):
    """Every branch of prune_2_4: a conv with 3 input channels (skipped), a 3x3 and a 1x1 conv with
    C_in % 4 == 0 (pruned), a grouped conv (skipped), a Linear with in % 4 == 0 (pruned) and one
    without (skipped)."""

    def __init__(self):
        super().__init__()
        self.c1 = pnn.Conv2d(3, 8, 3, padding=1, activation="relu")
        self.c2 = pnn.Conv2d(8, 12, 3, padding=1, activation="relu")
        self.c3 = pnn.Conv2d(12, 16, 1)
        self.dw = pnn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.fc1 = pnn.Linear(16, 10, activation="relu")
        self.fc2 = pnn.Linear(10, 5)

    def forward(self, x):
        x = self.dw(self.c3(self.c2(self.c1(x))))
        return self.fc2(self.fc1(x.mean((2, 3))))


PRUNED = ["c2", "c3", "fc1"]


def _net(seed=0):
    torch.manual_seed(seed)
    return Net()


def _groups(w):
    """Groups of 4 consecutive input channels (at each kernel tap), as prune_2_4 defines them."""
    if w.dim() == 4:
        w = w.permute(0, 2, 3, 1)
    return w.reshape(-1, 4)


def _assert_exactly_2_of_4(model, names=PRUNED):
    mods = dict(model.named_modules())
    for n in names:
        nz = (_groups(mods[n].weight.detach()) != 0).sum(1)
        assert bool((nz == 2).all()), f"{n}: groups with {sorted(set(nz.tolist()))} non-zeros"


def test_prune_report_and_pattern():
    m = _net()
    rep = pruning.prune_2_4(m)
    assert rep["pruned"] == PRUNED
    assert set(rep["skipped"]) == {"c1", "dw", "fc2"}
    assert "in_channels=3" in rep["skipped"]["c1"] and "groups=4" in rep["skipped"]["dw"]
    assert "in_features=10" in rep["skipped"]["fc2"]
    _assert_exactly_2_of_4(m)
    # the kept ones are the two largest of each group (weights before pruning)
    ref = _net()
    for n in PRUNED:
        w0 = _groups(getattr(ref, n).weight.detach()).abs()
        kept = _groups(getattr(m, n).weight.detach()) != 0
        top2 = w0.topk(2, dim=1).indices
        assert bool(kept.gather(1, top2).all())
    assert not (m.c1.weight == 0).any() and not (m.fc2.weight == 0).any()
    assert all(v["is_2_4"] and v["masked"] for k, v in pruning.sparsity_report(m).items() if k in PRUNED)


def test_kxk_groups_run_along_input_channels():
    """For a 3x3 conv, the 4-groups are 4 consecutive input channels at one (kh, kw) tap."""
    w = torch.randn(5, 8, 3, 3)
    mask = pruning.mask_2_4(w)
    assert torch.equal(mask.reshape(5, 2, 4, 3, 3).sum(2), torch.full((5, 2, 3, 3), 2))
    lin = torch.tensor([[1.0, -3.0, 2.0, 0.5, 0.0, 0.0, 0.0, 0.0]])
    assert pruning.mask_2_4(lin).tolist() == [[False, True, True, False, True, True, False, False]]


# Triton runs through the interpreter here (about 25 s a step of this net): one case, one step.
@pytest.mark.parametrize("backend,opt,steps", [("cpu", "sgd", 3), ("cpu", "adam", 3), ("cpu", "adamw", 3),
                                                ("torch", "adam", 2), ("triton", "adamw", 1)])
def test_fine_tuning_keeps_the_pattern(backend, opt, steps):
    """After optimizer steps (momentum, weight decay, Adam moments revive pruned weights in the stored
    tensor), what every forward uses is exactly 2:4 with the original mask, and equals the masked
    dense model computed on the same backend."""
    from helpers import device_for
    dev = device_for(backend) if backend == "triton" else torch.device("cpu")
    torch.manual_seed(1)
    m = _net(1).to(dev)
    pruning.prune_2_4(m)
    masks = {n: getattr(m, n).weight_mask_2_4.clone() for n in PRUNED}
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
            "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
            "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1)}[opt]
    o = make(m.parameters())
    x, y = torch.randn(2, 3, 4, 4).to(dev), torch.randint(0, 5, (2,)).to(dev)
    with pyimgcls.use_backend(backend):
        for _ in range(steps):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            o.step()
        if opt != "sgd":   # Adam's update of a zero-gradient weight is not 0: the stored weight is revived
            assert any(bool((getattr(m, n).weight[~masks[n]] != 0).any()) for n in PRUNED)
        out = m(x)
        _assert_exactly_2_of_4(m)
        for n in PRUNED:
            assert torch.equal(getattr(m, n).weight_mask_2_4, masks[n])
            assert torch.equal(getattr(m, n).weight != 0, masks[n])
        dense = copy.deepcopy(m)
        pruning.remove_masks(dense)
        assert torch.equal(dense(x), out)


def test_two_forwards_one_backward_and_eval_do_not_rewrite():
    m = _net()
    pruning.prune_2_4(m)
    x = torch.randn(2, 3, 4, 4)
    v = m.c2.weight._version
    loss = m(x).sum() + m(x).sum()
    loss.backward()
    assert m.c2.weight._version == v
    m.c2.weight.data[0, 0, 0, 0] = 5.0    # data writes bump no version: apply_masks is the explicit path
    pruning.apply_masks(m)
    with torch.no_grad():
        m.c2.weight.add_(1.0)
    m(x)
    _assert_exactly_2_of_4(m)


def test_checkpoint_round_trip_weights_only(tmp_path):
    m = _net(2)
    pruning.prune_2_4(m)
    x = torch.randn(2, 3, 6, 6)
    out = m(x)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert all(f"{n}.weight_mask_2_4" in sd for n in PRUNED)
    fresh = _net(7)
    pruning.prune_2_4(fresh)     # masks of other weights: load_state_dict replaces them
    fresh.load_state_dict(sd)
    assert torch.equal(fresh(x), out)
    for n in PRUNED:
        assert torch.equal(getattr(fresh, n).weight_mask_2_4, getattr(m, n).weight_mask_2_4)
    # baked: the keys of the unpruned model, loadable into a plain one; hooks gone
    assert pruning.remove_masks(fresh) == PRUNED
    assert set(fresh.state_dict()) == set(_net().state_dict())
    assert all(not mod._forward_pre_hooks for mod in fresh.modules())
    plain = _net(9)
    plain.load_state_dict(fresh.state_dict())
    assert torch.equal(plain(x), out)
    _assert_exactly_2_of_4(plain)
    # deepcopy keeps a working hook bound to the copy
    pruning.prune_2_4(plain)
    twin = copy.deepcopy(plain)
    with torch.no_grad():
        twin.fc1.weight.fill_(1.0)
    twin(x)
    _assert_exactly_2_of_4(twin)
    assert not torch.equal(twin.fc1.weight, plain.fc1.weight)


def test_bad_input():
    with pytest.raises(ArgumentTypeError, match="'model'"):
        pruning.prune_2_4("resnet")
    with pytest.raises(ArgumentValueError, match="'criterion'"):
        pruning.prune_2_4(_net(), criterion="l1")
    with pytest.raises(ArgumentValueError, match="no Conv2d or Linear"):
        pruning.prune_2_4(torch.nn.ReLU())
    m = _net()
    pruning.prune_2_4(m)
    with pytest.raises(ArgumentValueError, match="already has 2:4 masks"):
        pruning.prune_2_4(m)
    with pytest.raises(ArgumentValueError, match="multiple of 4"):
        pruning.mask_2_4(torch.randn(3, 6))
    with pytest.raises(ArgumentTypeError, match="'weight'"):
        pruning.mask_2_4(torch.ones(4, 4, dtype=torch.int64))
    with pytest.raises(ArgumentTypeError, match="'model'"):
        pruning.remove_masks(None)


# ---------------------------------------------------------------------------------------------
# Compressed format and ops.sparse_linear
# ---------------------------------------------------------------------------------------------

import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

import numpy as np  # noqa: E402

from pyimgcls import ops  # noqa: E402
from pyimgcls.errors import BackendError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sparse_weight(N, K, seed=0, dtype=torch.float64, ints=False):
    """A 2:4 weight; some groups keep fewer than 2 non-zeros (0 or 1), exercising the zero fill."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.randint(-3, 4, (N, K), generator=g).to(dtype) if ints else torch.randn(N, K, generator=g, dtype=dtype))
    w[w == 0] = 1
    w = w * pruning.mask_2_4(w)
    drop = torch.rand(N, K, generator=g) < 0.1
    return w.masked_fill(drop, 0.0)


def test_compress_format_by_hand():
    w = torch.tensor([[0.0, 5.0, 0.0, 7.0]])
    v, m = ops.compress_2_4(w)
    assert v.tolist() == [[5.0, 7.0]]
    assert m.dtype == torch.int16 and m.tolist() == [[0x444D]]      # group 0: i0 = 1, i1 = 3; pads 0x4
    w = torch.zeros(1, 16)
    w[0, 14], w[0, 15], w[0, 0] = 2.0, 3.0, 4.0                     # last group: indices 2, 3 -> 0xE
    v, m = ops.compress_2_4(w)
    assert v.tolist() == [[4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 3.0]]
    assert (int(m[0, 0]) & 0xFFFF) == 0xE444                        # groups 1, 2 all zero: 0, 1
    assert int(m[0, 0]) < 0                                         # stored as int16 bit pattern


@pytest.mark.parametrize("N,K", [(1, 4), (5, 20), (33, 32), (17, 100)])
def test_compress_round_trip(N, K):
    w = _sparse_weight(N, K, seed=N + K)
    v, m = ops.compress_2_4(w)
    assert v.shape == (N, K // 2) and m.shape == (N, -(-K // 16))
    assert torch.equal(ops.decompress_2_4(v, m), w)
    conv = w.reshape(N, K, 1, 1)
    v2, m2 = ops.compress_2_4(conv)
    assert torch.equal(v2, v) and torch.equal(m2, m)


SHAPES = [((1, 4), 1), ((3, 20), 5), ((67, 36), 33), ((2, 5, 100), 20), ((130, 68), 17)]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_linear_matches_float64(backend, dtype, bias):
    from helpers import assert_close_to_reference, device_for
    dev = device_for(backend) if backend == "triton" else torch.device("cpu")
    shapes = SHAPES if backend != "triton" else [SHAPES[1], SHAPES[2]]
    for shape, N in shapes:
        K = shape[-1]
        w = _sparse_weight(N, K, seed=K, dtype=dtype)
        x = torch.randn(*shape, dtype=torch.float64).to(dtype)
        b = torch.randn(N, dtype=torch.float64).to(dtype) if bias else None
        v, m = ops.compress_2_4(w)
        ref = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
        with pyimgcls.use_backend(backend):
            out = ops.sparse_linear(*(None if t is None else t.to(dev) for t in (x, v, m, b)))
        assert out.dtype == dtype and out.shape == (*shape[:-1], N)
        theirs = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float()).to(dtype)
        assert_close_to_reference(out, ref, theirs)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_sparse_linear_cuda_kernel(dtype):
    """The mma.sp kernel on a GPU (skipped without one): partial CTAs in M and N, K tails below one
    32-step, batch 1, an odd element offset, bias or none; float32 refused."""
    from helpers import assert_close_to_reference
    for shape, N in SHAPES + [((300, 4100), 97)]:
        K = shape[-1]
        w = _sparse_weight(N, K, seed=K, dtype=dtype).cuda()
        x = torch.randn(*shape, dtype=torch.float64).to(dtype).cuda()
        for b in (None, torch.randn(N, dtype=torch.float64).to(dtype).cuda()):
            v, m = ops.compress_2_4(w)
            with pyimgcls.use_backend("cuda"):
                out = ops.sparse_linear(x, v, m, b)
            ref = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
            theirs = torch.nn.functional.linear(x, w, b)
            assert_close_to_reference(out, ref, theirs)
    odd = torch.randn(3 * 36 + 1, device="cuda").to(dtype)[1:].view(3, 36)
    v, m = ops.compress_2_4(_sparse_weight(5, 36, dtype=dtype).cuda())
    with pyimgcls.use_backend("cuda"):
        assert_close_to_reference(ops.sparse_linear(odd, v, m), odd.double() @ ops.decompress_2_4(v, m).double().t(),
                                  odd @ ops.decompress_2_4(v, m).t())
        with pytest.raises(BackendError, match="float16 or bfloat16"):
            ops.sparse_linear(odd.float(), v.float(), m)


def test_sparse_linear_strided_input_and_threads():
    from helpers import assert_close_to_reference, omp_threads
    N, K = 40, 64
    w = _sparse_weight(N, K, seed=3, dtype=torch.float32)
    v, m = ops.compress_2_4(w)
    base = torch.randn(K, 150)
    x = base.t()[1:]                                   # [149, K], row stride 1: not contiguous
    ref = x.double() @ w.double().t()
    with omp_threads(3):
        out = ops.sparse_linear(x, v, m)
    assert_close_to_reference(out, ref)
    xcl = torch.randn(2, K, 3, 3).to(memory_format=torch.channels_last).permute(0, 2, 3, 1)  # 1x1 conv as NHWC
    assert_close_to_reference(ops.sparse_linear(xcl, v, m), xcl.double() @ w.double().t())
    assert ops.sparse_linear(torch.randn(0, K), v, m).shape == (0, N)
    odd = torch.randn(3 * K + 1)[1:].view(3, K)        # odd element offset: copied for the 32-bit pair loads
    assert odd.storage_offset() == 1
    assert_close_to_reference(ops.sparse_linear(odd, v, m), odd.double() @ w.double().t())
    # more features than one decompression panel (4 Mi scratch elements): K = 4, N = 2^20 + 37
    N, K = (1 << 20) + 37, 4
    w = _sparse_weight(N, K, seed=5, dtype=torch.float32)
    v, m = ops.compress_2_4(w)
    x = torch.randn(2, K)
    b = torch.randn(N)
    assert_close_to_reference(ops.sparse_linear(x, v, m, b), torch.addmm(b.double(), x.double(), w.double().t()))


def test_sparse_linear_custom_op_opcheck_and_compile():
    """The registered op (what torch.compile traces) passes opcheck, and a compiled call equals eager."""
    from pyimgcls.ops.sparse import _sparse_linear_op
    w = _sparse_weight(12, 32, seed=4, dtype=torch.float32)
    v, m = ops.compress_2_4(w)
    x, b = torch.randn(5, 32), torch.randn(12)
    torch.library.opcheck(_sparse_linear_op, (x, v, m, b, "cpu"))
    torch.library.opcheck(_sparse_linear_op, (x, v, m, None, "torch"))
    with torch.no_grad():
        compiled = torch.compile(lambda x: ops.sparse_linear(x, v, m, b), backend="eager", fullgraph=True)
        assert torch.equal(compiled(x), ops.sparse_linear(x, v, m, b))


def test_sparse_linear_equals_the_pruned_linear_layer():
    """prune_2_4 -> compress -> sparse_linear reproduces the masked nn.Linear."""
    lin = pnn.Linear(32, 12)
    pruning.prune_2_4(lin)
    pruning.remove_masks(lin)
    v, m = ops.compress_2_4(lin.weight)
    x = torch.randn(5, 32)
    with torch.no_grad():
        assert torch.allclose(ops.sparse_linear(x, v, m, lin.bias), lin(x), rtol=1e-5, atol=1e-6)


def test_sparse_bad_input():
    w = _sparse_weight(8, 16, dtype=torch.float32)
    v, m = ops.compress_2_4(w)
    x = torch.randn(3, 16)
    with pytest.raises(ArgumentValueError, match="not 2:4 sparse: row 0"):
        ops.compress_2_4(torch.ones(2, 8))
    with pytest.raises(ArgumentValueError, match="'weight'"):
        ops.compress_2_4(torch.randn(4, 6))
    with pytest.raises(ArgumentValueError, match="'weight'"):
        ops.compress_2_4(torch.randn(4, 8, 3, 3))
    with pytest.raises(ArgumentTypeError, match="'weight'"):
        ops.compress_2_4(torch.ones(4, 8, dtype=torch.int32))
    with pytest.raises(ArgumentValueError, match="'input'"):
        ops.sparse_linear(torch.randn(3, 12), v, m)
    with pytest.raises(ArgumentTypeError, match="'metadata'"):
        ops.sparse_linear(x, v, m.to(torch.int32))
    with pytest.raises(ArgumentValueError, match="'metadata'"):
        ops.sparse_linear(x, v, m[:, :0])
    with pytest.raises(ArgumentTypeError, match="'values'"):
        ops.sparse_linear(x, v[0], m)
    with pytest.raises(ArgumentValueError, match="'bias'"):
        ops.sparse_linear(x, v, m, torch.randn(7))
    with pytest.raises(ArgumentValueError, match="requires grad"):
        ops.sparse_linear(x.requires_grad_(), v, m)
    with pytest.raises(ArgumentValueError, match="invalid index pair"):
        ops.decompress_2_4(v, torch.zeros_like(m))
    from pyimgcls.backends.cuda import sparse as cuda_sparse
    with pytest.raises(BackendError, match="float16 or bfloat16"):
        cuda_sparse.sparse_linear(torch.randn(2, 16), v, m, None)


# ---------------------------------------------------------------------------------------------
# The CUDA kernel's data path, emulated on the CPU (tests/emu/sparse_tc_emu.cpp)
# ---------------------------------------------------------------------------------------------

EMU_SRC = os.path.join(ROOT, "tests", "emu", "sparse_tc_emu.cpp")
# (M, N, K, bias): one element; K below one 32-step and not a multiple of 16; exactly one CTA tile;
# partial CTAs in M and N with K = 3 steps + a 4-element tail; several CTAs in both directions.
EMU_CASES = [(1, 1, 4, False), (7, 13, 20, True), (64, 32, 32, False), (65, 33, 100, True), (130, 70, 68, True)]


@pytest.fixture(scope="module")
def emu_build(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: the emulation is a C++ program built by the test")
    d = tmp_path_factory.mktemp("sparse_emu")

    def build(define=None):
        exe = str(d / ("emu_" + (define or "clean")))
        cmd = ["g++", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-I", os.path.join(ROOT, "csrc"),
               *([f"-D{define}"] if define else []), EMU_SRC, "-o", exe]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return exe
    build.dir = d
    return build


def _emulate(exe, d, M, N, K, bias, seed):
    w = _sparse_weight(N, K, seed=seed, ints=True)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randint(-3, 4, (M, K), generator=g).double()
    b = torch.randint(-5, 6, (N,), generator=g).double() if bias else None
    v, m = ops.compress_2_4(w.half())           # the real encoder, on the kernel's dtype
    path_in, path_out = str(d / f"in_{M}_{N}_{K}"), str(d / f"out_{M}_{N}_{K}")
    with open(path_in, "wb") as f:
        f.write(np.array([M, N, K, int(bias)], dtype=np.int64).tobytes())
        f.write(x.numpy().tobytes())
        f.write(v.double().numpy().tobytes())
        f.write(m.numpy().view(np.uint16).tobytes())
        if bias:
            f.write(b.numpy().tobytes())
    res = subprocess.run([exe, path_in, path_out], capture_output=True, text=True, timeout=300)
    assert res.returncode in (0, 1), res.stderr
    out = torch.from_numpy(np.fromfile(path_out, dtype=np.float64).reshape(M, N))
    ref = torch.nn.functional.linear(x, w, b)
    return res.returncode == 0 and torch.equal(out, ref), res.stdout


def test_emulated_kernel_matches_reference(emu_build):
    exe = emu_build()
    for i, (M, N, K, bias) in enumerate(EMU_CASES):
        ok, msg = _emulate(exe, emu_build.dir, M, N, K, bias, seed=i)
        assert ok, f"M={M} N={N} K={K}: {msg}"


@pytest.mark.parametrize("plant", ["EMU_PLANT_LANE", "EMU_PLANT_META", "EMU_PLANT_BFRAG"])
def test_planted_bug_is_caught(emu_build, plant):
    """A wrong lane map, swapped metadata halves or a wrong B k-offset map must fail the emulation."""
    exe = emu_build(plant)
    M, N, K, bias = EMU_CASES[3]
    ok, msg = _emulate(exe, emu_build.dir, M, N, K, bias, seed=3)
    assert not ok, f"planted {plant} not caught: {msg}"


def test_prune_cli_2_4(tmp_path, capsys):
    """pyimgcls prune --2:4 --amount 0: same widths, weights 2:4 in every eligible layer, loadable
    (weights only) and evaluable."""
    from pyimgcls import cli

    def run(*argv):
        try:
            return cli.main([str(a) for a in argv])
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 1
    small = ["--data", "digits", "--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--no-plots",
             "--kernels", "cpu", "--quiet"]
    assert run("train", *small, "--epochs", 1, "--out", tmp_path / "run") == 0
    out = tmp_path / "sparse.pt"
    assert run("prune", "--checkpoint", tmp_path / "run" / "best.pt", "--amount", 0, "--2:4", "--out", out) == 0
    assert "2:4 sparse weights in" in capsys.readouterr().out
    data = torch.load(out, weights_only=True)
    rec = data["meta"]["pruning"][-1]["sparsity"]
    assert rec["pattern"] == "2:4" and rec["layers"]
    model = pyimgcls.load_model(out)
    base = pyimgcls.load_model(tmp_path / "run" / "best.pt")
    mods = dict(model.named_modules())
    for name in rec["layers"]:
        nz = (_groups(mods[name].weight.detach()) != 0).sum(1)
        assert bool((nz <= 2).all())
        assert mods[name].weight.shape == dict(base.named_modules())[name].weight.shape
    assert run("eval", "--checkpoint", out, "--limit-test", 32, "--kernels", "cpu") == 0


def test_train_init_keeps_2_4(tmp_path, capsys):
    """train --init of a `prune --2:4` file re-applies the masks: after a fine-tune epoch (and after
    --resume, and with --ema-decay) every pruned position is still zero while the kept weights moved,
    best.pt / checkpoint.pt record the pattern with plain state_dicts (eval, predict, quantize, prune
    read them), checkpoint.pt keeps the exact masks. A file whose weights contradict its record is refused."""
    from PIL import Image

    from pyimgcls import cli

    def run(*argv):
        try:
            return cli.main([str(a) for a in argv])
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 1
    small = ["--data", "digits", "--limit-train", "96", "--limit-test", "32", "--batch-size", "32", "--no-plots",
             "--kernels", "cpu", "--quiet", "--threads", "1"]
    assert run("train", *small, "--epochs", 1, "--out", tmp_path / "run") == 0
    sparse = tmp_path / "sparse.pt"
    assert run("prune", "--checkpoint", tmp_path / "run" / "best.pt", "--amount", 0, "--2:4", "--out", sparse) == 0
    src = torch.load(sparse, weights_only=True)
    layers = src["meta"]["sparsity"]["layers"]
    assert src["meta"]["sparsity"]["pattern"] == "2:4" and layers
    masks = {n: pruning.mask_2_4(src["model"][n + ".weight"]) for n in layers}

    def check(path):
        data = torch.load(path, weights_only=True)
        assert data["meta"]["sparsity"] == {"pattern": "2:4", "layers": layers}
        assert not [k for k in data["model"] if "mask" in k]          # a plain state_dict
        for n in layers:
            w, w0 = data["model"][n + ".weight"], src["model"][n + ".weight"]
            assert bool((w[~masks[n]] == 0).all()), f"{path.name} {n}: pruned weights revived"
            assert not torch.equal(w[masks[n]], w0[masks[n]]), f"{path.name} {n}: kept weights did not train"
        return data

    ft = tmp_path / "ft"
    assert run("train", *small, "--init", sparse, "--epochs", 1, "--out", ft) == 0
    check(ft / "best.pt")
    ck = check(ft / "checkpoint.pt")
    assert set(ck["masks_2_4"]) == set(layers)
    assert all(torch.equal(ck["masks_2_4"][n], masks[n]) for n in layers)
    assert run("train", "--resume", "--out", ft, "--epochs", 2, "--quiet", "--no-plots") == 0
    assert all(torch.equal(torch.load(ft / "checkpoint.pt", weights_only=True)["masks_2_4"][n], masks[n])
               for n in layers)
    check(ft / "checkpoint.pt")
    # what reads checkpoints: eval, predict, quantize, load_model, and prune (amount 0 keeps the record)
    assert run("eval", "--checkpoint", ft / "best.pt", "--limit-test", 32, "--kernels", "cpu") == 0
    img = tmp_path / "d.png"
    Image.new("L", (32, 32), 128).save(img)
    assert run("predict", "--checkpoint", ft / "best.pt", img, "--kernels", "cpu") == 0
    assert run("quantize", "--checkpoint", ft / "best.pt", "--calibration-batches", 1, "--limit-test", 32,
               "--kernels", "cpu", "--out", tmp_path / "q.pt") == 0
    assert pyimgcls.load_model(ft / "checkpoint.pt") is not None
    again = tmp_path / "again.pt"
    assert run("prune", "--checkpoint", ft / "best.pt", "--amount", 0, "--out", again) == 0
    assert torch.load(again, weights_only=True)["meta"]["sparsity"]["layers"] == layers
    # the EMA copy (best.pt holds it) keeps the pattern too
    ema = tmp_path / "ema"
    assert run("train", *small, "--init", sparse, "--epochs", 1, "--ema-decay", 0.5, "--out", ema) == 0
    check(ema / "best.pt")
    # a record the weights contradict: refused naming --init
    bad = dict(src, model=dict(src["model"]))
    bad["model"][layers[0] + ".weight"] = torch.ones_like(src["model"][layers[0] + ".weight"])
    torch.save(bad, tmp_path / "bad.pt")
    capsys.readouterr()
    assert run("train", *small, "--init", tmp_path / "bad.pt", "--epochs", 1, "--out", tmp_path / "b") == 2
    err = capsys.readouterr().err
    assert "--init" in err and "2:4" in err and layers[0] in err
    bad = dict(src, meta=dict(src["meta"], sparsity={"pattern": "1:4", "layers": layers}))
    torch.save(bad, tmp_path / "bad2.pt")
    assert run("train", *small, "--init", tmp_path / "bad2.pt", "--epochs", 1, "--out", tmp_path / "c") == 2
    err = capsys.readouterr().err
    assert "--init" in err and "'1:4' is not supported" in err
