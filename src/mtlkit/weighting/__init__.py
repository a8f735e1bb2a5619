"""Weightings: how the per-task gradients (or losses) are combined into one update.

Gradient-based weightings (:class:`Weighting`) map the T x T Gramian of the task gradients to T
weights ``w``, the combined gradient being ``w @ J``; :class:`mtlkit.MultiTaskOptimizer` runs
any of them on one shared core. Loss-based weightings (:class:`LossWeighting`) map the losses
to one loss and need no per-task gradient.
"""

from mtlkit.weighting._base import LossWeighting, Weighting, check_gramian
from mtlkit.weighting.pcgrad import PCGrad

__all__ = ["LossWeighting", "PCGrad", "Weighting", "check_gramian"]
