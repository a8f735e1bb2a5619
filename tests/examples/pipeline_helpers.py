"""Helpers for the pipeline tests: a tiny vocabulary and CS224N-format CSV writers."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ["good", "bad", "great", "awful", "film", "movie", "the", "a", "is", "was", "what",
         "how", "why", "do", "i", "learn", "python", "cook", "rice", "man", "dog", "runs",
         "plays", "guitar", "on", "grass", "not", "very", "and", "it"]
PUNCT = ["?", ".", '"', "(", ")", ",", "'", "-", "/"]


def _sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, n)))


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Tab-separated with the csv module's default (pandas-like) quoting."""
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def write_cs224n(d: Path, n_train: int = 24, n_dev: int = 12, n_test: int = 8,
                 seed: int = 0) -> Path:
    """Small CS224N-format files with the real files' quirks (quoted fields, empty QQP rows,
    the SST test file's extra column, PTB escapes in SST)."""
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    hid = lambda k: f"{rng.getrandbits(100):025x}"[:25]  # noqa: E731
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [[str(i), hid(i), " " + _sentence(rng) + " -LRB- good -RRB- .", str(i % 5)]
                for i in range(n)]
        write_rows(d / f"ids-sst-{split}.csv", ["", "id", "sentence", "sentiment"], rows)
        qrows = [[str(1000 + i), hid(i), _sentence(rng) + " ?", _sentence(rng) + " ?",
                  f"{float(i % 2):.1f}"] for i in range(n)]
        qrows[1][2] = '"how do i learn python?"'  # becomes """how do i learn python?"""
        qrows[1][3] = '"""Eat"" here?"'  # quoted twice upstream, as in the real QQP files
        qrows.insert(3, [str(999), hid(0), "what is it ?", "", ""])  # the empty QQP row
        name = "quora-train.csv" if split == "train" else "quora-dev.csv"
        write_rows(d / name, ["", "id", "sentence1", "sentence2", "is_duplicate"], qrows)
        srows = [[str(i), hid(i), _sentence(rng), _sentence(rng), f"{rng.uniform(0, 5):.1f}"]
                 for i in range(n)]
        srows[0][3] = 'a "great" film'
        write_rows(d / f"sts-{split}.csv", ["", "id", "sentence1", "sentence2", "similarity"],
                   srows)
    write_rows(d / "ids-sst-test-student.csv", ["0", "", "id", "sentence"],
               [[str(i + 1), f"{float(i):.1f}", hid(i), " " + _sentence(rng)]
                for i in range(n_test)])
    write_rows(d / "sts-test-student.csv", ["", "id", "sentence1", "sentence2"],
               [[str(i), hid(i), _sentence(rng), _sentence(rng)] for i in range(n_test)])
    write_rows(d / "quora-test-student.csv", ["", "id", "sentence1", "sentence2"],
               [[str(i), hid(i), _sentence(rng), _sentence(rng)] for i in range(n_test)])
    return d


def run_tiny_clip(model: Path, data: Path, out: Path, *extra: str) -> dict:
    """The example's ``main`` on the tiny model: ``ce-interleaved-clip``, batch 4, one thread,
    no plots, ``extra`` flags last (they win)."""
    import bert_sst_qqp_sts as cli

    return cli.main(["--model", str(model), "--data-dir", str(data), "--out", str(out),
                     "--batch-size", "4", "--max-length", "32", "--no-progress", "--log-every",
                     "0", "--threads", "1", "--no-plots", "--preset", "ce-interleaved-clip",
                     "--lr", "1e-3", *extra])
