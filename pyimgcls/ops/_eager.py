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

Higher-order and forward-mode autograd (both paths alike; README "Autograd beyond first order"):
every op's backward checks ``torch.is_grad_enabled()`` first, which inside a backward pass is true
exactly under ``create_graph=True``. There the op either builds its gradient from differentiable
pieces (our own kernels wrapped in autograd Functions whose backward is again made of our kernels,
so the graph can be differentiated again) or, where that is not supported (batch norm), returns
gradients that are connected to the op's real inputs through :func:`not_twice_differentiable`, so
differentiating them raises at once instead of silently giving ``None`` or zero. Forward-mode AD
(dual tensors, ``torch.func.jvp``) is refused with a clear error by :func:`check_no_forward_ad`:
the custom ops have no forward-mode formula and would otherwise return a zero tangent.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as _fwad

ENABLED = True


def plain_eager(*tensors) -> bool:
    """True when the call may bypass the custom-op dispatcher (see the module docstring). Written as
    plain loops over module-level names: it runs on every op call."""
    if not ENABLED or _fwad._current_level >= 0 or torch.compiler.is_compiling():
        # inside a forward-AD dual level the call goes through check_no_forward_ad (in call())
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


def function(forward_impl, setup_context, backward):
    """A bare autograd.Function running ``forward_impl`` (the custom op's implementation) with the op's
    own ``setup_context`` and ``backward``, the same three functions the custom op is registered
    with, so higher-order behaviour is identical on both paths. The backward picks implementations
    over backward custom ops with :func:`pick`. Integer outputs (e.g. pooling indices) are marked
    non-differentiable, as the custom-op machinery does."""

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
    check_no_forward_ad(custom_op, tensors)
    return custom_op(*args)


# ----------------------------------------------------------------------------- beyond first order
def _op_name(op) -> str:
    name = getattr(op, "_qualname", None) or getattr(op, "__name__", str(op))
    return name.replace("::", ".")


def check_no_forward_ad(op, tensors) -> None:
    """Raise ``NotImplementedError`` when forward-mode AD would pass through ``op``: a dual tensor
    among ``tensors`` (``torch.autograd.forward_ad``) or a ``torch.func.jvp`` / ``jacfwd`` transform
    around the call. Without this the custom op returns a zero tangent, a silently wrong result.
    (Skipped while torch.compile traces: the functorch interpreter stack is not traceable.)"""
    if torch.compiler.is_compiling():
        return
    if _fwad._current_level >= 0:
        for t in tensors:
            if t is not None and _fwad.unpack_dual(t).tangent is not None:
                raise NotImplementedError(_FORWARD_AD_MSG.format(op=_op_name(op)))
    if _peek_interpreter() is not None:
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
        jvp = torch._C._functorch.TransformType.Jvp
        if any(i.key() == jvp for i in retrieve_all_functorch_interpreters()):
            raise NotImplementedError(_FORWARD_AD_MSG.format(op=_op_name(op)))


_FORWARD_AD_MSG = ("{op}: forward-mode automatic differentiation (torch.autograd.forward_ad, torch.func.jvp, "
                   "jacfwd, torch.func.hessian) is not supported by pyimgcls ops; use reverse mode "
                   "(torch.autograd.grad, .backward(), torch.autograd.functional.hessian)")


def graph_mode(*tensors) -> bool:
    """Inside a backward: True when the gradient must carry a graph (``create_graph=True``, so grad
    mode is on) and something it depends on requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _NotTwiceDifferentiable(torch.autograd.Function):
    """Identity on the gradients an op returned, with the op's real inputs as extra (unused) inputs,
    so that a graph through these gradients reaches a node that raises when it is differentiated.
    (``torch.autograd.function.once_differentiable`` attaches its error node to detached copies of
    the outputs, so ``torch.autograd.grad(g, inputs)`` never visits it and returns None.)"""

    @staticmethod
    def forward(name, count, *tensors):
        return tuple(t.clone() for t in tensors[:count])

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.op_name = inputs[0]

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(f"{ctx.op_name}: double backward (differentiating a gradient of this op, e.g. "
                           "create_graph=True then grad again, torch.func.hessian, a gradient penalty through "
                           "it) is not supported; see README 'Autograd beyond first order'")


def not_twice_differentiable(op_name: str, grads, inputs):
    """``grads`` (a tuple, None entries allowed) unchanged in value; when a graph is being built and
    any of ``inputs`` (the tensors the gradients depend on) requires grad, each gradient becomes the
    output of a node that raises on differentiation."""
    if not graph_mode(*inputs):
        return grads
    present = [g for g in grads if g is not None]
    outs = iter(_NotTwiceDifferentiable.apply(op_name, len(present), *present,
                                              *[t for t in inputs if t is not None and t.requires_grad]))
    return tuple(None if g is None else next(outs) for g in grads)
