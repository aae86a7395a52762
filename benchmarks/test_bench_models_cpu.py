"""CPU model benchmark (pytest-benchmark): lenet5 and resnet18 on our ``cpu`` backend vs the same model
object and weights on the ``torch`` backend (PyTorch's own CPU kernels for every layer).

Not part of the test suite (pyproject's testpaths is ``tests``); run it explicitly:

    pytest benchmarks/test_bench_models_cpu.py --benchmark-group-by=group --benchmark-columns=min,median,rounds

Batch 8 x 3 x 32 x 32 (lenet5: 8 x 1 x 32 x 32), float32, 10 classes. Passes: ``fwd`` (eval mode,
no grad) and ``train_step`` (train mode: forward, pyimgcls CrossEntropyLoss, backward, SGD step).
Each (model, pass) is one group, so the two providers print side by side; ``extra_info`` carries
images/s (batch / median). Both sides use the same OpenMP thread count. On a machine shared with
other jobs compare the ``min`` column, or pin OMP_NUM_THREADS=1.
"""
import pytest
import torch

import pyimgcls
from pyimgcls import models, nn

BATCH = 8
MODELS = {"lenet5": 1, "resnet18": 3}  # name -> input channels


def _setup(name):
    torch.manual_seed(0)
    model = models.get_model(name, num_classes=10)
    x = torch.randn(BATCH, MODELS[name], 32, 32, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 10, (BATCH,), generator=torch.Generator().manual_seed(2))
    return model, x, target


@pytest.mark.parametrize("provider", ["pyimgcls-cpu", "torch"])
@pytest.mark.parametrize("pass_", ["fwd", "train_step"])
@pytest.mark.parametrize("name", list(MODELS))
def test_model_cpu(benchmark, name, pass_, provider):
    model, x, target = _setup(name)
    backend = "cpu" if provider == "pyimgcls-cpu" else "torch"
    # a benchmark of a wrong result is meaningless: check against the torch backend first
    model.eval()
    with torch.no_grad():
        with pyimgcls.use_backend("cpu"):
            ours = model(x)
        with pyimgcls.use_backend("torch"):
            ref = model(x)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())

    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def fwd():
        with torch.no_grad():
            return model(x)

    def train_step():
        loss = loss_fn(model(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    model.train(pass_ == "train_step")
    fn = fwd if pass_ == "fwd" else train_step
    benchmark.group = f"{name} {pass_} N={BATCH}"
    benchmark.extra_info.update(threads=torch.get_num_threads(), batch=BATCH)
    with pyimgcls.use_backend(backend):
        benchmark(fn)
    benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats.stats.median
