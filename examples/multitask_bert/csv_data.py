"""The CS224N CSV files: where each one lives under ``--data-dir`` and how it is read.

The files are described in ``../shared/data/README.md``. Every quirk listed there is handled
here: the unnamed pandas index column (columns are found by header name, never by position), the
SST test file's extra leading column, CSV quoting with doubled quotes (the ``csv`` module parses
them; splitting on tabs by hand would keep the quotes; QQP questions quoted twice upstream are
unquoted once more by :func:`unquote_nested`), QQP labels written as floats, and rows
with a missing sentence or label, which are logged with file and line, skipped, and counted.
Anything else that breaks the format is reported as :mod:`multitask_bert.data_checks` describes.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from .data_checks import DataFileError, RowReport, check_task_split
from .task_split import LABEL_COLUMN, PAIR_TASKS, TEXT_COLUMNS, TaskSplit, append_checked_row

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


def resolve_path(data_dir: str | Path, task: str, split: str) -> Path:
    """The file for ``(task, split)`` under ``data_dir``.

    Raises:
        ValueError: an unknown task or split (the message names the argument).
        FileNotFoundError: naming the expected path(s) and the ``--data-dir`` flag.
    """
    check_task_split(task, split)
    data_dir = Path(data_dir)
    candidates = [data_dir / name for name in FILES[(task, split)]]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{task} {split} data not found: expected {' or '.join(map(str, candidates))}. "
        "Point --data-dir (or $MTLKIT_DATA_DIR) at the directory holding the CS224N CSV files")


def read_split(data_dir: str | Path, task: str, split: str) -> TaskSplit:
    """Read one CS224N CSV file: tab-separated UTF-8, one row per line, ``csv`` quoting.

    Columns are found by header name, so the unnamed index column and the SST test file's
    extra leading column need no special case. Each line is parsed on its own (strict ``csv``
    quoting), so an unclosed quote is an error on its line instead of swallowing the lines
    after it. A blank line or a row with an empty sentence or label is logged with its file
    and line and skipped (``skipped``, ``skipped_rows``); any other departure from the format
    is logged too, and after the whole file is read one :class:`DataFileError` names them all.
    On success ``len(split) + split.skipped`` is the file's number of lines after the header.
    A test split carries no labels, even where its file has a label column.

    Raises:
        ValueError: an unknown task or split.
        FileNotFoundError: the file is missing (the message names the path and ``--data-dir``).
        DataFileError: a ValueError naming the file and the line of every bad row (an empty
            file, a missing column, a label out of range, an empty or repeated id, a wrong
            number of fields, broken quoting, text that is not UTF-8).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "quora-dev.csv").write_text(
    ...     "\\tid\\tsentence1\\tsentence2\\tis_duplicate\\n"
    ...     '0\\ta1\\t"Is ""it"" ok?"\\tWhy not?\\t1.0\\n'
    ...     "1\\ta2\\tWho?\\t\\t\\n")
    >>> qqp = read_split(d, "qqp", "dev")
    >>> qqp.ids, qqp.sent1, qqp.labels, qqp.skipped_rows
    (['a1'], ['Is "it" ok?'], [1.0], [3])
    """
    path = resolve_path(data_dir, task, split)
    report = RowReport(str(path))
    lines = _decoded_lines(path, report)
    first = next(lines)[1]
    header = None if first is None else _parse_line(first, 1, report)
    columns = _header_columns(path, header, task, split)
    text_cols = [columns[c] for c in TEXT_COLUMNS[task]]
    label_col = columns.get(LABEL_COLUMN[task]) if split != "test" else None
    out = TaskSplit(task, split, path, sent2=[] if task in PAIR_TASKS else None,
                    labels=None if label_col is None else [])
    for line_no, text in lines:
        if text is None:  # not UTF-8, already reported
            continue
        if not text.strip():
            report.skip(line_no, "blank line")
            continue
        row = _parse_line(text, line_no, report)
        if row is None:
            continue
        if len(row) != len(header):
            report.bad(line_no, f"expected {len(header)} tab-separated fields as in the "
                                f"header, got {len(row)}")
            continue
        append_checked_row(out, report, line_no, row[columns["id"]],
                           [unquote_nested(row[c].strip()) for c in text_cols],
                           None if label_col is None else row[label_col])
    out.skipped, out.skipped_rows = len(report.skipped), list(report.skipped)
    report.finish(len(out))
    return out


def _decoded_lines(path: Path, report: RowReport) -> Iterator[tuple[int, str | None]]:
    """``(line number, text)`` for each line of the file (split on ``\\n``, a trailing
    ``\\r`` dropped), each decoded as UTF-8 on its own; an undecodable line is reported as bad
    when it is reached and comes back as None.

    Raises:
        DataFileError: the file is empty (or only whitespace).
    """
    raw = path.read_bytes()
    if not raw.strip():
        raise DataFileError(str(path), [(1, "expected a header line, got an empty file")])
    pieces = raw.split(b"\n")
    if pieces[-1] == b"":  # the last line's terminator
        pieces.pop()
    for n, piece in enumerate(pieces, start=1):
        try:
            text = piece.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            report.bad(n, f"expected UTF-8 text, got byte(s) {piece[exc.start:exc.end]!r} "
                          f"at column {exc.start + 1}")
            yield n, None
            continue
        yield n, text.removesuffix("\r")


# the csv module's complaints, said in this format's terms
_CSV_ERRORS = {
    "unexpected end of data": "quoting: expected a closing quote, got the end of the line",
    "'\t' expected after '\"'": "quoting: expected a tab after a closing quote, got more text",
    "new-line character seen in unquoted field": "expected no carriage return (\\r) inside "
                                                 "a line, got one",
}


def _parse_line(text: str, n: int, report: RowReport) -> list[str] | None:
    """One line's fields (strict ``csv`` quoting), or None after reporting it as bad."""
    try:
        return next(csv.reader([text], delimiter="\t", strict=True))
    except csv.Error as exc:
        known = [why for start, why in _CSV_ERRORS.items() if str(exc).startswith(start)]
        report.bad(n, known[0] if known else f"expected csv quoting, got a csv error: {exc!r}")
        return None


def _header_columns(path: Path, header: list[str] | None, task: str,
                    split: str) -> dict[str, int]:
    """Column name -> index; raises :class:`DataFileError` at line 1 if one is missing."""
    needed = ["id", *TEXT_COLUMNS[task]] + ([LABEL_COLUMN[task]] if split != "test" else [])
    if header is None:  # not UTF-8 or broken quoting: already reported
        raise DataFileError(str(path), [(1, f"header: expected the columns {needed}, got a "
                                            "line that cannot be read (see the log)")])
    columns = {name: i for i, name in enumerate(header)}
    missing = [name for name in needed if name not in columns]
    if missing:
        raise DataFileError(str(path), [(1, f"header: expected the column(s) {missing}, "
                                            f"got {header!r}")])
    return columns


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
