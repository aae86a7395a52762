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
