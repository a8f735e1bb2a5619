"""The rows of the paper's Table 1 as sets of flags, and the paper's numbers beside them.

A preset only sets flag defaults: any flag given on the command line wins over it.
"""

from __future__ import annotations

from typing import Any

_CE_INTERLEAVED: dict[str, Any] = {"encoding": "cross", "schedule": "interleaved"}

PRESETS: dict[str, dict[str, Any]] = {
    "baseline": {"encoding": "separate", "schedule": "sequential"},
    "ce": {"encoding": "cross", "schedule": "sequential"},
    "ce-interleaved": dict(_CE_INTERLEAVED),
    "ce-interleaved-surgery": {**_CE_INTERLEAVED, "surgery": True},
    "ce-interleaved-smart": {**_CE_INTERLEAVED, "smart_weight": 1.0},
    "ce-interleaved-contrastive": {**_CE_INTERLEAVED, "contrastive": True},
    "ce-interleaved-clip": {**_CE_INTERLEAVED, "clip_norm": 1.0},
    "ce-interleaved-clip-contrastive": {**_CE_INTERLEAVED, "clip_norm": 1.0,
                                        "contrastive": True},
    "ce-mixture-clip": {**_CE_INTERLEAVED, "clip_norm": 1.0, "mixture": "full"},
    "ce-mixture-lora-clip": {**_CE_INTERLEAVED, "clip_norm": 1.0, "mixture": "lora"},
}

# Table 1 of the paper (BERT-base, dev): SA acc, PD acc, STS corr, overall.
PAPER_TABLE1: dict[str, tuple[float, float, float, float]] = {
    "baseline": (0.450, 0.805, 0.374, 0.647),
    "ce": (0.453, 0.889, 0.881, 0.761),
    "ce-interleaved": (0.496, 0.898, 0.878, 0.778),
    "ce-interleaved-surgery": (0.495, 0.894, 0.883, 0.777),
    "ce-interleaved-smart": (0.500, 0.900, 0.883, 0.781),
    "ce-interleaved-contrastive": (0.509, 0.900, 0.883, 0.783),
    "ce-interleaved-clip": (0.518, 0.901, 0.883, 0.787),
    "ce-interleaved-clip-contrastive": (0.521, 0.901, 0.873, 0.786),
    "ce-mixture-clip": (0.515, 0.904, 0.877, 0.786),
    "ce-mixture-lora-clip": (0.499, 0.886, 0.846, 0.769),
}

# Which mtlkit primitive each preset needs (beyond plain PyTorch/transformers).
NEEDS: dict[str, tuple[str, ...]] = {
    "ce-interleaved-surgery": ("PCGrad",),
    "ce-interleaved-smart": ("SmartLoss",),
    "ce-interleaved-contrastive": ("SimCSELoss",),
    "ce-interleaved-clip-contrastive": ("SimCSELoss",),
    "ce-mixture-lora-clip": ("LoRAMoE",),
}


def describe(name: str) -> str:
    """One line: the flags a preset sets.

    >>> describe("ce-interleaved-clip")
    'ce-interleaved-clip: --encoding cross --schedule interleaved --clip-norm 1.0'
    """
    flags = []
    for key, value in PRESETS[name].items():
        flag = "--" + key.replace("_", "-")
        flags.append(flag if value is True else f"{flag} {value}")
    return f"{name}: {' '.join(flags)}"
