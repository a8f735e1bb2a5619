"""Which weights are kept as ``best``: the best epoch overall, or each task's best expert.

``--select overall`` (the default) keeps the epoch with the highest overall dev score (Eq. 7).
``--select per-task`` is for ``--mixture full``, whose tasks share nothing trainable: each
task has its own encoder and head, so each expert can be kept from the epoch of its own best dev
score. That is early stopping applied to each of three models (which are independent but for
``--clip-norm``: one gradient norm over all parameters scales every expert's step), and the
composite's dev scores are exactly the per-task maxima, since a task's predictions depend on
its expert alone. A shared encoder cannot be split this way, so the mode is refused without
one encoder per task.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_latest, save_checkpoint
from .config import SELECT_MODES
from .evaluate import overall_of
from .model import MultiTaskBert

logger = logging.getLogger(__name__)


def check_per_task(model: MultiTaskBert) -> None:
    """Refuse per-task selection for a model whose tasks share trainable weights.

    >>> from transformers import BertConfig, BertModel
    >>> cfg = BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
    ...                  num_attention_heads=2, intermediate_size=8)
    >>> check_per_task(MultiTaskBert(BertModel(cfg), 8))
    Traceback (most recent call last):
    ...
    ValueError: --select per-task needs --mixture full (one encoder per task); a shared ...
    """
    if model.task_encoders is None:
        raise ValueError("--select per-task needs --mixture full (one encoder per task); a "
                         "shared encoder cannot be chosen per task")


def task_keys(state: Mapping[str, torch.Tensor], task: str) -> list[str]:
    """The keys of ``state`` that belong to ``task`` alone: its encoder and its head.

    >>> sorted(task_keys({"task_encoders.sst.w": 0, "heads.sst.b": 0, "heads.sts.b": 0}, "sst"))
    ['heads.sst.b', 'task_encoders.sst.w']
    """
    prefixes = (f"task_encoders.{task}.", f"heads.{task}.")
    return [k for k in state if k.startswith(prefixes)]


def improved_tasks(scores: Mapping[str, float], best: Mapping[str, float],
                   tasks: Sequence[str], mode: str) -> list[str]:
    """The tasks whose weights this evaluation replaces in ``best`` (strictly better only).

    Per task, the first evaluation keeps every task's weights, even one whose score is NaN,
    so the kept weights always match the kept scores.

    >>> improved_tasks({"sst": .5, "qqp": .8, "overall": .6}, {"sst": .6, "qqp": .7,
    ...                "overall": .65}, ["sst", "qqp"], "per-task")
    ['qqp']
    >>> improved_tasks({"sst": .5, "qqp": .8, "overall": .6}, {"overall": .65},
    ...                ["sst", "qqp"], "overall")
    []
    """
    if mode not in SELECT_MODES:
        raise ValueError(f"select must be one of {SELECT_MODES}, got {mode!r}")
    if mode == "overall":
        return list(tasks) if scores["overall"] > best.get("overall", float("-inf")) else []
    if not any(t in best for t in tasks):
        return list(tasks)
    return [t for t in tasks if scores[t] > best[t]]


def merge_best(best_state: Mapping[str, torch.Tensor] | None,
               current: Mapping[str, torch.Tensor],
               tasks: Iterable[str]) -> dict[str, torch.Tensor]:
    """``best_state`` with the experts of ``tasks`` replaced by copies of ``current``'s.

    With no ``best_state`` yet, a copy of all of ``current``.

    >>> cur = {"heads.sst.b": torch.ones(1), "heads.qqp.b": torch.ones(1)}
    >>> old = {"heads.sst.b": torch.zeros(1), "heads.qqp.b": torch.zeros(1)}
    >>> {k: v.item() for k, v in merge_best(old, cur, ["qqp"]).items()}
    {'heads.sst.b': 0.0, 'heads.qqp.b': 1.0}
    """
    if best_state is None:
        return {k: v.detach().clone() for k, v in current.items()}
    merged = dict(best_state)
    for task in tasks:
        for k in task_keys(current, task):
            merged[k] = current[k].detach().clone()
    return merged


def merge_scores(scores: Mapping[str, float], best: Mapping[str, float],
                 improved: Iterable[str], tasks: Sequence[str]) -> dict[str, float]:
    """Per-task dev scores of the merged weights, and their overall score.

    >>> merge_scores({"sst": .5, "qqp": .9}, {"sst": .6, "qqp": .8, "overall": .7},
    ...              ["qqp"], ["sst", "qqp"])
    {'sst': 0.6, 'qqp': 0.9, 'overall': 0.75}
    """
    improved = set(improved)
    merged = {t: (scores[t] if t in improved else best[t]) for t in tasks}
    merged["overall"] = overall_of(merged)
    return merged


class EpochSelection:
    """Keeps the best weights over the epochs (``--select overall`` or ``per-task``).

    :meth:`update` is called with each evaluation; the weights it keeps are written to the
    ``best`` checkpoint (by the main process), and ``state``'s ``best_*`` fields follow them.
    """

    def __init__(self, mode: str, tasks: Sequence[str]) -> None:
        if mode not in SELECT_MODES:
            raise ValueError(f"--select: expected one of {SELECT_MODES}, got {mode!r}")
        self.mode, self.tasks = mode, list(tasks)
        self._best_state: dict[str, torch.Tensor] | None = None  # per-task: the merged best

    def update(self, state: Any, scores: dict[str, float], model: nn.Module, path: Path,
               write: bool) -> list[str]:
        """Fold one evaluation of ``model`` into the best; the tasks whose weights it took."""
        best = {**state.best_dev, "overall": state.best_overall}
        improved = improved_tasks(scores, best, self.tasks, self.mode)
        if not improved:
            return []
        per_task = self.mode == "per-task"
        weights = merge_best(self._best_state if per_task else None, model.state_dict(),
                             improved)
        if per_task:
            self._best_state = weights
        dev = merge_scores(scores, state.best_dev, improved, self.tasks) if per_task else scores
        epoch = state.history[-1]["epoch"]  # the entry of this evaluation
        state.best_overall, state.best_epoch, state.best_dev = dev["overall"], epoch, dev
        state.best_epochs.update({t: epoch for t in improved})
        if write:
            save_checkpoint(path, weights, {"epoch": epoch, "dev": dev,
                                            "task_epochs": state.best_epochs})
            logger.info("new best overall %.4f (weights of %s from epoch %d): saved %s",
                        dev["overall"], ", ".join(improved), epoch, path)
        return improved

    def restore(self, state: Any, path: Path) -> None:
        """After ``--resume``: the experts chosen so far, to merge later improvements into."""
        if self.mode == "per-task" and state.best_dev:
            self._best_state = load_latest(path)[0]
