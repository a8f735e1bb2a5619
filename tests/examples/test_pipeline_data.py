"""CSV parsing (every quirk of ../shared/data/README.md) and tokenization (the training
batches are tested in test_pipeline_batching.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from pipeline_helpers import write_rows

from multitask_bert.data import (
    TokenCache,
    TokenizedTask,
    normalize_ptb,
    read_split,
    resolve_path,
    subsample,
)


def test_unnamed_index_column_and_labels(data_dir: Path) -> None:
    sst = read_split(data_dir, "sst", "train")
    assert len(sst) == 24 and sst.skipped == 0 and sst.sent2 is None
    assert sst.labels == [i % 5 for i in range(24)]
    assert all(isinstance(y, int) for y in sst.labels)
    assert all(len(i) == 25 for i in sst.ids)  # the id column, not the unnamed index
    sts = read_split(data_dir, "sts", "dev")
    assert all(0.0 <= y <= 5.0 for y in sts.labels)


def test_quoted_fields_are_unquoted(data_dir: Path) -> None:
    raw = (data_dir / "quora-train.csv").read_text()
    assert '"""how do i learn python?"""' in raw  # written the way pandas quotes
    qqp = read_split(data_dir, "qqp", "train")
    assert qqp.sent1[1] == '"how do i learn python?"'
    assert qqp.sent2[1] == '"Eat" here?'  # quoted twice upstream: both levels undone
    sts = read_split(data_dir, "sts", "train")
    assert sts.sent2[0] == 'a "great" film'


def test_unquote_nested_keeps_ordinary_quotes() -> None:
    from multitask_bert.data import unquote_nested

    assert unquote_nested('"""Eat"" here?"') == '"Eat" here?'
    assert unquote_nested('"Hi" and "bye"') == '"Hi" and "bye"'
    assert unquote_nested('"quoted"') == '"quoted"'  # no evidence of a second level
    assert unquote_nested("plain") == "plain"
    assert unquote_nested('"') == '"'


def test_empty_qqp_row_reported_with_file_and_line_and_counted(
        data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        qqp = read_split(data_dir, "qqp", "train")
    assert qqp.skipped == 1 and len(qqp) == 24
    assert qqp.labels == [float(i % 2) for i in range(24)]
    path = str(data_dir / "quora-train.csv")
    # header is line 1, the empty row was inserted as the 4th data row: line 5
    assert any(f"{path}:5:" in r.getMessage() and "skipped" in r.getMessage()
               for r in caplog.records)
    assert any("skipped 1 row" in r.getMessage() for r in caplog.records)


def test_sst_test_file_extra_column(data_dir: Path) -> None:
    raw_header = (data_dir / "ids-sst-test-student.csv").read_text().splitlines()[0]
    assert raw_header == "0\t\tid\tsentence"
    test = read_split(data_dir, "sst", "test")
    assert len(test) == 8 and test.labels is None
    assert all(len(i) == 25 for i in test.ids)
    assert all(s and not s.startswith(" ") for s in test.sent1)


def test_ptb_escapes_undone() -> None:
    assert normalize_ptb(" a -LRB- b -RRB- `` c '' d\\/e ") == 'a ( b ) " c " d/e'


def test_missing_file_names_path_and_flag(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        read_split(tmp_path, "sts", "dev")
    assert str(tmp_path / "sts-dev.csv") in str(e.value) and "--data-dir" in str(e.value)


def test_partial_quora_train_is_the_fallback(data_dir: Path) -> None:
    os.rename(data_dir / "quora-train.csv", data_dir / "quora-train-partial.csv")
    assert resolve_path(data_dir, "qqp", "train").name == "quora-train-partial.csv"


def test_bad_header_and_bad_labels(tmp_path: Path) -> None:
    write_rows(tmp_path / "sts-dev.csv", ["", "id", "sentence1", "similarity"], [])
    with pytest.raises(ValueError, match="sentence2"):
        read_split(tmp_path, "sts", "dev")
    write_rows(tmp_path / "ids-sst-dev.csv", ["", "id", "sentence", "sentiment"],
               [["0", "x", "ok", "7"]])
    with pytest.raises(ValueError, match=r"ids-sst-dev.csv:2: sentiment: expected a class"):
        read_split(tmp_path, "sst", "dev")
    write_rows(tmp_path / "sts-train.csv", ["", "id", "sentence1", "sentence2", "similarity"],
               [["0", "x", "a", "b", "high"]])
    with pytest.raises(ValueError, match="similarity: expected a score in \\[0, 5\\], got 'high'"):
        read_split(tmp_path, "sts", "train")


def test_wrong_field_count_is_an_error_on_its_line(tmp_path: Path) -> None:
    (tmp_path / "sts-dev.csv").write_text(
        "\tid\tsentence1\tsentence2\tsimilarity\n0\ta\tx\ty\t1.0\n1\tb\tx\t2.0\n")
    with pytest.raises(ValueError, match=r"sts-dev.csv:3: expected 5 tab-separated fields"):
        read_split(tmp_path, "sts", "dev")


def test_subsample_is_seeded_and_unique(data_dir: Path) -> None:
    sst = read_split(data_dir, "sst", "train")
    a, b = subsample(sst, 10, seed=1), subsample(sst, 10, seed=1)
    assert a.ids == b.ids and len(set(a.ids)) == 10 and set(a.ids) <= set(sst.ids)
    assert subsample(sst, 1000, seed=1) is sst


def test_cross_and_separate_encoding(data_dir: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    qqp = read_split(data_dir, "qqp", "dev")
    cross = TokenizedTask(qqp, tok, "cross", 64)
    sep = TokenizedTask(qqp, tok, "separate", 64)
    cls, sepid = tok.cls_token_id, tok.sep_token_id
    ids = cross.fields["input_ids"][0]
    assert ids[0] == cls and ids.count(sepid) == 2 and ids[-1] == sepid
    types = cross.fields["token_type_ids"][0]
    first_sep = ids.index(sepid)
    assert set(types[: first_sep + 1]) == {0} and set(types[first_sep + 1:]) == {1}
    assert sep.fields["input_ids"][0] == tok(qqp.sent1[0])["input_ids"]
    assert sep.fields["input_ids_2"][0] == tok(qqp.sent2[0])["input_ids"]
    batch = sep.collate([sep[0], sep[1], sep[2]])
    assert {"input_ids_2", "attention_mask_2", "labels"} <= set(batch)
    lengths = [len(sep.fields["input_ids"][i]) for i in range(3)]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["labels"].dtype == torch.float32


def test_pad_multiple_rounds_the_width_up() -> None:
    from multitask_bert.data import collate

    items = [{"input_ids": [1, 2, 3], "token_type_ids": [0, 0, 0], "index": 0, "label": 2}]
    b = collate(items, 0, "sst", pad_multiple=8)
    assert b["input_ids"].tolist() == [[1, 2, 3, 0, 0, 0, 0, 0]]
    assert b["attention_mask"].sum().item() == 3 and b["labels"].dtype == torch.long
    assert collate(items, 0, "sst", pad_multiple=3)["input_ids"].shape == (1, 3)


def test_token_cache_tokenizes_once(data_dir: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    calls = []

    class Counting:
        pad_token_id = tok.pad_token_id

        def __call__(self, *a, **k):
            calls.append(1)
            return tok(*a, **k)

    cache = TokenCache(Counting(), 64)
    sst = read_split(data_dir, "sst", "train")
    first = cache.get(sst, "cross")
    for _ in range(3):  # "epochs"
        assert cache.get(sst, "cross") is first
    assert len(calls) == 1
