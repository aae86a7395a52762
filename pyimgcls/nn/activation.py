"""Standalone activations. Where a ReLU follows a conv/linear/batch-norm, prefer the layer's fused
``activation=`` (one pass over memory instead of two); these exist for parity with torch.nn."""
import torch


class ReLU(torch.nn.ReLU):
    """torch.nn.ReLU (same arguments); pyimgcls.convert and fuse_for_inference fold it into the
    preceding layer's epilogue."""


class ReLU6(torch.nn.ReLU6):
    """torch.nn.ReLU6 (same arguments); foldable like ReLU."""
