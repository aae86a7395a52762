"""tools/check_gpu_build.py: the SASS parser and verdicts on synthetic cuobjdump text, the Triton
check on one small kernel compiled for sm_90 (one config that fits, one planted config that must
fail), and the per-dtype / per-arch pruning of triton_kernels/_config.py."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tools"), ROOT]
import check_gpu_build as cgb  # noqa: E402

from triton_kernels import _config  # noqa: E402

CONV_IGEMM = "_ZN8pyimgcls4cuda39_GLOBAL__N__fd9eec87_7_conv_cu_a5c1585f19conv2d_igemm_kernelILi2E6__halfLb0EEEvNS1_11IgemmParamsE"
GEMM = "_ZN8pyimgcls4cuda15gemm_fwd_kernelI6__halfNS0_7TileCfgEEEvNS0_10GemmParamsIT_EE"
QUANT_GEMM = ("_ZN8pyimgcls4cuda40_GLOBAL__N__e296fbed_8_quant_cu_f5dbbea221quant_gemm_fwd_kernelILb1EEEvNS1_"
              "15QuantGemmParamsE")


def insn(addr, text):
    return f"        /*{addr:04x}*/                   {text} ;                /* 0x000000ff00007944 */\n"


def sass_kernel(name, body, arch="sm_90"):
    return f"\n\tcode for {arch}\n\t\tFunction : {name}\n\t.headerflags\t@\"EF_CUDA_SM90\"\n" + "".join(
        insn(16 * i, t) for i, t in enumerate(body))


def conv_body(hmma, div_calls, spills=0, named_calls=0):
    """A kernel body: `hmma` HMMAs, `div_calls` calls to a reciprocal subroutine placed after the last
    EXIT, one call into its own body (not a subroutine), `spills` STL/LDL pairs."""
    n_main = hmma + div_calls + 2 * spills + named_calls + 4
    sub = 16 * n_main  # address of the subroutine: right after the main body
    body = ["MOV R1, c[0x0][0x28]"]
    body += ["HMMA.16816.F32 R4, R8, R12, R4"] * hmma
    body += [f"@!P2 CALL.REL.NOINC 0x{sub:x}"] * div_calls
    body += ["CALL.REL.NOINC `($__internal_0_$__cuda_sm20_rem_s64)"] * named_calls
    body += ["STL [R1+0x8], R2", "LDL R2, [R1+0x8]"] * spills
    body += ["CALL.REL.NOINC 0x10", "@P0 EXIT", "EXIT"]
    assert len(body) == n_main
    body += ["I2F.U64.RP R6, R4", "MUFU.RCP R6, R6", "IMAD.HI.U32 R7, R6, R4, RZ", "RET.REL.NODEC R30 0x0"]
    return body


def test_parse_sass_counts_hmma_spills_and_division_calls():
    text = ("Fatbin elf code:\n================\narch = sm_90\n"
            + sass_kernel(CONV_IGEMM, conv_body(hmma=32, div_calls=20, spills=3, named_calls=2))
            + sass_kernel("_Z9small_kernv", ["MOV R1, c[0x0][0x28]", "@!PT LDS RZ, [RZ]", "EXIT"], arch="sm_80"))
    k, small = cgb.parse_sass(text)
    assert (k.arch, k.mangled) == ("sm_90", CONV_IGEMM)
    assert k.count("HMMA") == 32 and k.count("HGMMA") == 0
    assert (k.count("LDL"), k.count("STL"), k.spills) == (3, 3, 6)
    # 20 calls into the reciprocal routine + 2 named remainder calls; the CALL into the body is not one
    assert k.div_calls == 22
    assert small.arch == "sm_80" and small.count("LDS") == 1 and small.spills == 0 and small.div_calls == 0


def test_parse_sass_keeps_the_arch_specific_name():
    # a fatbin names the arch "sm_90a", its code section "sm_90"; the next arch starts afresh
    text = ("arch = sm_90a\n" + sass_kernel("_Z1av", ["EXIT"], arch="sm_90")
            + "arch = sm_80\n" + sass_kernel("_Z1av", ["EXIT"], arch="sm_80"))
    assert [k.arch for k in cgb.parse_sass(text)] == ["sm_90a", "sm_80"]
    res = "arch = sm_90a\nResource usage:\n Function _Z1av:\n  REG:8 STACK:0 SHARED:0 LOCAL:0\n"
    assert list(cgb.parse_res_usage(res)) == [("sm_90a", "_Z1av")]


def test_division_routine_needs_a_reciprocal_after_exit():
    body = conv_body(hmma=4, div_calls=3)
    body[-3] = "IMAD R6, R6, R4, RZ"  # the subroutine without MUFU.RCP: not a division
    k, = cgb.parse_sass(sass_kernel(CONV_IGEMM, body))
    assert k.calls and k.div_calls == 0
    assert cgb.is_division_routine("__cuda_sm3x_div_rn_noftz_f32_slowpath")
    assert cgb.is_division_routine("$__internal_0_$__cuda_sm20_div_u64")
    assert not cgb.is_division_routine("__internal_trig_reduction_slowpathd")


def test_base_name_and_demangle():
    assert cgb.base_name(CONV_IGEMM) == "conv2d_igemm_kernel"
    assert cgb.base_name(GEMM) == "gemm_fwd_kernel"
    assert cgb.base_name("_Z15gemm_fwd_kernelIfEvv") == "gemm_fwd_kernel"
    assert cgb.base_name("_ZL12local_kernelv") == "local_kernel"
    assert cgb.base_name("_gemm_fwd_kernel") == "_gemm_fwd_kernel"  # Triton: not mangled
    if shutil.which("c++filt") is None:
        pytest.skip("no c++filt")
    full = cgb.demangle([CONV_IGEMM])[CONV_IGEMM]
    assert "conv2d_igemm_kernel<2, __half, false>" in full


def test_parse_res_usage():
    text = textwrap.dedent(f"""\
        Fatbin elf code:
        ================
        arch = sm_90
        Resource usage:
         Common:
          GLOBAL:0
         Function {CONV_IGEMM}:
          REG:168 STACK:16 SHARED:0 LOCAL:0 CONSTANT[0]:600 TEXTURE:0 SURFACE:0 SAMPLER:0
        """)
    r = cgb.parse_res_usage(text)[("sm_90", CONV_IGEMM)]
    assert (r["REG"], r["STACK"], r["SHARED"], r["CONSTANT[0]"]) == (168, 16, 0, 600)


@pytest.mark.parametrize("hmma,divs,ok", [(32, 16, True), (32, 17, False), (8, 8, True), (8, 9, False)])
def test_conv_division_budget(hmma, divs, ok):
    k, = cgb.parse_sass(sass_kernel(CONV_IGEMM, conv_body(hmma=hmma, div_calls=divs)))
    bad = cgb.sass_verdict(k, "csrc/cuda/conv.cu")
    assert (not bad) == ok
    if not ok:
        assert "division routines" in bad[0] and f"max(8, HMMA/2) = {max(8, hmma // 2)}" in bad[0]
    # the same kernel in another file has no division budget
    assert not cgb.sass_verdict(k, "csrc/cuda/gemm.cu")


def test_sass_verdicts():
    spilling, = cgb.parse_sass(sass_kernel(GEMM, conv_body(hmma=4, div_calls=0, spills=1)))
    assert "spills" in cgb.sass_verdict(spilling, "csrc/cuda/gemm.cu")[0]
    no_mma, = cgb.parse_sass(sass_kernel(GEMM, ["FFMA R1, R2, R3, R1", "EXIT"]))
    assert cgb.sass_verdict(no_mma, "csrc/cuda/gemm.cu") == ["tensor-core kernel without HMMA"]
    simt, = cgb.parse_sass(sass_kernel("_Z18conv2d_simt_kernelILi1EEvv", ["FFMA R1, R2, R3, R1", "EXIT"]))
    assert cgb.sass_verdict(simt, "csrc/cuda/conv.cu") == []
    hopper, = cgb.parse_sass(sass_kernel("_Z6wgmmav", ["HMMA.16816.F32 R4, R8, R12, R4", "EXIT"]))
    assert cgb.sass_verdict(hopper, "csrc/cuda/sm90/ladder_gemm_wgmma.cu") == ["no HGMMA in an sm_90a-only kernel"]
    assert cgb.is_ladder_source("csrc/cuda/sm90/ladder_gemm_wgmma.cu") and cgb.is_ladder_source("csrc/cuda/ladder.cu")
    assert not cgb.is_ladder_source("csrc/cuda/conv.cu")


# ----------------------------------------------------------------------------------- Triton
KERNEL_MODULE = '''
import torch
import triton
import triton.language as tl


@triton.autotune(configs=[
    triton.Config({"BLOCK": 32, "BLOCK_K": 32}, num_warps=4, num_stages=2),
    # planted: 4 stages of 128 x 512 fp16 tiles of A and B = 1 MiB of shared memory
    triton.Config({"BLOCK": 128, "BLOCK_K": 512}, num_warps=4, num_stages=4),
], key=["K"])
@triton.jit
def _small_mm_kernel(a_ptr, b_ptr, c_ptr, K, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    # c[BLOCK, BLOCK] = a[BLOCK, K] @ b[K, BLOCK], K a multiple of BLOCK_K
    offs = tl.arange(0, BLOCK)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptr + offs[:, None] * K + (k + offs_k)[None, :])
        b = tl.load(b_ptr + (k + offs_k)[:, None] * BLOCK + offs[None, :])
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], acc.to(c_ptr.dtype.element_ty))


def small_mm(a, b, c):
    _small_mm_kernel[(1,)](a, b, c, a.shape[1])


CHECK_PROBES = [("mm", lambda dt: small_mm(torch.zeros(128, 1024, dtype=dt), torch.zeros(1024, 128, dtype=dt),
                                           torch.empty(128, 128, dtype=dt)))]
'''


def _triton_compiles():
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import get_ptxas
        return os.path.exists(get_ptxas(90).path) and cgb.find_cuobjdump() is not None
    except Exception:
        return False


@pytest.mark.skipif(not _triton_compiles(), reason="Triton's NVIDIA backend (ptxas, cuobjdump) is not installed")
def test_triton_check_compiles_each_config_and_fails_the_planted_one(tmp_path):
    mod = tmp_path / "gpucheck_small_mm.py"
    mod.write_text(KERNEL_MODULE)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "check_gpu_build.py"), "--triton-only", "--json",
           "--no-cache", "--jobs", "1", "--archs", "90", "--dtypes", "float16", "--triton-modules", str(mod)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    report = json.loads(r.stdout)
    rows = {row["config"]: row for row in report["triton"]}
    assert len(rows) == 2 and report["problems"] == []
    good = rows["BLOCK=32,BLOCK_K=32 w4 s2"]
    bad = rows["BLOCK=128,BLOCK_K=512 w4 s4"]
    assert good["violations"] == [] and good["kernel"] == "_small_mm_kernel" and good["cap"] == 90
    assert 0 < good["shared"] <= cgb.SMEM_LIMIT[90] and good["regs"] > 0 and good["mma"] > 0
    assert bad["shared"] > cgb.SMEM_LIMIT[90]
    assert any("shared memory" in v for v in bad["violations"])
    assert report["ok"] is False


def test_triton_verdict():
    row = dict(ldl=0, stl=0, regs=128, stack=0, shared=227 * 1024, cap=90)
    assert cgb.triton_verdict(row) == []
    assert "sm_80 limit" in cgb.triton_verdict({**row, "cap": 80})[0]
    assert "spills" in cgb.triton_verdict({**row, "stl": 2, "ldl": 2, "stack": 16})[0]


# ----------------------------------------------------------------------------------- pruning
def _table(monkeypatch):
    monkeypatch.setattr(_config, "INTERPRET", False)
    return _config.tuned_table(("BLOCK_M", "BLOCK_N", "BLOCK_K"), {
        _config.FP16: [(128, 256, 64, 8, 4), (64, 64, 32, 4, 3)],
        _config.FP32 + _config.FP64: [(64, 64, 32, 4, 3)],
        _config.FP64: [(64, 64, 64, 4, 2), (64, 64, 64, 4, 4)],
    }, (16, 16, 16, 4, 1))


def test_tuned_table_selects_per_dtype_and_arch(monkeypatch):
    t = _table(monkeypatch)
    prune = t.prune["early_config_prune"]
    rows = lambda dt, cap: sorted((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_stages)  # noqa: E731
                                  for c in prune.select(t.configs, dt, cap))
    # one config object for a row shared by several dtype groups
    assert len(t.configs) == 4
    # 128x256x64 fp16 in 4 stages: 4 * (128 + 256) * 64 * 2 = 196608 B: fits 227 KB, not 163 KB
    assert rows("float16", 90) == [(64, 64, 32, 3), (128, 256, 64, 4)]
    assert rows("bfloat16", 80) == [(64, 64, 32, 3)]
    assert rows("float32", 90) == [(64, 64, 32, 3)]
    # fp64 64x64x64: 2 stages = 131072 B fit both archs, 4 stages = 262144 B neither
    assert rows("float64", 80) == rows("float64", 90) == [(64, 64, 32, 3), (64, 64, 64, 2)]
    # an arch without a known limit (None: no device) keeps every row of the dtype
    assert len(prune.select(t.configs, "float16", None)) == 2
    # an arch below every row keeps the leanest one instead of none
    assert [c.kwargs["BLOCK_K"] for c in prune.select(t.configs, "float64", 0, smem_limit=1)] == [32]


def test_tuned_table_rows_for_one_arch(monkeypatch):
    monkeypatch.setattr(_config, "INTERPRET", False)
    t = _config.tuned_table(("BLOCK_M", "BLOCK_N", "BLOCK_K"), {
        _config.FP16: [(64, 64, 32, 4, 4)],
        _config.FP16 + (90,): [(128, 128, 64, 8, 3)],
    }, (16, 16, 16, 4, 1))
    prune = t.prune["early_config_prune"]
    assert [c.kwargs["BLOCK_M"] for c in prune.select(t.configs, "float16", 90)] == [64, 128]
    assert [c.kwargs["BLOCK_M"] for c in prune.select(t.configs, "float16", 80)] == [64]
    assert [c.kwargs["BLOCK_M"] for c in prune.select(t.configs, "float16", 89, 99 * 1024)] == [64]
    assert prune.select(t.configs, "float32", 90) == []


def test_early_config_prune_reads_the_dtype_of_the_first_tensor(monkeypatch):
    import torch
    t = _table(monkeypatch)
    prune = t.prune["early_config_prune"]
    got = prune(t.configs, {"a_ptr": torch.zeros(2, dtype=torch.float64), "M": 3})
    assert sorted(c.kwargs["BLOCK_K"] for c in got) == [32, 64, 64]
    got = prune(t.configs, {"M": 3, "x_ptr": torch.zeros(2, dtype=torch.float16)})
    assert len(got) == 2  # no device capability on CPU tensors: every fp16 row
    # PYIMGCLS_TRITON_ONE_CONFIG=1 (gpu_check.sh's test stage): the first selectable row only
    monkeypatch.setattr(_config, "ONE_CONFIG", True)
    one = prune(t.configs, {"M": 3, "x_ptr": torch.zeros(2, dtype=torch.float16)})
    assert one == got[:1]


def test_pipeline_smem():
    c = _config.cfg(8, 3, BLOCK_M=128, BLOCK_N=256, BLOCK_K=64)
    assert _config.pipeline_smem(c, "float16") == 3 * (128 * 64 + 64 * 256) * 2
    assert _config.pipeline_smem(c, "float64") == 3 * (128 * 64 + 64 * 256) * 8
    assert _config.pipeline_smem(_config.cfg(4, 1, BLOCK_M=32, BLOCK_C=64), "float32") == 0


def test_tuned_table_skip_reads_the_launch_constexprs(monkeypatch):
    import torch
    monkeypatch.setattr(_config, "INTERPRET", False)
    t = _config.tuned_table(("BLOCK_M", "BLOCK_N", "BLOCK_K"), {
        _config.FP16: [(256, 128, 64, 8, 3), (64, 64, 32, 4, 3)],
    }, (16, 16, 16, 4, 1), skip=lambda c, dtype, cap, k: k.get("ACT") == 3 and c.kwargs["BLOCK_M"] == 256
                                                      and cap in (None, 90))
    prune = t.prune["early_config_prune"]
    rows = lambda cap, k: [c.kwargs["BLOCK_M"] for c in prune.select(t.configs, "float16", cap, constexprs=k)]  # noqa: E731
    assert rows(90, {"ACT": 2}) == [256, 64] and rows(90, {"ACT": 3}) == [64] and rows(80, {"ACT": 3}) == [256, 64]
    assert rows(90, None) == [256, 64]  # no launch: every row
    # the autotuner's call passes the launch's keyword constexprs
    got = prune(t.configs, {"a_ptr": torch.zeros(2, dtype=torch.float16)}, ACT=3)
    assert [c.kwargs["BLOCK_M"] for c in got] == [64]


PROBE_SCRIPT = r'''
import json, os, sys
sys.path[:0] = [os.path.join(sys.argv[1], "tools"), sys.argv[1]]
import check_gpu_build as cgb
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction
cgb._prepare_triton_env()
probes = cgb._probes()
out = {}
for short in ("gemm", "se", "distill", "quant", "batchnorm"):
    spec = "triton_kernels." + short
    mod = cgb._import_module(spec)
    jobs, missing = cgb._jobs_for(spec, mod, probes[short], list(cgb.DTYPES), [90, 80])
    kernels = {n: (v.fn if isinstance(v, Autotuner) else v) for n, v in vars(mod).items()}
    defined = sorted(n for n, k in kernels.items()
                     if isinstance(k, JITFunction) and n.endswith("_kernel") and k.fn.__module__ == spec)
    out[short] = dict(defined=defined, missing=missing,
                      jobs=[[j["kernel"], j["probe"], j["dtype"], j["cap"], j["config"]] for j in jobs])
print(json.dumps(out))
'''


def test_probes_launch_every_new_kernel_and_each_activation_selects_its_rows():
    """Recorded launches only (no compile): every kernel of gemm / se / distill / quant / batchnorm is
    probed (batch norm at four tile shapes); the
    GEMM is probed with relu6, silu and hardswish (GEMM_ACTS), and the smooth ones leave out the rows
    of gemm._SMOOTH_SPILLS on the archs where those spilled."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", PROBE_SCRIPT, ROOT], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    for short, rep in report.items():
        assert rep["missing"] == [], (short, rep["missing"])
        launched = {j[0] for j in rep["jobs"]}
        assert set(rep["defined"]) <= launched, (short, set(rep["defined"]) - launched)
    assert {"_act_fwd_kernel", "_act_bwd_kernel", "_gemm_fwd_kernel"} <= set(report["gemm"]["defined"])
    assert {"_drop_path_fwd_kernel", "_se_fc_kernel"} <= set(report["se"]["defined"])
    bn_fwd = [j for j in report["batchnorm"]["jobs"] if j[0] == "_batch_norm_fwd_kernel"]
    assert len({(j[1], j[2], j[3]) for j in bn_fwd}) == 4 * len(cgb.DTYPES) * 2  # probes x dtypes x archs
    gemm = [j for j in report["gemm"]["jobs"] if j[0] == "_gemm_fwd_kernel"]
    probes = {j[1] for j in gemm}
    assert probes == {f"gemm-{n}" for n in ("relu6", "silu", "hardswish")}
    act_probes = {j[1] for j in report["gemm"]["jobs"] if j[0] == "_act_fwd_kernel"}
    assert len(act_probes) == 6

    def configs(probe, dtype, cap):
        return {j[4] for j in gemm if j[1] == probe and j[2] == dtype and j[3] == cap}
    big = "BLOCK_M=256,BLOCK_N=128,BLOCK_K=64,GROUP_M=8 w8 s3"
    wide = "BLOCK_M=128,BLOCK_N=256,BLOCK_K=64,GROUP_M=8 w8 s3"
    fp32 = "BLOCK_M=64,BLOCK_N=64,BLOCK_K=32,GROUP_M=8 w4 s4"
    for cap in (80, 90):
        assert big in configs("gemm-relu6", "bfloat16", cap) and big not in configs("gemm-silu", "bfloat16", cap)
    assert wide in configs("gemm-silu", "float16", 80) and wide not in configs("gemm-hardswish", "float16", 90)
    assert fp32 in configs("gemm-silu", "float32", 80) and fp32 not in configs("gemm-silu", "float32", 90)
    assert configs("gemm-silu", "float64", 90) == configs("gemm-relu6", "float64", 90)


def test_integer_tensor_core_kernel_needs_imma():
    # the int8 GEMM (csrc/cuda/quant.cu) must run on IMMA; HMMA does not count for it
    k, = cgb.parse_sass(sass_kernel(QUANT_GEMM, ["IMMA.16832.U8.S8 R4, R8, R12, R4", "EXIT"]))
    assert cgb.base_name(k.mangled) == "quant_gemm_fwd_kernel"
    assert cgb.sass_verdict(k, "csrc/cuda/quant.cu") == []
    for body in (["IMAD R1, R2, R3, R1", "EXIT"], ["HMMA.16816.F32 R4, R8, R12, R4", "EXIT"]):
        k, = cgb.parse_sass(sass_kernel(QUANT_GEMM, body))
        assert cgb.sass_verdict(k, "csrc/cuda/quant.cu") == ["integer tensor-core kernel without IMMA"]
