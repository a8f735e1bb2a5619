"""mtlkit: multi-task optimization primitives for PyTorch.

The public API is the names in ``__all__``; everything else is private.
"""

from mtlkit.surgery import PCGrad, SurgeryStats, pcgrad_weights

__all__ = [
    "PCGrad",
    "SurgeryStats",
    "pcgrad_weights",
]

__version__ = "0.1.0"
