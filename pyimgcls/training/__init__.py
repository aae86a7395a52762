"""pyimgcls.training: the loop behind ``pyimgcls train`` / ``eval`` / ``predict`` (``loop.py``),
atomic checkpoints with full resume state (``checkpoint.py``), scikit-learn metrics and matplotlib
reports (``metrics.py``) and torchrun / DistributedDataParallel set-up (``distributed.py``)."""
from .checkpoint import atomic_save, load_checkpoint
from .loop import TrainingDiverged, evaluate_checkpoint, predict, train
from .metrics import classification_metrics

__all__ = ["train", "TrainingDiverged", "evaluate_checkpoint", "predict", "atomic_save", "load_checkpoint", "classification_metrics"]
