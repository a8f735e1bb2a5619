"""Ensembles of finished runs: the best checkpoints of several runs, their outputs averaged.

A single model of this pipeline saturates before a 30-minute budget runs out (SST-5 peaks in
its first epoch, Quora and STS-B gain little in the third), so part of the budget buys more
as a second model than as more epochs of the first. The members are ordinary runs (any flags:
the same recipe at different seeds, or models of some tasks only, ``--tasks``); each is loaded
from its ``metrics.json`` configuration and its best checkpoint and run over the dev and test
sets once, and each task averages the members trained on it.

Averaging: SST-5 the members' class probabilities (the combined output is their log, so
:func:`~multitask_bert.model.predict` takes the argmax of the mean probability); QQP the
logits, as ``--symmetric-eval`` averages the two orders of a pair; STS-B the scores.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_latest
from .data import TaskSplit, TokenCache, TokenizedTask
from .evaluate import Predictions, model_outputs
from .model import predict
from .pair_features import CosineFeatures
from .pipeline import build_model, token_mode

logger = logging.getLogger(__name__)


def combine_outputs(task: str, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """One output per row from several members' outputs of the same rows (see the module).

    >>> a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    >>> combine_outputs("sst", [a, b]).exp()  # the mean of the two softmaxes
    tensor([[0.5749, 0.4251]])
    >>> combine_outputs("qqp", [torch.tensor([1.0]), torch.tensor([-3.0])])
    tensor([-1.])

    Raises:
        ValueError: no outputs, or outputs of different shapes.
    """
    if not outputs:
        raise ValueError(f"{task}: no member outputs to combine")
    shapes = {tuple(o.shape) for o in outputs}
    if len(shapes) != 1:
        raise ValueError(f"{task}: member outputs of different shapes {sorted(shapes)}")
    stacked = torch.stack([o.float() for o in outputs])
    if task == "sst":
        return stacked.softmax(-1).mean(0).log()
    return stacked.mean(0)


@dataclass
class Member:
    """A finished run used as an ensemble member.

    Attributes:
        out: the run's output directory.
        config: its flags, from ``metrics.json``.
        metrics: the rest of its ``metrics.json`` (``best_dev``, ``train_seconds``, ...).
    """

    out: Path
    config: dict[str, Any]
    metrics: dict[str, Any]

    @classmethod
    def read(cls, out: str | Path) -> Member:
        """Read ``out/metrics.json``.

        Raises:
            FileNotFoundError: the run has no ``metrics.json`` (it has not finished) or no best
                checkpoint.
        """
        out = Path(out)
        path = out / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {out} is not a finished run of "
                                    "examples/bert_sst_qqp_sts.py")
        best = out / "checkpoints" / "best"
        if not (best.exists() or best.with_name("best.previous").exists()):
            raise FileNotFoundError(f"{best} not found: the run kept no best checkpoint")
        metrics = json.loads(path.read_text())
        return cls(out, metrics["config"], metrics)

    def outputs(self, splits: dict[str, dict[str, TaskSplit]], device: torch.device,
                batch_size: int = 64) -> dict[tuple[str, str], torch.Tensor]:
        """The raw outputs of the member's best checkpoint, per ``(task, split)`` of the tasks
        it was trained on, made the way its run made its own predictions (its tokenization,
        ``--symmetric-eval``, ``--bf16``, ``--pair-feature``)."""
        args = argparse.Namespace(**self.config)
        model, tokenizer = build_model(args)
        model.load_state_dict(load_latest(self.out / "checkpoints" / "best")[0])
        model.to(device)
        cache = TokenCache(tokenizer, args.max_length, args.pad_multiple)
        symmetric = bool(self.config.get("symmetric_eval"))
        sets: dict[tuple[str, str], TokenizedTask] = {
            (t, s): cache.get(splits[s][t], token_mode(args), symmetric)
            for s in splits for t in self.config["tasks"] if t in splits[s]}
        if self.config.get("pair_feature", "none") != "none":
            features = CosineFeatures(args.model, device, args.bf16, args.max_length)
            for (t, _), ds in sets.items():
                if t != "sst":
                    features.attach(ds)
            features.close()
        return {key: model_outputs(model, ds, batch_size, device, args.bf16, symmetric)
                for key, ds in sets.items()}


def ensemble_predictions(members: Sequence[Member], splits: dict[str, dict[str, TaskSplit]],
                         device: torch.device, batch_size: int = 64
                         ) -> dict[tuple[str, str], Predictions]:
    """Predictions of the averaged members per ``(task, split)``; a task is predicted from the
    members trained on it.

    Raises:
        ValueError: no members, or a split no member was trained on.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member run")
    collected: dict[tuple[str, str], list[torch.Tensor]] = {}
    for member in members:
        logger.info("ensemble member %s", member.out)
        for key, out in member.outputs(splits, device, batch_size).items():
            collected.setdefault(key, []).append(out)
    result: dict[tuple[str, str], Predictions] = {}
    for (task, split), outs in collected.items():
        pred, conf = predict(task, combine_outputs(task, outs))
        ds_split = splits[split][task]
        result[(task, split)] = Predictions(
            task, list(ds_split.ids), pred.tolist(), conf.tolist(),
            None if ds_split.labels is None else [float(y) for y in ds_split.labels])
    missing = [f"{t} {s}" for s in splits for t in splits[s] if (t, s) not in result]
    if missing:
        raise ValueError(f"no member was trained on {', '.join(missing)}")
    return result
