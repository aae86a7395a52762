"""pyimgcls.explain: every layer's launches decided on meta tensors through the real op path."""
import json
import subprocess
import sys

import pytest
import torch

import pyimgcls
from pyimgcls import backends, nn as pnn
from pyimgcls._explain import COLUMNS, explain


def _passes(result, layer):
    return [r["pass"] for r in result if r["layer"] == layer]


# ids "on_<name>": a bare "cuda" keyword would make conftest skip the test (it explains, runs nothing)
@pytest.mark.parametrize("backend", ["cuda", "triton", "cpu", "torch"], ids=lambda b: f"on_{b}")
def test_resnet18_training_rows(backend):
    r = explain("resnet18", (2, 3, 64, 64), backend=backend, dtype=torch.float32)
    assert all(set(COLUMNS) <= set(row) for row in r)
    assert all(row["backend"] == backend for row in r)
    # the stem conv's input needs no gradient: no dgrad; every other conv has fwd, dgrad and wgrad
    assert sorted(_passes(r, "conv1")) == ["fwd", "wgrad"]
    for layer in ("layer1.0.conv1", "layer3.0.downsample.0", "layer4.1.conv2"):
        assert sorted(_passes(r, layer)) == ["dgrad", "fwd", "wgrad"]
    assert sorted(_passes(r, "fc")) == ["bgrad", "dgrad", "fwd", "wgrad"]
    if backend != "torch":   # the yardstick's cross-entropy is plain PyTorch, not a family kernel
        assert sorted(_passes(r, "loss")) == ["bwd", "fwd"]
    assert "stats" in _passes(r, "bn1")                 # training: running statistics updated
    # forward rows come first, in model order; backward rows after the loss, in reverse order
    layers = [row["layer"] for row in r if row["pass"] == "fwd"]
    assert layers[0] == "conv1" and layers[-1] == ("fc" if backend == "torch" else "loss")
    back = [row["layer"] for row in r if row["pass"] in ("dgrad", "wgrad")]
    assert back[0] == "fc" and back[-1] == "conv1"


def test_eval_has_forward_rows_only():
    r = explain("mobilenet_v2", (1, 3, 32, 32), training=False)
    assert {row["pass"] for row in r} == {"fwd"}
    assert not any(row["layer"] == "loss" for row in r)


def test_conv_flops_and_bytes():
    model = torch.nn.Sequential(pnn.Conv2d(6, 10, 3, stride=2, padding=1, groups=2, bias=False))
    r = explain(model, (3, 6, 17, 15), dtype=torch.float16)
    fwd = next(row for row in r if row["pass"] == "fwd" and row["op"] == "conv2d")
    OH, OW = 9, 8
    assert fwd["flops"] == 2 * 3 * 10 * OH * OW * 3 * 3 * 3
    x, w, out = 3 * 6 * 17 * 15, 10 * 3 * 3 * 3, 3 * 10 * OH * OW
    assert fwd["bytes"] == 2 * (x + w + out)
    wg = next(row for row in r if row["pass"] == "wgrad")
    assert wg["flops"] == fwd["flops"] and wg["bytes"] == 2 * (out + x + w)   # reads grad and x, writes dw
    # roofline: the larger of the compute and memory terms at the datasheet peaks
    from pyimgcls._explain import PEAKS
    p = PEAKS["h200"]
    fl = p["tensor"] if fwd["tensor_cores"] else p["fp32"]
    assert fwd["time_h200_us"] == pytest.approx(1e6 * max(fwd["flops"] / fl, fwd["bytes"] / p["bytes"]))


def test_original_model_untouched_and_recorder_removed():
    model = pyimgcls.models.lenet5()
    before = {k: (v.device, v.dtype, v.clone()) for k, v in model.state_dict().items()}
    explain(model, (2, 1, 32, 32), dtype=torch.bfloat16, channels_last=True)
    for k, v in model.state_dict().items():
        assert v.device == before[k][0] and v.dtype == before[k][1] and torch.equal(v, before[k][2])
    assert backends._recorder is None

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        explain(Broken(), (1, 3, 8, 8))
    assert backends._recorder is None
    # ops on real tensors are unaffected afterwards
    x = torch.randn(1, 1, 32, 32)
    assert model(x).shape == (1, 10)


@pytest.mark.parametrize("kwargs,match", [
    (dict(backend="nope"), "backend"),
    (dict(dtype=torch.float64), "float64"),
    (dict(input_shape=(3, 32, 32)), "input_shape"),
    (dict(input_shape=(0, 3, 32, 32)), "input_shape"),
])
def test_bad_arguments(kwargs, match):
    args = dict(model="resnet18", input_shape=(1, 3, 32, 32), backend="cuda")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        explain(**args)
    with pytest.raises(TypeError, match="model"):
        explain(42, (1, 3, 8, 8))


def test_cli_json_and_errors():
    run = lambda *a: subprocess.run([sys.executable, "-m", "pyimgcls", "explain", *a], capture_output=True, text=True)
    p = run("--model", "lenet5", "--batch-size", "4", "--dtype", "float32", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["meta"]["input_shape"] == [4, 1, 32, 32] and data["rows"]
    assert data["totals"]["flops"] == sum(r["flops"] for r in data["rows"])
    p = run("--model", "resnet18", "--batch-size", "2", "--image-size", "32", "--eval")
    assert p.returncode == 0 and "| layer" in p.stdout and "total" in p.stdout
    for bad in (["--model", "nope"], ["--model", "alexnet", "--image-size", "16"], ["--model", "resnet18", "--dtype", "float64"]):
        p = run(*bad)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (bad, p.stderr)


def _conv_rows(result, model, pred):
    """The conv rows of ``result`` whose module in ``model`` satisfies ``pred``."""
    mods = dict(model.named_modules())
    return [r for r in result if r["op"] == "conv2d" and pred(mods[r["layer"]])]


def test_resnet50_pointwise_convs_take_the_vectorised_tensor_core_kernel():
    """Issue #18 item 2: a [O, C, 1, 1] weight made channels_last has strides (C, 1, 1, 1); the
    launcher's stride checks ignore size-1 dims, so every 1x1 conv of resnet50 in the default NCHW /
    float16 set-up takes the 16-byte tensor-core path, forward and both backward products."""
    model = pyimgcls.models.resnet50()
    r = explain(model, (2, 3, 64, 64), backend="cuda", dtype=torch.float16)
    rows = _conv_rows(r, model, lambda m: m.kernel_size == (1, 1))
    assert len(rows) == 3 * 36   # 32 bottleneck 1x1 convs + 4 downsample convs, fwd + dgrad + wgrad
    for row in rows:
        assert row["tensor_cores"] and row["vectorized"], row
        assert "igemm" in row["kernel"] and ",vec>" in row["kernel"], row
    # the 3-channel stem cannot (3 channels are not 16 bytes); fp32 runs the SIMT kernel
    stem = [row for row in r if row["layer"] == "conv1"]
    assert stem and not any(row["vectorized"] for row in stem)
    r32 = explain(model, (2, 3, 64, 64), backend="cuda", dtype=torch.float32, training=False)
    assert all("simt" in row["kernel"] and not row["tensor_cores"] for row in r32 if row["op"] == "conv2d")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_mobilenet_v2_depthwise_backward_takes_the_depthwise_kernels(channels_last):
    """Issue #18 item 3: depthwise dgrad / wgrad run the direct depthwise kernels (not the 128x128
    implicit GEMM with N = 1 / M = 1); channels_last float16 takes the dgrad's 16-byte path."""
    model = pyimgcls.models.mobilenet_v2()
    r = explain(model, (2, 3, 64, 64), backend="cuda", dtype=torch.float16, channels_last=channels_last)
    dw = _conv_rows(r, model, lambda m: m.groups > 1 and m.groups == m.in_channels)
    passes = [row["pass"] for row in dw]
    assert passes.count("fwd") == passes.count("dgrad") == passes.count("wgrad") == 17
    for row in dw:
        kernel = row["kernel"]
        assert not row["tensor_cores"] and "igemm" not in kernel, row
        if row["pass"] == "fwd":
            assert kernel.startswith("conv2d_dw_fwd_kernel")
        else:
            assert kernel.startswith(f"conv2d_depthwise_{row['pass']}_kernel"), row
        if row["pass"] == "dgrad":
            assert row["vectorized"] == channels_last, row
    wgrad = [row for row in dw if row["pass"] == "wgrad"]
    assert all(row["ctas"] > 0 and row["plan"]["launches"] == 2 for row in wgrad)


@pytest.mark.parametrize("backend", ["cuda", "triton"], ids=lambda b: f"on_{b}")
def test_every_row_names_its_kernel_or_launcher(backend):
    r = explain("mobilenet_v2", (2, 3, 32, 32), backend=backend, dtype=torch.float16)
    assert all("no plan" not in row["kernel"] for row in r), [row for row in r if "no plan" in row["kernel"]]


def test_triton_depthwise_backward_and_tensor_cores():
    model = pyimgcls.models.mobilenet_v2()
    r = explain(model, (2, 3, 32, 32), backend="triton", dtype=torch.float16)
    dw = _conv_rows(r, model, lambda m: m.groups > 1 and m.groups == m.in_channels)
    assert {row["kernel"] for row in dw if row["pass"] == "dgrad"} == {"_conv2d_depthwise_dgrad_kernel"}
    assert {row["kernel"] for row in dw if row["pass"] == "wgrad"} == {"_conv2d_depthwise_wgrad_kernel"}
    assert not any(row["tensor_cores"] for row in dw)
    pw = _conv_rows(r, model, lambda m: m.kernel_size == (1, 1))
    assert pw and all(row["tensor_cores"] for row in pw)          # tl.dot on float16
    r32 = explain(model, (2, 3, 32, 32), backend="triton", dtype=torch.float32, training=False)
    assert not any(row["tensor_cores"] for row in r32)          # IEEE float32 dots
