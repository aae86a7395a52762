"""tools/setup_state.py decides what a re-run of .ci/setup.sh may skip; a wrong "satisfied" would
leave a machine without a requirement, so every "run pip" case is checked."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "setup_state.py")


def state(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True).returncode


@pytest.mark.parametrize("lines,expected", [
    (["pytest>=1", "# a comment", "", "numpy  # trailing comment"], 0),
    (["pytest<1"], 1),                                   # installed, wrong version
    (["surely-not-installed-pkg-xyz>=1"], 1),            # missing
    (["--find-links /opt/wheels", "pytest"], 1),         # options: leave it to pip
    (["pytest[testing]>=1"], 1),                         # extras cannot be checked here
    (["surely-not-installed-pkg-xyz; python_version < '3'"], 0),  # marker excludes it
    (["not a requirement !!"], 1),
])
def test_requirements(tmp_path, lines, expected):
    req = tmp_path / "req.txt"
    req.write_text("\n".join(lines) + "\n")
    assert state("requirements", str(req)) == expected


def test_requirements_subset_by_name(tmp_path):
    req = tmp_path / "req.txt"
    req.write_text("pytest>=1\nsurely-not-installed-pkg-xyz\n")
    assert state("requirements", str(req), "pytest") == 0
    assert state("requirements", str(req)) == 1


def test_editable_needs_matching_stamp(tmp_path):
    stamp = tmp_path / "editable.stamp"
    assert state("editable", str(stamp)) == 1            # no stamp yet
    stamp.write_text("0" * 64 + "\n")
    assert state("editable", str(stamp)) == 1            # packaging files changed since
    assert state("stamp", str(stamp)) == 0
    assert len(stamp.read_text().strip()) == 64


def test_usage_error():
    assert state("bogus") == 2
