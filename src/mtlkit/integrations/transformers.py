"""Multi-task training inside ``transformers.Trainer``: :class:`MultiTaskTrainer`.

Also :func:`resolve_pretrained`, where ``from_pretrained`` should load a model name from.

Importing this module imports transformers (``import mtlkit`` does not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer

import mtlkit
from mtlkit import MultiTaskLoader
from mtlkit.integrations._pretrained import resolve_pretrained
from mtlkit.integrations._trainer_checks import (
    check_batch_sizes,
    check_callables,
    check_combination,
    check_smart,
    check_task_datasets,
    check_trainer_args,
    model_tasks,
    resolve_weighting,
)
from mtlkit.integrations._trainer_data import (
    SKIPPED,
    StepLoader,
    StepStream,
    as_task_batches,
    task_loaders,
)
from mtlkit.integrations._trainer_eval import TaskEvaluation
from mtlkit.integrations._trainer_log import TrainLog
from mtlkit.integrations._trainer_losses import call_model, check_labels, loss_of, smart_task_loss
from mtlkit.integrations._trainer_state import CheckpointState
from mtlkit.integrations._trainer_step import TaskSteps
from mtlkit.weighting import LossWeighting, Weighting

__all__ = ["MultiTaskTrainer", "resolve_pretrained"]


class MultiTaskTrainer(TaskSteps, TaskEvaluation, CheckpointState, Trainer):
    """A ``transformers.Trainer`` over several tasks, with mtlkit's loader and weightings.

    Datasets are ``{task: Dataset}``. Every task gets its own DataLoader (its collator, its batch
    size, a ``DistributedSampler`` shard per rank), and a :class:`~mtlkit.MultiTaskLoader`
    draws the steps (``sampling=`` any of its modes): the same task on every rank at every step.
    The model computes one task's loss: ``model(task=task, **batch)`` returns a loss or outputs
    with ``.loss`` (override :meth:`compute_task_loss` otherwise). A step's task losses are summed
    (``weighting=None``), or go to a loss weighting, or to a gradient weighting run by
    :class:`mtlkit.MultiTaskOptimizer` around the optimizer the Trainer creates; the Trainer's LR
    scheduler, ``max_grad_norm`` clipping, mixed precision and gradient accumulation apply as
    usual.

    Gradient accumulation: for the plain sum, ``k`` micro-batches equal one ``k`` times larger
    batch. A gradient weighting combines the ACCUMULATED per-task gradients once per optimizer
    step (each task's gradient is summed over the micro-batches, then the sums are combined),
    i.e. surgery on the big batch, not a sum of surgeries on micro-batches: accumulation stays a
    pure memory trade (at the cost of ``T x P`` numbers for the sums), a sampled mode (one task
    per micro-batch) gets several tasks per combination, and under ``torchrun`` the ranks
    exchange the task gradients once per optimizer step.

    Checkpoints (the Trainer's ``save_strategy``) also hold the loader position and the
    weighting's state, so ``train(resume_from_checkpoint=...)`` continues mid-epoch with the
    batches an uninterrupted run would have drawn.

    Args:
        model: The multi-task model (see above); under ``torchrun`` the Trainer wraps it in DDP.
        args: ``transformers.TrainingArguments``. ``per_device_train_batch_size`` is the batch
            size of each task (see ``batch_sizes``); ``remove_unused_columns`` applies to
            ``datasets.Dataset`` inputs; ``train_sampling_strategy`` does not apply.
        train_dataset: ``{task: Dataset}``; its order is the task order.
        eval_dataset: ``{task: Dataset}`` for :meth:`evaluate`.
        data_collator: one collator for all tasks, or ``{task: collator}`` (the others get the
            Trainer's default).
        compute_metrics: ``f(EvalPrediction) -> dict`` for every task, or ``{task: f}``; a task's
            metric ``m`` is logged as ``eval_{task}_{m}``.
        sampling: the :class:`~mtlkit.MultiTaskLoader` mode (default ``"interleaved"``: one
            batch of every task per step).
        temperature: for ``sampling="temperature"``.
        sampling_weights: ``{task: weight}`` for ``sampling="weighted"``.
        steps_per_epoch: the loader's epoch length, overriding the mode's.
        batch_sizes: ``{task: batch size}`` overriding ``per_device_train_batch_size``.
        weighting: ``None`` (plain sum of the task losses), a name from
            ``mtlkit.weighting.NAMES``, a :class:`mtlkit.weighting.Weighting` (e.g.
            ``mtlkit.weighting.PCGrad(seed=0)``) or a :class:`mtlkit.weighting.LossWeighting`
            (its parameters join the optimizer, in a group without weight decay).
        shared_params: the parameters a gradient weighting treats as shared (default: those
            that two or more tasks reach, found at every step).
        reduction: ``"sum"`` or ``"mean"`` of the weighted task gradients.
        sync: how a gradient weighting synchronises processes, as in
            :class:`mtlkit.MultiTaskOptimizer` (default ``"tasks"``: the task gradients are
            averaged, then combined: exact surgery on the global batch). Under ``torchrun``
            DDP's own all-reduce never runs: every forward and backward is under ``no_sync()``
            and the gradients are averaged once per optimizer step, by the weighting's sync or
            (plain sum, loss weighting) by :func:`mtlkit.average_gradients`.
        smart: ``{task: SmartLoss}``: a SMART term for these tasks, through
            :func:`mtlkit.hf_smart_inputs` (the model must accept ``inputs_embeds`` and have
            ``get_input_embeddings()``, and its outputs ``.logits``).
        smart_weight: the SMART term's weight, for all tasks or ``{task: weight}``.
        per_sample_routing: with ``sampling="interleaved"``, one forward per step over all
            tasks' batches concatenated (padded), for a model routed per sample such as a
            :class:`~mtlkit.LoRAMoE`: the model is called as ``model(task=names, **inputs,
            labels={task: labels})``, ``names`` holding one task per row, and returns
            ``{task: loss}`` (or outputs whose ``.loss`` is that mapping).
        **kwargs: any other ``transformers.Trainer`` argument (``processing_class``,
            ``callbacks``, ``optimizers``, ``model_init``, ...).

    Raises:
        ValueError: a dataset, collator, metric or SMART entry for an unknown task; a weighting
            with fewer than two tasks per optimizer step; options that cannot be combined.
        TypeError: arguments of the wrong kind.

    Example:
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from transformers import PrinterCallback, TrainingArguments
        >>> from mtlkit.integrations.transformers import MultiTaskTrainer
        >>> import mtlkit
        >>> class TwoHeads(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.body = nn.Linear(4, 8)
        ...         self.heads = nn.ModuleDict({"a": nn.Linear(8, 3), "b": nn.Linear(8, 1)})
        ...     def forward(self, task, x, labels):
        ...         out = self.heads[task](torch.relu(self.body(x)))
        ...         if task == "a":
        ...             return nn.functional.cross_entropy(out, labels)
        ...         return nn.functional.mse_loss(out.squeeze(-1), labels)
        >>> _ = torch.manual_seed(0)
        >>> rows = lambda n, y: [{"x": torch.randn(4), "labels": y(i)} for i in range(n)]
        >>> data = {"a": rows(16, lambda i: i % 3), "b": rows(8, lambda i: float(i))}
        >>> out = tempfile.mkdtemp()
        >>> args = TrainingArguments(out, per_device_train_batch_size=4, max_steps=3,
        ...                          use_cpu=True, report_to=[], save_strategy="no",
        ...                          logging_steps=1, disable_tqdm=True)
        >>> trainer = MultiTaskTrainer(TwoHeads(), args, train_dataset=data,
        ...                            weighting=mtlkit.weighting.PCGrad(seed=0))
        >>> trainer.remove_callback(PrinterCallback)         # keep the doctest's output short
        >>> trainer.train().global_step
        3
        >>> sorted(k for k in trainer.state.log_history[0] if k.startswith(("loss_", "cos")))
        ['cos_a_b', 'loss_a', 'loss_b']
        >>> trainer.state.log_history[0]["num_conflicts"] in (0, 1)
        True
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: Any = None,
        *,
        train_dataset: Mapping[str, Any] | None = None,
        eval_dataset: Mapping[str, Any] | None = None,
        data_collator: Callable | Mapping[str, Callable] | None = None,
        compute_metrics: Callable | Mapping[str, Callable] | None = None,
        sampling: str = "interleaved",
        temperature: float | None = None,
        sampling_weights: Mapping[str, float] | None = None,
        steps_per_epoch: int | None = None,
        batch_sizes: Mapping[str, int] | None = None,
        weighting: str | Weighting | LossWeighting | None = None,
        shared_params: Iterable[Tensor] | None = None,
        reduction: str = "sum",
        sync: str = "tasks",
        smart: Mapping[str, Any] | None = None,
        smart_weight: float | Mapping[str, float] = 1.0,
        per_sample_routing: bool = False,
        **kwargs: Any,
    ) -> None:
        collator = None if isinstance(data_collator, Mapping) else data_collator
        super().__init__(model, args, data_collator=collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, **kwargs)
        self._check_tasks(train_dataset, eval_dataset, data_collator, compute_metrics)
        self._sampling = dict(mode=sampling, temperature=temperature, weights=sampling_weights,
                              steps_per_epoch=steps_per_epoch)
        self._batch_sizes = check_batch_sizes(batch_sizes, self.args.per_device_train_batch_size,
                                              self._tasks)
        self._smart = check_smart(smart, smart_weight, self._tasks)
        self._weighting = resolve_weighting(weighting)
        check_combination(self._weighting, self._tasks, sampling,
                          self.args.gradient_accumulation_steps, per_sample_routing, self._smart)
        check_trainer_args(self.args, self._sharded_kind)
        if isinstance(self._weighting, LossWeighting):
            self._weighting.to(self.args.device)
        self._shared_params = None if shared_params is None else list(shared_params)
        self._reduction, self._sync = reduction, sync
        self._per_sample_routing = bool(per_sample_routing)
        self._label_names = list(self.label_names) or ["labels"]
        self._surgery: Any = None
        self._stream: StepStream | None = None
        self._eval_task: str | None = None
        self._train_log = TrainLog(self._tasks)
        self._checked_sharing = False
        self._stackable = True  # the routed forward splits by rows until a model refuses
        self._combined: Any = None  # the stats of a stacked backward, for _synchronize
        self._starts_step = True

    def _check_tasks(self, train_dataset: Any, eval_dataset: Any, data_collator: Any,
                     compute_metrics: Any) -> None:
        """The task names, and every per-task argument checked against them."""
        declared = model_tasks(self.accelerator.unwrap_model(self.model))
        if train_dataset is not None:
            train_dataset = check_task_datasets(train_dataset, "train_dataset", declared)
        self._tasks = list(train_dataset) if train_dataset is not None else (declared or [])
        self._known_tasks = declared or self._tasks or None
        if eval_dataset is not None:
            self.eval_dataset = check_task_datasets(eval_dataset, "eval_dataset", self._known_tasks)
        self.train_dataset = train_dataset
        tasks = sorted({*self._tasks, *(self.eval_dataset or {})})
        self._collators = check_callables(data_collator, "data_collator", tasks, None)
        for task in tasks:
            self._collators[task] = self._collators[task] or self.data_collator
        self._task_metrics = check_callables(compute_metrics, "compute_metrics", tasks, None)

    # ------------------------------------------------------------------ what users override
    def compute_task_loss(self, model: nn.Module, task: str, batch: Mapping[str, Any]) -> Tensor:
        """One task's loss on one of its batches (override for models with another contract).

        The default checks that the batch carries the labels, calls ``model(task=task,
        **batch)`` and takes its loss; for a task in ``smart`` it adds the weighted SMART term.

        Example:
            >>> import torch
            >>> from mtlkit.integrations.transformers import MultiTaskTrainer
            >>> class MyTrainer(MultiTaskTrainer):
            ...     def compute_task_loss(self, model, task, batch):
            ...         scores = model(batch["x"])                   # a model without tasks
            ...         return torch.nn.functional.mse_loss(scores, batch["labels"])
            >>> issubclass(MyTrainer, MultiTaskTrainer)
            True
        """
        check_labels(task, batch, self._label_names)
        where = f"model(task={task!r})"
        if task not in self._smart:
            return loss_of(call_model(model, task, batch, where), where)
        term, weight = self._smart[task]
        unwrapped = self.accelerator.unwrap_model(model)
        loss, reg = smart_task_loss(model, unwrapped, task, batch, term, self._label_names)
        self._train_log.add("smart", {task: reg})
        return loss + weight * reg

    # ------------------------------------------------------------------ data
    def get_train_dataloader(self) -> StepLoader:
        """The training steps: a DataLoader over a :class:`~mtlkit.MultiTaskLoader`'s steps."""
        if self.train_dataset is None:
            raise ValueError("train_dataset: expected a mapping {task: Dataset}, got None")
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        datasets = {t: self._model_columns(d, f"training ({t})")
                    for t, d in self.train_dataset.items()}
        loaders = task_loaders(
            datasets, self._batch_sizes, self._collators,
            world_size=max(self.args.world_size, 1), rank=self.args.process_index, seed=seed,
            drop_last=self.args.dataloader_drop_last,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory and self.args.device.type != "cpu",
        )
        loader = MultiTaskLoader(loaders, seed=seed, **self._sampling)
        self._stream = StepStream(loader)
        return StepLoader(self._stream)

    def _model_columns(self, dataset: Any, description: str) -> Any:
        """A ``datasets.Dataset`` without the columns the model's forward does not take (with
        ``args.remove_unused_columns``, as the Trainer does); any other dataset as it is."""
        if type(dataset).__module__.startswith("datasets.") and hasattr(dataset, "column_names"):
            return self._remove_unused_columns(dataset, description=description)
        return dataset

    def num_examples(self, dataloader: Any) -> int:
        """Training rows over all tasks for the train loader, else the Trainer's count."""
        if isinstance(dataloader, StepLoader):
            return sum(len(d) for d in self.train_dataset.values())
        return super().num_examples(dataloader)

    def floating_point_ops(self, inputs: Any) -> int:
        """The Trainer's estimate, summed over the tasks of a step."""
        if inputs is SKIPPED:
            return 0
        if isinstance(inputs, Mapping) and not set(inputs) <= set(self._tasks):
            return super().floating_point_ops(inputs)
        return sum(super(MultiTaskTrainer, self).floating_point_ops(b)
                   for b in as_task_batches(inputs).values())

    # ------------------------------------------------------------------ optimizer
    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        """The Trainer's optimizer, wrapped for a gradient weighting (a loss weighting's
        parameters added in a group without weight decay)."""
        user_given = self.optimizer is not None
        optimizer = super().create_optimizer(*args, **kwargs)
        if self._surgery is not None and optimizer is self._surgery:
            return optimizer
        if isinstance(self._weighting, LossWeighting):
            self._add_weighting_params(optimizer, user_given)
        elif self._weighting is not None:
            self._surgery = mtlkit.MultiTaskOptimizer(
                optimizer, self._weighting, shared_params=self._shared_params,
                reduction=self._reduction, sync=self._sync,
                grad_scaler=getattr(self.accelerator, "scaler", None))
            self.optimizer = self._surgery
        return self.optimizer

    def _add_weighting_params(self, optimizer: torch.optim.Optimizer, user_given: bool) -> None:
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [p for p in self._weighting.parameters() if id(p) not in owned]
        if missing and user_given:
            raise ValueError(
                f"optimizers: expected an optimizer holding the parameters of the weighting "
                f"{type(self._weighting).__name__}, got one without {len(missing)} of them"
            )
        if missing:
            optimizer.add_param_group({"params": missing, "weight_decay": 0.0})

    # ------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The Trainer's log; a training log also gets ``loss_{task}`` (and ``smart_{task}``)
        means since the last one and, with a gradient weighting, the mean ``num_conflicts`` count
        and ``cos_{a}_{b}`` cosines."""
        if "loss" in logs and self._train_log:
            reduce = None
            if self.args.world_size > 1:
                def reduce(t: Tensor) -> Tensor:
                    return self.accelerator.reduce(t, reduction="sum")
            logs.update(self._train_log.drain(reduce))
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------ checks
    def _sharded_kind(self) -> str:
        if self.is_deepspeed_enabled:
            return "DeepSpeed"
        if self.is_fsdp_enabled:
            return "FSDP"
        return ""
