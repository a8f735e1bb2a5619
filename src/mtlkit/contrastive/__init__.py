"""In-batch contrastive learning (SimCSE / InfoNCE) and the mining of its training pairs.

:func:`info_nce` is the loss as a function and :class:`SimCSELoss` the module over it;
:func:`mine_pairs`, :func:`unsupervised_pairs` and :func:`group_ids` build its rows and ids.
"""

from mtlkit.contrastive._mining import mine_pairs
from mtlkit.contrastive._pairs import ContrastivePair, group_ids, unsupervised_pairs
from mtlkit.contrastive._simcse import SimCSELoss, info_nce

__all__ = [
    "ContrastivePair",
    "SimCSELoss",
    "group_ids",
    "info_nce",
    "mine_pairs",
    "unsupervised_pairs",
]
