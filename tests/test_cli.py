"""The ``pyimgcls`` command line: subcommands, help with defaults, exit codes, both entry points."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from pyimgcls import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sub(*argv, timeout=120):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(list(argv), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_subcommands_are_all_there():
    p = cli.build_parser()
    sub = next(a for a in p._actions if a.dest == "command")
    assert {"train", "eval", "predict", "bench", "info"} <= set(sub.choices)


def test_train_defaults_are_the_main_job():
    a = cli.build_parser().parse_args(["train"])
    assert (a.model, a.data, a.kernels, a.augment, a.amp, a.out) == ("lenet5", "digits", "auto", "standard", "off",
                                                                     None)   # a new runs/<model>-<data>-<time>/
    assert a.epochs >= 1 and a.optimizer == "sgd" and a.schedule == "cosine" and not a.resume


@pytest.mark.parametrize("cmd", ["train", "eval", "predict"])
def test_help_shows_defaults(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())       # argparse wraps lines
    assert "(default: auto)" in out                       # --kernels
    if cmd == "train":
        for d in ("(default: lenet5)", "(default: digits)", "(default: sgd)", "(default: cosine)"):
            assert d in out, d


@pytest.mark.parametrize("argv", [
    ["train", "--kernels", "gpu"],                        # not a choice
    ["train", "--epochs", "two"],                         # not an int
    ["eval"],                                             # --checkpoint is required
    ["predict", "--checkpoint", "x.pt"],                  # no IMAGE
    ["frobnicate"],
])
def test_argparse_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_eval_and_predict_name_a_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "--checkpoint", str(tmp_path / "nope.pt")])
    assert e.value.code == 2 and "nope.pt" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SystemExit) as e:
        cli.main(["predict", "--checkpoint", str(tmp_path / "junk.pt"), "img.png"])
    assert e.value.code == 2 and "junk.pt" in capsys.readouterr().err


def test_python_dash_m_exit_status_and_message(tmp_path):
    p = _sub(sys.executable, "-m", "pyimgcls", "train", "--epochs", "0", "--out", str(tmp_path))
    assert p.returncode == 2
    assert p.stderr == "pyimgcls train: error: argument --epochs: must be >= 1, got 0\n"


@pytest.mark.skipif(shutil.which("pyimgcls") is None, reason="console script not installed")
def test_console_script():
    p = _sub("pyimgcls", "train", "--help")
    assert p.returncode == 0 and "--pretrained" in p.stdout and "(default: digits)" in " ".join(p.stdout.split())


@pytest.mark.parametrize("exc, status", [
    ("DataError", 2),           # bad data: like argparse's own errors
    ("TrainingDiverged", 3),    # the loss or the weights became non-finite
])
def test_errors_are_one_line_with_their_exit_status(monkeypatch, capsys, exc, status):
    """Messages quoted from other libraries may span lines; the CLI still prints exactly one."""
    import pyimgcls.data
    import pyimgcls.training as T

    err = getattr(pyimgcls.data if exc == "DataError" else T.loop, exc)

    def fail(args):
        raise err("first part\n\n\tsecond part\n")
    monkeypatch.setattr(T, "train", fail)
    with pytest.raises(SystemExit) as e:
        cli.main(["train"])
    assert e.value.code == status
    assert capsys.readouterr().err == "pyimgcls train: error: first part second part\n"


# ------------------------------------------------------------------------ argument validation
@pytest.mark.parametrize("argv, needle", [
    (["train", "--momentum", "-1"], "--momentum"),
    (["train", "--warmup-epochs", "nan"], "--warmup-epochs"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--workers", "-1"], "--workers"),
    (["train", "--dropout", "2"], "--dropout"),
    (["train", "--label-smoothing", "1"], "--label-smoothing"),
    (["train", "--in-channels", "2"], "--in-channels"),
    (["train", "--image-size", "0"], "--image-size"),
    (["train", "--gamma", "0"], "--gamma"),
    (["predict", "--checkpoint", "x.pt", "--top", "-1", "a.png"], "--top"),
    (["eval", "--checkpoint", "x.pt", "--batch-size", "0"], "--batch-size"),
    (["eval", "--checkpoint", "x.pt", "--limit-test", "0"], "--limit-test"),
])
def test_bad_values_are_one_line_naming_the_argument(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and "Traceback" not in err
    assert err.count("\n") == 1, err


def test_version(capsys):
    import pyimgcls
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"pyimgcls {pyimgcls.__version__}"
