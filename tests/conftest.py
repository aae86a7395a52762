"""Test configuration. TRITON_INTERPRET must be set before triton is first imported so the Triton
kernels run on CPU tensors through the interpreter (there is no GPU in CI)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import pyimgcls  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if pyimgcls._backend.cuda_backend_ready() or torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _reset_backend():
    pyimgcls.set_backend("auto")
    yield
    pyimgcls.set_backend("auto")


@pytest.fixture(autouse=True)
def _poison_outputs():
    """Fill every kernel output with NaN before the kernel runs, so unwritten elements fail."""
    from pyimgcls.ops import _alloc
    _alloc.set_poison(True)
    yield
    _alloc.set_poison(False)
