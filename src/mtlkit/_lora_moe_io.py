"""Private safetensors/JSON save and load of :class:`mtlkit.LoRAMoE` experts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mtlkit._lora_moe_config import LoRAMoEConfig

if TYPE_CHECKING:
    from mtlkit.lora_moe import LoRAMoE

WEIGHTS = "experts.safetensors"
CONFIG = "lora_moe.json"


def save_experts(moe: LoRAMoE, path: str | Path) -> Path:
    """Writes ``path/experts.safetensors`` (experts and router) and ``path/lora_moe.json``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().cpu() for k, v in moe.expert_state_dict().items()}
    save_file(tensors, str(path / WEIGHTS), metadata={"format": "pt", "library": "mtlkit"})
    (path / CONFIG).write_text(json.dumps(moe.config.to_dict(), indent=2) + "\n")
    return path


def read_config(path: str | Path) -> LoRAMoEConfig:
    """The validated settings saved in ``path/lora_moe.json``."""
    file = Path(path) / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"path: no {CONFIG} in {path}")
    return LoRAMoEConfig(**json.loads(file.read_text()))


def load_experts(moe: LoRAMoE, path: str | Path) -> None:
    """Copies saved tensors into ``moe``'s experts; names and shapes must match exactly."""
    from safetensors.torch import load_file

    file = Path(path) / WEIGHTS
    if not file.is_file():
        raise FileNotFoundError(f"path: no {WEIGHTS} in {path}")
    loaded = load_file(str(file))
    own = moe.expert_state_dict()
    missing, unexpected = sorted(own.keys() - loaded.keys()), sorted(loaded.keys() - own.keys())
    if missing or unexpected:
        raise ValueError(
            f"path: the saved experts do not fit this model; missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for name, target in own.items():
        if loaded[name].shape != target.shape:
            raise ValueError(
                f"path: {name} has shape {tuple(loaded[name].shape)}, "
                f"expected {tuple(target.shape)}"
            )
    with torch.no_grad():
        for name, target in own.items():
            target.copy_(loaded[name])
