"""Per-task evaluation for MultiTaskTrainer: one evaluation loop per task, one log of all metrics.

Each task is evaluated on its own dataset with its own collator and ``compute_metrics``; the
Trainer's ``evaluation_loop`` does the batching, gathering across processes and prefixing, so a
task's metric ``m`` is reported as ``{prefix}_{task}_{m}`` (``eval_sst_accuracy``), and
``{prefix}_loss`` is the mean of the tasks' losses.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, SequentialSampler
from transformers.trainer_pt_utils import nested_detach
from transformers.trainer_utils import speed_metrics

from mtlkit.integrations._trainer_checks import check_task_datasets
from mtlkit.integrations._trainer_losses import call_model, loss_of


class TaskEvaluation:
    """The evaluation half of MultiTaskTrainer (a mixin of the Trainer subclass)."""

    def evaluate(
        self,
        eval_dataset: Mapping[str, Any] | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Evaluate every task; metrics ``{prefix}_{task}_{name}`` plus the mean ``{prefix}_loss``.

        Args:
            eval_dataset: ``{task: Dataset}`` to evaluate instead of the trainer's own.
            ignore_keys: output keys not to gather as predictions.
            metric_key_prefix: the prefix of every metric name.
        """
        given = eval_dataset if eval_dataset is not None else self.eval_dataset
        if given is None:
            raise ValueError("eval_dataset: expected a mapping {task: Dataset}, got None")
        datasets = check_task_datasets(given, "eval_dataset", self._known_tasks)
        start = time.time()
        metrics: dict[str, float] = {}
        samples = 0
        for task, dataset in datasets.items():
            output = self._evaluate_task(task, dataset, ignore_keys, metric_key_prefix)
            metrics.update(output.metrics)
            samples += output.num_samples
        losses = [metrics[k] for t in datasets if (k := f"{metric_key_prefix}_{t}_loss") in metrics]
        if losses:
            metrics[f"{metric_key_prefix}_loss"] = sum(losses) / len(losses)
        metrics.update(speed_metrics(metric_key_prefix, start, num_samples=samples))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, metrics)
        return metrics

    def _evaluate_task(self, task: str, dataset: Any, ignore_keys: list[str] | None,
                       prefix: str) -> Any:
        metric_fn = self._task_metrics.get(task)
        dataset = self._model_columns(dataset, f"evaluation ({task})")
        loader = DataLoader(
            dataset,
            batch_size=self.args.eval_batch_size,
            sampler=SequentialSampler(dataset),
            collate_fn=self._collators.get(task) or self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory and self.args.device.type != "cpu",
        )
        loader = self.accelerator.prepare(loader)  # shards across processes, moves to device
        saved_metrics, self.compute_metrics, self._eval_task = self.compute_metrics, metric_fn, task
        try:
            return self.evaluation_loop(
                loader,
                description=f"Evaluation of {task}",
                prediction_loss_only=True if metric_fn is None else None,
                ignore_keys=ignore_keys,
                metric_key_prefix=f"{prefix}_{task}",
            )
        finally:
            self.compute_metrics, self._eval_task = saved_metrics, None

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, Any, Any]:
        """``(loss, predictions, labels)`` of one batch of the task being evaluated.

        The model is called as ``model(task=task, **batch)``; its loss is taken when the batch
        has labels, and every other output (a tensor, or the values of a mapping but the loss
        and ``ignore_keys``) is a prediction.
        """
        task = self._eval_task
        if task is None:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        names = self._label_names
        has_labels = all(inputs.get(n) is not None for n in names)
        if ignore_keys is None:
            config = getattr(self.model, "config", None)
            ignore_keys = list(getattr(config, "keys_to_ignore_at_inference", []) or [])
        with torch.no_grad(), self.compute_loss_context_manager():
            output = call_model(model, task, inputs, f"model(task={task!r})")
        loss = loss_of(output, f"model(task={task!r})").detach() if has_labels else None
        if prediction_loss_only:
            return loss, None, None
        if isinstance(output, Mapping):
            values = tuple(v for k, v in output.items() if k not in [*ignore_keys, "loss"])
        elif isinstance(output, torch.Tensor):
            values = () if has_labels else (output,)
        else:
            values = tuple(output)[1:] if has_labels else tuple(output)
        predictions = nested_detach(values)
        predictions = predictions[0] if len(predictions) == 1 else (predictions or None)
        labels = nested_detach(tuple(inputs.get(n) for n in names)) if has_labels else None
        if labels is not None and len(labels) == 1:
            labels = labels[0]
        return loss, predictions, labels
