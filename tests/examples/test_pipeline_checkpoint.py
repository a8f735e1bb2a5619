"""Crash-safe checkpoints: manifest checks, the previous checkpoint kept, fall-back on
corruption, a crash mid-write, and ``--resume`` falling back end to end."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from pipeline_helpers import run_tiny_clip

from multitask_bert import checkpoint as ck
from multitask_bert.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_latest,
    previous_path,
    save_checkpoint,
)


def _save(path: Path, step: int) -> None:
    save_checkpoint(path, {"w": torch.full((64,), float(step))},
                    {"step": step, "m": torch.arange(16.0) * step})


@pytest.fixture
def two(tmp_path: Path) -> Path:
    last = tmp_path / "checkpoints" / "last"
    _save(last, 1)
    _save(last, 2)
    return last


def test_keeps_previous_and_writes_manifest(two: Path) -> None:
    assert load_checkpoint(two)[1]["step"] == 2
    assert load_checkpoint(previous_path(two))[1]["step"] == 1
    manifest = json.loads((two / "manifest.json").read_text())["files"]
    assert set(manifest) == {"model.safetensors", "state.safetensors", "state.json"}
    for name, info in manifest.items():
        assert info["bytes"] == (two / name).stat().st_size and len(info["sha256"]) == 64
    _save(two, 3)  # a third save replaces the older previous
    assert load_checkpoint(previous_path(two))[1]["step"] == 2
    assert sorted(p.name for p in two.parent.iterdir()) == ["last", "last.previous"]


@pytest.mark.parametrize("name", ["model.safetensors", "state.safetensors", "state.json"])
@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_latest_is_named_and_falls_back(two: Path, name: str, damage: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    f = two / name
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        i = len(data) - 3
        f.write_bytes(data[:i] + bytes([data[i] ^ 0x55]) + data[i + 1:])
    else:
        f.unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(two)
    with caplog.at_level(logging.WARNING):
        model, state, where = load_latest(two)
    assert where == previous_path(two) and state["step"] == 1
    torch.testing.assert_close(model["w"], torch.full((64,), 1.0))
    assert str(f) in caplog.text and "falling back" in caplog.text


def test_corrupt_manifest_and_both_bad(two: Path) -> None:
    (two / "manifest.json").write_text('{"files": {"model.safet')
    with pytest.raises(CheckpointError, match="manifest"):
        load_checkpoint(two)
    prev = previous_path(two)
    (prev / "state.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no usable checkpoint") as info:
        load_latest(two)
    assert "manifest.json" in str(info.value) and "state.json" in str(info.value)
    with pytest.raises(FileNotFoundError):
        load_latest(two.parent / "nothing")


def test_old_checkpoint_without_manifest_still_loads(two: Path) -> None:
    (two / "manifest.json").unlink()
    assert load_checkpoint(two)[1]["step"] == 2


@pytest.mark.parametrize("fail_at", [1, 2])
def test_crash_while_writing_files_leaves_latest_intact(two: Path, fail_at: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = ck.save_file

    def crashing(tensors, filename):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == fail_at:
            real(tensors, filename)
            Path(filename).write_bytes(Path(filename).read_bytes()[:10])  # half written
            raise OSError("disk died")
        real(tensors, filename)

    monkeypatch.setattr(ck, "save_file", crashing)
    with pytest.raises(OSError, match="disk died"):
        _save(two, 3)
    assert load_checkpoint(two)[1]["step"] == 2
    assert load_checkpoint(previous_path(two))[1]["step"] == 1
    assert sorted(p.name for p in two.parent.iterdir()) == ["last", "last.previous"]


def test_crash_between_the_renames_keeps_a_usable_checkpoint(
        two: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.replace
    calls = {"n": 0}

    def crashing(src, dst):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:  # last -> last.previous done, the new one not yet in place
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(ck.os, "replace", crashing)
    with pytest.raises(KeyboardInterrupt):
        _save(two, 3)
    monkeypatch.setattr(ck.os, "replace", real)
    assert not two.exists()
    assert load_latest(two)[1]["step"] == 2  # the latest complete one
    _save(two, 4)
    assert load_latest(two)[1]["step"] == 4


_run = run_tiny_clip


def test_resume_falls_back_to_previous_and_matches_uninterrupted(
        tiny_model_dir: Path, data_dir: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    full = _run(tiny_model_dir, data_dir, tmp_path / "full", "--epochs", "2")
    # epoch 1 has 6 steps: checkpoints at steps 2 and 4, then the epoch's end (step 6)
    _run(tiny_model_dir, data_dir, tmp_path / "cut", "--epochs", "1", "--checkpoint-every", "2")
    last = tmp_path / "cut" / "checkpoints" / "last"
    assert load_checkpoint(previous_path(last))[1]["run"]["global_step"] == 4
    f = last / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.INFO):
        resumed = _run(tiny_model_dir, data_dir, tmp_path / "cut", "--epochs", "2",
                       "--resume", "--checkpoint-every", "2")
    assert str(f) in caplog.text and "falling back" in caplog.text
    assert "resumed from" in caplog.text and "last.previous" in caplog.text
    assert resumed["global_steps"] == full["global_steps"] == 12
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last")[0]
    b = load_checkpoint(last)[0]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    for got, want in zip(resumed["history"], full["history"], strict=True):
        assert got["dev"] == pytest.approx(want["dev"], abs=1e-6)


def test_stopped_mid_epoch_resumes_with_the_next_batch(tiny_model_dir: Path, data_dir: Path,
                                                       tmp_path: Path) -> None:
    """A run stopped after 4 of 6 steps (its partial epoch evaluated) resumes with step 5,
    to the weights of an unbroken run: the budget is checked before the next batch is
    drawn, evaluation draws nothing from the global RNG, and the checkpoint keeps
    MultiTaskLoader's state_dict."""
    flags = ["--epochs", "2"]
    full = _run(tiny_model_dir, data_dir, tmp_path / "full", *flags)
    _run(tiny_model_dir, data_dir, tmp_path / "cut", *flags, "--max-steps", "4")
    last = tmp_path / "cut" / "checkpoints" / "last"
    state = load_checkpoint(last)[1]
    assert (state["loader"]["epoch"], state["loader"]["step"]) == (0, 4)
    resumed = _run(tiny_model_dir, data_dir, tmp_path / "cut", *flags, "--resume")
    assert resumed["global_steps"] == full["global_steps"] == 12
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last")[0]
    b = load_checkpoint(last)[0]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_budget_ending_with_an_epoch_resumes_the_next_epoch(tiny_model_dir: Path,
                                                             data_dir: Path,
                                                             tmp_path: Path) -> None:
    """--max-steps on an epoch boundary: the epoch counts as complete, the loader's state is
    that of the next epoch's start, and the resumed run equals an unbroken one."""
    flags = ["--epochs", "2"]
    full = _run(tiny_model_dir, data_dir, tmp_path / "full", *flags)
    m = _run(tiny_model_dir, data_dir, tmp_path / "cut", *flags, "--max-steps", "6")
    assert [h["partial"] for h in m["history"]] == [False]
    state = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last")[1]
    assert (state["loader"]["epoch"], state["loader"]["step"]) == (1, 0)
    resumed = _run(tiny_model_dir, data_dir, tmp_path / "cut", *flags, "--resume")
    assert resumed["global_steps"] == 12 and len(resumed["history"]) == 2
    assert resumed["history"][-1]["dev"] == full["history"][-1]["dev"]
