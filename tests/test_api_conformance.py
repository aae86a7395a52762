"""API conformance: the public ops and modules called exactly as a PyTorch user calls
torch.nn.functional / torch.nn, compared with PyTorch on the same call.

Table-driven and differential: every GOOD case must be accepted by both and agree in output structure,
shape, dtype, strides (memory format) and values, and in the gradients of every input that requires
grad; every BAD case is rejected by PyTorch and must be rejected by us with a ValueError / TypeError /
RuntimeError whose message names the argument. The tables hold a broad sample of ordinary calls plus
one regression row per discrepancy the conformance audit found (marked "regression:").
"""
from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pyimgcls
from pyimgcls import nn, ops

from helpers import device_for

F64 = torch.float64
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}


# ----------------------------------------------------------------------------- tensor factories
def t(*shape, dtype=F64, layout="c", grad=False, seed=0):
    """A deterministic tensor of ``shape`` in a given layout: "c" contiguous, "cl" channels_last,
    "slice" (every other element of the last dim), "tr" (transposed view of the last two dims),
    "exp" (batch dim expanded from 1)."""
    g = torch.Generator().manual_seed(seed + 17 * len(shape) + sum(shape))
    if layout == "slice":
        x = torch.randn(*shape[:-1], 2 * shape[-1], generator=g, dtype=F64)[..., ::2]
    elif layout == "tr":
        x = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=g, dtype=F64).transpose(-1, -2)
    elif layout == "exp":
        x = torch.randn(1, *shape[1:], generator=g, dtype=F64).expand(*shape)
    else:
        x = torch.randn(tuple(shape), generator=g, dtype=F64)
    x = x.to(dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(grad)


def prob(*shape, dtype=F64, grad=False, dim=1):
    """Class probabilities (softmax over ``dim``) of ``shape``."""
    return torch.softmax(t(*shape, seed=5), dim).to(dtype).requires_grad_(grad)


def idx(*values, dtype=torch.int64):
    return torch.tensor(values, dtype=dtype)


def _copy(v, device=None):
    """The same values and strides, a fresh autograd leaf on ``device`` (default: v's own; expanded
    views are shared: read-only)."""
    if not isinstance(v, torch.Tensor):
        return v
    device = v.device if device is None else torch.device(device)
    if v.numel() > 1 and 0 in v.stride():
        assert device == v.device, "expanded inputs are shared, not copied to another device"
        return v
    c = torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=device).copy_(v.detach())
    return c.requires_grad_(v.requires_grad)


def _run(fn, args, kwargs, device=None):
    args, kwargs = [_copy(a, device) for a in args], {k: _copy(v, device) for k, v in kwargs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fn(*args, **kwargs)
    leaves = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor) and a.requires_grad]
    return out, leaves


def _relu_conv(*args, **kwargs):
    return F.relu(F.conv2d(*args, **kwargs))


def _assert_same(ref, got, dtype, what):
    assert type(got) is type(ref), f"{what}: returned {type(got).__name__}, torch returns {type(ref).__name__}"
    refs = list(ref) if isinstance(ref, tuple) else [ref]
    gots = list(got) if isinstance(got, tuple) else [got]
    assert len(gots) == len(refs), what
    for i, (r, g) in enumerate(zip(refs, gots)):
        assert g.shape == r.shape, f"{what}[{i}]: shape {tuple(g.shape)}, torch {tuple(r.shape)}"
        assert g.dtype == r.dtype, f"{what}[{i}]: dtype {g.dtype}, torch {r.dtype}"
        if r.numel() > 1 and r.dim() == 4 and r.shape[1] > 1:  # memory format is defined for real channels
            assert g.stride() == r.stride(), f"{what}[{i}]: strides {g.stride()}, torch {r.stride()}"
        if r.is_floating_point():
            torch.testing.assert_close(g.cpu(), r, rtol=TOL[r.dtype], atol=TOL[r.dtype], equal_nan=True, msg=what)
        else:
            assert torch.equal(g.cpu(), r), f"{what}[{i}]: integer outputs differ"


def check_good(torch_fn, our_fn, args, kwargs=None, backend="cpu", device=None):
    """Our op on copies of the inputs on ``device`` (default: the inputs' own) against PyTorch's on the inputs."""
    kwargs = kwargs or {}
    ref, ref_leaves = _run(torch_fn, args, kwargs)
    with pyimgcls.use_backend(backend):
        got, got_leaves = _run(our_fn, args, kwargs, device)
    first = next(a for a in args if isinstance(a, torch.Tensor))
    _assert_same(ref, got, first.dtype, "forward")
    ref0 = ref[0] if isinstance(ref, tuple) else ref
    got0 = got[0] if isinstance(got, tuple) else got
    assert got0.requires_grad == ref0.requires_grad
    if ref_leaves and ref0.requires_grad and ref0.numel():
        seed = torch.Generator().manual_seed(1)
        gout = torch.randn(ref0.shape, generator=seed, dtype=F64).to(ref0.dtype)
        rg = torch.autograd.grad(ref0, ref_leaves, gout, allow_unused=True)
        with pyimgcls.use_backend(backend):
            gg = torch.autograd.grad(got0, got_leaves, gout.to(got0.device), allow_unused=True)
        for i, (r, g) in enumerate(zip(rg, gg)):
            assert (r is None) == (g is None), f"grad {i}: presence differs"
            if r is not None:
                assert g.shape == r.shape and g.dtype == r.dtype, f"grad {i}"
                tol = 5 * TOL[r.dtype]
                torch.testing.assert_close(g.cpu(), r, rtol=tol, atol=tol, msg=f"grad {i}")


def check_bad(torch_fn, our_fn, args, kwargs, names):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception):
            torch_fn(*args, **kwargs)
        with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
            with pyimgcls.use_backend("cpu"):
                our_fn(*args, **kwargs)
    names = (names,) if isinstance(names, str) else names
    assert any(n in str(info.value) for n in names), f"message does not name {names}: {info.value}"


# ----------------------------------------------------------------------------- GOOD calls
MP, AP, AAP, CONV, LIN, MM, XE = (
    (F.max_pool2d, ops.max_pool2d), (F.avg_pool2d, ops.avg_pool2d),
    (F.adaptive_avg_pool2d, ops.adaptive_avg_pool2d), (F.conv2d, ops.conv2d), (F.linear, ops.linear),
    (torch.matmul, ops.matmul), (F.cross_entropy, ops.cross_entropy))

GOOD = [
    # --- max_pool2d: int / tuple / list arguments, positional and keyword forms, layouts, ceil-mode edges
    ("max_int", MP, lambda: ([t(2, 3, 7, 6, grad=True), 2], {})),
    ("max_pos_all", MP, lambda: ([t(2, 3, 9, 8, grad=True), (3, 2), [2, 1], 1, (1, 2), True, True], {})),
    ("max_kw_indices", MP, lambda: ([t(1, 2, 8, 9, grad=True)], dict(kernel_size=[3], stride=2, padding=1,
                                                                      return_indices=True))),
    ("max_ceil_edge", MP, lambda: ([t(1, 2, 6, 6, grad=True), 3, 2], dict(padding=1, ceil_mode=True))),
    ("max_unbatched", MP, lambda: ([t(3, 5, 7, grad=True), 2], dict(return_indices=True))),
    ("max_channels_last", MP, lambda: ([t(2, 4, 7, 7, layout="cl", grad=True), 3, 2, 1], {})),
    ("max_slice", MP, lambda: ([t(2, 3, 6, 5, layout="slice", grad=True), 2], {})),
    ("max_expanded", MP, lambda: ([t(3, 2, 5, 5, layout="exp"), 2], {})),
    ("max_empty_batch", MP, lambda: ([t(0, 3, 6, 6), 2], {})),
    ("max_f32", MP, lambda: ([t(2, 3, 6, 6, dtype=torch.float32, grad=True), 3, 1, 1], {})),
    ("max_bf16", MP, lambda: ([t(1, 3, 6, 6, dtype=torch.bfloat16), 2], {})),
    ("max_nan_ties", MP, lambda: ([torch.tensor([[[[1., 1., float("nan"), 2.], [1., 1., 2., 2.],
                                                   [-float("inf"), 0., 3., 3.], [0., 0., 3., 3.]]]], dtype=F64),
                                   2], dict(return_indices=True))),
    ("max_stride_none_kw", MP, lambda: ([t(1, 2, 6, 6)], dict(kernel_size=3, stride=None))),
    # --- avg_pool2d
    ("avg_int", AP, lambda: ([t(2, 3, 7, 6, grad=True), 2], {})),
    ("avg_pos_all", AP, lambda: ([t(2, 3, 9, 8, grad=True), (3, 2), [2, 1], 1, True, False, None], {})),
    ("avg_divisor", AP, lambda: ([t(1, 2, 7, 7, grad=True), 3], dict(stride=2, padding=1, divisor_override=5))),
    ("avg_ceil_nopad", AP, lambda: ([t(1, 2, 6, 6, grad=True), 3, 2], dict(padding=1, ceil_mode=True,
                                                                          count_include_pad=False))),
    ("avg_unbatched", AP, lambda: ([t(3, 5, 7, grad=True), [2, 3]], {})),
    ("avg_channels_last", AP, lambda: ([t(2, 4, 7, 7, layout="cl", grad=True), 3, 2, 1], {})),
    ("avg_tr", AP, lambda: ([t(2, 3, 6, 5, layout="tr", grad=True), 2], {})),
    ("avg_empty_batch", AP, lambda: ([t(0, 3, 6, 6), 2], {})),
    ("avg_f16", AP, lambda: ([t(1, 3, 6, 6, dtype=torch.float16), 2], {})),
    # --- adaptive_avg_pool2d
    ("aap_int", AAP, lambda: ([t(2, 3, 7, 6, grad=True), 3], {})),
    ("aap_none_entry", AAP, lambda: ([t(2, 3, 7, 6, grad=True), (None, 4)], {})),
    ("aap_kw_list", AAP, lambda: ([t(2, 3, 7, 6, grad=True)], dict(output_size=[5, 2]))),
    ("aap_global", AAP, lambda: ([t(2, 3, 7, 6, grad=True), 1], {})),
    ("aap_global_cl", AAP, lambda: ([t(2, 3, 7, 6, layout="cl", grad=True), (1, 1)], {})),
    ("aap_unbatched", AAP, lambda: ([t(3, 7, 6, grad=True), (2, 3)], {})),
    ("aap_larger", AAP, lambda: ([t(1, 2, 3, 4, grad=True), (5, 7)], {})),
    ("aap_channels_last", AAP, lambda: ([t(2, 4, 7, 7, layout="cl", grad=True), 3], {})),
    ("aap_empty_batch", AAP, lambda: ([t(0, 3, 6, 6), 2], {})),
    # regression: ATen only requires non-empty H and W (empty channels are accepted)
    ("aap_zero_channels", AAP, lambda: ([t(2, 0, 3, 3), 2], {})),
    ("aap_zero_channels_unbatched", AAP, lambda: ([t(0, 4, 4), (2, None)], {})),
    # --- conv2d
    ("conv_basic", CONV, lambda: ([t(2, 3, 7, 6, grad=True), t(4, 3, 3, 3, grad=True), t(4, grad=True)], {})),
    ("conv_pos_all", CONV, lambda: ([t(2, 4, 9, 8, grad=True), t(6, 2, 3, 2, grad=True), None, (2, 1), [1, 2],
                                     (1, 2), 2], {})),
    ("conv_kw", CONV, lambda: ([t(1, 3, 8, 8, grad=True)], dict(weight=t(2, 3, 3, 3, grad=True), bias=t(2), stride=2,
                                                                   padding=[1], dilation=[2, 1]))),
    ("conv_same_even", CONV, lambda: ([t(1, 2, 7, 6, grad=True), t(3, 2, 4, 2, grad=True)], dict(padding="same",
                                                                                                dilation=2))),
    ("conv_valid", CONV, lambda: ([t(1, 2, 7, 6), t(3, 2, 3, 3)], dict(padding="valid"))),
    ("conv_depthwise", CONV, lambda: ([t(2, 4, 6, 6, grad=True), t(8, 1, 3, 3, grad=True), t(8)],
                                      dict(padding=1, groups=4))),
    ("conv_unbatched", CONV, lambda: ([t(3, 6, 6, grad=True), t(2, 3, 3, 3, grad=True), t(2, grad=True)], {})),
    ("conv_channels_last_in", CONV, lambda: ([t(2, 3, 6, 6, layout="cl", grad=True), t(4, 3, 3, 3, grad=True)],
                                             dict(padding=1))),
    ("conv_channels_last_weight", CONV, lambda: ([t(2, 3, 6, 6, grad=True), t(4, 3, 3, 3, layout="cl")], {})),
    ("conv_slice_in", CONV, lambda: ([t(2, 3, 6, 5, layout="slice", grad=True), t(4, 3, 2, 2)], {})),
    ("conv_empty_batch", CONV, lambda: ([t(0, 3, 6, 6), t(4, 3, 3, 3), t(4)], {})),
    ("conv_f32", CONV, lambda: ([t(2, 3, 6, 6, dtype=torch.float32, grad=True),
                                 t(4, 3, 3, 3, dtype=torch.float32, grad=True)], dict(stride=2, padding=1))),
    ("conv_bf16", CONV, lambda: ([t(1, 3, 6, 6, dtype=torch.bfloat16), t(4, 3, 3, 3, dtype=torch.bfloat16)], {})),
    # regression: a strided (non-contiguous) bias was read as if contiguous
    ("conv_strided_bias", CONV, lambda: ([t(2, 3, 6, 6, grad=True), t(4, 3, 3, 3), t(4, 2, grad=True)[:, 0]], {})),
    # regression: int-list arguments given as a 0-D integer tensor / NumPy integers
    ("conv_tensor_stride", CONV, lambda: ([t(1, 3, 7, 7), t(2, 3, 3, 3)], dict(stride=torch.tensor(2),
                                                                             padding=np.int64(1)))),
    ("conv_bias_relu", (_relu_conv, ops.conv2d_bias_relu),
     lambda: ([t(2, 3, 6, 6, grad=True), t(4, 3, 3, 3, grad=True), t(4, grad=True), 1, 1], {})),
    # --- linear
    ("linear_2d", LIN, lambda: ([t(5, 4, grad=True), t(3, 4, grad=True), t(3, grad=True)], {})),
    ("linear_1d_input", LIN, lambda: ([t(4, grad=True), t(3, 4, grad=True)], {})),
    ("linear_4d_input", LIN, lambda: ([t(2, 3, 2, 4, grad=True), t(3, 4, grad=True)], dict(bias=t(3, grad=True)))),
    ("linear_tr_weight", LIN, lambda: ([t(5, 4, grad=True), t(3, 4, layout="tr", grad=True)], {})),
    ("linear_empty", LIN, lambda: ([t(0, 4, grad=True), t(3, 4, grad=True), t(3)], {})),
    ("linear_zero_in_features", LIN, lambda: ([t(2, 0), t(3, 0), t(3)], {})),
    ("linear_f32", LIN, lambda: ([t(5, 4, dtype=torch.float32, grad=True), t(3, 4, dtype=torch.float32)], {})),
    ("linear_f16", LIN, lambda: ([t(5, 4, dtype=torch.float16), t(3, 4, dtype=torch.float16)], {})),
    # regression: strided bias; bias shapes that broadcast to [out_features]
    ("linear_strided_bias", LIN, lambda: ([t(5, 4, grad=True), t(3, 4), t(3, 2, grad=True)[:, 1]], {})),
    ("linear_bias_row", LIN, lambda: ([t(5, 4, grad=True), t(3, 4), t(1, 3, grad=True)], {})),
    ("linear_bias_scalar", LIN, lambda: ([t(5, 4), t(3, 4), t(grad=True)], {})),
    ("linear_bias_one", LIN, lambda: ([t(5, 4), t(3, 4), t(1, grad=True)], {})),
    ("linear_1d_input_bias_row", LIN, lambda: ([t(4, grad=True), t(3, 4), t(1, 3, grad=True)], {})),
    # regression: a 1-D weight (one output feature, dimension dropped)
    ("linear_weight_1d", LIN, lambda: ([t(5, 4, grad=True), t(4, grad=True)], {})),
    # --- matmul
    ("mm_2d", MM, lambda: ([t(5, 4, grad=True), t(4, 3, grad=True)], {})),
    ("mm_transposed", MM, lambda: ([t(5, 4, layout="tr", grad=True), t(4, 3, layout="tr", grad=True)], {})),
    ("mm_empty", MM, lambda: ([t(0, 4), t(4, 3)], {})),
    ("mm_f32", MM, lambda: ([t(5, 4, dtype=torch.float32), t(4, 3, dtype=torch.float32)], {})),
    # regression: torch.matmul's 1-D, folded and batched forms
    ("mm_vec_mat", MM, lambda: ([t(4, grad=True), t(4, 3, grad=True)], {})),
    ("mm_mat_vec", MM, lambda: ([t(5, 4, grad=True), t(4, grad=True)], {})),
    ("mm_dot", MM, lambda: ([t(4, grad=True), t(4, grad=True)], {})),
    ("mm_3d_2d", MM, lambda: ([t(2, 5, 4, grad=True), t(4, 3, grad=True)], {})),
    ("mm_batched_broadcast", MM, lambda: ([t(2, 1, 5, 4, grad=True), t(3, 4, 2, grad=True)], {})),
    # --- cross_entropy
    ("xe_basic", XE, lambda: ([t(4, 5, grad=True), idx(0, 4, 2, 1)], {})),
    ("xe_weight_pos", XE, lambda: ([t(4, 5, grad=True), idx(0, 4, 2, 1), t(5).abs() + 0.1], {})),
    ("xe_all_kw", XE, lambda: ([t(4, 5, grad=True), idx(0, 4, -100, 1)], dict(weight=t(5).abs() + 0.1,
                                                                          ignore_index=-100, reduction="sum",
                                                                          label_smoothing=0.2))),
    ("xe_none", XE, lambda: ([t(4, 5, grad=True), idx(0, 3, 2, 1)], dict(reduction="none", ignore_index=3))),
    ("xe_4d", XE, lambda: ([t(2, 5, 3, 2, grad=True), idx(0, 4, 2, 1, 3, 3, 0, 0, 1, 2, 4, 4).view(2, 3, 2)],
                           dict(label_smoothing=0.1))),
    ("xe_3d_none", XE, lambda: ([t(2, 5, 3, grad=True), idx(0, 4, 2, 1, 3, 3).view(2, 3)], dict(reduction="none"))),
    ("xe_slice", XE, lambda: ([t(3, 5, layout="slice", grad=True), idx(0, 4, 2)], {})),
    ("xe_tr", XE, lambda: ([t(3, 5, layout="tr", grad=True), idx(0, 4, 2)], {})),
    ("xe_empty_sum", XE, lambda: ([t(0, 5, grad=True), idx(dtype=torch.int64)], dict(reduction="sum"))),
    ("xe_empty_mean", XE, lambda: ([t(0, 5), idx(dtype=torch.int64)], {})),
    ("xe_all_ignored", XE, lambda: ([t(2, 5), idx(-100, -100)], {})),
    ("xe_f32", XE, lambda: ([t(4, 5, dtype=torch.float32, grad=True), idx(0, 4, 2, 1)], dict(label_smoothing=0.3))),
    ("xe_bf16", XE, lambda: ([t(4, 5, dtype=torch.bfloat16), idx(0, 4, 2, 1)], {})),
    ("xe_uint8", XE, lambda: ([t(4, 5, grad=True), idx(0, 4, 2, 1, dtype=torch.uint8)], {})),
    # regression: negative label_smoothing (PyTorch: no smoothing); bool smoothing
    ("xe_negative_smoothing", XE, lambda: ([t(4, 5, grad=True), idx(0, 4, 2, 1)], dict(label_smoothing=-0.5))),
    ("xe_bool_smoothing", XE, lambda: ([t(4, 5, grad=True), idx(0, 4, 2, 1)], dict(label_smoothing=True))),
    # regression: NumPy / 0-D tensor scalars for ignore_index and label_smoothing
    ("xe_numpy_scalars", XE, lambda: ([t(4, 5, grad=True), idx(0, 4, 2, 1)], dict(ignore_index=np.int64(2),
                                                                              label_smoothing=np.float32(0.25)))),
    ("xe_tensor_scalars", XE, lambda: ([t(4, 5, grad=True), idx(0, 4, 2, 1)], dict(ignore_index=torch.tensor(4),
                                                                               label_smoothing=torch.tensor(0.1)))),
    ("xe_uint8_weighted_smoothing_sum", XE, lambda: ([t(4, 5, grad=True), idx(0, 4, 2, 1, dtype=torch.uint8),
                                                      t(5).abs()], dict(label_smoothing=0.1, reduction="sum"))),
]


@pytest.mark.parametrize("case", GOOD, ids=[c[0] for c in GOOD])
def test_good_call_matches_torch(case):
    _, (torch_fn, our_fn), make = case
    args, kwargs = make()
    check_good(torch_fn, our_fn, args, kwargs)


# ----------------------------------------------------------------------------- BAD calls
BAD = [
    ("max_rank2", MP, lambda: ([t(6, 6), 2], {}), "input"),
    ("max_rank5", MP, lambda: ([t(1, 1, 2, 6, 6), 2], {}), "input"),
    ("max_kernel_zero", MP, lambda: ([t(1, 2, 6, 6), 0], {}), "kernel_size"),
    ("max_kernel_triple", MP, lambda: ([t(1, 2, 6, 6), (2, 2, 2)], {}), "kernel_size"),
    ("max_stride_zero", MP, lambda: ([t(1, 2, 6, 6), 2, 0], {}), "stride"),
    ("max_pad_too_big", MP, lambda: ([t(1, 2, 6, 6), 2], dict(padding=2)), "padding"),
    ("max_negative_pad", MP, lambda: ([t(1, 2, 6, 6), 3], dict(padding=-1)), "padding"),
    ("max_dilation_zero", MP, lambda: ([t(1, 2, 6, 6), 2], dict(dilation=0)), "dilation"),
    ("max_window_too_big", MP, lambda: ([t(1, 2, 3, 3), 5], {}), ("kernel_size", "input")),
    ("max_float_kernel", MP, lambda: ([t(1, 2, 6, 6), 2.0], {}), "kernel_size"),
    ("max_empty_channels", MP, lambda: ([t(1, 0, 6, 6), 2], {}), "input"),
    ("avg_pad_too_big", AP, lambda: ([t(1, 2, 6, 6), 3], dict(padding=2)), "padding"),
    ("avg_divisor_zero", AP, lambda: ([t(1, 2, 6, 6), 2], dict(divisor_override=0)), "divisor_override"),
    ("avg_stride_zero", AP, lambda: ([t(1, 2, 6, 6), 2, 0], {}), "stride"),
    ("avg_rank2", AP, lambda: ([t(6, 6), 2], {}), "input"),
    ("aap_rank2", AAP, lambda: ([t(6, 6), 2], {}), "input"),
    ("aap_negative", AAP, lambda: ([t(1, 2, 6, 6), -1], {}), "output_size"),
    ("aap_triple", AAP, lambda: ([t(1, 2, 6, 6), (1, 2, 3)], {}), "output_size"),
    ("aap_numpy_size", AAP, lambda: ([t(1, 2, 6, 6), np.int64(2)], {}), "output_size"),
    ("aap_empty_spatial", AAP, lambda: ([t(1, 2, 0, 6), 2], {}), "input"),
    ("conv_channels", CONV, lambda: ([t(1, 3, 6, 6), t(4, 2, 3, 3)], {}), ("input", "weight")),
    ("conv_groups_not_dividing", CONV, lambda: ([t(1, 4, 6, 6), t(3, 2, 3, 3)], dict(groups=2)),
     ("weight", "groups")),
    ("conv_groups_zero", CONV, lambda: ([t(1, 4, 6, 6), t(4, 2, 3, 3)], dict(groups=0)), "groups"),
    ("conv_same_strided", CONV, lambda: ([t(1, 3, 6, 6), t(4, 3, 3, 3)], dict(padding="same", stride=2)),
     "padding"),
    ("conv_bad_padding_str", CONV, lambda: ([t(1, 3, 6, 6), t(4, 3, 3, 3)], dict(padding="full")), "padding"),
    ("conv_negative_padding", CONV, lambda: ([t(1, 3, 6, 6), t(4, 3, 3, 3)], dict(padding=-1)), "padding"),
    ("conv_stride_zero", CONV, lambda: ([t(1, 3, 6, 6), t(4, 3, 3, 3)], dict(stride=0)), "stride"),
    ("conv_stride_triple", CONV, lambda: ([t(1, 3, 6, 6), t(4, 3, 3, 3)], dict(stride=(1, 1, 1))), "stride"),
    ("conv_kernel_too_big", CONV, lambda: ([t(1, 3, 2, 2), t(4, 3, 3, 3)], {}), ("input", "weight")),
    ("conv_bias_size", CONV, lambda: ([t(1, 3, 6, 6), t(4, 3, 3, 3), t(5)], {}), "bias"),
    ("conv_dtype_mismatch", CONV, lambda: ([t(1, 3, 6, 6), t(4, 3, 3, 3, dtype=torch.float32)], {}), "weight"),
    ("conv_rank2", CONV, lambda: ([t(6, 6), t(4, 3, 3, 3)], {}), "input"),
    ("conv_weight_rank3", CONV, lambda: ([t(1, 3, 6, 6), t(4, 3, 3)], {}), "weight"),
    ("linear_features", LIN, lambda: ([t(5, 4), t(3, 5)], {}), ("input", "weight")),
    ("linear_bias_size", LIN, lambda: ([t(5, 4), t(3, 4), t(4)], {}), "bias"),
    ("linear_bias_too_many_dims", LIN, lambda: ([t(5, 4), t(3, 4), t(1, 1, 3)], {}), "bias"),
    ("linear_dtype_mismatch", LIN, lambda: ([t(5, 4), t(3, 4, dtype=torch.float32)], {}), "weight"),
    ("linear_0d", LIN, lambda: ([t(), t(3, 4)], {}), "input"),
    ("linear_weight_1d_with_bias", LIN, lambda: ([t(5, 4), t(4), t()], {}), "weight"),
    ("mm_inner", MM, lambda: ([t(5, 4), t(3, 3)], {}), ("a", "b")),
    ("mm_0d", MM, lambda: ([t(), t(3, 3)], {}), ("a", "b")),
    ("mm_batch_mismatch", MM, lambda: ([t(2, 5, 4), t(3, 4, 2)], {}), ("a", "b")),
    ("xe_target_oob", XE, lambda: ([t(3, 5), idx(0, 5, 1)], {}), "target"),
    ("xe_target_negative", XE, lambda: ([t(3, 5), idx(0, -1, 1)], {}), "target"),
    ("xe_target_batch", XE, lambda: ([t(3, 5), idx(0, 1)], {}), "target"),
    ("xe_reduction", XE, lambda: ([t(3, 5), idx(0, 1, 2)], dict(reduction="avg")), "reduction"),
    ("xe_smoothing_above_one", XE, lambda: ([t(3, 5), idx(0, 1, 2)], dict(label_smoothing=1.5)), "label_smoothing"),
    ("xe_weight_size", XE, lambda: ([t(3, 5), idx(0, 1, 2)], dict(weight=t(4))), "weight"),
    ("xe_weight_requires_grad", XE, lambda: ([t(3, 5), idx(0, 1, 2)], dict(weight=t(5, grad=True))), "weight"),
    ("xe_ignore_index_float", XE, lambda: ([t(3, 5), idx(0, 1, 2)], dict(ignore_index=1.5)), "ignore_index"),
    ("xe_int16_target", XE, lambda: ([t(3, 5), idx(0, 1, 2, dtype=torch.int16)], {}), "target"),
    ("xe_1d_target_size", XE, lambda: ([t(5), idx(0, 1)], {}), "target"),
    ("xe_prob_ignore_index", XE, lambda: ([t(3, 5), prob(3, 5)], dict(ignore_index=1)), ("ignore_index", "target")),
    ("xe_prob_int_target", XE, lambda: ([t(3, 5), torch.ones(3, 5, dtype=torch.int64)], {}), "target"),
    # regression: uint8 targets where PyTorch takes int64 only
    ("xe_uint8_4d", XE, lambda: ([t(2, 5, 2, 2), torch.zeros(2, 2, 2, dtype=torch.uint8)], {}), "target"),
    ("xe_uint8_weighted_smoothing_mean", XE, lambda: ([t(3, 5), idx(0, 1, 2, dtype=torch.uint8)],
                                                      dict(weight=t(5).abs(), label_smoothing=0.1)), "target"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_call_raises_like_torch(case):
    _, (torch_fn, our_fn), make, names = case
    args, kwargs = make()
    check_bad(torch_fn, our_fn, args, kwargs, names)


# ----------------------------------------------------------------------------- triton (interpreter: tiny)
TRITON = [
    ("max", MP, lambda: ([t(1, 2, 5, 5, dtype=torch.float32, grad=True), 3, 2, 1], dict(ceil_mode=True))),
    ("avg", AP, lambda: ([t(1, 2, 5, 5, dtype=torch.float32, layout="cl"), 2], dict(count_include_pad=False))),
    ("aap", AAP, lambda: ([t(2, 5, 4, dtype=torch.float32), (None, 3)], {})),
    ("conv", CONV, lambda: ([t(1, 2, 5, 5, dtype=torch.float32), t(2, 2, 3, 3, dtype=torch.float32),
                             t(4, dtype=torch.float32)[::2]], dict(padding="same"))),
    ("linear", LIN, lambda: ([t(3, 4, dtype=torch.float32), t(2, 4, dtype=torch.float32),
                              t(1, 2, dtype=torch.float32)], {})),
    ("mm_vec", MM, lambda: ([t(4, dtype=torch.float32), t(4, 3, dtype=torch.float32)], {})),
    ("xe", XE, lambda: ([t(3, 5, dtype=torch.float32, grad=True), idx(0, 4, 2)], dict(label_smoothing=0.1))),
]


@pytest.mark.parametrize("call", [
    lambda: ops.cross_entropy(t(5), torch.tensor(3)),                      # unbatched 1-D logits
    lambda: ops.cross_entropy(t(5), prob(1, 5)[0]),                            # unbatched probability targets
], ids=["unbatched_logits", "unbatched_probability_targets"])
def test_cross_entropy_scope_is_batched_logits(call):
    """Deliberately narrower than PyTorch (issue #5): only [N, C, ...] logits (class indices or class
    probabilities); unbatched 1-D logits raise a clear error instead of a silently different result."""
    with pytest.raises((ValueError, TypeError), match="'input'|'target'"):
        call()


@pytest.mark.parametrize("case", TRITON, ids=[c[0] for c in TRITON])
def test_triton_matches_torch(case):
    if "triton" not in pyimgcls.available_backends():
        pytest.skip("triton backend unavailable")
    _, (torch_fn, our_fn), make = case
    args, kwargs = make()
    check_good(torch_fn, our_fn, args, kwargs, backend="triton", device=device_for("triton"))


# ----------------------------------------------------------------------------- nn modules
SAME_SIGNATURE = ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "CrossEntropyLoss", "ReLU", "ReLU6"]
SAME_SIGNATURE += ["SiLU", "Hardswish", "Sigmoid", "Hardsigmoid"]


@pytest.mark.parametrize("name", SAME_SIGNATURE)
def test_module_signature_identical(name):
    assert (inspect.signature(getattr(nn, name).__init__)
            == inspect.signature(getattr(torch.nn, name).__init__))


@pytest.mark.parametrize("name", ["Linear", "Conv2d"])
def test_module_signature_adds_only_activation(name):
    ours = inspect.signature(getattr(nn, name).__init__).parameters
    theirs = inspect.signature(getattr(torch.nn, name).__init__).parameters
    assert ours["activation"].default is None
    assert [p for p in ours if p != "activation"] == list(theirs)
    for p, param in theirs.items():
        assert ours[p].default == param.default, p


MODULES = [
    ("Linear", (5, 3), {}, lambda: t(2, 5, dtype=torch.float32)),
    ("Linear", (5, 3, False), {}, lambda: t(4, 2, 5, dtype=torch.float32)),
    ("Conv2d", (4, 6, 3), dict(stride=2, padding=1, groups=2, bias=False), lambda: t(2, 4, 7, 7, dtype=torch.float32)),
    ("Conv2d", (3, 4, (3, 2)), dict(padding="same", dilation=2), lambda: t(2, 3, 6, 6, dtype=torch.float32)),
    # regression: padding_mode other than "zeros" was rejected
    ("Conv2d", (3, 4, 3), dict(padding=1, padding_mode="reflect"), lambda: t(2, 3, 6, 6, dtype=torch.float32)),
    ("Conv2d", (3, 4, 3), dict(padding=(1, 2), padding_mode="circular"), lambda: t(3, 6, 6, dtype=torch.float32)),
    ("Conv2d", (3, 4, 2), dict(padding="same", padding_mode="replicate"), lambda: t(1, 3, 5, 5, dtype=torch.float32)),
    ("MaxPool2d", (3,), dict(stride=2, padding=1, ceil_mode=True, return_indices=True),
     lambda: t(2, 3, 7, 7, dtype=torch.float32)),
    ("AvgPool2d", (3, 2, 1, True, False, 2), {}, lambda: t(2, 3, 7, 7, dtype=torch.float32)),
    ("AdaptiveAvgPool2d", ((None, 3),), {}, lambda: t(2, 3, 7, 7, dtype=torch.float32)),
    ("ReLU", (), {}, lambda: t(2, 3, dtype=torch.float32)),
    ("ReLU6", (), {}, lambda: 4 * t(2, 3, dtype=torch.float32)),
    ("SiLU", (), {}, lambda: 4 * t(2, 3, dtype=torch.float32)),
    ("Hardswish", (), {}, lambda: 4 * t(2, 3, dtype=torch.float32)),
    ("Sigmoid", (), {}, lambda: 4 * t(2, 3, dtype=torch.float32)),
    ("Hardsigmoid", (), {}, lambda: 4 * t(2, 3, dtype=torch.float32)),
]


@pytest.mark.parametrize("case", MODULES, ids=[f"{c[0]}-{i}" for i, c in enumerate(MODULES)])
def test_module_matches_torch(case):
    name, args, kwargs, make_input = case
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(*args, **kwargs)
    torch.manual_seed(0)
    ours = getattr(nn, name)(*args, **kwargs)
    assert isinstance(ours, getattr(torch.nn, name))
    assert repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():  # same initialisation from the same seed
        assert torch.equal(ours.state_dict()[k], v), k
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = make_input()
    with pyimgcls.use_backend("cpu"):
        got = ours(x)
    _assert_same(ref(x), got, x.dtype, name)


@pytest.mark.parametrize("kwargs", [dict(weight=torch.rand(5) + 0.5, ignore_index=2, reduction="sum",
                                         label_smoothing=0.15), dict(), dict(reduction="none")])
def test_cross_entropy_loss_module(kwargs):
    ref = torch.nn.CrossEntropyLoss(**kwargs)
    ours = nn.CrossEntropyLoss(**kwargs)
    assert repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x, target = t(4, 5, dtype=torch.float32), idx(0, 2, 4, 1)
    with pyimgcls.use_backend("cpu"):
        got = ours(x, target)
    _assert_same(ref(x, target), got, x.dtype, "CrossEntropyLoss")


def test_cross_entropy_loss_legacy_arguments():
    """torch.nn's positional order (weight, size_average, ignore_index, ...) and its deprecated flags."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = nn.CrossEntropyLoss(None, None, 3)
        legacy = nn.CrossEntropyLoss(size_average=False)
    assert ours.ignore_index == 3 and ours.reduction == "mean"
    assert legacy.reduction == "sum"


def test_module_activation_extension():
    lin = nn.Linear(4, 3, activation="relu")
    conv = nn.Conv2d(2, 3, 3, activation="relu6")
    assert "activation='relu'" in repr(lin) and "activation='relu6'" in repr(conv)
    assert list(lin.state_dict()) == ["weight", "bias"]
    with pytest.raises(ValueError, match="activation"):
        nn.Linear(4, 3, activation="gelu")


# ----------------------------------------------------------------------------- backend selection
def test_backend_selection_api():
    assert pyimgcls.get_backend() == "auto"
    names = pyimgcls.available_backends()
    assert isinstance(names, list) and names[-2:] == ["cpu", "torch"]
    with pyimgcls.use_backend("torch") as name:
        assert name == "torch" and pyimgcls.get_backend() == "torch"
        with pyimgcls.use_backend("cpu"):
            assert pyimgcls.get_backend() == "cpu"
        assert pyimgcls.get_backend() == "torch"
    assert pyimgcls.get_backend() == "auto"
    with pytest.raises(RuntimeError), pyimgcls.use_backend("cpu"):
        raise RuntimeError("the context manager must restore the backend on an exception")
    assert pyimgcls.get_backend() == "auto"
    pyimgcls.set_backend("cpu")
    assert pyimgcls.get_backend() == "cpu"
    pyimgcls.set_backend("auto")
    for bad in ("gpu", None, 3):
        with pytest.raises(ValueError, match="backend"):
            pyimgcls.set_backend(bad)
        with pytest.raises(ValueError, match="backend"):
            with pyimgcls.use_backend(bad):
                pass
    assert pyimgcls.get_backend() == "auto"


def test_backend_that_cannot_serve_the_device_raises():
    if pyimgcls._backend.cuda_backend_ready():
        pytest.skip("a GPU is visible")
    x = t(1, 2, 4, 4, dtype=torch.float32)
    with pyimgcls.use_backend("cuda"), pytest.raises(RuntimeError, match="cuda"):
        ops.max_pool2d(x, 2)


# ----------------------------------------------------------------------------- batch_norm
BN_SHAPES = [(4, 3), (4, 3, 5), (2, 3, 4, 5), (2, 3, 2, 2, 2), (1, 3, 1, 1), (1, 3), (0, 3, 2, 2), (1, 3, 2, 2)]


@pytest.mark.parametrize("shape", BN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("stats", [True, False], ids=["stats", "nostats"])
def test_batch_norm_matches_torch(shape, training, affine, stats):
    """ops.batch_norm accepts and rejects exactly what F.batch_norm does (ranks, N*H*W == 1 in
    training, eval without running statistics, empty batches) and agrees in value, strides and the
    updated running statistics."""
    g = torch.Generator().manual_seed(11)
    C = shape[1]
    x = torch.randn(*shape, generator=g, dtype=F64)
    w = torch.randn(C, generator=g, dtype=F64) if affine else None
    b = torch.randn(C, generator=g, dtype=F64) if affine else None
    rm = torch.randn(C, generator=g, dtype=F64) if stats else None
    rv = torch.rand(C, generator=g, dtype=F64) + 0.5 if stats else None
    rm2, rv2 = (rm.clone(), rv.clone()) if stats else (None, None)
    try:
        ref = F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)
    except Exception:
        with pyimgcls.use_backend("cpu"), pytest.raises((ValueError, TypeError, RuntimeError)):
            ops.batch_norm(x, rm2, rv2, w, b, training, 0.1, 1e-5)
        return
    with pyimgcls.use_backend("cpu"):
        out = ops.batch_norm(x, rm2, rv2, w, b, training, 0.1, 1e-5)
    assert out.shape == ref.shape and out.stride() == ref.stride()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    if stats:
        torch.testing.assert_close(rm2, rm, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rv2, rv, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- nn constructors (issue #15)
# Every module of pyimgcls.nn against its torch.nn twin of the same name. Signatures: every torch
# argument with its name, position, kind and default (a positional call binds as in torch); ours may
# only add keyword-only arguments with defaults (activation=).
NN_MODULES = sorted(n for n in dir(nn) if isinstance(getattr(nn, n), type)
                    and issubclass(getattr(nn, n), torch.nn.Module))
# Twins of torchvision.ops modules, not torch.nn ones (their signatures: tests/test_se.py).
TORCHVISION_TWINS = {"SqueezeExcitation", "StochasticDepth"}
TORCH_NN_MODULES = [n for n in NN_MODULES if n not in TORCHVISION_TWINS]
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def test_nn_exports_every_module():
    assert NN_MODULES == sorted(nn.__all__)


@pytest.mark.parametrize("name", TORCH_NN_MODULES)
def test_module_accepts_every_torch_constructor_argument(name):
    """Regression: nn.BatchNorm2d rejected torch 2.13's keyword-only bias=, and nn.Linear / nn.Conv2d /
    nn.BatchNorm2d put activation= among torch's positional arguments (torch.nn.Linear(5, 3, True,
    "cpu") passed "cpu" as our activation)."""
    if not hasattr(torch.nn, name):
        pytest.skip(f"nn.{name} is ours alone (no torch.nn twin to conform to)")
    ours = inspect.signature(getattr(nn, name).__init__).parameters
    theirs = inspect.signature(getattr(torch.nn, name).__init__).parameters
    assert [p for p, v in ours.items() if v.kind in _POSITIONAL] == \
        [p for p, v in theirs.items() if v.kind in _POSITIONAL], "positional arguments differ from torch.nn's"
    for p, param in theirs.items():
        assert p in ours, f"{name}: missing torch argument {p!r}"
        assert ours[p].kind == param.kind, f"{name}({p}): {ours[p].kind} where torch has {param.kind}"
        assert ours[p].default is param.default or ours[p].default == param.default, \
            f"{name}({p}): default {ours[p].default!r}, torch {param.default!r}"
    for p in set(ours) - set(theirs):
        assert ours[p].kind == inspect.Parameter.KEYWORD_ONLY and ours[p].default is not inspect.Parameter.empty, \
            f"{name}: our extra argument {p!r} must be keyword-only with a default"


def _ce_target():
    return idx(0, 4, 2, 1)


# (module, args, kwargs): together the rows bind every argument of every torch.nn twin (checked
# below), each away from its default at least once, positionally and by keyword.
CTOR = [
    ("Linear", (5, 3), {}),
    ("Linear", (5, 3, False), {}),
    ("Linear", (5, 3, True, "cpu", F64), {}),
    ("Linear", (5, 3), dict(bias=False, device=torch.device("cpu"), dtype=F64)),
    ("Conv2d", (4, 6, 3), {}),
    ("Conv2d", (4, 6, (3, 2), 2, 1, (2, 1), 2, False, "reflect", "cpu", F64), {}),
    ("Conv2d", (4, 6, 3), dict(stride=1, padding="same", dilation=2, groups=2, bias=False)),
    ("Conv2d", (4, 6, 3), dict(stride=(1, 2), padding=(0, 1))),
    ("Conv2d", (4, 6, 3), dict(padding=(1, 2), padding_mode="circular", device="cpu", dtype=F64)),
    ("Conv2d", (4, 6, 2), dict(padding=1, padding_mode="replicate")),
    ("Conv2d", (4, 6, 3), dict(padding="valid", padding_mode="zeros")),
    ("BatchNorm2d", (3,), {}),
    ("BatchNorm2d", (3,), dict(bias=False)),
    ("BatchNorm2d", (3, 1e-3, 0.3, True, True, "cpu", F64), dict(bias=False)),
    ("BatchNorm2d", (3,), dict(eps=0.5, momentum=None)),
    ("BatchNorm2d", (3,), dict(affine=False)),
    ("BatchNorm2d", (3,), dict(affine=False, bias=False)),
    ("BatchNorm2d", (3,), dict(track_running_stats=False)),
    ("BatchNorm2d", (3,), dict(track_running_stats=False, affine=True, bias=False, device="cpu", dtype=F64)),
    ("MaxPool2d", (3,), {}),
    ("MaxPool2d", ((3, 2), (2, 1), (1, 0), (1, 2), True, True), {}),
    ("MaxPool2d", (2,), dict(stride=None, padding=1, dilation=2, return_indices=True, ceil_mode=True)),
    ("AvgPool2d", (3,), {}),
    ("AvgPool2d", ((3, 2), (2, 1), (1, 0), True, False, 5), {}),
    ("AvgPool2d", (3,), dict(stride=2, padding=1, ceil_mode=True, count_include_pad=False, divisor_override=2)),
    ("AdaptiveAvgPool2d", ((3, None),), {}),
    ("AdaptiveAvgPool2d", (), dict(output_size=1)),
    ("ReLU", (), {}),
    ("ReLU", (True,), {}),
    ("ReLU6", (), dict(inplace=True)),
    ("ReLU6", (False,), {}),
    ("SiLU", (), {}),
    ("SiLU", (True,), {}),
    ("Hardswish", (), dict(inplace=True)),
    ("Hardswish", (False,), {}),
    ("Sigmoid", (), {}),
    ("Hardsigmoid", (), {}),
    ("Hardsigmoid", (True,), {}),
    ("CrossEntropyLoss", (), {}),
    ("CrossEntropyLoss", (t(5, dtype=torch.float32).abs() + 0.5, None, 2, None, "sum", 0.2), {}),
    ("CrossEntropyLoss", (), dict(size_average=False, ignore_index=1)),
    ("CrossEntropyLoss", (), dict(reduce=False, label_smoothing=0.1)),
    ("CrossEntropyLoss", (), dict(weight=t(5, dtype=torch.float32, seed=1).abs() + 0.5, reduction="none")),
]


def test_constructor_table_binds_every_torch_argument():
    """The table above is complete: a torch argument without a row would go unchecked."""
    for name in (n for n in TORCH_NN_MODULES if hasattr(torch.nn, n)):   # modules with a torch.nn twin
        sig = inspect.signature(getattr(torch.nn, name))
        bound = set()
        for n, args, kwargs in CTOR:
            if n == name:
                bound |= set(sig.bind(*args, **kwargs).arguments)
        # (torch.nn.Sigmoid has Module's __init__(*args, **kwargs): nothing to bind there)
        named = {p for p, v in sig.parameters.items() if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)}
        assert bound == named, f"{name}: no row binds {named - bound}"


def _module_input(name, dtype, seed):
    shape = {"Linear": (4, 5), "CrossEntropyLoss": (4, 5), "BatchNorm2d": (4, 3, 5, 5)}.get(name, (2, 4, 7, 7))
    return t(*shape, dtype=dtype, seed=seed, grad=True)


def _call(name, m, x):
    y = m(x.clone(), _ce_target()) if name == "CrossEntropyLoss" else m(x.clone())  # clone: inplace=True
    return y if isinstance(y, tuple) else (y,)


@pytest.mark.parametrize("row", CTOR, ids=[f"{r[0]}-{i}" for i, r in enumerate(CTOR)])
def test_module_constructed_like_torch_behaves_like_torch(row):
    """Each constructor call builds the same parameters and buffers as torch.nn's (names, None
    registrations, shapes, dtypes, initial values from the same seed), the same repr, and the same
    outputs, gradients and buffer updates (BatchNorm: two training steps, then eval)."""
    name, args, kwargs = row
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # size_average / reduce are deprecated
        torch.manual_seed(0)
        ref = getattr(torch.nn, name)(*args, **kwargs)
        torch.manual_seed(0)
        ours = getattr(nn, name)(*args, **kwargs)
    assert isinstance(ours, getattr(torch.nn, name)) and repr(ours) == repr(ref)
    for what in ("_parameters", "_buffers"):
        r, o = getattr(ref, what), getattr(ours, what)
        assert list(o) == list(r), f"{what}: {list(o)} vs torch {list(r)}"
        for k, v in r.items():
            assert (o[k] is None) == (v is None), f"{what}[{k}] None-ness differs"
            if v is not None:
                assert o[k].dtype == v.dtype and o[k].device == v.device and torch.equal(o[k], v), k
    assert {k: getattr(ours, k) for k in ref.__dict__ if not k.startswith("_")} == \
        {k: v for k, v in ref.__dict__.items() if not k.startswith("_")}, "configuration attributes differ"
    params = [p for p in ref.parameters()]
    dtype = params[0].dtype if params else torch.float32
    modes = [True, True, False] if name == "BatchNorm2d" else [True]
    for step, training in enumerate(modes):
        ref.train(training), ours.train(training)
        x = _module_input(name, dtype, seed=3 + step)
        with pyimgcls.use_backend("cpu"):
            got = _call(name, ours, x)
            want = _call(name, ref, x)
            for g, w in zip(got, want):
                _assert_same(w, g, dtype, f"{name} step {step} forward")
            leaves = [x] + list(ref.parameters())
            out_w, out_g = want[0], got[0]
            gout = t(*out_w.shape, dtype=out_w.dtype, seed=9)
            rg = torch.autograd.grad(out_w, leaves, gout, allow_unused=True)
            gg = torch.autograd.grad(out_g, [x] + list(ours.parameters()), gout, allow_unused=True)
        for i, (r, g) in enumerate(zip(rg, gg)):
            assert (r is None) == (g is None), f"{name}: grad {i} presence differs"
            if r is not None:
                torch.testing.assert_close(g, r, rtol=5 * TOL[r.dtype], atol=5 * TOL[r.dtype], msg=f"grad {i}")
        for (k, b), (k2, b2) in zip(ref.named_buffers(), ours.named_buffers()):
            assert k == k2
            torch.testing.assert_close(b2, b, rtol=TOL[b.dtype] if b.is_floating_point() else 0,
                                       atol=TOL[b.dtype] if b.is_floating_point() else 0, msg=f"buffer {k}")


# ----------------------------------------------------------------------------- batch_norm numbers (issue #15)
class _Odd:
    """Neither a number nor comparable with one."""

    def __repr__(self):
        return "_Odd()"


# eps / momentum values with what torch 2.13 does with them (measured: accepted, or the exception type
# it raises); the test re-derives the verdict from torch on every run and compares ours with it, so this
# list is only the sample, never the expectation.
BN_NUMBERS = [-1.0, -1e-300, -0.0, 0.0, 1e-300, 1e-5, 0.5, 1.0, 2.0, 1e300, float("nan"), float("inf"),
              float("-inf"), 1, 0, -1, True, False, np.float32(0.1), np.float64(-1.0), np.float16(0.5),
              np.int8(1), np.bool_(True), torch.tensor(0.1), torch.tensor(-1.0), torch.tensor(1),
              torch.tensor(True), torch.tensor(0.5, dtype=torch.float16), torch.tensor(0.5 + 0j),
              torch.tensor(0.5 + 1j), torch.tensor([0.1]), torch.tensor([0.1, 0.2]),
              torch.tensor(0.1, requires_grad=True), torch.tensor(-1.0, requires_grad=True), None, "0.1", 0.5 + 0j,
              10 ** 400, np.array(0.1), _Odd()]


def _bn_call(fn, arg, value, training):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3, 2, 2, generator=g, dtype=F64)
    rm, rv = torch.randn(3, generator=g, dtype=F64), torch.rand(3, generator=g, dtype=F64) + 0.5
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn(x, rm, rv, t(3, seed=5), t(3, seed=6), training, **{arg: value})
    except Exception as e:  # noqa: BLE001 - the exception itself is the result compared
        return e, None
    return None, (out, rm, rv)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("arg", ["eps", "momentum"])
@pytest.mark.parametrize("value", BN_NUMBERS, ids=lambda v: type(v).__name__ + "_" + repr(v)[:20])
def test_batch_norm_numeric_argument_like_torch(value, arg, training):
    """eps and momentum are accepted or refused exactly as F.batch_norm: eps <= 0 in training / eps < 0
    in eval is a ValueError; momentum may be anything a float parses from (negative, > 1, NaN: PyTorch
    does not range-check it); 0-D tensors, NumPy and bool scalars parse; other types are TypeErrors.
    Ours raises an instance of PyTorch's exception class and names the argument; accepted values give
    PyTorch's output and running statistics. Regression: eps < 0 (and eps = 0 in training) returned NaN."""
    ref_err, ref = _bn_call(F.batch_norm, arg, value, training)
    with pyimgcls.use_backend("cpu"):
        err, got = _bn_call(ops.batch_norm, arg, value, training)
    if ref_err is not None:
        assert err is not None, f"PyTorch raises {type(ref_err).__name__}: {ref_err}; ours accepted"
        assert isinstance(err, type(ref_err)), f"ours {type(err).__name__}, PyTorch {type(ref_err).__name__}"
        assert arg in str(err), f"message does not name {arg!r}: {err}"
        return
    assert err is None, f"PyTorch accepts {arg}={value!r}; ours raised {err!r}"
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, equal_nan=True)


@pytest.mark.parametrize("eps", [-1.0, 0.0, -0.0, 1e-12, float("nan")])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm2d_module_eps_like_torch(eps, training):
    """Regression: nn.BatchNorm2d(10, eps=-1.0)(x) returned NaN where torch.nn raises ValueError."""
    x = t(4, 10, 3, 3, dtype=torch.float32, seed=7)
    ref, ours = torch.nn.BatchNorm2d(10, eps=eps), nn.BatchNorm2d(10, eps=eps)
    ref.train(training), ours.train(training)
    try:
        want = ref(x)
    except ValueError:
        with pytest.raises(ValueError, match="eps"):
            ours(x)
        return
    _assert_same(want, ours(x), x.dtype, f"eps={eps}")


E = torch.empty
# (name, factory) for empty inputs (running statistics hold values, so "untouched" is checkable):
# ATen returns input.clone() * weight[0] + bias[0] before checking
# anything else, so running statistics of any size and integer inputs are accepted there.
BN_EMPTY = [
    ("1d_stats0", lambda: (E(0), E(0), E(0), None, None)),
    ("1d_no_stats", lambda: (E(0), None, None, None, None)),
    ("1d_stats1", lambda: (E(0), torch.zeros(1), torch.ones(1), None, None)),
    ("1d_affine3", lambda: (E(0), E(0), E(0), t(3, dtype=torch.float32), t(3, dtype=torch.float32))),
    ("1d_weight_grad", lambda: (E(0), None, None, t(3, dtype=torch.float32, grad=True), None)),
    ("1d_input_grad", lambda: (E(0, requires_grad=True), None, None, None, t(2, dtype=torch.float32, grad=True))),
    ("1d_f64_weight", lambda: (E(0), None, None, t(3), t(3))),
    ("1d_f64", lambda: (E(0, dtype=F64), E(0, dtype=F64), E(0, dtype=F64), None, None)),
    ("1d_f16", lambda: (E(0, dtype=torch.float16), E(0), E(0), None, None)),
    ("1d_int64", lambda: (E(0, dtype=torch.int64), None, None, None, None)),
    ("1d_int_stats", lambda: (E(0), E(0, dtype=torch.int64), E(0, dtype=torch.int64), None, None)),
    ("2d_stats_wrong_size", lambda: (E(0, 3), torch.zeros(5), torch.ones(5), None, None)),
    ("2d_zero_channels", lambda: (E(2, 0), E(0), E(0), None, None)),
    ("2d_zero_channels_no_stats", lambda: (E(2, 0), None, None, None, None)),
    ("3d_zero_channels", lambda: (E(2, 0, 3), None, None, None, None)),
    ("4d_empty_spatial", lambda: (E(2, 3, 0, 4), t(3), t(3), None, None)),
    ("4d_channels_last", lambda: (E(0, 3, 2, 2).contiguous(memory_format=torch.channels_last), torch.zeros(3),
                                  torch.ones(3), t(3, dtype=torch.float32), t(3, dtype=torch.float32))),
    # refused by PyTorch too: one value per channel in training ([1, 0] counts 1), no weight[0]
    ("2d_one_row_zero_channels", lambda: (E(1, 0), None, None, None, None)),
    ("1d_weight_empty", lambda: (E(0), None, None, E(0), None)),
    ("1d_weight_2d", lambda: (E(0), None, None, torch.ones(2, 2), None)),
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", BN_EMPTY, ids=[c[0] for c in BN_EMPTY])
def test_batch_norm_empty_input_like_torch(case, training):
    """Regression: ops.batch_norm refused the empty 1-D input (and empty inputs with running statistics
    of another size) that F.batch_norm accepts. Same acceptance, shape, dtype, strides, autograd
    connection and untouched running statistics as PyTorch."""
    _, make = case
    ref_in, our_in = make(), make()
    try:
        ref = F.batch_norm(*ref_in[:3], weight=ref_in[3], bias=ref_in[4], training=training)
    except Exception:  # noqa: BLE001
        with pyimgcls.use_backend("cpu"), pytest.raises((ValueError, TypeError, RuntimeError),
                                                        match="input|weight|bias|running"):
            ops.batch_norm(*our_in[:3], weight=our_in[3], bias=our_in[4], training=training)
        return
    with pyimgcls.use_backend("cpu"):
        got = ops.batch_norm(*our_in[:3], weight=our_in[3], bias=our_in[4], training=training)
    assert (got.shape, got.dtype, got.stride(), got.requires_grad) == \
        (ref.shape, ref.dtype, ref.stride(), ref.requires_grad)
    for r, o in zip(ref_in[1:3], our_in[1:3]):
        assert r is None or torch.equal(o, r)
    if ref.requires_grad:
        leaves = [a for a in ref_in if a is not None and a.requires_grad]
        our_leaves = [a for a in our_in if a is not None and a.requires_grad]
        for r, g in zip(torch.autograd.grad(ref.sum(), leaves), torch.autograd.grad(got.sum(), our_leaves)):
            assert torch.equal(g, r)
