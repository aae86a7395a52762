"""Eager fast path shared by the op families.

Measured reason for not always calling the registered custom ops: torch.library's Python autograd
wrapper costs ~65 us per forward call and ~140 us per forward with autograd recording on the CPU
(single thread, process time, e.g. a LeNet conv2 of 1x6x14x14: 42 us for the kernel alone, 110 us
through the custom op without grad, 181 us with grad). That overhead decides the speed of small
CNN layers. In plain eager mode the public functions therefore run the SAME kernel functions through
a bare ``torch.autograd.Function`` (or directly, when no gradient is recorded). Whenever anything
could observe or transform the call -- torch.compile tracing, fake or subclass tensors, dispatch or
function modes, functorch transforms -- they call the custom ops, which remain the registered,
traceable definition (opcheck, register_fake, torch.compile all go through them).

``ENABLED = False`` forces the custom ops everywhere (tests compare both paths bit for bit).
"""
from __future__ import annotations

import torch

ENABLED = True


def plain_eager(*tensors) -> bool:
    """True when the call may bypass the custom-op dispatcher (see the module docstring). Written as
    plain loops over module-level names: it runs on every op call."""
    if not ENABLED or torch.compiler.is_compiling():
        return False
    for t in tensors:
        if t is not None:
            # nn.Parameter is a plain tensor for dispatch (it disables __torch_function__); other
            # subclasses (fake, functional, user subclasses) go through the custom ops. So does a
            # functorch wrapper left over from a finished transform ("dead wrapper"): a plain-typed
            # tensor that Function.apply would unwrap, a step :func:`raw_apply` skips.
            cls = t.__class__
            if (cls is not _Tensor and cls is not _Parameter) or _is_functorch_wrapped(t):
                return False
    return _len_dispatch_stack() == 0 and not _function_mode_enabled() and _peek_interpreter() is None


_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter
_len_dispatch_stack = torch._C._len_torch_dispatch_stack
_function_mode_enabled = torch._C._is_torch_function_mode_enabled
_peek_interpreter = torch._C._functorch.peek_interpreter_stack
_is_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def raw_apply(function_cls):
    """``function_cls.apply`` without ``torch.autograd.Function.apply``'s Python wrapper, which only
    re-checks for functorch transforms and unwraps dead functorch wrappers (~2.3 us per call
    measured, single thread). Valid only where :func:`plain_eager` returned True for the tensors
    passed, which rules out both."""
    return super(torch.autograd.Function, function_cls).apply


def needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def once_differentiable(backward):
    """``backward`` wrapped in ``torch.autograd.function.once_differentiable``, for a backward that
    checks ``torch.is_grad_enabled()`` first and calls this only when it is true.

    Why not decorate the backward itself: grad mode is off during an ordinary backward pass, where
    the decorator only adds a ``no_grad`` block (~7 us per call measured, single thread, a sizable
    share of a small loss or layer). Grad mode is on only under ``create_graph=True``, and there the
    decorator's behaviour is kept exactly: a second differentiation raises instead of silently
    giving zero."""
    return torch.autograd.function.once_differentiable(backward)


def function(forward_impl, setup_context, backward):
    """A bare autograd.Function running ``forward_impl`` (the custom op's implementation) with the op's
    own ``setup_context`` and ``backward``. The backward picks implementations over backward custom
    ops with :func:`pick`. Integer outputs (e.g. pooling indices) are marked non-differentiable, as
    the custom-op machinery does."""

    once_backward = once_differentiable(backward)

    class EagerFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            out = forward_impl(*args)
            ctx.pyimgcls_eager = True
            setup_context(ctx, args, out)
            outs = out if isinstance(out, tuple) else (out,)
            ints = [t for t in outs if isinstance(t, torch.Tensor) and not t.is_floating_point()]
            if ints:
                ctx.mark_non_differentiable(*ints)
            return out

        @staticmethod
        def backward(ctx, *grads):
            if torch.is_grad_enabled():
                return once_backward(ctx, *grads)
            return backward(ctx, *grads)

    EagerFunction.__name__ = EagerFunction.__qualname__ = f"Eager_{forward_impl.__name__.lstrip('_')}"
    EagerFunction.raw_apply = raw_apply(EagerFunction)
    return EagerFunction


def pick(ctx, custom_op, impl):
    """The backward implementation to call: ``impl`` under the eager Function, else the custom op."""
    return impl if getattr(ctx, "pyimgcls_eager", False) else custom_op


def call(custom_op, eager_fn, impl, args, tensors):
    """Run one op: ``impl`` directly (plain eager, no gradient recorded), ``eager_fn`` (plain eager
    with autograd) or the registered ``custom_op`` (anything else)."""
    if plain_eager(*tensors):
        if needs_grad(*tensors):
            return eager_fn.raw_apply(*args)
        return impl(*args)
    return custom_op(*args)
