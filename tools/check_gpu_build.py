#!/usr/bin/env python
"""Static checks of the GPU code, on a machine without a GPU (CI): reads what the build made.

(a) SASS of every CUDA kernel in the objects setup.py compiled (build/temp.*/cuda-*/cuda/*.o), one
    line per (kernel, arch) with registers, shared memory, stack and spills. Violations in production
    kernels (everything but the study ladder: csrc/cuda/ladder*, csrc/cuda/sm90/ladder*):
      * local-memory spills: any LDL/STL instruction;
      * a tensor-core kernel (TENSOR_CORE_KERNELS) without HMMA, an integer one
        (INT_TENSOR_CORE_KERNELS) without IMMA; a kernel of an sm_90a-only file
        (csrc/cuda/sm90/) without HGMMA;
      * a tensor-core kernel of conv.cu that calls the division routines (the 64-bit / fp32
        slow-path subroutines nvcc emits for non-constant `/` and `%`) more than max(8, HMMA/2)
        times: they sit in the main loop's address arithmetic and cost more than its MMAs.
(b) Every Triton autotune config of every production kernel (triton_kernels/, the ladder excepted),
    compiled for sm_90 and sm_80 and for every dtype, exactly as a launch would compile it: PROBES call
    each host function on small CPU tensors with Autotuner.run replaced by a recorder, which gives the
    real signature, specialisation and constexprs; the configs are the ones the kernel's
    early_config_prune leaves for that (dtype, arch). Each one goes through triton.compile(...,
    target=GPUTarget("cuda", cap, 32)); registers and spills come from the cubin (cuobjdump), shared
    memory from the kernel's metadata. Violations: any LDL/STL, shared memory above the arch's limit
    (SMEM_LIMIT). Results are cached in build/check_gpu_build/ under a key made of the kernel's source
    hash (Triton's cache_key, which covers the jit functions it calls), the specialisation, the options,
    the target and the Triton version, so a second CI run recompiles only what changed.

Prints one line per kernel (and config) and a summary; exit status 1 on a violation, 2 when the
check cannot run (no objects, no cuobjdump). Flags: --sass-only, --triton-only, --json (one JSON
document on stdout instead of the lines).

    python tools/check_gpu_build.py [--sass-only | --triton-only] [--json] [--jobs N] [--all-activations]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import glob
import hashlib
import importlib
import importlib.util
import inspect
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.path.join(ROOT, "build", "check_gpu_build")

# Opt-in shared memory per block (bytes): sm_80 (A100) 163 KB, sm_90 (H100/H200) 227 KB.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
# Base names of the CUDA kernels whose main loop is mma.sync: their SASS must hold HMMA.
TENSOR_CORE_KERNELS = {"gemm_fwd_kernel", "conv2d_igemm_kernel"}
# The 2:4 sparse kernel (csrc/cuda/sparse.cu) runs mma.sp: HMMA.SP in its SASS.
TENSOR_CORE_KERNELS |= {"sparse_linear_fwd_kernel"}
# Base names of the integer tensor-core kernels (mma.sync m16n8k32 .u8/.s8, csrc/cuda/quant.cu): their
# SASS must hold IMMA (IMMA.16832.U8.S8 on sm_80 / sm_90).
INT_TENSOR_CORE_KERNELS = {"quant_gemm_fwd_kernel"}
# Division-routine budget per tensor-core kernel of conv.cu: max(DIV_FLOOR, HMMA / 2) calls.
DIV_FLOOR = 8
LADDER_SOURCES = ("csrc/cuda/ladder", "csrc/cuda/sm90/ladder")
LADDER_TRITON_MODULES = {"ladder"}


# ----------------------------------------------------------------------------------- tools
def find_cuobjdump():
    """cuobjdump of the CUDA toolkit, else the copy inside Triton's wheel; None when neither."""
    cands = [shutil.which("cuobjdump")]
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            cands.append(os.path.join(os.environ[env], "bin", "cuobjdump"))
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(os.path.join(os.path.dirname(os.path.realpath(nvcc)), "cuobjdump"))
    cands.append("/usr/local/cuda/bin/cuobjdump")
    spec = importlib.util.find_spec("triton")
    if spec and spec.origin:
        cands.append(os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", "cuobjdump"))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def _run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()[:500]}")
    return r.stdout


# ----------------------------------------------------------------------------------- SASS parsing
@dataclasses.dataclass
class SassKernel:
    arch: str                       # "sm_90a"
    mangled: str
    opcodes: dict = dataclasses.field(default_factory=dict)   # opcode (no modifiers) -> count
    calls: dict = dataclasses.field(default_factory=dict)     # call target -> count
    insns: list = dataclasses.field(default_factory=list, repr=False)  # (address, opcode.modifiers)
    div_calls: int = 0              # CALLs into a division routine (set by parse_sass)

    def count(self, op):
        return self.opcodes.get(op, 0)

    @property
    def spills(self):
        return self.count("LDL") + self.count("STL")


_ARCH_RE = re.compile(r"^\s*(?:code for|arch =)\s*(sm_\w+)")


def _arch(line, current):
    """The arch a cuobjdump line starts, else ``current``. A fatbin says "arch = sm_90a" then
    "code for sm_90": keep the arch-specific name."""
    m = _ARCH_RE.match(line)
    if not m:
        return current
    new = m.group(1)
    return current if current and current.rstrip("a") == new.rstrip("a") else new
_FUNC_RE = re.compile(r"^\s*Function\s*:\s*(\S+)")
# "/*0a70*/  @!P0 HMMA.16816.F32 R4, R8, R12, R4 ;" -> 0xa70, HMMA, .16816.F32; predicates skipped.
_INSN_RE = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Za-z0-9_]+)*)\s*(.*?);")
_CALL_NAME_RE = re.compile(r"`\(([^)]*)\)")
_DIV_NAME_RE = re.compile(r"(div|rem)(_|$)|_(div|rem)")


def is_division_routine(target: str, body=()) -> bool:
    """A CALL target that divides: nvcc's out-of-line division / remainder subroutines
    (__cuda_sm20_div_u64, __cuda_sm20_rem_s64, __cuda_sm3x_div_rn_noftz_f32_slowpath, ...). cuobjdump
    names them when the object keeps their symbols; otherwise the target is an address, and the
    subroutine's ``body`` (its instructions up to RET) is a division when it takes a reciprocal
    (MUFU.RCP / MUFU.RCP64H: every integer and IEEE division routine starts from one)."""
    if not target.startswith("0x"):
        return bool(_DIV_NAME_RE.search(target))
    return any(op.startswith("MUFU.RCP") for op in body)


def _subroutine_body(k: SassKernel, addr: int):
    """Instructions of the subroutine at ``addr`` up to its RET. nvcc places subroutines after the
    kernel's last EXIT; a CALL into the kernel body itself (a branch-and-link ptxas uses for shared
    tails) is not a subroutine call."""
    last_exit = max((a for a, op in k.insns if op.startswith("EXIT")), default=-1)
    start = next((i for i, (a, _) in enumerate(k.insns) if a == addr), None)
    if start is None or addr < last_exit:
        return []
    body = []
    for _, op in k.insns[start:]:
        body.append(op)
        if op.startswith("RET"):
            break
    return body


def parse_sass(text: str) -> list[SassKernel]:
    """Kernels of `cuobjdump -sass` output, with their opcode and call-target counts and the number of
    CALLs into division routines. Subroutines nvcc emits for a kernel are listed inside its Function
    block (after its EXIT), so their instructions count too."""
    kernels, arch, cur = [], None, None
    for line in text.splitlines():
        if _ARCH_RE.match(line):
            arch, cur = _arch(line, None if line.lstrip().startswith("arch =") else arch), None
            continue
        m = _FUNC_RE.match(line)
        if m:
            cur = SassKernel(arch or "?", m.group(1))
            kernels.append(cur)
            continue
        if cur is None:
            continue
        m = _INSN_RE.match(line)
        if not m:
            continue
        op = m.group(2)
        cur.opcodes[op] = cur.opcodes.get(op, 0) + 1
        cur.insns.append((int(m.group(1), 16), op + m.group(3)))
        if op == "CALL":
            named = _CALL_NAME_RE.search(m.group(4))
            target = named.group(1) if named else m.group(4).split()[0] if m.group(4).split() else "?"
            if target.startswith("0x"):
                target = hex(int(target, 16))
            cur.calls[target] = cur.calls.get(target, 0) + 1
    for k in kernels:
        k.div_calls = sum(n for t, n in k.calls.items()
                          if is_division_routine(t, _subroutine_body(k, int(t, 16)) if t.startswith("0x") else ()))
    return kernels


_RES_FUNC_RE = re.compile(r"^\s*Function\s+(\S+?):\s*$")
_RES_KV_RE = re.compile(r"([A-Z_]+(?:\[\d+\])?):(\d+)")


def parse_res_usage(text: str) -> dict:
    """`cuobjdump -res-usage` -> {(arch, mangled): {"REG": n, "STACK": n, "SHARED": n, "LOCAL": n, ...}}."""
    out, arch, func = {}, None, None
    for line in text.splitlines():
        if _ARCH_RE.match(line):
            arch = _arch(line, None if line.lstrip().startswith("arch =") else arch)
            continue
        m = _RES_FUNC_RE.match(line)
        if m:
            func = m.group(1)
            continue
        if func is not None and "REG:" in line:
            out[(arch, func)] = {k: int(v) for k, v in _RES_KV_RE.findall(line)}
            func = None
    return out


def base_name(mangled: str) -> str:
    """The unqualified function name of an Itanium-mangled symbol (`_ZN8pyimgcls13gemm_fwd_kernelI...`
    -> gemm_fwd_kernel); a name that is not mangled is returned as is."""
    if not mangled.startswith("_Z"):
        return mangled
    i = 2
    if mangled[i:i + 1] == "L":
        i += 1
    nested = mangled[i:i + 1] == "N"
    if nested:
        i += 1
        while i < len(mangled) and mangled[i] in "rVK":
            i += 1
    name = mangled
    while i < len(mangled) and mangled[i].isdigit():
        j = i
        while mangled[j].isdigit():
            j += 1
        n = int(mangled[i:j])
        name = mangled[j:j + n]
        i = j + n
        if not nested or mangled[i:i + 1] in ("E", "I", ""):
            break
    return name


def demangle(names):
    """Full C++ names through c++filt (binutils; cu++filt of the toolkit as a second choice); the
    mangled names themselves when neither is installed."""
    names = list(names)
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if not names or tool is None:
        return dict(zip(names, names))
    r = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True, text=True)
    lines = r.stdout.splitlines()
    if r.returncode != 0 or len(lines) != len(names):
        return dict(zip(names, names))
    return dict(zip(names, lines))


# ----------------------------------------------------------------------------------- (a) SASS
def find_objects(root=ROOT):
    """The nvcc objects of the newest CUDA build configuration (build/temp.*/cuda-*/cuda/*.o)."""
    dirs = [d for d in glob.glob(os.path.join(root, "build", "temp.*", "cuda-*", "cuda")) if os.path.isdir(d)]
    if not dirs:
        return []
    newest = max(dirs, key=lambda d: max((os.path.getmtime(o) for o in glob.glob(os.path.join(d, "*.o"))),
                                         default=0.0))
    return sorted(glob.glob(os.path.join(newest, "*.o")))


def source_of(obj: str) -> str:
    """csrc_cuda_sm90_ladder_gemm_wgmma.cu.o -> csrc/cuda/sm90/ladder_gemm_wgmma.cu (setup.py names
    each object after its source path with the separators replaced by '_')."""
    stem = os.path.basename(obj)[:-len(".o")]
    for cand in glob.glob(os.path.join(ROOT, "csrc", "cuda", "**", "*.cu"), recursive=True):
        rel = os.path.relpath(cand, ROOT)
        if rel.replace(os.sep, "_") == stem:
            return rel.replace(os.sep, "/")
    return stem


def is_ladder_source(src: str) -> bool:
    return src.startswith(LADDER_SOURCES)


def sass_verdict(k: SassKernel, src: str) -> list[str]:
    """The violations of one kernel's SASS (empty: fine)."""
    bad = []
    name = base_name(k.mangled)
    if k.spills:
        bad.append(f"{k.count('LDL')} LDL + {k.count('STL')} STL (local memory: register spills or a "
                   f"dynamically indexed local array)")
    if "/sm90/" in src:
        if not k.count("HGMMA"):
            bad.append("no HGMMA in an sm_90a-only kernel")
    elif name in TENSOR_CORE_KERNELS and not k.count("HMMA"):
        bad.append("tensor-core kernel without HMMA")
    elif name in INT_TENSOR_CORE_KERNELS and not k.count("IMMA"):
        bad.append("integer tensor-core kernel without IMMA")
    if name in TENSOR_CORE_KERNELS and os.path.basename(src) == "conv.cu":
        limit = max(DIV_FLOOR, k.count("HMMA") // 2)
        if k.div_calls > limit:
            bad.append(f"{k.div_calls} calls to division routines > max({DIV_FLOOR}, HMMA/2) = {limit} "
                       f"(the conv main loop divides; precompute the divisions or use magic numbers)")
    return bad


def check_sass(objects, cuobjdump):
    rows = []
    for obj in objects:
        src = source_of(obj)
        kernels = parse_sass(_run([cuobjdump, "-sass", obj]))
        res = parse_res_usage(_run([cuobjdump, "-res-usage", obj]))
        names = demangle(sorted({k.mangled for k in kernels}))
        for k in kernels:
            r = res.get((k.arch, k.mangled), {})
            bad = sass_verdict(k, src)
            rows.append(dict(
                part="sass", source=src, arch=k.arch, kernel=names.get(k.mangled, k.mangled), mangled=k.mangled,
                regs=r.get("REG"), shared=r.get("SHARED"), stack=r.get("STACK"), local=r.get("LOCAL"),
                ldl=k.count("LDL"), stl=k.count("STL"), hmma=k.count("HMMA"), hgmma=k.count("HGMMA"),
                imma=k.count("IMMA"), div_calls=k.div_calls, ladder=is_ladder_source(src), violations=bad))
    return rows


# ----------------------------------------------------------------------------------- (b) Triton
DTYPES = ("float32", "float16", "bfloat16", "float64")


# Activation codes (triton_kernels/common.py apply_act). The elementwise kernels, small, are compiled
# with every activation. The GEMM epilogue (58 configs per activation, ~10 s each on CI's 2 cores: the
# check's time) with the superset epilogues only: relu6 (none and relu are relu6 with fewer selects on
# the same live accumulator), silu (sigmoid is silu without the multiply by x) and hardswish
# (hardsigmoid likewise); --all-activations adds sigmoid and hardsigmoid. The full sweep (2026-12-03,
# zoo3) agreed: sigmoid spilled in 3 of silu's 6 spilling configs, hardsigmoid in none of hardswish's 4.
ACTIVATIONS = ((1, "relu"), (2, "relu6"), (3, "silu"), (4, "hardswish"), (5, "sigmoid"), (6, "hardsigmoid"))
GEMM_ACTS = ACTIVATIONS[1:4]


def _probes():
    """Module name -> [(probe name, fn(dtype))]: each fn calls host functions of the module on small
    CPU tensors, shaped so that every autotuned kernel is launched with its usual constexprs (bias and
    residual on). The GEMM is probed with each activation epilogue of GEMM_ACTS (each selects its own
    rows: gemm._SMOOTH_SPILLS); the conv kernels with relu6. Lives here, not in triton_kernels,
    because only this check needs it."""
    import torch

    def gemm(dt, act):
        from triton_kernels import gemm as m
        a, b = torch.randn(96, 80, dtype=dt), torch.randn(80, 112, dtype=dt)
        m.gemm(a, b, torch.randn(112, dtype=dt), act, torch.empty(96, 112, dtype=dt))

    def conv_args(dt, groups=1, C=32, O=48):
        x = torch.randn(2, C, 9, 9, dtype=dt).to(memory_format=torch.channels_last)
        w = torch.randn(O, C // groups, 3, 3, dtype=dt).to(memory_format=torch.channels_last)
        out = torch.empty(2, O, 9, 9, dtype=dt).to(memory_format=torch.channels_last)
        return x, w, out

    geom = dict(stride=(1, 1), padding=[1, 1, 1, 1], dilation=(1, 1))

    def conv_fwd(dt):
        from triton_kernels import conv as m
        x, w, out = conv_args(dt)
        m.conv2d_fwd(x, w, torch.randn(48, dtype=dt), torch.randn_like(out), out, groups=1, act=2, **geom)

    def conv_dw(dt):
        from triton_kernels import conv as m
        x, w, out = conv_args(dt, groups=32, C=32, O=32)
        m.conv2d_fwd(x, w, torch.randn(32, dtype=dt), torch.randn_like(out), out, groups=32, act=2, **geom)

    def conv_dgrad(dt):
        from triton_kernels import conv as m
        x, w, out = conv_args(dt)
        m.conv2d_bwd_data(out, w, x, groups=1, **geom)

    def conv_wgrad(dt, split=1):
        from triton_kernels import conv as m
        x, w, out = conv_args(dt)
        saved = m._split_k
        m._split_k = lambda tiles, P, device: split  # a GPU splits K when the weight grid is small
        try:
            m.conv2d_bwd_weight(out, x, w, groups=1, **geom)
        finally:
            m._split_k = saved

    def conv_dw_dgrad(dt):
        from triton_kernels import conv as m
        x, w, out = conv_args(dt, groups=32, C=32, O=32)
        m.conv2d_bwd_data(out, w, x, groups=32, **geom)

    def conv_dw_wgrad(dt, split=1):
        from triton_kernels import conv as m
        x, w, out = conv_args(dt, groups=32, C=32, O=32)
        saved = m._depthwise_splits
        m._depthwise_splits = lambda O, taps, P, device: split  # fp32 partials + split_reduce when > 1
        try:
            m.conv2d_bwd_weight(out, x, w, groups=32, **geom)
        finally:
            m._depthwise_splits = saved

    # The Triton kernels without autotuning (se, distill, quant, the elementwise activation): each
    # is compiled at the tile and num_warps its host function picks for the probe's shape, so the
    # shapes below reach each launcher's tile choices (named in the probe). Kernels whose operands do
    # not follow the probe dtype (quant: uint8 / int8) are probed once, under float32.
    def act_elementwise(dt, act):
        from triton_kernels import gemm as m
        x = torch.randn(3, 5, 7, dtype=dt)
        m.act_fwd(x, act, torch.empty_like(x))
        m.act_bwd(torch.randn_like(x), x, act, torch.empty_like(x))

    def se(dt, C, H, channels_last, act, gate):
        # C, H pick the [BLOCK_S, BLOCK_C] tile (se._tile); fwd and bwd with every gradient wanted
        from triton_kernels import se as m
        N, R, HW = 2, max(1, C // 4), H * H
        acc = torch.float64 if dt == torch.float64 else torch.float32
        x, g = torch.randn(N, C, HW, dtype=dt), torch.randn(N, C, HW, dtype=dt)
        w1, b1, w2, b2 = (torch.randn(R, C, dtype=acc), torch.randn(R, dtype=acc), torch.randn(C, R, dtype=acc),
                          torch.randn(C, dtype=acc))
        pooled, hidden, z = torch.randn(N, C, dtype=acc), torch.randn(N, R, dtype=acc), torch.randn(N, C, dtype=acc)
        m.se_fwd(x, w1, b1, w2, b2, torch.empty_like(x), pooled, hidden, z, N, C, HW, R, channels_last, act, gate)
        m.se_bwd(g, x, w1, w2, pooled, hidden, z, torch.empty_like(x), torch.empty_like(w1), torch.empty_like(b1),
                 torch.empty_like(w2), torch.empty_like(b2), N, C, HW, R, channels_last, act, gate)

    def drop_path(dt, residual):
        from triton_kernels import se as m
        acc = torch.float64 if dt == torch.float64 else torch.float32
        x = torch.randn(3, 100, dtype=dt)
        m.drop_path(x, torch.rand(3, dtype=acc), torch.randn_like(x) if residual else None, torch.empty_like(x), 3, 100)

    def distill(dt, C, reduction):
        # C picks the tile (distill._tiles): 10 -> 16 columns x 128 rows, 100 -> 128 x 16, 5000 -> the
        # 4096-column sweep; reduction 0 none (per-row loss), 1 mean, 2 sum (ticketed final sum)
        from triton_kernels import distill as m
        N = 6
        acc = torch.float64 if dt == torch.float64 else torch.float32
        s, t = torch.randn(N, C, dtype=dt), torch.randn(N, C, dtype=dt)
        loss = torch.empty(N if reduction == 0 else (), dtype=acc)
        m.distill_fwd(s, t, torch.randint(0, C, (N,)), -100, reduction, 0.1, 2.0, 0.5, loss, torch.empty_like(s),
                      torch.empty((), dtype=acc) if reduction == 1 else None,
                      torch.empty(2 * N, dtype=acc) if reduction else None,
                      torch.zeros(1, dtype=torch.int32) if reduction else None)

    def quant(dt, which):
        if dt != torch.float32:
            return
        from triton_kernels import quant as m
        u8 = lambda *shape: torch.randint(0, 256, shape, dtype=torch.uint8)  # noqa: E731
        if which in ("gemm-float", "gemm-uint8"):
            M, N, K = 40, 24, 70
            w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
            colsum = w.to(torch.int32).sum(1, dtype=torch.int32)
            bias, mult = torch.randint(-1000, 1000, (N,), dtype=torch.int32), torch.rand(N)
            if which == "gemm-float":   # float32 output with the relu6 epilogue (relu is a subset)
                m.quant_gemm(u8(M, K), 3, w, colsum, bias, mult, None, 0, 0.0, 0, 0, 255, 2,
                             torch.empty(M, N))
            else:                       # uint8 output with the residual add
                m.quant_gemm(u8(M, K), 3, w, colsum, bias, mult, u8(M, N), 5, 0.7, 9, 0, 255, 0,
                             torch.empty(M, N, dtype=torch.uint8))
        elif which == "im2col":
            x = u8(2, 6, 9, 9)
            m.quant_im2col(x, 0, 6, 3, 3, (2, 2), (1, 1), (1, 1), 5, 5, 7, torch.empty(2 * 25, 54, dtype=torch.uint8))
        elif which == "max_pool":
            x = u8(2, 6, 9, 9)
            m.quant_max_pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1), 5, 5, torch.empty(2 * 25, 6, dtype=torch.uint8))
        elif which == "adaptive_avg_pool":
            x = u8(2, 6, 9, 9)
            m.quant_adaptive_avg_pool2d(x, 2, 2, 4, 0.8, 6, torch.empty(2 * 4, 6, dtype=torch.uint8))
        else:
            m.quant_quantize(torch.randn(3, 100), 10.0, 128, torch.empty(3, 100, dtype=torch.uint8))

    def batchnorm(dt, C, H, channels_last, act):
        # C, H, the layout and the element size pick the [BLOCK_R, BLOCK_C] tile and warps
        # (batchnorm._tile): NCHW H*H 289 -> 256 rows x 8 channels, H*H 4 -> 4 x 512; channels_last
        # C 200 -> 16-32 rows x 128, C 3 -> 256-1024 rows x 4. Training forward (stats, then the
        # normalisation with residual and activation), running-stat update, backward with every
        # gradient, training and eval.
        from triton_kernels import batchnorm as m
        acc = torch.float64 if dt == torch.float64 else torch.float32
        N, S = 2, H * H
        x = torch.randn(N, C, H, H, dtype=dt)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        mean, var, invstd, w, b = (torch.randn(C, dtype=acc) for _ in range(5))
        y = torch.empty_like(x)
        m.batch_norm_stats(x, mean, var, N, C, S, channels_last)
        m.batch_norm_fwd(x, mean, var, w, b, torch.randn_like(x), y, invstd, N, C, S, channels_last, 1e-5, act)
        m.batch_norm_update_stats(torch.zeros(C, dtype=acc), torch.ones(C, dtype=acc), mean, var, 0.1, N * S)
        for training in (True, False):
            m.batch_norm_bwd(torch.randn_like(x), y, x, w, mean, invstd, torch.empty_like(x), torch.empty(C, dtype=acc),
                             torch.empty(C, dtype=acc), torch.empty_like(x), N, C, S, channels_last, training, act)

    def sparse(dt):
        from triton_kernels import sparse as m
        meta = torch.full((48, 6), 0x4444, dtype=torch.int16)   # K = 96: 6 words a row, indices 0, 1
        m.sparse_linear(torch.randn(80, 96, dtype=dt), torch.randn(48, 48, dtype=dt), meta,
                        torch.randn(48, dtype=dt), torch.empty(80, 48, dtype=dt))

    return {
        "sparse": [("sparse_linear", sparse)],
        "batchnorm": [("bn-nchw-s289-silu", lambda dt: batchnorm(dt, 24, 17, False, 3)),
                      ("bn-nchw-s4-relu6", lambda dt: batchnorm(dt, 40, 2, False, 2)),
                      ("bn-nhwc-c200-hardswish", lambda dt: batchnorm(dt, 200, 3, True, 4)),
                      ("bn-nhwc-c3-silu", lambda dt: batchnorm(dt, 3, 5, True, 3))],
        "gemm": [(f"gemm-{name}", lambda dt, a=a: gemm(dt, a)) for a, name in GEMM_ACTS]
        + [(f"act-{name}", lambda dt, a=a: act_elementwise(dt, a)) for a, name in ACTIVATIONS],
        "se": [("se-nchw-hw289-silu-sigmoid", lambda dt: se(dt, 24, 17, False, 1, 0)),
               ("se-nhwc-c200-relu-hardsigmoid", lambda dt: se(dt, 200, 3, True, 0, 1)),
               ("drop_path", lambda dt: drop_path(dt, False)), ("drop_path_add", lambda dt: drop_path(dt, True))],
        "distill": [("distill-c10-mean", lambda dt: distill(dt, 10, 1)),
                    ("distill-c100-none", lambda dt: distill(dt, 100, 0)),
                    ("distill-c5000-sum", lambda dt: distill(dt, 5000, 2))],
        "quant": [(w, lambda dt, w=w: quant(dt, w)) for w in ("gemm-float", "gemm-uint8", "im2col", "max_pool",
                                                              "adaptive_avg_pool", "quantize")],
        "conv": [("fwd", conv_fwd), ("depthwise", conv_dw), ("dgrad", conv_dgrad),
                 ("wgrad", conv_wgrad), ("wgrad-split", lambda dt: conv_wgrad(dt, 4)),
                 ("depthwise-dgrad", conv_dw_dgrad), ("depthwise-wgrad", conv_dw_wgrad),
                 ("depthwise-wgrad-split", lambda dt: conv_dw_wgrad(dt, 3))],
    }


def _torch_dtype(name):
    import torch
    return getattr(torch, name)


def _record_launches(probes, dtypes):
    """Runs the probes with Autotuner.run and JITFunction.run recording instead of launching (no GPU
    needed). Returns [(kernel, probe, dtype, args, kwargs)], kernel an Autotuner or a JITFunction
    launched directly; the launches an Autotuner makes itself are not recorded twice."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction
    seen = []
    saved = Autotuner.run, JITFunction.run

    def record(self, *args, **kwargs):
        seen.append((self, args, {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}))

    Autotuner.run = JITFunction.run = record
    out = []
    try:
        for probe_name, fn in probes:
            for dt in dtypes:
                seen.clear()
                fn(_torch_dtype(dt))
                out += [(k, probe_name, dt, a, kw) for k, a, kw in seen]
    finally:
        Autotuner.run, JITFunction.run = saved
    return out


def selectable_configs(autotuner, dtype: str, cap: int, constexprs=None):
    """The configs a launch of this dtype on this arch can pick: the early_config_prune's own
    selection when it offers one (select(configs, dtype, cap), see triton_kernels/_config.py; given
    the launch's keyword constexprs when it takes them, as rows may be limited by e.g. ACT), else all
    of them."""
    prune = autotuner.early_config_prune
    select = getattr(prune, "select", None)
    if select is not None:
        if constexprs is not None and "constexprs" in inspect.signature(select).parameters:
            return select(autotuner.configs, dtype, cap, constexprs=constexprs)
        return select(autotuner.configs, dtype, cap)
    return list(autotuner.configs)


def _kernel_name(autotuner):
    return autotuner.base_fn.__name__ if hasattr(autotuner, "base_fn") else autotuner.fn.__name__


def _config_str(cfg):
    meta = ",".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    return f"{meta} w{cfg.num_warps} s{cfg.num_stages}"


def _jobs_for(module_name, module, probes, dtypes, caps):
    """One job per (kernel launch, dtype, arch, selectable config), with everything the compile needs
    in picklable form. Kernels the probes launch without autotuning (e.g. the split reduction) are
    checked at the launch's own num_warps / num_stages. Also returns the problems: autotuned kernels
    of the module that no probe launched, launches for which the pruning leaves no config."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import create_function_from_signature

    tuned = {id(v): name for name, v in vars(module).items() if isinstance(v, Autotuner)}
    launches = _record_launches(probes, dtypes)
    covered, jobs, done, empty = set(), [], set(), []
    for cap in caps:
        backend = make_backend(GPUTarget("cuda", cap, 32))
        for kern, probe, dt, args, kwargs in launches:
            covered.add(id(kern))
            if isinstance(kern, Autotuner):
                fn, configs = kern.fn, selectable_configs(kern, dt, cap, kwargs)
                if not configs:
                    empty.append(f"{_kernel_name(kern)}: no config left for {dt} on sm_{cap}")
            else:
                fn, configs = kern, [None]
            binder = create_function_from_signature(fn.signature, fn.params, backend)
            for cfg in configs:
                kw = dict(kwargs)
                if cfg is not None:
                    kw.update(cfg.all_kwargs())
                bound, spec, opts = binder(*args, **kw)
                options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, opts)
                key = hashlib.sha256(repr((fn.cache_key, sorted(signature.items()), sorted(constexprs.items()),
                                           sorted(attrs.items()), sorted(options.__dict__.items()), cap,
                                           triton.__version__)).encode()).hexdigest()[:32]
                if (key, probe) in done:
                    continue
                done.add((key, probe))
                label = (_config_str(cfg) if cfg is not None
                         else f"launch w{options.num_warps} s{options.num_stages}")
                jobs.append(dict(module=fn.fn.__module__, path=_import_root(fn), attr=fn.__name__, kernel=fn.__name__, probe=probe,
                                 dtype=dt, cap=cap, config=label, autotuned=cfg is not None, signature=signature,
                                 constexprs=constexprs, attrs=attrs, options=options.__dict__, key=key))
    missing = [f"{name}: autotuned but no probe launches it (add one to PROBES in tools/check_gpu_build.py)"
               for i, name in tuned.items() if i not in covered]
    return jobs, missing + sorted(set(empty))


def _import_module(spec, path=None):
    """'triton_kernels.gemm', or a path to a .py file (tests: imported by its stem, its folder put on
    sys.path so that compile processes find it too)."""
    if spec.endswith(".py"):
        path, spec = os.path.dirname(os.path.abspath(spec)), os.path.splitext(os.path.basename(spec))[0]
    if path and path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(spec)


def _import_root(fn):
    """The sys.path entry from which the module of JITFunction ``fn`` imports."""
    root = os.path.abspath(inspect.getfile(fn.fn))
    for _ in range(fn.fn.__module__.count(".") + 1):
        root = os.path.dirname(root)
    return root


def compile_job(job, cuobjdump):
    """Compiles one (kernel, specialisation, config, arch); returns regs / spills / shared."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.autotuner import Autotuner

    _prepare_triton_env()
    mod = _import_module(job["module"], job["path"])
    fn = getattr(mod, job["attr"])
    if isinstance(fn, Autotuner):
        fn = fn.fn
    t0 = time.time()
    src = ASTSource(fn, job["signature"], job["constexprs"], job["attrs"])
    try:
        k = triton.compile(src, target=GPUTarget("cuda", job["cap"], 32), options=job["options"])
    except Exception as e:  # noqa: BLE001 - reported as this config's violation
        return dict(regs=None, stack=None, ldl=0, stl=0, shared=0, mma=0, compile_s=round(time.time() - t0, 1),
                    error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(k.asm["cubin"])
        sass = parse_sass(_run([cuobjdump, "-sass", path]))
        res = parse_res_usage(_run([cuobjdump, "-res-usage", path]))
    kern = sass[0]
    r = next(iter(res.values()), {})
    return dict(regs=r.get("REG"), stack=r.get("STACK"), ldl=kern.count("LDL"), stl=kern.count("STL"),
                shared=int(k.metadata.shared), mma=kern.count("HMMA") + kern.count("HGMMA") + kern.count("DMMA"),
                compile_s=round(time.time() - t0, 1))


def _prepare_triton_env():
    # The interpreter would turn every @triton.jit into a Python function: compile for real.
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(CACHE_DIR, "triton-cache"))
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)


def _worker_init():
    _prepare_triton_env()


def triton_verdict(row) -> list[str]:
    bad = [f"does not compile: {row['error']}"] if row.get("error") else []
    if row["ldl"] or row["stl"]:
        bad.append(f"{row['ldl']} LDL + {row['stl']} STL (spills; {row['regs']} registers, "
                   f"{row['stack']} B stack)")
    limit = SMEM_LIMIT[row["cap"]]
    if row["shared"] > limit:
        bad.append(f"shared memory {row['shared']} B > {limit} B (sm_{row['cap']} limit)")
    return bad


def check_triton(modules, caps, dtypes, jobs_n, cuobjdump, use_cache=True, log=None):
    """Compiles every selectable config; returns (rows, problems, stats)."""
    _prepare_triton_env()
    all_jobs, problems = [], []
    probes = None
    for spec in modules:
        mod = _import_module(spec)
        short = spec.rsplit(".", 1)[-1]
        if spec.endswith(".py"):
            mod_probes = list(getattr(mod, "CHECK_PROBES", []))
        else:
            probes = probes if probes is not None else _probes()
            mod_probes = probes.get(short, [])
        jobs, missing = _jobs_for(spec, mod, mod_probes, dtypes, caps)
        for j in jobs:
            j["ladder"] = j["module"].rsplit(".", 1)[-1] in LADDER_TRITON_MODULES
        all_jobs += jobs
        problems += [f"{spec}.{p}" for p in missing]
    os.makedirs(CACHE_DIR, exist_ok=True)
    rows, todo = [], []
    for j in all_jobs:
        path = os.path.join(CACHE_DIR, j["key"] + ".json")
        if use_cache and os.path.exists(path):
            with open(path) as f:
                rows.append({**_public(j), **json.load(f), "cached": True})
        else:
            todo.append(j)
    t0 = time.time()
    if todo:
        if jobs_n <= 1:
            results = [(j, compile_job(j, cuobjdump)) for j in todo]
        else:
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=jobs_n, mp_context=ctx, initializer=_worker_init) as ex:
                futs = {ex.submit(compile_job, j, cuobjdump): j for j in todo}
                results = []
                for fut in cf.as_completed(futs):
                    j, res = futs[fut], fut.result()
                    results.append((j, res))
                    if not res.get("error"):
                        _store(j, res)  # at once: an interrupted run keeps what it compiled
                    if log:
                        row = {**_public(j), **res}
                        log(f"  [{len(results)}/{len(todo)} compiled, {res['compile_s']} s] "
                            + triton_line({**row, "violations": triton_verdict(row)}))
        for j, res in results:
            if not res.get("error"):  # a failed compile is retried next time
                _store(j, res)
            rows.append({**_public(j), **res, "cached": False})
    for r in rows:
        r["violations"] = triton_verdict(r)
    order = {d: i for i, d in enumerate(DTYPES)}
    rows.sort(key=lambda r: (r["module"], r["kernel"], r["probe"], -r["cap"], order.get(r["dtype"], 9), r["config"]))
    stats = dict(jobs=len(all_jobs), compiled=len(todo), cached=len(all_jobs) - len(todo),
                 compile_wall_s=round(time.time() - t0, 1))
    return rows, problems, stats


def _store(job, res):
    with open(os.path.join(CACHE_DIR, job["key"] + ".json"), "w") as f:
        json.dump(res, f)


def _public(job):
    return {k: job[k] for k in ("module", "kernel", "probe", "dtype", "cap", "config", "ladder")} | {"part": "triton"}


# ----------------------------------------------------------------------------------- report
def _fmt(v):
    return "-" if v is None else str(v)


def sass_line(r):
    status = "FAIL" if r["violations"] and not r["ladder"] else ("ladder" if r["ladder"] else "ok")
    text = (f"sass   {status:6s} {r['arch']:7s} {r['source']:36s} {r['kernel'][:110]}\n"
            f"         regs {_fmt(r['regs'])}, shared {_fmt(r['shared'])} B, stack {_fmt(r['stack'])} B, "
            f"spills LDL {r['ldl']} / STL {r['stl']}, HMMA {r['hmma']}, HGMMA {r['hgmma']}, "
            f"IMMA {r.get('imma', 0)}, division calls {r['div_calls']}")
    return text + "".join(f"\n         -> {v}" for v in r["violations"])


def triton_line(r):
    status = "FAIL" if r["violations"] and not r["ladder"] else ("ladder" if r["ladder"] else "ok")
    text = (f"triton {status:6s} sm_{r['cap']} {r['dtype']:8s} {r['kernel']}[{r['probe']}] {r['config']}: "
            f"regs {r['regs']}, shared {r['shared']} B, spills LDL {r['ldl']} / STL {r['stl']}, MMA {r['mma']}")
    return text + "".join(f"\n         -> {v}" for v in r["violations"])


def default_triton_modules():
    return [f"triton_kernels.{os.path.splitext(os.path.basename(p))[0]}"
            for p in sorted(glob.glob(os.path.join(ROOT, "triton_kernels", "*.py")))
            if not os.path.basename(p).startswith("_")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--sass-only", action="store_true", help="only (a), the SASS of the CUDA objects")
    only.add_argument("--triton-only", action="store_true", help="only (b), the Triton autotune configs")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes (default: CPUs)")
    ap.add_argument("--objects", nargs="*", help="nvcc objects to read (default: the build's)")
    ap.add_argument("--triton-modules", nargs="*", help="modules or .py files (default: triton_kernels/*)")
    ap.add_argument("--archs", default="90,80", help="Triton targets, e.g. 90,80")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--no-cache", action="store_true", help="recompile every Triton config")
    ap.add_argument("--all-activations", action="store_true",
                    help="compile the GEMM with every smooth activation (default: relu6, silu, hardswish)")
    args = ap.parse_args(argv)
    global GEMM_ACTS
    if args.all_activations:
        GEMM_ACTS = ACTIVATIONS[1:]

    start = time.time()
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        print("check_gpu_build: no cuobjdump (CUDA toolkit or Triton's wheel)", file=sys.stderr)
        return 2
    report = dict(sass=[], triton=[], problems=[], stats={})
    if not args.triton_only:
        t = time.time()
        objects = args.objects if args.objects is not None else find_objects()
        if not objects:
            print("check_gpu_build: no CUDA objects under build/temp.*/cuda-*/cuda/ (build with "
                  "PYIMGCLS_CUDA=1 first)", file=sys.stderr)
            return 2
        report["sass"] = check_sass(objects, cuobjdump)
        report["stats"]["sass_s"] = round(time.time() - t, 1)
        if not args.json:
            for r in report["sass"]:
                say(sass_line(r))
    if not args.sass_only:
        t = time.time()
        modules = args.triton_modules if args.triton_modules is not None else default_triton_modules()
        caps = [int(c) for c in args.archs.split(",")]
        dtypes = [d for d in args.dtypes.split(",") if d]
        rows, problems, stats = check_triton(modules, caps, dtypes, args.jobs, cuobjdump,
                                             use_cache=not args.no_cache, log=say)
        report["triton"], report["problems"] = rows, problems
        report["stats"].update(triton_s=round(time.time() - t, 1), **{f"triton_{k}": v for k, v in stats.items()})
        if not args.json:
            for r in rows:
                say(triton_line(r))
    failing = [r for r in report["sass"] + report["triton"] if r["violations"] and not r["ladder"]]
    report["stats"]["total_s"] = round(time.time() - start, 1)
    report["ok"] = not failing and not report["problems"]
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        for p in report["problems"]:
            say(f"problem: {p}")
        s = report["stats"]
        say(f"check_gpu_build: {len(report['sass'])} SASS kernel(s), {len(report['triton'])} Triton config(s) "
            f"({s.get('triton_compiled', 0)} compiled, {s.get('triton_cached', 0)} cached); "
            f"{len(failing)} violation(s), {len(report['problems'])} problem(s); {s['total_s']} s")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
