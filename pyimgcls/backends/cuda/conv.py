"""Convolution family on our CUDA C++ kernels (csrc/cuda/conv*.cu). Entry points and their contracts:
pyimgcls/backends/cpu/conv.py. Launchers take raw pointers, strides, the geometry list, the device
index and the stream; split-reduction scratch is allocated here (PyTorch's caching allocator).

Each entry point prepares its launcher arguments in one helper (``_fwd_args``, ``_dgrad_args``,
``_wgrad_args``: layout conversions, strides, geometry) that the matching ``plan_<entry>`` function
shares: ``plan_conv2d`` / ``plan_dgrad`` / ``plan_wgrad`` return what the launcher would run for the
same arguments (``_native.C.conv2d_plan_cuda``, the launchers' own decision function), on any device,
meta and fake tensors included, without a GPU."""
from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake

from ... import _native
from ...ops.conv import (bias_act_outputs, dgrad_output, fwd_outputs, pixel_strides, ptr, strides,
                         wgrad_output)
from . import launch_args, sm_count

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_FWD, _DGRAD, _WGRAD = 0, 1, 2
# SM count assumed by a plan for tensors not on a CUDA device (an H100 / H200 SXM has 132 SMs); it
# only changes wgrad's split count.
NOMINAL_SM_COUNT = 132


def _fwd_args(x, w, res, stride, padding, dilation, groups):
    """(x, w, out, res, geom) as conv2d_fwd_cuda receives them; geom None when there is nothing to do."""
    out, res, geom = fwd_outputs(x, w, res, stride, padding, dilation, groups)
    if geom is not None and x.dtype in _LOW_PRECISION and geom.groups != geom.C:
        # NCHW policy: the tensor-core fast path gathers 8 channels of one tap per 16-byte cp.async, so
        # it needs channels_last activations. NCHW input is converted here, explicitly (one extra read
        # + write of the input; benchmarks/bench_conv.py measures the NCHW rows with it included), and
        # the weight is laid out as [O, KH, KW, C/groups] (small). The output is still written in the
        # layout PyTorch returns for the call. Depthwise and fp32 kernels read any layout in place.
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
    return x, w, out, res, geom


def _dgrad_args(gp, x, w, stride, padding, dilation, groups):
    """(gp, w, dx, geom) as conv2d_bwd_data_cuda receives them; geom None when dx is empty."""
    dx, geom = dgrad_output(gp, x, w, stride, padding, dilation, groups)
    if geom is not None and gp.dtype in _LOW_PRECISION and geom.groups != geom.C:
        # dgrad's GEMM-K axis is (tap, out channel): channels_last gradient and an out-channel-contiguous
        # weight view (a weight-sized copy) make every K chunk a 16-byte load. The depthwise kernel
        # (groups == C) reads any layout in place, as in the forward.
        gp = gp.contiguous(memory_format=torch.channels_last)
        w = w.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)
    return gp, w, dx, geom


def _wgrad_args(gp, x, w, stride, padding, dilation, groups):
    """(gp, x, dw, geom) as conv2d_bwd_weight_cuda receives them; geom None when dw is empty."""
    dw, geom = wgrad_output(gp, x, w, stride, padding, dilation, groups)
    if (geom is not None and x.dtype in _LOW_PRECISION and (geom.C // geom.groups) % 8 == 0
            and (geom.O // geom.groups) % 8 == 0):
        # NCHW policy as in the forward: wgrad's 16-byte path gathers 8 out channels of the gradient
        # and 8 input channels of x at one pixel, so both go channels_last (no-ops when they already
        # are; one read + write of each otherwise). With other channel counts the element gathers
        # read any layout in place, so nothing is copied.
        gp = gp.contiguous(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return gp, x, dw, geom


def conv2d(x, w, bias, res, stride, padding, dilation, groups, act):
    x, w, out, res, geom = _fwd_args(x, w, res, stride, padding, dilation, groups)
    if geom is None:
        return out
    _native.C.conv2d_fwd_cuda(_native.dtype_code(x.dtype), geom, x.data_ptr(), strides(x), w.data_ptr(),
                              strides(w), ptr(bias), ptr(res), strides(res), out.data_ptr(), strides(out), act,
                              *launch_args(x))
    return out


def bias_act_bwd(grad, out, act, has_bias, fmt):
    gp, gb = bias_act_outputs(grad, out, act, has_bias, fmt)
    if grad.numel() == 0:
        return gp, gb
    N, O, OH, OW = grad.shape
    rows = N * OH * OW
    # row splits so that ~4 blocks per SM run even for few channels; >= 256 rows each
    splits = max(1, min(-(-rows // 256), -(-4 * sm_count(grad.device.index) // -(-O // 32)), 65535))
    scratch = torch.empty(splits * O, dtype=torch.float32, device=grad.device) if gb is not None else None
    _native.C.conv2d_bias_act_bwd_cuda(_native.dtype_code(grad.dtype), N, O, OH * OW, grad.data_ptr(),
                                       pixel_strides(grad), ptr(out), pixel_strides(out), gp.data_ptr(), ptr(gb),
                                       ptr(scratch), splits, act, *launch_args(grad))
    return gp, gb


def dgrad(gp, x, w, stride, padding, dilation, groups):
    gp, w, dx, geom = _dgrad_args(gp, x, w, stride, padding, dilation, groups)
    if geom is None:
        return dx
    _native.C.conv2d_bwd_data_cuda(_native.dtype_code(gp.dtype), geom, gp.data_ptr(), strides(gp), w.data_ptr(),
                                   strides(w), dx.data_ptr(), strides(dx), *launch_args(gp))
    return dx


def wgrad(gp, x, w, stride, padding, dilation, groups):
    gp, x, dw, geom = _wgrad_args(gp, x, w, stride, padding, dilation, groups)
    if geom is None:
        return dw
    code = _native.dtype_code(x.dtype)
    splits = _native.C.conv2d_wgrad_splits_cuda(code, geom, sm_count(x.device.index))
    # fp32 partial sums per K split, reduced in split order by the kernel (deterministic, no atomics)
    scratch = torch.empty(splits * dw.numel(), dtype=torch.float32, device=x.device)
    _native.C.conv2d_bwd_weight_cuda(code, geom, gp.data_ptr(), strides(gp), x.data_ptr(), strides(x),
                                     dw.data_ptr(), scratch.data_ptr(), splits, *launch_args(x))
    return dw


# ----------------------------------------------------------------------------------------- plans
def _address(t: torch.Tensor) -> int:
    """The data address the launcher would see. Tensors without storage (meta, fake) get a nominal
    256-byte-aligned base plus their storage offset, so the plan's alignment test sees what an
    allocation of the caching allocator (256-byte aligned) would give."""
    if t.device.type == "meta" or is_fake(t):
        return 256 + t.storage_offset() * t.element_size()
    return t.data_ptr()


def _sm_count_for(t: torch.Tensor, sms: int | None) -> int:
    if sms is not None:
        return int(sms)
    return sm_count(t.device.index) if t.device.type == "cuda" else NOMINAL_SM_COUNT


def _plan(mode, a, b, geom, sms, c=None):
    """c: the output, which only the depthwise dgrad's choice reads (its 16-byte path)."""
    extra = {} if c is None else {"c_strides": strides(c), "c_ptr": _address(c)}
    return _native.C.conv2d_plan_cuda(mode, _native.dtype_code(a.dtype), geom, strides(a), strides(b), _address(a),
                                      _address(b), sms, **extra)


_NOTHING = {"kernel": "", "tensor_cores": False, "vectorized": False, "tile": (0, 0, 0), "ctas": 0, "splits": 1,
            "launches": 0}


def plan_conv2d(x, w, bias, res, stride, padding, dilation, groups, act, sm_count=None):
    """What ``conv2d`` launches for the same arguments: the dict of ``_native.C.conv2d_plan_cuda``
    (kernel, tensor_cores, vectorized, tile, ctas, splits, launches). bias and act are fused into the
    epilogue and do not change it."""
    with torch.no_grad():
        x2, w2, _, _, geom = _fwd_args(x, w, res, stride, padding, dilation, groups)
    if geom is None:
        return dict(_NOTHING)
    return _plan(_FWD, x2, w2, geom, _sm_count_for(x, sm_count))


def plan_dgrad(gp, x, w, stride, padding, dilation, groups, sm_count=None):
    """What ``dgrad`` launches for the same arguments."""
    with torch.no_grad():
        gp2, w2, dx, geom = _dgrad_args(gp, x, w, stride, padding, dilation, groups)
    if geom is None:
        return dict(_NOTHING)
    return _plan(_DGRAD, gp2, w2, geom, _sm_count_for(gp, sm_count), c=dx)


def plan_wgrad(gp, x, w, stride, padding, dilation, groups, sm_count=None):
    """What ``wgrad`` launches for the same arguments (its split count from ``sm_count`` SMs: the
    tensors' GPU, or NOMINAL_SM_COUNT off a GPU)."""
    with torch.no_grad():
        gp2, x2, _, geom = _wgrad_args(gp, x, w, stride, padding, dilation, groups)
    if geom is None:
        return dict(_NOTHING)
    return _plan(_WGRAD, gp2, x2, geom, _sm_count_for(x, sm_count))


# pyimgcls.explain: the launcher of the entry points without a plan_* (pyimgcls._C).
LAUNCHERS = {"bias_act_bwd": "conv2d_bias_act_bwd_cuda"}
