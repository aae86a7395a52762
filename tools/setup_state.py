"""What `.ci/setup.sh` can skip on a re-run, decided in one fast interpreter start instead of pip's
resolver (each `pip install` of satisfied requirements costs 4-6 s on a 2-core machine).

    python tools/setup_state.py requirements FILE [NAME ...]  exit 0 when every requirement of FILE
                                                             (or only those whose name is in NAME ...)
                                                             is installed at an allowed version
    python tools/setup_state.py editable STAMP               exit 0 when pyimgcls is installed in
                                                             editable mode from this checkout and the
                                                             packaging files are unchanged since STAMP
    python tools/setup_state.py stamp STAMP                  record the packaging files for `editable`

Exit status 1 means "run pip"; anything this script cannot judge (options in the file, extras, a
missing package) is answered 1, so the worst case is the slower, always-correct pip path.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import sys

try:
    from packaging.requirements import InvalidRequirement, Requirement
except ImportError:  # pip vendors packaging; every interpreter setup.sh uses has pip
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGING_FILES = ("setup.py", "pyproject.toml")


def requirements_met(path: str, names: list[str]) -> bool:
    wanted = {n.lower().replace("_", "-") for n in names}
    with open(path, encoding="utf-8") as f:
        lines = [ln.split("#", 1)[0].strip() for ln in f]
    for line in filter(None, lines):
        if line.startswith("-"):
            return False
        try:
            req = Requirement(line)
        except InvalidRequirement:
            return False
        if wanted and req.name.lower().replace("_", "-") not in wanted:
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        if req.extras:
            return False
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            return False
        if not req.specifier.contains(version.split("+")[0], prereleases=True) \
                and not req.specifier.contains(version, prereleases=True):
            return False
    return True


def _fingerprint() -> str:
    h = hashlib.sha256(sys.executable.encode())
    for name in PACKAGING_FILES:
        with open(os.path.join(ROOT, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()


def editable_current(stamp: str) -> bool:
    try:
        dist = md.distribution("pyimgcls")
        info = json.loads(dist.read_text("direct_url.json") or "{}")
        with open(stamp, encoding="utf-8") as f:
            recorded = f.read().strip()
    except (md.PackageNotFoundError, OSError, ValueError):
        return False
    here = "file://" + ROOT
    return (info.get("dir_info", {}).get("editable", False) and info.get("url", "").rstrip("/") == here
            and recorded == _fingerprint())


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "requirements":
        return 0 if requirements_met(argv[1], argv[2:]) else 1
    if len(argv) == 2 and argv[0] == "editable":
        return 0 if editable_current(argv[1]) else 1
    if len(argv) == 2 and argv[0] == "stamp":
        with open(argv[1], "w", encoding="utf-8") as f:
            f.write(_fingerprint() + "\n")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
