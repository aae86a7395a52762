"""Write tests/data/torchvision_models.json: for every torchvision model that pyimgcls.models mirrors,
the ordered state_dict keys with their shapes, and the parameter count, at num_classes=1000.

tests/test_models.py compares pyimgcls.models against this file, so torchvision is not needed at
test time. How it was generated (torchvision 0.29.2, torch 2.13.0 CPU; regenerated with torchvision 0.28.0
when GoogLeNet ... Wide ResNet were added, and again when EfficientNet / MobileNetV3 were added, the
earlier models' entries unchanged each time):

    pip install --no-deps --target /tmp/tv torchvision
    python tools/make_torchvision_fixture.py --torchvision-path /tmp/tv

torchvision's compiled ops (nms, roi_align, ...) do not load against a torch they were not built for,
and ``import torchvision`` registers fake kernels for them at import time, which then fails. The models
are pure Python, so the script installs an empty ``torchvision`` package object pointing at the
installed sources and imports only ``torchvision.models``.

``--check`` additionally loads each torchvision model's (random) state_dict into the pyimgcls model
with strict=True and compares eval outputs on the cpu backend (a one-off verification; it needs the
pyimgcls native module built)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import types

MODELS = ["alexnet", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
          "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
          "densenet121", "densenet161", "densenet169", "densenet201", "mobilenet_v2",
          "googlenet", "inception_v3", "squeezenet1_0", "squeezenet1_1",
          "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
          "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
          "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
          "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_s", "efficientnet_v2_m",
          "efficientnet_v2_l", "mobilenet_v3_small", "mobilenet_v3_large"]
# Constructor arguments for torchvision's side: pyimgcls's googlenet / inception_v3 default to
# aux_logits=False (the parameter counts; what torchvision's pretrained builders return), and
# init_weights=False skips their slow truncated-normal initialisation (shapes do not depend on it).
TV_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": False},
             "inception_v3": {"aux_logits": False, "init_weights": False}}


def import_torchvision_models(path: str | None):
    if path:
        root = os.path.join(os.path.abspath(path), "torchvision")
        pkg = types.ModuleType("torchvision")
        pkg.__path__ = [root]
        sys.modules["torchvision"] = pkg
    import torchvision.models as tvm
    return tvm


def torchvision_version(path: str | None) -> str:
    if path:
        try:
            with open(os.path.join(path, "torchvision", "version.py")) as f:
                for line in f:
                    if line.startswith("__version__"):
                        return line.split("=", 1)[1].strip().strip("'\"")
        except OSError:
            pass
    return "unknown"


def describe(model) -> dict:
    return {
        "num_params": sum(p.numel() for p in model.parameters()),
        "state_dict": [[k, list(v.shape)] for k, v in model.state_dict().items()],
    }


def check(tvm, names) -> int:
    import torch

    import pyimgcls
    from pyimgcls import models

    failures = 0
    for name in names:
        torch.manual_seed(0)
        ref = getattr(tvm, name)(**TV_KWARGS.get(name, {})).eval()
        # Random BN statistics so the check exercises running_mean/var, not just the identity.
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        ours = models.get_model(name).eval()
        ours.load_state_dict(ref.state_dict(), strict=True)
        size = 64 if name == "alexnet" else max(32, models.input_spec(name)["min_size"])
        x = torch.randn(2, 3, size, size)
        with torch.no_grad(), pyimgcls.use_backend("cpu"):
            got = ours(x)
            want = ref(x)
        err = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-12)
        ok = err < 1e-4
        failures += not ok
        print(f"{name:14s} strict load ok, max rel err {err:.2e} {'ok' if ok else 'FAIL'}")
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torchvision-path", default=None,
                    help="directory holding an installed torchvision package (pip install --target DIR)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                                  "torchvision_models.json"))
    ap.add_argument("--check", action="store_true", help="also compare outputs with pyimgcls.models")
    args = ap.parse_args()

    tvm = import_torchvision_models(args.torchvision_path)
    import torch

    out = {"torchvision_version": torchvision_version(args.torchvision_path),
           "torch_version": torch.__version__, "num_classes": 1000, "models": {}}
    for name in MODELS:
        out["models"][name] = describe(getattr(tvm, name)(**TV_KWARGS.get(name, {})))
        print(f"{name:14s} {out['models'][name]['num_params']:>12,d} parameters, "
              f"{len(out['models'][name]['state_dict'])} state_dict entries")
    with open(args.out, "w") as f:
        json.dump(out, f, indent=None, separators=(",", ":"))
        f.write("\n")
    print("wrote", os.path.normpath(args.out))
    return check(tvm, MODELS) if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
