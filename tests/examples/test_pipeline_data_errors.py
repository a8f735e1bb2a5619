"""Bad input to the CSV reader: every bad row is an error naming its file and line, every
skipped row is logged with its file and line and counted, and nothing goes missing in silence.
Example cases first, then a hypothesis fuzzer over whole files."""

from __future__ import annotations

import codecs
import csv
import io
import logging
import math
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pipeline_helpers import write_rows

from multitask_bert.data import DataFileError, read_split
from multitask_bert.hub_data import load_task_splits, read_task_split

STS_HEADER = ["", "id", "sentence1", "sentence2", "similarity"]


def _logged_lines(records: list[logging.LogRecord], path: Path, level: int) -> list[int]:
    """The line numbers that log records at ``level`` name as ``path:N: ...``."""
    pattern = re.compile(re.escape(f"{path}:") + r"(\d+): ")
    return [int(m.group(1)) for r in records if r.levelno == level
            and (m := pattern.match(r.getMessage()))]


def _read_error(d: Path, task: str, split: str) -> DataFileError:
    with pytest.raises(DataFileError) as info:
        read_split(d, task, split)
    return info.value


def test_sts_label_outside_0_5(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    labels = ["0", "5.5", "5", "-0.1", "nan", "inf", "2.5", "1e3"]
    write_rows(tmp_path / "sts-dev.csv", STS_HEADER,
               [[str(i), f"id{i}", "a", "b", y] for i, y in enumerate(labels)])
    with caplog.at_level(logging.ERROR):
        err = _read_error(tmp_path, "sts", "dev")
    path = tmp_path / "sts-dev.csv"
    bad = [3, 5, 6, 7, 9]  # the header is line 1: label i is on line i + 2
    assert [n for n, _ in err.problems] == bad and isinstance(err, ValueError)
    assert err.source == str(path)
    assert f"{path}:3: similarity: expected a score in [0, 5], got '5.5'" in str(err)
    assert _logged_lines(caplog.records, path, logging.ERROR) == bad
    assert "more bad lines" not in str(err)  # five problems: all are quoted in the message


def test_quora_label_not_0_or_1(tmp_path: Path) -> None:
    labels = ["1.0", "2.0", "0", "0.5", "-1", "yes", "1"]
    write_rows(tmp_path / "quora-dev.csv", ["", "id", "sentence1", "sentence2", "is_duplicate"],
               [[str(i), f"q{i}", "a?", "b?", y] for i, y in enumerate(labels)])
    err = _read_error(tmp_path, "qqp", "dev")
    assert [n for n, _ in err.problems] == [3, 5, 6, 7]
    assert str(err).startswith(f"{tmp_path / 'quora-dev.csv'}:3: is_duplicate: expected 0 or "
                               "1, got '2.0'")


def test_sst_label_not_a_class(tmp_path: Path) -> None:
    write_rows(tmp_path / "ids-sst-train.csv", ["", "id", "sentence", "sentiment"],
               [["0", "s0", "ok", "4"], ["1", "s1", "ok", "5"], ["2", "s2", "ok", "2.5"],
                ["3", "s3", "ok", "3.0"]])
    err = _read_error(tmp_path, "sst", "train")
    assert [n for n, _ in err.problems] == [3, 4]
    assert "ids-sst-train.csv:4: sentiment: expected a class 0-4, got '2.5'" in str(err)


@pytest.mark.parametrize("content", [b"", b"\n", b"  \n\n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "sts-dev.csv").write_bytes(content)
    err = _read_error(tmp_path, "sts", "dev")
    assert str(err) == f"{tmp_path / 'sts-dev.csv'}:1: expected a header line, got an empty file"


def test_header_without_rows_or_with_skipped_rows_only(tmp_path: Path) -> None:
    write_rows(tmp_path / "sts-dev.csv", STS_HEADER, [])
    assert str(_read_error(tmp_path, "sts", "dev")).endswith(
        "sts-dev.csv:2: expected at least one usable row, got none (0 skipped)")
    write_rows(tmp_path / "sts-dev.csv", STS_HEADER, [["0", "a", "x", "", "1.0"]])
    assert "got none (1 skipped)" in str(_read_error(tmp_path, "sts", "dev"))


@pytest.mark.parametrize(("split", "header", "missing"), [
    ("train", ["", "id", "sentence1", "sentence2"], "['similarity']"),
    ("dev", ["", "sentence1", "sentence2", "similarity"], "['id']"),
    ("test", ["", "id", "sentence1"], "['sentence2']"),
    ("test", ["", "ID", "Sentence1", "sentence2"], "['id', 'sentence1']"),
])
def test_missing_column(tmp_path: Path, split: str, header: list[str], missing: str) -> None:
    name = {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test-student.csv"}
    write_rows(tmp_path / name[split], header, [[f"{i}"] * len(header) for i in range(3)])
    err = _read_error(tmp_path, "sts", split)
    assert err.problems == [(1, f"header: expected the column(s) {missing}, got {header!r}")]
    assert str(err).startswith(f"{tmp_path / name[split]}:1: header:")


def test_test_split_needs_no_label_and_keeps_none(tmp_path: Path) -> None:
    write_rows(tmp_path / "sts-test-student.csv", STS_HEADER, [["0", "t0", "a", "b", ""]])
    sts = read_split(tmp_path, "sts", "test")
    assert (sts.ids, sts.labels, sts.skipped) == (["t0"], None, 0)


@pytest.mark.parametrize(("task", "split", "message"), [
    ("nli", "dev", "task: expected one of sst, qqp, sts, got 'nli'"),
    ("SST", "dev", "task: expected one of sst, qqp, sts, got 'SST'"),
    ("sts", "valid", "split: expected one of train, dev, test, got 'valid'"),
    ("sts", "", "split: expected one of train, dev, test, got ''"),
])
def test_unknown_task_or_split(data_dir: Path, task: str, split: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        read_split(data_dir, task, split)
    assert str(info.value) == message and not isinstance(info.value, DataFileError)
    for source in ("csv", "hub"):  # the hub is never reached: the arguments are checked first
        with pytest.raises(ValueError, match=message):
            read_task_split(task, split, source=source, data_dir=data_dir)
    with pytest.raises(ValueError, match=message):
        load_task_splits("csv", data_dir, tasks=[task], splits=[split])


def test_source_and_data_dir_are_checked(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="source: expected one of csv, hub, got 'tsv'"):
        load_task_splits("tsv", data_dir)
    with pytest.raises(ValueError, match="data_dir: expected the directory"):
        load_task_splits("csv", None)


def test_every_bad_row_is_reported_at_once(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    rows = [[str(i), f"id{i}", "a", "b", "9"] for i in range(7)]
    write_rows(tmp_path / "sts-train.csv", STS_HEADER, rows)
    with caplog.at_level(logging.ERROR):
        err = _read_error(tmp_path, "sts", "train")
    assert [n for n, _ in err.problems] == list(range(2, 9))
    assert str(err).count("similarity: expected") == 5
    assert str(err).endswith("; and 2 more bad lines (each one logged)")
    logged = _logged_lines(caplog.records, tmp_path / "sts-train.csv", logging.ERROR)
    assert logged == list(range(2, 9))


def test_malformed_lines_each_named(tmp_path: Path) -> None:
    path = tmp_path / "sts-dev.csv"
    lines = [
        b"\tid\tsentence1\tsentence2\tsimilarity",
        b"0\ta\tgood\tpair\t1.0",                # 2 good
        b'1\tb\t"unclosed\tpair\t1.0',           # 3 an unclosed quote: its own line only
        b"2\tc\tgood\tpair\t2.0",                # 4 good: not swallowed by line 3
        b'3\td\t"a"b\tpair\t2.0',                # 5 text after a closing quote
        b"4\te\tcaf\xe9\tpair\t2.0",             # 6 latin-1, not UTF-8
        b"5\tf\tone\ttoo\tmany\t2.0",            # 7 six fields
        b"6\t\tno id\tpair\t2.0",                # 8 empty id
        b"7\ta\tsame id\tpair\t2.0",             # 9 the id of line 2 again
        b"8\tg\tcr\rinside\tpair\t2.0",          # 10 a bare carriage return
        b"9\th\tgood\tpair\t3.0",                # 11 good
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    err = _read_error(tmp_path, "sts", "dev")
    reasons = dict(err.problems)
    assert sorted(reasons) == [3, 5, 6, 7, 8, 9, 10]
    assert reasons[3] == "quoting: expected a closing quote, got the end of the line"
    assert reasons[5] == "quoting: expected a tab after a closing quote, got more text"
    assert reasons[6] == "expected UTF-8 text, got byte(s) b'\\xe9' at column 8"
    assert reasons[7] == "expected 5 tab-separated fields as in the header, got 6"
    assert reasons[8] == "id: expected a non-empty id, got ''"
    assert reasons[9] == f"id: expected a unique id, got 'a' again (first at {path}:2)"
    assert reasons[10] == "expected no carriage return (\\r) inside a line, got one"
    assert [n for n, _ in err.problems] == [3, 5, 6, 7, 8, 9, 10]  # in line order


def test_other_encodings_and_line_endings(tmp_path: Path) -> None:
    rows = [["0", "a", "caf\u00e9 au lait", 'say "hi"', "1.5"], ["1", "b", "x", "y", "0"]]
    write_rows(tmp_path / "sts-dev.csv", STS_HEADER, rows)
    text = (tmp_path / "sts-dev.csv").read_text(encoding="utf-8")
    plain = read_split(tmp_path, "sts", "dev")
    assert plain.sent1 == ["caf\u00e9 au lait", "x"] and plain.sent2[0] == 'say "hi"'
    for variant in (codecs.BOM_UTF8 + text.encode(), text.replace("\n", "\r\n").encode()):
        (tmp_path / "sts-dev.csv").write_bytes(variant)
        again = read_split(tmp_path, "sts", "dev")  # a BOM or CRLF endings read the same
        assert (again.ids, again.sent1, again.sent2, again.labels) == (
            plain.ids, plain.sent1, plain.sent2, plain.labels)
    (tmp_path / "sts-dev.csv").write_bytes(text.encode("utf-16"))
    assert [n for n, _ in _read_error(tmp_path, "sts", "dev").problems] == [1]
    (tmp_path / "sts-dev.csv").write_bytes(text.encode("latin-1"))
    err = _read_error(tmp_path, "sts", "dev")
    assert err.problems == [(2, "expected UTF-8 text, got byte(s) b'\\xe9' at column 8")]


def test_skipped_rows_are_logged_and_counted(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "quora-train.csv"
    path.write_text("\tid\tsentence1\tsentence2\tis_duplicate\n"
                    "0\ta\tq1?\tq2?\t1.0\n"
                    "1\tb\tq3?\t\t\n"           # 3 the README's empty QQP row
                    "\n"                         # 4 a blank line
                    "2\tc\tq5?\tq6?\t \n"        # 5 no label
                    "3\td\t  \tq8?\t0.0\n"       # 6 no first question
                    "4\te\tq9?\tq10?\t0.0\n")
    with caplog.at_level(logging.WARNING):
        qqp = read_split(tmp_path, "qqp", "train")
    assert (qqp.ids, qqp.labels) == (["a", "e"], [1.0, 0.0])
    assert qqp.skipped == 4 and qqp.skipped_rows == [3, 4, 5, 6]
    assert len(qqp) + qqp.skipped == 6  # every data line is either read or skipped
    assert _logged_lines(caplog.records, path, logging.WARNING) == [3, 4, 5, 6]
    assert any(r.getMessage() == f"{path}: skipped 4 row(s) with missing fields (kept 2)"
               for r in caplog.records)


# ----------------------------------------------------------------------------- the fuzzer

TASK_FILES = {("sst", "train"): "ids-sst-train.csv", ("sst", "test"): "ids-sst-test-student.csv",
              ("qqp", "dev"): "quora-dev.csv", ("qqp", "test"): "quora-test-student.csv",
              ("sts", "train"): "sts-train.csv", ("sts", "test"): "sts-test-student.csv"}
HEADERS = {("sst", "train"): ["", "id", "sentence", "sentiment"],
           ("sst", "test"): ["0", "", "id", "sentence"],
           ("qqp", "dev"): ["", "id", "sentence1", "sentence2", "is_duplicate"],
           ("qqp", "test"): ["", "id", "sentence1", "sentence2"],
           ("sts", "train"): ["", "id", "sentence1", "sentence2", "similarity"],
           ("sts", "test"): ["", "id", "sentence1", "sentence2"]}
NEEDED = {"sst": ["id", "sentence"], "qqp": ["id", "sentence1", "sentence2"],
          "sts": ["id", "sentence1", "sentence2"]}
LABEL_NAMES = {"sst": "sentiment", "qqp": "is_duplicate", "sts": "similarity"}

# any text on one line: quotes, tabs, NULs, other scripts, form feeds; no \n or \r
ONE_LINE = st.characters(exclude_categories=("Cs",), exclude_characters="\n\r")
TEXT = st.text(ONE_LINE, min_size=1, max_size=12).filter(str.strip)
PLAIN = st.text("abcdefgh ", min_size=1, max_size=8).filter(str.strip)
BLANK = st.text(" \t", max_size=3)
INVALID_BYTES = st.sampled_from([b"\xff", b"\xfe", b"\xc0", b"\xc1\xbf", b"\xf8\x88\x80"])
READABLE = ["good", "good", "good", "empty_text", "empty_label", "blank"]
BAD = ["bad_label", "bad_label", "bad_count", "empty_id", "dup_id", "bad_utf8", "bad_quote",
       "cr_inside"]


def _label_ok(task: str, raw: str) -> bool:
    """The README's label ranges, written out on their own."""
    try:
        value = float(raw)
    except ValueError:
        return False
    if not math.isfinite(value):
        return False
    return {"sst": value in (0, 1, 2, 3, 4), "qqp": value in (0, 1),
            "sts": 0 <= value <= 5}[task]


def _valid_label(task: str) -> st.SearchStrategy[str]:
    if task == "sst":
        return st.integers(0, 4).flatmap(lambda k: st.sampled_from([str(k), f"{k}.0", f" {k}"]))
    if task == "qqp":
        return st.sampled_from(["0", "1", "0.0", "1.0", " 1.0 "])
    return st.one_of(st.floats(0, 5).map(lambda x: f"{x:.3f}"), st.sampled_from(["0", "5.0"]))


def _invalid_label(task: str) -> st.SearchStrategy[str]:
    numbers = st.one_of(st.floats(5.001, 1e6).map(repr), st.floats(-1e6, -0.001).map(repr),
                        st.floats(0, 5).map(repr), st.integers(-20, 20).map(str))
    return st.one_of(  # mostly numbers just outside the task's range, then anything else
        numbers, numbers, numbers, TEXT,
        st.sampled_from(["5.5", "-1", "2.5", "nan", "inf", "1e9", "0x1", "yes", "--1"]),
    ).filter(lambda s: s.strip() and not _label_ok(task, s.strip()))


def _csv_line(fields: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, delimiter="\t", lineterminator="\n").writerow(fields)
    return buf.getvalue()[:-1]


@dataclass
class Expected:
    """What the reader must make of a generated file, worked out while writing it."""

    ids: list[str] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    texts: list[list[str] | None] = field(default_factory=list)  # None: not compared
    skipped: list[int] = field(default_factory=list)
    bad: list[int] = field(default_factory=list)
    whole_file: bool = False  # the error is the file's (header, encoding, no usable row)


@st.composite
def cs224n_files(draw: st.DrawFn) -> tuple[str, str, bytes, Expected]:
    """A random file for a random (task, split) and the outcome it must have."""
    task, split = draw(st.sampled_from([*sorted(TASK_FILES), ("sst", "train"), ("qqp", "dev"),
                                        ("sts", "train")]))  # labelled files twice as often
    header = list(HEADERS[(task, split)])
    labelled = split != "test"
    n_texts = 1 if task == "sst" else 2
    expected, lines = Expected(), []
    kinds = READABLE + (BAD if draw(st.booleans()) else [])  # half the files have no bad row
    for i in range(draw(st.integers(0, 12))):
        line_no = i + 2
        kind = draw(st.sampled_from([k for k in kinds if labelled or "label" not in k]))
        if kind == "dup_id" and not expected.ids:
            kind = "good"
        event(f"row kind {kind}")
        plain = kind in ("bad_quote", "cr_inside")
        row_id = f"{i:02d}" + draw(PLAIN if plain else st.text(ONE_LINE, max_size=4))
        texts = [draw(PLAIN if plain else TEXT) for _ in range(n_texts)]
        label = draw(_valid_label(task)) if labelled else None
        if kind == "empty_text":
            texts[draw(st.integers(0, n_texts - 1))] = draw(BLANK)
            label = draw(st.one_of(_valid_label(task), BLANK)) if labelled else None
        elif kind == "empty_label":
            label = draw(BLANK)
        elif kind == "bad_label":
            label = draw(_invalid_label(task))
        elif kind == "empty_id":
            row_id = draw(BLANK)
        elif kind == "dup_id":
            row_id = draw(st.sampled_from(expected.ids))
        index = [str(i), f"{i}.0"] if task == "sst" and split == "test" else [str(i)]
        fields = [*index, row_id, *texts, *([label] if labelled else [])]
        if kind == "bad_count":
            if draw(st.booleans()):
                fields.append(draw(st.text(ONE_LINE, max_size=3)))
            else:
                del fields[draw(st.integers(0, len(fields) - 1))]
        if kind == "bad_quote":
            k = len(index) + 1 + draw(st.integers(0, n_texts - 1))
            fields[k] = draw(st.sampled_from(['"', '"a"b', '"unclosed', 'x"']))
            if fields[k] == 'x"':  # a quote inside a field is text, not an error
                kind, texts[k - len(index) - 1] = "good", 'x"'
        line = "\t".join(fields) if plain else _csv_line(fields)
        if kind == "cr_inside":
            line = line.replace(texts[0], texts[0][0] + "\r" + texts[0], 1)
        data = line.encode("utf-8")
        if kind == "bad_utf8":
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(INVALID_BYTES) + data[at:]
        if kind == "blank":
            data = draw(BLANK).encode()
        lines.append(data)
        if kind in ("good", "empty_text", "empty_label", "blank"):
            if kind != "good":
                expected.skipped.append(line_no)
                continue
            expected.ids.append(row_id.strip())
            if labelled:
                value = float(label.strip())
                expected.labels.append(int(value) if task == "sst" else value)
            cleaned = [t.strip() for t in texts]
            comparable = task != "sst" and not any(t[:1] == '"' == t[-1:] for t in cleaned)
            expected.texts.append(cleaned if comparable else None)
        else:
            expected.bad.append(line_no)
    if draw(st.integers(0, 19)) == 0:  # a header without one of the columns the task needs
        gone = draw(st.sampled_from(NEEDED[task] + ([LABEL_NAMES[task]] if labelled else [])))
        header[header.index(gone)] = gone.upper()
        expected.bad, expected.whole_file = [1], True
    encoding = draw(st.sampled_from(["utf-8"] * 8 + ["utf-8-bom"] * 5 + ["crlf"] * 5
                                    + ["utf-16"]))
    content = b"\n".join([_csv_line(header).encode(), *lines]) + b"\n"
    if encoding == "utf-8-bom":
        content = codecs.BOM_UTF8 + content
    elif encoding == "crlf":
        content = content.replace(b"\n", b"\r\n")
    elif encoding == "utf-16":
        content = _csv_line(header).encode("utf-16") + content[content.index(b"\n"):]
        expected.bad, expected.whole_file = [1], True
    if not expected.bad and not expected.ids:  # nothing usable: the file as a whole is an error
        expected.bad, expected.whole_file = [2], True
    return task, split, content, expected


@contextmanager
def _captured_logs() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cs224n_files())
def test_fuzzed_files_are_read_or_every_bad_line_is_named(
        case: tuple[str, str, bytes, Expected]) -> None:
    task, split, content, expected = case
    event("a whole-file error" if expected.whole_file else
          "bad rows" if expected.bad else "read")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / TASK_FILES[(task, split)]
        path.write_bytes(content)
        with _captured_logs() as records:
            try:
                sp = read_split(tmp, task, split)
            except DataFileError as err:  # the one documented error for a bad file
                error: DataFileError | None = err
            else:
                error = None
        if expected.bad:
            assert error is not None, f"no error for the bad line(s) {expected.bad}"
            assert [n for n, _ in error.problems] == expected.bad
            assert str(error).startswith(f"{path}:{expected.bad[0]}: ")
            if not expected.whole_file:
                assert _logged_lines(records, path, logging.ERROR) == expected.bad
            return
        assert error is None, str(error)
        n_rows = len(content.split(b"\n")) - 2  # the header and the final line ending
        assert len(sp) + sp.skipped == n_rows
        assert sp.ids == expected.ids
        assert sp.skipped_rows == expected.skipped
        assert _logged_lines(records, path, logging.WARNING) == expected.skipped
        assert sp.labels == (expected.labels if split != "test" else None)
        texts = [[a] if sp.sent2 is None else [a, b]
                 for a, b in zip(sp.sent1, sp.sent2 or sp.sent1, strict=True)]
        for got, want in zip(texts, expected.texts, strict=True):
            assert want is None or got == want
