"""What MultiTaskTrainer adds to a Trainer checkpoint: the loader position, the weighting state.

Two files next to the Trainer's own: ``mtlkit_trainer.json`` (the MultiTaskLoader's position,
plain JSON) and ``mtlkit_weighting.pt`` (the weighting's ``state_dict``, read back with
``torch.load(weights_only=True)``; a loss weighting's parameters live here too, since they are in
the optimizer but not in the model).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from transformers import TrainerState

from mtlkit import MultiTaskLoader

STATE_FILE = "mtlkit_trainer.json"
WEIGHTING_FILE = "mtlkit_weighting.pt"
_VERSION = 1


def save_state(output_dir: str, loader: MultiTaskLoader | None, weighting: Any) -> None:
    """Write the loader position and the weighting state into ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    state = {"version": _VERSION, "loader": None if loader is None else loader.state_dict()}
    with open(os.path.join(output_dir, STATE_FILE), "w", encoding="utf-8") as f:
        json.dump(state, f)
    if weighting is not None:
        torch.save(weighting.state_dict(), os.path.join(output_dir, WEIGHTING_FILE))


def load_loader_state(checkpoint: str) -> dict[str, Any] | None:
    """The loader position saved in ``checkpoint`` (``None`` if it holds none)."""
    path = os.path.join(checkpoint, STATE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    if not isinstance(state, dict) or state.get("version") != _VERSION:
        raise ValueError(
            f"{path}: expected a MultiTaskTrainer state of version {_VERSION}, got "
            f"{state.get('version') if isinstance(state, dict) else type(state).__name__}"
        )
    return state["loader"]


def load_weighting_state(checkpoint: str, weighting: Any) -> bool:
    """Restore ``weighting`` from ``checkpoint``; False when the checkpoint holds no state."""
    path = os.path.join(checkpoint, WEIGHTING_FILE)
    if weighting is None or not os.path.isfile(path):
        return False
    weighting.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return True


def steps_to_skip(global_step: int, steps_in_epoch: int, accumulation: int) -> tuple[int, int]:
    """``(epoch, micro-batches)`` where the Trainer resumes: what it will skip, as it counts.

    Mirrors ``Trainer._init_training_state``: an epoch has ``ceil(steps / accumulation)`` updates.
    """
    updates = max(steps_in_epoch // accumulation + int(steps_in_epoch % accumulation > 0), 1)
    return global_step // updates, (global_step % updates) * accumulation


class CheckpointState:
    """The checkpoint half of MultiTaskTrainer (a mixin of the Trainer subclass): the files above
    are written with the optimizer's and read back with it."""

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            loader = None if self._stream is None else self._stream.loader
            save_state(output_dir, loader, self._weighting)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        load_weighting_state(checkpoint, self._weighting)
        loader_state = load_loader_state(checkpoint)
        if loader_state is None or self._stream is None or self.args.ignore_data_skip:
            return
        self._restore_position(checkpoint, loader_state)

    def _restore_position(self, checkpoint: str, loader_state: dict[str, Any]) -> None:
        trainer_state = TrainerState.load_from_json(f"{checkpoint}/trainer_state.json")
        epoch, skip = steps_to_skip(trainer_state.global_step, len(self._stream),
                                             self.args.gradient_accumulation_steps)
        at_end = loader_state["step"] >= len(self._stream)
        expected = (epoch - 1, len(self._stream)) if at_end and skip == 0 else (epoch, skip)
        if (loader_state["epoch"], loader_state["step"]) != expected:
            raise ValueError(
                f"resume_from_checkpoint={checkpoint!r}: expected a loader at epoch "
                f"{expected[0]}, step {expected[1]} (global step {trainer_state.global_step}), "
                f"got epoch {loader_state['epoch']}, step {loader_state['step']}: were the "
                "datasets, batch sizes or accumulation steps changed?"
            )
        if at_end:
            return  # the next epoch starts afresh
        self._stream.loader.load_state_dict(loader_state)
        self._stream.skip = skip
