"""The hub source, read through ``datasets.load_dataset`` from local copies of the hub's
repositories that these tests write in the hub's own layouts (SetFit/sst5: JSON lines with a
``dev.jsonl``; nyu-mll/glue: parquet files under a README.md that declares the ``qqp`` and
``stsb`` configurations, GLUE's features and its ``-1`` test labels). Nothing downloads."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import datasets
import pytest

from multitask_bert.data import DataFileError, TaskSplit
from multitask_bert.hub_data import (
    HUB_SOURCES,
    HubSource,
    load_task_splits,
    read_hub_split,
    read_task_split,
)

datasets.disable_progress_bars()

HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
# SetFit/sst5 rows: (text, label); lower-cased PTB escapes, as the hub copy writes them
SST = {"train": [("a -lrb- good -rrb- film", 4), ("`` bad '' movie", 0), ("so-so", 2)],
       "validation": [("fine and\\/or dull", 1), ("great", 3)],
       "test": [("awful", 0), ("very good", 4)]}
SST_TEXT = {"train": ["a ( good ) film", '" bad " movie', "so-so"],
            "dev": ["fine and/or dull", "great"], "test": ["awful", "very good"]}
# GLUE rows: (idx, first, second, label); QQP's train row 2 lacks its second question
QQP = {"train": [(10, "how?", "why?", 1), (11, "who?", "what?", 0), (12, "when?", "", 0),
                 (13, "where?", "which?", 1)],
       "validation": [(0, "q a?", "q b?", 0), (1, "q c?", "q d?", 1)],
       "test": [(0, "t a?", "t b?", -1), (1, "t c?", "t d?", -1), (2, "t e?", "t f?", -1)]}
STS = {"train": [(0, "a man runs", "a man is running", 4.6), (1, "a dog", "a cat", 0.0),
                 (2, "same", "same", 5.0), (3, "x", "y", 2.25)],
       "validation": [(0, "one", "two", 3.8), (1, "red", "blue", 0.2)],
       "test": [(0, "s a", "s b", -1.0)]}


def _write_glue(root: Path, qqp: dict[str, list[tuple]], sts: dict[str, list[tuple]]) -> None:
    glue = root / "nyu-mll" / "glue"
    configs = []
    for config, rows_by_split, label, names in (
            ("qqp", qqp, datasets.ClassLabel(names=["not_duplicate", "duplicate"]),
             ("question1", "question2")),
            ("stsb", sts, datasets.Value("float32"), ("sentence1", "sentence2"))):
        features = datasets.Features({names[0]: datasets.Value("string"),
                                      names[1]: datasets.Value("string"), "label": label,
                                      "idx": datasets.Value("int32")})
        (glue / config).mkdir(parents=True, exist_ok=True)
        files = []
        for split, rows in rows_by_split.items():
            table = {names[0]: [r[1] for r in rows], names[1]: [r[2] for r in rows],
                     "label": [r[3] for r in rows], "idx": [r[0] for r in rows]}
            datasets.Dataset.from_dict(table, features=features).to_parquet(
                str(glue / config / f"{split}-00000-of-00001.parquet"))
            files.append(f"  - split: {split}\n    path: {config}/{split}-*")
        configs.append(f"- config_name: {config}\n  data_files:\n" + "\n".join(files))
    (glue / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n# GLUE\n")


def _write_sst5(root: Path, rows_by_split: dict[str, list[tuple[str, Any]]]) -> None:
    sst = root / "SetFit" / "sst5"
    sst.mkdir(parents=True, exist_ok=True)
    names = {"train": "train", "validation": "dev", "test": "test"}  # the hub's file names
    for split, rows in rows_by_split.items():
        (sst / f"{names[split]}.jsonl").write_text("".join(
            json.dumps({"text": t, "label": y, "label_text": str(y)}) + "\n" for t, y in rows))


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    _write_sst5(root, SST)
    _write_glue(root, QQP, STS)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("datasets-cache")


def test_sst5_maps_to_the_csv_columns(hub_root: Path, cache: Path) -> None:
    for split in ("train", "dev", "test"):
        sst = read_hub_split("sst", split, hub_root=hub_root, cache_dir=cache)
        rows = SST[HUB_SPLITS[split]]
        assert sst.ids == [str(i) for i in range(len(rows))]  # no id column: the row index
        assert sst.sent1 == SST_TEXT[split] and sst.sent2 is None
        assert sst.labels == (None if split == "test" else [y for _, y in rows])
        assert sst.labels is None or all(type(y) is int for y in sst.labels)
        assert sst.path == f"{hub_root / 'SetFit' / 'sst5'} {HUB_SPLITS[split]}"


def test_glue_qqp_and_stsb_map_to_the_csv_columns(hub_root: Path, cache: Path) -> None:
    qqp = read_hub_split("qqp", "dev", hub_root=hub_root, cache_dir=cache)
    assert (qqp.ids, qqp.sent1, qqp.sent2, qqp.labels) == (
        ["0", "1"], ["q a?", "q c?"], ["q b?", "q d?"], [0.0, 1.0])
    assert qqp.path.endswith("glue (qqp) validation")
    sts = read_hub_split("sts", "train", hub_root=hub_root, cache_dir=cache)
    assert sts.ids == ["0", "1", "2", "3"] and sts.sent2[0] == "a man is running"
    assert sts.labels == [4.6, 0.0, 5.0, 2.25]  # float32 on the hub, the written values here
    for task, rows in (("qqp", QQP["test"]), ("sts", STS["test"])):
        test = read_hub_split(task, "test", hub_root=hub_root, cache_dir=cache)
        assert test.labels is None and len(test) == len(rows)  # GLUE's -1: no labels


def test_hub_rows_skipped_like_the_csv_reader(hub_root: Path, cache: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        qqp = read_hub_split("qqp", "train", hub_root=hub_root, cache_dir=cache)
    assert qqp.ids == ["10", "11", "13"]  # GLUE's idx, not the row index
    assert qqp.labels == [1.0, 0.0, 1.0]
    assert (qqp.skipped, qqp.skipped_rows) == (1, [2])
    assert len(qqp) + qqp.skipped == len(QQP["train"])
    where = f"{hub_root / 'nyu-mll' / 'glue'} (qqp) train"
    assert any(r.getMessage().startswith(f"{where} row 2: row id=12 has an empty sentence")
               for r in caplog.records)


def test_bad_hub_labels_name_dataset_split_and_row(tmp_path: Path) -> None:
    sts = {"train": STS["train"], "test": STS["test"],
           "validation": [(0, "a", "b", 5.5), (1, "c", "d", 1.0), (2, "e", "f", -0.5)]}
    qqp = {"train": QQP["train"][:2], "validation": QQP["validation"], "test": QQP["test"]}
    _write_glue(tmp_path, qqp, sts)
    with pytest.raises(DataFileError) as info:
        read_hub_split("sts", "dev", hub_root=tmp_path, cache_dir=tmp_path / "cache")
    where = f"{tmp_path / 'nyu-mll' / 'glue'} (stsb) validation"
    assert info.value.problems == [(0, "label: expected a score in [0, 5], got 5.5"),
                                   (2, "label: expected a score in [0, 5], got -0.5")]
    assert str(info.value).startswith(f"{where} row 0: label: expected a score in [0, 5]")
    _write_sst5(tmp_path, {"train": [("ok", 5), ("ok", 1)], "validation": [("ok", 1)],
                           "test": [("ok", 1)]})
    with pytest.raises(DataFileError, match=r"sst5 train row 0: label: expected a class 0-4"):
        read_hub_split("sst", "train", hub_root=tmp_path, cache_dir=tmp_path / "cache")


def test_qqp_label_outside_0_1_on_the_hub(tmp_path: Path) -> None:
    # GLUE's -1 ("no label") in a labelled split is an error, not a silent class
    qqp = {"train": [(0, "a?", "b?", 1), (1, "c?", "d?", -1)],
           "validation": QQP["validation"], "test": QQP["test"]}
    _write_glue(tmp_path, qqp, STS)
    with pytest.raises(DataFileError) as info:
        read_hub_split("qqp", "train", hub_root=tmp_path, cache_dir=tmp_path / "cache")
    assert info.value.problems == [(1, "label: expected 0 or 1, got -1")]


def test_missing_hub_column(tmp_path: Path) -> None:
    sst = tmp_path / "SetFit" / "sst5"
    sst.mkdir(parents=True)
    for name in ("train", "dev", "test"):
        (sst / f"{name}.jsonl").write_text(json.dumps({"sentence": "x", "label": 1}) + "\n")
    with pytest.raises(ValueError, match=r"sst5 train: expected the column\(s\) \['text'\], "
                                         r"got \['sentence', 'label'\]"):
        read_hub_split("sst", "train", hub_root=tmp_path, cache_dir=tmp_path / "cache")


def test_the_default_sources_are_the_hub_names(hub_root: Path, cache: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str | None, str]] = []
    real_load = datasets.load_dataset

    def recording_load(path: str, name: str | None = None, **kwargs: Any) -> Any:
        calls.append((path, name, kwargs["split"]))
        return real_load(str(hub_root / path), name, **kwargs)  # the local copy, not the hub

    monkeypatch.setattr(datasets, "load_dataset", recording_load)
    splits, missing = load_task_splits("hub", cache_dir=cache)
    assert missing == []
    expected = [(repo, config, hub_split) for hub_split in ("train", "validation", "test")
                for repo, config in (("SetFit/sst5", None), ("nyu-mll/glue", "qqp"),
                                     ("nyu-mll/glue", "stsb"))]
    assert calls == expected
    assert splits["dev"]["sst"].sent1 == SST_TEXT["dev"]
    assert splits["test"]["sts"].path == "nyu-mll/glue (stsb) test"


def test_hub_and_csv_splits_have_the_same_shape(hub_root: Path, cache: Path,
                                                data_dir: Path) -> None:
    hub, hub_missing = load_task_splits("hub", hub_root=hub_root, cache_dir=cache)
    csv, csv_missing = load_task_splits("csv", data_dir)
    assert hub_missing == [] and csv_missing == []
    assert {s: sorted(t) for s, t in hub.items()} == {s: sorted(t) for s, t in csv.items()}

    def shape(sp: TaskSplit) -> tuple:
        return (sp.task, sp.split, sp.sent2 is None, sp.labels is None,
                None if sp.labels is None else {type(y) for y in sp.labels})

    for split in hub:
        for task in hub[split]:
            assert shape(hub[split][task]) == shape(csv[split][task]), (task, split)
    one = read_task_split("qqp", "dev", source="hub", hub_root=hub_root, cache_dir=cache)
    assert one.ids == hub["dev"]["qqp"].ids


def test_a_rescaled_similarity_source(tmp_path: Path) -> None:
    # sentence-transformers/stsb scores pairs in [0, 1]; label_scale puts them on 0-5
    repo = tmp_path / "sentence-transformers" / "stsb"
    repo.mkdir(parents=True)
    for name, rows in (("train", [("a", "b", 0.92), ("c", "d", 0.0)]),
                       ("validation", [("e", "f", 1.0)]), ("test", [("g", "h", 0.5)])):
        datasets.Dataset.from_dict(
            {"sentence1": [r[0] for r in rows], "sentence2": [r[1] for r in rows],
             "score": [r[2] for r in rows]},
            features=datasets.Features({"sentence1": datasets.Value("string"),
                                        "sentence2": datasets.Value("string"),
                                        "score": datasets.Value("float32")}),
        ).to_parquet(str(repo / f"{name}.parquet"))
    source = HubSource("sentence-transformers/stsb", None, ("sentence1", "sentence2"), "score",
                       label_scale=5.0)
    sts = read_hub_split("sts", "train", hub_root=tmp_path, cache_dir=tmp_path / "cache",
                         sources={"sts": source})
    assert sts.labels == [4.6, 0.0] and sts.ids == ["0", "1"]
    with pytest.raises(ValueError, match=r"sources: expected a HubSource for 'sst'"):
        read_hub_split("sst", "train", sources={"sts": source})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"text_columns": ()}, "text_columns: expected one or two columns"),
    ({"splits": (("train", "train"), ("dev", "validation"))}, "splits: expected one hub split"),
    ({"label_scale": float("nan")}, "label_scale: expected a positive number, got nan"),
    ({"label_scale": 0.0}, "label_scale: expected a positive number, got 0.0"),
])
def test_hub_source_validates(kwargs: dict[str, Any], message: str) -> None:
    base = {"repo": "r", "config": None, "text_columns": ("text",), "label_column": "label"}
    with pytest.raises(ValueError, match=message):
        HubSource(**{**base, **kwargs})


def test_a_missing_local_copy_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "SetFit" / "sst5").mkdir(parents=True)  # an empty copy: no data files
    with pytest.raises(FileNotFoundError) as info:  # datasets' own error, kept as it is
        read_hub_split("sst", "dev", hub_root=tmp_path, cache_dir=tmp_path / "cache")
    assert any("source='csv'" in note for note in getattr(info.value, "__notes__", []))


def test_the_default_table_is_the_documented_one() -> None:
    assert {t: (s.repo, s.config, s.text_columns, s.label_column, s.id_column, s.label_scale)
            for t, s in HUB_SOURCES.items()} == {
        "sst": ("SetFit/sst5", None, ("text",), "label", None, 1.0),
        "qqp": ("nyu-mll/glue", "qqp", ("question1", "question2"), "label", "idx", 1.0),
        "sts": ("nyu-mll/glue", "stsb", ("sentence1", "sentence2"), "label", "idx", 1.0)}
    assert all(s.split("dev") == "validation" for s in HUB_SOURCES.values())
