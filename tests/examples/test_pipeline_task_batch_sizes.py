"""Per-task training batch sizes (``--task-batch-sizes``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import bert_sst_qqp_sts as cli
from multitask_bert.data import read_split
from multitask_bert.flags import parse_task_batch_sizes


@pytest.mark.parametrize(("text", "want"), [
    ("sst=12,qqp=24", {"sst": 12, "qqp": 24}),
    (" sts = 3 ", {"sts": 3}),
    ("", {}),
])
def test_parse(text: str, want: dict[str, int]) -> None:
    assert parse_task_batch_sizes(text) == want


@pytest.mark.parametrize("text", ["sst", "sst=0", "sst=-1", "sst=x", "foo=3", "sst=2,sst=3"])
def test_parse_rejects_bad_input_with_the_flag_name(text: str) -> None:
    with pytest.raises(Exception, match="--task-batch-sizes: expected TASK=N"):
        parse_task_batch_sizes(text)


def test_a_task_outside_tasks_is_an_error(data_dir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["--data-dir", str(data_dir), "--tasks", "sst",
                        "--task-batch-sizes", "qqp=8"])
    assert "--task-batch-sizes: expected TASK=N with TASK in --tasks sst" in (
        capsys.readouterr().err)


def test_steps_per_epoch_follow_the_largest_batch_count(tiny_model_dir: Path,
                                                        data_dir: Path, tmp_path: Path) -> None:
    sizes = {"sst": 2, "qqp": 8, "sts": 4}
    m = cli.main(["--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--out",
                  str(tmp_path / "o"), "--batch-size", "4", "--max-length", "32",
                  "--no-progress", "--log-every", "0", "--threads", "1", "--no-plots",
                  "--preset", "ce-interleaved-clip", "--epochs", "1",
                  "--task-batch-sizes", ",".join(f"{t}={b}" for t, b in sizes.items())])
    rows = {t: len(read_split(data_dir, t, "train")) for t in sizes}
    assert m["global_steps"] == max(math.ceil(rows[t] / b) for t, b in sizes.items())
    assert m["config"]["task_batch_sizes"] == sizes
