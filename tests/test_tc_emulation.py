"""CPU emulation of the tensor-core GEMM data path (csrc/cuda/gemm.cu, gemm_fwd_kernel).

tests/emu/gemm_tc_emu.cpp runs the kernel's CTAs on the CPU: cp.async with zero-fill and
commit / wait_group visibility, ldmatrix .x4 / .trans and mma.m16n8k16 as the PTX ISA tables define
them, with every index map (swizzle, chunk assignment, partial-chunk counts, ldmatrix lane
addresses, accumulator fragment map, tile configurations) taken from csrc/cuda/tc_maps.h, the header
the kernel itself calls. Results are compared exactly (small integers, double accumulation) with a
triple loop, for every tile configuration, both layouts of both operands, and partial tiles.

The mutation cases rebuild the emulator with one planted bug (-D EMU_PLANT_*, a switch of the
emulator only) and require the emulation to fail: that is the evidence the emulation can catch a
wrong lane map, an off-by-one wait_group or a wrong swizzle at all.

No GPU and no CUDA toolkit needed: g++ only.
"""
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU_SRC = os.path.join(ROOT, "tests", "emu", "gemm_tc_emu.cpp")
GEMM_CU = os.path.join(ROOT, "csrc", "cuda", "gemm.cu")

# (BM, BN, STAGES) of the configurations the launcher instantiates (tc_maps.h: TcLarge, TcMedium,
# TcSmall); test_config_table_matches_header keeps this table honest.
CONFIGS = {"large": (128, 128, 4), "medium": (64, 128, 4), "small": (64, 64, 4)}
LAYOUTS = [(1, 1), (1, 0), (0, 1), (0, 0)]  # (A K-contiguous, B K-contiguous)
BK = 32


def shapes(cfg):
    """(M, N, K) reaching every branch of the data path for one configuration."""
    bm, bn, stages = CONFIGS[cfg]
    ring_wrap = 2 * stages * BK + 9  # more slices than stages: every slot refilled, last slice partial
    return [
        (1, 1, 1),                         # batch-1 row, one element of K: all but one chunk zero-filled
        (7, 13, 5),                        # K smaller than one stage; N not a multiple of 8
        (bm, bn, BK),                      # exactly one tile, one full slice
        (bm + 1, 9, 0),                    # K = 0: no slice at all, C = bias
        (bm - 3, bn + 1, 8),               # K = one chunk; a one-column second tile
        (33, 2 * bn - 5, 3 * BK + 7),      # partial K slice; partial second tile in N
        (2 * bm + 3, 2 * bn - 11, ring_wrap),  # 3 x 2 CTAs, partial in M, N and K, ring wraps twice
    ]


def _compile(out_dir, name, defines=(), opt="-O2"):
    exe = os.path.join(out_dir, name)
    cmd = ["g++", "-std=c++17", opt, "-Wall", "-Wextra", "-Werror", "-I", os.path.join(ROOT, "csrc"),
           *(f"-D{d}" for d in defines), EMU_SRC, "-o", exe]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stderr}"
    return exe


def _args(cases):
    out = []
    for cfg, a_kc, b_kc, m, n, k in cases:
        out += [cfg, str(a_kc), str(b_kc), str(m), str(n), str(k)]
    return out


def _run(exe, cases, strict_banks=True):
    cmd = [exe] + (["--strict-banks"] if strict_banks else []) + _args(cases)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode in (0, 1), f"emulator crashed or bad usage (rc {res.returncode}):\n{res.stderr}"
    lines = res.stdout.splitlines()
    assert len(lines) == len(cases), res.stdout + res.stderr
    return res.returncode, lines


@pytest.fixture(scope="session")
def emu_dir(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: the tensor-core emulation is a C++ program built by the test")
    return str(tmp_path_factory.mktemp("tc_emu"))


@pytest.fixture(scope="session")
def emu(emu_dir):
    return _compile(emu_dir, "gemm_tc_emu")


@pytest.mark.parametrize("a_kc,b_kc", LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_emulated_kernel_matches_reference(emu, cfg, a_kc, b_kc):
    """Exact result, every element written once, no out-of-bounds read, no bank conflict."""
    cases = [(cfg, a_kc, b_kc, m, n, k) for m, n, k in shapes(cfg)]
    rc, lines = _run(emu, cases)
    assert rc == 0, "\n".join(lines)
    assert all(line.startswith("ok ") for line in lines), "\n".join(lines)


# Planted bug -> the configurations and layouts whose data path contains it. Every listed case
# must fail; cases outside the bug's path must still pass (the plant changes only that path).
MUTANTS = {
    # (a) wrong lane map: lanes 1 and 2 exchange their ldmatrix row addresses in one shared helper.
    "EMU_PLANT_LANE=1": ("A ldsm_a_kc", lambda a_kc, b_kc: a_kc == 1),
    "EMU_PLANT_LANE=2": ("A ldsm_a_mc", lambda a_kc, b_kc: a_kc == 0),
    "EMU_PLANT_LANE=3": ("B ldsm_b_kc", lambda a_kc, b_kc: b_kc == 1),
    "EMU_PLANT_LANE=4": ("B ldsm_b_nc", lambda a_kc, b_kc: b_kc == 0),
    # (b) off-by-one wait_group: <STAGES-1> leaves slice kt in flight when it is read.
    "EMU_PLANT_WAIT": ("wait_group", lambda a_kc, b_kc: True),
    # (c) wrong swizzle: the 128-byte-row XOR on 64-byte rows reaches into the neighbouring row
    #     (only K-contiguous tiles have 64-byte rows).
    "EMU_PLANT_SWZ_WIDE": ("swizzle", lambda a_kc, b_kc: a_kc == 1 or b_kc == 1),
    # accumulator rows g and g+8 exchanged in the epilogue's fragment map.
    "EMU_PLANT_ACC": ("acc_frag", lambda a_kc, b_kc: True),
    # the model itself: refilling the slot being read (WAR race), dropping the main-loop barrier.
    "EMU_PLANT_SLOT": ("slot reuse", lambda a_kc, b_kc: True),
    "EMU_PLANT_NO_BARRIER": ("barrier", lambda a_kc, b_kc: True),
    # the PTX model: ignoring .trans, or misreading the A fragment registers, must break the match.
    "EMU_PLANT_MODEL_TRANS": ("ldmatrix .trans model", lambda a_kc, b_kc: a_kc == 0 or b_kc == 0),
    "EMU_PLANT_MODEL_AFRAG": ("mma A fragment model", lambda a_kc, b_kc: True),
}


@pytest.mark.parametrize("plant", list(MUTANTS))
def test_planted_bug_is_caught(emu_dir, plant):
    what, hits = MUTANTS[plant]
    exe = _compile(emu_dir, "emu_" + re.sub(r"\W", "_", plant), defines=[plant], opt="-O0")
    # One multi-CTA, multi-slice, partial-tile shape per configuration and layout.
    cases = [(cfg, a, b, 2 * bm + 3, bn + 9, 3 * BK + 7)
             for cfg, (bm, bn, _) in CONFIGS.items() for a, b in LAYOUTS]
    rc, lines = _run(exe, cases)
    assert rc == 1, f"planted {what} bug not caught:\n" + "\n".join(lines)
    for (cfg, a, b, *_), line in zip(cases, lines):
        if hits(a, b):
            assert line.startswith("FAIL "), f"planted {what} bug not caught by {line}"
        else:
            assert line.startswith("ok "), f"planted {what} bug leaked outside its path: {line}"


def test_partial_chunk_count_bug_is_caught(emu_dir):
    """One element too many per partial chunk: caught by the bounds check or padding values."""
    exe = _compile(emu_dir, "emu_clamp", defines=["EMU_PLANT_CLAMP"], opt="-O0")
    ragged = [(cfg, a, b, 2 * bm + 3, bn + 9, 3 * BK + 7) for cfg, (bm, bn, _) in CONFIGS.items()
              for a, b in LAYOUTS]
    rc, lines = _run(exe, ragged)
    assert rc == 1 and all(line.startswith("FAIL ") for line in lines), "\n".join(lines)
    # Nothing partial (all sizes multiples of 8): the plant is never reached and everything passes.
    whole = [(cfg, a, b, 2 * bm, bn + 8, 3 * BK + 8) for cfg, (bm, bn, _) in CONFIGS.items()
             for a, b in LAYOUTS]
    rc, lines = _run(exe, whole)
    assert rc == 0, "\n".join(lines)


def test_swizzle_without_xor_is_caught_as_bank_conflicts(emu_dir):
    """A swizzle that drops the XOR still computes the right numbers (it is used consistently by
    the copies and the ldmatrix reads); only the bank-conflict check sees it."""
    exe = _compile(emu_dir, "emu_swz_none", defines=["EMU_PLANT_SWZ_NONE"], opt="-O0")
    cases = [(cfg, a, b, bm + 5, bn + 3, 2 * BK + 1) for cfg, (bm, bn, _) in CONFIGS.items()
             for a, b in LAYOUTS]
    rc, lines = _run(exe, cases, strict_banks=False)
    assert rc == 0, "\n".join(lines)
    assert all(re.search(r"ldmatrix=[1-9]", line) for line in lines), "\n".join(lines)
    rc, lines = _run(exe, cases, strict_banks=True)
    assert rc == 1 and all("bank conflicts" in line for line in lines), "\n".join(lines)


def test_emulator_rejects_bad_usage(emu):
    res = subprocess.run([emu, "large", "1", "1"], capture_output=True, text=True)
    assert res.returncode == 2 and "usage" in res.stderr
    res = subprocess.run([emu, "huge", "1", "1", "8", "8", "8"], capture_output=True, text=True)
    assert res.returncode == 1 and "unknown config" in res.stdout


def _strip_comments(src):
    return re.sub(r"//[^\n]*", "", src)


def test_kernel_uses_the_shared_maps():
    """The emulation proves only what the kernel shares with it: gemm.cu must take every index map
    from tc_maps.h and keep no private copy of the swizzle or the tile configurations."""
    src = _strip_comments(open(GEMM_CU).read())
    assert '#include "tc_maps.h"' in src
    for helper in ("tc::chunk_row_col<4>", "tc::chunk_row_col<CH>", "tc::chunk_row_col<CPR>",
                   "tc::ldsm_a_kc(lane)", "tc::ldsm_a_mc(lane)", "tc::ldsm_b_kc(lane)", "tc::ldsm_b_nc(lane)",
                   "tc::acc_frag(lane, 0)", "tc::acc_frag(lane, 2)", "cp_async_wait<Cfg::WAIT_PENDING>"):
        assert helper in src, f"gemm.cu no longer calls {helper}"
    assert not re.search(r"\bstruct\s+TcConfig\b", src), "gemm.cu defines its own TcConfig"
    assert not re.search(r"uint32_t\s+swz\s*\(", src), "gemm.cu defines its own swz"
    assert not re.search(r"\blane\s*&\s*15\b|\blane\s*>>\s*4\b|\blane\s*>>\s*2\b", src), \
        "gemm.cu computes a lane map inline instead of through tc_maps.h"


def test_config_table_matches_header():
    hdr = open(os.path.join(ROOT, "csrc", "cuda", "tc_maps.h")).read()
    found = {}
    for name, bm, bn, stages in re.findall(
            r"using Tc(\w+) = TcConfig<(\d+), (\d+), \d+, \d+, (\d+), \d+>;", hdr):
        found[name.lower()] = (int(bm), int(bn), int(stages))
    assert found == CONFIGS
