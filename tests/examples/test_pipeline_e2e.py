"""Every preset end-to-end for a few steps on a tiny random BERT and small CSVs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from pipeline_helpers import write_rows

import bert_sst_qqp_sts as cli
from multitask_bert.checkpoint import load_checkpoint
from multitask_bert.data import read_split
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
    interleaved = PRESETS[preset]["schedule"] == "interleaved"
    assert m["global_steps"] == (6 if interleaved else 18)


@pytest.mark.parametrize("preset", list(NEEDS))
def test_primitive_presets(preset: str, tiny_model_dir: Path, data_dir: Path,
                           tmp_path: Path) -> None:
    """Runs end to end where mtlkit has the primitive; otherwise fails with a clear message."""
    import mtlkit

    extra = ["--preset", preset, "--contrastive-unsup-steps", "2", "--contrastive-sup-steps",
             "2", "--lora-r", "4"]
    missing = [n for n in NEEDS[preset] if not hasattr(mtlkit, n)]
    if missing:
        with pytest.raises(RuntimeError, match=f"preset needs mtlkit.{missing[0]}"):
            _run(tiny_model_dir, data_dir, tmp_path / "out", *extra)
    else:
        _run(tiny_model_dir, data_dir, tmp_path / "out", *extra)
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
    m = _run(tiny_model_dir, data_dir, tmp_path / "out", "--tasks", "sts", "--bf16",
             "--pooling", "mean", "--lr-schedule", "linear")
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


def test_mtlkit_loader_flag(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    import mtlkit

    if hasattr(mtlkit, "MultiTaskLoader"):
        m = _run(tiny_model_dir, data_dir, tmp_path / "out", "--loader", "mtlkit")
        assert m["global_steps"] > 0
    else:
        with pytest.raises(RuntimeError, match=r"preset needs mtlkit\.MultiTaskLoader"):
            _run(tiny_model_dir, data_dir, tmp_path / "out", "--loader", "mtlkit")


# ----------------------------------------------------------------------------- CLI


def test_every_flag_has_help_and_every_preset_is_listed(capsys: pytest.CaptureFixture) -> None:
    parser = cli.build_parser()
    for action in parser._actions:
        assert action.help and len(action.help) > 8, action.option_strings
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for name in PRESETS:
        assert name in text
    for flag in ("--tasks", "--max-train-per-task", "--epochs", "--batch-size", "--lr",
                 "--dropout", "--seed", "--out", "--resume", "--device", "--data-dir",
                 "--max-train-minutes", "--model"):
        assert flag in text


def test_preset_sets_flags_and_explicit_flags_win(tmp_path: Path) -> None:
    a = cli.parse_args(["--data-dir", str(tmp_path), "--preset", "ce-interleaved-clip"])
    assert (a.encoding, a.schedule, a.clip_norm) == ("cross", "interleaved", 1.0)
    b = cli.parse_args(["--data-dir", str(tmp_path), "--preset", "ce-interleaved-clip",
                        "--clip-norm", "0.5"])
    assert b.clip_norm == 0.5
    c = cli.parse_args(["--data-dir", str(tmp_path), "--preset", "baseline"])
    assert (c.encoding, c.schedule, c.clip_norm) == ("separate", "sequential", 0.0)
    assert cli.parse_args(["--data-dir", "x", "--tasks", "sts,sst"]).tasks == ["sts", "sst"]


@pytest.mark.parametrize("argv", [["--tasks", "sst,foo"], ["--dropout", "1.5"],
                                  ["--lr", "0"], ["--preset", "nope"], ["--epochs", "0"],
                                  ["--preset", "ce-mixture-clip", "--surgery"],
                                  ["--preset", "baseline", "--smart-weight", "1"]])
def test_bad_flags_exit_with_a_message(argv: list[str], tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["--data-dir", str(tmp_path), *argv])
    assert "error" in capsys.readouterr().err


def test_data_dir_required(monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("MTLKIT_DATA_DIR", raising=False)
    import importlib

    importlib.reload(cli)
    with pytest.raises(SystemExit):
        cli.parse_args([])
    assert "--data-dir" in capsys.readouterr().err


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


class _RecordingPCGrad:
    """A test double with PCGrad's DESIGN.md call shape (no surgery: it sums the losses).
    It checks the pipeline's wiring only; the real PCGrad is run by test_primitive_presets."""

    calls: ClassVar[list] = []

    def __init__(self, optimizer, shared_params, reduction="sum", seed=0, sync="tasks"):
        self.optimizer, self.shared = optimizer, list(shared_params)
        self.param_groups = optimizer.param_groups
        type(self).calls.append(("init", len(self.shared), reduction, seed, sync))

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def backward(self, losses):
        type(self).calls.append(("backward", sorted(losses)))
        torch.stack(list(losses.values())).sum().backward()

    def step(self):
        self.optimizer.step()

    def state_dict(self):
        return {"inner": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["inner"])


def test_surgery_wiring_follows_the_contract(tiny_model_dir: Path, data_dir: Path,
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import mtlkit

    monkeypatch.setattr(mtlkit, "PCGrad", _RecordingPCGrad, raising=False)
    _RecordingPCGrad.calls = []
    flags = ["--preset", "ce-interleaved-surgery", "--seed", "3"]
    _run(tiny_model_dir, data_dir, tmp_path / "out", *flags)
    init = _RecordingPCGrad.calls[0]
    n_encoder = len(list(load_checkpoint(tmp_path / "out" / "checkpoints" / "last")[0]))
    assert init[0] == "init" and init[2:] == ("sum", 3, "tasks") and 0 < init[1] < n_encoder
    backwards = [c for c in _RecordingPCGrad.calls if c[0] == "backward"]
    assert len(backwards) == 6 and all(c[1] == ["qqp", "sst", "sts"] for c in backwards)
    # the wrapped optimizer's state goes through the checkpoint and back (--resume)
    _run(tiny_model_dir, data_dir, tmp_path / "out", *flags, "--epochs", "2", "--resume")


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
    from multitask_bert.primitives import SmartTerm

    for mode, project in (("projected", True), ("normalized", False)):
        term = SmartTerm(1.0, mode)
        assert all(loss.project is project for loss in term.losses.values())
