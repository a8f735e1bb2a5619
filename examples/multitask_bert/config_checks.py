"""The checks of :class:`~multitask_bert.config.RunConfig`, run by its ``__post_init__``.

Every message names the flag: ``"--lr: expected a positive number, got 0.0"``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from mtlkit.weighting import NAMES as WEIGHTINGS

from . import TASKS

_POSITIVE_INTS = ("epochs", "batch_size", "contrastive_batch_size", "lora_r", "max_length",
                  "pad_multiple", "errors_top_k")
_OPTIONAL_POSITIVE_INTS = ("max_steps", "steps_per_epoch", "max_train_per_task",
                           "max_eval_per_task")
_NON_NEGATIVE_INTS = ("checkpoint_every", "eval_batch_size", "threads", "log_every",
                      "contrastive_unsup_steps", "contrastive_sup_steps")


def flag(name: str) -> str:
    """The command-line flag of field ``name``.

    >>> flag("max_train_minutes")
    '--max-train-minutes'
    """
    return "--" + name.replace("_", "-")


def _fail(name: str, expected: str, got: Any) -> None:
    raise ValueError(f"{flag(name)}: expected {expected}, got {got}")


def _check_numbers(cfg: Any) -> None:
    for name in _POSITIVE_INTS + _OPTIONAL_POSITIVE_INTS + _NON_NEGATIVE_INTS:
        value = getattr(cfg, name)
        if value is None and name in _OPTIONAL_POSITIVE_INTS:
            continue
        low = 0 if name in _NON_NEGATIVE_INTS else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            _fail(name, "an integer >= 0" if low == 0 else "a positive integer", value)
    for name in ("lr", "lora_alpha", "contrastive_temperature", "contrastive_lr",
                 "max_train_minutes"):
        value = getattr(cfg, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            _fail(name, "a positive number", value)
    for name in ("clip_norm", "smart_weight"):
        if not (math.isfinite(getattr(cfg, name)) and getattr(cfg, name) >= 0):
            _fail(name, "a number >= 0", getattr(cfg, name))
    for name in ("dropout", "ema") + (("encoder_dropout",) if cfg.encoder_dropout is not None
                                      else ()):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            _fail(name, "a probability in [0, 1)" if name != "ema" else "a decay in [0, 1)",
                  getattr(cfg, name))
    if not 0.0 < cfg.layer_lr_decay <= 1.0:
        _fail("layer_lr_decay", "a factor in (0, 1]", cfg.layer_lr_decay)


def _check_choices(cfg: Any) -> None:
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            _fail(f.name, f"one of {', '.join(choices)}", repr(getattr(cfg, f.name)))
    tasks = cfg.tasks
    if (isinstance(tasks, str) or not tasks or any(t not in TASKS for t in tasks)
            or len(set(tasks)) != len(tasks)):
        _fail("tasks", f"a comma-separated subset of {','.join(TASKS)}", repr(tasks))
    bad = {t: b for t, b in cfg.task_batch_sizes.items()
           if t not in cfg.tasks or isinstance(b, bool) or not isinstance(b, int) or b <= 0}
    if bad:
        _fail("task_batch_sizes", f"TASK=N with TASK in --tasks {','.join(cfg.tasks)} and N a "
              "positive integer", bad)
    if cfg.weighting is not None and cfg.weighting not in WEIGHTINGS:
        _fail("weighting", f"one of {', '.join(WEIGHTINGS)}", repr(cfg.weighting))


def _check_combinations(cfg: Any) -> None:
    shared = cfg.mixture != "full"
    rules = [
        (cfg.surgery and cfg.weighting != "pcgrad", "surgery",
         "--surgery is --weighting pcgrad; give one of them"),
        (cfg.weighting is not None and not shared, "weighting",
         "a shared encoder to combine gradients on; it cannot combine with --mixture full"),
        (cfg.weighting is not None and cfg.schedule != "interleaved", "weighting",
         "--schedule interleaved (every task in every step): a step of one task has nothing "
         "to combine"),
        (cfg.contrastive and cfg.mixture != "none", "contrastive",
         "one shared encoder to pre-train: use --mixture none"),
        (cfg.smart_weight > 0 and cfg.encoding != "cross", "smart_weight", "--encoding cross"),
        ((cfg.pair_swap or cfg.symmetric_eval) and cfg.encoding != "cross",
         "pair_swap" if cfg.pair_swap else "symmetric_eval",
         "--encoding cross (separate encoding does not depend on a pair's order)"),
        (cfg.select == "per-task" and cfg.mixture != "full", "select",
         "--mixture full with --select per-task: a shared encoder (or LoRA base) cannot take "
         "each task's weights from another epoch"),
        (cfg.pair_feature != "none" and not {"qqp", "sts"} & set(cfg.tasks), "pair_feature",
         "a pair task in --tasks: it feeds the QQP and STS heads"),
        (cfg.steps_per_epoch is not None and cfg.schedule == "sequential", "steps_per_epoch",
         "a cycling --schedule: a sequential epoch is every batch of every task"),
    ]
    for broken, name, needs in rules:
        if broken:
            raise ValueError(f"{flag(name)}: needs {needs}")


def check(cfg: Any) -> None:
    """Raise ``ValueError`` naming the flag of the first bad value of ``cfg``."""
    _check_numbers(cfg)
    _check_choices(cfg)
    _check_combinations(cfg)


def check_groups(cfg: Any, names: Sequence[str]) -> None:
    """Check the ensemble's member groups: counts, shares, and overrides that name fields."""
    if not cfg.ensemble:
        return
    reserved = {"ensemble", "out", "resume", "seed", "max_train_minutes", "preset"}
    shares = 0.0
    for group in cfg.ensemble:
        if isinstance(group.members, bool) or not isinstance(group.members, int) \
                or group.members < 1:
            raise ValueError(f"ensemble: expected a positive member count, got "
                             f"{group.members!r}")
        bad = sorted(k for k in group.overrides if k not in names or k in reserved)
        if bad:
            raise ValueError(f"ensemble: expected overrides of RunConfig fields other than "
                             f"{sorted(reserved)}, got {bad}")
        if not 0.0 < group.budget_share <= 1.0:
            raise ValueError(f"ensemble: expected budget shares in (0, 1], got "
                             f"{group.budget_share}")
        shares += group.budget_share
        dataclasses.replace(cfg, **group.overrides, ensemble=())  # each member must be valid
    if shares > 1.0 + 1e-9:
        raise ValueError(f"ensemble: expected budget shares summing to at most 1, got {shares}")
