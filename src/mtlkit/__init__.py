"""mtlkit: multi-task optimization primitives for PyTorch.

The public API is the names in ``__all__``; everything else is private.
"""

from mtlkit.contrastive import (
    ContrastivePair,
    SimCSELoss,
    group_ids,
    info_nce,
    mine_pairs,
    unsupervised_pairs,
)
from mtlkit.surgery import PCGrad, SurgeryStats, pcgrad_weights

__all__ = [
    "ContrastivePair",
    "PCGrad",
    "SimCSELoss",
    "SurgeryStats",
    "group_ids",
    "info_nce",
    "mine_pairs",
    "pcgrad_weights",
    "unsupervised_pairs",
]
from .loader import MultiTaskLoader

__all__: list[str] = ["MultiTaskLoader"]
from mtlkit.lora_moe import LoRAMoE, LoRAMoEConfig, ParameterCounts

__all__: list[str] = ["LoRAMoE", "LoRAMoEConfig", "ParameterCounts"]
from mtlkit._smart_hf import hf_smart_inputs
from mtlkit.bregman import BregmanProximal
from mtlkit.smart import SmartLoss

__all__: list[str] = ["BregmanProximal", "SmartLoss", "hf_smart_inputs"]

__version__ = "0.1.0"
