"""Ensembles of runs (``examples/ensemble.py``): the averaging against naive loops, the members'
outputs against their own runs' predictions, and the driver end to end on the tiny model."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ensemble as driver
from multitask_bert.data import TokenCache, read_split
from multitask_bert.ensemble import Member, combine_outputs, ensemble_predictions
from multitask_bert.evaluate import model_outputs, predict_split
from multitask_bert.model import MultiTaskBert, load_backbone, predict

LOGITS = st.lists(st.floats(-8, 8, allow_nan=False), min_size=5, max_size=5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(LOGITS, min_size=3, max_size=3), min_size=1, max_size=4))
def test_sst_combination_averages_probabilities(members: list[list[list[float]]]) -> None:
    combined = combine_outputs("sst", [torch.tensor(m) for m in members])
    for row in range(3):  # naive: softmax by hand, mean over members
        probs = [0.0] * 5
        for m in members:
            z = [math.exp(v) for v in m[row]]
            for c in range(5):
                probs[c] += z[c] / sum(z) / len(members)
        assert combined[row].exp().tolist() == pytest.approx(probs, abs=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(-5, 5), min_size=4, max_size=4), min_size=1, max_size=5))
def test_pair_combination_averages_outputs(members: list[list[float]]) -> None:
    for task in ("qqp", "sts"):
        combined = combine_outputs(task, [torch.tensor(m) for m in members])
        want = [sum(m[i] for m in members) / len(members) for i in range(4)]
        assert combined.tolist() == pytest.approx(want, abs=1e-5)


def test_combination_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no member outputs"):
        combine_outputs("sts", [])
    with pytest.raises(ValueError, match="different shapes"):
        combine_outputs("sts", [torch.zeros(3), torch.zeros(4)])


def test_model_outputs_give_predict_splits_predictions(tiny_model_dir: Path,
                                                      data_dir: Path) -> None:
    encoder, tokenizer = load_backbone(str(tiny_model_dir))
    model = MultiTaskBert(encoder, 32)
    cache = TokenCache(tokenizer, 32)
    for task in ("sst", "qqp", "sts"):
        ds = cache.get(read_split(data_dir, task, "dev"), "cross", both_orders=True)
        out = model_outputs(model, ds, 5, torch.device("cpu"), symmetric=True)
        assert out.shape[0] == len(ds)
        want = predict_split(model, ds, 5, torch.device("cpu"), symmetric=True)
        assert predict(task, out)[0].tolist() == want.pred
        torch.testing.assert_close(want.outputs, out)  # what a run saves for ensembles


def _tiny_flags(model: Path, data: Path) -> list[str]:
    return ["--model", str(model), "--data-dir", str(data), "--batch-size", "4",
            "--max-length", "32", "--no-progress", "--log-every", "0", "--threads", "1",
            "--no-plots", "--preset", "ce-mixture-clip", "--lr", "1e-3", "--epochs", "1",
            "--pair-swap", "--symmetric-eval"]


def _predictions(path: Path) -> dict[str, float]:
    with path.open() as f:
        return {r["id"]: float(r["prediction"]) for r in csv.DictReader(f)}


def test_ensemble_of_trained_members(tiny_model_dir: Path, data_dir: Path,
                                     tmp_path: Path) -> None:
    out = tmp_path / "ens"
    m = driver.main(["--members", "2", "--out", str(out), "--no-plots", "--",
                     *_tiny_flags(tiny_model_dir, data_dir), "--seed", "5"])
    members = [json.loads((out / f"member-{k}" / "metrics.json").read_text())
               for k in range(2)]
    assert [x["config"]["seed"] for x in members] == [5, 6]
    assert m["train_seconds"] == pytest.approx(sum(x["train_seconds"] for x in members),
                                               abs=0.02)
    # the ensemble's predictions are the average of the members' outputs, by hand
    splits = {"dev": {t: read_split(data_dir, t, "dev") for t in ("sst", "qqp", "sts")}}
    outs = [Member.read(out / f"member-{k}").outputs(splits, torch.device("cpu"))
            for k in range(2)]
    for task in ("sst", "qqp", "sts"):
        got = _predictions(out / "predictions" / f"{task}-dev.csv")
        a, b = outs[0][(task, "dev")], outs[1][(task, "dev")]
        for i, row_id in enumerate(splits["dev"][task].ids):
            if task == "sst":
                mean = (a[i].softmax(-1) + b[i].softmax(-1)) / 2
                want = float(mean.argmax())
            elif task == "qqp":
                want = float((a[i] + b[i]) / 2 > 0)
            else:
                want = float(((a[i] + b[i]) / 2).clamp(0, 5))
            assert got[row_id] == pytest.approx(want, abs=6e-5), (task, row_id)  # 4 decimals
    assert set(m["best_dev"]) == {"sst", "qqp", "sts", "overall"}
    assert (out / "errors.md").is_file()
    assert (out / "predictions" / "sts-test.csv").is_file()

    # --resume keeps finished members as they are
    before = (out / "member-0" / "metrics.json").stat().st_mtime_ns
    again = driver.main(["--members", "2", "--out", str(out), "--no-plots", "--resume", "--",
                         *_tiny_flags(tiny_model_dir, data_dir), "--seed", "5"])
    assert (out / "member-0" / "metrics.json").stat().st_mtime_ns == before
    assert again["best_dev"] == m["best_dev"]


def test_ensemble_of_unlike_recipes(tiny_model_dir: Path, data_dir: Path,
                                    tmp_path: Path) -> None:
    # one member of the pair tasks, two of SST-5: each task averages only its own members
    out = tmp_path / "uneven"
    flags = _tiny_flags(tiny_model_dir, data_dir)
    m = driver.main(["--members", "1", "2", "--budget-minutes", "5", "4", "--out", str(out),
                     "--no-plots", "--", *flags, "--tasks", "qqp,sts", "--", *flags,
                     "--tasks", "sst", "--seed", "3"])
    configs = [json.loads((out / f"member-{k}" / "metrics.json").read_text())["config"]
               for k in range(3)]
    assert [(c["tasks"], c["seed"], c["max_train_minutes"]) for c in configs] == [
        (["qqp", "sts"], 0, 5.0), (["sst"], 3, 2.0), (["sst"], 4, 2.0)]
    assert [r["members"] for r in m["config"]["recipes"]] == [1, 2]
    splits = {"dev": {t: read_split(data_dir, t, "dev") for t in ("sst", "qqp", "sts")}}
    outs = [Member.read(out / f"member-{k}").outputs(splits, torch.device("cpu"))
            for k in range(3)]
    assert ("sst", "dev") not in outs[0] and ("qqp", "dev") not in outs[1]
    sst = _predictions(out / "predictions" / "sst-dev.csv")
    mean = (outs[1][("sst", "dev")].softmax(-1) + outs[2][("sst", "dev")].softmax(-1)) / 2
    assert [sst[i] for i in splits["dev"]["sst"].ids] == mean.argmax(-1).tolist()
    qqp = _predictions(out / "predictions" / "qqp-dev.csv")
    assert [qqp[i] for i in splits["dev"]["qqp"].ids] == (
        outs[0][("qqp", "dev")] > 0).float().tolist()
    assert set(m["best_dev"]) == {"sst", "qqp", "sts", "overall"}


@pytest.mark.parametrize("extra", [[], ["--pair-feature", "cosine"]])
def test_one_member_ensemble_reproduces_its_run(tiny_model_dir: Path, data_dir: Path,
                                                tmp_path: Path, extra: list[str]) -> None:
    import bert_sst_qqp_sts as cli

    run = cli.main([*_tiny_flags(tiny_model_dir, data_dir), "--select", "per-task",
                    "--epochs", "2", *extra, "--out", str(tmp_path / "run")])
    m = driver.main(["--runs", str(tmp_path / "run"), "--out", str(tmp_path / "ens")])
    assert m["best_dev"] == pytest.approx(run["final_dev_with_best_checkpoint"], abs=1e-6)
    for name in ("sst-dev", "qqp-dev", "sts-dev", "sst-test", "sts-test"):
        got = _predictions(tmp_path / "ens" / "predictions" / f"{name}.csv")
        want = _predictions(tmp_path / "run" / "predictions" / f"{name}.csv")
        assert got == pytest.approx(want, abs=1e-5), name
    assert sorted(p.name for p in (tmp_path / "ens" / "plots").iterdir())


def test_members_saved_outputs_replace_running_them(tiny_model_dir: Path, data_dir: Path,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished run saves its best checkpoint's outputs; an ensemble takes them instead of
    running the member's model, but only for the same weights and the same rows."""
    import bert_sst_qqp_sts as cli
    from multitask_bert import ensemble

    cli.main([*_tiny_flags(tiny_model_dir, data_dir), "--max-steps", "2",
              "--out", str(tmp_path / "run")])
    splits = {"dev": {t: read_split(data_dir, t, "dev") for t in ("sst", "qqp", "sts")},
              "test": {t: read_split(data_dir, t, "test") for t in ("sst", "sts")}}
    member = Member.read(tmp_path / "run")
    fresh = member.outputs(splits, torch.device("cpu"), saved=False)  # the model, run again

    def no_model(cfg: object) -> None:
        raise AssertionError("the member's model was built")

    monkeypatch.setattr(ensemble, "build_model", no_model)
    kept = member.outputs(splits, torch.device("cpu"))
    assert kept.keys() == fresh.keys() and len(kept) == 5
    for key in fresh:
        torch.testing.assert_close(kept[key], fresh[key], atol=1e-5, rtol=1e-4, msg=str(key))
    other_rows = {"dev": {"sst": splits["dev"]["sst"].subset([1, 0])}}
    with pytest.raises(AssertionError, match="model was built"):
        member.outputs(other_rows, torch.device("cpu"))
    from multitask_bert.saved_outputs import load_outputs, weights_digest

    sst_dev = {("sst", "dev"): splits["dev"]["sst"]}
    weights = weights_digest(tmp_path / "run" / "checkpoints" / "best")
    assert load_outputs(tmp_path / "run", sst_dev, weights).keys() == sst_dev.keys()
    assert load_outputs(tmp_path / "run", sst_dev, "0" * 64) == {}  # other weights


def test_ensemble_needs_a_member_for_every_task(tiny_model_dir: Path, data_dir: Path,
                                                tmp_path: Path) -> None:
    import bert_sst_qqp_sts as cli

    cli.main([*_tiny_flags(tiny_model_dir, data_dir), "--tasks", "sts", "--max-steps", "2",
              "--out", str(tmp_path / "sts")])
    member = Member.read(tmp_path / "sts")
    splits = {"dev": {t: read_split(data_dir, t, "dev") for t in ("sst", "sts")}}
    with pytest.raises(ValueError, match="no member was trained on sst dev"):
        ensemble_predictions([member], splits, torch.device("cpu"))
    with pytest.raises(ValueError, match="at least one member"):
        ensemble_predictions([], splits, torch.device("cpu"))


def test_driver_rejects_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--members", "2", "--out", "x"], "needs the members' flags after '--'"),
        (["--members", "2", "--out", "x", "--", "--out", "y"], "the ensemble sets these"),
        (["--members", "2", "--out", "x", "--", "--max-train-minutes=3"],
         "the ensemble sets these"),
        (["--runs", "a", "--out", "x", "--budget-minutes", "3"], "takes no member flags"),
        (["--members", "2", "--runs", "a", "--out", "x"], "not allowed with"),
        (["--members", "0", "--out", "x", "--", "--epochs", "1"], "--members"),
        (["--members", "1", "2", "--out", "x", "--", "--epochs", "1"],
         "2 count(s) for 1 recipe(s)"),
        (["--members", "1", "--out", "x", "--", "--epochs", "1", "--"], "one '--' per recipe"),
        (["--members", "1", "1", "--budget-minutes", "3", "--out", "x", "--", "--epochs",
          "1", "--", "--epochs", "2"], "1 budget(s) for 2 recipe(s)"),
        (["--members", "1", "--budget-minutes", "0", "--out", "x", "--", "--epochs", "1"],
         "must be positive"),
        (["--members", "1", "1", "--out", "x", "--", "--epochs", "1", "--", "--out", "y"],
         "the ensemble sets these"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit):
            driver.parse_args(argv)
        assert message in capsys.readouterr().err, argv
    with pytest.raises(FileNotFoundError, match="not a finished run"):
        Member.read(tmp_path)
