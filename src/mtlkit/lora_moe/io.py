"""Saving and loading :class:`mtlkit.LoRAMoE` experts: safetensors for tensors, JSON for settings.

A saved mixture is a directory with ``experts.safetensors`` (the experts, and the task heads when
they are trained) and ``lora_moe.json`` (the :class:`~mtlkit.LoRAMoEConfig`). The base model is
not saved: load the experts onto a fresh copy of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mtlkit.lora_moe.config import LoRAMoEConfig

if TYPE_CHECKING:
    from mtlkit.lora_moe.model import LoRAMoE

WEIGHTS = "experts.safetensors"
CONFIG = "lora_moe.json"


def _save(moe: LoRAMoE, path: str | Path) -> Path:
    """Writes ``path/experts.safetensors`` and ``path/lora_moe.json``; returns ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().cpu() for k, v in moe.expert_state_dict().items()}
    save_file(tensors, str(path / WEIGHTS), metadata={"format": "pt", "library": "mtlkit"})
    (path / CONFIG).write_text(json.dumps(moe.config.to_dict(), indent=2) + "\n")
    return path


def _upgrade(settings: dict[str, Any], file: Path) -> dict[str, Any]:
    """Reads the settings of earlier versions: a ``router`` / ``top_k`` pair, no ``train_heads``."""
    if "router" in settings or "top_k" in settings:
        router, top_k = settings.pop("router", "task"), settings.pop("top_k", 1)
        if router != "task" or top_k != 1:
            raise ValueError(
                f"path: expected a task-routed mixture, got router={router!r}, top_k={top_k} in "
                f"{file}; the learned top-k router was removed"
            )
    # earlier versions froze the task heads and did not save them
    settings.setdefault("train_heads", False)
    return settings


def read_config(path: str | Path) -> LoRAMoEConfig:
    """The validated settings saved in ``path/lora_moe.json``."""
    file = Path(path) / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"path: expected a directory holding {CONFIG}, got {path}")
    settings = json.loads(file.read_text())
    if not isinstance(settings, dict):
        raise ValueError(f"path: expected a JSON object in {file}, got {type(settings).__name__}")
    settings = _upgrade(settings, file)
    unknown = sorted(settings.keys() - set(LoRAMoEConfig.field_names()))
    if unknown:
        raise ValueError(f"path: expected LoRAMoEConfig fields in {file}, got unknown {unknown}")
    return LoRAMoEConfig(**settings)


def _load(moe: LoRAMoE, path: str | Path) -> None:
    """Copies saved tensors into ``moe``'s experts; names and shapes must match exactly."""
    from safetensors.torch import load_file

    file = Path(path) / WEIGHTS
    if not file.is_file():
        raise FileNotFoundError(f"path: expected a directory holding {WEIGHTS}, got {path}")
    loaded = load_file(str(file))
    own = moe.expert_state_dict()
    missing, unexpected = sorted(own.keys() - loaded.keys()), sorted(loaded.keys() - own.keys())
    if missing or unexpected:
        raise ValueError(
            f"path: expected the tensors of this mixture in {file}, got missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for name, target in own.items():
        if loaded[name].shape != target.shape:
            raise ValueError(
                f"path: expected {name} of shape {tuple(target.shape)} in {file}, got "
                f"{tuple(loaded[name].shape)}"
            )
    with torch.no_grad():
        for name, target in own.items():
            target.copy_(loaded[name])


class ExpertsIO:
    """The save and load methods of :class:`~mtlkit.LoRAMoE` (a mixin; see the functions above)."""

    def save_experts(self, path: str | Path) -> Path:
        """Writes the experts to ``path/experts.safetensors`` and the settings to ``lora_moe.json``.

        The trained task heads are saved with the experts (see :meth:`expert_state_dict`); the
        base model is not saved (with ``train_base=True``, save it yourself): load the experts
        onto a fresh copy with :meth:`from_pretrained`.

        Example:
            >>> from mtlkit import LoRAMoE
            >>> import tempfile
            >>> from transformers import BertConfig, BertModel
            >>> cfg = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
            ...                  num_attention_heads=2, intermediate_size=32)
            >>> moe = LoRAMoE(BertModel(cfg), tasks=["a1", "b1"], r=2)
            >>> with tempfile.TemporaryDirectory() as d:
            ...     _ = moe.save_experts(d)
            ...     again = LoRAMoE.from_pretrained(BertModel(cfg), d)
            >>> again.tasks
            ['a1', 'b1']
        """
        return _save(self, path)

    def load_experts(self, path: str | Path) -> None:
        """Loads experts saved by :meth:`save_experts` into this mixture (same names and shapes).

        Raises:
            FileNotFoundError: no ``experts.safetensors`` under ``path``.
            ValueError: missing, unexpected or mis-shaped tensors.

        Example:
            >>> import tempfile
            >>> from mtlkit import LoRAMoE
            >>> from transformers import BertConfig, BertModel
            >>> cfg = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
            ...                  num_attention_heads=2, intermediate_size=32)
            >>> moe = LoRAMoE(BertModel(cfg), tasks=["a1", "b1"], r=2)
            >>> other = LoRAMoE(BertModel(cfg), tasks=["a1", "b1"], r=2)
            >>> with tempfile.TemporaryDirectory() as d:
            ...     _ = moe.save_experts(d)
            ...     other.load_experts(d)
            >>> all(torch.equal(a, b) for a, b in zip(moe.expert_state_dict().values(),
            ...                                       other.expert_state_dict().values()))
            True
        """
        _load(self, path)

    @classmethod
    def from_pretrained(cls, model: nn.Module, path: str | Path) -> LoRAMoE:
        """Builds a mixture on ``model`` with the saved settings and loads the saved experts.

        Every option, ``train_base`` included, comes from the saved
        :class:`~mtlkit.LoRAMoEConfig`.

        Args:
            model: a fresh base model of the same architecture as the saved one.
            path: a directory written by :meth:`save_experts`.

        Raises:
            FileNotFoundError: ``path`` holds no saved mixture.
            ValueError: the saved experts do not fit ``model``.

        Example:
            >>> from mtlkit import LoRAMoE
            >>> from transformers import BertConfig, BertModel
            >>> bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
            ...                             num_attention_heads=2, intermediate_size=32))
            >>> LoRAMoE.from_pretrained(bert, "no/such/dir")
            Traceback (most recent call last):
            ...
            FileNotFoundError: path: expected a directory holding lora_moe.json, got no/such/dir

            See :meth:`save_experts` for a round trip.
        """
        moe = cls(model, read_config(path))  # type: ignore[call-arg]
        moe.load_experts(path)
        return moe
