"""mtlkit: multi-task optimization primitives for PyTorch.

The public API is the names in ``__all__``; everything else is private.
"""

__all__: list[str] = []

__version__ = "0.1.0"
