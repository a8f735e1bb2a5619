"""Metric functions against numpy/scipy, report helpers, checkpoints, and the doctests of
the example's modules (examples/ is outside pytest's doctest paths)."""

from __future__ import annotations

import doctest
import importlib
import json
import pkgutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from multitask_bert.checkpoint import (
    CheckpointError,
    flatten_state,
    load_checkpoint,
    optimizer_state_from_json,
    save_checkpoint,
    unflatten_state,
)
from multitask_bert.evaluate import Predictions, accuracy, dev_scores, overall_score, pearson
from multitask_bert.report import confusion_matrix, qqp_rates, sts_bucket

floats = st.floats(-100, 100, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=50), st.randoms())
def test_accuracy_matches_numpy(gold: list[int], rnd) -> None:
    pred = [rnd.randint(0, 4) for _ in gold]
    assert accuracy(pred, gold) == pytest.approx(float(np.mean(np.array(pred) == np.array(gold))))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(floats, floats), min_size=3, max_size=40))
def test_pearson_matches_scipy(pairs: list[tuple[float, float]]) -> None:
    x, y = map(list, zip(*pairs, strict=True))
    assume(np.std(x) > 1e-3 and np.std(y) > 1e-3)
    ref = stats.pearsonr(x, y).statistic
    assert pearson(x, y) == pytest.approx(ref, abs=1e-7)


def test_pearson_edge_cases() -> None:
    assert pearson([1, 2, 3], [5, 5, 5]) == 0.0
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        pearson([1.0], [1.0])
    with pytest.raises(ValueError):
        accuracy([1], [1, 2])
    with pytest.raises(ValueError):
        accuracy([], [])


@given(st.floats(0, 1), st.floats(0, 1), st.floats(-1, 1), st.floats(0, 0.1))
def test_overall_is_bounded_and_monotone(a: float, b: float, r: float, up: float) -> None:
    assert 0.0 <= overall_score(a, b, r) <= 1.0 + 1e-12
    assert overall_score(min(1.0, a + up), b, r) >= overall_score(a, b, r)
    assert overall_score(a, b, min(1.0, r + up)) >= overall_score(a, b, r)


def test_overall_at_known_points() -> None:
    assert overall_score(1.0, 1.0, 1.0) == 1.0
    assert overall_score(0.0, 0.0, -1.0) == 0.0
    assert overall_score(0.5, 0.8, 0.6) == pytest.approx((0.5 + 0.8 + 0.8) / 3)


def test_paper_table1_rows_satisfy_eq7() -> None:
    from multitask_bert.presets import PAPER_TABLE1

    for sa, pd_, sts, overall in PAPER_TABLE1.values():
        assert overall_score(sa, pd_, sts) == pytest.approx(overall, abs=6e-4)


def test_dev_scores() -> None:
    preds = {"sst": Predictions("sst", ["a", "b"], [1, 2], [0.9, 0.8], [1, 3]),
             "qqp": Predictions("qqp", ["c", "d"], [1, 0], [0.9, 0.8], [1, 0]),
             "sts": Predictions("sts", ["e", "f", "g"], [1.0, 2.0, 3.5], [0, 0, 0],
                                [1.0, 2.5, 3.0])}
    s = dev_scores(preds)
    r = stats.pearsonr([1.0, 2.0, 3.5], [1.0, 2.5, 3.0]).statistic
    assert s["sst"] == 0.5 and s["qqp"] == 1.0 and s["sts"] == pytest.approx(r)
    assert s["overall"] == pytest.approx((0.5 + 1.0 + (r + 1) / 2) / 3)
    single = dev_scores({"sts": preds["sts"]})
    assert single["overall"] == pytest.approx((r + 1) / 2)
    with pytest.raises(ValueError):
        Predictions("sst", ["a"], [1], [1.0], None).metric()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=60))
def test_confusion_matrix_matches_numpy(pairs: list[tuple[int, int]]) -> None:
    gold, pred = map(list, zip(*pairs, strict=True))
    ref = np.zeros((5, 5), dtype=int)
    np.add.at(ref, (gold, pred), 1)
    assert confusion_matrix(gold, pred, 5) == ref.tolist()


def test_qqp_rates_and_sts_buckets() -> None:
    gold = np.array([0, 0, 0, 1, 1, 1, 1])
    pred = np.array([1, 0, 0, 0, 1, 1, 1])
    r = qqp_rates(gold.tolist(), pred.tolist())
    assert r["false_positive_rate"] == pytest.approx(1 / 3)
    assert r["false_negative_rate"] == pytest.approx(1 / 4)
    assert [sts_bucket(x) for x in np.linspace(0, 5, 11)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4]


def test_checkpoint_roundtrip_and_atomic_replace(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.99))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "n": 3,
             "nested": [1.5, {"x": None}]}
    save_checkpoint(tmp_path / "ck", model.state_dict(), state)
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == ["manifest.json", "model.safetensors", "state.json", "state.safetensors"]
    json.loads((tmp_path / "ck" / "state.json").read_text())  # plain JSON
    m2, s2 = load_checkpoint(tmp_path / "ck")
    assert torch.equal(m2["weight"], model.weight)
    assert torch.equal(s2["rng"], state["rng"]) and s2["n"] == 3
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    opt2.load_state_dict(optimizer_state_from_json(s2["optimizer"]))
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"],
                       opt.state_dict()["state"][0]["exp_avg"])
    # replacing keeps the previous checkpoint and no temporary directories behind
    save_checkpoint(tmp_path / "ck", {"weight": torch.zeros(2, 3)}, {"n": 4})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "ck.previous"]
    assert load_checkpoint(tmp_path / "ck")[1] == {"n": 4}
    assert load_checkpoint(tmp_path / "ck.previous")[1]["n"] == 3
    # an older version's crash between its two renames left ck.old: still readable
    (tmp_path / "ck").rename(tmp_path / "ck.old")
    assert load_checkpoint(tmp_path / "ck")[1] == {"n": 4}
    with pytest.raises(CheckpointError, match="nothing"):
        load_checkpoint(tmp_path / "nothing")


def test_flatten_rejects_unknown_types() -> None:
    with pytest.raises(TypeError, match="object"):
        flatten_state({"a": object()}, {})
    t: dict = {}
    assert unflatten_state(flatten_state({"a": (1, 2)}, t), t) == {"a": [1, 2]}
    assert list(t) == []  # no tensor, nothing stored beside the JSON


EXAMPLE_MODULES = sorted(m.name for m in pkgutil.iter_modules(
    [str(Path(__file__).resolve().parents[2] / "examples" / "multitask_bert")]))


def test_every_example_module_is_doctested() -> None:
    assert {"data", "train", "weight_average"} <= set(EXAMPLE_MODULES)


@pytest.mark.parametrize("name", EXAMPLE_MODULES)
def test_module_doctests(name: str) -> None:
    module = importlib.import_module(f"multitask_bert.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
