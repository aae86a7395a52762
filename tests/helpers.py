"""Shared test helpers: backends to parametrize over, devices, and the ONE tolerance table."""
from __future__ import annotations

import contextlib
import ctypes
import os

import pytest
import torch

import pyimgcls

HAS_GPU = torch.cuda.is_available()

# (backend, pytest marks). "cuda" is marked and skipped without a GPU; "triton" runs on the GPU when
# there is one and through the interpreter on CPU tensors otherwise.
BACKENDS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("triton", id="triton"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.cuda),
]


def device_for(backend: str) -> torch.device:
    if backend == "cpu":
        return torch.device("cpu")
    if backend == "cuda":
        return torch.device("cuda")
    return torch.device("cuda") if HAS_GPU else torch.device("cpu")


def dtypes_for(backend: str):
    """Dtypes each backend serves (docs/architecture.md): no float64 in our CUDA kernels."""
    if backend == "cuda":
        return [torch.float32, torch.float16, torch.bfloat16]
    return [torch.float32, torch.float64, torch.float16, torch.bfloat16]


# The one tolerance table: (rtol, atol) against a float64 reference, for dtypes computed at full
# precision. float16/bfloat16 instead use LOW_PRECISION_FACTOR x PyTorch's own error (see
# assert_close_to_reference), with a floor of a few ulps for cases where PyTorch happens to be exact.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
}
LOW_PRECISION_FACTOR = 2.0
ULP_FLOOR = {torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}


def assert_close_to_reference(ours: torch.Tensor, ref64: torch.Tensor, torch_same_dtype: torch.Tensor | None = None,
                              scale: float | None = None) -> None:
    """Compare ``ours`` with a float64 reference. For float16/bfloat16, the error must be at most
    2x the error of PyTorch's own result at that dtype (``torch_same_dtype``)."""
    assert ours.shape == ref64.shape, (ours.shape, ref64.shape)
    ours64 = ours.detach().to(torch.float64).cpu()
    ref64 = ref64.detach().to(torch.float64).cpu()
    nan_ours, nan_ref = torch.isnan(ours64), torch.isnan(ref64)
    assert torch.equal(nan_ours, nan_ref), f"NaN pattern differs: {int((nan_ours != nan_ref).sum())} elements"
    ours64 = torch.where(nan_ours, 0.0, ours64)
    ref64 = torch.where(nan_ref, 0.0, ref64)
    if ours.dtype in TOLERANCES:
        rtol, atol = TOLERANCES[ours.dtype]
        if scale is not None:
            atol = atol * scale
        torch.testing.assert_close(ours64, ref64, rtol=rtol, atol=atol)
        return
    assert torch_same_dtype is not None, "low-precision comparisons need PyTorch's own result"
    theirs = torch.where(nan_ref, 0.0, torch_same_dtype.detach().to(torch.float64).cpu())
    err_ours = (ours64 - ref64).abs().max().item() if ours64.numel() else 0.0
    err_torch = (theirs - ref64).abs().max().item() if ref64.numel() else 0.0
    mag = ref64.abs().max().item() if ref64.numel() else 0.0
    bound = LOW_PRECISION_FACTOR * err_torch + ULP_FLOOR[ours.dtype] * max(mag, 1.0)
    assert err_ours <= bound, f"max error {err_ours:.3g} > {LOW_PRECISION_FACTOR} x PyTorch's {err_torch:.3g} (+floor)"


def backend_ctx(backend: str):
    return pyimgcls.use_backend(backend)


def triton_slow() -> bool:
    """True when Triton runs through the (slow) interpreter: keep its shapes small."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@contextlib.contextmanager
def omp_threads(n: int):
    """The OpenMP thread count our kernels see (libgomp's ICV of this thread, which
    torch.set_num_threads does not reach), restored after; skips where libgomp is not loadable."""
    try:
        gomp = ctypes.CDLL("libgomp.so.1")
    except OSError:
        pytest.skip("the kernels' OpenMP runtime (libgomp) is not loadable here")
    before = gomp.omp_get_max_threads()
    gomp.omp_set_num_threads(n)
    try:
        assert gomp.omp_get_max_threads() == n
        yield
    finally:
        gomp.omp_set_num_threads(before)
