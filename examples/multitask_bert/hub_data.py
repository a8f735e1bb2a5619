"""The same three tasks from the Hugging Face hub, and one entry point for either source.

:func:`load_task_splits` (and :func:`read_task_split` for one split) read the CS224N CSV files
(``source="csv"``, :mod:`multitask_bert.csv_data`) or the hub (``source="hub"``, through
``datasets.load_dataset``), into the same :class:`~multitask_bert.task_split.TaskSplit`\\ s:

===== =========================== ================================ ======================
task  hub dataset (configuration) columns read                     label
===== =========================== ================================ ======================
sst   ``SetFit/sst5``             ``text``                         ``label``, class 0-4
qqp   ``nyu-mll/glue`` (``qqp``)  ``idx``, ``question1``,          ``label``, 0/1
                                  ``question2``
sts   ``nyu-mll/glue`` (``stsb``) ``idx``, ``sentence1``,          ``label``, 0-5 (float)
                                  ``sentence2``
===== =========================== ================================ ======================

Splits ``train``/``dev``/``test`` are the hub's ``train``/``validation``/``test``. Ids are
GLUE's ``idx`` and, for SetFit/sst5 (which has none), the row's index in its split. Test splits
carry no labels, as in the CSV files: GLUE hides its test labels (``-1``) and SetFit/sst5's
are left out. SST sentences get the same PTB clean-up as the CSV files; GLUE's float32 STS
scores are rounded to 6 decimals (``4.6`` rather than ``4.599999904632568``). Every row is
checked as in the CSV reader (:mod:`multitask_bert.data_checks`), with 0-based row indices
as places. ``docs/guides/data.md`` lists how these splits differ from the CS224N files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .csv_data import FILES, read_split
from .data_checks import SPLITS, TASKS, RowReport, check_task_split
from .task_split import PAIR_TASKS, TaskSplit, append_checked_row

logger = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("csv", "hub")
_GLUE_SPLITS = (("train", "train"), ("dev", "validation"), ("test", "test"))


@dataclass(frozen=True)
class HubSource:
    """Where one task lives on the hub and which columns hold its fields.

    Args:
        repo: the dataset repository, e.g. ``"nyu-mll/glue"``.
        config: its configuration (``None`` for the default one).
        text_columns: the sentence column, or the two of a pair.
        label_column: the label column (not read for test splits).
        id_column: the id column; ``None`` makes the row index the id.
        splits: ``(our split, hub split)`` for each of train, dev and test.
        label_scale: labels are multiplied by it (e.g. ``5.0`` for a 0-1 similarity score).

    >>> HubSource("sentence-transformers/stsb", None, ("sentence1", "sentence2"), "score",
    ...           label_scale=5.0).split("dev")
    'validation'
    """

    repo: str
    config: str | None
    text_columns: tuple[str, ...]
    label_column: str
    id_column: str | None = None
    splits: tuple[tuple[str, str], ...] = _GLUE_SPLITS
    label_scale: float = 1.0

    def __post_init__(self) -> None:
        if len(self.text_columns) not in (1, 2):
            raise ValueError(f"text_columns: expected one or two columns, got "
                             f"{self.text_columns!r}")
        if sorted(ours for ours, _ in self.splits) != sorted(SPLITS):
            raise ValueError(f"splits: expected one hub split for each of {SPLITS}, got "
                             f"{self.splits!r}")
        if not (math.isfinite(self.label_scale) and self.label_scale > 0):
            raise ValueError(f"label_scale: expected a positive number, got {self.label_scale}")

    def split(self, ours: str) -> str:
        """The hub's name for our split ``ours``."""
        return dict(self.splits)[ours]


HUB_SOURCES: dict[str, HubSource] = {
    "sst": HubSource("SetFit/sst5", None, ("text",), "label"),
    "qqp": HubSource("nyu-mll/glue", "qqp", ("question1", "question2"), "label", "idx"),
    "sts": HubSource("nyu-mll/glue", "stsb", ("sentence1", "sentence2"), "label", "idx"),
}


def read_hub_split(task: str, split: str, *, hub_root: str | Path | None = None,
                   cache_dir: str | Path | None = None,
                   sources: Mapping[str, HubSource] | None = None) -> TaskSplit:
    """One task's split from the hub (or a local copy of its repository), checked row by row.

    Args:
        task: ``"sst"``, ``"qqp"`` or ``"sts"``.
        split: ``"train"``, ``"dev"`` or ``"test"``.
        hub_root: a directory holding local copies of the repositories, laid out as on the
            hub (``<hub_root>/SetFit/sst5``, ``<hub_root>/nyu-mll/glue``), e.g. made with
            ``hf download SetFit/sst5 --repo-type dataset --local-dir <hub_root>/SetFit/sst5``;
            ``None`` reads the hub itself (``datasets`` caches what it downloads).
        cache_dir: where ``datasets`` keeps its cache (default: its own).
        sources: the task -> :class:`HubSource` table (default :data:`HUB_SOURCES`).

    Raises:
        ValueError: an unknown task or split, or a dataset without the expected columns.
        DataFileError: a ValueError naming the dataset, split and row index of every bad row.
        ImportError: ``datasets`` is not installed.

    >>> read_hub_split("sts", "valid")
    Traceback (most recent call last):
    ...
    ValueError: split: expected one of train, dev, test, got 'valid'
    """
    check_task_split(task, split)
    table = HUB_SOURCES if sources is None else sources
    if task not in table:
        raise ValueError(f"sources: expected a HubSource for {task!r}, got {sorted(table)}")
    source = table[task]
    dataset, where = _load(source, split, hub_root, cache_dir)
    labelled = split != "test"
    needed = [*([source.id_column] if source.id_column else []), *source.text_columns,
              *([source.label_column] if labelled else [])]
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{where}: expected the column(s) {missing}, got "
                         f"{dataset.column_names}")
    columns = {c: list(dataset[c]) for c in needed}
    ids = columns[source.id_column] if source.id_column else range(len(dataset))
    labels = ([_scaled(v, source.label_scale) for v in columns[source.label_column]]
              if labelled else [None] * len(dataset))
    texts = [columns[c] for c in source.text_columns]
    out = TaskSplit(task, split, where, sent2=[] if task in PAIR_TASKS else None,
                    labels=[] if labelled else None)
    report = RowReport(where, unit="row")
    for i in range(len(dataset)):
        append_checked_row(out, report, i, ids[i], [col[i] for col in texts], labels[i],
                           source.label_column)
    out.skipped, out.skipped_rows = len(report.skipped), list(report.skipped)
    report.finish(len(out))
    return out


def read_task_split(task: str, split: str, *, source: str = "csv",
                    data_dir: str | Path | None = None, hub_root: str | Path | None = None,
                    cache_dir: str | Path | None = None) -> TaskSplit:
    """One split from ``source``: ``"csv"`` (the CS224N files under ``data_dir``) or
    ``"hub"`` (:func:`read_hub_split`).

    Raises:
        ValueError: an unknown source, task or split; ``source="csv"`` without ``data_dir``.
        FileNotFoundError: a CSV file is missing.
        DataFileError: bad rows (see :func:`~multitask_bert.csv_data.read_split`).

    >>> read_task_split("sst", "dev", source="kaggle")
    Traceback (most recent call last):
    ...
    ValueError: source: expected one of csv, hub, got 'kaggle'
    """
    if source not in SOURCES:
        raise ValueError(f"source: expected one of {', '.join(SOURCES)}, got {source!r}")
    if source == "hub":
        return read_hub_split(task, split, hub_root=hub_root, cache_dir=cache_dir)
    if data_dir is None:
        raise ValueError("data_dir: expected the directory holding the CS224N CSV files "
                         "(--data-dir or $MTLKIT_DATA_DIR), got None")
    return read_split(data_dir, task, split)


def load_task_splits(source: str = "csv", data_dir: str | Path | None = None, *,
                     tasks: Sequence[str] = TASKS, splits: Sequence[str] = SPLITS,
                     hub_root: str | Path | None = None, cache_dir: str | Path | None = None,
                     ) -> tuple[dict[str, dict[str, TaskSplit]], list[str]]:
    """``{split: {task: TaskSplit}}`` from one source, and the test files that are missing.

    A missing CSV test file (this project's copy lacks Quora's) is logged, left out of the
    result and its expected path(s) listed in the second value; a missing train or dev file
    raises. The hub has every split, so its list is empty.

    Raises:
        ValueError: an unknown source, task or split; ``source="csv"`` without ``data_dir``.
        FileNotFoundError: a CSV train or dev file is missing.
        DataFileError: bad rows (see :func:`~multitask_bert.csv_data.read_split`).

    >>> import tempfile
    >>> load_task_splits("csv", tempfile.mkdtemp(), tasks=["sts"], splits=["test"])
    ({'test': {}}, [...sts-test-student.csv'])
    """
    for task in tasks:
        for split in splits:
            check_task_split(task, split)
    out: dict[str, dict[str, TaskSplit]] = {split: {} for split in splits}
    missing: list[str] = []
    for split in splits:
        for task in tasks:
            try:
                out[split][task] = read_task_split(task, split, source=source,
                                                   data_dir=data_dir, hub_root=hub_root,
                                                   cache_dir=cache_dir)
            except FileNotFoundError as exc:
                if split != "test" or source != "csv":
                    raise
                logger.warning("%s; no %s test predictions will be written", exc, task)
                missing.extend(str(Path(data_dir) / n)  # type: ignore[arg-type]
                               for n in FILES[(task, split)])
    return out, missing


def _load(source: HubSource, split: str, hub_root: str | Path | None,
          cache_dir: str | Path | None) -> tuple[Any, str]:
    """The ``datasets.Dataset`` of ``split`` and its name in messages."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("the hub data source needs the `datasets` package: "
                          "pip install -e '.[examples]'") from exc
    path = source.repo if hub_root is None else str(Path(hub_root) / source.repo)
    hub_split = source.split(split)
    where = f"{path}{f' ({source.config})' if source.config else ''} {hub_split}"
    try:
        dataset = datasets.load_dataset(path, source.config, split=hub_split,
                                        cache_dir=None if cache_dir is None else str(cache_dir))
    except Exception as exc:  # re-raised as it is, with a hint added
        exc.add_note(f"while loading {where} from the hub; offline, pass the CS224N CSV files "
                     "instead (source='csv', --data-dir) or a local copy (hub_root)")
        raise
    return dataset, where


def _scaled(value: Any, scale: float) -> Any:
    """A hub label times ``scale``; floats (float32 on the hub) rounded to 6 decimals."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value  # None or text: the row check reports it
    if isinstance(value, float) or scale != 1.0:
        return round(float(value) * scale, 6)
    return value
