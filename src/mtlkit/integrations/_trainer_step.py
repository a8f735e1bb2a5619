"""MultiTaskTrainer's training step: every task of a micro-batch forward and backward, the
gradients combined (a weighting) or averaged (processes) once per optimizer step.

DDP's reducer expects one forward per backward, and a multi-task step runs one forward per task,
so every forward and backward runs under ``no_sync()``; on the last micro-batch of a step the
gradients are averaged by one ``mtlkit.average_gradients`` (plain sum, loss weighting) or by
:class:`mtlkit.MultiTaskOptimizer`'s own sync (gradient weighting). Nothing is all-reduced twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

import mtlkit
from mtlkit.integrations._trainer_data import as_task_batches, concat_batches
from mtlkit.integrations._trainer_losses import call_model, check_labels, loss_of, stack_losses
from mtlkit.surgery import UnsplittableModel
from mtlkit.weighting import LossWeighting

logger = logging.getLogger(__name__)


class TaskSteps:
    """The training-step half of MultiTaskTrainer (a mixin of the Trainer subclass)."""

    _stackable: bool
    _combined: Any

    def training_step(self, model: nn.Module, inputs: Any,
                      num_items_in_batch: Any = None) -> Tensor:
        """Forward and backpropagate every task of one micro-batch; on the last micro-batch of
        an optimizer step, combine (weighting) or average (processes) the gradients.

        Returns the summed (or weighted) loss, scaled for accumulation, for the Trainer's log.
        """
        batches = self._prepare_inputs(as_task_batches(inputs))
        model.train()
        scale = 1.0 / self.current_gradient_accumulation_steps
        last = self.accelerator.sync_gradients  # the Trainer's "last micro-batch of the step"
        if self._starts_step and isinstance(self._weighting, LossWeighting):
            self._weighting.zero_grad(set_to_none=True)  # the Trainer zeroes the model's only
        self._starts_step = last
        # DDP's reducer expects one forward per backward; a step has one per task, so DDP never
        # syncs here and the gradients are averaged once per optimizer step below instead
        with self.accelerator.no_sync(model):
            losses, total = self._backward(model, batches, scale)
        if last:
            self._synchronize()
        self._train_log.add("loss", losses)
        return (total * scale).to(self.args.device)

    def _backward(self, model: nn.Module, batches: dict[str, Any],
                  scale: float) -> tuple[dict[str, Tensor], Tensor]:
        loss_weighting = isinstance(self._weighting, LossWeighting)
        if not (self._per_sample_routing or loss_weighting):
            losses = {}
            for task, batch in batches.items():  # backward after each forward: less memory
                with self.compute_loss_context_manager():
                    loss = self._task_loss(model, task, batch)
                self._backward_task(task, loss * scale)
                losses[task] = loss.detach()
            return losses, _sum(losses)
        if self._surgery is not None and self._stackable:
            try:
                return self._routed_stacked_backward(model, batches, scale)
            except UnsplittableModel as exc:  # this micro-batch was not kept: redo it per task
                self._stackable = False
                logger.warning("per_sample_routing: a backward per task from now on (%s)", exc)
        with self.compute_loss_context_manager():
            losses = self._step_losses(model, batches)
            total = self._weighted_loss(losses) if loss_weighting else None
        detached = {t: v.detach() for t, v in losses.items()}
        if total is None and self._surgery is None:
            total = _sum(losses)  # one backward through the shared graph of the routed forward
        if total is not None:
            self.accelerator.backward(total * scale)
            return detached, total.detach()
        items = list(losses.items())
        for i, (task, loss) in enumerate(items):
            self._backward_task(task, loss * scale, retain_graph=i < len(items) - 1)
        return detached, _sum(detached)

    def _routed_stacked_backward(self, model: nn.Module, batches: dict[str, Any],
                                 scale: float) -> tuple[dict[str, Tensor], Tensor]:
        """The routed forward and ONE backward, split by the tasks' rows into their gradients
        (``MultiTaskOptimizer.stacked``) instead of a backward per task through the graph."""
        rows = {task: _rows_of(batch, self._label_names) for task, batch in batches.items()}
        with self._surgery.stacked(model, rows):
            with self.compute_loss_context_manager():
                losses = self._routed_losses(model, batches)
            scaled = {t: v * scale for t, v in losses.items()}
            if self.current_gradient_accumulation_steps == 1:
                self._combined = self._surgery.backward(scaled)
            else:  # added to the step's task gradients, combined on the last micro-batch
                self._surgery._stacked_record(scaled)
        detached = {t: v.detach() for t, v in losses.items()}
        return detached, _sum(detached)

    def _weighted_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """The loss weighting applied to the step's losses, at their global-batch values.

        Under several processes the weighting sees the mean of the ranks' losses (its state then
        evolves identically everywhere) while each rank's gradient flows through its own loss:
        after the gradient average this is the weighting of the global batch.
        """
        stacked = stack_losses(losses, list(losses))
        if self.args.world_size > 1:
            mean = self.accelerator.reduce(stacked.detach().clone(), reduction="mean")
            stacked = stacked + (mean - stacked.detach())
        total = self._weighting(stacked)
        return total / len(losses) if self._reduction == "mean" else total

    def _backward_task(self, task: str, loss: Tensor, retain_graph: bool = False) -> None:
        if self._surgery is None:
            self.accelerator.backward(loss, retain_graph=retain_graph)  # scales under fp16
        else:  # the optimizer was given the Trainer's GradScaler: it scales the backward itself;
            # a task seen again in a later micro-batch adds to its gradient, combined once
            self._surgery.task_backward(task, loss, retain_graph=retain_graph)

    def _trainable_params(self) -> list[Tensor]:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        return [p for p in params if p.requires_grad]

    def _synchronize(self) -> None:
        if self._surgery is not None and self._combined is not None:
            self._record_surgery(self._combined)  # the stacked backward combined already
            self._combined = None
        elif self._surgery is not None:  # the micro-batches' task gradients, summed per task
            self._record_surgery(self._surgery.combine())  # syncs the ranks itself
        elif self.args.world_size > 1:
            mtlkit.average_gradients(self._trainable_params())

    def _step_losses(self, model: nn.Module, batches: dict[str, Any]) -> dict[str, Tensor]:
        if self._per_sample_routing:
            return self._routed_losses(model, batches)
        return {task: self._task_loss(model, task, batch) for task, batch in batches.items()}

    def _task_loss(self, model: nn.Module, task: str, batch: Any) -> Tensor:
        return loss_of(self.compute_task_loss(model, task, batch), f"compute_task_loss({task!r})")

    def _routed_losses(self, model: nn.Module, batches: dict[str, Any]) -> dict[str, Tensor]:
        for task, batch in batches.items():
            check_labels(task, batch, self._label_names)
        names, joint, labels = concat_batches(batches, self._label_names, self._pad_values())
        output = call_model(model, names, {**joint, **labels}, "model(task=[...])")
        if not (isinstance(output, Mapping) and set(output) == set(batches)):
            output = output.get("loss") if isinstance(output, Mapping) else getattr(
                output, "loss", None)
        if not isinstance(output, Mapping) or set(output) != set(batches):
            raise ValueError(
                "per_sample_routing: expected the model to return {task: loss} for the tasks "
                f"{list(batches)}, got {type(output).__name__}"
            )
        return {t: loss_of(output[t], f"model(task=[...])[{t!r}]") for t in batches}

    def _pad_values(self) -> dict[str, int]:
        pad = getattr(self.processing_class, "pad_token_id", None)
        if pad is None:
            config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
            pad = getattr(config, "pad_token_id", None)
        return {"input_ids": int(pad or 0)}

    def _record_surgery(self, stats: Any) -> None:
        cosine = stats.cosine
        reaching = int((cosine.diagonal() > 0.5).sum())
        if not self._checked_sharing and len(stats.tasks) >= 2:
            self._checked_sharing = True
            if reaching < 2:
                raise ValueError(
                    f"weighting: expected at least two tasks reaching shared parameters, got "
                    f"{reaching} of {list(stats.tasks)} (do the tasks share an encoder? are "
                    "shared_params right?)"
                )
        self._train_log.add_surgery(stats.tasks, cosine, stats.num_conflicts)


def _rows_of(batch: Any, label_names: list[str]) -> int:
    """A task batch's number of rows: the length of its first input tensor."""
    for key, value in batch.items():
        if key not in label_names and isinstance(value, Tensor) and value.dim() >= 1:
            return int(value.shape[0])
    raise ValueError(f"per_sample_routing: expected a tensor input in the batch, got {list(batch)}")


def _sum(losses: Mapping[str, Tensor]) -> Tensor:
    return torch.stack([v.float() for v in losses.values()]).sum()
