"""The training loop's configuration (:class:`TrainConfig`, the CLI flags of the same names)
and the progress a checkpoint keeps (:class:`RunState`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SELECT_MODES = ("overall", "per-task")  # which weights are kept as best (see selection.py)


@dataclass
class TrainConfig:
    """The knobs of :func:`train` (the CLI flags of the same names)."""

    epochs: int = 3
    batch_size: int = 16
    task_batch_sizes: dict[str, int] = field(default_factory=dict)  # overrides per task
    lr: float = 5e-5
    schedule: str = "interleaved"  # or "sequential"
    steps_per_epoch: int | None = None  # interleaved default: batches of the largest task
    lr_schedule: str = "constant"  # or "linear" (decay to 0)
    clip_norm: float = 0.0
    surgery: bool = False
    smart_weight: float = 0.0
    smart_mode: str = "projected"  # or "normalized" (smart-pytorch / mt-dnn behaviour)
    loader: str = "builtin"  # or "mtlkit"
    bf16: bool = False
    seed: int = 0
    max_train_seconds: float | None = None
    max_steps: int | None = None
    log_every: int = 50
    progress: bool = True
    checkpoint_every: int = 0  # also save the last checkpoint every N steps (0: per epoch)
    layer_lr_decay: float = 1.0  # learning rate x decay per encoder layer going down
    ema: float = 0.0  # decay of the weight average evaluated and saved (0: off)
    pair_swap: bool = False  # train on each pair in a random order (s1, s2) or (s2, s1)
    select: str = "overall"  # or "per-task": each expert from its own best epoch (mixtures)

    def __post_init__(self) -> None:
        if self.schedule not in ("interleaved", "sequential"):
            raise ValueError(f"schedule must be 'interleaved' or 'sequential', got "
                             f"{self.schedule!r}")
        if self.loader not in ("builtin", "mtlkit"):
            raise ValueError(f"loader must be 'builtin' or 'mtlkit', got {self.loader!r}")
        if self.lr_schedule not in ("constant", "linear"):
            raise ValueError(f"lr_schedule must be 'constant' or 'linear', got "
                             f"{self.lr_schedule!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        bad = {t: b for t, b in self.task_batch_sizes.items() if b <= 0}
        if bad:
            raise ValueError(f"task_batch_sizes must be positive, got {bad}")
        if self.smart_mode not in ("projected", "normalized"):
            raise ValueError(f"smart_mode must be 'projected' or 'normalized', got "
                             f"{self.smart_mode!r}")
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise ValueError(f"layer_lr_decay must be in (0, 1], got {self.layer_lr_decay}")
        if self.select not in SELECT_MODES:
            raise ValueError(f"select must be one of {SELECT_MODES}, got {self.select!r}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.lr <= 0 or self.clip_norm < 0 or self.smart_weight < 0:
            raise ValueError("lr must be > 0; clip_norm and smart_weight must be >= 0")

    def batch_size_for(self, task: str) -> int:
        """``task``'s training batch size: its override, else ``batch_size``.

        >>> TrainConfig(task_batch_sizes={"qqp": 24}).batch_size_for("qqp")
        24
        """
        return self.task_batch_sizes.get(task, self.batch_size)


@dataclass
class RunState:
    """Progress kept in the last checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    train_seconds: float = 0.0
    best_overall: float = float("-inf")
    best_epoch: int = -1
    best_dev: dict[str, float] = field(default_factory=dict)
    best_epochs: dict[str, int] = field(default_factory=dict)  # the epoch of each task's weights
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    loss_ema: float | None = None  # the running train loss of the current epoch
