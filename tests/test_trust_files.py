"""Files from users are data, never code, and never a reason to run out of memory; work is never lost
to a crash or a diverging run (issue #15).

* Checkpoints and --pretrained weights load with ``torch.load(weights_only=True)`` only: a hostile
  pickle is refused (exit 2, one line naming the file) and runs nothing.
* Images, CIFAR pickles and IDX files are checked against what they claim before anything is decoded
  or allocated.
* A run whose loss or weights become non-finite stops (exit 3, one line) without saving them.
* ``atomic_save`` leaves no temporary file and fsyncs the directory.
"""
from __future__ import annotations

import gzip
import os
import pickle
import stat
import struct
import subprocess
import sys
import tracemalloc
import types
import zlib

import numpy as np
import pytest
import torch

from pyimgcls import cli
from pyimgcls.data import DataError, load_image, read_idx
from pyimgcls.data import datasets as DS
from pyimgcls.training import checkpoint as C
from pyimgcls.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--data", "digits", "--limit-train", "320", "--limit-test", "120", "--batch-size", "32", "--no-plots",
         "--kernels", "cpu", "--epochs", "1"]


def run_cli(*argv) -> int:
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def run_sub(*argv, timeout=240):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-m", "pyimgcls", *map(str, argv)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def peak_bytes(fn) -> int:
    """Peak memory traced while ``fn`` runs (numpy reports its array buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# ----------------------------------------------------------------------------- hostile checkpoints
class _Hostile:
    """Unpickling this creates ``marker``: what a crafted .pt file can do under weights_only=False."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tiny_checkpoint(path, image_size=32):
    """A checkpoint as ``pyimgcls train`` writes it, enough for eval / predict (untrained LeNet-5)."""
    model = loop.build_model("lenet5", 10, 1)
    meta = {"dataset": "digits", "num_classes": 10, "in_channels": 1, "image_size": image_size,
            "class_names": [str(i) for i in range(10)], "mean": [0.5], "std": [0.25], "model": "lenet5"}
    torch.save({"format": C.FORMAT, "meta": meta, "model": model.state_dict()}, path)


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": C.FORMAT, "model": _Hostile(marker)}, path)
    return path, marker


@pytest.mark.parametrize("command", ["train --pretrained", "eval", "predict", "train --resume"])
def test_hostile_pickle_runs_nothing(tmp_path, evil, command):
    """Each way a .pt file gets in, as a real process: exit 2 with one line naming the file, and the
    payload never runs."""
    path, marker = evil
    if command == "train --pretrained":
        argv, named = ["train", *SMALL, "--pretrained", path, "--out", tmp_path / "run"], path
    elif command == "eval":
        argv, named = ["eval", "--checkpoint", path, "--limit-test", "8", "--kernels", "cpu"], path
    elif command == "predict":
        from PIL import Image
        Image.new("L", (32, 32)).save(tmp_path / "x.png")
        argv, named = ["predict", "--checkpoint", path, "--kernels", "cpu", tmp_path / "x.png"], path
    else:
        (tmp_path / "resume").mkdir()
        named = tmp_path / "resume" / "checkpoint.pt"
        named.write_bytes(path.read_bytes())
        argv = ["train", *SMALL, "--resume", "--out", tmp_path / "resume"]
    p = run_sub(*argv)
    assert not marker.exists()
    assert p.returncode == 2, p.stderr
    line = one_line_error(p.stderr)
    assert str(named) in line and "refused" in line, line
    assert "weights_only` set to `False`" not in line          # torch's advice is not passed on


def test_the_hostile_pickle_is_hostile(evil):
    """What the tests above guard against: an unsafe load of that file runs its payload."""
    path, marker = evil
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_load_pretrained_never_falls_back_to_an_unsafe_load(tmp_path, evil, monkeypatch):
    path, marker = evil
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)
    monkeypatch.setattr(torch, "load", spy)
    with pytest.raises(DataError, match="evil.pt"):
        loop.load_pretrained(loop.build_model("lenet5", 10, 1), str(path))
    assert calls == [True] and not marker.exists()


def test_package_has_no_unsafe_load():
    """Every torch.load in the package passes weights_only=True; no pickle.load(s), no
    numpy.load(allow_pickle=True) (the CIFAR reader uses its own restricted unpickler)."""
    import ast

    def kw(call, name):
        return next((k.value for k in call.keywords if k.arg == name), None)

    offenders, loads = [], 0
    for root, _, files in os.walk(os.path.join(REPO, "pyimgcls")):
        for fn in files:
            if not fn.endswith(".py"):
                continue
            path = os.path.join(root, fn)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name)):
                    continue
                mod, attr = node.func.value.id, node.func.attr
                where = f"{path}:{node.lineno}"
                if mod == "torch" and attr == "load":
                    loads += 1
                    w = kw(node, "weights_only")
                    if not (isinstance(w, ast.Constant) and w.value is True):
                        offenders.append(where)
                elif mod == "pickle" and attr in ("load", "loads"):
                    offenders.append(where)
                elif mod in ("np", "numpy") and attr == "load":
                    a = kw(node, "allow_pickle")
                    if a is not None and not (isinstance(a, ast.Constant) and a.value is False):
                        offenders.append(where)
    assert loads >= 1 and not offenders, offenders


def test_pretrained_with_nan_weights_is_refused(tmp_path, capsys):
    sd = loop.build_model("lenet5", 10, 1).state_dict()
    sd["features.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    assert run_cli("train", *SMALL, "--pretrained", tmp_path / "nan.pt", "--out", tmp_path / "run") == 2
    line = one_line_error(capsys.readouterr().err)
    assert "nan.pt" in line and "features.0.weight" in line


# --------------------------------------------------------------------------------- image bombs
def _png(w, h) -> bytes:
    """A valid PNG header claiming w x h grey pixels, with (far) fewer pixels behind it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _gif(w, h) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0) + b"," + struct.pack("<HHHHB", 0, 0, w, h, 0)
            + b"\x02\x02\x44\x01\x00;")


@pytest.mark.parametrize("name, size", [
    ("bomb.png", 100_000),       # over twice Pillow's limit: DecompressionBombError
    ("warn.png", 10_000),        # between Pillow's limit and twice it: a warning only
    ("big.png", 9_000),          # under Pillow's limit, far over ours for 32x32 input
    ("bomb.gif", 65_535),
])
def test_image_bombs_are_refused_before_decoding(tmp_path, monkeypatch, name, size):
    from PIL import ImageFile

    path = tmp_path / name
    path.write_bytes(_gif(size, size) if name.endswith(".gif") else _png(size, size))

    def load(self):
        raise AssertionError(f"{name} was decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(DataError, match="too large") as e:
        load_image(str(path), 32, 1)
    assert name in str(e.value)


def test_real_oversized_image_is_refused_and_limit_follows_image_size(tmp_path):
    """A genuine 5000x5000 PNG (25 KB on disk, 25 MB decoded) is over the limit for 32x32 input;
    the limit grows with --image-size but never past Pillow's own."""
    from PIL import Image

    path = tmp_path / "flat.png"
    Image.new("L", (5000, 5000)).save(path)
    assert path.stat().st_size < 200_000
    with pytest.raises(DataError, match="too large"):
        load_image(str(path), 32, 1)
    assert DS.image_pixel_limit(32) < 5000 * 5000 < DS.image_pixel_limit(224)
    assert DS.image_pixel_limit(10_000) == Image.MAX_IMAGE_PIXELS
    assert load_image(str(path), 224, 1).shape == (1, 224, 224)


def test_predict_on_an_image_bomb_exits_2_one_line(tmp_path):
    _tiny_checkpoint(tmp_path / "ck.pt")
    (tmp_path / "bomb.png").write_bytes(_png(100_000, 100_000))
    p = run_sub("predict", "--checkpoint", tmp_path / "ck.pt", "--kernels", "cpu", tmp_path / "bomb.png")
    assert p.returncode == 2, p.stderr
    assert "bomb.png" in one_line_error(p.stderr)


# ------------------------------------------------------------------------------- CIFAR pickles
def _cifar_dir(tmp_path, hostile: bytes):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(DS.cifar_batch_bytes(rng.integers(0, 256, (2, 3072)), [1, 2]))
    (root / "data_batch_2").write_bytes(hostile)
    return f"cifar10:{tmp_path}"


class _ClaimsShape:
    """Pickles as numpy does (``_reconstruct`` + state) but claims ``shape`` for a few bytes of data."""

    def __init__(self, shape, data=b"\0" * 3072):
        self.shape, self.data = shape, data

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct
        return (_reconstruct, (np.ndarray, self.shape, b"B"), (1, self.shape, np.dtype("u1"), False, self.data))


class _CallsNdarray:
    def __reduce__(self):
        return (np.ndarray, ((10 ** 10,), "u1"))


@pytest.mark.parametrize("data", [_ClaimsShape((10 ** 10,)), _ClaimsShape((10 ** 6, 10 ** 4)), _CallsNdarray()],
                         ids=["claims-1e10", "claims-1e6x1e4", "calls-ndarray"])
def test_cifar_pickle_claiming_1e10_elements_is_refused_before_allocating(tmp_path, data):
    spec = _cifar_dir(tmp_path, pickle.dumps({b"data": data, b"labels": [1]}, protocol=2))
    errors = []

    def load():
        try:
            DS.load_dataset(spec)
        except DataError as e:
            errors.append(str(e))
    assert peak_bytes(load) < 64 << 20
    assert len(errors) == 1 and "data_batch_2" in errors[0]


def _p2(*ops: bytes) -> bytes:
    return b"\x80\x02" + b"".join(ops) + b"."


def _unicode(s: str) -> bytes:
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def test_cifar_pickle_cannot_amplify_memory_through_codecs(tmp_path):
    """Two ways a few bytes of pickle could ask for much memory through ``_codecs.encode``: chained
    'hex' encodings (doubling each time) and re-encoding one memoised string many times."""
    encode = b"c_codecs\nencode\nq\x000"                   # GLOBAL, BINPUT 0, POP
    chain = b"h\x00(" + _unicode("ab" * 8192) + _unicode("latin1") + b"tR"      # 16 KB of bytes
    for _ in range(12):                                              # ... doubled 12 times: 64 MB
        chain = b"h\x00(" + chain + _unicode("hex") + b"tR"
    hex_bomb = _p2(encode, chain)
    memo = _p2(encode, _unicode("y" * (1 << 20)), b"q\x010", _unicode("latin1"), b"q\x020", b"]",
               b"h\x00h\x01h\x02\x86Ra" * 200)                     # 200 x encode(the same 1 MB string)
    for name, data in (("hex", hex_bomb), ("memo", memo)):
        path = tmp_path / name
        path.write_bytes(data)
        errors = []

        def load():
            try:
                DS._read_cifar_batch(str(path))
            except DataError as e:
                errors.append(str(e))
        assert peak_bytes(load) < 16 << 20, name
        assert len(errors) == 1 and name in errors[0], name


def test_cifar_unpickler_reads_numpy_pickles_of_every_protocol(tmp_path):
    data = np.arange(2 * 3072).reshape(2, 3072).astype(np.uint8)
    for proto in (2, 3, 4):
        path = tmp_path / f"b{proto}"
        path.write_bytes(pickle.dumps({b"data": data, b"labels": [np.int64(4), 7]}, protocol=proto))
        x, y = DS._read_cifar_batch(str(path))
        assert x.shape == (2, 3, 32, 32) and np.array_equal(x.reshape(2, -1), data) and y.tolist() == [4, 7]


# ---------------------------------------------------------------------------------------- IDX
def _idx_header(dims) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def test_idx_header_must_match_the_file_before_it_is_read(tmp_path):
    """A 40 MB file whose header claims 10 bytes is refused from its size alone (nothing read), and
    one that claims 10^10 elements is refused too."""
    big = tmp_path / "big-idx1-ubyte"
    with open(big, "wb") as f:
        f.write(_idx_header([10]))
        f.truncate(40 << 20)
    errors = []

    def load():
        try:
            read_idx(str(big))
        except DataError as e:
            errors.append(str(e))
    assert peak_bytes(load) < 8 << 20
    assert len(errors) == 1 and "big-idx1-ubyte" in errors[0] and "header says [10]" in errors[0]
    claims = tmp_path / "claims-idx1-ubyte"
    claims.write_bytes(_idx_header([10 ** 5, 10 ** 5]) + b"\0" * 20)
    with pytest.raises(DataError, match="claims-idx1-ubyte"):
        read_idx(str(claims))


def test_gzipped_idx_is_never_decompressed_past_its_header(tmp_path):
    """A 40 KB .gz whose header claims 10 bytes but which inflates to 40 MB: refused after reading
    11 bytes of data; a header claiming more than deflate can expand the file to: refused at once."""
    bomb = tmp_path / "bomb-idx1-ubyte.gz"
    bomb.write_bytes(gzip.compress(_idx_header([10]) + b"\0" * (40 << 20)))
    assert bomb.stat().st_size < 100_000
    errors = []

    def load():
        try:
            read_idx(str(bomb))
        except DataError as e:
            errors.append(str(e))
    assert peak_bytes(load) < 8 << 20
    assert len(errors) == 1 and "bomb-idx1-ubyte.gz" in errors[0] and "more than 10" in errors[0]
    claims = tmp_path / "claims-idx1-ubyte.gz"
    claims.write_bytes(gzip.compress(_idx_header([10 ** 5, 10 ** 5]) + b"\0" * 20))
    with pytest.raises(DataError, match="more than a .*gzip file can hold"):
        read_idx(str(claims))
    good = tmp_path / "good-idx1-ubyte.gz"
    good.write_bytes(gzip.compress(_idx_header([3]) + b"\x01\x02\x03"))
    assert read_idx(str(good)).tolist() == [1, 2, 3]


# ------------------------------------------------------------------------------ diverging runs
def _finite_checkpoint(path):
    ck = torch.load(path, weights_only=True)
    assert C.nonfinite_tensors(ck) == [], path
    return ck


def test_lr_1e6_stops_with_exit_3_and_saves_nothing_non_finite(tmp_path):
    """Checkpoints every step: the steps before the loss blows up are saved (finite), the first
    non-finite one stops the run; --resume of that run stops at the same step and leaves the good
    checkpoint byte for byte as it was."""
    out = tmp_path / "run"
    argv = ["train", *SMALL, "--lr", "1e6", "--save-every", "1", "--out", out]
    p = run_sub(*argv)
    assert p.returncode == 3, p.stdout[-2000:] + p.stderr[-2000:]
    line = one_line_error(p.stderr)
    assert "--lr" in line and "epoch 1, step" in line and "last finite loss" in line
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "config.json"]   # no metrics, no best.pt from NaN
    ck = _finite_checkpoint(out / "checkpoint.pt")
    good = (out / "checkpoint.pt").read_bytes()
    p = run_sub(*argv, "--resume")
    assert p.returncode == 3, p.stderr[-2000:]
    assert f"global step {ck['global_step'] + 1}" in one_line_error(p.stderr)
    assert (out / "checkpoint.pt").read_bytes() == good


def test_diverging_run_keeps_a_previous_good_run(tmp_path):
    """A second run aimed at a finished run's folder is refused before it writes anything (it would
    need --overwrite, which says so); resuming it with another --lr is refused too."""
    out = tmp_path / "run"
    assert run_cli("train", *SMALL, "--out", out) == 0
    before = {f: (out / f).read_bytes() for f in ("checkpoint.pt", "best.pt", "metrics.json", "history.csv")}
    assert run_cli("train", *SMALL, "--lr", "1e6", "--save-every", "4", "--out", out) == 2
    assert run_cli("train", *SMALL, "--lr", "1e6", "--save-every", "4", "--out", out, "--resume") == 2
    for f in ("checkpoint.pt", "best.pt"):
        _finite_checkpoint(out / f)
    assert {f: (out / f).read_bytes() for f in before} == before


def test_non_finite_weights_are_never_saved(tmp_path, monkeypatch, capsys):
    """The loss is still finite but an update made a weight infinite: the checkpoint due at that step
    is refused and the run stops, naming the tensor; the previous checkpoint stays."""
    real = loop.build_optimizer

    def poisoned(args, params):
        opt = real(args, params)
        step, n = opt.step, [0]

        def wrapped(self, *a, **k):
            out = step(*a, **k)
            n[0] += 1
            if n[0] == 4:
                with torch.no_grad():
                    params[-1].fill_(float("inf"))
            return out
        opt.step = types.MethodType(wrapped, opt)     # a bound method, as the LR scheduler expects
        return opt
    monkeypatch.setattr(loop, "build_optimizer", poisoned)
    out = tmp_path / "run"
    assert run_cli("train", *SMALL, "--save-every", "2", "--out", out) == 3
    line = one_line_error(capsys.readouterr().err)
    assert "model.classifier.2.bias" in line and "after epoch 1, step 4" in line and "--lr" in line
    assert _finite_checkpoint(out / "checkpoint.pt")["global_step"] == 2


def test_loss_watch_without_per_step_sync_reports_the_first_bad_step(tmp_path, monkeypatch, capsys):
    """The CUDA path (record kept on the device, read at checkpoints), run on CPU tensors: same stop,
    same step as the eager path."""
    real = loop._LossWatch
    monkeypatch.setattr(loop, "_LossWatch", lambda device, step, eager: real(device, step, eager=False))
    out = tmp_path / "run"
    assert run_cli("train", *SMALL, "--lr", "1e6", "--save-every", "5", "--out", out) == 3
    lazy = one_line_error(capsys.readouterr().err)
    monkeypatch.undo()
    assert run_cli("train", *SMALL, "--lr", "1e6", "--save-every", "5", "--out", tmp_path / "eager") == 3
    eager = one_line_error(capsys.readouterr().err)
    assert lazy.split(";")[:2] == eager.split(";")[:2], (lazy, eager)
    assert not (out / "checkpoint.pt").exists() or _finite_checkpoint(out / "checkpoint.pt")



# ------------------------------------------------------------------------------- atomic writes
def test_atomic_save_leaves_no_tmp_when_torch_save_raises(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    C.atomic_save({"v": 1}, str(path))

    def boom(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(C.torch, "save", boom)
    with pytest.raises(OSError):
        C.atomic_save({"v": 2}, str(path))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
    assert torch.load(path, weights_only=True) == {"v": 1}


def test_atomic_save_fsyncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    real = os.fsync
    dir_syncs = []

    def spy(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            dir_syncs.append(torch.load(path, weights_only=True))    # the rename has happened
        return real(fd)
    monkeypatch.setattr(os, "fsync", spy)
    C.atomic_save({"v": 3}, str(path))
    assert dir_syncs == [{"v": 3}]


def test_atomic_save_tolerates_a_directory_that_cannot_be_fsynced(tmp_path, monkeypatch):
    real = os.fsync

    def no_dirs(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        return real(fd)
    monkeypatch.setattr(os, "fsync", no_dirs)
    C.atomic_save({"v": 4}, str(tmp_path / "a.pt"))
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, flags, *a: (_ for _ in ()).throw(PermissionError(13, "dir"))
                        if os.path.isdir(p) else real_open(p, flags, *a))
    C.atomic_save({"v": 5}, str(tmp_path / "b.pt"))
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "b.pt"]
    assert torch.load(tmp_path / "b.pt", weights_only=True) == {"v": 5}
