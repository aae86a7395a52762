"""Build pyimgcls._C: a torch-free pybind11 module.

C++ CPU kernels (csrc/cpu/*.cpp) are always built with g++ and OpenMP. CUDA kernels
(csrc/cuda/*.cu) are compiled by nvcc into objects and linked with cudart_static when nvcc is
found. Sources are globbed, never listed by hand.

Environment:
  PYIMGCLS_CUDA        auto (default: build CUDA when nvcc is found) | 0 (never) | 1 (required)
  PYIMGCLS_CUDA_ARCHS  ";"-separated SM list, default "80;90a". Sources under csrc/cuda/sm90/
                       (wgmma/TMA/clusters) are compiled only for 90a.
  PYIMGCLS_NVCC_THREADS  parallel nvcc jobs (default: CPU count)
"""
import glob
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension
from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def _newest_header_mtime():
    heads = [p for ext in ("h", "cuh") for p in glob.glob(os.path.join(ROOT, "csrc", "**", f"*.{ext}"), recursive=True)]
    return max((os.path.getmtime(p) for p in heads), default=0.0)


def needs_recompile(obj, src):
    """Incremental builds (`python setup.py build_ext --inplace` keeps objects in build/): recompile
    when the object is missing or older than its source or than any header under csrc/ (headers are
    shared across families, so any header change rebuilds everything: conservative, never stale)."""
    if not os.path.exists(obj):
        return True
    t = os.path.getmtime(obj)
    return t < os.path.getmtime(src) or t < _newest_header_mtime()


ParallelCompile("PYIMGCLS_BUILD_JOBS", needs_recompile=needs_recompile).install()


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def find_nvcc():
    mode = os.environ.get("PYIMGCLS_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"PYIMGCLS_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return None
    candidates = [shutil.which("nvcc")]
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            candidates.append(os.path.join(os.environ[env], "bin", "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    if mode == "1":
        raise SystemExit("PYIMGCLS_CUDA=1 but nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    return None


def cuda_lib_dir(nvcc):
    homes = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"]
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            homes.insert(0, os.environ[env])
    for home in homes:
        for sub in ("lib64", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib", "lib"):
            d = os.path.join(home, sub)
            if os.path.isfile(os.path.join(d, "libcudart_static.a")):
                return d
    raise SystemExit(f"nvcc found at {nvcc} but libcudart_static.a was not found beside it")


def cuda_archs():
    archs = [a.strip() for a in os.environ.get("PYIMGCLS_CUDA_ARCHS", "80;90a").replace(",", ";").split(";")]
    archs = [a for a in archs if a]
    if not archs:
        raise SystemExit("PYIMGCLS_CUDA_ARCHS is empty")
    return archs


class BuildExt(build_ext):
    """build_ext that first compiles the .cu sources with nvcc and links their objects."""

    def build_extension(self, ext):
        nvcc = find_nvcc()
        # Objects of a CUDA build are compiled with PYIMGCLS_WITH_CUDA: keep each configuration's
        # objects apart so an incremental build never links objects of the other one.
        config = "cuda-" + "-".join(cuda_archs()) if nvcc is not None else "cpu"
        if os.path.basename(self.build_temp) != config:
            self.build_temp = os.path.join(self.build_temp, config)
        # ...and relink when the module on disk was built in the other configuration (setuptools
        # would otherwise keep it as "up to date").
        stamp = self.get_ext_fullpath(ext.name) + ".config"
        previous = open(stamp).read() if os.path.exists(stamp) else None
        if previous != config:
            self.force = True
        if nvcc is not None:
            objects = self._compile_cuda(nvcc)
            ext.extra_objects = list(ext.extra_objects or []) + objects
            ext.library_dirs = list(ext.library_dirs or []) + [cuda_lib_dir(nvcc)]
            ext.libraries = list(ext.libraries or []) + ["cudart_static", "dl", "rt", "pthread"]
            archs = cuda_archs()
            ext.define_macros = list(ext.define_macros or []) + [
                ("PYIMGCLS_WITH_CUDA", "1"),
                ("PYIMGCLS_CUDA_ARCHS_STR", '"' + ";".join(archs) + '"'),
            ]
        super().build_extension(ext)
        with open(stamp, "w") as f:
            f.write(config)

    def _compile_cuda(self, nvcc):
        archs = cuda_archs()
        common = glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
        hopper = glob.glob(os.path.join(ROOT, "csrc", "cuda", "sm90", "*.cu"))
        out_dir = os.path.join(self.build_temp, "cuda")
        os.makedirs(out_dir, exist_ok=True)

        def gencode(arch_list):
            flags = []
            for a in arch_list:
                flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
            return flags

        jobs = [(src, gencode(archs)) for src in common]
        if "90a" in archs:
            jobs += [(src, gencode(["90a"]) + ["-DPYIMGCLS_SM90A=1"]) for src in hopper]

        def compile_one(job):
            src, arch_flags = job
            obj = os.path.join(out_dir, os.path.relpath(src, ROOT).replace(os.sep, "_") + ".o")
            if not needs_recompile(obj, src) and os.path.getmtime(obj) >= os.path.getmtime(__file__):
                return obj
            cmd = [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "--expt-relaxed-constexpr",
                   "-Xcompiler", "-fPIC", "-lineinfo", "-I", os.path.join(ROOT, "csrc"),
                   "-Xptxas=-warn-spills"] + arch_flags
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            return obj

        workers = int(os.environ.get("PYIMGCLS_NVCC_THREADS", os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(compile_one, jobs))


ext = Pybind11Extension(
    "pyimgcls._C",
    sources=_rel(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))
                 + glob.glob(os.path.join(ROOT, "csrc", "bindings", "*.cpp"))),
    include_dirs=[os.path.join(ROOT, "csrc")],
    extra_compile_args=["-O3", "-fopenmp", "-fno-math-errno"],
    extra_link_args=["-fopenmp"],
    cxx_std=17,
)

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt},
    package_dir={"pyimgcls": "pyimgcls", "pyimgcls.triton_kernels": "triton_kernels"},
    packages=find_packages(include=["pyimgcls", "pyimgcls.*"])
    + ["pyimgcls.triton_kernels"]
    + ["pyimgcls.triton_kernels." + p for p in find_packages("triton_kernels")],
)
