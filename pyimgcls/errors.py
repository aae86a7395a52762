"""Exception types raised for bad arguments.

Each subclasses both the natural Python exception and ``RuntimeError``, so code written against
PyTorch (which raises ``RuntimeError`` for most argument errors) and code that expects
``ValueError``/``TypeError`` both catch them. Messages always name the offending argument.
"""


class ArgumentValueError(ValueError, RuntimeError):
    """An argument has a bad shape, size or value."""


class ArgumentTypeError(TypeError, RuntimeError):
    """An argument has a bad dtype or type."""


class BackendError(RuntimeError):
    """The selected backend cannot serve these tensors (never silently replaced by another)."""
