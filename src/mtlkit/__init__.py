"""mtlkit: multi-task optimization primitives for PyTorch.

The public API is the names in ``__all__``; everything else is private.
"""

from mtlkit.contrastive import (
    ContrastivePair,
    SimCSELoss,
    group_ids,
    info_nce,
    mine_pairs,
    unsupervised_pairs,
)

__all__: list[str] = [
    "ContrastivePair",
    "SimCSELoss",
    "group_ids",
    "info_nce",
    "mine_pairs",
    "unsupervised_pairs",
]

__version__ = "0.1.0"
