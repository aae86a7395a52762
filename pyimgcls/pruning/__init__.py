"""pyimgcls.pruning: structured channel pruning that really shrinks the network.

``prune_channels(model, amount=0.5, criterion="l1", example_input=None)`` returns a smaller dense
copy of the model (our nn layers, no masks); ``architecture(model)`` gives its layer widths as plain
data and ``apply_architecture(model, arch)`` rebuilds them, which is what a pruned checkpoint records
(``pyimgcls prune``; ``pyimgcls.load_model`` reads it back). How channel dependencies are found:
``_trace.py``."""
from ._arch import apply_architecture, architecture
from ._prune import CRITERIA, prune_channels
from ._sparse24 import apply_masks, is_2_4, mask_2_4, prune_2_4, remove_masks, sparsity_report
from ._sparse24 import masks_of, plain_state_dict, recorded_2_4, restore_2_4

__all__ = ["prune_channels", "architecture", "apply_architecture", "CRITERIA"]
__all__ += ["prune_2_4", "remove_masks", "apply_masks", "mask_2_4", "is_2_4", "sparsity_report"]
__all__ += ["restore_2_4", "recorded_2_4", "masks_of", "plain_state_dict"]
