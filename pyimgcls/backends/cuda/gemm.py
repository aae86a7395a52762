"""GEMM family on our CUDA C++ kernels (csrc/cuda/gemm.cu). Entry points and their contracts:
pyimgcls/backends/cpu/gemm.py. Launchers take raw pointers, strides, the device index and stream.

Each entry point has a ``plan_<entry>`` twin taking the same tensors and returning the launcher's own
decision (``_C.<op>_plan_cuda``: kernel, tensor cores, vectorised loads, tile, CTAs, split-K count,
launches) without running anything; it works on CPU, meta and fake tensors, in CPU-only builds too.
The GEMM's backward is ``bias_act_bwd`` (the epilogue) plus two more ``gemm`` calls (ops/gemm.py:
grad_A = grad_pre @ B^T, grad_B = A^T @ grad_pre), so ``plan_gemm`` on those views plans them."""
from __future__ import annotations

import torch

from ... import _native
from ...ops import gemm as g
from ...ops.activation import act_dense_output
from . import launch_args, sm_count

# Stand-ins for plans on tensors that are not on a GPU: the SM count of an H100 SXM / H200, and a
# 256-byte aligned base address for tensors without storage (meta, fake), which then keep only their
# view offset's alignment (a real CUDA allocation is at least 256-byte aligned).
NOMINAL_SM_COUNT = 132
_NOMINAL_BASE = 256


def _data_ptr(t):
    return t.data_ptr() if t is not None else 0


def _address(t):
    """data_ptr, or the nominal base plus the view's byte offset for a tensor without storage."""
    if t is None:
        return 0
    if t.device.type == "meta" or _is_fake(t):
        return _NOMINAL_BASE + t.storage_offset() * t.element_size()
    return t.data_ptr()


def _is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import is_fake
    return is_fake(t)


def _plan_sm_count(t, given):
    if given is not None:
        return int(given)
    return sm_count(t.device.index) if t.device.type == "cuda" else NOMINAL_SM_COUNT


# ----------------------------------------------------------------------------- gemm
def _gemm_args(a, b, bias, act, c, ldc, sms, ptr):
    """gemm_cuda's (and gemm_plan_cuda's) leading arguments: dtype, A, B, bias, C with their strides,
    M, N, K, activation, SM count; ``ptr`` maps a tensor (or None) to its address."""
    M, K = a.shape
    return (_native.dtype_code(a.dtype), ptr(a), a.stride(0), a.stride(1), ptr(b), b.stride(0), b.stride(1),
            ptr(bias), c, ldc, M, b.shape[1], K, act, sms)


def gemm(a, b, bias, act):
    out, work = g.gemm_output(a, b)
    if work:
        args = _gemm_args(a, b, bias, act, out.data_ptr(), out.stride(0), sm_count(a.device.index), _data_ptr)
        floats = _native.C.gemm_scratch_cuda(*args)  # = gemm_plan_cuda(*args)["scratch"]
        # Split-K partials (float32, [splits][M][ldw]); the caching allocator keeps this cheap.
        scratch = torch.empty(floats, dtype=torch.float32, device=a.device) if floats else None
        _native.C.gemm_cuda(*args, _data_ptr(scratch), floats, *launch_args(a))
    return out


def plan_gemm(a, b, bias=None, act=0, *, sm_count=None):
    """What ``gemm(a, b, bias, act)`` launches: ``_C.gemm_plan_cuda`` on the same arguments, the output
    being the contiguous [M, N] tensor ``gemm`` allocates (at a 256-byte aligned address). ``sm_count``
    defaults to that of ``a``'s GPU, or NOMINAL_SM_COUNT off the GPU. Adds ``k_chunk``, ``k_ranges``
    (the K range each split sums) and ``scratch`` (float32 elements of split-K partials)."""
    N = b.shape[1]
    args = _gemm_args(a, b, bias, act, _NOMINAL_BASE, N, _plan_sm_count(a, sm_count), _address)
    return _native.C.gemm_plan_cuda(*args)


# ----------------------------------------------------------------------------- bias_act_bwd
def _bias_act_args(grad, out, gp, gb, act, ptr):
    """bias_act_bwd_cuda's (and bias_act_bwd_plan_cuda's) leading arguments; gp and gb are the
    outputs' addresses (gb 0: no bias gradient)."""
    M, N = grad.shape
    return (_native.dtype_code(grad.dtype), ptr(grad), ptr(out), gp, gb, M, N, act)


def bias_act_bwd(grad, out, act, has_bias):
    gp, gb, work = g.bias_act_outputs(grad, act, has_bias)
    if work:
        _native.C.bias_act_bwd_cuda(*_bias_act_args(grad, out, gp.data_ptr(), _data_ptr(gb), act, _data_ptr),
                                    *launch_args(grad))
    return gp, gb


def plan_bias_act_bwd(grad, out, act, has_bias):
    """What ``bias_act_bwd(grad, out, act, has_bias)`` launches (``_C.bias_act_bwd_plan_cuda``), its
    outputs standing at the nominal address (grad_pre is grad itself without an activation)."""
    gp = _address(grad) if act == 0 else _NOMINAL_BASE
    args = _bias_act_args(grad, out, gp, _NOMINAL_BASE if has_bias else 0, act, _address)
    return _native.C.bias_act_bwd_plan_cuda(*args)


# ----------------------------------------------------------------------------- standalone activation
def act_fwd(x, act):
    y = act_dense_output(x)
    if x.numel():
        _native.C.act_fwd_cuda(_native.dtype_code(x.dtype), x.data_ptr(), y.data_ptr(), x.numel(), act,
                               *launch_args(x))
    return y


def plan_act_fwd(x, act):
    """What ``act_fwd(x, act)`` launches (``_C.act_plan_cuda``)."""
    return _native.C.act_plan_cuda(_native.dtype_code(x.dtype), x.numel(), act, False)


def act_bwd(grad, saved, act):
    gx = act_dense_output(saved)
    if grad.numel():
        _native.C.act_bwd_cuda(_native.dtype_code(grad.dtype), grad.data_ptr(), saved.data_ptr(), gx.data_ptr(),
                               grad.numel(), act, *launch_args(grad))
    return gx


def plan_act_bwd(grad, saved, act):
    """What ``act_bwd(grad, saved, act)`` launches (``_C.act_plan_cuda``)."""
    return _native.C.act_plan_cuda(_native.dtype_code(grad.dtype), grad.numel(), act, True)
