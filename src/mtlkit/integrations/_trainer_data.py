"""MultiTaskTrainer's data: one DataLoader per task, combined by a MultiTaskLoader and served to
``transformers.Trainer`` as one DataLoader whose items are the loader's steps.

The Trainer iterates, counts and (on resume) skips the items of the DataLoader it gets. Ours is a
``DataLoader`` over an ``IterableDataset`` that yields :class:`~mtlkit.MultiTaskLoader` steps, so
``len()`` is the loader's epoch length and ``set_epoch`` reaches the loader. Resuming restores the
loader's own position instead of re-reading the consumed batches; the Trainer still skips as many
items as it believes were consumed, so the stream first yields that many placeholders (free).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from mtlkit import MultiTaskLoader


class _Skipped:
    """What the stream yields for a step the Trainer will skip on resume (never trained on)."""

    def __repr__(self) -> str:
        return "<step skipped on resume>"


SKIPPED = _Skipped()


def _identity(item: Any) -> Any:
    return item


def task_loaders(
    datasets: Mapping[str, Any],
    batch_sizes: Mapping[str, int],
    collators: Mapping[str, Callable],
    *,
    world_size: int,
    rank: int,
    seed: int,
    drop_last: bool,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> dict[str, DataLoader]:
    """One shuffling DataLoader per task, each rank holding its own shard of every task.

    A ``DistributedSampler`` also with one process: its permutation depends on the seed and
    epoch alone, so one process with batch ``n * B`` sees exactly the union of the ``n`` ranks'
    batches of ``B`` (the global batch) at every step.
    """
    out = {}
    for task, dataset in datasets.items():
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )
        out[task] = DataLoader(
            dataset,
            batch_size=batch_sizes[task],
            sampler=sampler,
            collate_fn=collators[task],
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
    return out


class StepStream(IterableDataset):
    """The steps of ``loader``, preceded once by ``skip`` placeholders (set on resume)."""

    def __init__(self, loader: MultiTaskLoader) -> None:
        self.loader = loader
        self.skip = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        skip, self.skip = self.skip, 0
        for _ in range(skip):
            yield SKIPPED
        yield from self.loader


class StepLoader(DataLoader):
    """The DataLoader the Trainer iterates: one item per MultiTaskLoader step.

    It draws no randomness from torch's global generator (its own generator seeds the
    iterator), so iterating it does not shift the dropout masks the Trainer's RNG state holds.
    """

    def __init__(self, stream: StepStream) -> None:
        super().__init__(stream, batch_size=None, collate_fn=_identity, generator=torch.Generator())

    @property
    def loader(self) -> MultiTaskLoader:
        return self.dataset.loader

    def set_epoch(self, epoch: int) -> None:
        """Run ``epoch`` next (the Trainer calls this at the start of every epoch)."""
        if epoch != self.loader.epoch:
            self.dataset.skip = 0  # a restored position of another epoch is dropped too
        self.loader.set_epoch(epoch)


def as_task_batches(step: Any) -> dict[str, Any]:
    """``{task: batch}`` from a loader step: the interleaved dict, or a ``(task, batch)`` pair."""
    if step is SKIPPED:
        raise RuntimeError(
            "MultiTaskTrainer: a placeholder for a step skipped on resume reached training_step; "
            "the Trainer did not skip the steps the checkpoint had consumed"
        )
    if isinstance(step, Mapping):
        return dict(step)
    task, batch = step
    return {task: batch}


def concat_batches(
    batches: Mapping[str, Mapping[str, Any]],
    label_names: list[str],
    pad_values: Mapping[str, int],
) -> tuple[list[str], dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """One batch from every task's batch, for a single forward routed per sample.

    Inputs of rank 2 or more (``input_ids``, ``attention_mask``, ...) are padded along dim 1 to
    the longest task (``pad_values[key]``, default 0: masked positions), then concatenated in
    task order; the labels stay per task.

    Returns:
        ``(names, inputs, labels)``: one task name per row, the joint inputs, and
        ``{label_name: {task: labels}}``.

    Raises:
        ValueError: the task batches do not carry the same input keys.
    """
    tasks = list(batches)
    keys = [k for k in batches[tasks[0]] if k not in label_names]
    for task in tasks[1:]:
        other = [k for k in batches[task] if k not in label_names]
        if set(other) != set(keys):
            raise ValueError(
                "per_sample_routing: expected every task's batch to carry the same inputs, got "
                f"{sorted(keys)} for {tasks[0]!r} and {sorted(other)} for {task!r}"
            )
    joint: dict[str, torch.Tensor] = {}
    for key in keys:
        parts = [batches[t][key] for t in tasks]
        if not all(isinstance(p, torch.Tensor) for p in parts):
            raise ValueError(
                f"per_sample_routing: expected tensors under {key!r} in every task's batch, got "
                f"{[type(p).__name__ for p in parts]}"
            )
        if parts[0].ndim >= 2:
            width = max(p.shape[1] for p in parts)
            value = pad_values.get(key, 0)
            parts = [torch.nn.functional.pad(p, (0, width - p.shape[1]), value=value)
                     if p.ndim == 2 else _pad_dim1(p, width, value) for p in parts]
        joint[key] = torch.cat(parts)
    names = [t for t in tasks for _ in range(len(batches[t][keys[0]]))] if keys else []
    labels = {n: {t: batches[t][n] for t in tasks if n in batches[t]} for n in label_names}
    return names, joint, {n: v for n, v in labels.items() if v}


def _pad_dim1(tensor: torch.Tensor, width: int, value: int) -> torch.Tensor:
    shape = list(tensor.shape)
    shape[1] = width - tensor.shape[1]
    return torch.cat([tensor, tensor.new_full(shape, value)], dim=1)
