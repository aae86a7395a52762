"""Shared Triton settings. Autotuning with several configs needs a GPU, so under the interpreter
(TRITON_INTERPRET=1, CPU tests) every kernel gets exactly one config.

Autotune tables are per dtype and pruned per architecture: a config that fits float16 (2-byte
operands, tensor cores) spills or overflows shared memory in float64 (8-byte operands and
accumulator). ``tuned_table`` builds the configs of one kernel from one row list per dtype group and
an ``early_config_prune`` that, at the first launch of each autotune key, keeps the rows of the
launch's dtype whose operand pipeline fits the device's shared memory. tools/check_gpu_build.py
compiles every config ``DtypeArchPrune.select`` leaves for each (dtype, sm_80 / sm_90) and fails on
spills or shared memory over the limit, so the tables stay honest."""
import os

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# PYIMGCLS_TRITON_ONE_CONFIG=1: every tuned kernel keeps only the first selectable row of its table
# for the launch's dtype and arch, so a GPU test run compiles one variant per kernel instead of the
# whole sweep (benchmarks/gpu_check.sh "check" stage: the GPU budget is minutes). Never for timing.
ONE_CONFIG = os.environ.get("PYIMGCLS_TRITON_ONE_CONFIG", "0") == "1"

FP16 = ("float16", "bfloat16")
FP32 = ("float32",)
FP64 = ("float64",)
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}

# Opt-in shared memory per block in bytes, by compute capability (major*10 + minor). Other archs:
# the device's own shared_memory_per_block_optin.
SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024}


def autotune_configs(gpu_configs, interpret_config):
    """``gpu_configs`` on a GPU, ``[interpret_config]`` under the interpreter."""
    return [interpret_config] if INTERPRET else gpu_configs


def cfg(num_warps=4, num_stages=2, **meta):
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


def _row_config(names, row):
    *meta, num_warps, num_stages = row
    return cfg(num_warps, num_stages, **dict(zip(names, meta, strict=True)))


def pipeline_smem(config, dtype):
    """Upper bound of the shared memory (bytes) a tl.dot main loop stages: num_stages buffers of the
    BLOCK_M x BLOCK_K and BLOCK_K x BLOCK_N operand tiles (Triton keeps num_stages - 1 of them on the
    FMA path, num_stages on the wgmma path). 0 for kernels without a K tile (no dot pipeline)."""
    m = config.kwargs
    if not all(k in m for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")):
        return 0
    return config.num_stages * (m["BLOCK_M"] + m["BLOCK_N"]) * m["BLOCK_K"] * ITEMSIZE[dtype]


class DtypeArchPrune:
    """``early_config_prune`` of a tuned table: the launch's dtype (of its first tensor argument)
    picks the rows written for it; the device's compute capability drops the rows written for other
    archs and those whose pipeline (``pipeline_smem``) exceeds its shared memory. ``select`` is the same choice for a named dtype
    and capability, which tools/check_gpu_build.py uses to compile exactly the selectable configs."""

    def __init__(self, skip=None):
        # skip(config, dtype, cap, constexprs) -> True drops a row for that launch (e.g. the GEMM rows
        # that spill with a smooth activation's epilogue); cap is None without a device
        self.skip = skip

    def select(self, configs, dtype, cap, smem_limit=None, constexprs=None):
        limit = smem_limit if smem_limit is not None else SMEM_LIMIT.get(cap)
        mine = [c for c in configs if dtype in c.dtypes and (c.caps is None or cap is None or cap in c.caps)]
        if self.skip is not None and constexprs is not None:
            mine = [c for c in mine if not self.skip(c, dtype, cap, constexprs)]
        if limit is None:
            return mine
        fits = [c for c in mine if pipeline_smem(c, dtype) <= limit]
        if not fits and mine:
            # An arch smaller than every row (none today): the leanest row rather than no config.
            fits = [min(mine, key=lambda c: pipeline_smem(c, dtype))]
        return fits

    def __call__(self, configs, named_args, **kwargs):
        import torch
        t = next(v for v in named_args.values() if isinstance(v, torch.Tensor))
        dtype = str(t.dtype).removeprefix("torch.")
        if t.device.type != "cuda":
            chosen = self.select(configs, dtype, None, constexprs=kwargs)
        else:
            major, minor = torch.cuda.get_device_capability(t.device)
            cap = major * 10 + minor
            limit = SMEM_LIMIT.get(cap)
            if limit is None:
                limit = torch.cuda.get_device_properties(t.device).shared_memory_per_block_optin
            chosen = self.select(configs, dtype, cap, limit, constexprs=kwargs)
        return chosen[:1] if ONE_CONFIG else chosen


class TunedTable:
    """``configs`` and ``prune`` (the ``prune_configs_by`` argument) of one kernel's autotuning."""

    def __init__(self, configs, prune):
        self.configs = configs
        self.prune = prune


def tuned_table(names, tables, interpret_row, skip=None):
    """Per-dtype autotune table: ``tables`` maps a tuple of dtype names (FP16, FP32, FP64), optionally
    followed by compute capabilities (``FP16 + (90,)``: those archs only, for rows that spill on
    others), to rows, each the values of the meta-parameters ``names`` in order, then num_warps and
    num_stages. Under the interpreter: ``interpret_row`` alone, for every dtype. ``skip``: see
    DtypeArchPrune (the launch's constexprs can drop rows). Keeps each kernel's tuning table to its
    numbers."""
    by_row = {}
    for key, rows in tables.items():
        dtypes = {k for k in key if isinstance(k, str)}
        caps = frozenset(k for k in key if isinstance(k, int)) or None
        for row in rows:
            by_row.setdefault((tuple(row), caps), set()).update(dtypes)
    configs = []
    for (row, caps), dtypes in by_row.items():
        c = _row_config(names, row)
        c.dtypes, c.caps = frozenset(dtypes), caps
        configs.append(c)
    interp = _row_config(names, interpret_row)
    interp.dtypes, interp.caps = frozenset(ITEMSIZE), None
    return TunedTable(autotune_configs(configs, interp), {"early_config_prune": DtypeArchPrune(skip)})
