"""Combining per-task gradients: the multi-task optimizer wrapper and PCGrad on it.

:class:`MultiTaskOptimizer` runs any :mod:`mtlkit.weighting` method on one shared core (the
per-task gradient buffers, their Gramian, the combination, the synchronisation across
processes); :class:`PCGrad` is it with the PCGrad weighting.
"""

from mtlkit.surgery._rows import UnsplittableModel
from mtlkit.surgery._stats import SurgeryStats
from mtlkit.surgery.optimizer import MultiTaskOptimizer
from mtlkit.surgery.pcgrad import PCGrad, pcgrad_weights

__all__ = ["MultiTaskOptimizer", "PCGrad", "SurgeryStats", "UnsplittableModel", "pcgrad_weights"]
