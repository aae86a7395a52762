"""``pyimgcls quantize`` and the quantised checkpoint: PTQ and QAT from the CLI, eval / predict / bench /
load_model on the file, a pruned checkpoint quantised, one-line errors with exit status 2."""
from __future__ import annotations

import os

import pytest
import torch

import pyimgcls
from pyimgcls import cli
from pyimgcls.quantization import QuantizedModel, quantize
from pyimgcls.training import checkpoint as ckpt_mod

SMALL = ["--data", "digits", "--limit-train", "512", "--limit-test", "100", "--batch-size", "32", "--no-plots",
         "--kernels", "cpu", "--quiet"]


def _cli(*argv) -> int:
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    pyimgcls.set_backend("auto")
    assert _cli("train", *SMALL, "--epochs", 3, "--warmup-epochs", 0, "--out", out) == 0     # ~75% accurate
    return out


def _digits(n=20):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(3))


def test_ptq_checkpoint_eval_predict_bench(trained, tmp_path, capsys):
    qfile = tmp_path / "q.pt"
    assert _cli("quantize", "--checkpoint", trained / "best.pt", "--calibration-batches", 2, "--observer",
                "percentile", "--limit-test", 100, "--kernels", "cpu", "--out", qfile) == 0
    out = capsys.readouterr().out
    assert "int8 by PTQ (percentile)" in out and "wrote" in out
    data = torch.load(qfile, weights_only=True)            # tensors and plain metadata only
    assert data["kind"] == "quantized" and data["format"] == ckpt_mod.FORMAT
    rec = data["meta"]["quantization"]
    assert rec["observer"] == "percentile" and rec["calibration_batches"] == 2 and rec["qat_epochs"] == 0
    assert 0.5 < rec["int8_test_accuracy"] and abs(rec["int8_test_accuracy"] - rec["float_test_accuracy"]) < 0.1
    assert all(w["q"].dtype == torch.int8 for w in data["model"]["weights"].values())
    qm = pyimgcls.load_model(qfile)
    assert isinstance(qm, QuantizedModel) and not qm.training and len(qm.weights) == 5
    assert sum(p.numel() for p in qm.parameters()) == 0     # no float copy of the quantised weights
    base = pyimgcls.load_model(trained / "best.pt")
    x = _digits()
    with torch.no_grad():
        agree = (qm(x).argmax(1) == base(x).argmax(1)).float().mean()
    assert agree >= 0.8
    assert _cli("eval", "--checkpoint", qfile, "--limit-test", 60, "--kernels", "cpu") == 0
    assert "test accuracy" in capsys.readouterr().out
    from PIL import Image
    img = tmp_path / "d.png"
    Image.new("L", (32, 32), 128).save(img)
    assert _cli("predict", "--checkpoint", qfile, img, "--kernels", "cpu", "--top", 3) == 0
    assert "d.png" in capsys.readouterr().out
    assert _cli("bench", "--checkpoint", qfile, "--quick", "--batch-sizes", "1,3", "--kernels", "cpu") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "speed-up" in lines[1] and len(lines) == 4 and lines[3].split()[0] == "3"


def _bn_stats(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
    return model.eval()


@pytest.mark.parametrize("name", ["lenet5", "mobilenet_v3_small"])
def test_checkpoint_round_trip_is_exact(trained, tmp_path, name):
    """The file's int8 model gives the in-memory one's outputs bit for bit, float layers included
    (MobileNetV3's hardswish convolutions and SE blocks stay in float: their weights travel too)."""
    from pyimgcls.training.loop import _build_checkpoint_model
    meta = torch.load(trained / "best.pt", weights_only=True)["meta"]
    if name != "lenet5":
        meta = dict(meta, model=name, in_channels=3)
    model = _bn_stats(_build_checkpoint_model(meta, "test"), seed=4)
    ch = meta["in_channels"]
    g = torch.Generator().manual_seed(5)
    with pytest.warns(UserWarning) if name != "lenet5" else _nothing():
        qm = quantize(model, [torch.randn(4, ch, 32, 32, generator=g) for _ in range(2)])
    path = tmp_path / "q.pt"
    ckpt_mod.atomic_save({"format": ckpt_mod.FORMAT, "kind": "quantized", "meta": meta, "model": qm.state()}, path)
    back = pyimgcls.load_model(path)
    assert back.float_layers == qm.float_layers and (name == "lenet5") == (not qm.float_layers)
    x = torch.randn(3, ch, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y, y_back = qm(x), back(x)
    assert torch.equal(y, y_back)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_qat_from_the_cli_and_a_pruned_checkpoint(trained, tmp_path, capsys):
    pfile, qfile = tmp_path / "pruned.pt", tmp_path / "pq.pt"
    assert _cli("prune", "--checkpoint", trained / "best.pt", "--amount", 0.25, "--out", pfile) == 0
    assert _cli("quantize", "--checkpoint", pfile, "--calibration-batches", 2, "--qat-epochs", 1, "--limit-test", 100,
                "--kernels", "cpu", "--out", qfile) == 0
    out = capsys.readouterr().out
    assert "QAT epoch 1/1" in out and "int8 by QAT 1 epoch(s)" in out
    data = torch.load(qfile, weights_only=True)
    rec = data["meta"]["quantization"]
    assert rec["source_kind"] == "pruned" and rec["qat_epochs"] == 1 and rec["int8_test_accuracy"] > 0.5
    qm = pyimgcls.load_model(qfile)
    assert qm.weights["features.0"].q.shape[0] == 5 and qm.weights["features.2"].q.shape[0] == 12  # pruned widths
    assert _cli("eval", "--checkpoint", qfile, "--limit-test", 40, "--kernels", "cpu") == 0


def test_qat_keeps_a_2_4_checkpoint_2_4(trained, tmp_path, capsys):
    """quantize --qat-epochs on a `prune --2:4` file: the masks are re-applied after every optimizer step,
    so every recorded layer's int8 weight still has >= 2 zeros in each group of 4 input channels (without
    them, momentum SGD refills the pruned positions in the first steps)."""
    from pyimgcls.pruning import is_2_4
    sfile, qfile = tmp_path / "s24.pt", tmp_path / "s24q.pt"
    assert _cli("prune", "--checkpoint", trained / "best.pt", "--amount", 0, "--2:4", "--out", sfile) == 0
    layers = torch.load(sfile, weights_only=True)["meta"]["sparsity"]["layers"]
    assert len(layers) >= 2
    assert _cli("quantize", "--checkpoint", sfile, "--calibration-batches", 2, "--qat-epochs", 1, "--lr", 0.05,
                "--limit-test", 40, "--kernels", "cpu", "--out", qfile) == 0
    assert f"2:4 masks re-applied after every QAT step in {len(layers)} layer(s)" in capsys.readouterr().out
    data = torch.load(qfile, weights_only=True)
    assert data["meta"]["sparsity"]["layers"] == layers
    for name in layers:
        q = data["model"]["weights"][name]["q"]
        assert is_2_4(q), name
        assert int((q != 0).sum()) > q.numel() // 4      # the kept half did train (not all zero)


@pytest.mark.parametrize("argv, needle", [
    (["--calibration-batches", "0"], "--calibration-batches"),
    (["--qat-epochs", "-1"], "--qat-epochs"),
    (["--observer", "kl"], "--observer"),
    (["--checkpoint", "/nonexistent/x.pt"], "/nonexistent/x.pt"),
    (["--out", "SAME"], "the same file"),
])
def test_quantize_cli_errors_are_one_line_exit_2(trained, tmp_path, capsys, argv, needle):
    src = trained / "best.pt"
    argv = [str(src) if a == "SAME" else a for a in argv]
    assert _cli("quantize", "--checkpoint", src, "--out", tmp_path / "o.pt", *argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "o.pt")


def test_wrong_kind_of_checkpoint(trained, tmp_path, capsys):
    qfile = tmp_path / "q.pt"
    assert _cli("quantize", "--checkpoint", trained / "best.pt", "--calibration-batches", 1, "--limit-test", 10,
                "--out", qfile) == 0
    capsys.readouterr()
    assert _cli("quantize", "--checkpoint", qfile, "--out", tmp_path / "q2.pt") == 2      # already quantised
    err = capsys.readouterr().err
    assert "already quantised" in err and err.count("\n") == 1
    assert _cli("bench", "--checkpoint", trained / "best.pt", "--quick") == 2             # bench needs a quantised one
    err = capsys.readouterr().err
    assert "'trained' checkpoint" in err and err.count("\n") == 1
    assert _cli("prune", "--checkpoint", qfile, "--out", tmp_path / "p.pt") == 2          # prune the float one
    err = capsys.readouterr().err
    assert "'quantized' checkpoint" in err and err.count("\n") == 1
    assert _cli("bench", "--checkpoint", qfile, "--batch-sizes", "1,0") == 2
    assert "--batch-sizes" in capsys.readouterr().err
    # a quantised file whose int8 state was damaged: one clear error, no crash
    data = torch.load(qfile, weights_only=True)
    del data["model"]["weights"]["features.0"]
    torch.save(data, tmp_path / "bad.pt")
    assert _cli("eval", "--checkpoint", tmp_path / "bad.pt") == 2
    err = capsys.readouterr().err
    assert "bad.pt" in err and "'quantized' checkpoint" in err and err.count("\n") == 1
