"""One split of one task as the pipeline holds it (:class:`TaskSplit`), the tasks' columns,
and how a checked row gets into a split (:func:`append_checked_row`, shared by the CSV and the
hub readers)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .data_checks import RowReport, label_value

LABEL_COLUMN = {"sst": "sentiment", "qqp": "is_duplicate", "sts": "similarity"}
TEXT_COLUMNS = {"sst": ("sentence",), "qqp": ("sentence1", "sentence2"),
                "sts": ("sentence1", "sentence2")}
PAIR_TASKS = frozenset({"qqp", "sts"})

# the SST escapes, upper case as in the CS224N files and lower case as in lower-cased copies
_PTB = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}",
        "``": '"', "''": '"', "\\/": "/", "\\*": "*"}
_PTB |= {k.lower(): v for k, v in _PTB.items() if k.startswith("-")}


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
    """The rows of one split (a file or a hub split): ids, sentences and (train/dev) labels.

    >>> sp = TaskSplit("sts", "dev", "sts-dev.csv", ["a", "b"], ["s1", "s2"], ["t1", "t2"],
    ...                [4.5, 0.0])
    >>> len(sp), sp.subset([1]).labels
    (2, [0.0])

    Attributes:
        task: ``"sst"``, ``"qqp"`` or ``"sts"``.
        split: ``"train"``, ``"dev"`` or ``"test"``.
        path: the file read (for the hub: the dataset, configuration and split, as text).
        ids: the ``id`` column.
        sent1: the first (or only) sentence of each row.
        sent2: the second sentence for pair tasks, else ``None``.
        labels: SST class (int 0-4), QQP 0/1, STS score in [0, 5]; ``None`` for test splits.
        skipped: how many rows were skipped (blank, or a missing sentence or label).
        skipped_rows: where those rows were: line numbers of a file (the header is line 1),
            0-based row indices of a hub split.
    """

    task: str
    split: str
    path: Path | str
    ids: list[str] = field(default_factory=list)
    sent1: list[str] = field(default_factory=list)
    sent2: list[str] | None = None
    labels: list[float] | None = None
    skipped: int = 0
    skipped_rows: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int]) -> TaskSplit:
        """A new split with only the rows at ``indices`` (in that order)."""
        return TaskSplit(
            self.task, self.split, self.path, [self.ids[i] for i in indices],
            [self.sent1[i] for i in indices],
            None if self.sent2 is None else [self.sent2[i] for i in indices],
            None if self.labels is None else [self.labels[i] for i in indices], self.skipped,
            list(self.skipped_rows))


def append_checked_row(out: TaskSplit, report: RowReport, n: int, raw_id: object,
                       texts: Sequence[object], raw_label: object,
                       label_column: str | None = None) -> None:
    """Check one row (either source's) and append it to ``out``, or report it to ``report``.

    ``n`` is the row's place (line or row index), ``texts`` its sentence(s), ``raw_label``
    its label (ignored when ``out.labels`` is None, an unlabelled split), ``label_column``
    the name messages give the label (default: the CS224N column). Bad beats skipped: a row
    with an empty sentence and a label out of range is reported as bad.

    >>> out = TaskSplit("qqp", "dev", "x.csv", sent2=[], labels=[])
    >>> report = RowReport("x.csv")
    >>> append_checked_row(out, report, 2, "a", [" q1 ", "q2"], "1.0")
    >>> append_checked_row(out, report, 3, "b", ["q3", ""], "")
    >>> out.ids, out.sent1, out.labels, report.skipped
    (['a'], ['q1'], [1.0], [3])
    """
    row_id = report.check_id(n, raw_id)
    if row_id is None:
        return
    labelled = out.labels is not None
    empty_label = labelled and (raw_label is None or not str(raw_label).strip())
    label: int | float = 0
    if labelled and not empty_label:
        try:
            label = label_value(out.task, label_column or LABEL_COLUMN[out.task], raw_label)
        except ValueError as exc:
            report.bad(n, str(exc))
            return
    clean = ["" if t is None else str(t).strip() for t in texts]
    if out.task == "sst":
        clean[0] = normalize_ptb(clean[0])
    if not all(clean) or empty_label:
        report.skip(n, f"row id={row_id} has an empty {'label' if all(clean) else 'sentence'}")
        return
    out.ids.append(row_id)
    out.sent1.append(clean[0])
    if out.sent2 is not None:
        out.sent2.append(clean[1])
    if out.labels is not None:
        out.labels.append(label)


def subsample(split: TaskSplit, n: int | None, seed: int) -> TaskSplit:
    """A seeded random subset of ``n`` rows (all rows when ``n`` is None or too large).

    >>> sp = TaskSplit("sst", "train", "x", list("abcde"), list("vwxyz"), labels=[0, 1, 2, 3, 4])
    >>> subsample(sp, 2, seed=0).ids == subsample(sp, 2, seed=0).ids, len(subsample(sp, 9, 0))
    (True, 5)
    """
    if n is None or n >= len(split):
        return split
    if n <= 0:
        raise ValueError(f"max rows must be positive, got {n}")
    idx = sorted(random.Random(seed).sample(range(len(split)), n))
    return split.subset(idx)
