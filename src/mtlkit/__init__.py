"""mtlkit: multi-task optimization primitives for PyTorch.

The public API is the names in ``__all__``; everything else is private.
"""

from mtlkit.lora_moe import LoRAMoE, LoRAMoEConfig, ParameterCounts

__all__: list[str] = ["LoRAMoE", "LoRAMoEConfig", "ParameterCounts"]

__version__ = "0.1.0"
