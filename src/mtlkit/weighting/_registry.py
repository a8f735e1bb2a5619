"""Weightings by name: :data:`NAMES` and :func:`by_name`."""

from __future__ import annotations

from typing import Any

from mtlkit.weighting._base import LossWeighting, Weighting
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

_CLASSES: dict[str, type[Weighting] | type[LossWeighting]] = {
    "pcgrad": PCGrad,
    "upgrad": UPGrad,
    "dualproj": DualProj,
    "mgda": MGDA,
    "cagrad": CAGrad,
    "imtlg": IMTLG,
    "aligned_mtl": AlignedMTL,
    "config": ConFIG,
    "fairgrad": FairGrad,
    "nash_mtl": NashMTL,
    "gradvac": GradVac,
    "mean": Mean,
    "sum": Sum,
    "random": Random,
    "uncertainty": UncertaintyWeighting,
    "dwa": DWA,
    "famo": FAMO,
}

NAMES: tuple[str, ...] = tuple(_CLASSES)
"""The names :func:`by_name` accepts: the Gramian weightings, then the loss weightings."""


def by_name(name: str, **kwargs: Any) -> Weighting | LossWeighting:
    """A new weighting from its lower-case name in :data:`NAMES`, built with ``kwargs``.

    Every name builds with no option, at the paper's defaults; options are the class's own
    (e.g. ``by_name("cagrad", c=0.5)``). ``"uncertainty"`` needs ``num_tasks`` to be usable
    (its log-variances must exist when the optimizer is built); DWA and FAMO take it from
    the first losses when it is not given.

    Raises:
        ValueError: For a name not in :data:`NAMES` (the message lists them).

    Example:
        >>> from mtlkit.weighting import by_name
        >>> by_name("cagrad", c=0.5)
        CAGrad(c=0.5)
        >>> by_name("dwa", num_tasks=3)
        DWA(num_tasks=3, temperature=2.0, steps_per_epoch=None)
    """
    if not isinstance(name, str) or name not in _CLASSES:
        raise ValueError(f"name: expected one of {', '.join(NAMES)}, got {name!r}")
    return _CLASSES[name](**kwargs)
