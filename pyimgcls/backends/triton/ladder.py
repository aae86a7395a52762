"""Study-ladder family in Triton (triton_kernels/ladder.py): GEMM only. Entry points and their
contracts: pyimgcls/backends/cpu/ladder.py."""
from __future__ import annotations

from ...errors import ArgumentValueError, BackendError
from .. import triton_importable
from . import on_tensor_device

_NO_CONV = "backend: there is no Triton convolution ladder; use backend='cpu' or 'cuda'"


def step_records(kind):
    if kind == "conv":
        raise ArgumentValueError(_NO_CONV)
    if not triton_importable():
        raise BackendError("backend 'triton': triton is not importable")
    from ...triton_kernels import ladder as tl_ladder
    return [{"step": s.step, "name": s.name, "description": s.description, "dtypes": tl_ladder.DTYPES,
             "channels_last": False} for s in tl_ladder.STEPS]


@on_tensor_device
def gemm(step, a, b, out):
    from ...triton_kernels import ladder as tl_ladder
    return tl_ladder.matmul(a, b, step, out)


@on_tensor_device
def conv2d(step, x, w, bias, out, geom, stride, padding, act):
    raise ArgumentValueError(_NO_CONV)
