"""Weightings: how the per-task gradients (or losses) are combined into one update.

Gradient-based weightings (:class:`Weighting`) map the T x T Gramian of the task gradients to T
weights ``w``, the combined gradient being ``w @ J``; :class:`mtlkit.MultiTaskOptimizer` runs
any of them on one shared core. Loss-based weightings (:class:`LossWeighting`) map the losses
to one loss and need no per-task gradient. :func:`by_name` builds either from its name in
:data:`NAMES`.
"""

from mtlkit.weighting._base import LossWeighting, Weighting, check_gramian
from mtlkit.weighting._registry import NAMES, by_name
from mtlkit.weighting.aligned_mtl import AlignedMTL
from mtlkit.weighting.cagrad import CAGrad
from mtlkit.weighting.config import ConFIG
from mtlkit.weighting.dualproj import DualProj
from mtlkit.weighting.dwa import DWA
from mtlkit.weighting.fairgrad import FairGrad
from mtlkit.weighting.famo import FAMO
from mtlkit.weighting.gradvac import GradVac
from mtlkit.weighting.imtlg import IMTLG
from mtlkit.weighting.mean import Mean
from mtlkit.weighting.mgda import MGDA
from mtlkit.weighting.nash_mtl import NashMTL
from mtlkit.weighting.pcgrad import PCGrad
from mtlkit.weighting.random import Random
from mtlkit.weighting.sum import Sum
from mtlkit.weighting.uncertainty import UncertaintyWeighting
from mtlkit.weighting.upgrad import UPGrad

__all__ = [
    "DWA",
    "FAMO",
    "IMTLG",
    "MGDA",
    "NAMES",
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "FairGrad",
    "GradVac",
    "LossWeighting",
    "Mean",
    "NashMTL",
    "PCGrad",
    "Random",
    "Sum",
    "UPGrad",
    "UncertaintyWeighting",
    "Weighting",
    "by_name",
    "check_gramian",
]
