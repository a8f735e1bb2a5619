"""mtlkit: multi-task optimization primitives for PyTorch.

The public API is the names in ``__all__``; everything else is private.
"""

from mtlkit._smart_hf import hf_smart_inputs
from mtlkit.bregman import BregmanProximal
from mtlkit.smart import SmartLoss

__all__: list[str] = ["BregmanProximal", "SmartLoss", "hf_smart_inputs"]

__version__ = "0.1.0"
