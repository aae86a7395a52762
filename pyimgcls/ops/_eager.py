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

Every op family uses the same three pieces: :func:`function` builds the eager Function from the
op's implementation, ``setup_context`` and ``backward`` (those the custom op is registered with),
:func:`call` picks the route (implementation alone / eager Function / custom op) on every call, and
:func:`pick` picks the backward implementation. For ops where ``Function.apply`` itself is a visible
share of the call (a classification-sized cross-entropy: ~50 us in all), :func:`function` offers
``inputs=`` (non-tensor arguments passed as one tuple), ``results=`` (auxiliary outputs for the
backward kept out of autograd, see :func:`mark_auxiliary`), and :func:`pick` an in-place backward
implementation used when the graph is not retained. The private ``torch._C`` reads all live here.

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

import inspect

import torch
import torch.autograd.forward_ad as _fwad

ENABLED = True


def plain_eager(*tensors) -> bool:
    """True when the call may bypass the custom-op dispatcher (see the module docstring)."""
    return _plain(tensors)


def _plain(tensors) -> bool:
    # plain loops over module-level names: this runs on every op call
    if not ENABLED or _fwad._current_level >= 0 or _is_compiling():
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
_is_compiling = torch.compiler.is_compiling
_grad_enabled = torch.is_grad_enabled
_len_dispatch_stack = torch._C._len_torch_dispatch_stack
_function_mode_enabled = torch._C._is_torch_function_mode_enabled
_peek_interpreter = torch._C._functorch.peek_interpreter_stack
_is_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
# Inside a backward: whether the engine keeps the graph's saved tensors after it (retain_graph or
# create_graph); read by pick() for ops with an in-place backward implementation.
_keep_graph = torch._C._autograd._get_current_graph_task_keep_graph


def raw_apply(function_cls):
    """``function_cls.apply`` without ``torch.autograd.Function.apply``'s Python wrapper, which only
    re-checks for functorch transforms and unwraps dead functorch wrappers (~2.3 us per call
    measured, single thread). Valid only where :func:`plain_eager` returned True for the tensors
    passed, which rules out both."""
    return super(torch.autograd.Function, function_cls).apply


def needs_grad(*tensors) -> bool:
    if _grad_enabled():
        for t in tensors:
            if t is not None and t.requires_grad:
                return True
    return False


def function(forward_impl, setup_context, backward, *, inputs=None, results=None, name=None) -> "EagerFunction":
    """The eager twin of a custom op: a bare autograd.Function running ``forward_impl`` (the custom op's
    implementation) with the op's own ``setup_context`` and ``backward``, the same three functions the
    custom op is registered with, so higher-order behaviour is identical on both paths. The backward
    picks implementations over backward custom ops with :func:`pick`. Integer outputs (e.g. pooling
    indices) are marked non-differentiable, as the custom-op machinery does; the backward receives
    ``None`` (not a zero tensor allocated and filled on every backward, as on the custom-op path) as
    the gradient of a non-differentiable output, which every op ignores. Run it with :func:`call`.

    Two options cut the per-call cost of ``Function.apply`` for ops with many arguments or auxiliary
    outputs (measured on cross-entropy at N = 256, C = 10, one thread: ~2 us each of a ~45 us step):

    ``inputs=k``: only the first ``k`` arguments can ever require grad. ``apply`` then receives those
    ``k`` tensors and the whole argument tuple as one more argument, instead of parsing every
    non-tensor argument. ``ctx.needs_input_grad[:k]`` keeps its meaning, and the backward still
    returns one entry per argument, as for the custom op (the entries after the ``k``-th are None,
    which autograd drops).

    ``results=k``: the op's results are its first ``k`` outputs; the rest are auxiliaries for its
    backward (saved by ``setup_context``, which marks them with :func:`mark_auxiliary`). The eager Function
    returns the results only -- a tensor for ``k = 1`` -- so autograd never processes the
    auxiliaries, and :func:`call` returns the same from every route. The backward then receives the
    results' gradients only: give its parameters for the auxiliaries' gradients defaults (None), or
    the Function pads them (one more Python call per backward).

    ``name`` (default: the implementation's) names the Function ``Eager_<name>`` (its grad_fn
    ``Eager_<name>Backward``)."""
    sel = None if results is None else (0 if results == 1 else slice(0, results))
    pad = (None,) * _missing_grads(backward, results) if results is not None else ()
    # forward(ctx, *what apply received): the argument tuple, the implementation, setup_context, the
    # results, and the marking of integer results (pooling indices) -- the common case, one floating
    # result, costs one dtype test
    if inputs is None:
        def forward(ctx, *args):
            out = forward_impl(*args)
            setup_context(ctx, args, out)
            if sel is not None:
                out = out[sel]
            if out.__class__ is tuple or not out.dtype.is_floating_point:
                _mark_outputs(ctx, out)
            return out
    elif inputs == 1:
        def forward(ctx, _input, args):
            out = forward_impl(*args)
            setup_context(ctx, args, out)
            if sel is not None:
                out = out[sel]
            if out.__class__ is tuple or not out.dtype.is_floating_point:
                _mark_outputs(ctx, out)
            return out
    else:
        def forward(ctx, *tensors_and_args):
            args = tensors_and_args[-1]
            out = forward_impl(*args)
            setup_context(ctx, args, out)
            if sel is not None:
                out = out[sel]
            if out.__class__ is tuple or not out.dtype.is_floating_point:
                _mark_outputs(ctx, out)
            return out

    if pad:
        def backward_fn(ctx, *grads):
            return backward(ctx, *grads, *pad)
    else:
        backward_fn = backward
    name = f"Eager_{name or forward_impl.__name__.lstrip('_')}"
    cls = type(name, (torch.autograd.Function,),
               {"forward": staticmethod(forward), "backward": staticmethod(backward_fn)})
    cls.__qualname__ = name
    # pick() asks the ctx whether it belongs to an eager Function: a class attribute of the ctx type
    # autograd creates for this Function, so nothing is written per call
    cls._backward_cls.pyimgcls_eager = True
    cls._backward_cls.pyimgcls_results_only = sel is not None
    return EagerFunction(cls, inputs, sel)


def mark_auxiliary(ctx, *tensors) -> None:
    """For the ``setup_context`` of an op built with ``results=``: mark its auxiliary outputs
    non-differentiable. On the custom-op path they are outputs and must be marked; the eager Function
    never returns them, so there it skips the marking (and autograd's bookkeeping of it)."""
    if not getattr(ctx, "pyimgcls_results_only", False):
        ctx.mark_non_differentiable(*tensors)


def _mark_outputs(ctx, out) -> None:
    """Integer outputs are not differentiable; the backward gets None (not a zero tensor allocated and
    filled on every backward) as the gradient of any non-differentiable output."""
    if out.__class__ is tuple:
        ctx._materialize_non_diff_grads = False
        ints = [t for t in out if isinstance(t, torch.Tensor) and not t.dtype.is_floating_point]
        if ints:
            ctx.mark_non_differentiable(*ints)
    else:
        ctx.mark_non_differentiable(out)


def _missing_grads(backward, results: int) -> int:
    """How many parameters without a default ``backward(ctx, ...)`` has after the ``results`` gradients."""
    params = inspect.signature(backward).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 0
    required = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params)
    return max(0, required - 1 - results)


class EagerFunction:
    """What :func:`function` returns and :func:`call` runs: the op's eager ``torch.autograd.Function``
    (``function``; ``apply`` is its apply), its :func:`raw_apply` and the options. A plain object rather
    than the Function class because :func:`call` reads the options on every route, also while
    torch.compile traces it (Dynamo cannot read attributes of an autograd.Function class)."""

    def __init__(self, function_cls, inputs, results):
        self.function = function_cls
        self.apply = function_cls.apply
        self.raw_apply = raw_apply(function_cls)
        self.inputs = inputs
        self.results = results      # None, or the index / slice of the results among the op's outputs

    def __repr__(self):
        return f"<pyimgcls eager {self.function.__name__}>"


def pick(ctx, custom_op, impl, impl_in_place=None):
    """The backward implementation to call: ``impl`` under the eager Function, else the custom op.

    ``impl_in_place`` (optional, same arguments as ``impl``) may overwrite a tensor the op saved for
    backward and return it as the gradient. It is picked on the eager path when the engine frees the
    graph's saved tensors right after this backward (no ``retain_graph``/``create_graph``), so nothing
    can read that tensor again -- provided the op alone holds it (an auxiliary output under
    ``results=`` does). That saves an allocation and half the memory traffic, and AccumulateGrad can
    keep the buffer as ``.grad``. The custom op never mutates its inputs (its schema says so)."""
    if not getattr(ctx, "pyimgcls_eager", False):
        return custom_op
    if impl_in_place is not None and not _keep_graph():
        return impl_in_place
    return impl


def call(custom_op, eager_fn, impl, args, tensors):
    """Run one op: ``impl`` directly (plain eager, no gradient recorded), ``eager_fn`` (plain eager
    with autograd; what :func:`function` returned) or the registered ``custom_op`` (anything else).
    ``tensors``: the op's tensor arguments, which decide the route. With ``results=`` (see
    :func:`function`) every route returns the op's results only."""
    if _plain(tensors):
        if _grad_enabled():
            for t in tensors:
                if t is not None and t.requires_grad:
                    k = eager_fn.inputs
                    if k is None:
                        return eager_fn.raw_apply(*args)
                    if k == 1:
                        return eager_fn.raw_apply(args[0], args)
                    return eager_fn.raw_apply(*args[:k], args)
        out = impl(*args)
    else:
        check_no_forward_ad(custom_op, tensors)
        out = custom_op(*args)
    sel = eager_fn.results
    return out if sel is None else out[sel]


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
    if _grad_enabled():
        for t in tensors:
            if t is not None and t.requires_grad:
                return True
    return False


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
