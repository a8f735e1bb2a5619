"""``--select per-task``: each expert of a ``--mixture full`` model kept from its own best
epoch, checked against a naive fold over epochs and against separately trained runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pipeline_helpers import run_tiny_clip

from multitask_bert.checkpoint import load_checkpoint
from multitask_bert.evaluate import overall_of
from multitask_bert.selection import improved_tasks, merge_best, merge_scores, task_keys

TASKS = ["sst", "qqp", "sts"]


def _state(epoch: int) -> dict[str, torch.Tensor]:
    """Weights stamped with their epoch, one encoder and head per task."""
    return {f"{part}.{t}.w": torch.full((2,), float(epoch))
            for t in TASKS for part in ("task_encoders", "heads")}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(*[st.floats(-1, 1, allow_nan=False)] * 3), min_size=1, max_size=6))
def test_per_task_fold_keeps_each_tasks_argmax_epoch(rows: list[tuple[float, ...]]) -> None:
    best_state, best = None, {}
    for epoch, row in enumerate(rows):
        scores = dict(zip(TASKS, row, strict=True))
        scores["overall"] = overall_of(scores)
        improved = improved_tasks(scores, best, TASKS, "per-task")
        if improved:
            best_state = merge_best(best_state, _state(epoch), improved)
            best = merge_scores(scores, best, improved, TASKS)
    for k, t in enumerate(TASKS):  # naive reference: the first epoch of each task's maximum
        col = [r[k] for r in rows]
        want = col.index(max(col))
        assert best[t] == max(col)
        for key in task_keys(best_state, t):
            assert torch.all(best_state[key] == want), (t, key)
    assert best["overall"] == pytest.approx(overall_of({t: best[t] for t in TASKS}))


def test_overall_mode_needs_the_overall_score_to_rise() -> None:
    best = {"sst": 0.5, "qqp": 0.5, "sts": 0.5, "overall": 0.6}
    up_one = {"sst": 0.9, "qqp": 0.1, "sts": 0.1, "overall": 0.4}
    assert improved_tasks(up_one, best, TASKS, "overall") == []
    assert improved_tasks(up_one, best, TASKS, "per-task") == ["sst"]
    with pytest.raises(ValueError, match="select must be"):
        improved_tasks(up_one, best, TASKS, "best")


FLAGS = ["--mixture", "full", "--select", "per-task", "--lr", "3e-4"]


def test_per_task_best_equals_each_task_from_its_own_epoch(tiny_model_dir: Path,
                                                           data_dir: Path,
                                                           tmp_path: Path) -> None:
    epochs = 4
    m = run_tiny_clip(tiny_model_dir, data_dir, tmp_path / "all", *FLAGS, "--epochs",
                      str(epochs))
    history = [h["dev"] for h in m["history"]]
    want = {t: max(range(epochs), key=lambda e, t=t: (history[e][t], -e)) + 1 for t in TASKS}
    # the test means something only if the tasks peak at different epochs
    assert len(set(want.values())) > 1, want
    assert m["best_epochs"] == want
    for t in TASKS:
        assert m["best_dev"][t] == max(h[t] for h in history)
    # the merged weights, evaluated again, score exactly the per-task maxima
    assert m["final_dev_with_best_checkpoint"] == pytest.approx(m["best_dev"], abs=1e-6)
    # and each expert is the one a run stopped after that task's best epoch ends with
    # (constant learning rate: the first e epochs of any run are the same)
    best, meta = load_checkpoint(tmp_path / "all" / "checkpoints" / "best")
    assert meta["task_epochs"] == want
    for t, e in want.items():
        run_tiny_clip(tiny_model_dir, data_dir, tmp_path / f"e{e}", *FLAGS, "--epochs", str(e))
        last, _ = load_checkpoint(tmp_path / f"e{e}" / "checkpoints" / "last")
        for key in task_keys(best, t):
            torch.testing.assert_close(best[key], last[key], rtol=0, atol=0)


def test_per_task_resume_equals_uninterrupted(tiny_model_dir: Path, data_dir: Path,
                                              tmp_path: Path) -> None:
    flags = [*FLAGS, "--epochs", "4"]
    full = run_tiny_clip(tiny_model_dir, data_dir, tmp_path / "full", *flags)
    cut = run_tiny_clip(tiny_model_dir, data_dir, tmp_path / "cut", *flags, "--max-steps", "12")
    assert cut["global_steps"] == 12 and not cut["history"][-1]["partial"]
    resumed = run_tiny_clip(tiny_model_dir, data_dir, tmp_path / "cut", *flags, "--resume")
    assert resumed["best_epochs"] == full["best_epochs"]
    assert resumed["best_dev"] == pytest.approx(full["best_dev"], abs=1e-6)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "best")[0]
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "best")[0]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_per_task_needs_one_encoder_per_task(tiny_model_dir: Path, data_dir: Path,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_tiny_clip(tiny_model_dir, data_dir, tmp_path / "x", "--select", "per-task")
    assert "--select: needs --mixture full" in capsys.readouterr().err
