"""CPU emulation of the tensor-core implicit-GEMM convolution (csrc/cuda/conv.cu, conv2d_igemm_kernel).

tests/emu/conv_tc_emu.cpp runs the kernel's CTAs on the CPU for fwd, dgrad and wgrad, with 16-byte
cp.async gathers (vec) and element gathers (scalar): the PTX model (cp.async zero-fill and
commit / wait_group visibility, ldmatrix .x4 / .trans, mma.m16n8k16 fragments) is
tests/emu/ptx_model.h, shared with the GEMM emulation; every index comes from the helpers the kernel
itself calls (conv.h: ConvIndex, split_pixel, k_position / k_advance, the operand offsets, TC_LD /
TC_LDT / TC_EPI_LD; tc_maps.h: ldmatrix lane maps, accumulator map). Integer-valued data, double
accumulation: results are compared exactly with a plain conv / dgrad / wgrad in double.

The mutation cases rebuild the emulator with one planted bug (-D EMU_PLANT_*, a switch of the
emulator only) and require the cases whose data path contains it to fail.

No GPU and no CUDA toolkit needed: g++ only.
"""
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU_SRC = os.path.join(ROOT, "tests", "emu", "conv_tc_emu.cpp")
CONV_CU = os.path.join(ROOT, "csrc", "cuda", "conv.cu")

# layout: cl = channels_last, nchw = contiguous, pad = NCHW view with gaps after rows, planes, images.
# (pass, layout, mode, N, C, H, W, O, KH, KW, SH, SW, PH, PW, DH, DW, groups, splits)
# Tile 128 x 128 x 32, 3 stages: K = KH*KW*channels above 3*32 wraps the ring; M (pixels, or wgrad's
# out channels) and N above 128 give partial second tiles.
CASES = [
    # fwd, 16-byte gathers (channels_last, Cg % 8 == 0)
    ("fwd", "cl", "vec", 1, 8, 5, 7, 8, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1),        # batch 1, 1x1, one k-tile (partial)
    ("fwd", "cl", "vec", 2, 16, 9, 11, 24, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1),     # stride 2, padding, K=144 wraps
    ("fwd", "cl", "vec", 3, 32, 13, 15, 136, 3, 3, 1, 1, 2, 2, 2, 2, 2, 1),   # dilation, groups, 5 M tiles
    ("fwd", "cl", "vec", 1, 24, 7, 6, 264, 3, 5, 1, 2, 1, 2, 1, 1, 1, 1),     # N = 264: 3 N tiles, partial
    # fwd, element gathers: odd channels, NCHW (pixel-major copy-out) and channels_last
    ("fwd", "nchw", "scalar", 2, 5, 9, 11, 7, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1),
    ("fwd", "nchw", "scalar", 1, 6, 12, 13, 9, 3, 3, 1, 1, 2, 2, 2, 2, 3, 1),  # groups 3, Cg = 2, Og = 3
    ("fwd", "cl", "scalar", 2, 7, 10, 9, 131, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),   # odd C, N = 131 partial
    ("fwd", "pad", "scalar", 2, 5, 9, 11, 7, 3, 3, 2, 1, 1, 2, 1, 1, 1, 1),    # non-contiguous x and out
    # dgrad
    ("dgrad", "cl", "vec", 2, 16, 9, 11, 24, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1),   # stride 2: taps off the grid
    ("dgrad", "cl", "vec", 1, 136, 8, 9, 32, 3, 3, 1, 2, 1, 1, 2, 1, 2, 1),    # dilation, groups, N = 68
    ("dgrad", "cl", "vec", 1, 24, 13, 17, 16, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1),   # 1x1, M = 221: 2 M tiles
    ("dgrad", "nchw", "scalar", 1, 6, 7, 9, 9, 3, 3, 2, 1, 1, 0, 2, 1, 3, 1),
    ("dgrad", "nchw", "scalar", 2, 5, 11, 10, 7, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1),
    ("dgrad", "cl", "scalar", 1, 131, 6, 5, 13, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),  # Cg = 131: 2 N tiles, odd O
    ("dgrad", "pad", "scalar", 1, 6, 7, 9, 9, 3, 3, 2, 1, 1, 0, 2, 1, 3, 1),    # non-contiguous g and dx
    # wgrad (M = Og, N = KH*KW*Cg, K = pixels split over gridDim.z)
    ("wgrad", "cl", "vec", 2, 16, 9, 11, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1, 3),
    ("wgrad", "cl", "vec", 2, 32, 9, 11, 136, 3, 3, 2, 2, 1, 1, 1, 1, 1, 2),  # M = 136: 2 M tiles, N = 288
    ("wgrad", "cl", "vec", 1, 16, 6, 7, 16, 3, 3, 1, 1, 2, 2, 2, 2, 2, 1),     # dilation, groups
    ("wgrad", "cl", "vec", 1, 8, 3, 3, 8, 1, 1, 1, 1, 0, 0, 1, 1, 1, 4),      # K = 9 < splits * 32: tail splits
    ("wgrad", "nchw", "scalar", 2, 5, 9, 11, 7, 3, 3, 2, 2, 1, 1, 1, 1, 1, 2),
    ("wgrad", "nchw", "scalar", 1, 6, 10, 11, 9, 3, 3, 1, 1, 2, 2, 2, 2, 3, 3),
    ("wgrad", "cl", "scalar", 1, 3, 4, 4, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 20),  # splits > pixels: empty ranges
    ("wgrad", "pad", "scalar", 2, 5, 9, 11, 7, 3, 3, 2, 2, 1, 1, 1, 1, 1, 2),   # non-contiguous g and x
]


def _compile(out_dir, name, defines=(), opt="-O2"):
    exe = os.path.join(out_dir, name)
    cmd = ["g++", "-std=c++17", opt, "-Wall", "-Wextra", "-Werror", "-I", os.path.join(ROOT, "csrc"),
           *(f"-D{d}" for d in defines), EMU_SRC, "-o", exe]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stderr}"
    return exe


def _run(exe, cases, strict_banks=True):
    cmd = [exe] + (["--strict-banks"] if strict_banks else []) + [str(v) for case in cases for v in case]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode in (0, 1), f"emulator crashed or bad usage (rc {res.returncode}):\n{res.stderr}"
    lines = res.stdout.splitlines()
    assert len(lines) == len(cases), res.stdout + res.stderr
    return res.returncode, lines


@pytest.fixture(scope="session")
def emu_dir(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: the tensor-core emulation is a C++ program built by the test")
    return str(tmp_path_factory.mktemp("conv_tc_emu"))


@pytest.fixture(scope="session")
def emu(emu_dir):
    return _compile(emu_dir, "conv_tc_emu")


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_emulated_kernel_matches_reference(emu, case):
    """Exact result, every output written once, no out-of-bounds read, no ldmatrix bank conflict."""
    rc, lines = _run(emu, [case])
    assert rc == 0 and lines[0].startswith("ok "), lines[0]


# Planted bug -> which cases' data path contains it ((pass, layout, mode, ..., SH, SW, ...) -> bool).
# Every case it hits must fail, every other case must still pass.
def _trans(c):
    return c[0] == "wgrad" and c[2] == "vec"  # k-major stages, ldmatrix .trans


def _gemm_k(c):
    """GEMM-K per group of fwd / dgrad: KH * KW * (in channels (fwd) or out channels (dgrad)) / groups."""
    return c[8] * c[9] * (c[4] if c[0] == "fwd" else c[7]) // c[16]


def _out(c, size, k, stride, pad, dil):
    """Output extent along one spatial axis of case c (indices into the case tuple)."""
    return (c[size] + 2 * c[pad] - c[dil] * (c[k] - 1) - 1) // c[stride] + 1


MUTANTS = {
    "EMU_PLANT_LANE=1": ("ldsm_a_kc", lambda c: not _trans(c)),
    "EMU_PLANT_LANE=2": ("ldsm_a_mc", _trans),
    "EMU_PLANT_LANE=3": ("ldsm_b_kc", lambda c: not _trans(c)),
    "EMU_PLANT_LANE=4": ("ldsm_b_nc", _trans),
    # off-by-one wait_group: only cp.async groups are affected (element gathers are plain stores)
    "EMU_PLANT_WAIT": ("wait_group", lambda c: c[2] == "vec"),
    "EMU_PLANT_ACC": ("acc_frag", lambda c: True),
    # wrong gather offsets: x_tap_offset reads the next channel (fwd A, wgrad B); dgrad's tap map
    # without its stride-divisibility test (only dgrad with a stride > 1 reaches it)
    "EMU_PLANT_GATHER=1": ("x_tap_offset", lambda c: c[0] in ("fwd", "wgrad")),
    "EMU_PLANT_GATHER=2": ("dgrad_tap_offset", lambda c: c[0] == "dgrad" and (c[10] > 1 or c[11] > 1)),
    # the (tap, channel) walk falls 8 behind per k-tile: fwd / dgrad with more than one k-tile
    "EMU_PLANT_WALK": ("k_advance", lambda c: c[0] != "wgrad" and _gemm_k(c) > 32),
    # the PTX model itself (ptx_model.h): ignoring .trans, misreading A fragment registers
    "EMU_PLANT_MODEL_TRANS": ("ldmatrix .trans model", _trans),
    # (swaps A rows 8-15 with k 8-15: invisible when a wgrad tile has <= 8 out channels and each split
    # <= 8 pixels, both zero-filled)
    "EMU_PLANT_MODEL_AFRAG": ("mma A fragment model", lambda c: c[0] != "wgrad" or c[7] // c[16] > 8 or
                              -(-c[3] * _out(c, 5, 8, 10, 12, 14) * _out(c, 6, 9, 11, 13, 15) // c[17]) > 8),
}


@pytest.mark.parametrize("plant", list(MUTANTS))
def test_planted_bug_is_caught(emu_dir, plant):
    what, hits = MUTANTS[plant]
    exe = _compile(emu_dir, "conv_emu_" + re.sub(r"\W", "_", plant), defines=[plant], opt="-O1")
    rc, lines = _run(exe, CASES)
    assert any(hits(c) for c in CASES)
    for case, line in zip(CASES, lines):
        if hits(case):
            assert line.startswith("FAIL "), f"planted {what} bug not caught by {line}"
        else:
            assert line.startswith("ok "), f"planted {what} bug leaked outside its path: {line}"
    assert rc == 1


def test_emulator_rejects_bad_usage(emu):
    res = subprocess.run([emu, "fwd", "cl"], capture_output=True, text=True)
    assert res.returncode == 2 and "usage" in res.stderr
    bad = list(CASES[0])
    bad[0] = "bwd"
    res = subprocess.run([emu] + [str(v) for v in bad], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown pass" in res.stderr
    # a vec case the launcher would not vectorize (odd channels) is reported, not emulated
    wrong = list(CASES[4])
    wrong[2] = "vec"
    rc, lines = _run(emu, [tuple(wrong)])
    assert rc == 1 and "conv2d_vec_ok says scalar" in lines[0]


def _strip_comments(src):
    return re.sub(r"//[^\n]*", "", src)


def test_kernel_uses_the_shared_maps():
    """The emulation proves only what conv.cu shares with it: lane maps from tc_maps.h, the shared
    layout from conv.h, no private lane arithmetic or layout constants in conv.cu."""
    src = _strip_comments(open(CONV_CU).read())
    assert '#include "tc_maps.h"' in src and '#include "conv.h"' in src
    for helper in ("tc::ldsm_a_kc(lane)", "tc::ldsm_a_mc(lane)", "tc::ldsm_b_kc(lane)", "tc::ldsm_b_nc(lane)",
                   "tc::acc_frag(lane, 0)", "tc::acc_frag(lane, 2)", "cp_async_wait<TC_STAGES - 2>",
                   "x_tap_offset(p.ix", "dgrad_tap_offset(p.ix", "weight_offset(p.ix", "wgrad_a_offset(p.ix",
                   "k_advance(p.ix, kp, TC_BK)", "split_pixel("):
        assert helper in src, f"conv.cu no longer calls {helper}"
    assert not re.search(r"constexpr\s+int\s+TC_(LD|LDT|EPI_LD|PIPE_BYTES)\b", src), \
        "conv.cu defines its own shared-layout constant"
    kernel = src[src.index("conv2d_igemm_kernel(IgemmParams p)"):src.index("conv2d_simt_kernel(IgemmParams p)")]
    assert not re.search(r"\blane\s*&\s*(15|7|3)\b|\blane\s*>>\s*[234]\b", kernel), \
        "conv2d_igemm_kernel computes a lane map inline instead of through tc_maps.h"


def test_unpadded_stage_rows_are_caught_as_bank_conflicts(emu_dir):
    """Stages without TC_LD's padding still compute the right numbers (copies and ldmatrix reads use
    the same pitch); only the ldmatrix bank-conflict check sees it. wgrad's vector path (TC_LDT rows)
    is not affected."""
    exe = _compile(emu_dir, "conv_emu_ld", defines=["EMU_PLANT_LD"], opt="-O1")
    cases = [c for c in CASES if c[3] * c[5] * c[6] <= 300]
    rc, lines = _run(exe, cases, strict_banks=False)
    assert rc == 0, "\n".join(lines)
    for case, line in zip(cases, lines):
        assert bool(re.search(r"ldmatrix conflicts=[1-9]", line)) == (not _trans(case)), line
    rc, lines = _run(exe, cases, strict_banks=True)
    assert rc == 1
    for case, line in zip(cases, lines):
        assert ("bank conflicts" in line) == (not _trans(case)), line
