"""The one configuration: RunConfig is the source of every flag, checks in one place, reloads
from metrics.json; presets and the best recipe are values of it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import bert_sst_qqp_sts as cli
from multitask_bert.config import MemberGroup, RunConfig
from multitask_bert.ensemble import member_configs
from multitask_bert.flags import parse_task_batch_sizes, parse_tasks
from multitask_bert.presets import ALL_PRESETS, PRESETS, RECIPES, changed_fields, describe


def test_every_field_is_a_flag_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    dests = {a.dest for a in parser._actions} - {"help"}
    fields = {f.name for f in dataclasses.fields(RunConfig)} - {"ensemble"}
    assert dests == fields
    for action in parser._actions:
        assert action.help and len(action.help) > 8, action.option_strings
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for name in ALL_PRESETS:
        assert f"  {name}: " in text  # the epilog lists every preset with its flags
    assert "--precision {auto,fp32,bf16}" in text and "--loader" not in text


def test_defaults_of_the_parser_are_the_dataclass_defaults(tmp_path: Path) -> None:
    cfg = cli.parse_args(["--data-dir", str(tmp_path)])
    assert cfg == RunConfig(data_dir=str(tmp_path))


def test_preset_values_and_explicit_flags_win(tmp_path: Path) -> None:
    a = cli.parse_args(["--data-dir", str(tmp_path), "--preset", "ce-interleaved-clip"])
    assert (a.encoding, a.schedule, a.clip_norm, a.preset) == ("cross", "interleaved", 1.0,
                                                               "ce-interleaved-clip")
    b = cli.parse_args(["--data-dir", str(tmp_path), "--preset", "ce-interleaved-clip",
                        "--clip-norm", "0.5"])
    assert b.clip_norm == 0.5
    c = cli.parse_args(["--data-dir", str(tmp_path), "--preset", "baseline"])
    assert (c.encoding, c.schedule, c.clip_norm) == ("separate", "sequential", 0.0)
    assert cli.parse_args(["--data-dir", "x", "--tasks", "sts,sst"]).tasks == ("sts", "sst")
    # a preset's own value given again explicitly stays
    d = cli.parse_args(["--data-dir", "x", "--preset", "baseline", "--schedule", "interleaved"])
    assert (d.encoding, d.schedule) == ("separate", "interleaved")


def test_surgery_is_the_pcgrad_weighting(tmp_path: Path) -> None:
    assert cli.parse_args(["--data-dir", "x", "--surgery"]).weighting == "pcgrad"
    assert PRESETS["ce-interleaved-surgery"].weighting == "pcgrad"
    assert RunConfig().weighting is None


@pytest.mark.parametrize(("argv", "message"), [
    (["--tasks", "sst,foo"], "--tasks: expected a comma-separated subset of sst,qqp,sts"),
    (["--tasks", "sst,sst"], "--tasks: expected"),
    (["--dropout", "1.5"], "--dropout: expected a probability in [0, 1), got 1.5"),
    (["--lr", "0"], "--lr: expected a positive number, got 0.0"),
    (["--lr", "nan"], "--lr: expected a positive number, got nan"),
    (["--epochs", "0"], "--epochs: expected a positive integer, got 0"),
    (["--checkpoint-every", "-1"], "--checkpoint-every: expected an integer >= 0, got -1"),
    (["--ema", "1"], "--ema: expected a decay in [0, 1), got 1.0"),
    (["--layer-lr-decay", "0"], "--layer-lr-decay: expected a factor in (0, 1]"),
    (["--max-train-minutes", "-2"], "--max-train-minutes: expected a positive number"),
    (["--preset", "nope"], "invalid choice: 'nope'"),
    (["--precision", "fp16"], "invalid choice: 'fp16'"),
    (["--preset", "ce-mixture-clip", "--surgery"], "--weighting: needs a shared encoder"),
    (["--surgery", "--weighting", "pcgrad", "--mixture", "lora", "--contrastive"],
     "--contrastive: needs one shared encoder"),
    (["--preset", "baseline", "--smart-weight", "1"], "--smart-weight: needs --encoding cross"),
    (["--preset", "baseline", "--pair-swap"], "--pair-swap: needs --encoding cross"),
    (["--select", "per-task"], "--select: needs --mixture full"),
    (["--tasks", "sst", "--pair-feature", "cosine"], "--pair-feature: needs a pair task"),
    (["--tasks", "sst", "--task-batch-sizes", "qqp=8"], "--task-batch-sizes: expected TASK=N"),
    (["--task-batch-sizes", "sst=0"], "--task-batch-sizes: expected TASK=N pairs"),
    (["--preset", "ce", "--steps-per-epoch", "5"], "--steps-per-epoch: needs a cycling"),
])
def test_bad_flags_exit_naming_the_flag(argv: list[str], message: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["--data-dir", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert "error" in err and message in err, err


def test_the_checks_run_for_values_built_in_python_too() -> None:
    with pytest.raises(ValueError, match="--clip-norm: expected a number >= 0, got -1"):
        RunConfig(clip_norm=-1)
    with pytest.raises(ValueError, match="--schedule: expected one of interleaved"):
        dataclasses.replace(RunConfig(), schedule="random")
    with pytest.raises(ValueError, match="--batch-size: expected a positive integer, got True"):
        RunConfig(batch_size=True)


def test_data_dir_from_the_environment_or_required(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MTLKIT_DATA_DIR", "/some/where")
    assert cli.parse_args([]).data_dir == "/some/where"
    assert cli.parse_args(["--data-dir", "here"]).data_dir == "here"
    monkeypatch.delenv("MTLKIT_DATA_DIR")
    with pytest.raises(SystemExit):
        cli.parse_args([])
    assert "--data-dir: expected the directory" in capsys.readouterr().err


def test_flag_parsers() -> None:
    assert parse_tasks("sst, qqp") == ("sst", "qqp")
    assert parse_task_batch_sizes(" sts = 3 ,qqp=24") == {"sts": 3, "qqp": 24}
    assert parse_task_batch_sizes("") == {}
    for text in ("sst", "sst=0", "sst=-1", "sst=x", "foo=3", "sst=2,sst=3"):
        with pytest.raises(Exception, match="--task-batch-sizes: expected TASK=N"):
            parse_task_batch_sizes(text)


def test_round_trip_through_json_and_metrics(tmp_path: Path) -> None:
    cfg = RunConfig(tasks=("qqp", "sts"), task_batch_sizes={"qqp": 24}, lr=8e-5,
                    weighting="pcgrad", encoder_dropout=0.2, max_train_minutes=3.5)
    text = json.dumps({"config": cfg.to_dict()})
    (tmp_path / "metrics.json").write_text(text)
    assert RunConfig.from_metrics(tmp_path) == cfg
    assert RunConfig.from_metrics(tmp_path / "metrics.json") == cfg
    best = RECIPES["best"]
    assert RunConfig.from_dict(best.to_dict()) == best
    with pytest.raises(ValueError, match=r"unknown \['bf16'\]"):
        RunConfig.from_dict({**cfg.to_dict(), "bf16": True})
    with pytest.raises(FileNotFoundError, match="not a finished run"):
        RunConfig.from_metrics(tmp_path / "nothing")


def test_presets_are_values_of_the_config() -> None:
    assert all(isinstance(p, RunConfig) for p in ALL_PRESETS.values())
    assert all(p.preset == name for name, p in ALL_PRESETS.items())
    assert changed_fields(PRESETS["ce-mixture-lora-clip"]) == {"clip_norm": 1.0,
                                                               "mixture": "lora"}
    assert describe("baseline") == "baseline: --encoding separate --schedule sequential"


def test_best_recipe_is_work_defined_and_one_command(tmp_path: Path) -> None:
    cfg = cli.parse_args(["--preset", "best", "--data-dir", str(tmp_path)])
    assert cfg.max_train_minutes is None and cfg.epochs == 2 and cfg.precision == "auto"
    members = member_configs(cfg)
    assert [(m.tasks, m.seed) for m in members] == [
        (("qqp", "sts"), 0), (("qqp", "sts"), 1), (("sst",), 0), (("sst",), 1), (("sst",), 2)]
    assert [Path(m.out).name for m in members] == [f"member-{k}" for k in range(5)]
    # run Q of the lab notes: the grouped batches in a random order (0.7623 against 0.7599)
    assert all(m.batch_order == "shuffled" for m in members)
    assert all(m.ensemble == () and m.mixture == "full" and m.select == "per-task"
               and m.ema == 0.999 and m.lr == 8e-5 and m.max_train_minutes is None
               for m in members)
    # a cap splits 70 / 30 between the groups, then equally inside each
    capped = cli.parse_args(["--preset", "best", "--data-dir", "x", "--max-train-minutes",
                             "30", "--seed", "3"])
    assert [(m.seed, m.max_train_minutes) for m in member_configs(capped)] == [
        (3, 10.5), (4, 10.5), (3, 3.0), (4, 3.0), (5, 3.0)]


def test_member_groups_are_checked() -> None:
    with pytest.raises(ValueError, match="ensemble: expected overrides of RunConfig fields"):
        RunConfig(ensemble=(MemberGroup(1, {"nope": 1}),))
    with pytest.raises(ValueError, match="ensemble: expected overrides"):
        RunConfig(ensemble=(MemberGroup(1, {"seed": 1}),))
    with pytest.raises(ValueError, match="summing to at most 1"):
        RunConfig(ensemble=(MemberGroup(1, {}, 0.7), MemberGroup(1, {}, 0.7)))
    with pytest.raises(ValueError, match="ensemble: expected a positive member count"):
        RunConfig(ensemble=(MemberGroup(0, {}),))
    with pytest.raises(ValueError, match="--select: needs --mixture full"):  # members checked
        RunConfig(select="per-task", mixture="full",
                  ensemble=(MemberGroup(1, {"mixture": "none"}),))


def test_the_hub_source_needs_no_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTLKIT_DATA_DIR", raising=False)
    cfg = cli.parse_args(["--data-source", "hub", "--hub-root", "/copies"])
    assert (cfg.data_source, cfg.data_dir, cfg.hub_root) == ("hub", None, "/copies")
