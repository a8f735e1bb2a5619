"""mtlkit: multi-task optimization primitives for PyTorch.

The public API is the names in ``__all__``; everything else is private. transformers and peft
are imported only by the objects that need them (LoRAMoE, hf_smart_inputs).
"""

from mtlkit import weighting
from mtlkit._distributed import average_gradients
from mtlkit.contrastive import (
    ContrastivePair,
    SimCSELoss,
    group_ids,
    info_nce,
    mine_pairs,
    unsupervised_pairs,
)
from mtlkit.loader import MultiTaskLoader
from mtlkit.lora_moe import LoRAMoE, LoRAMoEConfig, ParameterCounts
from mtlkit.smart import BregmanProximal, SmartLoss, hf_smart_inputs
from mtlkit.surgery import (
    MultiTaskOptimizer,
    PCGrad,
    SurgeryStats,
    UnsplittableModel,
    pcgrad_weights,
)

__all__ = [
    "BregmanProximal",
    "ContrastivePair",
    "LoRAMoE",
    "LoRAMoEConfig",
    "MultiTaskLoader",
    "MultiTaskOptimizer",
    "PCGrad",
    "ParameterCounts",
    "SimCSELoss",
    "SmartLoss",
    "SurgeryStats",
    "UnsplittableModel",
    "average_gradients",
    "group_ids",
    "hf_smart_inputs",
    "info_nce",
    "mine_pairs",
    "pcgrad_weights",
    "unsupervised_pairs",
    "weighting",
]

__version__ = "0.1.0"
