"""The progress a checkpoint keeps (:class:`RunState`) and the last checkpoint itself.

``OUT/checkpoints/last`` holds the model, the optimizer (with the gradient combiner's state,
e.g. PCGrad's generator), the scheduler, the ``MultiTaskLoader`` position, the weight
average, every rank's RNG state and the :class:`RunState`: enough for ``--resume`` to continue
exactly where the run stopped, to the weights of an uninterrupted run.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from .checkpoint import load_latest, optimizer_state_from_json, save_checkpoint
from .distributed import all_gather_objects
from .rng import capture_rng, restore_rng

logger = logging.getLogger(__name__)


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
    # what the primitives did this epoch (SMART term, gradient conflicts), see Trainer.step
    primitive_stats: dict[str, float] = field(default_factory=dict)


def save_last(trainer: Any) -> None:
    """Rank 0 writes ``trainer``'s last checkpoint (every rank's RNG state gathered into it)."""
    rng = capture_rng(trainer.env)  # a collective: before rank 0 alone goes on
    if not trainer.env.is_main:
        return
    state: dict[str, Any] = {
        "run": asdict(trainer.state), "optimizer": trainer.opt.state_dict(),
        "scheduler": trainer.sched.state_dict(), "loader": trainer.loader.state_dict(),
        "rng": rng, "world_size": trainer.env.world}
    if trainer.ema is not None:
        state["ema"] = trainer.ema.state_dict()
    save_checkpoint(trainer.ckpt_dir / "last", trainer.model.state_dict(), state)


def load_last(trainer: Any) -> bool:
    """Restore ``trainer`` from its last checkpoint; False when there is none.

    A corrupt or truncated ``last`` falls back to ``last.previous`` (with a warning). Every
    rank reads the same files.

    Raises:
        ValueError: ``--ema`` given but the checkpoint holds no weight average.
        RuntimeError: the ranks loaded different checkpoints.
    """
    path = trainer.ckpt_dir / "last"
    try:
        model_state, st, path = load_latest(path)
    except FileNotFoundError:
        return False
    if trainer.ema is not None and "ema" not in st:
        raise ValueError(f"--ema: {path} holds no weight average (was it written by a run "
                         "without --ema?)")
    trainer.model.load_state_dict(model_state)
    trainer.opt.load_state_dict(optimizer_state_from_json(st["optimizer"]))
    trainer.sched.load_state_dict(st["scheduler"])
    trainer.loader.load_state_dict(st["loader"])
    restore_rng(st["rng"], trainer.env)
    if trainer.ema is not None:
        trainer.ema.load_state_dict(st["ema"])
    trainer.state = RunState(**st["run"])
    steps = all_gather_objects(trainer.state.global_step, trainer.env)
    if len(set(steps)) != 1:
        raise RuntimeError(f"--resume: the ranks loaded different checkpoints (steps {steps}); "
                           f"is {trainer.ckpt_dir} on a filesystem every rank sees?")
    logger.info("resumed from %s at epoch %d step %d (%.0f s trained)", path,
                trainer.state.epoch + 1, trainer.state.step_in_epoch,
                trainer.state.train_seconds)
    return True
