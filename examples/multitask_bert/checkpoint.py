"""Checkpoints as safetensors + JSON only (no pickle), written atomically.

A checkpoint is a directory with ``model.safetensors`` (the model's state dict),
``state.safetensors`` (every tensor of the training state: optimizer moments, RNG states) and
``state.json`` (everything else, with ``{"__tensor__": key}`` placeholders). The directory is
written under a temporary name and renamed into place, so a crash never leaves a half-written
checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """Replace every tensor in a nested dict/list by a placeholder, collecting the tensors.

    >>> tensors = {}
    >>> flatten_state({"a": torch.ones(2), "b": [1, "x"]}, tensors)
    {'a': {'__tensor__': 't.a'}, 'b': [1, 'x']}
    >>> list(tensors)
    ['t.a']
    """
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {str(k): flatten_state(v, tensors, f"{prefix}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state` (dict keys stay strings)."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: unflatten_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


def optimizer_state_from_json(state: Any) -> Any:
    """Turn the string keys JSON gave an optimizer's per-parameter ``state`` back into ints
    (at any depth, so wrapped optimizers' nested state dicts work too).

    >>> optimizer_state_from_json({"state": {"0": {"step": 1}}, "param_groups": []})
    {'state': {0: {'step': 1}}, 'param_groups': []}
    """
    if isinstance(state, list):
        return [optimizer_state_from_json(v) for v in state]
    if not isinstance(state, dict):
        return state
    out = {k: optimizer_state_from_json(v) for k, v in state.items()}
    if isinstance(out.get("state"), dict) and isinstance(out.get("param_groups"), list):
        out["state"] = {int(k) if str(k).isdigit() else k: v for k, v in out["state"].items()}
    return out


def save_checkpoint(path: str | Path, model_state: dict[str, torch.Tensor],
                    train_state: dict[str, Any]) -> None:
    """Write a checkpoint directory atomically (temporary directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file({k: v.detach().cpu().clone() for k, v in model_state.items()},
                  str(tmp / "model.safetensors"))
        tensors: dict[str, torch.Tensor] = {}
        meta = flatten_state(train_state, tensors)
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        old = path.with_name(path.name + ".old")
        if path.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``(model_state, train_state)``; falls back to ``PATH.old`` after a crash mid-swap."""
    path = Path(path)
    if not path.exists() and path.with_name(path.name + ".old").exists():
        path = path.with_name(path.name + ".old")
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    model_state = load_file(str(path / "model.safetensors"))
    tensors = load_file(str(path / "state.safetensors"))
    meta = json.loads((path / "state.json").read_text())
    return model_state, unflatten_state(meta, tensors)
