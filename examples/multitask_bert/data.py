"""CS224N-format CSV loading, tokenization once per run, dynamic padding.

Length-aware batching lives in :mod:`multitask_bert.batching`.

The files are described in ``../shared/data/README.md``. Every quirk listed there is handled
here: the unnamed pandas index column (columns are found by header name, never by position), the
SST test file's extra leading column, CSV quoting with doubled quotes (the ``csv`` module parses
them; splitting on tabs by hand would keep the quotes; QQP questions quoted twice upstream are
unquoted once more by :func:`unquote_nested`), QQP labels written as floats, and rows
with a missing sentence or label, which are logged with file and line, skipped, and counted.
"""

from __future__ import annotations

import csv
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "dev", "test")

# (task, split) -> candidate file names, first existing wins.
FILES: dict[tuple[str, str], tuple[str, ...]] = {
    ("sst", "train"): ("ids-sst-train.csv",),
    ("sst", "dev"): ("ids-sst-dev.csv",),
    ("sst", "test"): ("ids-sst-test-student.csv",),
    ("qqp", "train"): ("quora-train.csv", "quora-train-partial.csv"),
    ("qqp", "dev"): ("quora-dev.csv",),
    ("qqp", "test"): ("quora-test-student.csv",),
    ("sts", "train"): ("sts-train.csv",),
    ("sts", "dev"): ("sts-dev.csv",),
    ("sts", "test"): ("sts-test-student.csv",),
}
LABEL_COLUMN = {"sst": "sentiment", "qqp": "is_duplicate", "sts": "similarity"}
PAIR_TASKS = frozenset({"qqp", "sts"})

_PTB = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}",
        "``": '"', "''": '"', "\\/": "/", "\\*": "*"}


def normalize_ptb(text: str) -> str:
    """Undo the Penn-Treebank escapes of the SST sentences and strip outer spaces.

    >>> normalize_ptb(" A -LRB- good -RRB- `` film '' and\\\\/or not")
    'A ( good ) " film " and/or not'
    """
    for escaped, plain in _PTB.items():
        text = text.replace(escaped, plain)
    return text.strip()


@dataclass
class TaskSplit:
    """The rows of one file: ids, sentences and (for train/dev) labels.

    Attributes:
        task: ``"sst"``, ``"qqp"`` or ``"sts"``.
        split: ``"train"``, ``"dev"`` or ``"test"``.
        path: the file read.
        ids: the ``id`` column.
        sent1: the first (or only) sentence of each row.
        sent2: the second sentence for pair tasks, else ``None``.
        labels: SST class (int 0-4), QQP 0/1, STS score in [0, 5]; ``None`` for test files.
        skipped: how many rows were skipped (missing sentence or label).
    """

    task: str
    split: str
    path: Path
    ids: list[str] = field(default_factory=list)
    sent1: list[str] = field(default_factory=list)
    sent2: list[str] | None = None
    labels: list[float] | None = None
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int]) -> TaskSplit:
        """A new split with only the rows at ``indices`` (in that order)."""
        return TaskSplit(
            self.task, self.split, self.path, [self.ids[i] for i in indices],
            [self.sent1[i] for i in indices],
            None if self.sent2 is None else [self.sent2[i] for i in indices],
            None if self.labels is None else [self.labels[i] for i in indices], self.skipped)


def resolve_path(data_dir: str | Path, task: str, split: str) -> Path:
    """The file for ``(task, split)`` under ``data_dir``.

    Raises:
        FileNotFoundError: naming the expected path(s) and the ``--data-dir`` flag.
    """
    if (task, split) not in FILES:
        raise ValueError(f"unknown task/split {(task, split)!r}; tasks: sst, qqp, sts; "
                         f"splits: {', '.join(SPLITS)}")
    data_dir = Path(data_dir)
    candidates = [data_dir / name for name in FILES[(task, split)]]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{task} {split} data not found: expected {' or '.join(map(str, candidates))}. "
        "Point --data-dir (or $MTLKIT_DATA_DIR) at the directory holding the CS224N CSV files")


def read_split(data_dir: str | Path, task: str, split: str) -> TaskSplit:
    """Read one CS224N CSV file with the ``csv`` module (tab-separated, default quoting).

    Columns are found by header name, so the unnamed index column and the SST test file's
    extra leading column need no special case. A row with a missing sentence or label is logged
    with its file and line and skipped; the count is logged too and kept in ``skipped``.

    Raises:
        FileNotFoundError: the file is missing (the message names the path and ``--data-dir``).
        ValueError: a header lacks a needed column, or a label is not a number in range.
    """
    path = resolve_path(data_dir, task, split)
    pair = task in PAIR_TASKS
    text_cols = ("sentence1", "sentence2") if pair else ("sentence",)
    out = TaskSplit(task, split, path, sent2=[] if pair else None)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file (no header line)")
        col = {name: i for i, name in enumerate(header)}
        needed = ("id", *text_cols)
        missing = [name for name in needed if name not in col]
        if missing:
            raise ValueError(f"{path}: header {header!r} lacks column(s) {missing}")
        label_col = col.get(LABEL_COLUMN[task])
        if split != "test" and label_col is None:
            raise ValueError(f"{path}: header {header!r} lacks label column "
                             f"{LABEL_COLUMN[task]!r}")
        if label_col is not None:
            out.labels = []
        for row in reader:
            line = reader.line_num
            if len(row) != len(header):
                logger.warning("%s:%d: %d fields, header has %d; row skipped",
                               path, line, len(row), len(header))
                out.skipped += 1
                continue
            texts = [unquote_nested(row[col[c]].strip()) for c in text_cols]
            raw_label = row[label_col].strip() if label_col is not None else "x"
            if not all(texts) or not raw_label:
                what = "sentence" if not all(texts) else "label"
                logger.warning("%s:%d: row id=%s has an empty %s; row skipped",
                               path, line, row[col["id"]], what)
                out.skipped += 1
                continue
            if out.labels is not None:
                out.labels.append(_parse_label(task, raw_label, path, line))
            if task == "sst":
                texts[0] = normalize_ptb(texts[0])
            out.ids.append(row[col["id"]])
            out.sent1.append(texts[0])
            if pair:
                out.sent2.append(texts[1])
    if out.skipped:
        logger.warning("%s: skipped %d row(s) with missing fields (kept %d)",
                       path, out.skipped, len(out))
    return out


def unquote_nested(text: str) -> str:
    """Undo a second level of CSV quoting left inside a field.

    Some QQP questions were quoted twice upstream (the original Quora TSV quoted the ones
    holding quotes, and the course's pandas export quoted them again), so one ``csv`` parse
    leaves text such as ``"Do I need ""the"" here?"``. A field that starts and ends with a
    quote and whose inner quotes all come doubled (at least one pair) is unquoted once more;
    anything else, such as a question simply written in quotes, is kept as is.

    >>> print(unquote_nested('"Do I need ""the"" here?"'))
    Do I need "the" here?
    >>> print(unquote_nested('"Hi" and "bye"'))
    "Hi" and "bye"
    """
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    inner = text[1:-1]
    if '""' not in inner or inner.replace('""', "").count('"'):
        return text
    return inner.replace('""', '"')


def _parse_label(task: str, raw: str, path: Path, line: int) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{path}:{line}: label {raw!r} is not a number") from None
    if task == "sst" and (value not in (0, 1, 2, 3, 4)):
        raise ValueError(f"{path}:{line}: SST label {raw!r} is not one of 0-4")
    if task == "qqp" and value not in (0.0, 1.0):
        raise ValueError(f"{path}:{line}: QQP label {raw!r} is not 0 or 1")
    if task == "sts" and not 0.0 <= value <= 5.0:
        raise ValueError(f"{path}:{line}: STS label {raw!r} is outside [0, 5]")
    return int(value) if task == "sst" else value


def subsample(split: TaskSplit, n: int | None, seed: int) -> TaskSplit:
    """A seeded random subset of ``n`` rows (all rows when ``n`` is None or too large)."""
    if n is None or n >= len(split):
        return split
    if n <= 0:
        raise ValueError(f"max rows must be positive, got {n}")
    idx = sorted(random.Random(seed).sample(range(len(split)), n))
    return split.subset(idx)


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
