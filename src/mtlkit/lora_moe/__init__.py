"""A mixture of LoRA experts, one per task, on peft: the config, the routing layer, the model.

The roles follow peft's tuners: :mod:`~mtlkit.lora_moe.config` (:class:`LoRAMoEConfig`, the one
carrier of options), :mod:`~mtlkit.lora_moe.layer` (per-sample routing in the LoRA layers),
:mod:`~mtlkit.lora_moe.model` (:class:`LoRAMoE`) and :mod:`~mtlkit.lora_moe.io` (save and load).
"""

from mtlkit.lora_moe.config import LoRAMoEConfig, ParameterCounts
from mtlkit.lora_moe.model import LoRAMoE

__all__ = ["LoRAMoE", "LoRAMoEConfig", "ParameterCounts"]
