"""Command-line interface: ``pyimgcls info | bench`` (also ``python -m pyimgcls``)."""
from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys


def _nvcc_version() -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "not found"
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    lines = [ln for ln in out.splitlines() if "release" in ln]
    return lines[-1].strip() if lines else out.strip().splitlines()[-1]


def info_dict() -> dict:
    import torch

    import pyimgcls
    from pyimgcls import _backend, _native

    try:
        import triton
        triton_version = triton.__version__
    except Exception as e:  # report, don't crash: info is what people run when things are broken
        triton_version = f"not importable ({type(e).__name__})"
    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "pyimgcls": pyimgcls.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch cuda": torch.version.cuda or "none (CPU build)",
        "triton": triton_version,
        "nvcc": _nvcc_version(),
        "cuda kernels compiled": _native.cuda_kernels_compiled(),
        "cuda archs": _native.C.cuda_archs or "-",
        "cuda devices (native)": _native.cuda_device_count(),
        "cpu gemm isa": _native.C.gemm_isa(),
        "triton interpreter": _backend.triton_interpreting(),
        "gpus": ", ".join(gpus) if gpus else "none",
        "available backends": ", ".join(pyimgcls.available_backends()),
        "backend": pyimgcls.get_backend(),
    }


def cmd_info(args) -> int:
    from tabulate import tabulate
    print(tabulate(list(info_dict().items()), tablefmt="simple"))
    return 0


def cmd_bench(args) -> int:
    from . import bench
    return bench.main_cli(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyimgcls", description="pyimgcls: our kernels for image classification")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("info", help="versions, compiled kernels and available backends")
    s.set_defaults(func=cmd_info)
    s = sub.add_parser("bench", help="benchmark our kernels against PyTorch (GPU if present, else CPU)")
    s.add_argument("--out", default=None, help="directory for the results JSON (GPU runs)")
    s.add_argument("--quick", action="store_true", help="fewer, smaller cases")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
