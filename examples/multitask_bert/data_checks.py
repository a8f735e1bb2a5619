"""The checks every data reader applies, and how it reports what it finds.

Both readers (the CS224N CSV files in :mod:`multitask_bert.csv_data`, the Hugging Face hub in
:mod:`multitask_bert.hub_data`) sort each row into one of three kinds:

- **kept**: an id, its sentence(s) and, for train/dev, a valid label;
- **skipped**: a row with nothing to learn from (a blank line, an empty sentence, an empty
  label): logged as a warning with its place, counted, and its place kept in
  ``TaskSplit.skipped_rows``; the real QQP files have two such rows each;
- **bad**: anything else that is not the format (a label out of range, an empty or repeated
  id, a wrong number of fields, broken quoting, bytes that are not UTF-8): logged as an error
  with its place. After the whole source is read, one :class:`DataFileError` names them all,
  so a file with several bad rows is fixed in one pass and nothing is dropped in silence.

A source with no kept row at all (a header alone, or only skipped rows) is an error too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("sst", "qqp", "sts")
SPLITS: tuple[str, ...] = ("train", "dev", "test")

_SHOWN = 5  # bad rows quoted in an exception's message (every one is logged)


class DataFileError(ValueError):
    """A data source that does not follow its format; the message names each bad place.

    Attributes:
        source: the file (or hub dataset and split) read.
        problems: ``(place, reason)`` for every bad row, in order: the line number for a
            file (the header is line 1), the 0-based row index for a hub split.
        unit: ``"line"`` or ``"row"``, what ``place`` counts.

    >>> err = DataFileError("sts-dev.csv", [(7, "similarity: expected a score in [0, 5], "
    ...                                        "got '6'")])
    >>> print(err)
    sts-dev.csv:7: similarity: expected a score in [0, 5], got '6'
    >>> err.problems[0][0], isinstance(err, ValueError)
    (7, True)
    """

    def __init__(self, source: str, problems: Sequence[tuple[int, str]],
                 unit: str = "line") -> None:
        self.source, self.unit = source, unit
        self.problems = sorted(problems, key=lambda problem: problem[0])
        shown = "; ".join(f"{place(source, n, unit)}: {why}"
                          for n, why in self.problems[:_SHOWN])
        more = len(self.problems) - _SHOWN
        tail = f"; and {more} more bad {unit}s (each one logged)" if more > 0 else ""
        super().__init__(shown + tail)


def place(source: str, n: int, unit: str = "line") -> str:
    """``file:line`` for a file, ``dataset row n`` for a hub split.

    >>> place("quora-dev.csv", 5), place("nyu-mll/glue (qqp) validation", 3, "row")
    ('quora-dev.csv:5', 'nyu-mll/glue (qqp) validation row 3')
    """
    return f"{source}:{n}" if unit == "line" else f"{source} row {n}"


def check_task_split(task: str, split: str) -> None:
    """Raise a ValueError naming the argument when ``task`` or ``split`` is unknown.

    >>> check_task_split("nli", "dev")
    Traceback (most recent call last):
    ...
    ValueError: task: expected one of sst, qqp, sts, got 'nli'
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")


def label_value(task: str, column: str, raw: object) -> int | float:
    """A label checked against its task's range: an SST class 0-4 (returned as int), a QQP
    0/1 or an STS score in [0, 5] (returned as float).

    Raises:
        ValueError: ``"<column>: expected <range>, got <raw>"``.

    >>> label_value("sst", "sentiment", "3"), label_value("qqp", "is_duplicate", "1.0")
    (3, 1.0)
    >>> label_value("sts", "similarity", "5.5")
    Traceback (most recent call last):
    ...
    ValueError: similarity: expected a score in [0, 5], got '5.5'
    """
    expected = {"sst": "a class 0-4", "qqp": "0 or 1", "sts": "a score in [0, 5]"}[task]
    try:
        value = float(raw)  # type: ignore[arg-type]  # anything float() takes
    except (TypeError, ValueError):
        value = math.nan  # fails every test below, as do nan and inf themselves
    valid = (value in (0, 1, 2, 3, 4) if task == "sst"
             else value in (0, 1) if task == "qqp"
             else 0.0 <= value <= 5.0)
    if not valid:
        raise ValueError(f"{column}: expected {expected}, got {raw!r}")
    return int(value) if task == "sst" else value


class RowReport:
    """Collects the skipped and bad rows of one source, logging each with its place.

    Args:
        source: the file or hub split, as it appears in messages.
        unit: ``"line"`` (files) or ``"row"`` (hub splits).

    >>> report = RowReport("x.csv")
    >>> report.check_id(2, " a1 "), report.check_id(3, "a1")
    ('a1', None)
    >>> report.problems
    [(3, "id: expected a unique id, got 'a1' again (first at x.csv:2)")]
    """

    def __init__(self, source: str, unit: str = "line") -> None:
        self.source, self.unit = source, unit
        self.problems: list[tuple[int, str]] = []
        self.skipped: list[int] = []
        self._first_seen: dict[str, int] = {}

    def bad(self, n: int, reason: str) -> None:
        """Record a bad row (an error once the source is read)."""
        logger.error("%s: %s", place(self.source, n, self.unit), reason)
        self.problems.append((n, reason))

    def skip(self, n: int, reason: str) -> None:
        """Record a row left out on purpose (it carries no usable example)."""
        logger.warning("%s: %s; row skipped", place(self.source, n, self.unit), reason)
        self.skipped.append(n)

    def check_id(self, n: int, raw: object) -> str | None:
        """The stripped id, or None after recording it as bad (empty or seen before)."""
        value = "" if raw is None else str(raw).strip()
        if not value:
            self.bad(n, f"id: expected a non-empty id, got {raw!r}")
            return None
        if value in self._first_seen:
            first = place(self.source, self._first_seen[value], self.unit)
            self.bad(n, f"id: expected a unique id, got {value!r} again (first at {first})")
            return None
        self._first_seen[value] = n
        return value

    def finish(self, kept: int) -> None:
        """Raise :class:`DataFileError` if any row was bad or none was kept; else log the
        skipped count."""
        if self.problems:
            raise DataFileError(self.source, self.problems, self.unit)
        if kept == 0:  # a header alone, or only skipped rows: nothing to train or predict on
            first = 2 if self.unit == "line" else 0
            raise DataFileError(self.source, [(first, f"expected at least one usable row, got "
                                                      f"none ({len(self.skipped)} skipped)")],
                                self.unit)
        if self.skipped:
            logger.warning("%s: skipped %d row(s) with missing fields (kept %d)",
                           self.source, len(self.skipped), kept)
