"""Checkpoints as safetensors + JSON only (no pickle), crash-safe.

A checkpoint is a directory with ``model.safetensors`` (the model's state dict),
``state.safetensors`` (every tensor of the training state: optimizer moments, RNG states),
``state.json`` (everything else, with ``{"__tensor__": key}`` placeholders) and
``manifest.json`` (the size and SHA-256 of each of those three files).

Writing (:func:`save_checkpoint`): the files go into a temporary directory next to ``PATH``
and are fsync'ed, the manifest last; the directory is fsync'ed; the current ``PATH`` (if any)
is renamed to ``PATH.previous`` (replacing the older one), the temporary directory is renamed
to ``PATH``, and the parent directory is fsync'ed. A crash at any point leaves ``PATH`` or
``PATH.previous`` complete.

Reading: :func:`load_checkpoint` verifies the manifest and raises :class:`CheckpointError`
naming the missing, truncated or corrupt file; :func:`load_latest` tries ``PATH`` and then
``PATH.previous`` (with a warning), which is what ``--resume`` uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

FILES = ("model.safetensors", "state.safetensors", "state.json")
MANIFEST = "manifest.json"


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


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or corrupt; the message names the file."""


def previous_path(path: str | Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``PATH.previous``.

    >>> previous_path("runs/x/checkpoints/last").name
    'last.previous'
    """
    path = Path(path)
    return path.with_name(path.name + ".previous")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, model_state: dict[str, torch.Tensor],
                    train_state: dict[str, Any], keep_previous: bool = True) -> None:
    """Write a checkpoint directory crash-safely (see the module docstring).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> save_checkpoint(d / "last", {"w": torch.ones(2)}, {"step": 1})
    >>> save_checkpoint(d / "last", {"w": torch.zeros(2)}, {"step": 2})
    >>> load_checkpoint(d / "last")[1], load_checkpoint(d / "last.previous")[1]
    ({'step': 2}, {'step': 1})
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in model_state.items()},
                  str(tmp / FILES[0]))
        tensors: dict[str, torch.Tensor] = {}
        meta = flatten_state(train_state, tensors)
        save_file(tensors, str(tmp / FILES[1]))
        (tmp / FILES[2]).write_text(json.dumps(meta, indent=1))
        manifest = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _digest(tmp / name)}
                    for name in FILES}
        for name in FILES:
            _fsync_file(tmp / name)
        (tmp / MANIFEST).write_text(json.dumps({"version": 1, "files": manifest}, indent=1))
        _fsync_file(tmp / MANIFEST)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private (0700)
        _fsync_dir(tmp)
        prev = previous_path(path)
        if path.exists():
            if keep_previous:
                if prev.exists():
                    shutil.rmtree(prev)
                os.replace(path, prev)
            else:
                shutil.rmtree(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify_checkpoint(path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming the first missing, truncated or corrupt file.

    Checkpoints written before manifests existed (no ``manifest.json``) are only checked for
    their files' presence.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint directory at {path}")
    missing = [path / n for n in FILES if not (path / n).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: {missing[0]} is missing")
    mpath = path / MANIFEST
    if not mpath.is_file():
        logger.debug("%s has no %s (an older checkpoint): sizes and checksums not verified",
                     path, MANIFEST)
        return
    try:
        files = json.loads(mpath.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"corrupt checkpoint manifest {mpath}: {exc}") from exc
    for name in FILES:
        f, want = path / name, files.get(name, {})
        size = f.stat().st_size
        if size != want.get("bytes"):
            raise CheckpointError(f"truncated or corrupt checkpoint file {f}: {size} bytes, "
                                  f"the manifest says {want.get('bytes')}")
        if _digest(f) != want.get("sha256"):
            raise CheckpointError(f"corrupt checkpoint file {f}: its SHA-256 differs from the "
                                  "manifest's")


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``(model_state, train_state)`` of the checkpoint at ``path`` after verifying it.

    Raises:
        CheckpointError: a file is missing, truncated or corrupt (the message names it).
    """
    path = Path(path)
    if not path.exists() and path.with_name(path.name + ".old").exists():
        path = path.with_name(path.name + ".old")  # a crash mid-swap by an older version
    verify_checkpoint(path)
    out = []
    for name, read in ((FILES[0], load_file), (FILES[1], load_file),
                       (FILES[2], lambda f: json.loads(Path(f).read_text()))):
        try:
            out.append(read(str(path / name)))
        except Exception as exc:  # unreadable despite the checks (e.g. an old checkpoint)
            raise CheckpointError(f"cannot read checkpoint file {path / name}: {exc}") from exc
    model_state, tensors, meta = out
    try:
        return model_state, unflatten_state(meta, tensors)
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {path}: {path / FILES[2]} names tensor {exc} that "
                              f"{path / FILES[1]} lacks") from exc


def load_latest(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """``(model_state, train_state, where)`` from ``path``, else from ``PATH.previous``.

    A bad ``path`` is logged as a warning (naming the file) before the fall-back.

    Raises:
        CheckpointError: neither is usable (the message gives both reasons).
        FileNotFoundError: neither exists.
    """
    path = Path(path)
    errors: list[str] = []
    candidates = [path, previous_path(path)]
    if not any(c.exists() for c in candidates) and not path.with_name(path.name + ".old").exists():
        raise FileNotFoundError(f"no checkpoint at {path} or {previous_path(path)}")
    for i, cand in enumerate(candidates):
        if i > 0 and not cand.exists():
            break
        try:
            model_state, state = load_checkpoint(cand)
        except CheckpointError as exc:
            errors.append(str(exc))
            if i == 0:
                logger.warning("%s; falling back to the previous checkpoint %s", exc,
                               previous_path(path))
            continue
        return model_state, state, cand
    raise CheckpointError("no usable checkpoint: " + "; ".join(errors))
