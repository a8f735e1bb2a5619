"""The raw outputs of a run's best checkpoint over its dev and test rows, kept beside the run
(``OUT/outputs.safetensors``) so that an ensemble averages them without running the member
again (on a CPU, predicting Quora's 20,212 dev pairs in both orders takes minutes per member).

Each output is stored with two digests: the best checkpoint's weights (the sha256 its manifest
records) and the rows it was computed on (ids and sentences, in order). An ensemble uses an
output only where both still match; anything else (a retrained checkpoint, another data
directory, a subsample) is predicted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .task_split import TaskSplit

logger = logging.getLogger(__name__)

FILE = "outputs.safetensors"


def weights_digest(checkpoint: str | Path) -> str:
    """The sha256 of a checkpoint's model weights, as its ``manifest.json`` records it."""
    manifest = json.loads((Path(checkpoint) / "manifest.json").read_text())
    return manifest["files"]["model.safetensors"]["sha256"]


def rows_digest(split: TaskSplit) -> str:
    """A digest of a split's rows: ids and sentences, in order.

    >>> a = TaskSplit("sts", "dev", "x.csv", ["1", "2"], ["a", "b"], ["c", "d"], [1.0, 2.0])
    >>> rows_digest(a) == rows_digest(a.subset([0, 1]))
    True
    >>> rows_digest(a) == rows_digest(a.subset([1, 0]))  # the same rows in another order
    False
    """
    h = hashlib.sha256()
    for row in zip(split.ids, split.sent1, split.sent2 or [""] * len(split), strict=True):
        h.update(json.dumps(row).encode())
    return h.hexdigest()


def _key(task: str, split: str) -> str:
    return f"{task}/{split}"


def save_outputs(out: str | Path, outputs: Mapping[tuple[str, str], torch.Tensor],
                 splits: Mapping[tuple[str, str], TaskSplit], weights: str) -> Path:
    """Write ``outputs[(task, split)]`` (computed by the weights of digest ``weights`` on
    ``splits[(task, split)]``) to ``out/outputs.safetensors``; its path."""
    path = Path(out) / FILE
    meta = {"weights": weights}
    meta.update({f"rows:{_key(*k)}": rows_digest(splits[k]) for k in outputs})
    tmp = path.with_name(path.name + ".tmp")
    save_file({_key(*k): v.float().contiguous() for k, v in outputs.items()}, str(tmp),
              metadata=meta)
    tmp.replace(path)
    return path


def load_outputs(out: str | Path, splits: Mapping[tuple[str, str], TaskSplit],
                 weights: str) -> dict[tuple[str, str], torch.Tensor]:
    """The saved outputs of ``out`` that were computed by the weights ``weights`` on the rows
    of ``splits`` (an empty dict when there are none, or the file is unreadable)."""
    path = Path(out) / FILE
    if not path.is_file():
        return {}
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as exc:
        logger.warning("%s: unreadable (%s); predicting again", path, exc)
        return {}
    if meta.get("weights") != weights:
        return {}
    return {k: tensors[_key(*k)] for k, sp in splits.items()
            if _key(*k) in tensors and meta.get(f"rows:{_key(*k)}") == rows_digest(sp)}
