"""The real CS224N files, read the way the pipeline reads them, against what
../shared/data/README.md says of them: the files' git blobs, rows per file, the skipped rows,
label ranges and distributions.

The data is found through ``MTLKIT_DATA_DIR`` (CI sets it), else ../shared/data beside the
repository. Nothing here skips: a missing file fails with its path and the variable's name.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from multitask_bert.data import FILES, read_split
from multitask_bert.hub_data import load_task_splits

REAL = Path(os.environ.get("MTLKIT_DATA_DIR")
            or Path(__file__).resolve().parents[3] / "shared" / "data")

# file -> (task, split, data rows, git blob), as in the README's tables
README_FILES = {
    "ids-sst-train.csv": ("sst", "train", 8544, "9cb7333cb1dae49c2bd2a4b56a24882a6e8704b5"),
    "ids-sst-dev.csv": ("sst", "dev", 1101, "3171aa629a340809d2db4a50df8f6e5ec9420ab0"),
    "ids-sst-test-student.csv": ("sst", "test", 2210, "bbd2313758825f86e24416d6aad64cd93370cf7a"),
    "quora-train-partial.csv": ("qqp", "train", 14139,
                                "b83a51fb7f74ec048e6d8f58148bef36d07599eb"),
    "quora-dev.csv": ("qqp", "dev", 20214, "de7cfa32428fd470b93f778fccc45a619e01336f"),
    "sts-train.csv": ("sts", "train", 6040, "12b17760e7795fee35aeeabc290d5651de02622a"),
    "sts-dev.csv": ("sts", "dev", 863, "9392860e584717976b8d817cc40c9e6ceeec27e0"),
    "sts-test-student.csv": ("sts", "test", 1725, "25f0cf8fafdd1f82b9e2bb460c708af34341ce60"),
}
# the QQP rows with a missing question or label, which the reader skips
README_SKIPPED = {"quora-train-partial.csv": {"9c27e925b9422f792eb526433",
                                              "9f8c14e3dd710d4fecbe5468f"},
                  "quora-dev.csv": {"ad118c967d683c93883bf072d", "9054345d02cd6c5642a4904dc"}}


@pytest.fixture(scope="module")
def real() -> Path:
    missing = [name for name in README_FILES if not (REAL / name).is_file()]
    if missing:
        pytest.fail(f"real data missing under {REAL}: {missing}. Set MTLKIT_DATA_DIR to the "
                    "directory that ../shared/data/README.md describes", pytrace=False)
    return REAL


def _git_blob(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _raw_rows(path: Path) -> list[list[str]]:
    """The file split by hand (no csv module): one row per line, fields on tabs."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [line.split("\t") for line in text.split("\n")[1:-1]]


@pytest.mark.parametrize("name", sorted(README_FILES))
def test_each_file_is_the_readme_blob_and_reads_every_row(real: Path, name: str) -> None:
    task, split, rows, blob = README_FILES[name]
    path = real / name
    assert _git_blob(path) == blob, f"{path} is not the file the README describes"
    assert len(_raw_rows(path)) == rows
    sp = read_split(real, task, split)
    assert sp.path == path
    assert len(sp) + sp.skipped == rows
    raw_ids = [r[2 if name == "ids-sst-test-student.csv" else 1] for r in _raw_rows(path)]
    skipped_ids = {raw_ids[line - 2] for line in sp.skipped_rows}  # line 2 is the first row
    assert skipped_ids == README_SKIPPED.get(name, set())
    assert sp.ids == [i for i in raw_ids if i not in skipped_ids]  # in file order, none lost
    assert all(re.fullmatch(r"[0-9a-f]{25}", i) for i in sp.ids)
    assert (sp.sent2 is not None) == (task != "sst")
    assert (sp.labels is None) == (split == "test")
    texts = sp.sent1 + (sp.sent2 or [])
    assert all(t and t == t.strip() for t in texts)
    assert not any(t.startswith('"""') for t in texts)  # the quoting was parsed, not kept


@pytest.mark.parametrize(("split", "counts"), [
    ("train", {0: 1092, 1: 2218, 2: 1624, 3: 2322, 4: 1288}),
    ("dev", {0: 139, 1: 289, 2: 229, 3: 279, 4: 165}),
])
def test_sst_label_distribution(real: Path, split: str, counts: dict[int, int]) -> None:
    labels = read_split(real, "sst", split).labels
    assert all(type(y) is int for y in labels)
    assert dict(Counter(labels)) == counts


@pytest.mark.parametrize(("split", "counts"), [
    ("train", {0.0: 8838, 1.0: 5299}), ("dev", {0.0: 12627, 1.0: 7585}),
])
def test_qqp_label_distribution(real: Path, split: str, counts: dict[float, int]) -> None:
    qqp = read_split(real, "qqp", split)
    assert dict(Counter(qqp.labels)) == counts
    assert qqp.skipped == 2  # the README's "empty: 2"


@pytest.mark.parametrize(("split", "mean", "rounded"), [
    ("train", 2.613, {0: 722, 1: 905, 2: 1019, 3: 1347, 4: 1435, 5: 612}),
    ("dev", 2.723, {0: 100, 1: 102, 2: 143, 3: 210, 4: 212, 5: 96}),
])
def test_sts_scores(real: Path, split: str, mean: float, rounded: dict[int, int]) -> None:
    scores = read_split(real, "sts", split).labels
    assert (min(scores), max(scores)) == (0.0, 5.0)
    assert round(sum(scores) / len(scores), 3) == mean
    assert dict(Counter(round(y) for y in scores)) == rounded  # Python's round, half to even


def test_the_missing_files_are_the_readme_ones(real: Path) -> None:
    # README: no quora-test-student.csv and no full quora-train.csv in the release
    assert read_split(real, "qqp", "train").path.name == "quora-train-partial.csv"
    with pytest.raises(FileNotFoundError, match=r"quora-test-student\.csv"):
        read_split(real, "qqp", "test")
    splits, missing = load_task_splits("csv", real)
    assert missing == [str(real / n) for n in FILES[("qqp", "test")]]
    assert {s: sorted(t) for s, t in splits.items()} == {
        "train": ["qqp", "sst", "sts"], "dev": ["qqp", "sst", "sts"], "test": ["sst", "sts"]}
    assert len(splits["dev"]["qqp"]) == 20212
