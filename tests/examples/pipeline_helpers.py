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


def pipeline_env() -> dict[str, str]:
    """The environment of a pipeline subprocess: this checkout's src and examples, one thread,
    no torchrun variables inherited."""
    import os
    import sys

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), str(root / "examples")])
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env["PYTHON"] = sys.executable
    return env


def kill_at_step(argv: list[str], step: int, log: Path, timeout: float = 180.0) -> None:
    """Run the pipeline with ``argv`` in a subprocess and SIGKILL it as soon as its log shows
    that optimizer step ``step`` is done (``argv`` needs ``--log-every 1``)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = Path(__file__).resolve().parents[2] / "examples" / "bert_sst_qqp_sts.py"
    marker = f"step {step} (epoch"
    with log.open("w") as f:
        victim = subprocess.Popen([sys.executable, str(script), *argv], env=pipeline_env(),
                                  stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while marker not in log.read_text():
            assert victim.poll() is None, f"exited before step {step}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no step {step} within {timeout:.0f} s"
            time.sleep(0.002)
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL, f"the kill at step {step} came late"
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


def assert_same_weights(a_dir: Path, b_dir: Path, atol: float = 0.0) -> None:
    """The model weights of two checkpoints are equal (to ``atol``), key by key."""
    import torch

    from multitask_bert.checkpoint import load_checkpoint

    a, b = load_checkpoint(a_dir)[0], load_checkpoint(b_dir)[0]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)
