"""Shared Triton settings. Autotuning with several configs needs a GPU, so under the interpreter
(TRITON_INTERPRET=1, CPU tests) every kernel gets exactly one config."""
import os

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_configs(gpu_configs, interpret_config):
    """``gpu_configs`` on a GPU, ``[interpret_config]`` under the interpreter."""
    return [interpret_config] if INTERPRET else gpu_configs


def cfg(num_warps=4, num_stages=2, **meta):
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


def config_table(names, rows, interpret_row):
    """Autotune configs from a table: each row holds the values of the meta-parameters ``names``, in
    order, then num_warps and num_stages; ``interpret_row`` is the one config used under the
    interpreter. Keeps each kernel's tuning table to its numbers."""
    def one(row):
        *meta, num_warps, num_stages = row
        return cfg(num_warps, num_stages, **dict(zip(names, meta, strict=True)))
    return autotune_configs([one(r) for r in rows], one(interpret_row))
