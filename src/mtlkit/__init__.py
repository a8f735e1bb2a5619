"""mtlkit: multi-task optimization primitives for PyTorch.

The public API is the names in ``__all__``; everything else is private.
"""

from .loader import MultiTaskLoader

__all__: list[str] = ["MultiTaskLoader"]

__version__ = "0.1.0"
