"""pyimgcls.data: data sets for training (``datasets.py``) and batched on-device augmentation
(``augment.py``)."""
from .augment import Augment, batch_generator, normalize, standard_augment
from .datasets import (DATASETS, DataError, Dataset, FolderSplit, TensorSplit, load_dataset, load_image,
                       parse_spec, read_idx, split_validation)

__all__ = ["Augment", "batch_generator", "normalize", "standard_augment", "DATASETS", "DataError", "Dataset",
           "FolderSplit", "TensorSplit", "load_dataset", "load_image", "parse_spec", "read_idx", "split_validation"]
