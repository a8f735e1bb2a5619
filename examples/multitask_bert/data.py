"""The pipeline's data: the three tasks' splits, tokenization once per run, dynamic padding.

Reading lives in :mod:`multitask_bert.csv_data` (the CS224N files) and
:mod:`multitask_bert.hub_data` (the same tasks from the Hugging Face hub, and
:func:`~multitask_bert.hub_data.load_task_splits` choosing between the two); the checks both
apply in :mod:`multitask_bert.data_checks`; length-aware batching in
:mod:`multitask_bert.batching`. The reading names are re-exported here for the callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

# re-exported (``name as name``): the callers import the reading names from here
from .csv_data import FILES as FILES
from .csv_data import read_split as read_split
from .csv_data import resolve_path as resolve_path
from .csv_data import unquote_nested as unquote_nested
from .data_checks import SPLITS as SPLITS
from .data_checks import TASKS as TASKS
from .data_checks import DataFileError as DataFileError
from .task_split import LABEL_COLUMN as LABEL_COLUMN
from .task_split import PAIR_TASKS as PAIR_TASKS
from .task_split import TEXT_COLUMNS as TEXT_COLUMNS
from .task_split import TaskSplit as TaskSplit
from .task_split import normalize_ptb as normalize_ptb
from .task_split import subsample as subsample

# ----------------------------------------------------------------------------- tokenization


class TokenizedTask(Dataset):
    """One split tokenized once: lists of token ids, no padding (padding is per batch).

    ``mode="cross"`` encodes pairs as ``[CLS] s1 [SEP] s2 [SEP]`` (one sequence);
    ``mode="separate"`` encodes each sentence of a pair on its own (the baseline). Single
    sentence tasks are the same in both modes.

    ``both_orders=True`` (cross-encoded pairs only) also tokenizes every pair the other way
    round, ``[CLS] s2 [SEP] s1 [SEP]``: item ``i + len(self)`` is row ``i`` swapped. The
    pair tasks are symmetric, so training on both orders (``--pair-swap``) and averaging
    both at prediction (``--symmetric-eval``) use the same row twice at no labelling cost.
    """

    def __init__(self, split: TaskSplit, tokenizer: Any, mode: str, max_length: int,
                 pad_multiple: int = 1, both_orders: bool = False) -> None:
        if mode not in ("cross", "separate"):
            raise ValueError(f"mode must be 'cross' or 'separate', got {mode!r}")
        if pad_multiple <= 0:
            raise ValueError(f"pad_multiple must be positive, got {pad_multiple}")
        self.pad_multiple = pad_multiple
        self.split, self.mode, self.task = split, mode, split.task
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        kw = {"truncation": True, "max_length": max_length, "return_attention_mask": False,
              "return_token_type_ids": True}
        self.fields: dict[str, list[list[int]]] = {}
        # the pairs the other way round (item i + len(self)); empty unless both_orders
        self.swapped: dict[str, list[list[int]]] = {}
        if split.sent2 is not None and mode == "cross":
            enc = tokenizer(split.sent1, split.sent2, **kw)
            self.fields = {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}
            if both_orders:
                enc = tokenizer(split.sent2, split.sent1, **kw)
                self.swapped = {"input_ids": enc["input_ids"],
                                "token_type_ids": enc["token_type_ids"]}
        else:
            enc = tokenizer(split.sent1, **kw)
            self.fields = {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}
            if split.sent2 is not None:
                enc2 = tokenizer(split.sent2, **kw)
                self.fields["input_ids_2"] = enc2["input_ids"]
                self.fields["token_type_ids_2"] = enc2["token_type_ids"]
        self.lengths = [sum(len(self.fields[k][i]) for k in self.fields if k.startswith("input"))
                        for i in range(len(split))]
        self.features: list[float] | None = None  # one scalar per row, see set_features

    def set_features(self, values: Sequence[float]) -> None:
        """Attach one scalar per row (``--pair-feature``); batches then carry ``pair_feature``.

        A swapped item (``both_orders``) gets its row's value: the features are symmetric.

        Raises:
            ValueError: not one value per row.
        """
        values = [float(v) for v in values]
        if len(values) != len(self.split):
            raise ValueError(f"{self.task} {self.split.split}: {len(values)} feature values for "
                             f"{len(self.split)} rows")
        self.features = values

    def __len__(self) -> int:
        return len(self.split)

    @property
    def has_both_orders(self) -> bool:
        """True when items ``len(self)`` to ``2 * len(self) - 1`` are the swapped pairs."""
        return bool(self.swapped)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self.split)
        fields = self.fields
        if i >= n and self.swapped:  # row i - n, sentences swapped
            i, fields = i - n, self.swapped
        item: dict[str, Any] = {k: v[i] for k, v in fields.items()}
        item["index"] = i
        if self.features is not None:
            item["pair_feature"] = self.features[i]
        if self.split.labels is not None:
            item["label"] = self.split.labels[i]
        return item

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad a list of items to the longest in the batch (dynamic padding)."""
        return collate(items, self.pad_id, self.task, self.pad_multiple)


def collate(items: list[dict[str, Any]], pad_id: int, task: str,
            pad_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Stack items into tensors padded to the batch's longest sequence.

    ``pad_multiple`` rounds the padded width up to a multiple (fewer distinct shapes: kernels
    that specialise on shapes, such as oneDNN's bf16 ones, are then reused).

    >>> b = collate([{"input_ids": [1, 2, 3], "token_type_ids": [0, 0, 0], "index": 0},
    ...              {"input_ids": [1, 2], "token_type_ids": [0, 0], "index": 1}], 0, "sst")
    >>> b["input_ids"].tolist(), b["attention_mask"].tolist()
    ([[1, 2, 3], [1, 2, 0]], [[1, 1, 1], [1, 1, 0]])
    """
    out: dict[str, torch.Tensor] = {"index": torch.tensor([it["index"] for it in items])}
    for suffix in ("", "_2"):
        key = "input_ids" + suffix
        if key not in items[0]:
            continue
        width = max(len(it[key]) for it in items)
        width = -(-width // pad_multiple) * pad_multiple
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        types = torch.zeros((len(items), width), dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for r, it in enumerate(items):
            n = len(it[key])
            ids[r, :n] = torch.tensor(it[key])
            types[r, :n] = torch.tensor(it["token_type_ids" + suffix])
            mask[r, :n] = 1
        out[key], out["token_type_ids" + suffix], out["attention_mask" + suffix] = ids, types, mask
    if "pair_feature" in items[0]:
        out["pair_feature"] = torch.tensor([it["pair_feature"] for it in items],
                                           dtype=torch.float32)
    if "label" in items[0]:
        dtype = torch.long if task == "sst" else torch.float32
        out["labels"] = torch.tensor([it["label"] for it in items], dtype=dtype)
    return out


class TokenCache:
    """Tokenize each (task, split, mode) once per run and hand back the same dataset after."""

    def __init__(self, tokenizer: Any, max_length: int, pad_multiple: int = 1) -> None:
        self.tokenizer, self.max_length, self.pad_multiple = tokenizer, max_length, pad_multiple
        self._cache: dict[tuple[str, str, str, int, bool], TokenizedTask] = {}

    def get(self, split: TaskSplit, mode: str, both_orders: bool = False) -> TokenizedTask:
        """The tokenized ``split`` (see :class:`TokenizedTask` for ``both_orders``)."""
        both_orders = both_orders and mode == "cross" and split.sent2 is not None
        key = (split.task, split.split, mode, id(split), both_orders)
        if key not in self._cache:
            self._cache[key] = TokenizedTask(split, self.tokenizer, mode, self.max_length,
                                             self.pad_multiple, both_orders)
        return self._cache[key]

    def __len__(self) -> int:
        return len(self._cache)
