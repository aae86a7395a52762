"""Training, evaluation and prediction on our kernels (pyimgcls.training, pyimgcls.data).

The full default run (``pyimgcls train``: >= 97 % on digits) is one test; every other run is short
(an epoch or two on subsets) to fit the CI budget."""
from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import pyimgcls
from pyimgcls import cli
from pyimgcls.data import Augment, DataError, batch_generator, load_dataset, read_idx
from pyimgcls.data.datasets import cifar_batch_bytes
from pyimgcls.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRIC_KEYS = ("test_accuracy", "test_loss", "val_accuracy", "best_val_accuracy", "best_epoch", "precision_macro",
               "recall_macro", "f1_macro", "confusion_matrix", "epochs", "train_time_s", "images_per_s", "kernels",
               "model", "dataset", "amp", "world_size", "resumed_from_step", "history")
SMALL = ["--data", "digits", "--limit-train", "320", "--limit-test", "120", "--batch-size", "32", "--no-plots"]


def run_cli(*argv) -> int:
    """``pyimgcls ARGV`` in this process; returns the exit status."""
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def run_sub(*argv, env=None, timeout=240, **kw):
    e = dict(os.environ, **(env or {}))
    e.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, *map(str, argv)], cwd=REPO, env=e, capture_output=True, text=True,
                          timeout=timeout, **kw)


def read_metrics(out) -> dict:
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------ the main job
def test_default_training_reaches_97_percent_on_cpu_kernels(tmp_path):
    """The main job as shipped (LeNet-5, digits, SGD + cosine, standard augmentation, 15 epochs;
    about 20 s on 2 cores): >= 97 % test accuracy on our CPU kernels, every report file written."""
    out = tmp_path / "run"
    assert run_cli("train", "--kernels", "cpu", "--out", out) == 0
    m = read_metrics(out)
    for k in METRIC_KEYS:
        assert k in m, k
    assert m["kernels"] == "cpu" and m["model"] == "lenet5" and m["dataset"] == "digits"
    assert (m["num_train"], m["num_val"], m["num_test"]) == (1293, 144, 360)   # 10 % of 1437 for validation
    assert m["epochs"] == 15 and len(m["history"]) == 15 and m["resumed_from_step"] is None
    assert m["test_accuracy"] >= 0.97, m["history"]
    cm = np.asarray(m["confusion_matrix"])
    assert cm.sum() == 360 and np.trace(cm) == round(360 * m["test_accuracy"])
    assert m["history"][-1]["train_loss"] < 0.1 * m["history"][0]["train_loss"]
    assert m["images_per_s"] > 0 and m["train_time_s"] > 0
    for f in ("checkpoint.pt", "best.pt", "curves.png", "confusion_matrix.png"):
        assert (out / f).stat().st_size > 1000, f
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["epoch"] == m["best_epoch"] and best["val_accuracy"] == m["best_val_accuracy"]
    assert m["best_val_accuracy"] == max(h["val_accuracy"] for h in m["history"])
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,train_accuracy,val_loss,val_accuracy") and len(rows) == 16
    assert json.loads((out / "config.json").read_text())["val_fraction"] == 0.1


def test_our_kernels_match_torch_reference_loss_curve(tmp_path):
    """Same seed, same data, same schedule: our CPU kernels and the plain-PyTorch backend give the
    same per-epoch losses (float32 summation order is the only difference)."""
    common = [*SMALL, "--epochs", 2, "--augment", "none"]
    assert run_cli("train", "--kernels", "cpu", "--out", tmp_path / "ours", *common) == 0
    assert run_cli("train", "--kernels", "torch", "--out", tmp_path / "ref", *common) == 0
    ours, ref = read_metrics(tmp_path / "ours"), read_metrics(tmp_path / "ref")
    assert ours["kernels"] == "cpu" and ref["kernels"] == "torch"
    for a, b in zip(ours["history"], ref["history"]):
        for k in ("train_loss", "val_loss"):
            assert a[k] == pytest.approx(b[k], rel=2e-3), (k, a, b)
    assert ours["history"][-1]["train_loss"] < ours["history"][0]["train_loss"]


# ---------------------------------------------------------------------------- checkpoints and resume
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    """A real subprocess SIGKILLs itself after global step 14 (checkpoints every 4 steps, so the last
    one is at step 12, mid-epoch 2: 288 training images after the validation split, 9 steps an epoch);
    --resume redoes steps 13-14 and ends exactly as a run that was never interrupted."""
    args = ["train", *SMALL, "--epochs", 2, "--save-every", 4, "--kernels", "cpu"]
    killed = tmp_path / "killed"
    p = run_sub("-m", "pyimgcls", *args, "--out", killed, env={"PYIMGCLS_TEST_KILL_AFTER_STEP": "14"})
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert not (killed / "metrics.json").exists()
    ck = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (1, 3, 12)
    assert run_cli(*args, "--out", killed, "--resume") == 0
    m = read_metrics(killed)
    assert m["epochs"] == 2 and m["resumed_from_step"] == 12 and m["global_step"] == 18
    assert run_cli(*args, "--out", tmp_path / "straight") == 0
    ref = read_metrics(tmp_path / "straight")
    for a, b in zip(m["history"], ref["history"]):
        for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), (k, a, b)
    for k in ("test_accuracy", "test_loss", "f1_macro", "confusion_matrix"):
        assert m[k] == pytest.approx(ref[k]) if k != "confusion_matrix" else m[k] == ref[k]


def test_resume_after_sigkill_at_a_random_moment(tmp_path):
    """Kill a run from outside at a random moment after its first checkpoint: the resumed run still
    completes every planned epoch and writes a complete metrics.json."""
    out = tmp_path / "run"
    args = ["-m", "pyimgcls", "train", "--data", "synthetic", "--synthetic-size", 192, "--image-size", 32,
            "--batch-size", 16, "--epochs", 3, "--save-every", 2, "--no-plots", "--kernels", "cpu", "--out", out]
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(random.Random().uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert (out / "checkpoint.pt").exists()
    assert run_cli("train", "--data", "synthetic", "--synthetic-size", 192, "--image-size", 32, "--batch-size", 16,
                   "--epochs", 3, "--save-every", 2, "--no-plots", "--kernels", "cpu", "--out", out, "--resume") == 0
    m = read_metrics(out)
    assert m["epochs"] == 3 and [h["epoch"] for h in m["history"]] == [1, 2, 3]
    assert m["global_step"] == 3 * 11 and m["resumed_from_step"] is not None   # 173 training images, batch 16
    for k in METRIC_KEYS:
        assert k in m


def test_resume_refuses_other_settings_and_missing_checkpoint(tmp_path, capsys):
    assert run_cli("train", *SMALL, "--out", tmp_path / "none", "--resume") == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    assert run_cli("train", *SMALL, "--limit-train", 64, "--epochs", 1, "--out", tmp_path) == 0
    assert run_cli("train", *SMALL, "--limit-train", 64, "--epochs", 1, "--lr", 0.1, "--out", tmp_path,
                   "--resume") == 2
    assert "other settings" in capsys.readouterr().err


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A failure while writing leaves the previous checkpoint intact and no temporary file."""
    from pyimgcls.training import checkpoint as C

    path = tmp_path / "checkpoint.pt"
    C.atomic_save({"v": 1}, str(path))

    def boom(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(C.torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        C.atomic_save({"v": 2}, str(path))
    monkeypatch.undo()
    assert torch.load(path) == {"v": 1}
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


# ------------------------------------------------------------------------------------ distributed
def _torchrun(cmd, env=None, tries=3):
    """Launch ``cmd`` under torchrun; relaunch (up to ``tries`` times) only when the ranks never
    started training (rendezvous or Gloo connection set-up failed under a loaded machine: the first
    epoch line is missing), so a flaky launch is not mistaken for a resume bug. Every failed launch's
    output goes into the assertion message of the caller."""
    logs = []
    for _ in range(tries):
        p = run_sub(*cmd, env=env, timeout=300)
        logs.append(f"rc {p.returncode}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-3000:]}")
        if "epoch   1/2" in p.stdout or p.returncode == 0:
            return p, "\n".join(logs)
    return p, "\n".join(logs)


def test_torchrun_two_processes_gloo_with_kill_and_resume(tmp_path):
    """`torchrun --nproc_per_node=2` (Gloo on CPU): both ranks SIGKILL themselves after global step 7
    (last checkpoint: step 6, mid-epoch 2); the same command with --resume completes, with metrics
    reduced over both ranks and files written by rank 0 only."""
    out = tmp_path / "ddp"
    cmd = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pyimgcls", "train", *SMALL,
           "--epochs", 2, "--save-every", 3, "--kernels", "cpu", "--out", out]
    p, log = _torchrun([*cmd, "--overwrite"], env={"PYIMGCLS_TEST_KILL_AFTER_STEP": "7"})
    assert p.returncode != 0 and not (out / "metrics.json").exists(), log
    assert "Signal 9 (SIGKILL)" in p.stderr and (out / "checkpoint.pt").exists(), log
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"], ck["world_size"]) == (1, 1, 6, 2)
    assert len(ck["rng"]) == 2 and len(ck["epoch_accum"]) == 2          # one entry per rank
    p, log = _torchrun([*cmd, "--resume"])
    assert p.returncode == 0, log
    m = read_metrics(out)
    assert m["world_size"] == 2 and m["epochs"] == 2 and m["kernels"] == "cpu" and m["resumed_from_step"] == 6
    assert np.asarray(m["confusion_matrix"]).sum() == 120          # every test image, once
    assert [h["global_step"] for h in m["history"]] == [5, 10]     # 320 images / (2 ranks x 32) per epoch
    assert sorted(os.listdir(out)) == ["best.pt", "checkpoint.pt", "config.json", "history.csv", "metrics.json"]
    assert p.stdout.count("done: test accuracy") == 1               # only rank 0 reports


# ---------------------------------------------------------------------------------- eval, predict
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    pyimgcls.set_backend("auto")
    assert run_cli("train", *SMALL[:-1], "--limit-train", 640, "--epochs", 3, "--kernels", "cpu", "--out", out) == 0
    return out


def test_eval_recomputes_training_metrics(trained, tmp_path, capsys):
    m = read_metrics(trained)
    assert run_cli("eval", "--checkpoint", trained / "checkpoint.pt", "--limit-test", 120, "--kernels", "cpu",
                   "--out", tmp_path) == 0
    e = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert e["test_accuracy"] == pytest.approx(m["test_accuracy"])
    assert e["test_loss"] == pytest.approx(m["test_loss"], rel=1e-5)
    assert e["confusion_matrix"] == m["confusion_matrix"]
    assert e["f1_macro"] == pytest.approx(m["f1_macro"])
    assert "test accuracy" in capsys.readouterr().out


def test_predict_prints_top5_from_checkpoint_alone(trained, tmp_path, capsys):
    from PIL import Image

    ds = load_dataset("digits")
    paths, labels = [], []
    for i in range(6):
        p = tmp_path / f"digit{i}.png"
        Image.fromarray((ds.test.images[i, 0].numpy() * 255).round().astype(np.uint8), "L").save(p)
        paths.append(p)
        labels.append(int(ds.test.labels[i]))
    capsys.readouterr()
    assert run_cli("predict", "--checkpoint", trained / "best.pt", "--kernels", "cpu", *paths) == 0
    out = capsys.readouterr().out.splitlines()
    res = loop.predict(cli.build_parser().parse_args(
        ["predict", "--checkpoint", str(trained / "best.pt"), "--kernels", "cpu", *map(str, paths)]))
    for r, label in zip(res, labels):
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0.2 < sum(probs) <= 1.0 + 1e-6
        assert len({t["class"] for t in r["top"]}) == 5
    assert sum(r["top"][0]["class"] == str(label) for r, label in zip(res, labels)) >= 5
    assert str(paths[0]) in out and sum(line.strip().startswith("1.") for line in out) == 6


# --------------------------------------------------------------------------------- transfer learning
def test_pretrained_replaces_classifier_and_freezes_backbone(tmp_path):
    from pyimgcls import models

    torch.manual_seed(1)
    src = models.lenet5(num_classes=10, in_channels=1)
    torch.save(src.state_dict(), tmp_path / "pre.pt")
    out = tmp_path / "ft"
    assert run_cli("train", "--data", "synthetic", "--in-channels", 1, "--num-classes", 4, "--synthetic-size", 64,
                   "--epochs", 1, "--batch-size", 16, "--no-plots", "--kernels", "cpu", "--pretrained",
                   tmp_path / "pre.pt", "--freeze-backbone", "--out", out) == 0
    sd = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert sd["classifier.2.weight"].shape == (4, 84)
    for k, v in src.state_dict().items():
        if not k.startswith("classifier.2."):
            assert torch.equal(sd[k], v), k                  # frozen and loaded
    m = read_metrics(out)
    assert m["trainable_parameters"] == 84 * 4 + 4


def test_pretrained_errors(tmp_path, capsys):
    torch.save({"nonsense.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    assert run_cli("train", *SMALL, "--epochs", 1, "--pretrained", tmp_path / "bad.pt", "--out", tmp_path / "r") == 2
    assert "does not fit the model" in capsys.readouterr().err
    assert run_cli("train", *SMALL, "--epochs", 1, "--pretrained", tmp_path / "missing.pt", "--out", tmp_path / "r") == 2
    assert "missing.pt" in capsys.readouterr().err
    assert run_cli("train", *SMALL, "--freeze-backbone", "--out", tmp_path / "r") == 2
    assert "--pretrained" in capsys.readouterr().err


# ------------------------------------------------------------------------------ options exercised
def test_amp_bf16_channels_last_adamw_onecycle_label_smoothing(tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--data", "synthetic", "--synthetic-size", 64, "--epochs", 2, "--batch-size", 16,
                   "--amp", "bf16", "--channels-last", "--optimizer", "adamw", "--lr", 3e-3, "--schedule",
                   "onecycle", "--label-smoothing", 0.1, "--kernels", "cpu", "--out", out) == 0
    m = read_metrics(out)
    assert m["amp"] == "bf16" and m["epochs"] == 2 and np.isfinite(m["test_loss"])


@pytest.mark.parametrize("schedule", ["none", "cosine", "step", "onecycle"])
def test_schedules_warmup_and_shape(schedule):
    args = cli.build_parser().parse_args(["train", "--schedule", schedule, "--epochs", "6", "--lr", "0.1",
                                          "--warmup-epochs", "1", "--step-size", "2"])
    p = torch.nn.Parameter(torch.zeros(1))
    opt = loop.build_optimizer(args, [p])
    sched = loop.build_scheduler(args, opt, steps_per_epoch=10)
    lrs = []
    for _ in range(60):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(0.1, rel=1e-3)
    if schedule != "onecycle":
        assert lrs[:10] == pytest.approx([0.1 * (i + 1) / 10 for i in range(10)])    # linear warm-up
    if schedule == "none":
        assert lrs[10:] == pytest.approx([0.1] * 50)
    if schedule == "cosine":
        assert lrs[-1] < 0.002 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    if schedule == "step":
        assert lrs[25] == pytest.approx(0.01) and lrs[45] == pytest.approx(0.001)
    if schedule == "onecycle":
        assert lrs[0] < 0.01 and lrs[-1] < 1e-4


@pytest.mark.parametrize("name", loop.OPTIMIZERS)
def test_optimizers(name):
    args = cli.build_parser().parse_args(["train", "--optimizer", name])
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = loop.build_optimizer(args, [w])
    assert type(opt).__name__.lower() == name
    for _ in range(3):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    assert float((w.detach() ** 2).sum()) < 5.0


# ------------------------------------------------------------------------------------ augmentation
def test_augmentation_is_deterministic_under_seed():
    x = torch.rand(16, 3, 32, 32)
    aug = Augment(crop_padding=4, hflip=True, rotation=10, brightness=0.2, contrast=0.2)
    a = aug(x, batch_generator(0, 1, 5))
    assert torch.equal(a, aug(x, batch_generator(0, 1, 5)))
    assert not torch.equal(a, aug(x, batch_generator(0, 1, 6)))
    assert not torch.equal(a, aug(x, batch_generator(1, 1, 5)))
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1


def test_augmentation_crop_and_flip_are_exact():
    """Crop-with-padding is an integer shift with zero fill; flip mirrors exactly."""
    x = torch.rand(64, 1, 12, 12)
    crop = Augment(crop_padding=2)(x, batch_generator(3, 0, 0))
    flip = Augment(hflip=True)(x, batch_generator(3, 0, 0))
    n_flipped = 0
    for i in range(64):
        if torch.allclose(flip[i], x[i].flip(-1), atol=1e-5):
            n_flipped += 1
        else:
            assert torch.allclose(flip[i], x[i], atol=1e-5)
        ok = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                pad = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
                ref = pad[:, 2 + dy:14 + dy, 2 + dx:14 + dx]
                ok |= torch.allclose(crop[i], ref, atol=1e-5)
        assert ok, i
    assert 16 < n_flipped < 48


def test_augmentation_is_batched():
    """The number of tensor ops does not grow with the batch: no per-image Python loop."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    aug = Augment(crop_padding=4, hflip=True, rotation=10, brightness=0.2, contrast=0.2)
    counts = []
    for n in (2, 64):
        Count.n = 0
        with Count():
            aug(torch.rand(n, 3, 16, 16), batch_generator(0, 0, 0))
        counts.append(Count.n)
    assert counts[0] == counts[1]


# ----------------------------------------------------------------------------------- data loading
def _write_idx(path, arr, gz=False):
    arr = np.asarray(arr, dtype=np.uint8)
    data = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


def _fake_mnist(root, n_train=40, n_test=20, gz=True):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        ext = ".gz" if gz else ""
        _write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)), gz)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", np.arange(n) % 10, gz)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_loads_and_trains(tmp_path, gz):
    _fake_mnist(tmp_path / "m", gz=gz)
    ds = load_dataset(f"fashion-mnist:{tmp_path / 'm'}")
    assert (len(ds.train), len(ds.test), ds.in_channels, ds.image_size) == (40, 20, 1, 32)
    assert ds.class_names[9] == "Ankle boot" and ds.train.labels.tolist()[:3] == [0, 1, 2]
    if gz:
        assert run_cli("train", "--data", f"mnist:{tmp_path / 'm'}", "--epochs", 1, "--batch-size", 8,
                       "--no-plots", "--kernels", "cpu", "--out", tmp_path / "run") == 0
        m = read_metrics(tmp_path / "run")
        assert (m["num_train"], m["num_val"]) == (36, 4)   # 10 % carved for validation


def test_mnist_missing_and_corrupt_files_name_the_file(tmp_path, capsys):
    root = tmp_path / "m"
    _fake_mnist(root, gz=False)
    os.remove(root / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset(f"mnist:{root}")
    _write_idx(root / "t10k-labels-idx1-ubyte", np.arange(20) % 10)
    (root / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (40).to_bytes(4, "big") + b"\x00" * 10)
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_dataset(f"mnist:{root}")
    (root / "train-images-idx3-ubyte").write_bytes(b"GIF89a nonsense")
    assert run_cli("train", "--data", f"mnist:{root}", "--out", tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and "bad magic" in err
    (root / "x.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="x.gz"):
        read_idx(str(root / "x.gz"))


def test_cifar10_pickles_load_and_corrupt_batch_is_named(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(cifar_batch_bytes(rng.integers(0, 256, (6, 3072)), rng.integers(0, 10, 6)))
    ds = load_dataset(f"cifar10:{tmp_path}")
    assert (len(ds.train), len(ds.test), ds.in_channels, ds.class_names[0]) == (30, 6, 3, "airplane")
    raw = np.frombuffer(cifar_batch_bytes(np.arange(3072).reshape(1, 3072) % 256, [3]), dtype=np.uint8)
    assert raw.size > 3072
    (root / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset(f"cifar10:{tmp_path}")
    os.remove(root / "data_batch_3")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset(f"cifar10:{tmp_path}")
    # A pickle that would run code is refused, not executed.
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    (root / "data_batch_3").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataError, match="forbidden global"):
        load_dataset(f"cifar10:{tmp_path}")


def test_imagefolder_decodes_with_workers_and_names_corrupt_image(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog", "eel"):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    spec = f"imagefolder:{tmp_path / 'imgs'}"
    ds = load_dataset(spec, image_size=16)
    assert (len(ds.train), len(ds.test), ds.class_names) == (18, 6, ["cat", "dog", "eel"])
    assert ds.train[0][0].shape == (3, 16, 16)
    assert run_cli("train", "--data", spec, "--image-size", 32, "--epochs", 1, "--batch-size", 6, "--workers", 2,
                   "--no-plots", "--kernels", "cpu", "--out", tmp_path / "run") == 0
    assert read_metrics(tmp_path / "run")["num_classes"] == 3
    bad = tmp_path / "imgs" / "val" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for workers in (0, 2):
        assert run_cli("train", "--data", spec, "--epochs", 1, "--workers", workers, "--no-plots", "--kernels",
                       "cpu", "--out", tmp_path / f"run-{workers}") == 2
        err = capsys.readouterr().err
        assert "cannot decode image file" in err and "broken.png" in err and "Traceback" not in err


def test_digits_split_is_stratified_80_20():
    ds = load_dataset("digits")
    assert (len(ds.train), len(ds.test)) == (1437, 360)
    counts = np.bincount(ds.test.labels.numpy())
    assert counts.min() >= 35 and counts.max() <= 37
    assert ds.train.images.shape == (1437, 1, 32, 32) and 0 <= float(ds.train.images.min())
    assert float(ds.train.images.max()) <= 1


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, needle", [
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-1"], "--lr"),
    (["--data", "bogus"], "unknown dataset"),
    (["--data", "mnist"], "needs a path"),
    (["--data", "cifar10:/nonexistent/dir"], "/nonexistent/dir"),
    (["--model", "nonet"], "nonet"),
    (["--kernels", "cuda"], "cuda"),
    (["--label-smoothing", "1.5"], "--label-smoothing"),
])
def test_bad_arguments_give_clear_errors(tmp_path, capsys, argv, needle):
    if argv[:2] == ["--kernels", "cuda"] and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert run_cli("train", *argv, "--out", tmp_path) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


# ------------------------------------------------------------------ run folders, resume, Ctrl-C
TINY = ["--data", "digits", "--limit-train", "64", "--limit-test", "32", "--batch-size", "32", "--no-plots", "--quiet"]


def test_runs_get_their_own_folder_and_latest_follows(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_cli("train", *TINY, "--epochs", 1) == 0
    first = os.readlink(tmp_path / "runs" / "latest")
    assert first.startswith("lenet5-digits-") and (tmp_path / "runs" / first / "metrics.json").exists()
    assert run_cli("train", *TINY, "--epochs", 1, "--lr", "0.02") == 0
    second = os.readlink(tmp_path / "runs" / "latest")
    assert second != first and (tmp_path / "runs" / first / "checkpoint.pt").exists()   # nothing lost
    # --resume alone continues the newest, its settings (--lr 0.02, --epochs 1) from the checkpoint
    assert run_cli("train", "--resume") == 0
    m = read_metrics(tmp_path / "runs" / second)
    assert m["config"]["lr"] == 0.02 and m["epochs"] == 1
    # a larger --epochs extends it, the schedule rebuilt for the new length
    assert run_cli("train", "--resume", "--epochs", 3) == 0
    m = read_metrics(tmp_path / "runs" / second)
    assert m["epochs"] == 3 and [h["epoch"] for h in m["history"]] == [1, 2, 3]
    assert m["history"][1]["lr"] > 0 and m["history"][2]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert run_cli("train", "--resume", "--epochs", 2) == 2   # fewer than finished
    assert "--epochs 2" in capsys.readouterr().err


def test_explicit_out_is_refused_when_not_empty(tmp_path):
    """Real processes, as a user runs them: the second run into a finished run's folder is refused
    (one line, exit 2, nothing touched); --overwrite replaces the run files and keeps the user's."""
    out = tmp_path / "run"
    assert run_sub("-m", "pyimgcls", "train", *TINY, "--epochs", 1, "--out", out).returncode == 0
    (out / "notes.txt").write_text("mine")
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    p = run_sub("-m", "pyimgcls", "train", *TINY, "--epochs", 1, "--out", out)
    assert p.returncode == 2 and p.stdout == ""
    assert "--out" in p.stderr and "--overwrite" in p.stderr and p.stderr.count("\n") == 1
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before
    p = run_sub("-m", "pyimgcls", "train", *TINY, "--epochs", 1, "--out", out, "--overwrite")
    assert p.returncode == 0, p.stderr
    assert (out / "notes.txt").read_text() == "mine" and read_metrics(out)["resumed_from_step"] is None


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_out_must_be_a_writable_directory(tmp_path, capsys, where):
    f = tmp_path / "file"
    f.write_text("x")
    out = f if where == "file" else f / "sub"
    assert run_cli("train", *TINY, "--epochs", 1, "--out", out) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err


def test_resume_without_a_run_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_cli("train", "--resume") == 2
    assert "--resume" in capsys.readouterr().err


def test_ctrl_c_saves_and_prints_the_resume_command(tmp_path):
    """A real SIGINT mid-run: checkpoint saved at the step it stopped after, one line with the command
    that resumes, exit status 130, no traceback; that command then finishes the run."""
    out = tmp_path / "run"
    args = ["-m", "pyimgcls", "train", "--data", "synthetic", "--synthetic-size", 512, "--batch-size", 16,
            "--epochs", 40, "--save-every", 0, "--no-plots", "--kernels", "cpu", "--out", out]
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("pyimgcls train:")
        time.sleep(random.Random().uniform(0.5, 2.0))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert f"resume with: pyimgcls train --resume --out {out}" in err
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["global_step"] >= 1 and not (out / "metrics.json").exists()
    done = ck["epoch"] + (1 if ck["step_in_epoch"] else 0)
    p = run_sub("-m", "pyimgcls", "train", "--resume", "--out", out, "--epochs", max(1, done))
    assert p.returncode == 0, p.stderr
    m = read_metrics(out)
    assert m["resumed_from_step"] == ck["global_step"] and m["epochs"] == max(1, done)


@pytest.mark.parametrize("model", ["alexnet", "densenet121", "vgg11", "resnet18", "mobilenet_v2", "lenet5",
                                   "googlenet", "inception_v3", "squeezenet1_0", "squeezenet1_1",
                                   "efficientnet_b0", "mobilenet_v3_small"])
def test_model_default_input_and_minimum(model):
    """model_input's size is accepted by the model (one forward); one pixel less is refused up front
    where a minimum exists."""
    from pyimgcls import models
    size, ch = loop.model_input(model, None, None)
    ch = ch or 1   # LeNet-5 takes the data set's channels
    m = loop.build_model(model, 10, ch).eval()
    with torch.no_grad():
        assert m(torch.zeros(1, ch, size, size)).shape == (1, 10)
    spec = models.input_spec(model)
    if spec["min_size"] > 1:
        with pytest.raises(pyimgcls.errors.ArgumentValueError, match="--image-size"):
            loop.model_input(model, spec["min_size"] - 1, None)
    if spec["in_channels"] == 3:
        with pytest.raises(pyimgcls.errors.ArgumentValueError, match="--in-channels 1"):
            loop.model_input(model, None, 1)
    assert {n for n in models.list_models()} == {n for n in models.list_models() if models.input_spec(n)}


def test_rgb_model_trains_on_grayscale_digits_without_flags(tmp_path):
    assert run_cli("train", "--model", "resnet18", *TINY, "--epochs", 1, "--out", tmp_path) == 0
    m = read_metrics(tmp_path)
    assert m["model"] == "resnet18" and m["epochs"] == 1


@pytest.mark.parametrize("model, size", [("googlenet", 32), ("inception_v3", 75), ("squeezenet1_1", 32),
                                         ("shufflenet_v2_x1_0", 32), ("resnext50_32x4d", 32),
                                         ("efficientnet_b0", 32), ("mobilenet_v3_small", 32)])
def test_new_model_families_train_one_epoch_on_digits(model, size, tmp_path):
    """One epoch on 32 digits images for each family of the second model zoo, at the size model_input
    picks (32, or the model's minimum when larger: Inception-v3 75), grayscale replicated to RGB."""
    assert loop.model_input(model, None, None) == (size, 3)
    # two steps of 16 (Inception-v3 at 75x75: ~1.2 GFLOP per image and step)
    assert run_cli("train", "--model", model, *TINY, "--limit-train", 32, "--batch-size", 16, "--limit-test", 8,
                   "--epochs", 1, "--kernels", "cpu", "--out", tmp_path) == 0
    m = read_metrics(tmp_path)
    assert m["model"] == model and m["epochs"] == 1 and m["kernels"] == "cpu"
    assert len(m["history"]) == 1 and np.isfinite(m["history"][0]["train_loss"])


def test_alexnet_gets_its_minimum_input_size(tmp_path, capsys):
    assert run_cli("train", "--model", "alexnet", *TINY, "--epochs", 1, "--image-size", 32, "--out", tmp_path) == 2
    err = capsys.readouterr().err
    assert "--image-size 32" in err and "63" in err and not os.listdir(tmp_path)


@pytest.mark.parametrize("layout", ["flat", "train_val"])
def test_imagefolder_empty_class_folder_is_an_error_naming_it(tmp_path, layout):
    """As torchvision's ImageFolder: a class folder with no images is an error, not an extra class."""
    from PIL import Image

    root = tmp_path / "imgs"
    splits = [root] if layout == "flat" else [root / "train", root / "val"]
    for base in splits:
        for c in ("cat", "dog"):
            (base / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(base / c / f"{i}.png")
        (base / "empty").mkdir()
        (base / "empty" / "readme.txt").write_text("not an image")
    with pytest.raises(DataError, match=str(splits[0] / "empty")):
        load_dataset(f"imagefolder:{root}", image_size=8)


def test_predict_folder_writes_output_and_reports_bad_files(trained, tmp_path, capsys):
    """A folder expands to its images; a file that cannot be read is named (one line) while the others
    are still predicted and written to --output; the exit status is then 2."""
    from PIL import Image

    ds = load_dataset("digits")
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        img = Image.fromarray((ds.test.images[i, 0].numpy() * 255).round().astype(np.uint8), "L")
        img.save(folder / ("sub" if i == 2 else "") / f"d{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for ext in ("json", "csv"):
        out = tmp_path / f"pred.{ext}"
        capsys.readouterr()
        assert run_cli("predict", "--checkpoint", trained / "best.pt", "--kernels", "cpu", "--output", out,
                       folder) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "broken.png" in err and "Traceback" not in err
        if ext == "json":
            res = json.loads(out.read_text())
            assert sorted(os.path.basename(r["image"]) for r in res) == ["d0.png", "d1.png", "d2.png"]
            assert all(len(r["top"]) == 5 for r in res)
        else:
            rows = out.read_text().splitlines()
            assert rows[0] == "image,rank,class,index,probability" and len(rows) == 1 + 3 * 5
    assert run_cli("predict", "--checkpoint", trained / "best.pt", "--output", tmp_path / "p.txt", folder) == 2
    assert "--output" in capsys.readouterr().err


def test_config_file_with_command_line_override(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('epochs = 1\nlr = 0.02\nlimit-train = 64\nlimit_test = 32\nno_plots = true\nnesterov = false\n')
    out = tmp_path / "run"
    assert run_cli("train", "--config", cfg, "--lr", 0.03, "--quiet", "--out", out) == 0
    c = json.loads((out / "config.json").read_text())
    assert (c["epochs"], c["lr"], c["limit_train"], c["limit_test"], c["no_plots"], c["nesterov"]) == \
        (1, 0.03, 64, 32, True, False)
    (tmp_path / "bad.toml").write_text("epochs = 0\n")
    assert run_cli("train", "--config", tmp_path / "bad.toml", "--out", tmp_path / "b") == 2
    assert "--epochs" in capsys.readouterr().err
    (tmp_path / "unknown.toml").write_text("learning_rate = 1\n")
    assert run_cli("train", "--config", tmp_path / "unknown.toml", "--out", tmp_path / "c") == 2
    assert "learning_rate" in capsys.readouterr().err


def test_accumulate_clip_ema_patience(tmp_path, capsys):
    """--accumulate 2 at batch 16 takes the same optimiser steps as batch 32 (equal gradients up to
    float32 summation order, so the same first-epoch loss); --clip-grad-norm, --ema-decay and
    --patience run, EMA weights are what best.pt holds, and patience stops the run early."""
    # 71 images: 7 for validation, 64 = 2 batches of 32 = 4 of 16
    base = [*TINY, "--limit-train", 71, "--augment", "none", "--epochs", 1, "--kernels", "cpu", "--lr", 0.05]
    assert run_cli("train", *base, "--out", tmp_path / "b32") == 0
    assert run_cli("train", *[a if a != "32" else "16" for a in base], "--accumulate", 2, "--out",
                   tmp_path / "b16x2") == 0
    a, b = read_metrics(tmp_path / "b32"), read_metrics(tmp_path / "b16x2")
    assert a["history"][0]["val_loss"] == pytest.approx(b["history"][0]["val_loss"], rel=1e-4)
    out = tmp_path / "ema"
    assert run_cli("train", *TINY, "--epochs", 6, "--kernels", "cpu", "--lr", 1e-6, "--ema-decay", 0.9,
                   "--clip-grad-norm", 1.0, "--patience", 1, "--out", out) == 0
    m = read_metrics(out)
    assert m["epochs"] < 6 and m["config"]["ema_decay"] == 0.9   # lr 1e-6: validation never improves
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    best = torch.load(out / "best.pt", weights_only=True)["model"]
    ema = {k[len("module."):]: v for k, v in ck["ema"].items() if k.startswith("module.")}
    assert ema.keys() == best.keys() and ck["ema"]["n_averaged"] > 0
    assert run_cli("train", *TINY, "--patience", 2, "--val-fraction", 0, "--out", tmp_path / "x") == 2
    assert "--patience" in capsys.readouterr().err


def test_randaugment_and_random_erasing_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", *TINY, "--epochs", 1, "--kernels", "cpu", "--randaugment", 2,
                   "--randaugment-magnitude", 12, "--random-erasing", 0.5, "--out", out) == 0
    m = read_metrics(out)
    assert "randaugment=2 ops at magnitude 12/30" in m["augment"] and "random_erasing=0.5" in m["augment"]
    assert run_cli("train", *TINY, "--randaugment-magnitude", 31, "--out", tmp_path / "x") == 2


def test_eval_and_predict_refuse_a_checkpoint_with_nonfinite_weights(trained, tmp_path, capsys):
    ck = torch.load(trained / "best.pt", weights_only=True)
    name = next(iter(ck["model"]))
    ck["model"][name] = ck["model"][name].clone().fill_(float("nan"))
    torch.save(ck, tmp_path / "nan.pt")
    assert run_cli("eval", "--checkpoint", tmp_path / "nan.pt", "--kernels", "cpu") == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and name in err and err.count("\n") == 1
    assert run_cli("predict", "--checkpoint", tmp_path / "nan.pt", "--kernels", "cpu", "docs/img/digit7.png") == 2
    assert "non-finite" in capsys.readouterr().err


def test_mixup_cutmix_train_on_our_kernels_like_the_reference(tmp_path):
    """--mixup/--cutmix make probability targets for our cross-entropy; our CPU kernels and the torch
    backend give the same per-epoch losses for the same seed."""
    common = [*TINY, "--epochs", 2, "--mixup", 0.2, "--cutmix", 1.0, "--label-smoothing", 0.1]
    assert run_cli("train", "--kernels", "cpu", "--out", tmp_path / "ours", *common) == 0
    assert run_cli("train", "--kernels", "torch", "--out", tmp_path / "ref", *common) == 0
    ours, ref = read_metrics(tmp_path / "ours"), read_metrics(tmp_path / "ref")
    assert ours["config"]["mixup"] == 0.2 and ours["config"]["cutmix"] == 1.0
    for a, b in zip(ours["history"], ref["history"]):
        for k in ("train_loss", "val_loss"):
            assert a[k] == pytest.approx(b[k], rel=2e-3), (k, a, b)
    assert run_cli("train", *TINY, "--mixup", -1, "--out", tmp_path / "x") == 2


def test_tensorboard_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert run_cli("train", *TINY, "--epochs", 2, "--kernels", "cpu", "--tensorboard", "--out", out) == 0
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr", "test/accuracy"} <= tags
    assert [e.step for e in acc.Scalars("val/accuracy")] == [1, 2]
    m = read_metrics(out)
    assert acc.Scalars("test/accuracy")[-1].value == pytest.approx(m["test_accuracy"])


def test_train_with_teacher_distills_and_checks_the_teacher(tmp_path):
    """--teacher: the student trains against a checkpoint's logits (the distillation loss, recorded in
    config.json and metrics.json); a teacher of other input channels or a missing file is exit 2."""
    teacher = tmp_path / "teacher"
    assert run_cli("train", *TINY, "--epochs", 1, "--seed", 1, "--out", teacher) == 0
    out = tmp_path / "student"
    assert run_cli("train", *TINY, "--epochs", 1, "--teacher", teacher / "best.pt", "--kd-temperature", 3,
                   "--kd-alpha", 0.7, "--out", out) == 0
    m = read_metrics(out)
    assert m["distillation"] == {"checkpoint": str(teacher / "best.pt"), "model": "lenet5", "dataset": "digits",
                                 "temperature": 3.0, "alpha": 0.7}
    config = json.loads((out / "config.json").read_text())
    assert (config["teacher"], config["kd_temperature"], config["kd_alpha"]) == (str(teacher / "best.pt"), 3.0, 0.7)
    alone = tmp_path / "alone"
    assert run_cli("train", *TINY, "--epochs", 1, "--out", alone) == 0
    assert read_metrics(alone)["history"][0]["train_loss"] != m["history"][0]["train_loss"]
    assert "distillation" not in read_metrics(alone)
    rgb = tmp_path / "rgb"
    assert run_cli("train", *TINY, "--epochs", 1, "--in-channels", 3, "--limit-train", 32, "--out", rgb) == 0
    assert run_cli("train", *TINY, "--epochs", 1, "--teacher", rgb / "best.pt", "--out", tmp_path / "x") == 2
    assert run_cli("train", *TINY, "--epochs", 1, "--teacher", tmp_path / "missing.pt", "--out", tmp_path / "y") == 2
    assert run_cli("train", *TINY, "--epochs", 1, "--teacher", teacher / "best.pt", "--mixup", 0.2,
                   "--out", tmp_path / "z") == 2


def test_auto_threads_follows_idle_cores(monkeypatch):
    """--threads 0 takes the cores not busy with other processes, whatever the model's size; torchrun
    gets one; an explicit count is kept. Without a given load, what the CPUs do now (/proc/stat), not
    the 1-minute load average, decides."""
    from pyimgcls.training import loop

    monkeypatch.setattr(loop, "usable_cores", lambda: 4)
    assert loop.auto_threads(0, 2_000_000, load=0.2) == 4
    assert loop.auto_threads(0, 2_000_000, load=1.6) == 2
    assert loop.auto_threads(0, 2_000_000, load=12.0) == 1
    assert loop.auto_threads(0, 500_000, load=0.0) == 4
    assert loop.auto_threads(0, 2_000_000, distributed=True, load=0.0) == 1
    assert loop.auto_threads(3, 2_000_000, load=12.0) == 3
    assert 1 <= loop.idle_cores(loop.usable_cores()) <= 4
    monkeypatch.setattr(loop, "busy_cpus", lambda interval=0.2: 2.7)
    monkeypatch.setattr(loop.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert loop.idle_cores(4) == 1                      # the sample, not the (quiet) load average
    monkeypatch.setattr(loop, "busy_cpus", lambda interval=0.2: None)
    monkeypatch.setattr(loop.os, "getloadavg", lambda: (2.2, 0.0, 0.0))
    assert loop.idle_cores(4) == 2                      # no /proc/stat: the load average


def test_busy_cpus_sees_a_spinning_process():
    """busy_cpus reads the machine's CPU time while the caller sleeps: a process spinning on a core
    shows as about one busy CPU (Linux only: /proc/stat)."""
    import os
    import subprocess
    import sys
    from pyimgcls.training import loop

    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat here")
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time
        time.sleep(0.3)                                 # the child is running, not starting
        busy = loop.busy_cpus(0.3)
    finally:
        spin.kill()
        spin.wait()
    assert busy is not None and 0.6 <= busy <= os.cpu_count()
