"""Every preset end-to-end for a few steps on a tiny random BERT and small CSVs."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import pytest
import torch
from pipeline_helpers import assert_same_weights, write_rows

import bert_sst_qqp_sts as cli
from multitask_bert.checkpoint import load_checkpoint
from multitask_bert.data import read_split
from multitask_bert.precision import native_bf16
from multitask_bert.presets import NEEDS, PRESETS

PLAIN = [p for p in PRESETS if p not in NEEDS]


def _run(model: Path, data: Path, out: Path, *extra: str) -> dict:
    argv = ["--model", str(model), "--data-dir", str(data), "--out", str(out), "--epochs", "1",
            "--batch-size", "4", "--max-length", "32", "--no-progress", "--log-every", "0",
            "--threads", "1", *extra]
    return cli.main(argv)


def _check_outputs(out: Path, data: Path, tasks: tuple[str, ...] = ("sst", "qqp", "sts")) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["best_dev"]) == {*tasks, "overall"}
    assert metrics["train_seconds"] > 0 and metrics["history"]
    assert metrics["final_dev_with_best_checkpoint"] == pytest.approx(metrics["best_dev"])
    for task in tasks:
        for split in ("dev", "test"):
            rows = list(csv.reader((out / "predictions" / f"{task}-{split}.csv").open()))
            assert rows[0] == ["id", "prediction"]
            assert [r[0] for r in rows[1:]] == read_split(data, task, split).ids  # every row
            values = [float(r[1]) for r in rows[1:]]
            if task == "sst":
                assert set(values) <= {0, 1, 2, 3, 4}
            elif task == "qqp":
                assert set(values) <= {0, 1}
            else:
                assert all(0.0 <= v <= 5.0 for v in values)
    for name in metrics["plots"]:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    errors = (out / "errors.md").read_text()
    assert all(f"## {t.upper()}" in errors for t in tasks)
    best = load_checkpoint(out / "checkpoints" / "best")
    assert best[1]["dev"] == pytest.approx(metrics["best_dev"])
    return metrics


def test_baseline_end_to_end(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    m = _run(tiny_model_dir, data_dir, tmp_path / "out", "--preset", "baseline")
    metrics = _check_outputs(tmp_path / "out", data_dir)
    assert metrics == json.loads(json.dumps(m))
    assert m["config"]["encoding"] == "separate" and m["config"]["schedule"] == "sequential"
    assert m["global_steps"] == 3 * 6  # each dataset in turn: 24 rows / batch 4 each
    assert len(m["plots"]) == 4 and m["missing_files"] == []
    assert m["data"]["qqp-train"] == {"rows": 24, "skipped": 1,
                                      "file": str(data_dir / "quora-train.csv")}


@pytest.mark.parametrize("preset", [p for p in PLAIN if p != "baseline"])
def test_plain_presets_end_to_end(preset: str, tiny_model_dir: Path, data_dir: Path,
                                  tmp_path: Path) -> None:
    m = _run(tiny_model_dir, data_dir, tmp_path / "out", "--preset", preset)
    _check_outputs(tmp_path / "out", data_dir)
    assert m["config"]["encoding"] == "cross"
    interleaved = PRESETS[preset].schedule == "interleaved"
    assert m["global_steps"] == (6 if interleaved else 18)


@pytest.mark.parametrize("preset", list(NEEDS))
def test_primitive_presets(preset: str, tiny_model_dir: Path, data_dir: Path,
                           tmp_path: Path) -> None:
    """Every output of a run with the real primitive (what the primitive did is checked in
    test_pipeline_primitives.py)."""
    _run(tiny_model_dir, data_dir, tmp_path / "out", "--preset", preset,
         "--contrastive-unsup-steps", "2", "--contrastive-sup-steps", "2", "--lora-r", "4")
    _check_outputs(tmp_path / "out", data_dir)


def test_resume_continues_exactly(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    flags = ["--preset", "ce-interleaved-clip", "--lr", "1e-3"]
    _run(tiny_model_dir, data_dir, tmp_path / "a", *flags, "--epochs", "2")
    _run(tiny_model_dir, data_dir, tmp_path / "b", *flags, "--epochs", "1")
    first = load_checkpoint(tmp_path / "b" / "checkpoints" / "last")[0]
    resumed = _run(tiny_model_dir, data_dir, tmp_path / "b", *flags, "--epochs", "2",
                   "--resume")
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last")[0]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last")[0]
    assert any(not torch.equal(first[k], b[k]) for k in b)  # epoch 2 did train
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["global_steps"] == 12


def test_time_budget_stops_and_evaluates_partial_epoch(tiny_model_dir: Path, data_dir: Path,
                                                       tmp_path: Path) -> None:
    m = _run(tiny_model_dir, data_dir, tmp_path / "out", "--preset", "ce-interleaved",
             "--epochs", "5", "--max-train-minutes", "1e-9")
    assert m["global_steps"] == 1 and len(m["history"]) == 1 and m["history"][0]["partial"]
    m = _run(tiny_model_dir, data_dir, tmp_path / "out2", "--preset", "ce", "--max-steps", "4")
    assert m["global_steps"] == 4


def test_single_task_bf16_mean_pooling(tiny_model_dir: Path, data_dir: Path,
                                       tmp_path: Path) -> None:
    with pytest.warns(RuntimeWarning, match="without native bf16") if not native_bf16(
            torch.device("cpu"))[0] else contextlib.nullcontext():
        m = _run(tiny_model_dir, data_dir, tmp_path / "out", "--tasks", "sts", "--precision",
                 "bf16", "--pooling", "mean", "--lr-schedule", "linear")
    assert m["precision"]["used"] == "bf16"
    _check_outputs(tmp_path / "out", data_dir, tasks=("sts",))
    assert m["best_dev"]["overall"] == pytest.approx((m["best_dev"]["sts"] + 1) / 2)
    assert not (tmp_path / "out" / "predictions" / "sst-dev.csv").exists()


def test_missing_test_file_is_reported(tiny_model_dir: Path, data_dir: Path,
                                       tmp_path: Path) -> None:
    (data_dir / "quora-test-student.csv").unlink()
    m = _run(tiny_model_dir, data_dir, tmp_path / "out", "--preset", "ce", "--max-steps", "2")
    assert m["missing_files"] == [str(data_dir / "quora-test-student.csv")]
    assert not (tmp_path / "out" / "predictions" / "qqp-test.csv").exists()


def test_missing_train_file_fails_before_loading(data_dir: Path, tmp_path: Path) -> None:
    (data_dir / "sts-train.csv").unlink()
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        _run(tmp_path / "no-model", data_dir, tmp_path / "out")


@pytest.mark.parametrize(("schedule", "steps"), [
    ("interleaved", 6), ("sequential", 18), ("round_robin", 18), ("proportional", 18),
    ("temperature", 18)])
def test_every_schedule_is_drawn_by_the_multitask_loader(schedule: str, steps: int,
                                                         tiny_model_dir: Path, data_dir: Path,
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """24 rows per task in batches of 4: 6 batches each. Every mode's epoch comes from
    mtlkit.MultiTaskLoader (the pipeline has no schedule of its own)."""
    import mtlkit

    built = []
    real = mtlkit.MultiTaskLoader

    def recording(*args, **kwargs):
        built.append(kwargs["mode"])
        return real(*args, **kwargs)

    monkeypatch.setattr(mtlkit, "MultiTaskLoader", recording)
    m = _run(tiny_model_dir, data_dir, tmp_path / "out", "--schedule", schedule)
    assert built == [schedule] and m["global_steps"] == steps


def test_compare_driver(tiny_model_dir: Path, data_dir: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture) -> None:
    import doctest

    import compare_presets

    assert doctest.testmod(compare_presets).failed == 0
    table = compare_presets.main([
        "--presets", "baseline", "ce", "--single-task", "--sweep", "dropout=0.1",
        "--budget-minutes", "10", "--out", str(tmp_path / "cmp"), "--model", str(tiny_model_dir),
        "--data-dir", str(data_dir), "--epochs", "1", "--batch-size", "8", "--no-progress",
        "--log-every", "0", "--no-plots", "--threads", "1"])
    rows = table.splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == [
        "| baseline", "| baseline[sst]", "| baseline[qqp]", "| baseline[sts]",
        "| baseline dropout=0.1", "| ce", "| ce[sst]", "| ce[qqp]", "| ce[sts]",
        "| ce dropout=0.1"]
    assert "| 0.647 |" in rows[0] and "| 0.761 |" in rows[5]  # the paper's numbers beside
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert set(results["ce[sst]"]["best_dev"]) == {"sst", "overall"}
    cfg = json.loads((tmp_path / "cmp" / "09-ce_dropout-0.1" / "metrics.json").read_text())
    assert cfg["config"]["dropout"] == 0.1 and cfg["config"]["max_train_minutes"] == 1.0
    assert table in capsys.readouterr().out


def test_training_learns_a_learnable_signal(tiny_model_dir: Path, tmp_path: Path) -> None:
    """SST label 4 iff the sentence says "great", else 0: a tiny BERT must learn it."""
    import random

    from pipeline_helpers import write_cs224n

    data = write_cs224n(tmp_path / "data", n_train=64, n_dev=24)
    rng = random.Random(1)
    for split, n in (("train", 64), ("dev", 24)):
        rows = []
        for i in range(n):
            label = 4 if i % 2 else 0
            words = [rng.choice(["the", "film", "movie", "was", "it", "a"]) for _ in range(4)]
            words.insert(rng.randint(0, 4), "great" if label else "awful")
            rows.append([str(i), f"{i:025x}", " ".join(words), str(label)])
        write_rows(data / f"ids-sst-{split}.csv", ["", "id", "sentence", "sentiment"], rows)
    m = _run(tiny_model_dir, data, tmp_path / "out", "--tasks", "sst", "--epochs", "6",
             "--lr", "2e-3", "--batch-size", "8", "--dropout", "0.0", "--no-plots")
    assert m["best_dev"]["sst"] >= 0.9, m["history"]


def test_compare_driver_equal_examples(tiny_model_dir: Path, data_dir: Path,
                                       tmp_path: Path) -> None:
    """--budget-examples gives a sequential run 3x the steps of an interleaved one."""
    import compare_presets

    compare_presets.main([
        "--presets", "ce", "ce-interleaved", "--budget-examples", "48",
        "--out", str(tmp_path / "cmp"), "--model", str(tiny_model_dir),
        "--data-dir", str(data_dir), "--epochs", "3", "--batch-size", "8", "--no-progress",
        "--log-every", "0", "--no-plots", "--threads", "1"])
    for run, steps in (("00-ce", 6), ("01-ce-interleaved", 2)):
        metrics = json.loads((tmp_path / "cmp" / run / "metrics.json").read_text())
        assert metrics["config"]["max_steps"] == steps
        assert metrics["history"][-1]["global_step"] == steps


def test_smart_mode_reaches_smartloss() -> None:
    from multitask_bert.primitives import SmartTerms

    for mode, project in (("projected", True), ("normalized", False)):
        term = SmartTerms(1.0, mode)
        assert all(loss.project is project for loss in term.losses.values())
        assert {t: loss.kind for t, loss in term.losses.items()} == {
            "sst": "classification", "qqp": "binary", "sts": "regression"}


def test_the_same_tasks_from_the_hub_source(tiny_model_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``--data-source hub`` (local copies in the hub's layouts, nothing downloads): no
    ``--data-dir`` needed, the hub's splits are trained on, evaluated and predicted."""
    import datasets
    from test_pipeline_data_hub import QQP, SST, STS, _write_glue, _write_sst5

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MTLKIT_DATA_DIR", raising=False)
    root = tmp_path / "hub"
    _write_sst5(root, SST)
    _write_glue(root, QQP, STS)
    m = cli.main(["--model", str(tiny_model_dir), "--data-source", "hub", "--hub-root",
                  str(root), "--out", str(tmp_path / "out"), "--epochs", "1", "--batch-size",
                  "4", "--max-length", "32", "--no-progress", "--log-every", "0", "--threads",
                  "1", "--no-plots"])
    assert m["data"]["qqp-train"] == {"rows": 3, "skipped": 1,
                                      "file": f"{root / 'nyu-mll' / 'glue'} (qqp) train"}
    assert m["global_steps"] == 1 and m["missing_files"] == []
    assert set(m["best_dev"]) == {"sst", "qqp", "sts", "overall"}
    ids = [line.split(",")[0] for line in
           (tmp_path / "out" / "predictions" / "qqp-test.csv").read_text().splitlines()[1:]]
    assert len(ids) == len(QQP["test"])


def test_compare_driver_jobs_match_one_after_another(tiny_model_dir: Path, data_dir: Path,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """--jobs 2 trains the runs in other processes (this process's pipeline is disabled for
    it); each run's scores and weights are those of the same run trained here."""
    import compare_presets

    def compare(out: Path, *jobs: str) -> dict:
        compare_presets.main([
            "--presets", "ce", "ce-interleaved", "--out", str(out), "--model",
            str(tiny_model_dir), "--data-dir", str(data_dir), "--epochs", "1", "--max-steps",
            "2", "--batch-size", "4", "--max-length", "32", "--no-progress", "--log-every", "0",
            "--no-plots", "--threads", "1", *jobs])
        return json.loads((out / "results.json").read_text())

    alone = compare(tmp_path / "one")

    def not_here(argv: list[str]) -> dict:
        raise AssertionError("--jobs 2 trained a run in the driver's own process")

    monkeypatch.setattr(cli, "main", not_here)
    side_by_side = compare(tmp_path / "two", "--jobs", "2")
    assert list(side_by_side) == list(alone) == ["ce", "ce-interleaved"]
    for name in alone:
        assert side_by_side[name]["best_dev"] == pytest.approx(alone[name]["best_dev"])
    for run in ("00-ce", "01-ce-interleaved"):
        assert_same_weights(tmp_path / "one" / run / "checkpoints" / "last",
                            tmp_path / "two" / run / "checkpoints" / "last", atol=0)
    with pytest.raises(SystemExit):
        compare_presets.main(["--presets", "ce", "--jobs", "0", "--data-dir", str(data_dir)])
